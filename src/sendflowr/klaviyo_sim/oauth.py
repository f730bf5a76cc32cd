"""Klaviyo's OAuth server side: authorization code with PKCE (S256 required), refresh-token
rotation, revocation, and bearer tokens the API accepts until they expire.

Tokens and codes are random strings held in memory; a restarted sim forgets them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

_VERIFIER: Final = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
_SCOPE: Final = re.compile(r"^[a-z][a-z0-9-]*:(read|write)$")
REFRESH_TOKEN_LIFETIME: Final = 90 * 86_400.0  # unused for 90 days: Klaviyo expires it


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass(slots=True)
class Grant:
    """One user's consent to the client: the tokens issued from one authorization code."""

    id: str
    scopes: tuple[str, ...]
    revoked: bool = False
    refresh_token: str | None = None
    refresh_expires: float = 0.0
    access_tokens: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Code:
    grant_scopes: tuple[str, ...]
    redirect_uri: str
    challenge: str
    expires: float
    used: bool = False
    grant_id: str | None = None


@dataclass(frozen=True, slots=True)
class AccessToken:
    token: str
    grant_id: str
    expires: float


@dataclass(frozen=True, slots=True)
class TokenCheck:
    grant: Grant | None
    error: str | None  # why the token is refused


def s256(verifier: str) -> str:
    return (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )


