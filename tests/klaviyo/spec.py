"""Klaviyo's official OpenAPI description, loaded once per test session."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import pytest


def spec_path() -> Path | None:
    """../shared/klaviyo-openapi/stable.json beside the repository (or $SENDFLOWR_SHARED_DIR)."""
    candidates = [Path(__file__).resolve().parents[3] / "shared" / "klaviyo-openapi"]
    if shared := os.environ.get("SENDFLOWR_SHARED_DIR"):
        candidates.append(Path(shared) / "klaviyo-openapi")
    return next((p / "stable.json" for p in candidates if (p / "stable.json").is_file()), None)


@functools.cache
def load_spec() -> dict[str, Any]:
    path = spec_path()
    if path is None:
        pytest.fail("Klaviyo's spec is missing: expected ../shared/klaviyo-openapi/stable.json")
    spec: dict[str, Any] = json.loads(path.read_text())
    return spec
