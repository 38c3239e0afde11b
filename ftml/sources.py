"""Where ``ftml watch`` reads metrics from: a growing file, stdin, this machine, Prometheus.

Every source has the same small interface (:class:`Source`): ``poll(now)`` returns the wide
rows that arrived since the last poll (columns ``entity``, ``timestamp`` (UTC), then metrics)
or ``None``; it raises when the source itself fails (file gone, Prometheus down), and the loop
retries it with backoff. A source whose poll returned *warm-up history* (rows from before the
watch started, read only to fill the windows: Prometheus' first backfill) says so with
``warmup = True`` for that poll; events that end inside it are not alerts. A bad data line
is not a failure: it is skipped, counted in ``skipped`` and logged, and the lines around it
are read.

Specs, as on the command line: ``file:PATH``, ``stdin``, ``local``, ``prometheus:URL``, and the
log series of tailed log files or the journal, ``logs:PATH[,PATH...]``, ``journald[:UNIT,...]``
(:mod:`ftml.logs.source`).
"""

from __future__ import annotations

import fnmatch
import io as _io
import json
import logging
import math
import os
import queue
import socket
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from ftml.config import ReadConfig, parse_duration
from ftml.errors import ConfigError, FtmlError, InputError
from ftml.io import map_entities, to_rows

log = logging.getLogger("ftml.watch")

#: Bytes a file source reads per poll at most: a large backlog is read over several ticks.
MAX_READ_BYTES = 16 << 20
#: Lines a stdin source hands over per poll at most.
MAX_STDIN_LINES = 200_000
#: Bad lines logged one by one per source; after that only every 1000th.
_LOG_FIRST_BAD = 10


@runtime_checkable
class Source(Protocol):
    """A metric source. ``name`` labels its logs and metrics."""

    name: str
    skipped: int  # bad lines skipped so far
    more: bool  # True: data is waiting that the last poll did not return (poll again now)
    exhausted: bool  # True: the source has ended for good (stdin at EOF)

    def bind(self, step: pd.Timedelta, keep_steps: int) -> None:
        """Told the model's step and how many steps of history the loop keeps."""

    def poll(self, now: float) -> pd.DataFrame | None: ...

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class _NothingToKeep:
    """For sources that resume from nothing (live samples, a pipe) and hold nothing open."""

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class SourceError(Exception):
    """A source that cannot be read right now (the loop retries it)."""


# --------------------------------------------------------------------------- line parsing


