"""What every backend reports about itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

State = Literal["ok", "degraded", "down"]


@dataclass(frozen=True, slots=True)
class BackendHealth:
    port: str
    backend: str
    state: State
    detail: str = ""
    info: dict[str, str | int | float] = field(default_factory=dict)
