"""``ftml record``: training history from the sources ``ftml watch`` reads.

The rows a source gives (``local``, ``prometheus:URL``, ``file:PATH``, ``stdin``), with the
same ``watch:`` config (Prometheus queries, entity label, local processes) that ``watch``
will use, written as one wide CSV in the metric contract: ``timestamp`` (UTC, ISO 8601),
``entity``, then one column per metric. ``ftml train`` reads it as it is, and a model
trained on it fits what ``watch`` then reads from the same source: the same metric names,
the same queries, the same step. Counters keep their ``_total`` names, so that training
takes them as counters (rates).

Two ways to record:

* ``--for 2h``: from now on, one poll per step, for that long (every source; the only way
  for ``local``, which has no history). Ctrl-C / SIGTERM ends it early and keeps the rows
  recorded so far.
* ``--since T [--until T]``: a past range, from sources that keep history: Prometheus
  (``query_range``, in chunks), or a file / stdin (its rows in the range).

The file is written to a temporary path and renamed when complete.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ftml.config import ReadConfig, parse_duration
from ftml.errors import ConfigError, InputError
from ftml.io import atomic_path, to_ns
from ftml.sources import (
    LocalSource,
    PrometheusSource,
    Source,
    SourceError,
    StdinSource,
    make_source,
    source_config,
)

log = logging.getLogger("ftml.record")

_AGO = re.compile(r"^\s*\d+(?:\.\d+)?\s*(ms|s|m|min|h|d)\s*$")


@dataclass
class RecordSummary:
    path: str
    rows: int
    entities: list[str]
    metrics: list[str]
    first: str | None
    last: str | None
    interrupted: bool = False

    def line(self) -> str:
        span = f"{self.first} .. {self.last}" if self.first else "no rows"
        ents = ", ".join(self.entities[:5]) + (" ..." if len(self.entities) > 5 else "")
        note = " (interrupted: the rows so far)" if self.interrupted else ""
        return (f"recorded {self.rows} rows of {len(self.entities)} entit"
                f"{'y' if len(self.entities) == 1 else 'ies'} ({ents}) x {len(self.metrics)} "
                f"metrics, {span} -> {self.path}{note}")


def time_arg(text: str, what: str, now: float) -> float:
    """Epoch seconds for ``--since`` / ``--until``: a duration ago (``2h``) or a time."""
    if _AGO.match(str(text)):
        return now - parse_duration(text, what).total_seconds()
    try:
        ts = pd.Timestamp(text)
    except (TypeError, ValueError):
        raise ConfigError(f"cannot read {text!r}", where=what,
                          hint="write a time (2026-05-01T00:00Z) or a duration ago (2h)"
                          ) from None
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return ts.timestamp()


def record(spec: str, out: str | Path, *, step: str | float = "60s",
           duration: str | float | None = None, since: str | None = None,
           until: str | None = None, section: Mapping[str, Any] | None = None,
           config_source: str = "config", read: ReadConfig | None = None,
           clock: Any = None) -> RecordSummary:
    """Record ``spec``'s rows to the CSV ``out``; see the module docstring."""
    from ftml.clock import SystemClock

    clock = clock or SystemClock()
    out = Path(out)
    if not out.name.lower().endswith(".csv"):
        raise ConfigError("the record is a CSV file", where="--out",
                          hint="name it e.g. history.csv")
    if (duration is None) == (since is None):
        raise ConfigError("say what to record: --for DURATION (from now on) or --since TIME "
                          "[--until TIME] (a past range)", where="record")
    if until is not None and since is None:
        raise ConfigError("--until needs --since", where="record")
    step_td = parse_duration(step, "--step")
    src = make_source(spec, read or ReadConfig(), source_config(section, config_source))
    now = clock.now()
    if since is not None:
        start, end = time_arg(since, "--since", now), \
            (time_arg(until, "--until", now) if until is not None else now)
        if end <= start:
            raise ConfigError("--until is not after --since", where="record")
        if isinstance(src, LocalSource):
            raise ConfigError("the local source has no history", where="--since",
                              hint="record it from now on with --for 2h")
        chunks = _past(src, start, end, step_td)
    else:
        seconds = parse_duration(duration, "--for").total_seconds()
        chunks = _live(src, now + seconds, step_td, clock)
    try:
        return _write(chunks, out, src)
    finally:
        src.close()


