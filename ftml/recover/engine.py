"""Recovery: decide whether to act on an event, run the playbook's ladder, verify, audit.

The engine is small on purpose. ``RecoveryEngine.handle(event)`` either skips with a
reason (see ``Reason``) or acts in the mode the playbook asks for:

* ``dry_run`` records what it would run;
* ``approve`` records a pending approval that ``approve(id)`` runs or time expires;
* ``auto`` runs the ladder: each step's action, then its verify conditions, until one
  step recovers the entity or the ladder is exhausted and the engine escalates.

Everything with a timing (cooldowns, backoff, verify polling, approval expiry) reads
the injected ``Clock``, so tests and ``replay`` run without waiting. Everything the
engine must remember (runs, approvals) is in the SQLite state database, beside the
audit log, so that a restarted process, or ``ftml approve`` in another process, sees it.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ftml.clock import Clock, SystemClock
from ftml.config import recovery_mode
from ftml.diagnose import NO_FAULT, NOT_A_CAUSE
from ftml.errors import ActionError, ConfigError
from ftml.events import Event, iso
from ftml.playbooks import (
    CheckpointAction,
    NotifyAction,
    Playbook,
    PlaybookSet,
    Step,
    Verify,
    format_seconds,
    template_fields,
)
from ftml.recover.actions import ActionRunner, LocalActions, Notifier, describe_action
from ftml.recover.approvals import Approval, list_approvals, settle_approval
from ftml.recover.guards import GUARDS, GuardContext
from ftml.recover.metrics import MetricReader
from ftml.recover.points import RecoveryPoints
from ftml.recover.results import Decision, DecisionKind, Reason, RunResult, StepResult
from ftml.recover.state import _APPROVAL_COLUMNS, _RUN_COLUMNS, _open_state


class RecoveryEngine:
    """Decides and runs recoveries for events; see the module docstring.

    ``state_dir`` holds ``state.db`` (audit, runs, approvals) and ``checkpoints/``; without
    it everything is in memory and checkpoint steps fail. ``mode`` overrides the playbook
    file's modes (e.g. a ``--dry-run`` flag). ``actions`` replaces the real action runner
    (``SimulatedActions`` for replay, a fake in tests).
    """

    def __init__(self, playbooks: PlaybookSet, *, state_dir: str | Path | None = None,
                 clock: Clock | None = None, metrics: MetricReader | None = None,
                 notifier: Notifier | None = None, actions: ActionRunner | None = None,
                 mode: str | None = None, model_version: str = ""):
        if mode is not None:
            given, mode = mode, recovery_mode(mode)
            if mode is None:
                raise ConfigError(f"unknown mode {given!r}", where="mode",
                                  hint="use one of dry_run, approve, auto")
        self.playbooks = playbooks
        self.clock = clock or SystemClock()
        self.metrics = metrics
        self.mode = mode
        self.model_version = model_version
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.audit = _open_state(self.state_dir)
        self.points = RecoveryPoints(self.state_dir / "checkpoints") if self.state_dir else None
        self.actions = actions or LocalActions(points=self.points, notifier=notifier,
                                               clock=self.clock)

    # -- public --------------------------------------------------------------------

    def handle(self, event: Event) -> Decision:
        """Decide for one event and, if the decision is to act, run the ladder. A playbook with
        ``target: root`` acts on the event's incident group's top suspect instead; an event of
        another entity than its group's top suspect is a symptom and is not acted on
        (``Reason.SYMPTOM``)."""
        event = self._aim(event)
        now = self.clock.now()
        self._expire(now)
        run_id = None
        with self.audit.transaction() as conn:
            decision = self._decide(conn, event, now)
            playbook = self.playbooks.get(decision.playbook) if decision.playbook else None
            if decision.decision == DecisionKind.ACT:
                run_id = self._start_run(conn, event, playbook, now, "auto")
            elif decision.decision == DecisionKind.DRY_RUN:
                run_id = self._start_run(conn, event, playbook, now, "dry_run")
                self._end_run(conn, run_id, now, "dry_run")
            elif decision.decision == DecisionKind.PENDING:
                decision.approval_id = self._request_approval(conn, event, playbook, now)
            # In the same transaction: a run is never started without its decision on record.
            self._record_decision(event, decision)
        if decision.decision == DecisionKind.ACT:
            decision.run = self._run_ladder(event, playbook, run_id)
        return decision

    def approve(self, approval_id: str, by: str | None = None) -> Decision:
        """Approve a pending action and run it now; raises ActionError if it cannot be."""
        row = self._settle(approval_id, "approved", by)
        decision = self._run_approved(row)
        if decision is None:  # pragma: no cover - another process claimed it in between
            raise ActionError(f"approval {approval_id} is being run elsewhere")
        return decision

    def reject(self, approval_id: str, by: str | None = None) -> None:
        self._settle(approval_id, "rejected", by)

    def poll(self) -> list[Decision]:
        """Expire stale approvals and run those approved elsewhere (e.g. ``ftml approve``)."""
        now = self.clock.now()
        self._expire(now)
        with self.audit.lock:
            rows = self.audit.conn.execute(
                "SELECT * FROM approvals WHERE status = 'approved' ORDER BY created").fetchall()
        decisions = [self._run_approved(dict(r)) for r in rows]
        return [d for d in decisions if d is not None]

    def pending(self) -> list[Approval]:
        self._expire(self.clock.now())
        return list_approvals(self.audit, status="pending")

    def state_dict(self) -> dict[str, Any]:
        """The engine's memory (runs and approvals) as plain data."""
        with self.audit.lock:
            runs = self.audit.conn.execute("SELECT * FROM runs ORDER BY id").fetchall()
            approvals = self.audit.conn.execute("SELECT * FROM approvals").fetchall()
        return {"format": 1, "runs": [dict(r) for r in runs],
                "approvals": [dict(a) for a in approvals]}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Replace the engine's memory with ``state`` from ``state_dict()``."""
        if state.get("format") != 1:
            raise ConfigError("unknown engine state format", where="format",
                              hint="pass what state_dict() returned")
        with self.audit.transaction() as conn:
            conn.execute("DELETE FROM runs")
            conn.execute("DELETE FROM approvals")
            for table, columns, rows in (("runs", _RUN_COLUMNS, state["runs"]),
                                         ("approvals", _APPROVAL_COLUMNS, state["approvals"])):
                for row in rows:
                    conn.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                                 f"({', '.join('?' for _ in columns)})",
                                 [row.get(c) for c in columns])

    def close(self) -> None:
        self.audit.close()

    def __enter__(self) -> RecoveryEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- deciding ------------------------------------------------------------------

    def _aim(self, event: Event) -> Event:
        """The event as the engine acts on it: for a ``target: root`` playbook, on the top
        suspect of the event's group (when the same playbook applies there too)."""
        root = self._root(self.audit.conn, event)
        if root is None or event.status == "resolved":
            return event
        playbook = self.playbooks.match(event)
        if playbook is None or playbook.target != "root" or root == event.entity:
            return event
        aimed = dataclasses.replace(event, entity=root)
        return aimed if playbook.matches(aimed) else event

    def _decide(self, conn: Any, event: Event, now: float,
                approved: Playbook | None = None) -> Decision:
        """The decision for ``event`` at ``now``; the checks run in a fixed order."""
        pbs = self.playbooks
        base = dict(event_id=event.id, entity=event.entity, cause=event.cause,
                    confidence=float(event.confidence), at=now)

        def skip(reason: str, detail: str, playbook: Playbook | None = None,
                 mode: str | None = None) -> Decision:
            return Decision(**base, decision=DecisionKind.SKIP, reason=reason, detail=detail,
                            playbook=playbook.name if playbook else None, mode=mode)

        if approved is None:
            if event.status == "resolved":
                return skip(Reason.RESOLVED, f"the event ended at {iso(event.end)}")
            if event.cause in NOT_A_CAUSE:
                # Even a catch-all playbook (cause '*') must not act on a false alarm or on a
                # fault the diagnoser has never seen.
                return skip(Reason.NOT_DIAGNOSED,
                            f"cause '{event.cause}' ({event.cause_source}): not a diagnosed "
                            "fault, so no playbook acts on it")
            top = self._root(conn, event)
            if top is not None and top != event.entity:
                # One incident, one recovery, aimed where it began: the root's own event (or a
                # `target: root` playbook, which _aim has pointed there) is acted on, never
                # the entities that alert because they wait on it. It still alerts.
                first = _top_suspect(event)
                rank = "its top suspect" if top == first else \
                    f"its first suspect not diagnosed no_fault; {first} was"
                return skip(Reason.SYMPTOM, f"a symptom of incident {event.group}; root {top} "
                            f"({rank})")
            root = self._group_recovery(conn, event, now)
            if root is not None:
                return skip(Reason.AFTERMATH, f"a symptom of incident {event.group}: "
                            f"'{root['playbook']}' recovers its root {root['entity']}")
            candidates = pbs.candidates(event)
            if not candidates:
                return skip(Reason.NO_PLAYBOOK,
                            f"no playbook for cause '{event.cause}' on '{event.entity}'")
            playbook = pbs.match(event)
            if playbook is None:
                need = pbs.min_confidence(candidates[0])
                return skip(Reason.LOW_CONFIDENCE,
                            f"confidence {event.confidence:.2f} < {need:g} needed by "
                            f"'{candidates[0].name}'", candidates[0])
            mode = self.mode or pbs.mode(playbook)
        else:
            playbook = approved
            mode = "dry_run" if self.mode == "dry_run" else "auto"
        run_mode = "dry_run" if mode == "dry_run" else "auto"

        ask = GuardContext(conn=conn, event=event, now=now, playbooks=pbs, playbook=playbook,
                           run_mode=run_mode, approved=approved is not None)
        for guard in GUARDS:  # in this order: the first that holds is the reason given
            held = guard(ask)
            if held is not None:
                return skip(*held, playbook, mode)

        plan = self._plan(event, playbook)
        if mode == "dry_run":
            return Decision(**base, decision=DecisionKind.DRY_RUN, reason=Reason.DRY_RUN,
                            detail=f"would run {len(playbook.steps)} step(s)",
                            playbook=playbook.name, mode=mode, plan=plan)
        if mode == "approve":
            return Decision(**base, decision=DecisionKind.PENDING, reason=Reason.APPROVAL_REQUIRED,
                            detail="waiting for approval", playbook=playbook.name, mode=mode,
                            plan=plan)
        return Decision(**base, decision=DecisionKind.ACT,
                        reason=Reason.APPROVED if approved else Reason.AUTO,
                        playbook=playbook.name, mode=mode, plan=plan)

    def _plan(self, event: Event, playbook: Playbook) -> list[dict[str, Any]]:
        fields = template_fields(event, playbook.name)
        return [{"step": i, "name": s.name, "action": s.action.kind,
                 "arguments": describe_action(s.action, fields),
                 "verify": str(s.verify) if s.verify else None}
                for i, s in enumerate(playbook.steps, 1)]

    # -- running -------------------------------------------------------------------

    def rehearse(self, event: Event, decision: Decision) -> RunResult | None:
        """Run the ladder that ``decision`` (dry_run or pending) stands for with this engine's
        actions, as if it had run or been approved now, and keep it out of the runs: no
        cooldown, attempt or busy check sees it, as none would in that mode. For replay: what
        the playbook would have achieved."""
        playbook = self.playbooks.get(decision.playbook) if decision.playbook else None
        if playbook is None or decision.decision not in (DecisionKind.DRY_RUN,
                                                         DecisionKind.PENDING):
            return None
        return self._run_ladder(event, playbook, None)

    def _run_ladder(self, event: Event, playbook: Playbook, run_id: int | None) -> RunResult:
        fields = template_fields(event, playbook.name)
        started = self.clock.now()
        steps: list[StepResult] = []
        outcome = None
        recovered_at = recovered_by = None
        try:
            for i, step in enumerate(playbook.steps, 1):
                result = self._run_step(event, playbook, step, i, fields)
                steps.append(result)
                action = step.action
                if isinstance(action, NotifyAction) and action.escalate:
                    outcome = "escalated"
                    break
                if isinstance(action, CheckpointAction) and not result.ok:
                    # Going on without a recovery point could make things worse: stop here.
                    break
                if result.ok and step.ends_ladder_on_success:
                    outcome = "recovered"
                    recovered_by = step.name
                    recovered_at = (result.verification or {}).get("at", result.ended)
                    break
            if outcome is None:
                final = playbook.escalate or NotifyAction(
                    message="no step recovered {entity} ({cause}); a human is needed",
                    escalate=True)
                last = Step(name="escalate", action=final,
                            timeout=self.playbooks.defaults.step_timeout)
                steps.append(self._run_step(event, playbook, last, len(steps) + 1, fields))
                outcome = "escalated"
        finally:
            ended = self.clock.now()
            if run_id is not None:  # None: a rehearsal, kept out of the runs
                with self.audit.transaction() as conn:
                    self._end_run(conn, run_id, ended, outcome or "escalated")
        run = RunResult(playbook=playbook.name, started=started, ended=ended, outcome=outcome,
                        steps=steps, recovered_at=recovered_at, recovered_by=recovered_by)
        detail = f"recovered by step '{recovered_by}'" if outcome == "recovered" \
            else f"escalated after {len(steps)} step(s)"
        self.audit.record(kind="result", decision=outcome, at=ended, event=event,
                          model_version=self.model_version, playbook=playbook.name,
                          detail=detail, duration_s=ended - started,
                          verified=None if recovered_at is None else 1)
        return run

    def _run_step(self, event: Event, playbook: Playbook, step: Step, index: int,
                  fields: Mapping[str, Any]) -> StepResult:
        started = self.clock.now()
        result = self.actions.run(step.action, fields, step.timeout, event)
        # The audit shows what ran even if a custom runner does not say.
        result.arguments = result.arguments or describe_action(step.action, fields)
        verified = verification = None
        if result.ok and step.verify is not None:
            verified, verification = self._verify(event.entity, step.verify)
        ended = self.clock.now()
        step_result = StepResult(index=index, name=step.name, kind=step.action.kind,
                                 started=started, ended=ended, result=result, verified=verified,
                                 verification=verification)
        reason = {"ok": "", "timeout": "timeout", "verify_failed": "verify_failed",
                  "failed": "error" if result.exit_code is None else "exit_code"}[
                      step_result.status]
        detail = result.error or ""
        if verification is not None:
            detail = (detail + " " + verification["summary"]).strip()
        self.audit.record(kind="step", decision=step_result.status, reason=reason,
                          at=ended, event=event, model_version=self.model_version,
                          playbook=playbook.name, step=index, action=step.name,
                          arguments=result.arguments, exit_code=result.exit_code,
                          output=result.output, duration_s=result.duration_s,
                          verified=None if verified is None else int(verified),
                          verification=verification, detail=detail)
        return step_result

    def _verify(self, entity: str, verify: Verify) -> tuple[bool, dict[str, Any]]:
        """Poll the metrics until every condition holds at once, or the timeout passes."""
        start = self.clock.now()
        deadline = start + verify.timeout
        metrics = list(dict.fromkeys(c.metric for c in verify.conditions))
        checks = 0
        while True:
            readings, errors = self._read(entity, metrics)
            checks += 1
            now = self.clock.now()
            ok = all(c.holds(readings[c.metric]) for c in verify.conditions)
            if ok or now >= deadline:
                shown = ", ".join(f"{m}={_show(readings[m])}" for m in metrics)
                summary = (f"verified after {now - start:.0f}s: {shown}" if ok else
                           f"not verified within {format_seconds(verify.timeout)}: {shown}")
                if errors:
                    summary += f" ({'; '.join(errors)})"
                return ok, {"conditions": [str(c) for c in verify.conditions],
                            "readings": readings, "ok": ok, "at": now, "waited_s": now - start,
                            "checks": checks, "summary": summary}
            self.clock.sleep(min(verify.interval, deadline - now))

    def _read(self, entity: str, metrics: list[str]) -> tuple[dict[str, float | None], list[str]]:
        if self.metrics is None:
            return dict.fromkeys(metrics), ["no metric reader"]
        readings: dict[str, float | None] = {}
        errors = []
        for m in metrics:
            try:
                readings[m] = self.metrics.latest(entity, m)
            except Exception as exc:  # a broken reader fails verification, not the engine
                readings[m] = None
                errors.append(f"{m}: {type(exc).__name__}: {exc}")
        return readings, errors

    # -- state ---------------------------------------------------------------------

    def _start_run(self, conn: Any, event: Event, playbook: Playbook, now: float,
                   mode: str) -> int:
        d = self.playbooks.defaults
        # Runs older than every look-back (window, hour, cooldown, backoff) decide nothing.
        horizon = max(d.window, 3600.0, d.cooldown + d.backoff.max) + 3600.0
        conn.execute("DELETE FROM runs WHERE ended IS NOT NULL AND ended < ?", (now - horizon,))
        budget = sum(s.timeout + (s.verify.timeout if s.verify else 0) for s in playbook.steps)
        cur = conn.execute("INSERT INTO runs (entity, playbook, event_id, mode, started, "
                           "deadline, group_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (event.entity, playbook.name, event.id, mode, now,
                            now + budget + self.playbooks.defaults.step_timeout,
                            event.group or None))
        return int(cur.lastrowid)

    def _root(self, conn: Any, event: Event) -> str | None:
        """The entity the engine takes for the root of the event's incident group: its top
        suspect, passing over suspects whose every decision in this group was on a
        ``no_fault`` event. A flagged-but-healthy entity that happened to alert beside a
        fault (a wobble a few steps before it) is no incident's root; ranked first, it would
        otherwise make the fault itself a symptom, and nothing would act. An ``unknown`` one
        stays a root: it may be a fault never seen, whose symptoms must not be acted on."""
        if not event.group or not event.suspects:
            return None
        healthy = {str(row[0]) for row in conn.execute(
            "SELECT entity FROM audit WHERE kind = 'decision' AND group_id = ? AND entity != ? "
            "GROUP BY entity HAVING SUM(cause != ?) = 0", (event.group, event.entity, NO_FAULT))}
        for entity, _ in event.suspects:
            if str(entity) not in healthy:
                return str(entity)
        return None

    def _group_recovery(self, conn: Any, event: Event, now: float) -> Any:
        """A run on another entity of the event's incident group, running or ended within the
        cooldown: the event is a symptom of what that run recovers."""
        if not event.group:
            return None
        return conn.execute(
            "SELECT entity, playbook FROM runs WHERE group_id = ? AND entity != ? AND "
            "started <= ? AND ((ended IS NULL AND deadline > ?) OR ended > ?) "
            "ORDER BY started DESC LIMIT 1",
            (event.group, event.entity, now, now,
             now - self.playbooks.defaults.cooldown)).fetchone()

    def _end_run(self, conn: Any, run_id: int, ended: float, outcome: str) -> None:
        conn.execute("UPDATE runs SET ended = ?, outcome = ? WHERE id = ?",
                     (ended, outcome, run_id))

    def _record_decision(self, event: Event, decision: Decision) -> None:
        self.audit.record(kind="decision", decision=decision.decision, reason=decision.reason,
                          at=decision.at, event=event, model_version=self.model_version,
                          playbook=decision.playbook, mode=decision.mode,
                          detail=decision.detail, approval_id=decision.approval_id,
                          arguments=decision.plan or None)

    def _request_approval(self, conn: Any, event: Event, playbook: Playbook, now: float) -> str:
        approval_id = secrets.token_hex(4)
        conn.execute("INSERT INTO approvals (id, created, expires, entity, playbook, digest, "
                     "event, status) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')",
                     (approval_id, now, now + self.playbooks.defaults.approval_timeout,
                      event.entity, playbook.name, playbook.digest,
                      json.dumps(event.to_dict())))
        return approval_id

    def _expire(self, now: float) -> None:
        with self.audit.lock:
            due = self.audit.conn.execute("SELECT 1 FROM approvals WHERE status = 'pending' AND "
                                          "expires <= ? LIMIT 1", (now,)).fetchone()
        if due is None:
            return  # the common case: no write transaction at all
        with self.audit.transaction() as conn:
            rows = conn.execute("SELECT * FROM approvals WHERE status = 'pending' AND "
                                "expires <= ?", (now,)).fetchall()
            conn.execute("UPDATE approvals SET status = 'expired', decided = ? WHERE "
                         "status = 'pending' AND expires <= ?", (now, now))
        for row in rows:
            event = Event.from_dict(json.loads(row["event"]))
            self.audit.record(kind="approval", decision="expired", at=now, event=event,
                              model_version=self.model_version, playbook=row["playbook"],
                              approval_id=row["id"], detail="nobody approved in time")

    def _settle(self, approval_id: str, status: str, by: str | None) -> dict[str, Any]:
        now = self.clock.now()
        self._expire(now)
        row = settle_approval(self.audit, approval_id, status, now, by,
                              playbooks=self.playbooks if status == "approved" else None)
        return row

    def _run_approved(self, row: Mapping[str, Any]) -> Decision | None:
        now = self.clock.now()
        event = Event.from_dict(json.loads(row["event"]))
        playbook = self.playbooks.get(row["playbook"])
        run_id = None
        with self.audit.transaction() as conn:
            claimed = conn.execute("UPDATE approvals SET status = 'running' WHERE id = ? AND "
                                   "status = 'approved'", (row["id"],)).rowcount
            if not claimed:
                return None  # another process runs it
            if playbook is None or playbook.digest != row["digest"]:
                decision = Decision(event_id=event.id, entity=event.entity, cause=event.cause,
                                    confidence=event.confidence, at=now,
                                    decision=DecisionKind.SKIP, reason=Reason.PLAYBOOK_CHANGED,
                                    detail=f"playbook '{row['playbook']}' changed after the "
                                           "approval was requested", playbook=row["playbook"])
                status = "stale"
            else:
                decision = self._decide(conn, event, now, approved=playbook)
                if decision.decision == DecisionKind.ACT:
                    run_id = self._start_run(conn, event, playbook, now, "auto")
                    status = "done"
                elif decision.decision == DecisionKind.DRY_RUN:
                    run_id = self._start_run(conn, event, playbook, now, "dry_run")
                    self._end_run(conn, run_id, now, "dry_run")
                    status = "done"
                else:
                    status = "blocked"
            conn.execute("UPDATE approvals SET status = ? WHERE id = ?", (status, row["id"]))
            decision.approval_id = row["id"]
            self._record_decision(event, decision)
        if decision.decision == DecisionKind.ACT:
            decision.run = self._run_ladder(event, playbook, run_id)
        return decision


def _top_suspect(event: Event) -> str | None:
    """The entity ranked first among the suspects of the event's incident group, if any."""
    if not event.group or not event.suspects:
        return None
    return str(event.suspects[0][0])


def _show(value: float | None) -> str:
    return "missing" if value is None else f"{value:g}"
