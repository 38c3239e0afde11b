"""A watch source of log series: tailed log files (and journald) -> the model's log series.

:class:`LogSource` implements :class:`ftml.sources.Source`, so the watch loop polls it like
any metric source (``--source logs:PATH[,PATH...]``, ``--source journald[:UNIT,...]``) and
joins its rows to the metric rows on (entity, step). Each poll:

1. reads the new complete lines of every file (:class:`ftml.logs.tail.FileTailer`: rotation
   and truncation safe) and of the journal;
2. parses them as batch reading parses a file (:func:`ftml.logs.readers.parse_lines`; the
   model's log settings), the entity given (or from the path), else the line's own, else the
   file's stem;
3. keeps the lines of steps still open, and hands the closed steps to the batch series
   (:func:`ftml.logs.series.log_series`, the model's templates, never mined here), then
   fills the closed steps of an entity without a line with zeros (a silent entity is a
   value, not a gap).

A step closes once every followed input has written past it (a merge of the inputs' times,
so a backlog read over several polls is counted whole) or, once the logs are live (lines
near the wall clock), when the clock is ``grace`` past it. A line of a step already handed
over is late: dropped and counted in ``skipped``. A record's traceback lines may come in the
next read (a write seen half, a read cut at its size limit): the last record of a read waits
for the next poll, with its step kept open (the parser's ``line`` column says where it starts).
"""

from __future__ import annotations

import glob
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ftml.errors import ConfigError, FtmlError
from ftml.logs.tail import FileTailer, JournalReader, TailError
from ftml.sources import SourceError

log = logging.getLogger("ftml.watch")

#: A step closes on the wall clock this long after its end (lines written late by a buffer).
GRACE_SECONDS = 5.0
#: Logs are live once a line is this close to the wall clock (else a replay of old files,
#: whose steps close on the lines' own times only).
LIVE_WITHIN_SECONDS = 600.0
#: Zero rows an entity gets per poll at most: a long silence is filled over several polls.
MAX_FILL_STEPS = 100_000
#: An input whose newest line is this far behind the others' has stopped writing (a replica
#: gone): it no longer holds the others' steps open.
STALE_STEPS, STALE_SECONDS = 10, 600.0
_COLUMNS = ("ts", "entity", "level", "msg", "status")


def _default_parse(lines: list[str], **kw) -> pd.DataFrame:
    from ftml.logs.readers import parse_lines

    return parse_lines(lines, **kw)


def _default_series(frame: pd.DataFrame, model: Any) -> pd.DataFrame:
    from ftml.logs.series import log_series

    return log_series(frame, model)


