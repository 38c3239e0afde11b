"""Log files -> parsed lines (time, entity, level, message, HTTP status), block by block.

A file is read ``LogConfig.chunk_bytes`` at a time whatever its size, and each block is parsed
with Arrow's vectorised kernels (RE2 regexes, timestamp casts): no Python loop per line. The
format is detected per file from its first lines, or given (a name of :data:`FORMATS`, or a
regex with named groups ``ts`` and ``msg``, optionally ``level``, ``entity``, ``status``).

Bad input: a binary file, or one where more than ``max_bad_fraction`` of the lines are bad
(not UTF-8, longer than ``max_line_bytes``, not JSON, far out of time order), is refused with
one line naming the file, the first bad line and the fix; a few bad lines are skipped and
counted (:class:`ReadStats`). Text lines that do not start with a timestamp continue the record
before them (a traceback), and are not records of their own.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from ftml.config import LogConfig
from ftml.errors import InputError
from ftml.io import ENTITY_NAMES, find_column, map_entities

# Level codes of a parsed line.
INFO, WARNING, ERROR = 0, 1, 2
_ERROR_WORDS = {"ERROR", "ERR", "CRITICAL", "CRIT", "FATAL", "SEVERE", "ALERT", "EMERG",
                "EMERGENCY", "PANIC", "E", "F", "C"}
_WARNING_WORDS = {"WARN", "WARNING", "W"}

_LEVEL_WORD = r"(?i:trace|debug|info|notice|warn|warning|error|err|critical|crit|fatal|severe)"


@dataclass(frozen=True)
class Format:
    """A text log format: an RE2 regex with named groups and how its ``ts`` group reads."""

    name: str
    regex: str
    ts: str  # "iso" (ISO 8601, any precision and zone), "syslog", or an strptime format


FORMATS: dict[str, Format] = {f.name: f for f in [
    # Python logging's "%(asctime)s %(levelname)s %(name)s: %(message)s" (ftml simulate --logs)
    # (No lazy quantifiers nor trailing $: RE2 then extracts in one pass, 2x faster.)
    Format("python", r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) +(?P<level>[A-Z]+) +"
                     r"(?P<logger>[^ :]*): (?P<msg>.*)", "iso"),
    # kubectl logs --timestamps: an RFC 3339 time with nanoseconds, then the container's line
    Format("kubectl", r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z) (?P<msg>(?:\[?"
                      r"(?P<level>" + _LEVEL_WORD + r")\]?:?\s)?.*)", "iso"),
    # Any line that starts with an ISO 8601 time, then maybe a level ("- INFO -", ", Info")
    Format("iso", r"^\[?(?P<ts>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?)"
                  r"\]?,?\s+(?:-\s+)?(?:\[?(?P<level>" + _LEVEL_WORD + r")\]?:?\s+(?:-\s+)?)?"
                  r"(?P<msg>.*)", "iso"),
    # BSD syslog (RFC 3164): "Dec  4 04:47:44 host app[123]: message" (no year: see _parse_ts)
    Format("syslog", r"^(?P<ts>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (?P<entity>\S+) "
                     r"(?P<app>[^:\[\s]+)(?:\[\d+\])?: (?P<msg>.*)", "syslog"),
    # nginx / Apache access logs (common and combined)
    Format("access", r"^(?P<client>\S+) \S+ \S+ \[(?P<ts>\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d "
                     r"[+-]\d{4})\] \"(?P<msg>[^\"]*)\" (?P<status>\d{3}) ",
           "%d/%b/%Y:%H:%M:%S %z"),
    # Apache error log: "[Sun Dec 04 04:47:44 2005] [error] message"
    Format("apache-error", r"^\[(?P<ts>[A-Z][a-z]{2} [A-Z][a-z]{2} \d\d \d\d:\d\d:\d\d \d{4})\] "
                           r"\[(?:[a-z_]+:)?(?P<level>[a-z]+)\] (?P<msg>.*)",
           "%a %b %d %H:%M:%S %Y"),
]}
JSON_FORMATS = ("jsonl", "journald")
FORMAT_NAMES = (*FORMATS, *JSON_FORMATS)
FORMAT_HINT = ("pass --log-format NAME (" + ", ".join(FORMAT_NAMES) + ") or a regex with "
               "named groups ts and msg")

# JSON Lines fields, first found wins (journald exports use their own, see _journald).
_JSON_TS = ("timestamp", "time", "ts", "@timestamp", "asctime", "datetime", "date")
_JSON_LEVEL = ("level", "levelname", "severity", "lvl", "loglevel")
_JSON_MSG = ("message", "msg", "log", "text")
_JSON_STATUS = ("status", "status_code", "http_status")

_DETECT_LINES = 200


@dataclass
class Lines:
    """Parsed records of one block: numpy arrays of one row per record, and the message
    text as an Arrow string array (kept in Arrow: the masking kernels read it there)."""

    ts: np.ndarray  # int64 ns, UTC
    entity: np.ndarray  # object (str)
    level: np.ndarray  # int8: INFO, WARNING, ERROR
    status: np.ndarray  # int16 HTTP status, -1 for none
    msg: pa.Array
    line: np.ndarray  # int64 line numbers in the file (1-based)

    def __len__(self) -> int:
        return len(self.ts)

    def frame(self) -> pd.DataFrame:
        """The records as the frame :func:`ftml.logs.series.log_series` takes."""
        return pd.DataFrame({"ts": self.ts, "entity": self.entity,
                             "level": np.asarray(LEVEL_NAMES, dtype=object)[self.level],
                             "msg": self.msg.to_numpy(zero_copy_only=False),
                             "status": self.status})


LEVEL_NAMES = ("info", "warning", "error")


@dataclass
class ReadStats:
    """What reading found: lines, records, continuation lines, and skipped bad lines by
    reason with the first file and line of each."""

    lines: int = 0
    records: int = 0
    continuation: int = 0
    bad: dict[str, int] = field(default_factory=dict)
    first_bad: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def merge(self, other: ReadStats) -> ReadStats:
        """Another file's stats added after these (the first bad line of each reason stays
        the earliest file's, as one pass over the files in order finds it)."""
        self.lines += other.lines
        self.records += other.records
        self.continuation += other.continuation
        for reason, n in other.bad.items():
            self.bad[reason] = self.bad.get(reason, 0) + n
            self.first_bad.setdefault(reason, other.first_bad[reason])
        self.files.extend(other.files)
        return self

    def warning(self) -> str | None:
        """The one line saying which lines were skipped (None: none)."""
        if not self.bad:
            return None
        parts = [f"{n} {reason} (first: {self.first_bad[reason]})"
                 for reason, n in sorted(self.bad.items())]
        total = sum(self.bad.values())
        return f"skipped {total} bad log line{'s' if total > 1 else ''} of {self.lines}: " + \
            "; ".join(parts)


