"""Typed configuration: the one home of ftml's defaults.

Loaded from a YAML file (``--config ftml.yaml``) whose top-level sections match the
dataclasses below; command-line options then override single fields.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftml.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

# pandas and yaml are imported where they are used: the command line imports this module
# for every command, and `ftml --help` must not wait for pandas (0.5 s).


@dataclass
class ReadConfig:
    """How metric files are read and normalised (the metric contract)."""

    timestamp_col: str | None = None  # None: "timestamp", "time", "ts" or "date"
    entity_col: str | None = None  # None: "entity", "host", "instance", "pod" or "service"
    step: str | None = None  # e.g. "60s"; None: inferred from the median spacing
    max_fill_steps: int = 3  # gaps up to this many steps are forward-filled
    exclude: list[str] = field(default_factory=list)  # non-numeric columns to drop
    # Regex that maps entity names to stable ones (its group 'entity', or its one group):
    # Kubernetes pods 'ts-order-service-5d8f9c7b6-x2x4z' -> 'ts-order-service'. None: as read.
    entity_map: str | None = None
    # An entity not in training whose name less a generated suffix (ftml.io.entity_stem: a
    # pod's deploy hash, 'checkout-b21c0' -> 'checkout') is the stem of trained entities is
    # scored against their baseline, not the fleet-wide one (a mixture of all services).
    # Names the entity_map maps are its stable names first. False: the fleet-wide one.
    stem_baselines: bool = True
    # Training leaves out metrics that cannot help (ftml.pipeline.screen_metrics): a metric
    # missing in at least this share of the fleet's observed rows (rows with any reading) ...
    drop_missing_fraction: float = 0.95
    # ... or whose gaps (after short ones are filled) leave more than this share of one
    # entity's windows incomplete: every window needs every metric, so such a metric would
    # cost that entity those windows of all its metrics.
    drop_gappy_fraction: float = 0.2


@dataclass
class FeatureConfig:
    window: int = 15  # steps per window
    stride: int = 1
    hour_of_day: bool = True  # learn baselines per hour of day (daily cycles)
    # Drift: each robust z has the mean of its own last `level_window` steps taken off (each
    # step's z clipped to +-level_clip first, so a long fault is absorbed by at most that
    # much), so that a slow change of an entity's level is not a fault. 0: off.
    level_window: int = 720
    level_clip: float = 3.0


@dataclass
class DetectConfig:
    n_estimators: int = 200
    max_samples: int = 512
    random_state: int = 0
    # False alarms per entity per day on the calibration slice. Half the 0.2 the product
    # allows: a later week differs from the calibration slice (traffic bursts, drift), and at
    # the ~0.6 faults per entity-day of the simulated fleets 0.2 false alarms would already
    # put precision under 0.8.
    alarm_budget: float = 0.1
    # How the budget becomes a threshold (ftml.detect.AlarmThreshold): "empirical" (the
    # lowest threshold within budget on the calibration slice) or "pot" (no lower than where
    # a generalised Pareto tail of the calibration's false-alarm peaks puts the budget). "pot"
    # lost event F1 on the selection data (ASD) without bringing SMD's or NAB's judged false
    # alarms nearer their calibration figure, so it is not the default.
    threshold_tail: str = "empirical"
    # What scores a window: "forest" (IsolationForest alone), or with the robust statistic
    # (the largest robust deviation of any metric), each as a distance into its own tail:
    # "forest+robust" their mean, "forest|robust" the larger. Not the default: neither met
    # every rule of bench/PROTOCOL_generalization.md on the selection data (docs/benchmarks.md).
    ensemble: str = "forest"
    # How an ensemble's two parts are put on one scale: "fit" (each part's median and 99.9 %
    # on the fit windows) or "budget" (each part's median on the fit windows and its own
    # threshold at half the alarm budget on the calibration slice, so that either part flags
    # where its own events make its half of the false alarms; bench/PROTOCOL_generalization.md
    # round 5, V1).
    ensemble_scale: str = "fit"
    # What the forest sees of the detector view: "plain", or "balanced" (the two cross-metric
    # deviation columns repeated until they are as many as the per-metric columns, so that a
    # tree splits on "the farthest metric" about half the time; round 5, W1).
    view: str = "plain"
    calibration_fraction: float = 0.25  # later slice of training held out for the threshold
    min_windows: int = 5  # k of ...
    of_windows: int = 8  # ... n flagged windows open an event
    merge_gap: int = 10  # steps: flags closer than this belong to one event
    cooldown: int = 30  # steps after an event ends before a new one may open
    top_metrics: int = 3
    # Window stats the forest sees per metric (of mean, std, min, max, last, slope, median);
    # the diagnoser sees them all. The median ignores blips shorter than half a window
    # (deploys, bursts) and "last" reacts at once; std and slope only add noise here.
    stats: list[str] = field(default_factory=lambda: ["median", "last"])


@dataclass
class DiagnoseConfig:
    classifier: str = "tree"  # tree | svm | forest
    max_depth: int = 6
    target_precision: float = 0.9  # confidence cut: answers above it are this often right
    max_event_windows: int = 32  # windows of an event that the classifier looks at
    # Events of different entities that start within this many steps of a group's first
    # (and, with a call graph, are connected in it) form one incident group (ftml.incidents).
    # 2, not 5, by bench/PROTOCOL_rca.md round 2: a wider gap let a group opened minutes
    # before a fault take in the fault's own events.
    group_gap: int = 2
    # "onset" (only the above), "overlap" or "overlap_callers": a later group whose event starts
    # while a linked entity's event of an earlier group is open joins it, at most a window
    # after the group's onset (ftml.incidents.JOINS; bench/PROTOCOL_rca.md, round 4).
    group_join: str = "onset"
    topology: str | None = None  # call graph CSV (source,target[,weight]) for grouping
    # Weights of the root-cause ranking terms (ftml.incidents.rank_scores): onset order, size
    # of the change, detector score and, with a call graph, "its callers alert, its callees
    # do not".
    rank_onset: float = 1.0
    rank_size: float = 1.0
    rank_score: float = 0.5
    rank_graph: float = 1.5
    # How an incident's suspects are ranked: one of ftml.incidents.RANKINGS (chosen by
    # bench/PROTOCOL_rca.md; the onset_* rankings read every window's score from the onset).
    ranking: str = "walk_context"
    # Knowing when it does not know (issue 19): the calibration windows the detector scores
    # highest outside any incident teach a `no_fault` class (0: off)...
    healthy_windows: int = 2000  # at most this many, ...
    healthy_share: float = 0.02  # ... from the top share of calibration windows by score
    calibrate: bool = True  # confidences are out-of-fold shares right (isotonic)
    open_set: bool = True  # too far from every training incident of its cause: unknown
    open_set_margin: float = 1.25  # x the largest nearest-sibling distance of the cause
    # > 0: the open-set cut is instead the one at which this share of training incidents
    # (left out one at a time) would be unknown (bench/PROTOCOL_diagnosis.md, amendment 1).
    open_set_rate: float = 0.0
    # > 0: named but farther from the cause's incidents than this x its distance to the
    # nearest flagged-but-healthy run: no_fault (0: off). 1.0 (amendment 1's nf_margin value)
    # by the logs ablation's amendment 3 (bench/bench_logs_ablation.py,
    # bench/SELECTION_logs.md), with open_set_ignore "novelty": without log:unseen in the
    # distance, it is what keeps false alarms from being named.
    no_fault_margin: float = 1.0
    # Where the open-set distance is taken: "all" features, or "used": those the classifier
    # splits on (a wide set's ignored features cannot make an event far; amendment 2).
    open_set_space: str = "all"
    # Features left out of the open-set distance: "none"; "novelty", those of log:unseen (0
    # in training by construction, so any later value would make an event far; a model
    # without logs has none); "still", every feature whose spread over the training windows
    # is at the scale floor. "novelty" (with no_fault_margin 1.0) by the logs ablation's
    # amendment 3 (bench/bench_logs_ablation.py, bench/SELECTION_logs.md).
    open_set_ignore: str = "novelty"
    # > 0: an event the open-set cut would answer unknown keeps its named cause when it lies at
    # most this x nearer to that cause's incidents than to any other cause's or any
    # flagged-but-healthy run (the nearest-neighbour distance ratio; 0: off). With a handful
    # of incidents per cause the cut alone is too tight (bench/PROTOCOL_diagnosis.md,
    # amendment 4).
    open_set_ratio: float = 0.0
    # What the diagnoser sees of a window: "none", the features as they are; "add", those plus
    # each metric's change within the window (its last z less its median z); "only", each
    # metric's change and slope alone. A change within a window is blind to a level that is
    # not the fault's (a fault just before on the same entity, a day whose level the baseline
    # does not fit): bench/PROTOCOL_diagnosis.md, amendment 5. Off by default.
    change_features: str = "none"


@dataclass
class LogConfig:
    """How log files become per-entity series (ftml.logs); a model with logs keeps its own."""

    # None: detected per file (python, iso, kubectl, syslog, access, apache-error, jsonl,
    # journald); else one of those names or a regex with named groups ts, msg (and level,
    # entity, status).
    format: str | None = None
    entity_from: str | None = None  # path pattern with {entity}, e.g. 'pods/{entity}/*.log'
    entity: str | None = None  # every line's entity (else the format's field, else file stem)
    # Templates of training with a series of their own (log:tpl:<id>), the most frequent
    # first. 0 (the aggregates only): chosen by amendment 1 of bench/bench_logs_ablation.py
    # (bench/SELECTION_logs.md), as 20 near-constant counts diluted the forest.
    top_templates: int = 0
    # The least robust scale of a series that counts lines (all but log:http_5xx_share), in
    # lines: such series are mostly 0 in training, so their IQR is 0 and the generic floor
    # (1e-3) would make one stray line a z of 1000. 0: the generic floor only (and
    # log:unseen screened like any metric). Amendment 1 of the logs ablation.
    count_scale_floor: float = 1.0
    # A template seen on fewer (entity, step) cells of training counts as unseen (log:unseen):
    # a one-off of training is as new as one never seen, so the series means the same in
    # training and scoring.
    known_min_steps: int = 3
    max_line_bytes: int = 64 * 1024  # longer lines are bad lines
    # Bad lines (undecodable, too long, unparseable JSON, far out of order) are skipped and
    # counted up to this share of a file's lines (or 10 lines); beyond it the file is refused.
    max_bad_fraction: float = 0.01
    max_late_seconds: float = 3600.0  # a line this far before its file's latest: out of order
    chunk_bytes: int = 4 << 20  # bytes read at a time: bounds memory whatever the file size
    drain_depth: int = 4  # drain3's parse tree depth and similarity threshold
    drain_sim_th: float = 0.4
    drain_max_children: int = 100


@dataclass
class Config:
    read: ReadConfig = field(default_factory=ReadConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    diagnose: DiagnoseConfig = field(default_factory=DiagnoseConfig)
    extra: dict[str, Any] = field(default_factory=dict)  # sections owned by later stages

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> Config:
        if not isinstance(data, dict):
            raise ConfigError("top level must be a mapping of sections", source=source,
                              hint="e.g. 'detect: {alarm_budget: 0.2}'")
        sections = {f.name: f.type for f in dataclasses.fields(cls) if f.name != "extra"}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for name, value in data.items():
            if name in sections:
                kwargs[name] = _section(_SECTION_TYPES[name], value, source, name)
            elif name in EXTRA_SECTIONS:
                extra[name] = value
            else:
                # A misspelt section would otherwise be kept and never read: its settings
                # silently not applied.
                known = sorted([*sections, *EXTRA_SECTIONS])
                raise ConfigError(f"unknown section '{name}'", source=source, where=str(name),
                                  hint=f"known sections: {', '.join(known)}")
        return cls(**kwargs, extra=extra)


# Sections owned by later stages, read there (``Config.extra``), e.g. watch.WatchConfig.
EXTRA_SECTIONS = ("watch",)

_SECTION_TYPES = {"read": ReadConfig, "features": FeatureConfig, "detect": DetectConfig,
                  "diagnose": DiagnoseConfig}


def _section(kind: type, value: Any, source: str, name: str):
    if value is None:
        return kind()
    if not isinstance(value, dict):
        raise ConfigError("section must be a mapping", source=source, where=name)
    known = {f.name: f for f in dataclasses.fields(kind)}
    for key, v in value.items():
        if key not in known:
            raise ConfigError(f"unknown key '{key}'", source=source, where=name,
                              hint=f"known keys: {', '.join(sorted(known))}")
        default = getattr(kind(), key)
        if default is not None and not isinstance(default, list) and v is not None:
            want = type(default)
            ok = isinstance(v, want) or (want is float and isinstance(v, int))
            if not ok or (want is int and isinstance(v, bool)):
                raise ConfigError(f"'{key}' must be {want.__name__}, got {v!r}", source=source,
                                  where=f"{name}.{key}")
    return kind(**value)


def load_config(path: str | Path | None) -> Config:
    """Read a YAML config; ``None`` gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}", source=str(path)) from None
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else None
        raise ConfigError("not valid YAML", source=str(path), where=where) from None
    return Config.from_dict(data, source=str(path))


