"""The one pipeline core that every driver runs: local batch, chunked batch, Dask and watch.

Drivers differ only in where rows come from and where events go; what happens to the rows is
written once, here, in one module per job:

- **row plan** (``plan``: :func:`carry_steps`): how many raw rows before a window its features
  need, and the featurizer, detector, event rules and gate a configuration builds.
- **scoring** (``scoring``: :class:`WindowScorer`): normalised frames -> complete windows (one
  block loop, :meth:`ftml.features.Featurizer.window_blocks`) -> forest scores -> one gate
  (:class:`ftml.detect.FlagGate`) -> the :class:`ftml.detect.EventBuilder` (or any sink with
  its ``push``); :func:`finish_scoring` ends every scoring run.
- **metric screen** (``screen``): metrics that cannot help are left out of training.
- **training** (``training``: the phase functions and :class:`TrainInfo`): which windows fit
  the forest, which calibrate the threshold, which teach the diagnoser; local training runs
  them on one frame, Dask training on entity groups, and both finish with
  :func:`finish_training`.
- ``progress``: bars and the training stage line on a terminal.

The modules import in that order (progress, plan, screen, scoring, training); every public name
is found here, as ``ftml.pipeline.X``.
"""

from ftml.pipeline.plan import (
    carry_steps,
    chunk_carry_steps,
    detector_of,
    event_rules_of,
    featurizer_of,
    gate_of,
    hold_steps,
    window_history,
)
from ftml.pipeline.progress import (
    TRAIN_STAGES,
    Stages,
    progress,
    with_progress,
)
from ftml.pipeline.scoring import (
    FEATURE_BLOCK_ROWS,
    SCORE_CHUNK_ROWS,
    EventSink,
    ScoredBlock,
    ScoreResult,
    WindowRecorder,
    WindowScorer,
    finish_scoring,
    publish_events,
    unseen_entities,
    unseen_entities_warning,
    window_table,
    write_events,
    write_groups,
)
from ftml.pipeline.screen import (
    dropped_text,
    dropped_warning,
    metrics_to_screen,
    remember_dropped,
    require_metrics,
    screen_metrics,
    without_metrics,
)
from ftml.pipeline.training import (
    CAL_BLOCK_WINDOWS,
    ENSEMBLE_SCALES,
    MAX_FIT_WINDOWS,
    MIN_FIT_WINDOWS,
    HealthyCandidates,
    TrainInfo,
    TrainResult,
    active_time,
    budget_scaled,
    budget_scales,
    calibration_cut,
    calibration_cuts,
    calibration_info,
    calibration_parts,
    calibration_scores,
    few_windows_cause,
    finish_training,
    fit_diagnoser,
    fit_sample,
    fit_view,
    healthy_candidates,
    healthy_windows,
    incident_of_rows,
    incident_windows,
    observed_rows,
    require_fit_windows,
    split_windows,
    top_per_group,
    utc_text,
)

__all__ = [
    "active_time",
    "budget_scaled",
    "budget_scales",
    "calibration_parts",
    "ENSEMBLE_SCALES",
    "CAL_BLOCK_WINDOWS",
    "calibration_cut",
    "calibration_cuts",
    "calibration_info",
    "calibration_scores",
    "carry_steps",
    "chunk_carry_steps",
    "hold_steps",
    "detector_of",
    "dropped_text",
    "dropped_warning",
    "event_rules_of",
    "EventSink",
    "FEATURE_BLOCK_ROWS",
    "featurizer_of",
    "few_windows_cause",
    "finish_scoring",
    "finish_training",
    "fit_diagnoser",
    "fit_sample",
    "fit_view",
    "gate_of",
    "healthy_candidates",
    "healthy_windows",
    "HealthyCandidates",
    "incident_of_rows",
    "incident_windows",
    "MAX_FIT_WINDOWS",
    "MIN_FIT_WINDOWS",
    "metrics_to_screen",
    "observed_rows",
    "progress",
    "publish_events",
    "remember_dropped",
    "require_fit_windows",
    "require_metrics",
    "SCORE_CHUNK_ROWS",
    "ScoredBlock",
    "ScoreResult",
    "screen_metrics",
    "split_windows",
    "Stages",
    "top_per_group",
    "TRAIN_STAGES",
    "TrainInfo",
    "TrainResult",
    "unseen_entities",
    "unseen_entities_warning",
    "utc_text",
    "window_history",
    "window_table",
    "WindowRecorder",
    "WindowScorer",
    "with_progress",
    "without_metrics",
    "write_events",
    "write_groups",
]