# Reasons a line is bad, and what fixes it.
_FIXES = {
    "not UTF-8": "convert the file to UTF-8, e.g. iconv -f LATIN1 -t UTF-8",
    "too long": "split such lines, or raise logs max_line_bytes",
    "NUL bytes": "remove the binary data from the file",
    "out of time order": "sort the file by time, or split it where the clock jumps",
    "not a JSON object": "give one JSON object per line",
    "no timestamp": "give each object a time field (timestamp, time, ts)",
    "bad timestamp": "use ISO 8601 times, or pass --log-format with a ts group",
}


class _BadLines:
    """Bad lines of one file: counted; the file is refused once they are more than a few."""

    def __init__(self, source: str, cfg: LogConfig, stats: ReadStats):
        self.source, self.cfg, self.stats = source, cfg, stats
        self.n = 0

    def add(self, reason: str, lines: np.ndarray) -> None:
        if not len(lines):
            return
        self.n += len(lines)
        self.stats.bad[reason] = self.stats.bad.get(reason, 0) + len(lines)
        self.stats.first_bad.setdefault(reason, f"{self.source}:{int(lines[0])}")
        self._first = getattr(self, "_first", None) or (reason, int(lines[0]))

    def check(self, lines_read: int) -> None:
        allowed = max(10, self.cfg.max_bad_fraction * lines_read)
        if self.n > allowed:
            reason, line = self._first
            raise InputError(f"{self.n} of {lines_read} lines read are bad, the first {reason}",
                             source=self.source, where=f"line {line}", hint=_FIXES[reason])


# --------------------------------------------------------------------------- paths


