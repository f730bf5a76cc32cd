"""Klaviyo OAuth: authorisation code with PKCE (S256), token refresh with rotation, revocation.

The protocol work is Authlib's (`AsyncOAuth2Client`: the token request bodies, HTTP Basic
client authentication, the S256 challenge, parsing token responses and errors); this module
adds Klaviyo's endpoints, timeouts, SendFlowr's errors and the encrypted token storage.

Tokens, codes, verifiers and the client secret never appear in a log line or an exception
message: errors name the OAuth error code and the HTTP status, nothing else.

`OAuthTokenProvider` is what the Klaviyo client asks for a bearer token: `token()` before each
request (refreshing when the access token expires within five minutes) and `refresh()` once
after a 401. Klaviyo rotates refresh tokens, so two refreshes racing with the same refresh
token would lose the account; refreshes are therefore serialised per (event loop, tenant, esp)
and every refresh first re-reads the stored tokens in case another provider refreshed already.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NoReturn
from urllib.parse import urlsplit

import httpx

from sendflowr.connectors.klaviyo.constants import ESP, OAUTH_REVOKE_PATH, OAUTH_TOKEN_PATH
from sendflowr.errors import ConflictError, SendFlowrError

with warnings.catch_warnings():
    # Authlib 1.9 prefers the `httpx2` package and warns when it falls back to httpx; its
    # `deprecate` module installs an "always" filter on import, so the ignore goes after it.
    import authlib.deprecate  # noqa: F401

    warnings.filterwarnings("ignore", message="The httpx module is deprecated")
    from authlib.common.security import generate_token
    from authlib.integrations.base_client import OAuthError as AuthlibOAuthError
    from authlib.integrations.httpx_client import AsyncOAuth2Client
    from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
    from authlib.oauth2.rfc7636 import create_s256_code_challenge

if TYPE_CHECKING:
    from sendflowr.runtime import Runtime
    from sendflowr.settings import Settings
    from sendflowr.storage.metadata.accounts import AccountStore

log = logging.getLogger("sendflowr.connectors.klaviyo.oauth")

TIMEOUT: Final = httpx.Timeout(10.0)
REFRESH_MARGIN_SECONDS: Final = 300
DEFAULT_LIFETIME_SECONDS: Final = 3600  # when a token response omits expires_in
VERIFIER_LENGTH: Final = 64  # RFC 7636: 43 to 128 unreserved characters
CALLBACK_PATH: Final = "/api/connector/oauth/callback"
REAUTHORISE_MESSAGE: Final = (
    "Klaviyo refused the stored refresh token (revoked or expired): re-authorise the brand "
    "by connecting it again"
)


# -- errors ----------------------------------------------------------------------------------
class KlaviyoUnavailableError(SendFlowrError):
    """Klaviyo could not be reached, timed out or answered with a server error."""

    status = 502
    code = "klaviyo_unavailable"


class OAuthNotConfiguredError(ConflictError):
    """The deployment has no Klaviyo OAuth app configured."""

    code = "oauth_not_configured"


class OAuthRefusedError(SendFlowrError):
    """Klaviyo's token endpoint answered with an OAuth error (`error` is its code)."""

    status = 502
    code = "oauth_refused"

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error


class InvalidGrantError(OAuthRefusedError):
    """The authorisation code or refresh token is expired, used, revoked or not ours."""

    status = 400
    code = "invalid_grant"


class ReauthorizeRequiredError(SendFlowrError):
    """The stored tokens cannot be refreshed any more: the brand must connect again."""

    status = 409
    code = "reauthorize_required"


# -- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OAuthConfig:
    client_id: str
    client_secret: str
    api_url: str
    authorize_url: str
    scopes: str
    redirect_uri: str

    def __repr__(self) -> str:  # never the client secret
        return f"OAuthConfig(client_id={self.client_id!r}, api_url={self.api_url!r})"

    @property
    def token_url(self) -> str:
        return self.api_url + OAUTH_TOKEN_PATH

    @property
    def revoke_url(self) -> str:
        return self.api_url + OAUTH_REVOKE_PATH

    @classmethod
    def from_settings(cls, settings: Settings) -> OAuthConfig:
        """The deployment's OAuth app; OAuthNotConfiguredError (409) names a missing setting."""
        if not settings.klaviyo_client_id:
            raise OAuthNotConfiguredError(
                "Klaviyo OAuth is not configured: set SENDFLOWR_KLAVIYO_CLIENT_ID (and "
                "SENDFLOWR_KLAVIYO_CLIENT_SECRET) to the OAuth app's credentials",
                field="klaviyo_client_id",
            )
        secret = settings.klaviyo_client_secret
        if secret is None or not secret.get_secret_value():
            raise OAuthNotConfiguredError(
                "Klaviyo OAuth is not configured: set SENDFLOWR_KLAVIYO_CLIENT_SECRET to the "
                "OAuth app's client secret",
                field="klaviyo_client_secret",
            )
        return cls(
            client_id=settings.klaviyo_client_id,
            client_secret=secret.get_secret_value(),
            api_url=settings.klaviyo_api_url.rstrip("/"),
            authorize_url=settings.klaviyo_authorize_url,
            scopes=settings.klaviyo_scopes,
            redirect_uri=settings.public_url.rstrip("/") + CALLBACK_PATH,
        )


