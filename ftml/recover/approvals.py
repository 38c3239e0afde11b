"""Approvals: pending actions waiting for a human, settled here or from another process."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ftml.audit import AuditLog, db_path
from ftml.errors import ActionError, ConfigError
from ftml.events import Event, iso
from ftml.playbooks import PlaybookSet
from ftml.recover.state import _open_state


@dataclass
class Approval:
    id: str
    created: float
    expires: float
    entity: str
    playbook: str
    digest: str
    status: str  # pending | approved | running | done | blocked | rejected | expired | stale
    event: Event
    decided: float | None = None
    by: str | None = None

    def __str__(self) -> str:
        return (f"{self.id}  {self.status:<8} {self.entity} {self.event.cause} -> {self.playbook}"
                f"  expires {iso(pd.Timestamp(self.expires, unit='s'))}")


def list_approvals(audit: AuditLog, status: str | None = None) -> list[Approval]:
    query = "SELECT * FROM approvals" + (" WHERE status = ?" if status else "") + \
        " ORDER BY created"
    with audit.lock:
        rows = audit.conn.execute(query, (status,) if status else ()).fetchall()
    return [_approval(r) for r in rows]


def _approval(r: Mapping[str, Any]) -> Approval:
    return Approval(id=r["id"], created=r["created"], expires=r["expires"], entity=r["entity"],
                    playbook=r["playbook"], digest=r["digest"], status=r["status"],
                    event=Event.from_dict(json.loads(r["event"])), decided=r["decided"],
                    by=r["by"])


def settle_approval(audit: AuditLog, approval_id: str, status: str, now: float,
                    by: str | None = None, playbooks: PlaybookSet | None = None) -> dict[str, Any]:
    """Move a pending approval to 'approved' or 'rejected'; raises ActionError if it cannot."""
    with audit.transaction() as conn:
        row = conn.execute("SELECT * FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        if row is None:
            raise ActionError(f"no approval {approval_id!r}", where=audit.path,
                              hint="list pending approvals with 'ftml audit'")
        row = dict(row)
        if row["status"] == "pending" and row["expires"] <= now:
            conn.execute("UPDATE approvals SET status = 'expired', decided = ? WHERE id = ?",
                         (now, approval_id))
            row["status"] = "expired"
        if row["status"] != "pending":
            raise ActionError(f"approval {approval_id} is {row['status']}, not pending",
                              where=audit.path,
                              hint="a new approval is requested when the incident recurs")
        if playbooks is not None:
            current = playbooks.get(row["playbook"])
            if current is None or current.digest != row["digest"]:
                raise ActionError(f"playbook '{row['playbook']}' changed after approval "
                                  f"{approval_id} was requested", where=playbooks.source,
                                  hint="reject this one; the next event asks again")
        conn.execute("UPDATE approvals SET status = ?, decided = ?, by = ? WHERE id = ?",
                     (status, now, by, approval_id))
        row.update(status=status, decided=now, by=by)
    event = Event.from_dict(json.loads(row["event"]))
    audit.record(kind="approval", decision=status, at=now, event=event,
                 playbook=row["playbook"], approval_id=approval_id,
                 detail=f"{status} by {by}" if by else status)
    return row


def approve(state_dir: str | Path, approval_id: str, by: str | None = None,
            now: float | None = None) -> tuple[Approval, str]:
    """Approve a pending action in a state folder (for ``ftml approve ID --state DIR``).

    The engine that owns the folder runs it on its next ``poll()``; to run it here
    instead, use ``RecoveryEngine(...).approve(id)``. Returns the approval and a line
    to print; raises ActionError if it is unknown, expired or already settled.
    """
    audit = _open_existing(state_dir)
    try:
        row = settle_approval(audit, approval_id, "approved",
                              time.time() if now is None else now, by)
    finally:
        audit.close()
    return _approval(row), (f"approved {approval_id}: {row['playbook']} on {row['entity']}; "
                            "it runs on the engine's next poll")


def reject(state_dir: str | Path, approval_id: str, by: str | None = None,
           now: float | None = None) -> tuple[Approval, str]:
    """Reject a pending action in a state folder; like ``approve``."""
    audit = _open_existing(state_dir)
    try:
        row = settle_approval(audit, approval_id, "rejected",
                              time.time() if now is None else now, by)
    finally:
        audit.close()
    return _approval(row), f"rejected {approval_id}: {row['playbook']} on {row['entity']}"


def pending_approvals(state_dir: str | Path) -> tuple[list[Approval], str]:
    """Pending approvals in a state folder, and a printable list."""
    audit = _open_existing(state_dir)
    try:
        items = list_approvals(audit, status="pending")
    finally:
        audit.close()
    return items, "\n".join(map(str, items)) or "(no pending approvals)"


def _open_existing(state_dir: str | Path) -> AuditLog:
    if not db_path(state_dir).exists():
        raise ConfigError("no state database here", source=str(state_dir),
                          hint="point --state at the folder the engine uses")
    return _open_state(state_dir)