def expand_log_paths(paths) -> list[Path]:
    """Paths, directories (every file under them, hidden ones aside) and globs -> files."""
    out: list[Path] = []
    for p in paths:
        p = str(p)
        if any(ch in p for ch in "*?["):
            matches = sorted(m for m in glob.glob(p, recursive=True) if os.path.isfile(m))
            if not matches:
                raise InputError("no log file matches this pattern", source=p,
                                 hint="check the path and quote the glob")
            out.extend(Path(m) for m in matches)
        elif os.path.isdir(p):
            found = sorted(f for f in Path(p).rglob("*")
                           if f.is_file() and not f.name.startswith("."))
            if not found:
                raise InputError("directory holds no log files", source=p,
                                 hint="point --logs at log files")
            out.extend(found)
        elif os.path.isfile(p):
            out.append(Path(p))
        else:
            raise InputError("log file not found", source=p, hint="check --logs")
    if not out:
        raise InputError("no log files given", hint="pass --logs PATH")
    return out


def entity_from_path(pattern: str) -> re.Pattern:
    """'pods/{entity}/*.log' -> a regex matching the end of a path, group 'entity'."""
    if "{entity}" not in pattern:
        raise InputError("--log-entity-from needs {entity} in it", where="--log-entity-from",
                         hint="e.g. 'pods/{entity}/*.log' or '{entity}.log'")
    parts = re.split(r"(\{entity\}|\*\*|\*|\?)", pattern)
    rx = "".join({"{entity}": "(?P<entity>[^/]+?)", "**": ".*", "*": "[^/]*", "?": "[^/]"}
                 .get(part, re.escape(part)) for part in parts)
    return re.compile(r"(?:^|/)" + rx + "$")


def file_entity(path: Path, cfg: LogConfig) -> str | None:
    """The entity a file's lines belong to when not from a field: given, from the path, or
    None (the format's entity field, else the file's stem)."""
    if cfg.entity:
        return cfg.entity
    if cfg.entity_from:
        m = entity_from_path(cfg.entity_from).search(path.as_posix())
        if m is None:
            raise InputError(f"the path does not match --log-entity-from {cfg.entity_from!r}",
                             source=str(path), hint="fix the pattern, e.g. 'pods/{entity}/*.log'")
        return m.group("entity")
    return None


def stem_entity(path: Path) -> str:
    """'/var/log/app/web-1.log.2.gz' -> 'web-1'."""
    name = path.name
    for suffix in (".gz",):
        name = name.removesuffix(suffix)
    name = re.sub(r"(\.\d+)+$", "", name)  # rotated copies: app.log.1
    return re.sub(r"\.(log|txt|jsonl|json|out|err)$", "", name) or path.name


# --------------------------------------------------------------------------- reading


def read_log_lines(paths, cfg: LogConfig | None = None, entity_map: str | None = None,
                   stats: ReadStats | None = None) -> Iterator[Lines]:
    """Every file's records, block by block (a few bad lines skipped, counted in ``stats``).
    Entity names go through ``entity_map`` as metric entities do."""
    cfg = cfg or LogConfig()
    stats = stats if stats is not None else ReadStats()
    fixed = _given_format(cfg.format)
    for path in expand_log_paths(paths):
        stats.files.append(str(path))
        yield from _read_file(path, cfg, fixed, entity_map, stats)


def read_log_file(path: str | Path, cfg: LogConfig, entity_map: str | None, stats: ReadStats,
                  name: str | None = None) -> Iterator[Lines]:
    """One file's records, as :func:`read_log_lines` reads it; ``name``: the path as the user
    gave it (a Dask worker reads the absolute path), which entity-from-path, the stem entity
    and every message use, so that they are those of a local run."""
    name = str(name if name is not None else path)
    stats.files.append(name)
    yield from _read_file(Path(path), cfg, _given_format(cfg.format), entity_map, stats,
                          name=Path(name))


