"""A Klaviyo client for a tenant's connected account (API key or OAuth tokens)."""

from __future__ import annotations

from sendflowr.connectors.klaviyo.client import ApiKeyAuth, Auth, BearerAuth, KlaviyoClient
from sendflowr.connectors.klaviyo.constants import ESP
from sendflowr.runtime import Runtime


def account_auth(runtime: Runtime, tenant: str) -> Auth:
    account = runtime.accounts.get(tenant, ESP)
    if account.auth_kind == "api_key":
        key = runtime.accounts.credentials(tenant, ESP).get("api_key")
        if not isinstance(key, str):
            raise ValueError(f"tenant {tenant!r}: the stored Klaviyo credentials lack an API key")
        return ApiKeyAuth(key)
    from sendflowr.connectors.klaviyo.oauth import OAuthTokenProvider

    return BearerAuth(OAuthTokenProvider(runtime, tenant))


def api_url(runtime: Runtime, tenant: str) -> str:
    account = runtime.accounts.get(tenant, ESP)
    return account.api_url or runtime.settings.klaviyo_api_url


def open_client(runtime: Runtime, tenant: str) -> KlaviyoClient:
    return KlaviyoClient(account_auth(runtime, tenant), base_url=api_url(runtime, tenant))
