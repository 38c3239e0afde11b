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
from ftml.logs.readers import ReadStats, read_log_file, read_log_lines
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
    recount,
    template_metric,
    template_of,
    wide,
)
from ftml.logs.templates import Templates, encode

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

    def file_cells(self, path: str, cfg: LogConfig, entity_map: str | None, stats: ReadStats,
                   name: str | None = None) -> pd.DataFrame:
        """Cells of one file, templates looked up (never mined), as :meth:`series` counts
        them: a Dask worker's share of scoring's logs (``name``: the path as given)."""
        counter = CellCounter()
        for lines in read_log_file(path, cfg, entity_map, stats, name):
            counter.add(cells(lines, self.templates.ids(lines.msg, False), self.step_ns))
        return counter.result()

    def wide(self, cell: pd.DataFrame) -> Series:
        return wide(cell, self.metrics, self.known_ids)

    def choose(self, per_template: pd.DataFrame, any_status: bool, sources: list[str]) -> None:
        """Which series the model reads, from each template's lines and cells in training
        (:func:`template_counts`, summed over entities), then the mined state frozen."""
        cfg = self.config
        known = per_template.index[per_template["cells"] >= cfg.known_min_steps] \
            .to_numpy(np.int64)
        top = (per_template.loc[known].sort_values("n", ascending=False, kind="stable")
               .index[:cfg.top_templates].to_numpy(np.int64))
        metrics = [LINES, ERRORS, WARNINGS]
        if any_status:
            metrics.append(HTTP_5XX)
        metrics += [UNSEEN] + [template_metric(t) for t in sorted(top)]
        self.metrics = metrics
        self.known_ids = np.sort(known)
        self.counts = {str(int(t)): int(n) for t, n in per_template["n"].items()}
        self.sources = list(sources)
        self.templates.freeze()

    def view(self, lo: int, hi: int) -> LogView:
        """What joining needs, with the steps all the logs cover (``lo``..``hi``)."""
        return LogView(list(self.metrics), self.known_ids, self.step_ns, int(lo), int(hi))

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


@dataclass
class LogView:
    """What joining log cells to metric rows needs (picklable, small: Dask tasks get it):
    the series, the known templates, the step and the steps all the logs cover."""

    metrics: list[str]
    known_ids: np.ndarray
    step_ns: int
    lo: int
    hi: int

    def join(self, frame: pd.DataFrame, cell: pd.DataFrame) -> tuple[pd.DataFrame, int]:
        """``frame`` with the series of ``cell`` joined, as a local run joins them (the
        coverage is all the logs', not only these cells'), and its rows outside it."""
        series = wide(cell, self.metrics, self.known_ids)
        series.lo, series.hi = self.lo, self.hi
        out, share = join(frame, series, self.step_ns)
        return out, int(round(share * len(frame)))


def new_log_model(step_ns: int, cfg: LogConfig) -> LogModel:
    return LogModel(cfg, step_ns, Templates.for_config(cfg), [], np.zeros(0, np.int64))


def fit_logs(data: MetricData, logs, read: ReadConfig, cfg: LogConfig | None = None
             ) -> tuple[MetricData, LogModel]:
    """Mine the templates of ``logs`` and join their series to the training metrics."""
    logs = as_log_input(logs)
    cfg = logs.config(cfg or LogConfig())
    model = new_log_model(int(data.step.value), cfg)
    cell, stats = model.series(logs, read, learn=True)
    warn_skipped(stats)
    require_records(len(cell), logs)
    model.choose(template_counts(cell), bool((cell["sc"] > 0).any()), stats.files)
    return _joined(data, model, model.wide(cell)), model


def require_records(n_cells: int, logs: LogInput) -> None:
    if not n_cells:
        raise InputError("the log files hold no record", source=", ".join(logs.paths),
                         hint="give log files with timestamped lines")


