"""The operator dashboard: server-rendered page shells over the public API."""
