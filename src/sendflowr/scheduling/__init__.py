"""Scheduling an intent for an audience: batch decisions, capacity-aware planning, triggers."""