def new_code_verifier() -> str:
    """A PKCE code verifier: 64 random letters and digits (RFC 7636 allows 43 to 128)."""
    verifier: str = generate_token(VERIFIER_LENGTH)
    return verifier


def code_challenge(code_verifier: str) -> str:
    challenge: str = create_s256_code_challenge(code_verifier)
    return challenge


# -- the protocol ----------------------------------------------------------------------------
class KlaviyoOAuth:
    """Klaviyo's OAuth endpoints for one OAuth app. `transport` lets tests swap the network."""

    def __init__(
        self, config: OAuthConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self._transport = transport

    def authorization_url(self, state: str, code_verifier: str) -> str:
        """Klaviyo's consent page for this app, with `state` and the S256 challenge."""
        url: str = prepare_grant_uri(
            self.config.authorize_url,
            client_id=self.config.client_id,
            response_type="code",
            redirect_uri=self.config.redirect_uri,
            scope=self.config.scopes,
            state=state,
            code_challenge=code_challenge(code_verifier),
            code_challenge_method="S256",
        )
        return url

    def _client(self) -> AsyncOAuth2Client:
        kwargs: dict[str, Any] = {"timeout": TIMEOUT}
        if self._transport is not None:
            kwargs["transport"] = self._transport
        return AsyncOAuth2Client(
            client_id=self.config.client_id,
            client_secret=self.config.client_secret,
            token_endpoint_auth_method="client_secret_basic",  # noqa: S106 - a method name
            revocation_endpoint_auth_method="client_secret_basic",
            **kwargs,
        )

    async def exchange_code(
        self, code: str, code_verifier: str, redirect_uri: str | None = None
    ) -> dict[str, Any]:
        """Trade an authorisation code for tokens: {access_token, refresh_token, expires_at,
        scope}. InvalidGrantError when the code expired, was used or the verifier is wrong."""
        async with self._client() as client:
            token = await self._call(
                "exchange the authorisation code",
                client.fetch_token(
                    self.config.token_url,
                    grant_type="authorization_code",
                    code=code,
                    redirect_uri=redirect_uri or self.config.redirect_uri,
                    code_verifier=code_verifier,
                ),
            )
        return _credentials(token)

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        """New tokens from a refresh token (Klaviyo rotates it: keep the one returned)."""
        async with self._client() as client:
            token = await self._call(
                "refresh the access token",
                client.refresh_token(self.config.token_url, refresh_token=refresh_token),
            )
        creds = _credentials(token, previous_refresh_token=refresh_token)
        return creds

    async def revoke(self, credentials: Mapping[str, Any]) -> None:
        """Revoke the refresh token and the access token (RFC 7009). Raises on failure; the
        caller (disconnecting) treats it as best effort."""
        pairs = [
            (credentials.get("refresh_token"), "refresh_token"),
            (credentials.get("access_token"), "access_token"),
        ]
        async with self._client() as client:
            for token, hint in pairs:
                if not isinstance(token, str) or not token:
                    continue
                try:
                    resp = await client.revoke_token(
                        self.config.revoke_url, token=token, token_type_hint=hint
                    )
                except httpx.TransportError as exc:
                    raise KlaviyoUnavailableError(
                        f"cannot revoke the {hint}: Klaviyo is unreachable ({type(exc).__name__})"
                    ) from None
                # RFC 7009: 200 also for a token that is invalid already.
                if resp.status_code >= 400:
                    raise KlaviyoUnavailableError(
                        f"Klaviyo refused to revoke the {hint} (HTTP {resp.status_code})"
                    )

    async def _call(self, what: str, request: Any) -> Mapping[str, Any]:
        try:
            token: Mapping[str, Any] = await request
        except AuthlibOAuthError as exc:
            error = str(exc.error or "oauth_error")
            if error == "invalid_grant":
                raise InvalidGrantError(
                    error, f"Klaviyo refused to {what}: invalid_grant (expired, used or revoked)"
                ) from None
            raise OAuthRefusedError(error, f"Klaviyo refused to {what}: {error}") from None
        except httpx.HTTPStatusError as exc:
            raise KlaviyoUnavailableError(
                f"cannot {what}: Klaviyo answered HTTP {exc.response.status_code}"
            ) from None
        except httpx.TransportError as exc:
            raise KlaviyoUnavailableError(
                f"cannot {what}: Klaviyo is unreachable at {_host(self.config.api_url)} "
                f"({type(exc).__name__})"
            ) from None
        except ValueError:  # a 2xx that is not a JSON object
            raise KlaviyoUnavailableError(
                f"cannot {what}: Klaviyo's answer is not a token response"
            ) from None
        return token


def _host(url: str) -> str:
    return urlsplit(url).netloc


def _credentials(
    token: Mapping[str, Any], previous_refresh_token: str | None = None
) -> dict[str, Any]:
    access = token.get("access_token")
    refresh = token.get("refresh_token") or previous_refresh_token
    if not isinstance(access, str) or not access:
        raise KlaviyoUnavailableError("Klaviyo's token response has no access_token")
    if not isinstance(refresh, str) or not refresh:
        raise KlaviyoUnavailableError("Klaviyo's token response has no refresh_token")
    expires_at = token.get("expires_at")
    if not isinstance(expires_at, int):
        expires_at = int(time.time()) + DEFAULT_LIFETIME_SECONDS
    scope = token.get("scope")
    return {
        "access_token": access,
        "refresh_token": refresh,
        "expires_at": expires_at,
        "scope": scope if isinstance(scope, str) else "",
    }


async def revoke(config: OAuthConfig, credentials: Mapping[str, Any]) -> None:
    """Revoke stored OAuth tokens (used when a brand disconnects)."""
    await KlaviyoOAuth(config).revoke(credentials)


# -- bearer tokens for the Klaviyo client ----------------------------------------------------
_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], asyncio.Lock]]
_LOCKS = weakref.WeakKeyDictionary()


