"""Validate HTTP requests (and mock responses) against Klaviyo's official OpenAPI description.

openapi-core 0.23 validates anything that implements its `Request` protocol (host_url, path,
method, parameters, content_type, body); `HttpxOpenAPIRequest` adapts an `httpx.Request`.
The spec's only server is https://a.klaviyo.com, so a request sent to any other base URL (a
test transport, the local simulator) is validated as if it had been sent there.

openapi-core's own spec validator refuses this file (a `oneOf` with overlapping branches), so
it is loaded with `spec_validator_cls=None`; `test_client.py` proves that request validation
still rejects an invalid body.

On top of the schema, `check_filter` checks a `filter` query parameter against the fields and
operators the operation documents ("Allowed field(s)/operator(s)"), which the schema (a plain
string) cannot.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

from tests.klaviyo.spec import load_spec

SPEC_HOST = "https://a.klaviyo.com"


@functools.cache
def openapi() -> OpenAPI:
    """The spec as an openapi-core object, built once per test session."""
    return OpenAPI.from_dict(load_spec(), config=Config(spec_validator_cls=None))


class HttpxOpenAPIRequest:
    """An httpx.Request seen through openapi-core's Request protocol, rebased on the spec host."""

    def __init__(self, request: httpx.Request, *, base_url: str | None = None) -> None:
        self._request = request
        url = urlsplit(str(request.url))
        path = url.path
        if base_url is not None:
            prefix = urlsplit(base_url).path.rstrip("/")
            if prefix and path.startswith(prefix):
                path = path[len(prefix) :]
        self._path = path
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(parse_qs(url.query, keep_blank_values=True)),
            header=Headers(list(request.headers.items())),
            cookie=ImmutableMultiDict(),
        )

    @property
    def host_url(self) -> str:
        return SPEC_HOST

    @property
    def path(self) -> str:
        return self._path

    @property
    def method(self) -> str:
        return self._request.method.lower()

    @property
    def body(self) -> bytes | None:
        content = self._request.content
        return content or None

    @property
    def content_type(self) -> str:
        return str(self._request.headers.get("content-type", "")).lower()


class HttpxOpenAPIResponse:
    """An httpx.Response seen through openapi-core's Response protocol."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status_code(self) -> int:
        return self._response.status_code

    @property
    def content_type(self) -> str:
        return str(self._response.headers.get("content-type", "")).lower()

    @property
    def headers(self) -> Headers:
        return Headers(list(self._response.headers.items()))

    @property
    def data(self) -> bytes | None:
        return self._response.content or None


class MissingHeaderError(AssertionError):
    pass


def validate_request(request: httpx.Request, *, base_url: str | None = None) -> None:
    """Raise openapi-core's validation error when `request` breaks the spec."""
    wrapped = HttpxOpenAPIRequest(request, base_url=base_url)
    openapi().validate_request(wrapped)
    template = _template(wrapped.path)
    # openapi-core fills a missing parameter from its schema default, so a required header
    # with a default (`revision`) would pass absent: check presence here.
    op = load_spec()["paths"][template][wrapped.method]
    for param in op.get("parameters", []):
        required_header = param.get("in") == "header" and param.get("required")
        if required_header and param["name"] not in request.headers:
            raise MissingHeaderError(f"missing required header {param['name']!r}")
    text = request.url.params.get("filter")
    if text is not None:
        check_filter(wrapped.method, template, text)


def validate_response(
    request: httpx.Request, response: httpx.Response, *, base_url: str | None = None
) -> None:
    openapi().validate_response(
        HttpxOpenAPIRequest(request, base_url=base_url), HttpxOpenAPIResponse(response)
    )


def _template(path: str) -> str:
    """The spec's path template that matches a concrete path (literal segments win)."""
    paths = load_spec()["paths"]
    if path in paths:
        return path
    parts = path.strip("/").split("/")
    for template in paths:
        t_parts = template.strip("/").split("/")
        if len(t_parts) == len(parts) and all(
            t == p or (t.startswith("{") and t.endswith("}"))
            for t, p in zip(t_parts, parts, strict=True)
        ):
            return str(template)
    raise AssertionError(f"no spec path matches {path}")


_ALLOWED = re.compile(r"`([^`]+)`: ((?:`[a-z-]+`(?:, )?)+)")


@functools.cache
def allowed_filters(method: str, template: str) -> dict[str, frozenset[str]]:
    """field -> operators, from the operation's filter parameter description."""
    op = load_spec()["paths"][template][method.lower()]
    for param in op.get("parameters", []):
        if param.get("name") == "filter" and param.get("in") == "query":
            text = param.get("description", "").split("Allowed field(s)/operator(s):", 1)[-1]
            return {
                field: frozenset(re.findall(r"`([a-z-]+)`", ops))
                for field, ops in _ALLOWED.findall(text)
            }
    return {}


class FilterError(AssertionError):
    pass


def check_filter(method: str, template: str, text: str) -> None:
    """Parse a Klaviyo filter expression and check each (field, operator) is documented."""
    allowed = allowed_filters(method, template)
    for field, op in _parse_filter(text):
        if field not in allowed:
            raise FilterError(f"{method.upper()} {template}: cannot filter on {field!r}")
        if op not in allowed[field]:
            raise FilterError(f"{method.upper()} {template}: {op}({field},...) is not allowed")


