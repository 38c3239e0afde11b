"""Detection in three separate steps: score (IsolationForest), threshold (calibrated to a
false-alarm budget), and decision (window flags -> events with minimum duration, merging and
cooldown). The same :class:`EventBuilder` serves one-shot batch, chunked batch and the online
loop, so all three give the same events for the same windows.

One module per seam; each imports only the ones above it:

* ``forest``: the score, :class:`IsolationDetector` (and the opt-in ensemble with the robust
  statistic, :func:`combine_scores`); its forest is walked by :mod:`ftml.fast`;
* ``builder``: the decision, :class:`EventBuilder` by the :class:`EventRules`;
* ``gate``: which scored windows reach the builder, :class:`FlagGate`;
* ``threshold``: :class:`AlarmThreshold`, the budget's threshold (with its tail fit,
  :func:`tail_threshold`).

Every public name is importable from ``ftml.detect`` itself.
"""

from __future__ import annotations

from ftml.detect.builder import (
    BUILDER_STATE_VERSION,
    EventBuilder,
    EventRules,
    RawEvent,
    build_events,
    find_runs,
)
from ftml.detect.forest import ENSEMBLES, IsolationDetector, combine_scores
from ftml.detect.gate import GATE_STATE_VERSION, FlagGate
from ftml.detect.threshold import (
    MAX_TAIL_EXTRAPOLATION,
    MIN_TAIL_PEAKS,
    NS_PER_DAY,
    TAIL_PEAKS,
    TAIL_SHAPE,
    AlarmThreshold,
    opening_scores,
    overlaps,
    tail_threshold,
)

__all__ = [
    "BUILDER_STATE_VERSION", "ENSEMBLES", "GATE_STATE_VERSION", "MAX_TAIL_EXTRAPOLATION",
    "MIN_TAIL_PEAKS", "NS_PER_DAY", "TAIL_PEAKS", "TAIL_SHAPE", "AlarmThreshold",
    "EventBuilder", "EventRules", "FlagGate", "IsolationDetector", "RawEvent", "build_events",
    "combine_scores", "find_runs", "opening_scores", "overlaps", "tail_threshold",
]
