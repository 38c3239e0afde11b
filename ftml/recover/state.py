"""The engine's memory in the SQLite state database beside the audit log: runs and approvals.

The schema is persisted: a change to it needs a migration (as ``add_column`` for ``group_id``).
"""

from __future__ import annotations

from pathlib import Path

from ftml.audit import AuditLog, add_column

_ENGINE_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    entity TEXT NOT NULL, playbook TEXT NOT NULL, event_id TEXT,
    mode TEXT NOT NULL,            -- auto (real or simulated) | dry_run
    started REAL NOT NULL,
    deadline REAL NOT NULL,        -- a run not ended by then is taken as dead
    ended REAL, outcome TEXT       -- recovered | escalated | dry_run
);
CREATE INDEX IF NOT EXISTS runs_entity ON runs (entity, started);
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY, created REAL NOT NULL, expires REAL NOT NULL,
    entity TEXT NOT NULL, playbook TEXT NOT NULL, digest TEXT NOT NULL,
    event TEXT NOT NULL,           -- the event as JSON
    status TEXT NOT NULL, decided REAL, by TEXT
);
"""

_RUN_COLUMNS = ("id", "entity", "playbook", "event_id", "mode", "started", "deadline", "ended",
                "outcome", "group_id")
_APPROVAL_COLUMNS = ("id", "created", "expires", "entity", "playbook", "digest", "event",
                     "status", "decided", "by")


def _open_state(state_dir: str | Path | None) -> AuditLog:
    audit = AuditLog(Path(state_dir) if state_dir is not None else ":memory:")
    with audit.lock:
        audit.conn.executescript(_ENGINE_SCHEMA)
        add_column(audit.conn, "runs", "group_id", "TEXT")
    return audit
