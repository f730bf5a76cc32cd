"""Ports: one interface per kind of state, each with an embedded and a scale backend."""
