"""The scopes the sim demands are the ones Klaviyo's spec lists."""

from __future__ import annotations

from sendflowr.connectors.klaviyo.constants import RATE_LIMITS
from sendflowr.klaviyo_sim.app import ROUTES
from sendflowr.klaviyo_sim.guard import SCOPES
from tests.klaviyo.spec import load_spec


def test_scopes_match_the_spec() -> None:
    paths = load_spec()["paths"]
    for (method, path), scopes in SCOPES.items():
        assert tuple(paths[path][method.lower()]["x-klaviyo-scopes"]) == scopes, (method, path)


def test_every_api_operation_has_scopes_and_a_rate_limit() -> None:
    served = {
        (method, route.template)
        for route in ROUTES
        if route.kind == "api"
        for method in route.methods
    }
    assert served == set(SCOPES) == set(RATE_LIMITS)
