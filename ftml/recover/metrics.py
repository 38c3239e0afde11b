"""Where verification reads metrics: the ``MetricReader`` protocol and a reader over a metric
frame."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from ftml.clock import Clock
from ftml.errors import ConfigError


@runtime_checkable
class MetricReader(Protocol):
    """The latest value of one metric of one entity, or None if there is none."""

    def latest(self, entity: str, metric: str) -> float | None: ...


class FrameMetricReader:
    """Reads a long metric frame (timestamp, entity, one column per metric) at clock time.

    ``latest`` returns the last value at or before ``clock.now()``; a value older than
    ``max_age`` seconds counts as missing (default: three times the median spacing).
    In ``replay`` this is what makes verification read the windows after an action.
    """

    def __init__(self, frame: pd.DataFrame, clock: Clock, timestamp_col: str = "timestamp",
                 entity_col: str = "entity", max_age: float | None = None):
        for col in (timestamp_col, entity_col):
            if col not in frame.columns:
                raise ConfigError(f"metric frame has no column '{col}'", source="metrics",
                                  hint=f"columns are {', '.join(map(str, frame.columns))}")
        self.clock = clock
        times = _epoch_array(frame[timestamp_col])
        order = np.lexsort((times, frame[entity_col].astype(str).to_numpy()))
        sorted_frame = frame.iloc[order]
        sorted_times = times[order]
        self._series: dict[str, tuple[np.ndarray, pd.DataFrame]] = {}
        entities = sorted_frame[entity_col].astype(str).to_numpy()
        bounds = np.flatnonzero(entities[1:] != entities[:-1]) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(entities)], strict=True):
            if hi > lo:
                self._series[entities[lo]] = (sorted_times[lo:hi], sorted_frame.iloc[lo:hi])
        if max_age is None:
            steps = np.diff(np.unique(times))
            max_age = float(np.median(steps)) * 3 if len(steps) else float("inf")
        self.max_age = max_age

    def latest(self, entity: str, metric: str) -> float | None:
        series = self._series.get(entity)
        if series is None:
            return None
        times, rows = series
        if metric not in rows.columns:
            return None
        now = self.clock.now()
        i = int(np.searchsorted(times, now, side="right")) - 1
        if i < 0 or now - times[i] > self.max_age:
            return None
        value = rows[metric].iloc[i]
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        return None if np.isnan(value) else value


def _epoch_array(values: pd.Series) -> np.ndarray:
    ts = pd.to_datetime(values, utc=True)
    return ((ts - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(dtype=float)
