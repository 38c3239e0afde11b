"""The row plan (how many raw rows before a window its features need) and the pieces a model's
configuration builds: featurizer, detector, event rules, gate."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftml.bundle import Model
from ftml.config import DetectConfig, FeatureConfig, ReadConfig
from ftml.detect import EventRules, FlagGate
from ftml.features import (
    Featurizer,
)

if TYPE_CHECKING:  # scikit-learn's estimators: imported where training needs them
    from ftml.detect import IsolationDetector


def hold_steps(read: ReadConfig) -> int:
    """Steps before an entity's newest row whose windows a chunk of a file cannot make final:
    a trailing gap there may still be filled (``max_fill_steps``), and even without filling
    the newest step itself may have another reading in the next chunk (two readings of one
    step, a row off the step), so at least one."""
    return max(int(read.max_fill_steps), 1)


def window_history(featurizer: Featurizer, read: ReadConfig) -> int:
    """Steps of raw rows before a window's end that its features depend on: its own rows and
    its levels' span (``history_steps``), the row before (a counter's rate), and for a gap at
    its start up to ``max_fill_steps`` rows back to the reading that fills it, plus one. A Dask
    slice reads this many steps before it."""
    return int(featurizer.history_steps) + int(read.max_fill_steps) + 2


def carry_steps(featurizer: Featurizer, read: ReadConfig) -> int:
    """Raw rows of an entity kept for the windows not yet final: a window waits up to
    ``max_fill_steps`` steps for a gap at its end to be filled or not, and then needs its
    :func:`window_history`. Chunked scoring carries this many rows from chunk to chunk and
    watch keeps this many per entity."""
    return window_history(featurizer, read) + int(read.max_fill_steps)


def chunk_carry_steps(featurizer: Featurizer, read: ReadConfig) -> int:
    """Raw rows of an entity chunked scoring carries from chunk to chunk when the trailing
    level's state goes along (:class:`~ftml.features.LevelCarry`, ``WindowScorer(carry=True)``):
    the windows not yet final start ``window - 1`` rows before the last final one, which is
    :func:`hold_steps` before the newest row; their first row may be filled from up to
    ``max_fill_steps`` rows before it and its rate needs the row before. The level's span is
    not among them: the z of its last ``level_window`` rows are carried instead."""
    return int(featurizer.window) + int(read.max_fill_steps) + hold_steps(read)


def featurizer_of(fc: FeatureConfig, read: ReadConfig | None = None) -> Featurizer:
    """An unfitted featurizer with the settings of a ``FeatureConfig`` (and of ``read``:
    ``stem_baselines``)."""
    stems = ReadConfig.stem_baselines if read is None else bool(read.stem_baselines)
    return Featurizer(window=fc.window, stride=fc.stride, hour_of_day=fc.hour_of_day,
                      level_window=fc.level_window, level_clip=fc.level_clip,
                      stem_baselines=stems)


def detector_of(dc: DetectConfig) -> IsolationDetector:
    from ftml.detect import IsolationDetector

    return IsolationDetector(n_estimators=dc.n_estimators, max_samples=dc.max_samples,
                             random_state=dc.random_state, ensemble=dc.ensemble,
                             view=dc.view)


def event_rules_of(dc: DetectConfig) -> EventRules:
    return EventRules(min_windows=dc.min_windows, of_windows=dc.of_windows,
                      merge_gap=dc.merge_gap, cooldown=dc.cooldown)


def gate_of(model: Model) -> FlagGate:
    """The gate in front of a model's event builder."""
    return FlagGate(rules=model.event_rules, threshold=model.threshold,
                    step_ns=int(model.step.value))

