"""The limits and page sizes SendFlowr obeys are the ones Klaviyo's spec publishes."""

from __future__ import annotations

import re

from sendflowr.connectors.klaviyo.constants import MAX_PAGE_SIZE, RATE_LIMITS, REVISION
from tests.klaviyo.spec import load_spec


def _per(value: str, unit: str) -> int:
    match = re.fullmatch(rf"(\d+)/{unit}", value)
    assert match, value
    return int(match.group(1))


def test_revision_is_the_spec_version() -> None:
    assert load_spec()["info"]["version"] == REVISION


def test_rate_limits_match_the_spec() -> None:
    paths = load_spec()["paths"]
    for (method, path), limit in RATE_LIMITS.items():
        published = paths[path][method.lower()]["x-klaviyo-ratelimit"]
        assert limit.burst_per_second == _per(published["burst"], "s"), (method, path)
        assert limit.steady_per_minute == _per(published["steady"], "m"), (method, path)


def test_page_sizes_match_the_spec() -> None:
    paths = load_spec()["paths"]
    for path, size in MAX_PAGE_SIZE.items():
        params = {p.get("name"): p for p in paths[path]["get"]["parameters"]}
        assert params["page[size]"]["schema"]["maximum"] == size, path
