"""Klaviyo: the API client, normalisation to canonical events, OAuth, backfill and webhooks."""
