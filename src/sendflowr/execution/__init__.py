"""Firing due triggers at the ESP an intent is bound to (the executor and its dispatchers)."""