def parse_lines(lines: list[str], *, fmt: Any = None, entity: str | None = None,
                path: str | None = None, config: Any = None,
                entity_map: str | None = None) -> pd.DataFrame:
    """Text lines of one log, as a tail reads them -> its records, parsed as a log file is in
    batch (this module's readers: the same formats, entity rules and bad-line counting):
    columns ts (int ns), entity, level, msg, status and line (the 1-based position in
    ``lines`` of the record's first line); ``attrs``: ``skipped`` (bad lines) and ``format``
    (pass it back as ``fmt`` to skip detecting it again).

    ``fmt``: a format of the readers (or its name, or a regex), None to detect it;
    ``config``: the model's :class:`ftml.config.LogConfig` (entity rules, line limits)."""
    cfg = config or LogConfig()
    source = path or "journald"
    stats = ReadStats()
    bad = _BadLines(source, cfg, stats)
    block = ("\n".join(lines) + "\n").encode("utf-8", errors="replace")
    text, line_no = _decode(block, 1, cfg, bad)
    if fmt is None or isinstance(fmt, str):
        fmt = _given_format(fmt if fmt is not None else cfg.format)
    if fmt is None:
        fmt = _detect(text, source)
    if fmt in JSON_FORMATS:
        parsed = _parse_json(block, text, line_no, fmt, source, bad)
    else:
        parsed = _parse_text(text, line_no, fmt, stats)
    bad.add("bad timestamp", getattr(parsed, "bad_ts", np.zeros(0, np.int64)))
    # Given (or from the path) wins over a line's own entity field, which wins over the stem.
    given = entity or (file_entity(Path(path), cfg) if path is not None else cfg.entity)
    fallback = stem_entity(Path(path)) if path is not None else "journald"
    parsed.entity = _entities(parsed.entity, given, fallback, entity_map)
    frame = parsed.frame()
    frame["line"] = parsed.line
    frame.attrs["skipped"] = bad.n
    frame.attrs["format"] = fmt
    return frame


def _given_format(fmt: str | None) -> Format | str | None:
    if fmt is None or fmt in JSON_FORMATS:
        return fmt
    if fmt in FORMATS:
        return FORMATS[fmt]
    try:
        groups = re.compile(fmt).groupindex
    except re.error as exc:
        raise InputError(f"--log-format is neither a format name nor a valid regex: {exc}",
                         where="--log-format", hint=FORMAT_HINT) from None
    missing = [g for g in ("ts", "msg") if g not in groups]
    if missing:
        raise InputError(f"--log-format has no named group {', '.join(missing)}",
                         where="--log-format", hint="e.g. '^(?P<ts>\\S+ \\S+) (?P<msg>.*)$'")
    try:
        pc.extract_regex(pa.array([""]), fmt)
    except pa.ArrowInvalid as exc:
        raise InputError(f"--log-format is not a regex RE2 reads: {exc}", where="--log-format",
                         hint="leave out lookarounds and backreferences") from None
    return Format("custom", fmt, "iso")


def _open(path: Path, source: str):
    try:
        fh = open(path, "rb")
        head = fh.read(2)
        fh.seek(0)
        return gzip.open(fh) if head == b"\x1f\x8b" else fh
    except OSError as exc:
        raise InputError(f"cannot read the log file: {exc.strerror or exc}",
                         source=source) from None


def _read_file(path: Path, cfg: LogConfig, fixed, entity_map, stats: ReadStats,
               name: Path | None = None) -> Iterator[Lines]:
    name = name if name is not None else path
    source = str(name)
    bad = _BadLines(source, cfg, stats)
    entity = file_entity(name, cfg)
    fallback = stem_entity(name)
    fmt = fixed
    latest = np.iinfo(np.int64).min  # newest time so far: a line far before it is out of order
    records = 0
    last_line = 0
    with _open(path, source) as fh:
        for block, first_line, n_lines, long_lines in _blocks(fh, cfg, source):
            bad.add("too long", long_lines)
            if first_line == 1 and b"\x00" in block[:8192]:
                raise InputError("binary file (NUL bytes), not a text log", source=source,
                                 where="line 1", hint="give a text log; export journald with "
                                                      "journalctl -o json")
            text, line_no = _decode(block, first_line, cfg, bad)
            last_line = max(last_line, first_line + n_lines - 1, *long_lines.tolist())
            bad.check(last_line)  # lines that are not text: said before guessing a format
            if fmt is None and len(text):
                fmt = _detect(text, source)
            if not len(text):
                lines = _empty()
            elif fmt in JSON_FORMATS:
                lines = _parse_json(block, text, line_no, fmt, source, bad)
            else:
                lines = _parse_text(text, line_no, fmt, stats)
            if len(lines) or hasattr(lines, "bad_ts"):
                lines, latest = _drop_late(lines, latest, cfg, bad)
                lines.entity = _entities(lines.entity, entity, fallback, entity_map)
                records += len(lines)
                stats.records += len(lines)
            bad.check(last_line)
            if len(lines):
                yield lines
    stats.lines += last_line
    if records == 0 and last_line > 0:
        name = fmt if isinstance(fmt, str) or fmt is None else fmt.name
        raise InputError(f"no line of the file reads as a {name} log record", source=source,
                         where="line 1", hint=FORMAT_HINT)


