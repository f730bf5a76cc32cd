"""Browser sessions for the operator dashboard: a signed cookie naming an API key, plus CSRF.

An operator signs in at `/ui/login` by pasting an API key. The key is checked like any other
(api/auth.py) and the browser gets a cookie holding, signed with itsdangerous (HMAC-SHA256,
timestamped), the key's *id* (never the key), a random CSRF token and a fingerprint of the key's
stored hash. Every request that carries no API key header may authenticate with that cookie:

- the key is looked up again on each request, so revoking it ends its sessions at once;
- the cookie is `HttpOnly` (scripts cannot read it), `SameSite=Strict` (other sites cannot make
  the browser send it) and `Secure` when SendFlowr is served over https;
- requests other than GET/HEAD/OPTIONS must also send the CSRF token in `X-CSRF-Token`; the
  pages read it from their `<meta name="csrf-token">`, which another origin cannot;
- sessions expire after `SESSION_MAX_AGE_SECONDS`.

itsdangerous (the Pallets signing library that Flask and Starlette's sessions use) does the
signing and expiry, so no cryptography is hand-written here.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final

from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE_NAME: Final = "sendflowr_session"
CSRF_HEADER: Final = "X-CSRF-Token"
SESSION_MAX_AGE_SECONDS: Final = 12 * 3600
_SALT: Final = "sendflowr-dashboard-session-v1"


@dataclass(frozen=True, slots=True)
class SessionData:
    key_id: str
    csrf: str
    fingerprint: str


def fingerprint(material: bytes) -> str:
    """A short digest of what makes a key valid (its stored hash, or the settings key), so a
    session of a key that was replaced under the same id stops working."""
    return hashlib.sha256(material).hexdigest()[:24]


class SessionCodec:
    """Signs and reads session cookies with a key derived from the deployment's hash key."""

    def __init__(self, secret: bytes) -> None:
        derived = hmac.new(secret, b"sendflowr dashboard sessions", hashlib.sha256).digest()
        self._serializer = URLSafeTimedSerializer(derived, salt=_SALT)

    def issue(self, key_id: str, key_fingerprint: str) -> tuple[str, SessionData]:
        data = SessionData(key_id, secrets.token_urlsafe(32), key_fingerprint)
        value = self._serializer.dumps({"k": data.key_id, "c": data.csrf, "f": data.fingerprint})
        return value, data

    def read(self, value: str | None) -> SessionData | None:
        """The session in a cookie, or None when it is missing, forged, altered or expired."""
        if not value or len(value) > 4096:
            return None
        try:
            raw = self._serializer.loads(value, max_age=SESSION_MAX_AGE_SECONDS)
        except BadSignature:  # includes SignatureExpired
            return None
        if not isinstance(raw, dict):
            return None
        key_id, csrf, fp = raw.get("k"), raw.get("c"), raw.get("f")
        if not (isinstance(key_id, str) and isinstance(csrf, str) and isinstance(fp, str)):
            return None
        return SessionData(key_id, csrf, fp)


def csrf_matches(session: SessionData, sent: str | None) -> bool:
    return sent is not None and hmac.compare_digest(sent.encode(), session.csrf.encode())
