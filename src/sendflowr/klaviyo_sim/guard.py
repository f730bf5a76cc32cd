"""What every /api request passes before its handler: credentials, the revision header,
OAuth scopes and the body's media type."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Final

from starlette.requests import Request

from sendflowr.connectors.klaviyo.constants import JSON_API, REVISION
from sendflowr.klaviyo_sim.errors import ApiError
from sendflowr.klaviyo_sim.oauth import OAuthServer

# The scopes Klaviyo's spec lists for each operation (x-klaviyo-scopes; checked by a test).
SCOPES: Final[dict[tuple[str, str], tuple[str, ...]]] = {
    ("GET", "/api/accounts"): ("accounts:read",),
    ("GET", "/api/metrics"): ("metrics:read",),
    ("GET", "/api/metrics/{id}"): ("metrics:read",),
    ("GET", "/api/events"): ("events:read",),
    ("POST", "/api/events"): ("events:write",),
    ("GET", "/api/events/{id}"): ("events:read",),
    ("GET", "/api/profiles"): ("profiles:read",),
    ("GET", "/api/profiles/{id}"): ("profiles:read",),
    ("GET", "/api/campaigns"): ("campaigns:read",),
    ("GET", "/api/campaigns/{id}"): ("campaigns:read",),
    ("GET", "/api/flows"): ("flows:read",),
    ("GET", "/api/flows/{id}"): ("flows:read",),
    ("POST", "/api/event-bulk-create-jobs"): ("events:write",),
    ("POST", "/api/campaign-send-jobs"): ("campaigns:write",),
    ("GET", "/api/campaign-send-jobs/{id}"): ("campaigns:read",),
    ("GET", "/api/lists/{id}/profiles"): ("lists:read", "profiles:read"),
    ("GET", "/api/segments/{id}/profiles"): ("profiles:read", "segments:read"),
    ("GET", "/api/webhooks"): ("webhooks:read",),
    ("POST", "/api/webhooks"): ("webhooks:write",),
    ("GET", "/api/webhooks/{id}"): ("webhooks:read",),
    ("DELETE", "/api/webhooks/{id}"): ("webhooks:write",),
    ("GET", "/api/webhook-topics"): ("webhooks:read",),
}
_REVISION: Final = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(\.[a-z]+)?$")
_LATEST: Final = date.fromisoformat(REVISION)
_BODY_TYPES: Final = frozenset({JSON_API, "application/json"})


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: `rate_key` is what rate limits count against."""

    rate_key: str
    scopes: tuple[str, ...] | None  # None: a private key, every scope


def authenticate(request: Request, api_keys: frozenset[str], oauth: OAuthServer) -> Principal:
    header = request.headers.get("authorization")
    if not header:
        raise ApiError(
            401,
            "Missing Authorization header: send 'Klaviyo-API-Key <private key>' or "
            "'Bearer <access token>'.",
        )
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme == "Klaviyo-API-Key":
        if value in api_keys:
            return Principal("key:" + value, None)
        raise ApiError(
            401,
            "Incorrect authentication credentials.",
            title="Incorrect authentication credentials.",
        )
    if scheme.lower() == "bearer":
        check = oauth.check_access(value)
        if check.grant is None:
            raise ApiError(
                401,
                check.error or "Invalid access token.",
                title="Incorrect authentication credentials.",
            )
        return Principal("oauth:" + check.grant.id, check.grant.scopes)
    raise ApiError(
        401, f"Unsupported authorization scheme {scheme!r}: use Klaviyo-API-Key or Bearer."
    )


def check_revision(request: Request) -> str:
    """The `revision` header: required; a date no later than REVISION (an optional suffix such
    as `.pre` is accepted). Earlier revisions get today's behaviour."""
    value = request.headers.get("revision")
    if value is None:
        raise ApiError(
            400, f"Missing required header 'revision' (send revision: {REVISION}).",
            parameter="revision",
        )  # fmt: skip
    match = _REVISION.match(value.strip())
    when = None
    if match:
        try:
            when = date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
        except ValueError:
            when = None
    if when is None:
        raise ApiError(
            400, f"Invalid revision {value!r}: expected YYYY-MM-DD[.suffix].", parameter="revision"
        )
    if when > _LATEST:
        raise ApiError(
            400,
            f"Revision {value!r} does not exist yet; the latest is {REVISION}.",
            parameter="revision",
        )
    return value


def check_scopes(principal: Principal, operation: tuple[str, str]) -> None:
    if principal.scopes is None:
        return
    missing = [s for s in SCOPES.get(operation, ()) if s not in principal.scopes]
    if missing:
        raise ApiError(
            403, "The access token lacks the scope(s) this endpoint needs: " + ", ".join(missing)
        )


def check_media_type(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in _BODY_TYPES:
        raise ApiError(415, f"Content-Type must be {JSON_API}, got {content_type or 'none'!r}.")