class LogSource:
    """Log series of followed log files and the journal (see the module).

    ``model`` is what the bundle keeps of its logs (step, templates, the series it reads:
    ``step_ns`` and ``metrics``). ``parse`` and ``series`` default to the batch parser and
    series, so that watch counts exactly what training counted.
    """

    warmup = False
    exhausted = False

    def __init__(self, paths: Sequence[str | Path], model: Any, *,
                 journal: JournalReader | None = None, fmt: str | None = None,
                 entity: str | None = None, start: str = "beginning",
                 grace: float = GRACE_SECONDS,
                 parse: Callable[..., pd.DataFrame] | None = None,
                 series: Callable[[pd.DataFrame, Any], pd.DataFrame] | None = None,
                 entity_map: str | None = None, name: str | None = None):
        if not paths and journal is None:
            raise ConfigError("a log source needs files or the journal",
                              hint="use logs:PATH[,PATH...] or journald[:UNIT,...]")
        self.model = model
        self.step_ns = int(model.step_ns)
        self.metrics = [str(m) for m in model.metrics]
        self.tailers = {str(p): FileTailer(p, start=start) for p in paths}
        self.journal = journal
        self.config = getattr(model, "config", None)  # the model's LogConfig
        self.fmt = fmt
        self.entity = entity
        self.entity_map = entity_map
        self.grace_ns = int(grace * 1e9)
        self._parse = parse or _default_parse
        self._series = series or _default_series
        self.name = name or ("logs:" + ",".join(map(str, paths)) if paths else "journald")
        self.more = False
        self.late = 0  # lines of steps already handed over
        self.bad = 0  # lines the parser skipped
        self._open = _empty_lines()  # parsed lines of steps not yet handed over
        self._held: dict[str, list[str]] = {}  # per input: the lines of its last record
        self._held_ts: dict[str, int] = {}  # ... and that record's time (ns)
        self._newest: dict[str, int] = {}  # per input: the newest line time read (ns)
        self._done: dict[str, int] = {}  # per entity: the last step handed over
        self._live = False
        self._failed: dict[str, str] = {}
        self._formats: dict[str, Any] = {}  # per input: the format found in its first lines

    @property
    def skipped(self) -> int:
        return self.late + self.bad + sum(t.long_lines for t in self.tailers.values())

    def bind(self, step: pd.Timedelta, keep_steps: int) -> None:
        if int(pd.Timedelta(step).value) != self.step_ns:
            raise ConfigError(f"the log series are of {pd.Timedelta(self.step_ns)} steps, the "
                              f"watch runs at {step}", where=self.name,
                              hint="watch with the model the logs were trained with")

    def check(self) -> None:
        """Raise SourceError if no input can be read now (Watcher.check_sources)."""
        missing = [p for p, t in self.tailers.items() if not t.path.exists()]
        if self.tailers and len(missing) == len(self.tailers) and self.journal is None:
            raise SourceError(f"{', '.join(missing)}: file not found")

    # ------------------------------------------------------------------ polling

    def poll(self, now: float) -> pd.DataFrame | None:
        parts = [self._read_files(), self._read_journal()]
        new = [p for p in parts if p is not None and len(p)]
        if new:
            self._add(pd.concat(new, ignore_index=True) if len(new) > 1 else new[0])
        closed = self._closed_slot(now)
        return self._hand_over(closed)

    def _read_files(self) -> pd.DataFrame | None:
        frames, more = [], False
        for key, tailer in self.tailers.items():
            try:
                lines = tailer.read()
            except TailError as exc:
                if key not in self._failed:
                    log.warning("%s: %s", self.name, exc)
                self._failed[key] = str(exc)
                continue
            if key in self._failed:
                log.info("%s: reading %s again", self.name, key)
                del self._failed[key]
            more |= tailer.more
            frame = self._parsed(key, lines, entity=self.entity, path=key, fmt=self.fmt)
            if frame is not None:
                frames.append(frame)
        self.more = more
        if self.tailers and len(self._failed) == len(self.tailers) and self.journal is None:
            raise SourceError("; ".join(self._failed.values()))
        return pd.concat(frames, ignore_index=True) if frames else None

    def _read_journal(self) -> pd.DataFrame | None:
        if self.journal is None:
            return None
        try:
            lines = self.journal.read()
        except TailError as exc:
            if not self.tailers:
                raise SourceError(str(exc)) from None
            log.warning("%s: %s", self.name, exc)
            return None
        self.more |= self.journal.more
        return self._parsed("journald", lines, entity=self.entity, path=None, fmt="journald",
                            hold=False)

    def _parsed(self, key: str, lines: list[str], *, entity: str | None, path: str | None,
                fmt: str | None, hold: bool = True) -> pd.DataFrame | None:
        held = self._held.pop(key, [])
        self._held_ts.pop(key, None)
        lines = held + lines
        if not lines:
            return None
        try:
            frame = self._parse(lines, fmt=self._formats.get(key, fmt), entity=entity,
                                path=path, config=self.config, entity_map=self.entity_map)
        except FtmlError as exc:  # lines in no format known: skipped, the source goes on
            self.bad += len(lines)
            log.warning("%s: %d line(s) of %s skipped: %s", self.name, len(lines), key,
                        exc.one_line())
            return None
        self.bad += int(frame.attrs.get("skipped", 0))
        if frame.attrs.get("format") is not None:
            self._formats[key] = frame.attrs["format"]
        if not len(frame):
            return None
        if hold and len(lines) > len(held) and "line" in frame:
            # The last record may get more traceback lines in the next read: its lines wait
            # for it (and keep its step open); a poll without new lines releases it.
            first = int(frame["line"].iloc[-1]) - 1  # 1-based line of the record's start
            self._held[key] = lines[first:]
            last = _normalised(frame.iloc[-1:])
            self._held_ts[key] = int(last["ts"].iloc[0])
            frame = frame.iloc[:-1]
            if not len(frame):
                return None
        frame = _normalised(frame)
        self._newest[key] = max(self._newest.get(key, -(2**62)), int(frame["ts"].max()))
        return frame

    def _add(self, frame: pd.DataFrame) -> None:
        slot = _slots(frame["ts"].to_numpy(), self.step_ns)
        done = frame["entity"].map(self._done).fillna(-(2**62)).to_numpy(dtype=np.int64)
        late = slot <= done
        if late.any():
            n = int(late.sum())
            self.late += n
            log.warning("%s: %d line(s) of steps already handed over dropped (%d so far)",
                        self.name, n, self.late)
            frame = frame[~late]
        self._open = pd.concat([self._open, frame], ignore_index=True) if len(self._open) \
            else frame.reset_index(drop=True)

    def _closed_slot(self, now: float) -> int | None:
        """The last step that is closed now (None: none yet)."""
        inputs = [k for k in self.tailers if k not in self._failed]
        if self.journal is not None:
            inputs.append("journald")
        times = [self._newest[k] for k in inputs if k in self._newest]
        if not times:
            return None
        now_ns = int(now * 1e9)
        newest = max(times)
        if not self._live and newest >= now_ns - int(LIVE_WITHIN_SECONDS * 1e9):
            self._live = True
        # Every input has written past it (an input far behind the others has stopped
        # writing, and does not hold them back); one step of margin for lines a little out
        # of order. Step k holds [k - 1/2, k + 1/2) steps: closed once a mark is past its end.
        stale = newest - max(STALE_STEPS * self.step_ns, int(STALE_SECONDS * 1e9))
        mark = min(t for k, t in zip([k for k in inputs if k in self._newest], times,
                                     strict=True) if t >= stale or self._backlog(k))
        closed = int(math.floor((mark - self.step_ns // 2) / self.step_ns)) - 1
        if self._live and not self.more:
            clock = now_ns - self.grace_ns
            closed = max(closed, int(math.floor((clock - self.step_ns // 2) / self.step_ns)))
        if self._held_ts:  # a record waiting for its traceback keeps its step open
            closed = min(closed, int(_slots(np.array([min(self._held_ts.values())]),
                                            self.step_ns)[0]) - 1)
        return closed

    def _backlog(self, key: str) -> bool:
        if key == "journald":
            return self.journal is not None and self.journal.more
        return self.tailers[key].more

    def _hand_over(self, closed: int | None) -> pd.DataFrame | None:
        if closed is None or not len(self._open) and not self._done:
            return None
        slot = _slots(self._open["ts"].to_numpy(), self.step_ns)
        ready = slot <= closed
        out = []
        if ready.any():
            lines = self._open[ready]
            self._open = self._open[~ready].reset_index(drop=True)
            rows = self._series(lines, self.model)
            if rows is not None and len(rows):
                out.append(rows)
            for ent, first in pd.Series(_slots(lines["ts"].to_numpy(), self.step_ns)
                                        ).groupby(lines["entity"].to_numpy()).min().items():
                self._done.setdefault(str(ent), int(first) - 1)
        zeros = self._zero_rows(closed, out[0] if out else None)
        if zeros is not None:
            out.append(zeros)
        for ent in list(self._done):
            self._done[ent] = max(self._done[ent], closed)
        if not out:
            return None
        frame = pd.concat(out, ignore_index=True) if len(out) > 1 else out[0]
        return frame.sort_values(["timestamp", "entity"], kind="stable", ignore_index=True)

    def _zero_rows(self, closed: int, rows: pd.DataFrame | None) -> pd.DataFrame | None:
        """Rows of zeros for the closed steps of each entity that had no line."""
        ents, slots = [], []
        for ent, done in self._done.items():
            upto = min(closed, done + MAX_FILL_STEPS)
            if upto > done:
                slots.append(np.arange(done + 1, upto + 1, dtype=np.int64))
                ents.append(np.full(len(slots[-1]), ent, dtype=object))
        if not ents:
            return None
        ent, slot = np.concatenate(ents), np.concatenate(slots)
        if rows is not None and len(rows):
            have = pd.MultiIndex.from_arrays([
                rows["entity"].astype(str).to_numpy(dtype=object),
                pd.DatetimeIndex(rows["timestamp"]).as_unit("ns").asi8 // self.step_ns])
            free = ~pd.MultiIndex.from_arrays([ent, slot]).isin(have)
            ent, slot = ent[free], slot[free]
        if not len(slot):
            return None
        frame = pd.DataFrame(np.zeros((len(slot), len(self.metrics))), columns=self.metrics)
        frame.insert(0, "timestamp", pd.to_datetime(slot * self.step_ns, unit="ns", utc=True))
        frame.insert(0, "entity", ent)
        return frame

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict[str, Any]:
        open_lines = {c: self._open[c].tolist() for c in _COLUMNS}
        return {"files": {k: t.state() for k, t in self.tailers.items()},
                "journal": self.journal.state() if self.journal is not None else None,
                "held": self._held, "held_ts": self._held_ts, "newest": self._newest,
                "done": self._done,
                "live": self._live, "open": open_lines}

    def restore(self, state: Mapping[str, Any]) -> None:
        for key, st in (state.get("files") or {}).items():
            if key in self.tailers and st:
                self.tailers[key].restore(st)
        if self.journal is not None and state.get("journal"):
            self.journal.restore(state["journal"])
        self._held = {str(k): list(v) for k, v in (state.get("held") or {}).items()}
        self._held_ts = {str(k): int(v) for k, v in (state.get("held_ts") or {}).items()}
        self._newest = {str(k): int(v) for k, v in (state.get("newest") or {}).items()}
        self._done = {str(k): int(v) for k, v in (state.get("done") or {}).items()}
        self._live = bool(state.get("live"))
        open_lines = state.get("open") or {}
        if open_lines.get("ts"):
            self._open = _normalised(pd.DataFrame({c: open_lines.get(c) for c in _COLUMNS}))

    def close(self) -> None:
        for t in self.tailers.values():
            t.close()
        if self.journal is not None:
            self.journal.close()


def _slots(ts_ns: np.ndarray, step_ns: int) -> np.ndarray:
    """The step a line's time rounds to, as a metric reading's time rounds."""
    return np.floor_divide(np.asarray(ts_ns, dtype=np.int64) + step_ns // 2, step_ns)


def _empty_lines() -> pd.DataFrame:
    return pd.DataFrame({"ts": np.zeros(0, np.int64), "entity": np.zeros(0, object),
                         "level": np.zeros(0, object), "msg": np.zeros(0, object),
                         "status": np.zeros(0, np.int64)})


def _normalised(frame: pd.DataFrame) -> pd.DataFrame:
    """Parsed lines with int ns times, str entity/level/msg and a status (-1: none)."""
    ts = frame["ts"]
    if not pd.api.types.is_integer_dtype(ts):
        ts = pd.DatetimeIndex(pd.to_datetime(ts, utc=True)).as_unit("ns").asi8
    status = frame["status"].fillna(-1).to_numpy(dtype=np.int64) if "status" in frame \
        else np.full(len(frame), -1, np.int64)
    return pd.DataFrame({"ts": np.asarray(ts, dtype=np.int64),
                         "entity": frame["entity"].astype(str).to_numpy(dtype=object),
                         "level": frame["level"].astype(str).to_numpy(dtype=object),
                         "msg": frame["msg"].astype(str).to_numpy(dtype=object),
                         "status": status})


def make_log_source(spec: str, model: Any, *, fmt: str | None = None,
                    entity: str | None = None, entity_map: str | None = None) -> LogSource:
    """``logs:PATH[,PATH...]`` (globs expanded now, a named file not there yet waited for) or
    ``journald[:UNIT,...]`` -> a LogSource of ``model``'s log series."""
    if model is None:
        raise ConfigError(f"{spec}: the model was trained without logs", where="--source",
                          hint="train with --logs to watch log series")
    kind, _, arg = spec.partition(":")
    if kind == "journald":
        units = [u for u in arg.split(",") if u]
        return LogSource([], model, journal=JournalReader(units=units), fmt="journald",
                         entity=entity, entity_map=entity_map, name=spec)
    if kind != "logs" or not arg:
        raise ConfigError(f"unknown log source {spec!r}", where="--source",
                          hint="use logs:PATH[,PATH...] or journald[:UNIT,...]")
    paths: list[str] = []
    for part in (p for p in arg.split(",") if p):
        if not any(ch in part for ch in "*?["):
            paths.append(part)  # a file not there yet is waited for
            continue
        found = sorted(glob.glob(part))
        if not found:
            raise ConfigError(f"no file matches {part!r}", where=f"--source {spec}",
                              hint="give the log files' paths, or a glob that matches them")
        paths += found
    return LogSource(paths, model, fmt=fmt, entity=entity, entity_map=entity_map, name=spec)