def _refresh_lock(tenant: str, esp: str) -> asyncio.Lock:
    """One lock per (running loop, tenant, esp), shared by every provider for that account."""
    loop = asyncio.get_running_loop()
    locks = _LOCKS.setdefault(loop, {})
    lock = locks.get((tenant, esp))
    if lock is None:
        lock = locks[(tenant, esp)] = asyncio.Lock()
    return lock


class OAuthTokenProvider:
    """Bearer tokens for one tenant's OAuth-connected Klaviyo account."""

    def __init__(
        self,
        runtime: Runtime,
        tenant: str,
        *,
        oauth: KlaviyoOAuth | None = None,
        esp: str = ESP,
        margin_seconds: int = REFRESH_MARGIN_SECONDS,
    ) -> None:
        """`oauth` defaults to the deployment's OAuth app (OAuthNotConfiguredError without
        one)."""
        self.accounts: AccountStore = runtime.accounts
        self.oauth = oauth or KlaviyoOAuth(OAuthConfig.from_settings(runtime.settings))
        self.tenant = tenant
        self.esp = esp
        self.margin_seconds = margin_seconds
        self._creds: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"OAuthTokenProvider(tenant={self.tenant!r}, esp={self.esp!r})"

    async def token(self) -> str:
        """A valid access token, refreshed first when it expires within the margin."""
        creds = self._creds
        if creds is None or self._expiring(creds):
            async with _refresh_lock(self.tenant, self.esp):
                creds = await self._load()
                if self._expiring(creds):
                    creds = await self._refresh_locked(creds)
                self._creds = creds
        return str(creds["access_token"])

    async def refresh(self) -> str:
        """A new access token after Klaviyo answered 401 to the current one. When another
        caller refreshed while this one waited, its token is returned instead."""
        rejected = self._creds["access_token"] if self._creds else None
        async with _refresh_lock(self.tenant, self.esp):
            creds = await self._load()
            if (
                rejected is not None
                and creds["access_token"] != rejected
                and not self._expiring(creds)
            ):
                self._creds = creds
                return str(creds["access_token"])
            creds = await self._refresh_locked(creds)
            self._creds = creds
        return str(creds["access_token"])

    def _expiring(self, creds: Mapping[str, Any]) -> bool:
        expires_at = creds.get("expires_at")
        if not isinstance(expires_at, int | float):
            return True
        return float(expires_at) - time.time() <= self.margin_seconds

    async def _load(self) -> dict[str, Any]:
        creds = await asyncio.to_thread(self.accounts.credentials, self.tenant, self.esp)
        if not isinstance(creds.get("access_token"), str):
            raise ReauthorizeRequiredError(
                f"tenant {self.tenant!r}'s {self.esp} account is not connected with OAuth",
                field="tenant",
            )
        return creds

    async def _refresh_locked(self, creds: dict[str, Any]) -> dict[str, Any]:
        used = creds.get("refresh_token")
        if not isinstance(used, str) or not used:
            await self._mark_reauthorise()
        try:
            fresh = await self.oauth.refresh(used)
        except InvalidGrantError:
            latest = await self._load()
            if latest.get("refresh_token") != used and not self._expiring(latest):
                return latest  # another process refreshed (and rotated) first
            await self._mark_reauthorise()
        merged = {**creds, **fresh}
        await asyncio.to_thread(self.accounts.update_credentials, self.tenant, self.esp, merged)
        log.info("refreshed the %s access token of tenant %s", self.esp, self.tenant)
        return merged

    async def _mark_reauthorise(self) -> NoReturn:
        await asyncio.to_thread(
            self.accounts.set_status, self.tenant, self.esp, "error", REAUTHORISE_MESSAGE
        )
        log.warning(
            "tenant %s: %s refused the refresh token; marked the account for re-authorisation",
            self.tenant,
            self.esp,
        )
        self._creds = None
        raise ReauthorizeRequiredError(
            f"tenant {self.tenant!r}: {REAUTHORISE_MESSAGE}", field="tenant"
        )