def _blocks(fh, cfg: LogConfig, source: str
            ) -> Iterator[tuple[bytes, int, int, np.ndarray]]:
    """Whole lines, ``chunk_bytes`` at a time: (bytes, number of their first line, lines in
    them, numbers of lines left out as too long). A line longer than ``max_line_bytes`` is
    never held whole: its bytes are dropped up to its end."""
    carry = b""
    skipping = False  # inside a line already too long: drop bytes up to its end
    line_no = 1  # the number of carry's line
    long_lines: list[int] = []
    while True:
        try:
            chunk = fh.read(cfg.chunk_bytes)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise InputError(f"cannot read the log file: {exc}", source=source,
                             hint="check the file (a truncated .gz?)") from None
        eof = not chunk
        if skipping:
            nl = chunk.find(b"\n")
            if nl < 0 and not eof:
                continue
            chunk, skipping = (chunk[nl + 1:] if nl >= 0 else b""), False
            line_no += 1
        data = carry + chunk
        if eof:
            body, carry = data, b""
        else:
            cut = data.rfind(b"\n") + 1
            body, carry = data[:cut], data[cut:]
        n = body.count(b"\n") + (1 if body and not body.endswith(b"\n") else 0)
        if not eof and len(carry) > cfg.max_line_bytes:
            long_lines.append(line_no + n)
            carry, skipping = b"", True
        if body or long_lines:
            yield body, line_no, n, np.asarray(long_lines, dtype=np.int64)
            long_lines = []
        line_no += n
        if eof:
            return


def _decode(block: bytes, first_line: int, cfg: LogConfig, bad: _BadLines
            ) -> tuple[pa.Array, np.ndarray]:
    """Whole-line bytes -> an Arrow string array of the lines (CR LF stripped) and their
    numbers; lines that are not UTF-8, hold NUL bytes or are too long become empty."""
    buf = np.frombuffer(block, dtype=np.uint8)
    nl = np.flatnonzero(buf == 10)
    ends = nl if len(block) == 0 or block.endswith(b"\n") else np.r_[nl, len(buf)]
    starts = np.r_[0, ends[:-1] + 1].astype(np.int64) if len(ends) else np.zeros(0, np.int64)
    offsets = np.r_[starts, len(buf)].astype(np.int32)
    line_no = first_line + np.arange(len(starts), dtype=np.int64)
    raw = pa.BinaryArray.from_buffers(pa.binary(), len(starts), [None, pa.py_buffer(offsets),
                                                                  pa.py_buffer(block)])
    drop = np.zeros(len(starts), dtype=bool)
    lengths = ends - starts
    long = lengths > cfg.max_line_bytes
    if long.any():
        bad.add("too long", line_no[long])
        drop |= long
    if (buf == 0).any():
        nul = np.zeros(len(starts), dtype=bool)
        nul[np.searchsorted(starts, np.flatnonzero(buf == 0), side="right") - 1] = True
        bad.add("NUL bytes", line_no[nul & ~drop])
        drop |= nul
    try:
        text = raw.cast(pa.string())
    except pa.ArrowInvalid:  # some line is not UTF-8: find which (this block only)
        utf8 = np.array([_is_utf8(b) for b in raw.to_pylist()])
        bad.add("not UTF-8", line_no[~utf8 & ~drop])
        drop |= ~utf8
        raw = pa.array([b if ok else b"" for b, ok in zip(raw.to_pylist(), utf8, strict=True)],
                       pa.binary())
        text = raw.cast(pa.string())
    text = pc.utf8_rtrim(text, characters="\r\n")
    if drop.any():
        text = pc.if_else(pa.array(drop), "", text)
    return text, line_no


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _detect(text: pa.Array, source: str) -> Format | str:
    """The format most of the first lines read as (JSON when they are objects)."""
    head = text.slice(0, _DETECT_LINES)
    head = head.filter(pc.not_equal(pc.utf8_trim_whitespace(head), ""))
    if not len(head):
        raise InputError("no text in the first lines of the log file", source=source,
                         where="line 1", hint=FORMAT_HINT)
    first = head[0].as_py().lstrip()
    if first.startswith("{"):
        return "journald" if '"__REALTIME_TIMESTAMP"' in first else "jsonl"
    # A log starts with a record: among the formats its first line reads as, the one most
    # lines read as (continuation lines, a traceback, match none); else one most lines read as.
    best, hits, best_first = None, 0, False
    for fmt in FORMATS.values():
        matches = pc.match_substring_regex(head, fmt.regex)
        n = int(pc.sum(matches).as_py() or 0)
        first_ok = bool(matches[0].as_py())
        if (first_ok, n) > (best_first, hits):
            best, hits, best_first = fmt, n, first_ok
    if best is None or not (best_first or hits >= 0.5 * len(head)):
        raise InputError("the log lines are in no format ftml knows", source=source,
                         where="line 1", hint=FORMAT_HINT)
    return best


