"""Connectors to email service providers (ESPs)."""
