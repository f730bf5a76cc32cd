"""Response validation against Klaviyo's official OpenAPI description (openapi-core 0.23).

The spec is loaded once per session and read with two documented corrections
(`patched_spec()`), each proven necessary by test_contract:

1. Two `oneOf`s cannot be satisfied by any value: their branches overlap, so every campaign
   Klaviyo itself returns matches more than one. They become `anyOf`.
2. The file is OpenAPI 3.0.2, where `nullable: true` allows null whatever the schema; the
   validator applies 3.0.3's reading (no effect without a sibling `type`), which refuses
   the nulls Klaviyo returns (e.g. a profile's `location.latitude`). Where `nullable: true`
   has no `type`, null is added explicitly as an alternative. Nothing else accepts null, and
   every non-null value is checked exactly as before.
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Final

import httpx
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from tests.klaviyo.spec import load_spec

SERVER: Final = "https://a.klaviyo.com"
# (schema, property path) of each oneOf whose branches overlap, and why.
OVERLAPPING_ONE_OFS: Final = {
    ("CampaignResponseObjectResource", ("attributes", "send_options")): (
        "EmailSendOptions, SMSSendOptions and PushSendOptions are the same schema"
    ),
    ("CampaignResponseObjectResource", ("attributes", "tracking_options")): (
        "CampaignsSMSTrackingOptions' properties are a subset of the email ones and neither "
        "forbids additional properties"
    ),
}


def _node(spec: dict[str, Any], schema: str, path: tuple[str, ...]) -> dict[str, Any]:
    node: dict[str, Any] = spec["components"]["schemas"][schema]
    for name in path:
        node = node["properties"][name]
    return node


_NULL: Final = {"enum": [None]}


def _allow_null(node: dict[str, Any]) -> bool:
    """Make `nullable: true` without `type` accept null (OpenAPI 3.0.2); True if changed."""
    if node.get("nullable") is not True or "type" in node:
        return False
    for key in ("oneOf", "anyOf"):
        if key in node:
            node[key] = [*node[key], _NULL]
            return True
    for key in ("$ref", "allOf"):
        if key in node:
            node["anyOf"] = [{key: node.pop(key)}, _NULL]
            return True
    return False  # no constraint at all: null is already valid


def _walk(node: Any, visit: Any) -> int:
    changed = 0
    if isinstance(node, dict):
        changed += bool(visit(node))
        for value in node.values():
            changed += _walk(value, visit)
    elif isinstance(node, list):
        for value in node:
            changed += _walk(value, visit)
    return changed


@functools.cache
def patched_spec() -> dict[str, Any]:
    spec = copy.deepcopy(load_spec())
    for schema, path in OVERLAPPING_ONE_OFS:
        node = _node(spec, schema, path)
        node["anyOf"] = node.pop("oneOf")
    _walk(spec, _allow_null)
    return spec


def nullable_without_type_count() -> int:
    return _walk(copy.deepcopy(load_spec()), _allow_null)


@functools.cache
def openapi(patched: bool = True) -> OpenAPI:
    spec = patched_spec() if patched else load_spec()
    return OpenAPI.from_dict(spec, config=Config(spec_validator_cls=None))


def mock_pair(
    response: httpx.Response,
    body: bytes | None = None,
    *,
    method: str | None = None,
    path: str | None = None,
) -> tuple[MockRequest, MockResponse]:
    """openapi-core's view of a response; `body`, `method` and `path` replace the real ones
    (e.g. to check an error body for a path the spec does not have against a path it has:
    every operation shares Klaviyo's ClientError schema)."""
    request = response.request
    mock_request = MockRequest(
        SERVER,
        (method or request.method).lower(),
        path or request.url.path.rstrip("/") or "/",
        args=dict(request.url.params),
        headers=dict(request.headers),
        data=request.content,
        content_type=request.headers.get("content-type", "application/json"),
    )
    mock_response = MockResponse(
        response.content if body is None else body,
        response.status_code,
        headers=dict(response.headers),
        content_type=response.headers.get("content-type", "application/vnd.api+json"),
    )
    return mock_request, mock_response


def validate(
    response: httpx.Response,
    body: bytes | None = None,
    *,
    method: str | None = None,
    path: str | None = None,
    patched: bool = True,
) -> None:
    """Raise unless the response (or `body` in its place) is valid for its operation."""
    openapi(patched).validate_response(*mock_pair(response, body, method=method, path=path))


def validate_document(method: str, path: str, status: int, body: bytes) -> None:
    """Raise unless `body` is a valid `status` response of (method, path)."""
    request = MockRequest(SERVER, method.lower(), path)
    response = MockResponse(body, status, content_type="application/vnd.api+json")
    openapi().validate_response(request, response)
