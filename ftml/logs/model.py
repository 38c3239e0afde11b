"""What a model keeps of the logs it was trained with, and the joins train, score and
evaluate call: logs -> series -> columns of the metric frame on (entity, step)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ftml.config import LogConfig, ReadConfig
from ftml.errors import InputError
from ftml.io import MetricData
from ftml.logs.readers import ReadStats, read_log_lines
from ftml.logs.series import (
    ERRORS,
    HTTP_5XX,
    LINES,
    UNSEEN,
    WARNINGS,
    CellCounter,
    Series,
    cells,
    join,
    template_metric,
    template_of,
    wide,
)
from ftml.logs.templates import Templates

log = logging.getLogger("ftml.logs")

# Warn when more than this share of metric rows lies outside the time the logs cover.
OUTSIDE_WARN_SHARE = 0.05


@dataclass
class LogInput:
    """Log files and how to read them (None: the model's way, else detected)."""

    paths: list[str]
    format: str | None = None
    entity_from: str | None = None
    entity: str | None = None

    def config(self, base: LogConfig) -> LogConfig:
        given = {k: v for k, v in (("format", self.format), ("entity_from", self.entity_from),
                                   ("entity", self.entity)) if v is not None}
        return dataclasses.replace(base, **given)


def as_log_input(logs) -> LogInput | None:
    if logs is None or isinstance(logs, LogInput):
        return logs
    if isinstance(logs, (str, Path)):
        logs = [logs]
    paths = [str(p) for p in logs]
    return LogInput(paths) if paths else None


@dataclass
class LogModel:
    """The templates mined in training and which series the model reads."""

    config: LogConfig
    step_ns: int
    templates: Templates
    metrics: list[str]  # the log series, in the order they join the frame
    known_ids: np.ndarray  # templates known (seen on known_min_steps cells of training)
    counts: dict[str, int] = field(default_factory=dict)  # training lines per template id
    sources: list[str] = field(default_factory=list)

    def describe(self, metric: str) -> str:
        """A series for a reader: 'log:tpl:7' -> 'log: Connection refused to <*>'."""
        cid = template_of(metric)
        return f"log: {self.templates.text(cid)}" if cid is not None else metric

    def series(self, logs: LogInput, read: ReadConfig, learn: bool = False
               ) -> tuple[pd.DataFrame, ReadStats]:
        """Cells of ``logs`` read the model's way (``learn``: mining new templates)."""
        stats = ReadStats()
        counter = CellCounter()
        for lines in read_log_lines(logs.paths, logs.config(self.config), read.entity_map,
                                    stats):
            counter.add(cells(lines, self.templates.ids(lines.msg, learn), self.step_ns))
        return counter.result(), stats

    def wide(self, cell: pd.DataFrame) -> Series:
        return wide(cell, self.metrics, self.known_ids)

    def scale_floors(self) -> dict[str, float]:
        """Series -> the least scale of its baseline: one line (``count_scale_floor``) for
        every series that counts lines; the 5xx share has the generic floor."""
        floor = float(getattr(self.config, "count_scale_floor", 0.0))
        if floor <= 0:
            return {}
        return {m: floor for m in self.metrics if m != HTTP_5XX}

    def kept_constant(self) -> list[str]:
        """Series that training keeps even when constant: ``log:unseen`` is 0 in training by
        construction (nearly: only templates rarer than ``known_min_steps`` count there), and
        lines of templates never seen are what a bad deploy writes. Only with a count floor:
        without one, a series constant at 0 gets the generic 1e-3 scale, and its first line
        would read as a z of 1000."""
        return [UNSEEN] if UNSEEN in self.metrics and self.scale_floors() else []


def fit_logs(data: MetricData, logs, read: ReadConfig, cfg: LogConfig | None = None
             ) -> tuple[MetricData, LogModel]:
    """Mine the templates of ``logs`` and join their series to the training metrics."""
    logs = as_log_input(logs)
    cfg = logs.config(cfg or LogConfig())
    step_ns = int(data.step.value)
    model = LogModel(cfg, step_ns, Templates.for_config(cfg), [], np.zeros(0, np.int64))
    cell, stats = model.series(logs, read, learn=True)
    _warn_skipped(stats)
    if not len(cell):
        raise InputError("the log files hold no record", source=", ".join(logs.paths),
                         hint="give log files with timestamped lines")
    per_tpl = cell.groupby("tpl").agg(n=("n", "sum"), cells=("slot", "size"))
    # (cells counts rows of (entity, step, template, level, status): a template at two
    # levels in one step counts twice, a small excess that only makes it known sooner.)
    known = per_tpl.index[per_tpl["cells"] >= cfg.known_min_steps].to_numpy(np.int64)
    top = (per_tpl.loc[known].sort_values("n", ascending=False, kind="stable")
           .index[:cfg.top_templates].to_numpy(np.int64))
    metrics = [LINES, ERRORS, WARNINGS]
    if (cell["sc"] > 0).any():
        metrics.append(HTTP_5XX)
    metrics += [UNSEEN] + [template_metric(t) for t in sorted(top)]
    model.metrics = metrics
    model.known_ids = np.sort(known)
    model.counts = {str(int(t)): int(n) for t, n in per_tpl["n"].items()}
    model.sources = list(stats.files)
    model.templates.freeze()
    return _joined(data, model, model.wide(cell)), model


def joined_data(data: MetricData, model: LogModel, logs, read: ReadConfig) -> MetricData:
    """Metrics read for scoring or evaluation with the model's log series joined."""
    return _joined(data, model, read_series(model, logs, read))


def read_series(model: LogModel, logs, read: ReadConfig) -> Series:
    """The model's series of ``logs`` (templates looked up, never mined)."""
    logs = require_logs(model, logs)
    cell, stats = model.series(logs, read, learn=False)
    _warn_skipped(stats)
    return model.wide(cell)


def require_logs(model: LogModel, logs) -> LogInput:
    logs = as_log_input(logs)
    if logs is None:
        raise InputError("the model was trained with logs, and none were given",
                         hint="pass --logs with the log files of the scored period")
    return logs


def frame_joiner(model: LogModel, series: Series):
    """frame -> frame with the log series joined (score's chunks, one at a time)."""
    outside: list[float] = []

    def joined(frame: pd.DataFrame) -> pd.DataFrame:
        out, share = join(frame, series, model.step_ns)
        outside.append(share)
        return out

    joined.outside = outside  # type: ignore[attr-defined]
    return joined


def _joined(data: MetricData, model: LogModel, series: Series) -> MetricData:
    frame, outside = join(data.frame, series, model.step_ns)
    if len(frame) and outside >= 1.0:
        lo, hi = (pd.Timestamp(x * model.step_ns, unit="ns", tz="UTC") for x in (series.lo,
                                                                                series.hi))
        raise InputError(f"the logs ({lo} to {hi}) cover none of the metrics' time",
                         where="--logs",
                         hint="give the log files of the same period as the metrics")
    if outside > OUTSIDE_WARN_SHARE:
        log.warning("ftml: warning: %.0f%% of metric rows lie outside the time the logs "
                    "cover: their log series are missing, and their windows are not scored",
                    100 * outside)
    extra = sorted(set(series.entity) - set(map(str, data.entities)))
    if extra:
        log.warning("ftml: warning: log lines of %d entit%s without metrics left out: %s",
                    len(extra), "y" if len(extra) == 1 else "ies", ", ".join(extra[:5]) +
                    (" ..." if len(extra) > 5 else ""))
    metrics = [m for m in data.metrics if m not in model.metrics] + model.metrics
    return MetricData(frame, data.step, metrics, data.sources, data.dropped)


def _warn_skipped(stats: ReadStats) -> None:
    line = stats.warning()
    if line:
        log.warning("ftml: warning: %s", line)


def file_metrics(metrics: Iterable[str], model: LogModel | None) -> list[str]:
    """The metrics read from metric files (the model's log series are joined after)."""
    own = set(model.metrics) if model is not None else set()
    return [m for m in metrics if m not in own]


def read_for_model(paths, model, logs=None) -> MetricData:
    """Metric files read as ``model`` reads them, with its log series of ``logs`` joined
    (evaluation reads whole periods this way)."""
    from ftml.io import read_metrics

    log_model = getattr(model, "logs", None)
    data = read_metrics(paths, model.config.read, file_metrics(model.metrics, log_model))
    if log_model is None:
        if logs:
            raise InputError("the model was trained without logs", where="--logs",
                             hint="leave out --logs, or train with --logs")
        return data
    return joined_data(data, log_model, logs, model.config.read)