def _past(src: Source, start: float, end: float, step: pd.Timedelta):
    src.bind(step, 1)
    if isinstance(src, PrometheusSource):
        try:
            yield from src.history(start, end)
        except SourceError as exc:
            raise ConfigError(str(exc), where="--source") from None
        return
    lo, hi = int(start * 1e9), int(end * 1e9)
    while True:  # a file: read it to its end; stdin: to its end of input
        try:
            frame = src.poll(end)
        except SourceError as exc:
            raise ConfigError(str(exc), where="--source") from None
        if frame is not None and len(frame):
            ts = to_ns(frame["timestamp"])
            keep = (ts >= lo) & (ts <= hi)
            if keep.any():
                yield frame[keep]
        if isinstance(src, StdinSource):
            if src.exhausted:
                return
            if frame is None:
                time.sleep(0.05)  # its reader thread is still reading
        elif not src.more:
            return


def _live(src: Source, end: float, step: pd.Timedelta, clock: Any):
    src.bind(step, 1)  # one step of history: Prometheus answers with instant queries
    step_s = step.total_seconds()
    if hasattr(src, "check"):
        try:
            src.check()
        except SourceError as exc:  # at start: a setting to fix, as in watch
            raise ConfigError(f"source unavailable: {exc}", where="--source") from None
    while True:
        now = clock.now()
        if now >= end:
            return
        try:
            frame = src.poll(now)
        except SourceError as exc:  # later: an outage, retried at the next step
            log.warning("%s: %s (retrying at the next step)", src.name, exc)
            frame = None
        if frame is not None and len(frame):
            yield frame
        if src.exhausted:
            return
        if getattr(src, "more", False):
            continue
        wake = (math.floor(now / step_s) + 1) * step_s + min(0.05, step_s / 20)
        clock.sleep(min(wake, end) - clock.now())


def _write(chunks, out: Path, src: Source) -> RecordSummary:
    columns: list[str] | None = None
    rows, entities = 0, set()
    first = last = None
    interrupted = False
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as fh:
        try:
            for frame in chunks:
                frame = frame.sort_values(["timestamp", "entity"], kind="stable")
                if columns is None:
                    columns = [c for c in frame.columns if c not in ("timestamp", "entity")]
                    fh.write(",".join(["timestamp", "entity", *map(_csv_name, columns)]) + "\n")
                extra = [c for c in frame.columns if c not in ("timestamp", "entity", *columns)]
                if extra:
                    log.warning("%s: columns %s appeared after the first rows: not recorded",
                                src.name, ", ".join(map(str, extra)))
                body = pd.DataFrame({"timestamp": frame["timestamp"].dt.strftime(
                    "%Y-%m-%dT%H:%M:%S.%fZ").str.replace(".000000Z", "Z", regex=False),
                    "entity": frame["entity"].astype(str)})
                body = pd.concat([body.reset_index(drop=True),
                                  frame.reindex(columns=columns).reset_index(drop=True)
                                  .astype(np.float64)], axis=1)
                body.to_csv(fh, header=False, index=False, float_format="%.10g")
                rows += len(body)
                entities.update(body["entity"].unique().tolist())
                first = first or body["timestamp"].iloc[0]
                last = body["timestamp"].iloc[-1]
                fh.flush()
        except KeyboardInterrupt:
            interrupted = True
        if columns is None:
            raise InputError(f"{src.name}: no rows to record", where="record",
                            hint="check the source, its queries and the time range")
    return RecordSummary(str(out), rows, sorted(entities), [str(c) for c in columns], first,
                         last, interrupted)


def _csv_name(name: Any) -> str:
    text = str(name)
    return f'"{text}"' if any(c in text for c in ',"\n') else text