def _parse_filter(text: str) -> list[tuple[str, str]]:
    pos = 0
    out: list[tuple[str, str]] = []

    def expect(ch: str) -> None:
        nonlocal pos
        if text[pos : pos + 1] != ch:
            raise FilterError(f"filter {text!r}: expected {ch!r} at {pos}")
        pos += 1

    def name() -> str:
        nonlocal pos
        m = re.compile(r"[A-Za-z_$][A-Za-z0-9_.$-]*").match(text, pos)
        if not m:
            raise FilterError(f"filter {text!r}: expected a name at {pos}")
        pos = m.end()
        return m.group()

    def value() -> None:
        nonlocal pos
        if text[pos : pos + 1] in ("'", '"'):
            quote = text[pos]
            end = text.find(quote, pos + 1)
            if end < 0:
                raise FilterError(f"filter {text!r}: unterminated string at {pos}")
            pos = end + 1
            return
        if text[pos : pos + 1] == "[":
            pos += 1
            while True:
                value()
                if text[pos : pos + 1] == ",":
                    pos += 1
                    continue
                expect("]")
                return
        m = re.compile(
            r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})?"
            r"|true|false|null|-?\d+(?:\.\d+)?"
        ).match(text, pos)
        if not m:
            raise FilterError(f"filter {text!r}: bad value at {pos}")
        pos = m.end()

    def expression() -> None:
        nonlocal pos
        op = name()
        expect("(")
        if op in ("and", "or", "not"):
            while True:
                expression()
                if text[pos : pos + 1] == ",":
                    pos += 1
                    continue
                break
        else:
            field = name()
            out.append((field, op))
            if op != "has":
                expect(",")
                value()
        expect(")")

    while True:
        expression()
        if pos < len(text) and text[pos] == ",":  # top-level comma = implicit and
            pos += 1
            continue
        break
    if pos != len(text):
        raise FilterError(f"filter {text!r}: unexpected text at {pos}")
    return out


def query_of(request: httpx.Request) -> Mapping[str, Any]:
    """The decoded query parameters of a request (first value per name)."""
    return dict(request.url.params)


# --- spec-shaped payloads -----------------------------------------------------------------------

_MISSING: Any = object()


def _example(schema: Mapping[str, Any], depth: int) -> Any:
    if depth > 12:
        return _MISSING
    if "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        return _example(load_spec()["components"]["schemas"][name], depth + 1)
    if "example" in schema:
        return schema["example"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("oneOf", "anyOf", "allOf"):
        if key in schema:
            return _example(schema[key][0], depth + 1)
    if schema.get("type") == "object" or "properties" in schema:
        out: dict[str, Any] = {}
        for name, prop in schema.get("properties", {}).items():
            value = _example(prop, depth + 1)
            if value is not _MISSING:
                out[name] = value
        return out
    return _MISSING


def example_of(schema_name: str) -> dict[str, Any]:
    """An object built from the spec's property-level `example`s (and first enum values).

    The spec has no whole-response examples; members without an example are left out, so a
    caller adds ids and links itself (and `validate_response` checks the result).
    """
    value = _example(load_spec()["components"]["schemas"][schema_name], 0)
    assert isinstance(value, dict)
    return value


def _links(kind: str, rid: str) -> dict[str, str]:
    return {"self": f"https://a.klaviyo.com/api/{kind}s/{rid}/"}


def profile_resource(
    profile_id: str = "01GDDKASAP8TKDDA2GRZDSVP4H", **attrs: Any
) -> dict[str, Any]:
    """A ProfileResponseObjectResource from the spec's examples; `attrs` override attributes."""
    res = example_of("ProfileResponseObjectResource")
    res["id"] = profile_id
    res["attributes"].update(attrs)
    res["relationships"] = {}
    res["links"] = _links("profile", profile_id)
    return res


def metric_resource(metric_id: str, name: str, integration: str = "Klaviyo") -> dict[str, Any]:
    res = example_of("MetricResponseObjectResource")
    res["id"] = metric_id
    res["attributes"].update(
        {"name": name, "integration": {"name": integration, "category": "Internal"}}
    )
    res["relationships"] = {}
    res["links"] = _links("metric", metric_id)
    return res


def event_resource(
    event_id: str,
    *,
    metric_id: str | None = "RESQ6t",
    profile_id: str | None = "01GDDKASAP8TKDDA2GRZDSVP4H",
    properties: Mapping[str, Any] | None = None,
    datetime: str | None = None,
    timestamp: int | None = None,
) -> dict[str, Any]:
    """An EventResponseObjectResource from the spec's examples (datetime 2022-11-08T01:23:45Z)."""
    res = example_of("EventResponseObjectResource")
    attrs = res["attributes"]
    attrs["event_properties"] = dict(properties or {})
    if datetime is not None:
        attrs["datetime"] = datetime
    if timestamp is not None:
        attrs["timestamp"] = timestamp
    res["id"] = event_id
    rels: dict[str, Any] = {}
    if profile_id is not None:
        rels["profile"] = {"data": {"type": "profile", "id": profile_id}}
    if metric_id is not None:
        rels["metric"] = {"data": {"type": "metric", "id": metric_id}}
    res["relationships"] = rels
    res["links"] = _links("event", event_id)
    return res