class LineParser:
    """Complete text lines (CSV with a header, or JSON Lines) -> wide rows via
    :func:`ftml.io.to_rows`, the same parse as batch reading. Lines that do not parse are
    skipped and counted; a chunk with a bad line is bisected, so one bad line costs a few
    bulk parses, not one parse per line."""

    def __init__(self, fmt: str, cfg: ReadConfig, source: str,
                 on_bad: Callable[[str], None] | None = None):
        if fmt not in ("csv", "jsonl"):
            raise ConfigError(f"cannot tail {fmt} files", source=source,
                              hint="watch reads CSV or JSON Lines files")
        self.fmt = fmt
        self.cfg = cfg
        self.source = source
        self.header: str | None = None
        self.skipped = 0
        self.on_bad = on_bad
        self._logged = 0

    def parse(self, lines: list[str], first_line: int = 0) -> pd.DataFrame | None:
        """``first_line``: the line number of ``lines[0]`` in its file, for warnings."""
        lines = [ln for ln in lines if ln.strip()]
        if self.fmt == "csv" and self.header is None and lines:
            self.header = lines.pop(0)
            first_line += 1
        if not lines:
            return None
        if self.fmt == "jsonl":
            return self._parse_jsonl(lines, first_line)
        parts = self._bisect(lines, first_line, self._csv_rows)
        return _concat(parts)

    def _csv_rows(self, lines: list[str]) -> pd.DataFrame:
        text = self.header + "\n" + "\n".join(lines) + "\n"
        try:
            with warnings.catch_warnings():
                # A row longer than the header: pandas would drop a field, and only warn.
                warnings.simplefilter("error", pd.errors.ParserWarning)
                raw = pd.read_csv(_io.StringIO(text), index_col=False, low_memory=False)
        except (ValueError, pd.errors.ParserError, pd.errors.ParserWarning) as exc:
            raise InputError(f"cannot parse CSV: {_first_line(exc)}", source=self.source
                             ) from None
        if len(raw) != len(lines):  # quoting that swallowed a newline: not one row per line
            raise InputError("a line is not one CSV row", source=self.source)
        return to_rows(raw, self.source, self.cfg)

    def _parse_jsonl(self, lines: list[str], first_line: int) -> pd.DataFrame | None:
        objs: list[dict] = []
        numbers: list[int] = []
        for i, line in enumerate(lines):  # json.loads per line: a bad one is found right here
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                self._bad(first_line + i, f"not valid JSON ({exc.msg})")
                continue
            if not isinstance(obj, dict):
                self._bad(first_line + i, "line is not a JSON object")
                continue
            objs.append(obj)
            numbers.append(first_line + i)
        if not objs:
            return None

        def rows(items: list[tuple[int, dict]]) -> pd.DataFrame:
            return to_rows(pd.DataFrame.from_records([o for _, o in items]), self.source,
                           self.cfg)

        parts = self._bisect(list(zip(numbers, objs, strict=True)), None, rows)
        return _concat(parts)

    def _bisect(self, items: list, first_line: int | None, parse) -> list[pd.DataFrame]:
        try:
            return [parse(items)]
        except (FtmlError, ValueError, TypeError, KeyError) as exc:
            if len(items) == 1:
                line = items[0][0] if first_line is None else first_line
                self._bad(line, exc.problem if isinstance(exc, FtmlError) else str(exc))
                return []
        mid = len(items) // 2
        return (self._bisect(items[:mid], first_line, parse) +
                self._bisect(items[mid:], None if first_line is None else first_line + mid,
                             parse))

    def _bad(self, line: int, problem: str) -> None:
        self.skipped += 1
        if self._logged < _LOG_FIRST_BAD or self.skipped % 1000 == 0:
            self._logged += 1
            log.warning("%s: line %d skipped: %s (%d bad lines so far)", self.source, line + 1,
                        problem, self.skipped)
        if self.on_bad is not None:
            self.on_bad(problem)


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame | None:
    parts = [p for p in parts if len(p)]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True, sort=False)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- file


