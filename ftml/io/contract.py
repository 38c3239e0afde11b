"""The metric contract: :class:`MetricData`, what every reader produces and later stages trust."""

from __future__ import annotations

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
