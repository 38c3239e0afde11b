"""Honest event-level evaluation of events against labelled incidents.

An incident counts as found when an event of the same entity overlaps it (with a small stated
tolerance); an event is a false alarm when it overlaps no incident. False alarms are counted
per entity per day of scored data.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ftml.diagnose import UNKNOWN
from ftml.events import Event
from ftml.io import to_ns

NS_PER_DAY = 86_400 * 10**9
#: How far an event may miss an incident and still count as finding it.
MATCH_TOLERANCE = pd.Timedelta(minutes=5)


def event_metrics(events: list[Event], incidents: pd.DataFrame, entity_days: float,
                  tolerance: pd.Timedelta = MATCH_TOLERANCE) -> dict[str, Any]:
    """Event recall / precision / F1, false alarms per entity-day, detection delay and
    diagnosis accuracy (on the incidents that were found) for one scored period."""
    tol = int(tolerance.value)
    inc_ent = incidents["entity"].to_numpy(dtype=object).astype(str)
    inc_start, inc_end = to_ns(incidents["start"]), to_ns(incidents["end"])
    inc_cause = incidents["cause"].to_numpy(dtype=object).astype(str)
    ev_ent = np.array([e.entity for e in events], dtype=object).astype(str)
    ev_start = np.array([pd.Timestamp(e.start).value for e in events], dtype=np.int64)
    ev_end = np.array([pd.Timestamp(e.end).value for e in events], dtype=np.int64)
    # Overlap matrix incidents x events: small (hundreds x hundreds), so dense is fine.
    hit = (inc_ent[:, None] == ev_ent[None, :]) & \
          (ev_start[None, :] <= inc_end[:, None] + tol) & \
          (ev_end[None, :] >= inc_start[:, None] - tol)
    found = hit.any(axis=1)
    true_event = hit.any(axis=0)
    n_inc, n_ev = len(inc_ent), len(events)
    recall = found.mean() if n_inc else float("nan")
    precision = true_event.mean() if n_ev else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if n_inc and n_ev and \
        precision + recall > 0 else 0.0
    false_alarms = int((~true_event).sum())
    delays, right, abstained, per_cause = [], [], [], {}
    for i in np.flatnonzero(found):
        j = np.flatnonzero(hit[i])
        first = j[np.argmin(ev_start[j])]
        delays.append(max(0, ev_start[first] - inc_start[i]) / 60e9)
        cause = events[first].cause
        right.append(cause == inc_cause[i])
        abstained.append(cause == UNKNOWN)
        stats = per_cause.setdefault(inc_cause[i], {"incidents": 0, "found": 0, "right": 0})
        stats["found"] += 1
        stats["right"] += int(cause == inc_cause[i])
    for c in inc_cause:
        per_cause.setdefault(c, {"incidents": 0, "found": 0, "right": 0})["incidents"] += 1
    return {
        "incidents": n_inc, "events": n_ev, "found": int(found.sum()),
        "event_recall": float(recall), "event_precision": float(precision),
        "event_f1": float(f1), "false_alarms": false_alarms,
        "false_alarms_per_entity_day": false_alarms / entity_days if entity_days else 0.0,
        "entity_days": float(entity_days),
        "delay_minutes_median": float(np.median(delays)) if delays else float("nan"),
        "delay_minutes_p90": float(np.percentile(delays, 90)) if delays else float("nan"),
        "diagnosis_accuracy": float(np.mean(right)) if right else float("nan"),
        "diagnosis_abstained": float(np.mean(abstained)) if abstained else float("nan"),
        "per_cause": per_cause,
    }


def entity_days_of(frame: pd.DataFrame, step: pd.Timedelta) -> float:
    """Entity-days of data actually present (rows with any value), the denominator of the
    false-alarm rate."""
    present = frame.drop(columns=["entity", "timestamp"]).notna().any(axis=1).sum()
    return float(present) * step.value / NS_PER_DAY
