"""JSON:API documents as Klaviyo sends them: decoding, shape checks, links and errors.

Pure: no I/O. Anything that is not a well-formed JSON:API document raises `JsonApiError`
(the client turns it into `KlaviyoProtocolError`), so callers only ever see resources with a
string `type` and `id`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypedDict

import orjson

from sendflowr.connectors.klaviyo.constants import JSON_API

# Content types accepted for a JSON:API body (some proxies rewrite the vendor type).
ACCEPTED_CONTENT_TYPES: Final = frozenset({JSON_API, "application/json"})


class Resource(TypedDict, total=False):
    """A JSON:API resource object; `type` and `id` are always present once parsed."""

    type: str
    id: str
    attributes: dict[str, Any]
    relationships: dict[str, Any]
    links: dict[str, Any]


class JsonApiError(ValueError):
    """The body is not a JSON:API document of the expected shape."""


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    """One entry of a JSON:API `errors` array (every field optional on the wire)."""

    status: str | None = None
    code: str | None = None
    title: str | None = None
    detail: str | None = None
    source_pointer: str | None = None
    source_parameter: str | None = None

    def describe(self) -> str:
        text = self.detail or self.title or self.code or "error"
        where = self.source_parameter or self.source_pointer
        return f"{text} (at {where})" if where else text


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def decode_document(body: bytes, content_type: str) -> dict[str, Any]:
    """Decode a success body: a JSON object with a `data` member."""
    kind = media_type(content_type)
    if kind not in ACCEPTED_CONTENT_TYPES:
        raise JsonApiError(f"expected {JSON_API}, got {kind or 'no content type'!r}")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise JsonApiError(f"body is not valid JSON ({len(body)} bytes): {exc}") from None
    if not isinstance(doc, dict):
        raise JsonApiError(f"top level must be an object, got {type(doc).__name__}")
    if "data" not in doc:
        raise JsonApiError("top level has no 'data' member")
    return doc


def check_resource(value: Any, where: str) -> Resource:
    """`value` as a resource (an object with string `type` and `id`); JsonApiError if not."""
    return _check_resource(value, where)


def _check_resource(value: Any, where: str) -> Resource:
    if not isinstance(value, dict):
        raise JsonApiError(f"{where}: a resource must be an object, got {type(value).__name__}")
    if not isinstance(value.get("type"), str) or not isinstance(value.get("id"), str):
        raise JsonApiError(f"{where}: a resource needs string 'type' and 'id'")
    for member in ("attributes", "relationships", "links"):
        if member in value and value[member] is not None and not isinstance(value[member], dict):
            raise JsonApiError(f"{where}.{member}: must be an object")
    resource: Resource = value  # type: ignore[assignment]
    return resource


def primary_resources(doc: Mapping[str, Any]) -> list[Resource]:
    """`data` as a list of resources (a collection document)."""
    data = doc.get("data")
    if not isinstance(data, list):
        raise JsonApiError(f"data: expected a list, got {type(data).__name__}")
    return [_check_resource(item, f"data[{i}]") for i, item in enumerate(data)]


def primary_resource(doc: Mapping[str, Any]) -> Resource:
    """`data` as a single resource."""
    return _check_resource(doc.get("data"), "data")


def included_resources(doc: Mapping[str, Any], type_: str | None = None) -> dict[str, Resource]:
    """`included` resources (optionally of one type) by id."""
    included = doc.get("included", [])
    if included is None:
        return {}
    if not isinstance(included, list):
        raise JsonApiError(f"included: expected a list, got {type(included).__name__}")
    out: dict[str, Resource] = {}
    for i, item in enumerate(included):
        res = _check_resource(item, f"included[{i}]")
        if type_ is None or res["type"] == type_:
            out[res["id"]] = res
    return out


def next_link(doc: Mapping[str, Any]) -> str | None:
    """`links.next`, or None at the end of a collection."""
    links = doc.get("links")
    if links is None:
        return None
    if not isinstance(links, dict):
        raise JsonApiError("links: must be an object")
    nxt = links.get("next")
    if nxt is None or nxt == "":
        return None
    if not isinstance(nxt, str):
        raise JsonApiError(f"links.next: expected a string, got {type(nxt).__name__}")
    return nxt


def relationship_id(resource: Mapping[str, Any], name: str) -> str | None:
    """The id in `relationships.<name>.data.id`, when it is a to-one relationship."""
    rels = resource.get("relationships")
    if not isinstance(rels, dict):
        return None
    rel = rels.get(name)
    if not isinstance(rel, dict):
        return None
    data = rel.get("data")
    if isinstance(data, dict) and isinstance(data.get("id"), str):
        return str(data["id"])
    return None


def relationship_ids(resource: Mapping[str, Any], name: str) -> list[str]:
    """The ids in a to-many `relationships.<name>.data`."""
    rels = resource.get("relationships")
    rel = rels.get(name) if isinstance(rels, dict) else None
    data = rel.get("data") if isinstance(rel, dict) else None
    if not isinstance(data, list):
        return []
    return [str(d["id"]) for d in data if isinstance(d, dict) and isinstance(d.get("id"), str)]


def error_details(body: bytes) -> tuple[ErrorDetail, ...]:
    """The `errors` of an error body; empty when the body is not a JSON:API error document."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ()
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return ()

    def text(value: Any) -> str | None:
        return value if isinstance(value, str) else None

    out: list[ErrorDetail] = []
    for err in errors:
        if not isinstance(err, dict):
            continue
        source = err.get("source")
        if not isinstance(source, dict):
            source = {}
        out.append(
            ErrorDetail(
                status=str(status) if isinstance(status := err.get("status"), str | int) else None,
                code=text(err.get("code")),
                title=text(err.get("title")),
                detail=text(err.get("detail")),
                source_pointer=text(source.get("pointer")),
                source_parameter=text(source.get("parameter")),
            )
        )
    return tuple(out)


def encode(body: Mapping[str, Any]) -> bytes:
    return orjson.dumps(body)
