"""schemathesis against the app's own OpenAPI document, in process (ASGI, no socket).

Every operation gets a bounded number of generated requests (MAX_EXAMPLES); each response must
not be a 5xx, must carry a documented status code, and its body must match the documented
schema. A tenant `acme` exists (with a Klaviyo account, webhook secrets and the generic webhook
ESP connected) and generated tenant values are steered onto it about half the time, so the
stateful routes do real work instead of answering 404 to every random slug.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from schemathesis import checks as st_checks

from sendflowr.runtime import Runtime
from sendflowr.settings import Settings
from tests.conftest import ADMIN_HEADERS, keyed_settings, klaviyo_webhook_tenant, open_runtime

MAX_EXAMPLES = 15  # per operation: about 2-3 minutes for the whole document here
TENANT = "acme"
CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.response_schema_conformance,
]
# The demo generator is a load tool: its count is capped here so one example stays quick.
MAX_GENERATED = 500
EXCLUDED_PATHS: tuple[str, ...] = ()

pytestmark = [pytest.mark.slow]


@pytest.fixture
def st_runtime(settings: Settings) -> Iterator[Runtime]:
    keyed = keyed_settings(settings)
    with open_runtime(keyed) as rt:
        klaviyo_webhook_tenant(
            rt, TENANT, "Acme", "whsec_0123456789abcdef", flow_secret="flow_0123456789abcdef"
        )
        yield rt


def _app() -> Any:
    from sendflowr.api import create_app

    # Only for the document (never called: each test sends to its own app, `st_app`).
    return create_app(Settings(hash_key="schemathesis-collection-key", demo_profiles=0))


def _schema(app: Any) -> Any:
    # From app.openapi() rather than schemathesis.openapi.from_asgi, which would run the app's
    # lifespan (opening the default backends under ./var) just to read the document.
    loaded = schemathesis.openapi.from_dict(app.openapi())
    loaded.app = app  # requests go to the app in process (ASGI transport)
    loaded.location = "/openapi.json"
    return loaded.exclude(path=list(EXCLUDED_PATHS)) if EXCLUDED_PATHS else loaded


APP = _app()
schema = _schema(APP)


@pytest.fixture
def st_app(st_runtime: Runtime) -> Any:
    from sendflowr.api import create_app

    return create_app(st_runtime.settings, runtime=st_runtime)


def _steer(value: Any) -> bool:
    """Half of the generated values, chosen by their hash (deterministic, so shrinking works)."""
    return hashlib.sha256(repr(value).encode()).digest()[0] % 2 == 0


def _aim_at_tenant(case: Any) -> None:
    for params in (case.path_parameters, case.query):
        if isinstance(params, dict) and "tenant" in params and _steer(params["tenant"]):
            params["tenant"] = TENANT
    body = case.body
    if isinstance(body, dict) and "tenant" in body and _steer(body["tenant"]):
        body["tenant"] = TENANT
    query = case.query
    if isinstance(query, dict) and isinstance(query.get("count"), int):
        query["count"] = min(query["count"], MAX_GENERATED)


@schema.parametrize()  # type: ignore[untyped-decorator]
@hsettings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case: Any, st_runtime: Runtime, st_app: Any) -> None:
    _aim_at_tenant(case)
    case.call_and_validate(app=st_app, headers=ADMIN_HEADERS, checks=CHECKS)
