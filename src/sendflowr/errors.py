"""Domain errors. Each carries its HTTP status; the API maps them to responses in one place."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class SendFlowrError(Exception):
    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def detail(self) -> list[dict[str, Any]]:
        loc: list[str | int] = [self.field] if self.field else []
        return [{"loc": loc, "msg": self.message, "type": self.code}]


class NotFoundError(SendFlowrError):
    status = 404
    code = "not_found"


class ConflictError(SendFlowrError):
    status = 409
    code = "conflict"


class InvalidInputError(SendFlowrError):
    """Bad input; `errors` lists each field and why (the same shape FastAPI uses for 422)."""

    status = 422
    code = "invalid_input"

    def __init__(self, errors: Sequence[dict[str, Any]]) -> None:
        self.errors = list(errors)
        text = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', [])) or 'body'}: {e.get('msg')}"
            for e in self.errors
        )
        super().__init__(text)

    @classmethod
    def at(cls, loc: Sequence[str | int], msg: str, kind: str = "value_error") -> InvalidInputError:
        """One bad field: `loc` as FastAPI writes it, e.g. ("body", "audience")."""
        return cls([{"loc": list(loc), "msg": msg, "type": kind}])

    def detail(self) -> list[dict[str, Any]]:
        return self.errors


class UnavailableError(SendFlowrError):
    """A backend is down; the client should retry later."""

    status = 503
    code = "unavailable"
    retry_after_seconds = 5
