"""The HTTP API (FastAPI). `create_app` is the factory."""

from sendflowr.api.app import create_app

__all__ = ["create_app"]
