"""Ground-truth simulator: synthetic audiences whose true engagement intensity is known."""

from sendflowr.simulate.config import (
    DEFAULT_PERSONA_MIX,
    DEFAULT_TIME_ZONES,
    SimConfig,
    TrueProfile,
)
from sendflowr.simulate.delivery import Sends
from sendflowr.simulate.emit import KIND_CAMPAIGN, KIND_FLOW, Message
from sendflowr.simulate.groundtruth import Simulation, config_for_event_count, simulate
from sendflowr.simulate.intensity import GroundTruth
from sendflowr.simulate.output import read_events, read_truth, write_simulation
from sendflowr.simulate.personas import PERSONA_NAMES, PERSONAS, Persona, base_rate, cumulative

__all__ = [
    "DEFAULT_PERSONA_MIX",
    "DEFAULT_TIME_ZONES",
    "KIND_CAMPAIGN",
    "KIND_FLOW",
    "PERSONAS",
    "PERSONA_NAMES",
    "GroundTruth",
    "Message",
    "Persona",
    "Sends",
    "SimConfig",
    "Simulation",
    "TrueProfile",
    "base_rate",
    "config_for_event_count",
    "cumulative",
    "read_events",
    "read_truth",
    "simulate",
    "write_simulation",
]