def _parse_text(text: pa.Array, line_no: np.ndarray, fmt: Format, stats: ReadStats) -> Lines:
    m = pc.extract_regex(text, fmt.regex)
    ok = np.asarray(m.is_valid())
    stats.continuation += int(len(ok) - ok.sum() - _blank(text, ok))
    m = m.filter(pa.array(ok))
    names = {m.type.field(i).name for i in range(m.type.num_fields)}
    ts = _parse_ts(m.field("ts"), fmt)
    level = _levels(m.field("level")) if "level" in names else np.zeros(len(m), np.int8)
    status = (_status(m.field("status")) if "status" in names
              else np.full(len(m), -1, dtype=np.int16))
    if "status" in names:  # an access log's level is its status class
        level = np.where(status >= 500, ERROR, np.where(status >= 400, WARNING, level)
                         ).astype(np.int8)
    entity = (m.field("entity").to_numpy(zero_copy_only=False) if "entity" in names
              else np.full(len(m), None, dtype=object))
    return _with_ts(Lines(ts, entity, level, status, m.field("msg"), line_no[ok]))


def _blank(text: pa.Array, ok: np.ndarray) -> int:
    blank = np.asarray(pc.equal(pc.utf8_trim_whitespace(text), ""))
    return int((blank & ~ok).sum())


def _with_ts(lines: Lines) -> Lines:
    """Records whose time did not read are left out here, counted by the caller's check."""
    good = lines.ts != np.iinfo(np.int64).min
    if good.all():
        return lines
    lines.bad_ts = lines.line[~good]  # type: ignore[attr-defined]
    return _take(lines, good)


def _take(lines: Lines, keep: np.ndarray) -> Lines:
    out = Lines(lines.ts[keep], lines.entity[keep], lines.level[keep], lines.status[keep],
                lines.msg.filter(pa.array(keep)), lines.line[keep])
    if hasattr(lines, "bad_ts"):
        out.bad_ts = lines.bad_ts  # type: ignore[attr-defined]
    return out


_NAT = np.iinfo(np.int64).min


def _parse_ts(ts: pa.Array, fmt: Format) -> np.ndarray:
    """Times -> int64 ns UTC (naive times are UTC); ones that do not read -> int64 min."""
    if fmt.ts == "iso":
        return _iso_ns(ts)
    if fmt.ts == "syslog":
        # No year in the line: the current one, or the one before for a date ahead of now.
        fixed = pc.replace_substring_regex(ts, r"^([A-Z][a-z]{2})  ", r"\1 0")
        now = pd.Timestamp.now(tz="UTC")
        out = _strptime(pc.binary_join_element_wise(str(now.year), fixed, " "),
                        "%Y %b %d %H:%M:%S")
        ahead = out > (now + pd.Timedelta(days=1)).value
        if ahead.any():
            prior = _strptime(pc.binary_join_element_wise(str(now.year - 1), fixed, " "),
                              "%Y %b %d %H:%M:%S")
            out = np.where(ahead, prior, out)
        return out
    return _strptime(ts, fmt.ts)


def _strptime(ts: pa.Array, fmt: str) -> np.ndarray:
    out = pc.strptime(ts, format=fmt, unit="ns", error_is_null=True)
    return _ns(out)


def _ns(arr: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(arr.cast(pa.int64()), _NAT), dtype=np.int64)


_ZONE = r"(?:Z|[+-]\d\d:?\d\d)$"