# A model that flags this many times the share of windows it flagged on its own calibration
# slice does not fit the data it scores (other entities, other metrics' scales): said so.
MISFIT_RATIO = 5.0
MISFIT_FLOOR = 0.01  # ... or of this share, for a model that flagged (almost) nothing there

# How recovery acts; the one spelling is dry_run, and dry-run (as on a command line) is
# the same mode.
RECOVERY_MODES = ("dry_run", "approve", "auto")


def recovery_mode(value: Any) -> str | None:
    """A mode as written (dry_run or dry-run, approve, auto) -> its one spelling; None if it
    is not a mode."""
    if not isinstance(value, str):
        return None
    mode = value.strip().replace("-", "_")
    return mode if mode in RECOVERY_MODES else None


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | int | float, what: str = "duration") -> pd.Timedelta:
    """'60s', '5m', '1h', '2d' or a number of seconds -> Timedelta."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise ConfigError(f"cannot read {what} {text!r}", hint="write e.g. 60s, 5m, 1h or 2d")
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if seconds <= 0:
        raise ConfigError(f"{what} must be positive, got {text!r}")
    import pandas as pd

    return pd.Timedelta(seconds=seconds)


# Training: a stretch of more than this without any reading ends a run (many short runs days
# apart). Each entity's calibration slice is the last part of its time covered by runs, so
# such stretches do not count as time (ftml.pipeline.active_time).
RUN_GAP_NS = 3600 * 10**9  # one hour