def template_counts(cell: pd.DataFrame) -> pd.DataFrame:
    """Per template id (sorted): its lines ``n`` and its ``cells``. Cells of disjoint sets of
    entities add up (Dask training sums its entity groups')."""
    # (cells counts rows of (entity, step, template, level, status): a template at two
    # levels in one step counts twice, a small excess that only makes it known sooner.)
    return cell.groupby("tpl").agg(n=("n", "sum"), cells=("slot", "size"))


def message_cells(path: str, cfg: LogConfig, entity_map: str | None, step_ns: int,
                  stats: ReadStats, name: str | None = None
                  ) -> tuple[list[str], pd.DataFrame]:
    """One file's distinct masked messages in the order they first occur, and its cells with
    ``tpl`` the position of the line's message in that list: what Dask training's workers
    read, so that the driver can mine the messages of every file in the local order
    (:meth:`Templates.masked_ids`) and :func:`mapped_cells` make the local cells."""
    distinct: dict[str, int] = {}
    counter = CellCounter()
    for lines in read_log_file(path, cfg, entity_map, stats, name):
        texts, codes = encode(lines.msg)
        local = np.fromiter((distinct.setdefault(t, len(distinct)) for t in texts),
                            dtype=np.int64, count=len(texts))
        counter.add(cells(lines, local[codes], step_ns))
    return list(distinct), counter.result()


def mapped_cells(parts) -> pd.DataFrame:
    """``(cells, table)`` pairs of :func:`message_cells` (or ``table`` None for cells of
    template ids already) -> one frame of cells of template ids ``table[tpl]``."""
    counter = CellCounter()
    for cell, table in parts:
        if table is not None and len(cell):
            cell = recount(cell.assign(tpl=np.asarray(table, dtype=np.int64)[
                cell["tpl"].to_numpy(dtype=np.int64)]))
        counter.add(cell)
    return counter.result()


def joined_data(data: MetricData, model: LogModel, logs, read: ReadConfig) -> MetricData:
    """Metrics read for scoring or evaluation with the model's log series joined."""
    return _joined(data, model, read_series(model, logs, read))


def read_series(model: LogModel, logs, read: ReadConfig) -> Series:
    """The model's series of ``logs`` (templates looked up, never mined)."""
    logs = require_logs(model, logs)
    cell, stats = model.series(logs, read, learn=False)
    warn_skipped(stats)
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
    check_cover(outside, len(frame), series.lo, series.hi, model.step_ns)
    warn_extra(series.entity, data.entities)
    return MetricData(frame, data.step, joined_metrics(data.metrics, model), data.sources,
                      data.dropped)


def joined_metrics(metrics: Iterable[str], model: LogModel) -> list[str]:
    """The metrics of a frame with the log series joined, in its column order."""
    return [m for m in metrics if m not in model.metrics] + list(model.metrics)


def check_cover(outside: float, rows: int, lo: int, hi: int, step_ns: int) -> None:
    """Training's check of how much of the metrics' time the logs cover (``outside``: the
    share of ``rows`` outside ``lo``..``hi``): none is an error, little a warning."""
    if rows and outside >= 1.0:
        lo_t, hi_t = (pd.Timestamp(x * step_ns, unit="ns", tz="UTC") for x in (lo, hi))
        raise InputError(f"the logs ({lo_t} to {hi_t}) cover none of the metrics' time",
                         where="--logs",
                         hint="give the log files of the same period as the metrics")
    if outside > OUTSIDE_WARN_SHARE:
        log.warning("ftml: warning: %.0f%% of metric rows lie outside the time the logs "
                    "cover: their log series are missing, and their windows are not scored",
                    100 * outside)


def warn_extra(log_entities: Iterable[str], metric_entities: Iterable[str]) -> None:
    extra = sorted(set(map(str, log_entities)) - set(map(str, metric_entities)))
    if extra:
        log.warning("ftml: warning: log lines of %d entit%s without metrics left out: %s",
                    len(extra), "y" if len(extra) == 1 else "ies", ", ".join(extra[:5]) +
                    (" ..." if len(extra) > 5 else ""))


def warn_skipped(stats: ReadStats) -> None:
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
