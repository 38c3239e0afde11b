"""The one event record shared by every stage: score output, watch alerts, audit, reports."""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

#: Columns of an event table, in output order.
EVENT_FIELDS = (
    "id", "entity", "start", "end", "score", "cause", "confidence", "top_causes",
    "top_metrics", "playbook", "cause_source", "status", "top_z", "group", "suspects",
    "evidence",
)


def event_id(entity: str, start: pd.Timestamp, model_version: str) -> str:
    """Stable id: the same entity, start and model always give the same id."""
    key = f"{entity}\x1f{pd.Timestamp(start).isoformat()}\x1f{model_version}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def iso(ts: pd.Timestamp) -> str:
    ts = pd.Timestamp(ts)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Event:
    entity: str
    start: pd.Timestamp
    end: pd.Timestamp
    score: float
    cause: str = "unknown"
    confidence: float = 0.0
    top_causes: list[tuple[str, float]] = field(default_factory=list)
    top_metrics: list[str] = field(default_factory=list)
    playbook: str | None = None
    cause_source: str = "none"  # "classifier", "rule:<name>" or "none"
    status: str = "resolved"  # "open" while the anomaly lasts (online), else "resolved"
    id: str = ""
    # z of each top metric against the entity's baseline (largest |z| of the event's windows)
    top_z: list[float] = field(default_factory=list)
    group: str = ""  # incident id shared by co-occurring events (ftml.incidents)
    suspects: list[list] = field(default_factory=list)  # [[entity, score], ...], best first
    evidence: list[str] = field(default_factory=list)  # why, for the top suspects

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["start"] = iso(self.start)
        d["end"] = iso(self.end)
        d["score"] = _round(self.score)
        d["confidence"] = _round(self.confidence)
        d["top_causes"] = [[c, _round(p)] for c, p in self.top_causes]
        d["top_z"] = [_round(z) for z in self.top_z]
        d["suspects"] = [[str(e), _round(s)] for e, s in self.suspects]
        return {k: d[k] for k in EVENT_FIELDS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        return cls(
            entity=str(d["entity"]),
            start=pd.Timestamp(d["start"]),
            end=pd.Timestamp(d["end"]),
            score=float(d["score"]),
            cause=str(d.get("cause", "unknown")),
            confidence=float(d.get("confidence", 0.0)),
            top_causes=[(str(c), float(p)) for c, p in d.get("top_causes") or []],
            top_metrics=list(d.get("top_metrics") or []),
            playbook=d.get("playbook"),
            cause_source=str(d.get("cause_source", "none")),
            status=str(d.get("status", "resolved")),
            id=str(d.get("id", "")),
            top_z=[float(z) for z in _listish(d.get("top_z"))],
            group=str(d.get("group") or ""),
            suspects=[[str(e), float(s)] for e, s in _listish(d.get("suspects"))],
            evidence=[str(x) for x in _listish(d.get("evidence"))],
        )


def _listish(v: Any) -> list:
    """A list field as read back: a list, JSON text (CSV output) or nothing."""
    if isinstance(v, str):
        import json

        v = json.loads(v) if v.strip() else []
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return []
    return list(v)


def _round(x: float) -> float:
    x = float(x)
    return x if math.isnan(x) else round(x, 6)
