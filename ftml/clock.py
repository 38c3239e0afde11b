"""Where time is read and waited for: the real clock, and a fake one that moves only when told."""

from __future__ import annotations

import time
from typing import Any, Protocol, runtime_checkable

import pandas as pd


@runtime_checkable
class Clock(Protocol):
    """Where the engine reads the time and waits. ``now()`` is seconds since the epoch."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class FakeClock:
    """A clock that only moves when told: ``sleep`` advances it at once."""

    def __init__(self, start: float | str | pd.Timestamp = 0.0):
        self.t = epoch_seconds(start)
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        seconds = max(0.0, float(seconds))
        self.slept.append(seconds)
        self.t += seconds

    def advance(self, seconds: float) -> None:
        self.t += float(seconds)

    def set(self, at: float | str | pd.Timestamp) -> None:
        self.t = epoch_seconds(at)


def epoch_seconds(ts: Any) -> float:
    """A time as seconds since the epoch; naive times are taken as UTC."""
    if isinstance(ts, (int, float)) and not isinstance(ts, bool):
        return float(ts)
    ts = pd.Timestamp(ts)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return (ts - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
