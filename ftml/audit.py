"""The audit log: every recovery decision and action, one SQLite row each.

The log lives in ``state.db`` in the state folder, beside the engine's own tables. SQLite
runs in WAL mode with ``synchronous=FULL`` and every record is its own transaction, so a
killed process loses nothing that was recorded. Secrets never reach the log: callers pass
the secret values they used and ``record`` scrubs them from every text it stores.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from ftml.config import parse_duration
from ftml.errors import ConfigError
from ftml.events import Event, iso
from ftml.playbooks import epoch_seconds

#: File name of the state database inside a state folder.
DB_NAME = "state.db"

#: Bound on the stored output of one action.
OUTPUT_LIMIT = 4096

#: What replaces a secret value wherever it would have been stored.
REDACTED = "***"

#: Columns of an audit record, in table order.
AUDIT_COLUMNS = (
    "id", "at", "ts", "kind", "event_id", "entity", "cause", "confidence", "model_version",
    "playbook", "step", "mode", "decision", "reason", "detail", "action", "arguments",
    "exit_code", "output", "duration_s", "verified", "verification", "approval_id",
    "group_id",
)

#: Columns shown by ``format_audit`` unless told otherwise.
TABLE_COLUMNS = ("ts", "entity", "cause", "playbook", "kind", "decision", "reason", "action",
                 "exit_code", "duration_s", "verified", "detail")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,              -- seconds since the epoch, by the engine's clock
    ts TEXT NOT NULL,              -- the same, ISO 8601 UTC
    kind TEXT NOT NULL,            -- decision | step | result | approval
    event_id TEXT, entity TEXT, cause TEXT, confidence REAL, model_version TEXT,
    playbook TEXT, step INTEGER, mode TEXT,
    decision TEXT NOT NULL,        -- act | dry_run | pending | skip | ok | failed | ...
    reason TEXT, detail TEXT,
    action TEXT, arguments TEXT,   -- arguments as JSON, secrets redacted
    exit_code INTEGER, output TEXT, duration_s REAL,
    verified INTEGER,              -- 1 passed, 0 failed, NULL not verified
    verification TEXT,             -- JSON: conditions and last readings
    approval_id TEXT,
    group_id TEXT                  -- the incident group of the event (ftml.incidents)
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE INDEX IF NOT EXISTS audit_entity ON audit (entity, at);
"""

_DURATION_LIKE = re.compile(r"^\s*\d+(?:\.\d+)?\s*(ms|s|m|min|h|d)\s*$")