def _iso_ns(ts: pa.Array) -> np.ndarray:
    ts = pc.replace_substring(ts, ",", ".")
    zoned = np.asarray(pc.fill_null(pc.match_substring_regex(ts, _ZONE), False))
    out = np.full(len(ts), _NAT, dtype=np.int64)
    for mask, kind in ((zoned, pa.timestamp("ns", "UTC")), (~zoned, pa.timestamp("ns"))):
        if not mask.any():
            continue
        part = ts.filter(pa.array(mask))
        try:
            out[mask] = _ns(part.cast(kind))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            parsed = pd.to_datetime(pd.Series(part.to_numpy(zero_copy_only=False)),
                                    format="ISO8601", utc=True, errors="coerce")
            vals = parsed.array.asi8 if hasattr(parsed.array, "asi8") else parsed.astype(
                "int64").to_numpy()
            out[mask] = np.where(parsed.isna().to_numpy(), _NAT, vals)
    return out


def _levels(level: pa.Array) -> np.ndarray:
    """Level words (any case) or syslog priorities 0-7 -> INFO / WARNING / ERROR."""
    enc = pc.dictionary_encode(pc.utf8_upper(pc.cast(level, pa.string())))
    words = enc.dictionary.to_pylist()
    table = np.array([ERROR if w in _ERROR_WORDS or (w.isdigit() and int(w) <= 3) else
                      WARNING if w in _WARNING_WORDS or w == "4" else INFO
                      for w in (str(w or "") for w in words)] or [INFO], dtype=np.int8)
    codes = np.asarray(pc.fill_null(enc.indices, -1))
    return np.where(codes >= 0, table[np.maximum(codes, 0)], INFO).astype(np.int8)


def _status(status: pa.Array) -> np.ndarray:
    num = pc.cast(status, pa.int16(), safe=False) if pa.types.is_integer(status.type) else \
        pc.cast(pc.if_else(pc.match_substring_regex(pc.cast(status, pa.string()), r"^\d{3}$"),
                           pc.cast(status, pa.string()), None), pa.int16())
    return np.asarray(pc.fill_null(num, -1), dtype=np.int16)


def _entities(found: np.ndarray, given: str | None, fallback: str, entity_map: str | None
              ) -> np.ndarray:
    if given is not None:
        names = pd.Series([given], dtype=object)
        codes = np.zeros(len(found), dtype=np.int64)
    else:
        codes, uniques = pd.factorize(found, use_na_sentinel=True)
        names = pd.Series([str(u) if u not in (None, "") else fallback for u in uniques] +
                          [fallback], dtype=object)
        codes = np.where(codes < 0, len(uniques), codes)
    mapped = map_entities(names, entity_map) if entity_map else names
    return np.asarray(mapped, dtype=object)[codes]


def _drop_late(lines: Lines, latest: int, cfg: LogConfig, bad: _BadLines
               ) -> tuple[Lines, int]:
    bad.add("bad timestamp", getattr(lines, "bad_ts", np.zeros(0, np.int64)))
    if not len(lines):
        return lines, latest
    newest = np.maximum.accumulate(np.r_[latest, lines.ts])[:-1]
    late = (newest > _NAT) & (lines.ts < newest - int(cfg.max_late_seconds * 1e9))
    if late.any():
        bad.add("out of time order", lines.line[late])
        lines = _take(lines, ~late)
    return lines, max(latest, int(lines.ts.max()) if len(lines) else latest)


# --------------------------------------------------------------------------- JSON


