"""SendFlowr: send-time intelligence for email service providers."""

__version__ = "0.1.0"
