"""The simulator's only I/O: a simulation as `events.jsonl` plus `truth.json`, and reading back."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import msgspec

from sendflowr.events import CanonicalEvent
from sendflowr.simulate.config import SimConfig, TrueProfile
from sendflowr.simulate.emit import Message
from sendflowr.simulate.groundtruth import Simulation
from sendflowr.simulate.intensity import GroundTruth

EVENTS_FILE: Final = "events.jsonl"
TRUTH_FILE: Final = "truth.json"
TRUTH_FORMAT: Final = 1
_CHUNK: Final = 50_000  # events encoded per write, to bound memory on large simulations


class _Truth(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: int
    config: SimConfig
    profiles: list[TrueProfile]
    messages: list[Message]


def write_simulation(sim: Simulation, directory: str | Path) -> Path:
    """Write `events.jsonl` (one canonical event a line) and `truth.json`; returns the directory."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    encoder = msgspec.json.Encoder()
    with (out / EVENTS_FILE).open("wb") as fh:
        for i in range(0, len(sim.events), _CHUNK):
            fh.write(encoder.encode_lines(sim.events[i : i + _CHUNK]))
    truth = _Truth(TRUTH_FORMAT, sim.config, sim.profiles, sim.messages)
    (out / TRUTH_FILE).write_bytes(encoder.encode(truth) + b"\n")
    return out


def read_truth(directory: str | Path) -> GroundTruth:
    """The ground truth of a written simulation: config, profiles, and their true intensities."""
    truth = msgspec.json.decode((Path(directory) / TRUTH_FILE).read_bytes(), type=_Truth)
    if truth.format != TRUTH_FORMAT:
        raise ValueError(f"{TRUTH_FILE}: unsupported format {truth.format}")
    return GroundTruth(truth.config, truth.profiles)


def read_events(directory: str | Path) -> list[CanonicalEvent]:
    raw = (Path(directory) / EVENTS_FILE).read_bytes()
    return msgspec.json.Decoder(CanonicalEvent).decode_lines(raw)