def _parse_json(block: bytes, text: pa.Array, line_no: np.ndarray, fmt: str, source: str,
                bad: _BadLines) -> Lines:
    """JSON Lines (or a journalctl -o json export) -> records, parsed by Arrow's JSON reader;
    lines that are not objects are bad lines."""
    keep = np.asarray(pc.not_equal(pc.utf8_trim_whitespace(text), ""))
    table = None
    try:
        table = pajson.read_json(io.BytesIO(block), read_options=pajson.ReadOptions(
            block_size=max(1 << 20, len(block) + 1)))
        if table.num_rows != int(keep.sum()):
            table = None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        table = None
    if table is None:  # find the bad lines (this block only), parse the rest
        rows = text.to_pylist()
        good = np.array([k and _is_object(r) for r, k in zip(rows, keep, strict=True)])
        bad.add("not a JSON object", line_no[keep & ~good])
        keep = good
        body = "\n".join(r for r, k in zip(rows, keep, strict=True) if k).encode()
        if not body:
            return _empty()
        try:
            table = pajson.read_json(io.BytesIO(body), read_options=pajson.ReadOptions(
                block_size=len(body) + 1))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise InputError(f"JSON lines do not read as one table: {exc}", source=source,
                             where=f"line {int(line_no[0])}",
                             hint="give each field one type in every line") from None
    lines_no = line_no[keep]
    cols = {c.lower(): c for c in table.column_names}
    if fmt == "journald":
        ts_col, lvl_col, msg_col, ent_col, st_col = ("__realtime_timestamp", "priority",
                                                     "message", "_hostname", None)
    else:
        ts_col = next((c for c in _JSON_TS if c in cols), None)
        lvl_col = next((c for c in _JSON_LEVEL if c in cols), None)
        msg_col = next((c for c in _JSON_MSG if c in cols), None)
        found = find_column(table.column_names, ENTITY_NAMES)  # as metric files name it
        ent_col = str(found).lower() if found is not None else None
        st_col = next((c for c in _JSON_STATUS if c in cols), None)
    if ts_col is None or ts_col not in cols:
        bad.add("no timestamp", lines_no)
        return _empty()
    ts_arr = table.column(cols[ts_col]).combine_chunks()
    n = table.num_rows

    def col(name):
        return table.column(cols[name]).combine_chunks() if name in cols else None

    if fmt == "journald":  # microseconds since the epoch, as text
        us = pc.cast(pc.if_else(pc.match_substring_regex(pc.cast(ts_arr, pa.string()),
                                                         r"^\d{1,18}$"),
                                pc.cast(ts_arr, pa.string()), None), pa.int64())
        ts = np.where(np.asarray(us.is_null()), _NAT,
                      np.asarray(pc.fill_null(us, 0), dtype=np.int64) * 1000)
    elif pa.types.is_integer(ts_arr.type) or pa.types.is_floating(ts_arr.type):
        ts = _epoch_ns(np.asarray(pc.fill_null(pc.cast(ts_arr, pa.float64()), np.nan)))
    elif pa.types.is_timestamp(ts_arr.type):
        ts = _ns(ts_arr.cast(pa.timestamp("ns", "UTC") if ts_arr.type.tz else
                             pa.timestamp("ns")))
    else:
        ts = _iso_ns(pc.cast(ts_arr, pa.string()))
    msg = col(msg_col) if msg_col else None
    msg = pc.fill_null(pc.cast(msg, pa.string()), "") if msg is not None and \
        not pa.types.is_list(msg.type) else pa.array([""] * n, pa.string())
    level = _levels(col(lvl_col)) if lvl_col and lvl_col in cols else np.zeros(n, np.int8)
    status = _status(col(st_col)) if st_col and st_col in cols else np.full(n, -1, np.int16)
    if st_col and st_col in cols:
        level = np.where(status >= 500, ERROR, np.where(status >= 400, WARNING, level)
                         ).astype(np.int8)
    entity = (pc.cast(col(ent_col), pa.string()).to_numpy(zero_copy_only=False)
              if ent_col and ent_col in cols else np.full(n, None, dtype=object))
    return _with_ts(Lines(ts, entity, level, status, msg, lines_no))


def _is_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _epoch_ns(x: np.ndarray) -> np.ndarray:
    """Epoch seconds / ms / us / ns by magnitude (as the metric reader does); the whole and
    the fractional part apart, so that 1767607200.25 s is exactly ...250000000 ns."""
    a = np.abs(x)
    scale = np.where(a < 1e11, 10**9, np.where(a < 1e14, 10**6, np.where(a < 1e17, 10**3, 1)))
    ok = np.isfinite(x)
    whole = np.floor(np.where(ok, x, 0.0))
    frac = np.round((np.where(ok, x, 0.0) - whole) * scale)
    out = whole.astype(np.int64) * scale + frac.astype(np.int64)
    return np.where(ok, out, _NAT).astype(np.int64)


def _empty() -> Lines:
    return Lines(np.zeros(0, np.int64), np.zeros(0, object), np.zeros(0, np.int8),
                 np.zeros(0, np.int16), pa.array([], pa.string()), np.zeros(0, np.int64))
