"""Timing: features, priors, decisions and policy. Pure numpy; no I/O."""
