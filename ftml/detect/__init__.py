"""Detection in three separate steps: score (IsolationForest), threshold (calibrated to a
false-alarm budget), and decision (window flags -> events with minimum duration, merging and
cooldown). The same :class:`EventBuilder` serves one-shot batch, chunked batch and the online
loop, so all three give the same events for the same windows.

One module per seam; each imports only the ones above it:

* ``scorer``: the score, :class:`ForestScorer` (and the opt-in ensemble with the robust
  statistic, :func:`combine_scores`): a fitted forest's node arrays, walked by :mod:`ftml.fast`,
  without scikit-learn; a bundle's detector is one;
* ``forest``: :class:`IsolationDetector`, which fits the forest (scikit-learn's kind of
  estimator, and a ForestScorer); imported on first use, so that scoring a saved model never
  imports scikit-learn;
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
from ftml.detect.gate import GATE_STATE_VERSION, FlagGate
from ftml.detect.scorer import ENSEMBLES, VIEWS, ForestScorer, balanced_view, combine_scores
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
    "VIEWS", "EventBuilder", "EventRules", "FlagGate", "ForestScorer", "IsolationDetector",
    "RawEvent", "balanced_view", "build_events", "combine_scores", "find_runs",
    "opening_scores", "overlaps", "tail_threshold",
]


def __getattr__(name: str):
    # IsolationDetector is scikit-learn's kind of estimator: importing it imports scikit-learn
    # and scipy (seconds), which scoring a saved model never needs (ForestScorer), so it is
    # loaded on first use: ``from ftml.detect import IsolationDetector`` works as before.
    if name == "IsolationDetector":
        from ftml.detect.forest import IsolationDetector

        return IsolationDetector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