class FileSource:
    """Tails a growing CSV or JSON Lines file (``file:PATH``) from its start.

    Only complete lines are read: a last line without its newline waits for the next poll.
    Rotation (the path now names a new file) is noticed by the inode: the old file is read
    to its end, then the new one from its start. Truncation (the file shrank below what was
    read) restarts at the beginning, header included.
    """

    def __init__(self, path: str | Path, cfg: ReadConfig | None = None,
                 max_bytes: int = MAX_READ_BYTES):
        self.path = Path(path)
        self.name = f"file:{path}"
        name = self.path.name.lower()
        fmt = "csv" if name.endswith((".csv", ".tsv")) else \
            "jsonl" if name.endswith((".jsonl", ".ndjson", ".json")) else None
        if fmt is None:
            raise ConfigError("a watched file must be .csv or .jsonl", source=str(path),
                              hint="name it after its format (compressed files cannot grow)")
        self.fmt = fmt
        self.cfg = cfg or ReadConfig()
        self.max_bytes = max_bytes
        self.parser = LineParser(fmt, self.cfg, str(path))
        self.more = False
        self.exhausted = False
        self._fh: Any = None
        self._ino: int | None = None
        self._offset = 0
        self._line = 0  # lines consumed, for warnings

    @property
    def skipped(self) -> int:
        return self.parser.skipped

    def bind(self, step: pd.Timedelta, keep_steps: int) -> None:
        pass

    def check(self) -> None:
        """Raise SourceError if the file cannot be read now (Watcher.check_sources)."""
        if not os.access(self.path, os.R_OK):
            why = "file not found" if not self.path.exists() else "not readable"
            raise SourceError(f"{self.path}: {why}")

    def poll(self, now: float) -> pd.DataFrame | None:
        parts: list[pd.DataFrame | None] = []
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if self._fh is not None and (st is None or st.st_ino != self._ino):
            # Rotated (or removed): the old file's remaining complete lines come first.
            parts.append(self._read())
            while self.more:
                parts.append(self._read())
            self._close_file()
        if st is None:
            if parts and parts[0] is not None:
                return parts[0]
            raise SourceError(f"{self.path}: file not found")
        if self._fh is None:
            self._open(st.st_ino)
        elif st.st_size < self._offset:
            log.warning("%s: truncated (size %d < %d read): reading from the start", self.name,
                        st.st_size, self._offset)
            self._rewind()
        parts.append(self._read())
        return _concat([p for p in parts if p is not None])

    def _open(self, ino: int, offset: int = 0, line: int = 0, header: str | None = None):
        try:
            self._fh = open(self.path, "rb")  # noqa: SIM115 - held open across polls
        except OSError as exc:
            raise SourceError(f"{self.path}: cannot open: {exc.strerror}") from None
        self._ino = os.fstat(self._fh.fileno()).st_ino
        if self._ino != ino:  # replaced between stat and open: read what was opened
            offset, line, header = 0, 0, None
        self._offset, self._line = offset, line
        self.parser.header = header
        self._fh.seek(offset)

    def _rewind(self) -> None:
        self._offset, self._line = 0, 0
        self.parser.header = None
        self._fh.seek(0)

    def _read(self) -> pd.DataFrame | None:
        self._fh.seek(self._offset)
        data = self._fh.read(self.max_bytes)
        self.more = len(data) == self.max_bytes
        end = data.rfind(b"\n")
        if end < 0:
            if self.more:  # one line longer than a whole read: not metric data
                raise SourceError(f"{self.path}: a line longer than {self.max_bytes} bytes")
            return None
        data = data[:end + 1]  # a half-written last line waits for its newline
        self._offset += len(data)
        # Split on newlines only (str.splitlines would also split on \x1c, \u2028, ...).
        lines = [ln.rstrip("\r") for ln in
                 data.decode("utf-8", errors="replace").split("\n")[:-1]]
        if self._line == 0 and lines and lines[0].startswith("\ufeff"):
            lines[0] = lines[0][1:]
        first = self._line
        self._line += len(lines)
        return self.parser.parse(lines, first)

    def _close_file(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh, self._ino = None, None

    def state(self) -> dict[str, Any]:
        return {"ino": self._ino, "offset": self._offset, "line": self._line,
                "header": self.parser.header}

    def restore(self, state: Mapping[str, Any]) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        if state.get("ino") == st.st_ino and st.st_size >= int(state.get("offset") or 0):
            self._close_file()
            self._open(st.st_ino, int(state["offset"]), int(state.get("line") or 0),
                       state.get("header"))
        else:
            log.warning("%s: not the file of the checkpoint (rotated or truncated while "
                        "stopped): reading it from the start", self.name)

    def close(self) -> None:
        self._close_file()


# --------------------------------------------------------------------------- stdin


class StdinSource(_NothingToKeep):
    """JSON Lines on standard input (``stdin``), read by a thread so polls never block.
    At end of input the source is ``exhausted`` and the loop finishes."""

    name = "stdin"

    def __init__(self, cfg: ReadConfig | None = None, stream: Any = None):
        self.cfg = cfg or ReadConfig()
        self.parser = LineParser("jsonl", self.cfg, "stdin")
        self.nudge: Any = None  # set by the loop (anything with set()): wakes it for new input
        self.more = False
        self.exhausted = False
        self._lines: queue.Queue = queue.Queue()
        self._eof = False
        self._line = 0
        self._stream = stream if stream is not None else sys.stdin
        self._thread = threading.Thread(target=self._reader, name="ftml-stdin", daemon=True)
        self._thread.start()

    @property
    def skipped(self) -> int:
        return self.parser.skipped

    def bind(self, step: pd.Timedelta, keep_steps: int) -> None:
        pass

    def _reader(self) -> None:
        try:
            for i, line in enumerate(self._stream, 1):
                self._lines.put(line)
                if i % 10_000 == 0 and self.nudge is not None:
                    self.nudge.set()  # a backlog: the loop need not wait for its interval
        finally:
            self._lines.put(None)
            if self.nudge is not None:
                self.nudge.set()

    def poll(self, now: float) -> pd.DataFrame | None:
        lines: list[str] = []
        while len(lines) < MAX_STDIN_LINES:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._eof = True
                break
            lines.append(line)
        self.more = len(lines) >= MAX_STDIN_LINES
        self.exhausted = self._eof and self._lines.empty()
        first = self._line
        self._line += len(lines)
        return self.parser.parse(lines, first) if lines else None



# --------------------------------------------------------------------------- local


#: Metrics of the ``local`` source, the same columns for the host and for each process.
LOCAL_METRICS = (
    "cpu_pct", "mem_used_pct", "swap_used_pct", "disk_used_pct", "disk_read_bytes_total",
    "disk_write_bytes_total", "net_bytes_sent_total", "net_bytes_recv_total",
    "net_errors_total", "load1", "load5", "load15", "threads", "open_files",
)


@dataclass
class LocalConfig:
    processes: list[str] = field(default_factory=list)  # names or globs (name or argv[0..1])
    disk_path: str = "/"
    host: str | None = None  # entity name of the host; default: the host name


class LocalSource(_NothingToKeep):
    """Samples this machine with psutil once per step (``local``).

    Entity ``HOST`` for the machine and ``HOST/NAME`` for each process name in the config
    (all processes of that name together). Every row has the same columns
    (:data:`LOCAL_METRICS`) so that one model covers both: a process row has the process's
    own CPU, memory, disk io, threads and open files, and the host's swap, disk use,
    network and load as its context. Timestamps are the start of the current step, one
    sample per step.
    """

    name = "local"

    def __init__(self, config: LocalConfig | None = None):
        import psutil

        self.psutil = psutil
        self.config = config or LocalConfig()
        self.host = self.config.host or socket.gethostname()
        self.skipped = 0
        self.more = False
        self.exhausted = False
        self.step_s = 60.0
        self._last_slot: float | None = None
        self._procs: dict[int, Any] = {}  # pid -> Process, kept so cpu_percent has a baseline
        self._ncpu = psutil.cpu_count() or 1
        psutil.cpu_percent(interval=None)  # primes the system-wide CPU baseline

    def bind(self, step: pd.Timedelta, keep_steps: int) -> None:
        self.step_s = step.total_seconds()

    def poll(self, now: float) -> pd.DataFrame | None:
        slot = math.floor(now / self.step_s) * self.step_s
        if self._last_slot is not None and slot <= self._last_slot:
            return None
        self._last_slot = slot
        ps = self.psutil
        host = self._host_row(ps)
        rows = [{"entity": self.host, **host}]
        if self.config.processes:
            rows.extend(self._process_rows(ps, host))
        frame = pd.DataFrame(rows, columns=["entity", *LOCAL_METRICS])
        frame.insert(1, "timestamp", pd.Timestamp(slot, unit="s", tz="UTC"))
        frame[list(LOCAL_METRICS)] = frame[list(LOCAL_METRICS)].astype(np.float64)
        return frame

    def _host_row(self, ps) -> dict[str, float]:
        vm, sw = ps.virtual_memory(), ps.swap_memory()
        disk = ps.disk_usage(self.config.disk_path)
        dio, net = ps.disk_io_counters(), ps.net_io_counters()
        load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
        return {
            "cpu_pct": ps.cpu_percent(interval=None), "mem_used_pct": vm.percent,
            "swap_used_pct": sw.percent, "disk_used_pct": disk.percent,
            "disk_read_bytes_total": dio.read_bytes if dio else math.nan,
            "disk_write_bytes_total": dio.write_bytes if dio else math.nan,
            "net_bytes_sent_total": net.bytes_sent, "net_bytes_recv_total": net.bytes_recv,
            "net_errors_total": net.errin + net.errout,
            "load1": load[0], "load5": load[1], "load15": load[2],
            "threads": _host_threads(ps), "open_files": _host_open_files(),
        }

    def _process_rows(self, ps, host: Mapping[str, float]) -> list[dict[str, Any]]:
        groups: dict[str, list[Any]] = {p: [] for p in self.config.processes}
        alive: dict[int, Any] = {}
        for proc in ps.process_iter(["name", "cmdline"]):
            names = [proc.info.get("name") or ""]
            names += [os.path.basename(a) for a in (proc.info.get("cmdline") or [])[:2]]
            for pattern in self.config.processes:
                if any(fnmatch.fnmatchcase(n, pattern) for n in names if n):
                    known = self._procs.get(proc.pid)
                    proc = known if known is not None else proc
                    alive[proc.pid] = proc
                    groups[pattern].append(proc)
                    break
        self._procs = alive
        rows = []
        for pattern, procs in groups.items():
            row: dict[str, Any] = {"entity": f"{self.host}/{pattern}", **host}
            vals = {"cpu_pct": 0.0, "mem_used_pct": 0.0, "threads": 0.0, "open_files": 0.0,
                    "disk_read_bytes_total": 0.0, "disk_write_bytes_total": 0.0}
            for proc in procs:
                try:
                    with proc.oneshot():
                        vals["cpu_pct"] += proc.cpu_percent(interval=None) / self._ncpu
                        vals["mem_used_pct"] += proc.memory_percent()
                        vals["threads"] += proc.num_threads()
                        vals["open_files"] += len(proc.open_files())
                        try:
                            io = proc.io_counters()
                            vals["disk_read_bytes_total"] += io.read_bytes
                            vals["disk_write_bytes_total"] += io.write_bytes
                        except (ps.AccessDenied, AttributeError):
                            pass
                except (ps.NoSuchProcess, ps.ZombieProcess, ps.AccessDenied):
                    continue
            if not procs:  # not running: no values (the windows over it are incomplete)
                vals = {k: math.nan for k in vals}
            row.update(vals)
            rows.append(row)
        return rows



def _host_threads(ps) -> float:
    try:  # 4th field of /proc/loadavg: running/total scheduling entities (threads)
        return float(Path("/proc/loadavg").read_text().split()[3].split("/")[1])
    except (OSError, IndexError, ValueError):
        return float(sum(p.info.get("num_threads") or 0
                         for p in ps.process_iter(["num_threads"])))


def _host_open_files() -> float:
    try:  # allocated file handles, system-wide
        return float(Path("/proc/sys/fs/file-nr").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return math.nan


# --------------------------------------------------------------------------- prometheus


@dataclass
class PrometheusConfig:
    queries: dict[str, str] = field(default_factory=dict)  # metric name -> PromQL
    entity_label: str = "instance"
    timeout: float = 5.0


class PrometheusSource:
    """Instant queries over Prometheus' HTTP API, one per metric, once per step
    (``prometheus:URL``). Query times are aligned to the model's step so that every step
    gets exactly one sample. The first poll backfills the history the loop keeps with one
    ``query_range`` per metric, and a poll after an outage fills the gap the same way,
    so scoring goes on from where it stopped."""

    def __init__(self, url: str, config: PrometheusConfig, metrics: Iterable[str] = (),
                 entity_map: str | None = None):
        self.url = url.rstrip("/")
        self.entity_map = entity_map  # read.entity_map: pods -> stable names
        self.name = f"prometheus:{self.url}"
        queries = dict(config.queries) or {m: m for m in metrics}
        if not queries:
            raise ConfigError("no Prometheus queries", source=self.name,
                              hint="give watch.prometheus.queries: {metric: PromQL} in the "
                                   "config")
        self.queries = queries
        self.entity_label = config.entity_label
        self.timeout = config.timeout
        self.skipped = 0
        self.more = False
        self.exhausted = False
        self.step_s = 60.0
        self.keep_steps = 30
        self._last_t: float | None = None
        self._no_entity_logged = False
        self.warmup = False  # the last poll was the first backfill (not a gap after an outage)

    def bind(self, step: pd.Timedelta, keep_steps: int) -> None:
        self.step_s = step.total_seconds()
        self.keep_steps = keep_steps

    def poll(self, now: float) -> pd.DataFrame | None:
        t = math.floor(now / self.step_s) * self.step_s
        start = t - (self.keep_steps - 1) * self.step_s
        if self._last_t is not None:
            start = max(start, self._last_t + self.step_s)
        self.warmup = False
        if start > t:
            return None
        parts = []
        for metric, promql in self.queries.items():
            if start == t:
                data = self._get("/api/v1/query", {"query": promql, "time": _num(t)})
            else:
                data = self._get("/api/v1/query_range", {"query": promql, "start": _num(start),
                                                         "end": _num(t),
                                                         "step": _num(self.step_s)})
            parts.append(self._samples(metric, data))
        # The first backfill of a fresh start is history; one after a checkpoint fills a gap.
        self.warmup = self._last_t is None and start < t
        self._last_t = t
        return self._wide(parts)

    def history(self, start: float, end: float, max_points: int = 10_000
                ) -> Iterator[pd.DataFrame]:
        """The rows of [start, end] (epoch seconds) at the bound step, oldest first, with the
        queries ``poll`` uses: one ``query_range`` per metric per chunk of ``max_points``
        steps (Prometheus refuses more than 11 000 points per series)."""
        t0 = math.ceil(start / self.step_s) * self.step_s
        while t0 <= end:
            t1 = min(end, t0 + (max_points - 1) * self.step_s)
            parts = [self._samples(metric, self._get(
                "/api/v1/query_range", {"query": promql, "start": _num(t0), "end": _num(t1),
                                        "step": _num(self.step_s)}))
                     for metric, promql in self.queries.items()]
            wide = self._wide(parts)
            if wide is not None:
                yield wide
            t0 = t1 + self.step_s

    def _wide(self, parts: list[pd.DataFrame]) -> pd.DataFrame | None:
        long = pd.concat(parts, ignore_index=True) if parts else None
        if long is None or long.empty:
            return None
        long["entity"] = map_entities(long["entity"], self.entity_map)
        # One row per (entity, time): pods merged by the entity map are averaged, as in
        # batch reading; a sample the query returned as NaN stays missing.
        wide = long.groupby(["entity", "ts", "metric"], sort=False)["value"].mean() \
            .unstack("metric").reset_index()
        wide.columns.name = None
        wide.insert(1, "timestamp", pd.to_datetime(np.round(wide.pop("ts").to_numpy() * 1e3)
                                                   .astype(np.int64), unit="ms", utc=True))
        for metric in self.queries:
            if metric not in wide.columns:
                wide[metric] = np.nan
        wide["entity"] = wide["entity"].astype(str)
        return wide[["entity", "timestamp", *self.queries]]

    def check(self) -> None:
        """Raise SourceError if Prometheus does not answer a query (Watcher.check_sources)."""
        self._get("/api/v1/query", {"query": "1"})

    def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = ""
            try:
                detail = json.loads(exc.read()).get("error", "")
            except (ValueError, OSError, AttributeError):
                pass
            raise SourceError(f"{self.name}: HTTP {exc.code} for {params.get('query')!r}"
                              f"{': ' + detail if detail else ''}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SourceError(f"{self.name}: {reason}") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            raise SourceError(f"{self.name}: query failed: "
                              f"{body.get('error') if isinstance(body, dict) else body!r}")
        return body.get("data") or {}

    def _samples(self, metric: str, data: Mapping[str, Any]) -> pd.DataFrame:
        ents: list[str] = []
        ts: list[float] = []
        vals: list[float] = []
        for series in data.get("result") or []:
            labels = series.get("metric") or {}
            entity = labels.get(self.entity_label)
            if entity is None:
                self.skipped += 1
                if not self._no_entity_logged:
                    self._no_entity_logged = True
                    log.warning("%s: a series of %s has no label %r: skipped (labels %s)",
                                self.name, metric, self.entity_label, labels)
                continue
            points = series.get("values") or ([series["value"]] if "value" in series else [])
            for stamp, value in points:
                ents.append(str(entity))
                ts.append(float(stamp))
                vals.append(_float(value))
        return pd.DataFrame({"entity": ents, "ts": ts, "metric": metric, "value": vals})

    def state(self) -> dict[str, Any]:
        return {"last_t": self._last_t}

    def restore(self, state: Mapping[str, Any]) -> None:
        last = state.get("last_t")
        self._last_t = float(last) if last is not None else None

    def close(self) -> None:
        pass


def _num(x: float) -> str:
    return f"{x:.3f}".rstrip("0").rstrip(".")


def _float(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


# --------------------------------------------------------------------------- specs


@dataclass
class WatchSourceConfig:
    """The ``watch:`` section of the config that sources read."""

    local: LocalConfig = field(default_factory=LocalConfig)
    prometheus: PrometheusConfig = field(default_factory=PrometheusConfig)


_LOCAL_KEYS = ("processes", "disk_path", "host")
_PROMETHEUS_KEYS = ("queries", "entity_label", "timeout")


def source_config(section: Mapping[str, Any] | None, source: str = "config"
                  ) -> WatchSourceConfig:
    section = dict(section or {})
    out = WatchSourceConfig()
    local = section.get("local")
    prom = section.get("prometheus")
    local = {} if local is None else local
    prom = {} if prom is None else prom
    if not isinstance(local, dict) or not isinstance(prom, dict):
        raise ConfigError("watch.local and watch.prometheus must be mappings", source=source)
    for name, sub, known in (("local", local, _LOCAL_KEYS),
                             ("prometheus", prom, _PROMETHEUS_KEYS)):
        for key in sub:
            if key not in known:
                raise ConfigError(f"unknown key '{key}'", source=source, where=f"watch.{name}",
                                  hint=f"known keys: {', '.join(sorted(known))}")
    procs = local.get("processes") or []
    if not isinstance(procs, list) or not all(isinstance(p, str) for p in procs):
        raise ConfigError("watch.local.processes must be a list of names", source=source)
    out.local = LocalConfig(processes=procs, disk_path=str(local.get("disk_path", "/")),
                            host=local.get("host"))
    queries = prom.get("queries") or {}
    if not isinstance(queries, dict) or not all(isinstance(v, str) for v in queries.values()):
        raise ConfigError("watch.prometheus.queries must map metric names to PromQL",
                          source=source, hint="queries: {cpu_pct: 'rate(...)'}")
    timeout = PrometheusConfig.timeout
    if prom.get("timeout") is not None:
        try:
            timeout = parse_duration(prom["timeout"], "timeout").total_seconds()
        except ConfigError as exc:
            raise ConfigError(exc.problem, source=source, where="watch.prometheus.timeout",
                              hint=exc.hint) from None
    out.prometheus = PrometheusConfig(queries={str(k): v for k, v in queries.items()},
                                      entity_label=str(prom.get("entity_label", "instance")),
                                      timeout=timeout)
    return out


def make_source(spec: str, cfg: ReadConfig, config: WatchSourceConfig | None = None,
                metrics: Iterable[str] = (), logs: Any = None) -> Source:
    """``file:PATH`` | ``stdin`` | ``local`` | ``prometheus:URL`` | ``logs:PATH[,PATH...]`` |
    ``journald[:UNIT,...]`` -> a source. ``logs``: the model's log part (the log sources
    count its series with its templates)."""
    config = config or WatchSourceConfig()
    kind, _, arg = spec.partition(":")
    if kind in ("logs", "journald"):
        from ftml.logs.source import make_log_source

        return make_log_source(spec, logs, entity_map=cfg.entity_map)
    if kind == "file" and arg:
        return FileSource(arg, cfg)
    if spec == "stdin":
        return StdinSource(cfg)
    if spec == "local":
        return LocalSource(config.local)
    if kind == "prometheus" and arg:
        if not arg.startswith(("http://", "https://")):
            raise ConfigError(f"not an http(s) URL: {arg!r}", where=f"--source {spec}")
        return PrometheusSource(arg, config.prometheus, metrics, cfg.entity_map)
    raise ConfigError(f"unknown source {spec!r}", where="--source",
                      hint="use file:PATH, stdin, local, prometheus:URL, logs:PATH or journald")