class OAuthServer:
    def __init__(
        self,
        client_id: str,
        client_secret: str,
        clock: Callable[[], float],
        *,
        redirect_uris: tuple[str, ...] = (),
        code_lifetime: float = 300.0,
        access_lifetime: int = 3600,
        deny_consent: bool = False,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uris = redirect_uris
        self.code_lifetime = code_lifetime
        self.access_lifetime = access_lifetime
        self.deny_consent = deny_consent
        self._clock = clock
        self._codes: dict[str, _Code] = {}
        self._grants: dict[str, Grant] = {}
        self._access: dict[str, AccessToken] = {}
        self._refresh: dict[str, str] = {}  # refresh token -> grant id

    # -- authorize -------------------------------------------------------------------------

    def authorize(self, params: Mapping[str, str]) -> str:
        """The URL to redirect the user agent to (with a code, or an error and the state).
        Raises OAuthError when there is nowhere safe to redirect (bad client or URI)."""
        if params.get("client_id") != self.client_id:
            raise OAuthError("invalid_client", "Unknown client_id.")
        redirect_uri = params.get("redirect_uri", "")
        if not self._redirect_allowed(redirect_uri):
            raise OAuthError("invalid_request", "redirect_uri is missing or not registered.")
        state = params.get("state")

        def back(**values: str) -> str:
            if state is not None:
                values["state"] = state
            sep = "&" if urlsplit(redirect_uri).query else "?"
            return redirect_uri + sep + urlencode(values)

        if params.get("response_type") != "code":
            return back(error="unsupported_response_type", error_description="Use code.")
        if params.get("code_challenge_method") != "S256":
            return back(error="invalid_request", error_description="PKCE with S256 is required.")
        challenge = params.get("code_challenge", "")
        if not re.fullmatch(r"[A-Za-z0-9\-_]{43}", challenge):
            return back(error="invalid_request", error_description="Bad or missing code_challenge.")
        scopes = tuple(params.get("scope", "").split())
        if not scopes or not all(_SCOPE.match(s) for s in scopes):
            return back(error="invalid_scope", error_description="Request scopes like events:read.")
        if self.deny_consent or params.get("sim_deny") in ("1", "true"):
            return back(error="access_denied", error_description="The user denied access.")
        code = secrets.token_urlsafe(24)
        self._codes[code] = _Code(
            scopes, redirect_uri, challenge, self._clock() + self.code_lifetime
        )
        return back(code=code)

    def _redirect_allowed(self, uri: str) -> bool:
        if self.redirect_uris:
            return uri in self.redirect_uris
        parts = urlsplit(uri)
        return parts.scheme in ("http", "https") and bool(parts.netloc) and not parts.fragment

    # -- token and revoke ------------------------------------------------------------------

    def check_client(self, authorization: str | None) -> None:
        """HTTP Basic client authentication (RFC 6749 2.3.1); 401 invalid_client otherwise."""
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            raise OAuthError("invalid_client", "Client authentication (HTTP Basic) required.", 401)
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise OAuthError("invalid_client", "Malformed Basic credentials.", 401) from None
        client_id, _, secret = decoded.partition(":")
        if not (
            hmac.compare_digest(unquote(client_id), self.client_id)
            and hmac.compare_digest(unquote(secret), self.client_secret)
        ):
            raise OAuthError("invalid_client", "Unknown client or wrong secret.", 401)

    def token(self, form: Mapping[str, str]) -> dict[str, Any]:
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            return self._exchange_code(form)
        if grant_type == "refresh_token":
            return self._refresh_grant(form)
        raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported.")

    def _exchange_code(self, form: Mapping[str, str]) -> dict[str, Any]:
        code = self._codes.get(form.get("code", ""))
        if code is None:
            raise OAuthError("invalid_grant", "Unknown authorization code.")
        if code.used:
            # A replayed code: refuse it and revoke what it was exchanged for (RFC 6749 4.1.2).
            if code.grant_id is not None:
                self._revoke_grant(code.grant_id)
            raise OAuthError("invalid_grant", "The authorization code was already used.")
        if self._clock() >= code.expires:
            raise OAuthError("invalid_grant", "The authorization code has expired.")
        if form.get("redirect_uri") != code.redirect_uri:
            raise OAuthError("invalid_grant", "redirect_uri does not match the authorization.")
        verifier = form.get("code_verifier", "")
        if not _VERIFIER.match(verifier):
            raise OAuthError(
                "invalid_request", "code_verifier must be 43-128 unreserved characters."
            )
        if not hmac.compare_digest(s256(verifier), code.challenge):
            raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge.")
        code.used = True
        grant = Grant(id=secrets.token_hex(8), scopes=code.grant_scopes)
        self._grants[grant.id] = grant
        code.grant_id = grant.id
        return self._issue(grant)

    def _refresh_grant(self, form: Mapping[str, str]) -> dict[str, Any]:
        grant_id = self._refresh.get(form.get("refresh_token", ""))
        grant = self._grants.get(grant_id or "")
        if grant is None or grant.revoked:
            raise OAuthError("invalid_grant", "Unknown, rotated or revoked refresh token.")
        if self._clock() >= grant.refresh_expires:
            raise OAuthError("invalid_grant", "The refresh token has expired.")
        scope = form.get("scope")
        if scope is not None and not set(scope.split()) <= set(grant.scopes):
            raise OAuthError("invalid_scope", "A refresh cannot widen the granted scopes.")
        return self._issue(grant)

    def _issue(self, grant: Grant) -> dict[str, Any]:
        now = self._clock()
        if grant.refresh_token is not None:  # rotation: the old refresh token dies
            self._refresh.pop(grant.refresh_token, None)
        access = secrets.token_urlsafe(32)
        refresh = secrets.token_urlsafe(32)
        self._access[access] = AccessToken(access, grant.id, now + self.access_lifetime)
        grant.access_tokens.add(access)
        grant.refresh_token = refresh
        grant.refresh_expires = now + REFRESH_TOKEN_LIFETIME
        self._refresh[refresh] = grant.id
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.access_lifetime,
            "refresh_token": refresh,
            "scope": " ".join(grant.scopes),
        }

    def revoke(self, form: Mapping[str, str]) -> None:
        """Revoke an access token, or a refresh token with its whole grant. Unknown tokens are
        not an error (RFC 7009)."""
        token = form.get("token")
        if not token:
            raise OAuthError("invalid_request", "token is required.")
        access = self._access.pop(token, None)
        if access is not None:
            grant = self._grants.get(access.grant_id)
            if grant is not None:
                grant.access_tokens.discard(token)
            return
        grant_id = self._refresh.get(token)
        if grant_id is not None:
            self._revoke_grant(grant_id)

    def _revoke_grant(self, grant_id: str) -> None:
        grant = self._grants.get(grant_id)
        if grant is None:
            return
        grant.revoked = True
        for token in grant.access_tokens:
            self._access.pop(token, None)
        grant.access_tokens.clear()
        if grant.refresh_token is not None:
            self._refresh.pop(grant.refresh_token, None)

    def check_access(self, token: str) -> TokenCheck:
        access = self._access.get(token)
        if access is None:
            return TokenCheck(None, "The access token is invalid or revoked.")
        if self._clock() >= access.expires:
            return TokenCheck(None, "The access token has expired.")
        grant = self._grants[access.grant_id]
        return TokenCheck(grant, None)


def parse_form(body: bytes) -> dict[str, str]:
    """An application/x-www-form-urlencoded body (first value of each name)."""
    out: dict[str, str] = {}
    for k, v in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        out.setdefault(k, v)
    return out
