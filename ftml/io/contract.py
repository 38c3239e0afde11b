"""The metric contract: :class:`MetricData`, what every reader produces and later stages trust."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class MetricData:
    """Metrics in the contract: ``frame`` has columns ``entity``, ``timestamp`` and one float64
    column per metric, sorted by entity then timestamp, one row per step of each entity's span
    (steps nobody measured are rows of NaN)."""

    frame: pd.DataFrame
    step: pd.Timedelta
    metrics: list[str]
    sources: list[str] = field(default_factory=list)
    # Columns left out, and why (e.g. text columns read with ``drop_text``): metric -> reason.
    dropped: dict[str, str] = field(default_factory=dict)

    @property
    def entities(self) -> list[str]:
        return list(pd.unique(self.frame["entity"]))

    def values(self) -> np.ndarray:
        return self.frame[self.metrics].to_numpy(dtype=np.float64)

    def entity_codes(self) -> tuple[np.ndarray, list[str]]:
        codes, uniques = pd.factorize(self.frame["entity"], sort=False)
        return codes.astype(np.int64), [str(u) for u in uniques]

    def span(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        ts = self.frame["timestamp"]
        return ts.min(), ts.max()


_log = logging.getLogger("ftml.io")
_said: set[str] = set()


def note_once(message: str) -> None:
    """One stderr line (a warning of the ``ftml.io`` logger) for what a reader did about the
    data, said once per process: a file read in chunks, or tailed by ``watch`` tick after tick,
    does not repeat it."""
    if message in _said:
        return
    if len(_said) > 10_000:  # a long-lived watch over ever-new files: bounded
        _said.clear()
    _said.add(message)
    _log.warning("%s", message)
