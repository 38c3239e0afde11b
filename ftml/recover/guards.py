"""The guards between a matched playbook and its action: an ordered list of small functions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ftml.events import Event, iso
from ftml.playbooks import Playbook, PlaybookSet, format_seconds
from ftml.recover.results import Reason


@dataclass
class GuardContext:
    """What a guard looks at: the event, the playbook chosen for it, and the engine's memory
    (``conn``: the runs and approvals tables)."""

    conn: Any
    event: Event
    now: float
    playbooks: PlaybookSet
    playbook: Playbook
    run_mode: str  # dry_run | auto: runs of one mode never hold back the other's
    approved: bool  # an approval being run (it has passed the approval guard already)
    _attempts: list | None = None

    @property
    def attempts(self) -> list:
        """This playbook's runs on the entity within the attempt window, newest first."""
        if self._attempts is None:
            d = self.playbooks.defaults
            self._attempts = self.conn.execute(
                "SELECT started, ended, outcome FROM runs WHERE entity = ? AND playbook = ? AND "
                "mode = ? AND started > ? AND started <= ? ORDER BY started DESC",
                (self.event.entity, self.playbook.name, self.run_mode, self.now - d.window,
                 self.now)).fetchall()
        return self._attempts


#: A guard: (reason, detail) when it holds the action back, else None.
Guard = Callable[[GuardContext], "tuple[str, str] | None"]


def _window_guard(kind: str, reason: str) -> Guard:
    def guard(q: GuardContext) -> tuple[str, str] | None:
        for window in getattr(q.playbooks.guards, kind):
            if window.covers(q.event.entity, q.event.cause, q.now):
                until = iso(pd.Timestamp(window.end, unit="s"))
                word = "maintenance" if kind == "maintenance" else "silenced"
                return reason, f"{word} until {until} {window.reason}".strip()
        return None
    guard.__name__ = f"in_{kind}"
    return guard


def pending_approval(q: GuardContext) -> tuple[str, str] | None:
    if q.approved:
        return None
    waiting = q.conn.execute(
        "SELECT id FROM approvals WHERE entity = ? AND status IN ('pending', 'approved')"
        " AND expires > ?", (q.event.entity, q.now)).fetchone()
    if waiting is not None:
        return Reason.PENDING_APPROVAL, f"approval {waiting['id']} is waiting"
    return None


def busy(q: GuardContext) -> tuple[str, str] | None:
    if not q.playbooks.guards.one_action_per_entity:
        return None
    running = q.conn.execute(
        "SELECT playbook, started FROM runs WHERE entity = ? AND started <= ? AND "
        "((ended IS NULL AND deadline > ?) OR ended > ?) ORDER BY started DESC LIMIT 1",
        (q.event.entity, q.now, q.now, q.now)).fetchone()
    if running is not None:
        return Reason.BUSY, (f"'{running['playbook']}' has been running on the entity since "
                             f"{iso(pd.Timestamp(running['started'], unit='s'))}")
    return None


def circuit_open(q: GuardContext) -> tuple[str, str] | None:
    d = q.playbooks.defaults
    if len(q.attempts) >= d.max_attempts:
        closes = q.attempts[d.max_attempts - 1]["started"] + d.window
        return Reason.CIRCUIT_OPEN, (f"{len(q.attempts)} attempt(s) within "
                                     f"{format_seconds(d.window)}; closes at "
                                     f"{iso(pd.Timestamp(closes, unit='s'))}")
    return None


def cooling_down(q: GuardContext) -> tuple[str, str] | None:
    d = q.playbooks.defaults
    last = q.conn.execute(
        "SELECT ended FROM runs WHERE entity = ? AND mode = ? AND ended IS NOT NULL AND "
        "ended <= ? ORDER BY ended DESC LIMIT 1", (q.event.entity, q.run_mode, q.now)).fetchone()
    if last is None:
        return None
    failures = 0
    for row in q.attempts:  # newest first: failed attempts in a row
        if row["outcome"] != "escalated":
            break
        failures += 1
    wait = max(d.cooldown, d.backoff.delay(failures))
    if q.now - last["ended"] < wait:
        why = f"backoff after {failures} failed attempt(s)" if wait > d.cooldown else "cooldown"
        return Reason.COOLDOWN, (f"{why}: {format_seconds(wait)} after the last recovery, "
                                 f"{q.now - last['ended']:.0f}s passed")
    return None


def aftermath(q: GuardContext) -> tuple[str, str] | None:
    # A restarted process or rolled-back service wobbles while it settles; an event that
    # began then is the recovery's aftermath, not a new fault, even once the cooldown is
    # over (its diagnosis may only clear the bar later). It still alerts.
    d = q.playbooks.defaults
    began = pd.Timestamp(q.event.start).timestamp()
    before = q.conn.execute(
        "SELECT ended FROM runs WHERE entity = ? AND mode = ? AND ended IS NOT NULL AND "
        "started <= ? ORDER BY started DESC LIMIT 1",
        (q.event.entity, q.run_mode, began)).fetchone()
    if before is not None and began < before["ended"] + d.cooldown:
        return Reason.AFTERMATH, (f"the event began during or within "
                                  f"{format_seconds(d.cooldown)} (the cooldown) after a "
                                  f"recovery on the entity")
    return None


def rate_limited(q: GuardContext) -> tuple[str, str] | None:
    limit = q.playbooks.guards.max_actions_per_hour
    recent = q.conn.execute("SELECT COUNT(*) AS n FROM runs WHERE mode = ? AND started > ? "
                            "AND started <= ?", (q.run_mode, q.now - 3600, q.now)).fetchone()["n"]
    if recent >= limit:
        return Reason.RATE_LIMITED, (f"{recent} action(s) in the last hour "
                                     f"(max_actions_per_hour {limit})")
    return None


#: The guards between a matched playbook and its action, in the order they are checked.
#: Adding a guard is one function and one place in this list.
GUARDS: tuple[Guard, ...] = (
    _window_guard("maintenance", Reason.MAINTENANCE),
    _window_guard("silences", Reason.SILENCED),
    pending_approval, busy, circuit_open, cooling_down, aftermath, rate_limited,
)