def db_path(state: str | Path) -> Path:
    """``state.db`` inside a state folder, or the path itself if it names a file."""
    path = Path(state)
    return path / DB_NAME if path.is_dir() or not path.suffix else path


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (creating if needed) a state database in WAL mode with durable commits.

    The connection is in autocommit mode: each statement outside an explicit
    ``BEGIN`` is its own transaction.
    """
    target = str(path)
    if target != ":memory:":
        Path(target).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(target, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before record() returns, even if the machine stops.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.executescript(_SCHEMA)
    add_column(conn, "audit", "group_id", "TEXT")
    # The engine reads a group's decisions before each one it takes (its root, RecoveryEngine
    # ._root): indexed, so that does not scan an audit log that only grows.
    conn.execute("CREATE INDEX IF NOT EXISTS audit_group ON audit (group_id)")
    return conn


def add_column(conn: sqlite3.Connection, table: str, column: str, kind: str) -> None:
    """Add a column that a state database written by an older ftml lacks."""
    have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    if column not in have:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


class AuditLog:
    """Append-only audit records in ``state.db``; ``":memory:"`` for a throwaway log."""

    def __init__(self, db: str | Path = ":memory:"):
        self.path = str(db) if str(db) == ":memory:" else str(db_path(db))
        self.conn = connect(self.path)
        # One connection may be shared by threads of one engine; writes go one at a time.
        self.lock = threading.RLock()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` .. ``COMMIT``: a write lock across processes for check-then-write."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def record(self, *, kind: str, decision: str, at: float | None = None,
               event: Event | None = None, model_version: str | None = None,
               secrets: Iterable[str] = (), **fields: Any) -> int:
        """Append one record in its own transaction and return its id.

        ``fields`` are further columns (see ``AUDIT_COLUMNS``); ``arguments`` and
        ``verification`` may be any JSON-able value. Every string stored is scrubbed of
        the given ``secrets``.
        """
        unknown = set(fields) - set(AUDIT_COLUMNS)
        if unknown:
            raise ValueError(f"unknown audit columns: {sorted(unknown)}")
        at = time.time() if at is None else float(at)
        row: dict[str, Any] = {"at": at, "ts": _iso_seconds(at), "kind": kind,
                               "decision": decision, "model_version": model_version}
        if event is not None:
            row.update(event_id=event.id, entity=event.entity, cause=event.cause,
                       confidence=_finite(event.confidence),
                       group_id=getattr(event, "group", "") or None)
        row.update(fields)
        secrets = [s for s in secrets if s]
        for key in ("arguments", "verification"):
            if row.get(key) is not None and not isinstance(row[key], str):
                row[key] = json.dumps(row[key], sort_keys=True, default=str)
        if row.get("output") is not None:
            row["output"] = excerpt(row["output"])
        row = {k: redact(v, secrets) for k, v in row.items()}
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self.lock:
            cur = self.conn.execute(f"INSERT INTO audit ({columns}) VALUES ({marks})",
                                    list(row.values()))
        return int(cur.lastrowid)

    def read(self, since: Any = None, entity: str | None = None, event_id: str | None = None,
             now: float | None = None) -> list[dict[str, Any]]:
        """Records in order, optionally since a time (or a duration ago) and for one entity."""
        query = "SELECT * FROM audit WHERE 1=1"
        params: list[Any] = []
        if since is not None:
            query += " AND at >= ?"
            params.append(since_seconds(since, now))
        if entity is not None:
            query += " AND entity = ?"
            params.append(entity)
        if event_id is not None:
            query += " AND event_id = ?"
            params.append(event_id)
        with self.lock:
            rows = self.conn.execute(query + " ORDER BY id", params).fetchall()
        return [dict(r) for r in rows]

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_audit(db: str | Path, since: Any = None, entity: str | None = None,
               now: float | None = None) -> list[dict[str, Any]]:
    """Audit records from a state folder or ``state.db``.

    ``since`` is a time (ISO text, Timestamp, epoch seconds) or a duration such as
    ``"2h"`` meaning that long before ``now`` (default: the wall clock).
    """
    path = db_path(db)
    if not path.exists():
        raise ConfigError("no audit log here", source=str(path),
                          hint="point --state at the folder that ftml watch or recover used")
    log = AuditLog(path)
    try:
        return log.read(since=since, entity=entity, now=now)
    finally:
        log.close()


def audit_table(db: str | Path, since: Any = None, entity: str | None = None,
                now: float | None = None) -> tuple[list[dict[str, Any]], str]:
    """Records and their printed table, for ``ftml audit [--since] [--entity] [--state]``."""
    rows = read_audit(db, since=since, entity=entity, now=now)
    return rows, format_audit(rows)


def format_audit(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = TABLE_COLUMNS,
                 max_width: int = 48) -> str:
    """A fixed-width text table of audit records, one line each."""
    if not rows:
        return "(no audit records)"
    cells = [[_cell(r.get(c), max_width) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def redact(value: Any, secrets: Sequence[str]) -> Any:
    """``value`` with every occurrence of a secret replaced, inside text, lists and mappings."""
    if not secrets:
        return value
    if isinstance(value, str):
        # Longest first, so a secret that contains another is replaced whole.
        for secret in sorted(secrets, key=len, reverse=True):
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, list | tuple):
        return [redact(v, secrets) for v in value]
    if isinstance(value, Mapping):
        return {k: redact(v, secrets) for k, v in value.items()}
    return value


def excerpt(text: str | bytes, limit: int = OUTPUT_LIMIT) -> str:
    """At most ``limit`` bytes of output; the tail, because errors come last."""
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    if len(data) <= limit:
        return data.decode("utf-8", "replace")
    marker = "[...] "
    tail = data[-(limit - len(marker)):]
    return marker + tail.decode("utf-8", "ignore")


def since_seconds(since: Any, now: float | None = None) -> float:
    """Epoch seconds for a ``since`` option: a duration ago, or a point in time."""
    if isinstance(since, str) and _DURATION_LIKE.match(since):
        now = time.time() if now is None else now
        return now - parse_duration(since, "since").total_seconds()
    if isinstance(since, pd.Timedelta):
        now = time.time() if now is None else now
        return now - since.total_seconds()
    try:
        return epoch_seconds(since)
    except (TypeError, ValueError):
        raise ConfigError(f"cannot read since {since!r}", where="since",
                          hint="write a time (2024-05-01T00:00Z) or a duration (2h)") from None


def _iso_seconds(at: float) -> str:
    return iso(pd.Timestamp(at, unit="s"))


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _cell(value: Any, width: int) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return "-"
    if isinstance(value, float):
        text = f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    else:
        text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 3] + "..."
