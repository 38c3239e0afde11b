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

import ctypes
import dataclasses
import errno
import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from ftml.audit import (
    OUTPUT_LIMIT,
    AuditLog,
    add_column,
    db_path,
    excerpt,
    format_audit,
    redact,
)
from ftml.config import recovery_mode
from ftml.diagnose import NOT_A_CAUSE
from ftml.errors import ActionError, ConfigError
from ftml.events import Event, iso
from ftml.playbooks import (
    RECOVERED_PREFIX,
    Action,
    CheckpointAction,
    ExecAction,
    HttpAction,
    NotifyAction,
    Playbook,
    PlaybookSet,
    RollbackAction,
    SecretRef,
    Step,
    Verify,
    epoch_seconds,
    format_seconds,
    render,
    template_fields,
)

log = logging.getLogger("ftml.recover")


# --------------------------------------------------------------------------- time and metrics


@runtime_checkable
class Clock(Protocol):
    """Where the engine reads the time and waits. ``now()`` is seconds since the epoch."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class FakeClock:
    """A clock that only moves when told: ``sleep`` advances it at once."""

    def __init__(self, start: float | str | pd.Timestamp = 0.0):
        self.t = epoch_seconds(start)
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        seconds = max(0.0, float(seconds))
        self.slept.append(seconds)
        self.t += seconds

    def advance(self, seconds: float) -> None:
        self.t += float(seconds)

    def set(self, at: float | str | pd.Timestamp) -> None:
        self.t = epoch_seconds(at)


@runtime_checkable
class MetricReader(Protocol):
    """The latest value of one metric of one entity, or None if there is none."""

    def latest(self, entity: str, metric: str) -> float | None: ...


class FrameMetricReader:
    """Reads a long metric frame (timestamp, entity, one column per metric) at clock time.

    ``latest`` returns the last value at or before ``clock.now()``; a value older than
    ``max_age`` seconds counts as missing (default: three times the median spacing).
    In ``replay`` this is what makes verification read the windows after an action.
    """

    def __init__(self, frame: pd.DataFrame, clock: Clock, timestamp_col: str = "timestamp",
                 entity_col: str = "entity", max_age: float | None = None):
        for col in (timestamp_col, entity_col):
            if col not in frame.columns:
                raise ConfigError(f"metric frame has no column '{col}'", source="metrics",
                                  hint=f"columns are {', '.join(map(str, frame.columns))}")
        self.clock = clock
        times = _epoch_array(frame[timestamp_col])
        order = np.lexsort((times, frame[entity_col].astype(str).to_numpy()))
        sorted_frame = frame.iloc[order]
        sorted_times = times[order]
        self._series: dict[str, tuple[np.ndarray, pd.DataFrame]] = {}
        entities = sorted_frame[entity_col].astype(str).to_numpy()
        bounds = np.flatnonzero(entities[1:] != entities[:-1]) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(entities)], strict=True):
            if hi > lo:
                self._series[entities[lo]] = (sorted_times[lo:hi], sorted_frame.iloc[lo:hi])
        if max_age is None:
            steps = np.diff(np.unique(times))
            max_age = float(np.median(steps)) * 3 if len(steps) else float("inf")
        self.max_age = max_age

    def latest(self, entity: str, metric: str) -> float | None:
        series = self._series.get(entity)
        if series is None:
            return None
        times, rows = series
        if metric not in rows.columns:
            return None
        now = self.clock.now()
        i = int(np.searchsorted(times, now, side="right")) - 1
        if i < 0 or now - times[i] > self.max_age:
            return None
        value = rows[metric].iloc[i]
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        return None if np.isnan(value) else value


class Notifier(Protocol):
    """Where ``notify`` and ``escalate`` steps speak; ``kind`` is 'notify' or 'escalate'."""

    def send(self, kind: str, message: str, event: Event) -> None: ...


class LogNotifier:
    """Default notifier: a warning on the ``ftml.recover`` logger."""

    def send(self, kind: str, message: str, event: Event) -> None:
        log.warning("%s: %s [%s %s]", kind, message, event.entity, event.cause)


# --------------------------------------------------------------------------- results


class DecisionKind:
    """The values of ``Decision.decision``."""

    ACT = "act"
    DRY_RUN = "dry_run"
    PENDING = "pending"
    SKIP = "skip"


class Reason:
    """Why the engine decided what it did; the skip reasons come first."""

    RESOLVED = "resolved"  # the event has ended
    NO_PLAYBOOK = "no_playbook"
    NOT_DIAGNOSED = "not_diagnosed"  # cause unknown or no_fault: nothing to recover from
    LOW_CONFIDENCE = "low_confidence"
    MAINTENANCE = "maintenance"
    SILENCED = "silenced"
    PENDING_APPROVAL = "pending_approval"  # an approval for this entity is waiting
    BUSY = "busy"  # another action is running on the entity
    CIRCUIT_OPEN = "circuit_open"  # max_attempts within window used up
    COOLDOWN = "cooldown"  # too soon after the last recovery (cooldown or backoff)
    AFTERMATH = "aftermath"  # the event began during a recovery or within the cooldown after
    RATE_LIMITED = "rate_limited"  # max_actions_per_hour reached
    PLAYBOOK_CHANGED = "playbook_changed"  # an approved playbook no longer exists as approved
    AUTO = "auto"
    APPROVED = "approved"
    DRY_RUN = "dry_run"
    APPROVAL_REQUIRED = "approval_required"


SKIP_REASONS = (Reason.RESOLVED, Reason.NOT_DIAGNOSED, Reason.NO_PLAYBOOK, Reason.LOW_CONFIDENCE, Reason.MAINTENANCE,
                Reason.SILENCED, Reason.PENDING_APPROVAL, Reason.BUSY, Reason.CIRCUIT_OPEN,
                Reason.COOLDOWN, Reason.AFTERMATH, Reason.RATE_LIMITED,
                Reason.PLAYBOOK_CHANGED)


@dataclass
class ActionResult:
    """What one action did. Texts are already scrubbed of secrets."""

    ok: bool
    exit_code: int | None = None  # process exit code, or HTTP status for http actions
    output: str = ""  # at most OUTPUT_LIMIT bytes, the tail
    duration_s: float = 0.0  # wall time of the action itself
    timed_out: bool = False
    error: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)  # what ran, secrets as <env:NAME>


@dataclass
class StepResult:
    index: int  # 1-based position in the ladder; escalations after the ladder come last
    name: str
    kind: str
    started: float
    ended: float
    result: ActionResult
    verified: bool | None = None  # None: the step has no verify (or its action failed)
    verification: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.result.ok and self.verified is not False

    @property
    def status(self) -> str:
        if self.ok:
            return "ok"
        if self.result.timed_out:
            return "timeout"
        return "verify_failed" if self.result.ok else "failed"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"ok": self.ok, "status": self.status}


@dataclass
class RunResult:
    """One run of a playbook's ladder."""

    playbook: str
    started: float
    ended: float
    outcome: str  # "recovered" | "escalated"
    steps: list[StepResult] = field(default_factory=list)
    recovered_at: float | None = None  # when verification passed (or the action ended)
    recovered_by: str | None = None  # the step that recovered

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["steps"] = [s.to_dict() for s in self.steps]
        return d


# --------------------------------------------------------------------------- guards


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


@dataclass
class Decision:
    """What the engine decided for one event, and what came of it."""

    event_id: str
    entity: str
    cause: str
    confidence: float
    at: float
    decision: str  # act | dry_run | pending | skip
    reason: str
    detail: str = ""
    playbook: str | None = None
    mode: str | None = None
    approval_id: str | None = None
    plan: list[dict[str, Any]] = field(default_factory=list)  # the steps, rendered
    run: RunResult | None = None

    @property
    def acted(self) -> bool:
        return self.decision == DecisionKind.ACT

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["time"] = iso(pd.Timestamp(self.at, unit="s"))
        d["run"] = self.run.to_dict() if self.run else None
        return d

    def __str__(self) -> str:
        head = f"{iso(pd.Timestamp(self.at, unit='s'))} {self.entity} {self.cause}: "
        head += f"{self.decision} ({self.reason})"
        if self.playbook:
            head += f" playbook {self.playbook}"
        if self.approval_id:
            head += f" approval {self.approval_id}"
        if self.detail:
            head += f" - {self.detail}"
        if self.run:
            head += f" -> {self.run.outcome}"
        return head


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


# --------------------------------------------------------------------------- actions


class ActionRunner(Protocol):
    """Carries out one action for an event, within ``timeout`` seconds where it can."""

    def run(self, action: Action, fields: Mapping[str, Any], timeout: float,
            event: Event) -> ActionResult: ...


class LocalActions:
    """Runs actions for real: processes, HTTP requests, checkpoints, notifications.

    ``environ`` is where ``{env: NAME}`` secrets are read (default: ``os.environ`` at the
    time of the call).
    """

    def __init__(self, points: RecoveryPoints | None = None, notifier: Notifier | None = None,
                 environ: Mapping[str, str] | None = None, output_limit: int = OUTPUT_LIMIT,
                 clock: Clock | None = None):
        self.points = points
        self.notifier = notifier or LogNotifier()
        self.environ = environ
        self.output_limit = output_limit
        self.clock = clock or SystemClock()

    def run(self, action: Action, fields: Mapping[str, Any], timeout: float,
            event: Event) -> ActionResult:
        arguments = describe_action(action, fields)
        started = time.perf_counter()
        used_secrets: list[str] = []
        try:
            if isinstance(action, ExecAction):
                result = self._exec(action, fields, timeout, used_secrets)
            elif isinstance(action, HttpAction):
                body = render_body(action.body, fields) if action.body is not None \
                    else {"event": event.to_dict(), "playbook": fields.get("playbook")}
                result = self._post(render_url(action.url, fields), action.headers, fields,
                                    body, timeout, used_secrets)
            elif isinstance(action, CheckpointAction):
                result = self._checkpoint(action)
            elif isinstance(action, RollbackAction):
                result = self._rollback(action)
            elif isinstance(action, NotifyAction):
                result = self._notify(action, fields, timeout, event, used_secrets)
            else:  # pragma: no cover - the schema has no other kinds
                raise ActionError(f"unknown action kind {action.kind!r}")
        except ActionError as exc:
            result = ActionResult(ok=False, error=exc.one_line())
        except Exception as exc:  # an action must never take the engine down
            result = ActionResult(ok=False, error=f"{type(exc).__name__}: {exc}")
        result.duration_s = time.perf_counter() - started
        result.arguments = arguments
        # Scrub here, so no secret leaves the runner, whatever a server or script echoes.
        result.output = redact(result.output, used_secrets)
        result.error = redact(result.error, used_secrets)
        return result

    def _secret(self, ref: SecretRef, used: list[str]) -> str:
        env = os.environ if self.environ is None else self.environ
        value = env.get(ref.env)
        if not value:
            raise ActionError(f"environment variable {ref.env} is not set", where=ref.env,
                              hint="export it for the process that runs ftml")
        used.append(value)
        return value

    def _exec(self, action: ExecAction, fields: Mapping[str, Any], timeout: float,
              used: list[str]) -> ActionResult:
        argv = render_argv(action.argv, fields)
        env = dict(os.environ)
        for name, value in action.env:
            env[name] = self._secret(value, used) if isinstance(value, SecretRef) \
                else render(value, fields)
        with tempfile.TemporaryFile() as out:
            try:
                # No shell, a list argv, its own session so a timeout can stop its children.
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, env=env, close_fds=True,
                                        start_new_session=True)
            except (OSError, ValueError) as exc:
                return ActionResult(ok=False, error=f"cannot run {argv[0]}: {exc}")
            timed_out = False
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                code = _stop(proc)
            output = _tail(out, self.output_limit)
        error = f"timed out after {format_seconds(timeout)}" if timed_out else (
            f"exit code {code}" if code != 0 else None)
        return ActionResult(ok=code == 0 and not timed_out, exit_code=code, output=output,
                            timed_out=timed_out, error=error)

    def _post(self, url: str, headers: Sequence[tuple[str, str | SecretRef]],
              fields: Mapping[str, Any], body: Any, timeout: float,
              used: list[str]) -> ActionResult:
        sent = {"Content-Type": "application/json", "User-Agent": "ftml-recover"}
        for name, value in headers:
            sent[name] = self._secret(value, used) if isinstance(value, SecretRef) \
                else render(value, fields)
        data = json.dumps(body, default=str).encode()
        request = urllib.request.Request(url, data=data, headers=sent, method="POST")
        opener = urllib.request.build_opener(_RefuseRedirects)
        try:
            with opener.open(request, timeout=timeout) as response:
                status = response.status
                output = response.read(self.output_limit).decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            status = exc.code
            output = exc.read(self.output_limit).decode("utf-8", "replace") if exc.fp else ""
        except TimeoutError:
            return ActionResult(ok=False, timed_out=True,
                                error=f"timed out after {format_seconds(timeout)}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            timed_out = isinstance(reason, TimeoutError)
            return ActionResult(ok=False, timed_out=timed_out, error=f"POST failed: {reason}")
        ok = 200 <= status < 300
        return ActionResult(ok=ok, exit_code=status, output=output,
                            error=None if ok else f"HTTP {status}")

    def _checkpoint(self, action: CheckpointAction) -> ActionResult:
        points = self._points()
        cp = points.create(action.name, action.paths, good=action.good, at=self.clock.now())
        return ActionResult(ok=True, exit_code=0,
                            output=f"checkpoint {cp.ref} of {', '.join(cp.paths)}")

    def _rollback(self, action: RollbackAction) -> ActionResult:
        points = self._points()
        cp = points.rollback(action.name, action.version)
        return ActionResult(ok=True, exit_code=0,
                            output=f"restored {cp.ref} to {', '.join(cp.paths)}")

    def _notify(self, action: NotifyAction, fields: Mapping[str, Any], timeout: float,
                event: Event, used: list[str]) -> ActionResult:
        message = render(action.message, fields)
        self.notifier.send(action.kind, message, event)
        if action.url is None:
            return ActionResult(ok=True, exit_code=0, output=message)
        body = {"kind": action.kind, "message": message, "event": event.to_dict()}
        return self._post(render_url(action.url, fields), action.headers, fields, body,
                          timeout, used)

    def _points(self) -> RecoveryPoints:
        if self.points is None:
            raise ActionError("checkpoints need a state folder",
                              hint="give the engine state_dir=... (ftml --state DIR)")
        return self.points


class SimulatedActions:
    """Pretends every action succeeds at once; for replay and for dry runs of a ladder."""

    def run(self, action: Action, fields: Mapping[str, Any], timeout: float,
            event: Event) -> ActionResult:
        return ActionResult(ok=True, exit_code=0, output="(simulated)",
                            arguments=describe_action(action, fields))


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would carry our headers (secrets) to wherever it points: refuse it."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        return None


def _stop(proc: subprocess.Popen) -> int:
    """Stop a timed-out process and everything it started: TERM, then KILL."""
    for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    return proc.wait()


def _tail(handle: Any, limit: int) -> str:
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(max(0, size - limit))
    return excerpt(handle.read(), limit) if size > limit else handle.read().decode(
        "utf-8", "replace")


# --------------------------------------------------------------------------- templates


#: Fields whose text comes from outside (metric labels, model output); numbers are ours.
_TEXT_FIELDS = ("id", "entity", "cause", "playbook", "cause_source", "status")


def render_argv(argv: Sequence[str], fields: Mapping[str, Any]) -> list[str]:
    """Fill placeholders argument by argument; each stays exactly one argv entry.

    An argument that starts with a text placeholder (entity, cause, ...) may not start
    with '-' once filled: an entity named ``--delete-all`` must not become an option.
    """
    out = [argv[0]]
    for template in argv[1:]:
        value = render(template, fields)
        first = next(iter(string.Formatter().parse(template)), ("", None, "", None))
        starts_with_text_field = first[0] == "" and first[1] in _TEXT_FIELDS
        if starts_with_text_field and value.startswith("-"):
            raise ActionError(f"refusing argument {value!r}: it would read as an option",
                              hint="put the placeholder after a prefix or after '--'")
        out.append(value)
    return out


def render_url(template: str, fields: Mapping[str, Any]) -> str:
    """Fill placeholders in a url, percent-encoding each value so it stays in its segment."""
    parts = []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        parts.append(literal)
        if name is not None:
            value = render("{" + name + ("!" + conversion if conversion else "")
                           + (":" + spec if spec else "") + "}", fields)
            parts.append(urllib.parse.quote(value, safe=""))
    return "".join(parts)


def render_body(body: Any, fields: Mapping[str, Any]) -> Any:
    if isinstance(body, dict):
        return {k: render_body(v, fields) for k, v in body.items()}
    if isinstance(body, list):
        return [render_body(v, fields) for v in body]
    if isinstance(body, str):
        return render(body, fields)
    return body


def describe_action(action: Action, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The action as it would run for these fields; secrets appear as ``<env:NAME>``."""

    def shown(pairs: Iterable[tuple[str, str | SecretRef]]) -> dict[str, str]:
        return {k: f"<env:{v.env}>" if isinstance(v, SecretRef) else _try_render(v, fields)
                for k, v in pairs}

    if isinstance(action, ExecAction):
        try:
            argv = render_argv(action.argv, fields)
        except ActionError:
            argv = [_try_render(a, fields) for a in action.argv]
        d: dict[str, Any] = {"argv": argv}
        if action.template:
            d["template"] = action.template
        if action.env:
            d["env"] = shown(action.env)
        return d
    if isinstance(action, HttpAction):
        d = {"url": render_url(action.url, fields)}
        if action.headers:
            d["headers"] = shown(action.headers)
        if action.body is not None:
            d["json"] = render_body(action.body, fields)
        return d
    if isinstance(action, CheckpointAction):
        return {"name": action.name, "paths": list(action.paths), "good": action.good}
    if isinstance(action, RollbackAction):
        return {"name": action.name, "version": action.version or "latest good"}
    d = {"message": _try_render(action.message, fields)}
    if action.url:
        d["url"] = render_url(action.url, fields)
    if action.headers:
        d["headers"] = shown(action.headers)
    return d


def _try_render(template: str, fields: Mapping[str, Any]) -> str:
    try:
        return render(template, fields)
    except (KeyError, ValueError, IndexError):
        return template


# --------------------------------------------------------------------------- recovery points


@dataclass(frozen=True)
class Checkpoint:
    name: str
    version: str
    created: float
    good: bool
    paths: tuple[str, ...]
    path: Path  # the version's folder in the store

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"


class RecoveryPoints:
    """A versioned store of copies of files and folders, and atomic restores from it.

    Layout: ``root/NAME/v000001/{manifest.json, data/0, data/1, ..., GOOD}``. A checkpoint
    is written into a temporary folder and renamed into place, so it exists whole or not
    at all. A rollback stages each restored path beside its target, checks it, then swaps
    it in with one atomic exchange (``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere
    ``os.replace`` for files and two renames for folders). A journal makes an interrupted
    rollback finish on the next call: every target holds its old or its new content,
    never a mix.

    ``hook(phase)`` is called at 'staged' and 'swapped:<i>' so tests can interrupt there.
    """

    def __init__(self, root: str | Path, keep: int = 20,
                 hook: Callable[[str], None] | None = None):
        self.root = Path(root)
        self.keep = keep
        self.hook = hook

    # -- checkpoints -----------------------------------------------------------------

    def create(self, name: str, paths: Iterable[str | Path], *, good: bool = False,
               at: float | None = None) -> Checkpoint:
        """Copy ``paths`` (files or folders) into a new version of checkpoint ``name``."""
        base = self._base(name)
        self.resume(name)
        sources = [Path(p).absolute() for p in paths]
        for src in sources:
            if not src.exists():
                raise ActionError(f"cannot checkpoint {src}: it does not exist", where=name,
                                  hint="fix the checkpoint paths in the playbook")
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=base))
        try:
            entries = []
            for i, src in enumerate(sources):
                stored = tmp / "data" / str(i)
                stored.parent.mkdir(parents=True, exist_ok=True)
                _copy(src, stored)
                entries.append({"source": str(src), "stored": f"data/{i}",
                                "type": "dir" if src.is_dir() and not src.is_symlink()
                                else "file", "digest": _digest(stored)})
            created = time.time() if at is None else float(at)
            manifest = {"format": 1, "name": name, "created": created, "entries": entries}
            _write_json(tmp / "manifest.json", manifest)
            _fsync_tree(tmp)
            version = self._publish(base, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if good:
            self.mark_good(name, version)
        self._prune(name)
        return self.get(name, version)

    def mark_good(self, name: str, version: str | None = None) -> Checkpoint:
        """Mark a checkpoint (default: the newest) as a known good state to roll back to."""
        cp = self.get(name, version) if version else self._newest(name)
        _write_json(cp.path / "GOOD", {"marked": time.time()})
        return self.get(name, cp.version)

    def checkpoints(self, name: str) -> list[Checkpoint]:
        base = self._base(name)
        if not base.is_dir():
            return []
        versions = sorted(p.name for p in base.iterdir()
                          if p.is_dir() and p.name.startswith("v") and p.name[1:].isdigit())
        return [self.get(name, v) for v in versions]

    def get(self, name: str, version: str) -> Checkpoint:
        path = self._base(name) / version
        manifest_path = path / "manifest.json"
        if "/" in version or version.startswith(".") or not manifest_path.is_file():
            raise ActionError(f"no checkpoint {name}/{version}", where=str(self.root),
                              hint="list them with RecoveryPoints.checkpoints(name)")
        manifest = json.loads(manifest_path.read_text())
        return Checkpoint(name=name, version=version, created=manifest["created"],
                          good=(path / "GOOD").exists(),
                          paths=tuple(e["source"] for e in manifest["entries"]), path=path)

    def latest_good(self, name: str) -> Checkpoint | None:
        good = [cp for cp in self.checkpoints(name) if cp.good]
        return good[-1] if good else None

    def check(self, cp: Checkpoint) -> None:
        """Raise ActionError unless every stored file matches the manifest's checksums."""
        for entry in self._manifest(cp)["entries"]:
            stored = cp.path / entry["stored"]
            if not stored.exists() and not stored.is_symlink():
                raise ActionError(f"checkpoint {cp.ref} is damaged: {entry['stored']} is missing",
                                  where=str(cp.path), hint="roll back to another version")
            if _digest(stored) != entry["digest"]:
                raise ActionError(f"checkpoint {cp.ref} is damaged: checksums of "
                                  f"{entry['stored']} differ from its manifest",
                                  where=str(cp.path), hint="roll back to another version")

    # -- rollback ----------------------------------------------------------------------

    def rollback(self, name: str, version: str | None = None) -> Checkpoint:
        """Restore ``version`` (default: the latest good checkpoint) over its original paths."""
        self.resume(name)
        if version is not None:
            cp = self.get(name, version)
        else:
            cp = self.latest_good(name)
            if cp is None:
                raise ActionError(f"no checkpoint of {name!r} is marked good",
                                  where=str(self._base(name)),
                                  hint="mark one good, or roll back to a named version")
        self.check(cp)  # before touching anything
        tx = secrets.token_hex(4)
        entries = []
        for entry in self._manifest(cp)["entries"]:
            target = Path(entry["source"])
            entries.append({
                "target": str(target), "stored": str(cp.path / entry["stored"]),
                "staged": str(target.parent / f".ftml-stage-{tx}-{target.name}"),
                "backup": str(target.parent / f".ftml-old-{tx}-{target.name}"),
                "digest": entry["digest"],
            })
        journal = {"tx": tx, "version": cp.version, "phase": "staging", "entries": entries}
        _write_json(self._journal(name), journal)
        for entry in entries:
            staged = Path(entry["staged"])
            staged.parent.mkdir(parents=True, exist_ok=True)
            _copy(Path(entry["stored"]), staged)
            _fsync_tree(staged)
            if _digest(staged) != entry["digest"]:
                self._abort(name, journal)
                raise ActionError(f"staged copy of {entry['target']} does not match {cp.ref}",
                                  hint="the disk may be failing; nothing was changed")
        self._call_hook("staged")
        journal["phase"] = "swapping"
        _write_json(self._journal(name), journal)
        for i, entry in enumerate(entries):
            _swap(entry)
            self._call_hook(f"swapped:{i}")
        self._finish(name, journal)
        return cp

    def resume(self, name: str | None = None) -> list[str]:
        """Finish (or undo, if it had not started swapping) an interrupted rollback.

        Returns the names whose rollback was finished or undone.
        """
        names = [name] if name else ([p.name for p in self.root.iterdir() if p.is_dir()]
                                     if self.root.is_dir() else [])
        done = []
        for n in names:
            journal_path = self._journal(n)
            if not journal_path.exists():
                continue
            journal = json.loads(journal_path.read_text())
            if journal["phase"] == "staging":
                self._abort(n, journal)  # targets untouched: drop the staged copies
            else:
                for entry in journal["entries"]:
                    target, staged = Path(entry["target"]), Path(entry["staged"])
                    if _exists(target) and _digest(target) == entry["digest"]:
                        continue  # this one was swapped already
                    if _exists(staged) and _digest(staged) == entry["digest"]:
                        _swap(entry)
                    elif not _exists(target) and _exists(Path(entry["backup"])):
                        os.rename(entry["backup"], target)  # put the old content back
                    else:
                        raise ActionError(f"cannot finish the interrupted rollback of {target}",
                                          where=str(journal_path),
                                          hint="inspect the .ftml-stage-/.ftml-old- copies "
                                               "beside it, then delete the journal")
                self._finish(n, journal)
            done.append(n)
        return done

    # -- internals ---------------------------------------------------------------------

    def _base(self, name: str) -> Path:
        if not name or "/" in name or name.startswith(".") or "\\" in name:
            raise ActionError(f"bad checkpoint name {name!r}", hint="letters, digits, _ . -")
        return self.root / name

    def _journal(self, name: str) -> Path:
        return self._base(name) / ".rollback.json"

    def _manifest(self, cp: Checkpoint) -> dict[str, Any]:
        return json.loads((cp.path / "manifest.json").read_text())

    def _newest(self, name: str) -> Checkpoint:
        points = self.checkpoints(name)
        if not points:
            raise ActionError(f"no checkpoint of {name!r} yet", where=str(self.root),
                              hint="take one with a checkpoint step first")
        return points[-1]

    def _publish(self, base: Path, tmp: Path) -> str:
        """Rename the finished temp folder to the next free version; racing writers retry."""
        for _ in range(100):
            existing = [int(p.name[1:]) for p in base.iterdir()
                        if p.name.startswith("v") and p.name[1:].isdigit()]
            version = f"v{max(existing, default=0) + 1:06d}"
            try:
                os.rename(tmp, base / version)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue
                raise
            _fsync_dir(base)
            return version
        raise ActionError("cannot find a free checkpoint version", where=str(base))

    def _prune(self, name: str) -> None:
        points = self.checkpoints(name)
        good = self.latest_good(name)
        for cp in points[: max(0, len(points) - self.keep)]:
            if good is None or cp.version != good.version:
                shutil.rmtree(cp.path, ignore_errors=True)

    def _abort(self, name: str, journal: dict[str, Any]) -> None:
        for entry in journal["entries"]:
            _remove(Path(entry["staged"]))
        self._journal(name).unlink(missing_ok=True)

    def _finish(self, name: str, journal: dict[str, Any]) -> None:
        for entry in journal["entries"]:
            _remove(Path(entry["staged"]))  # after an exchange it holds the old content
            _remove(Path(entry["backup"]))
        self._journal(name).unlink(missing_ok=True)
        _fsync_dir(self._base(name))

    def _call_hook(self, phase: str) -> None:
        if self.hook is not None:
            self.hook(phase)


def _swap(entry: Mapping[str, str]) -> None:
    """Put the staged copy at the target, atomically where the system allows."""
    target, staged, backup = Path(entry["target"]), Path(entry["staged"]), Path(entry["backup"])
    if not _exists(target):
        os.rename(staged, target)
    elif _exchange(staged, target):
        pass  # staged now holds the old content; _finish removes it
    elif not target.is_dir() or target.is_symlink():
        os.replace(staged, target)
    else:
        # No atomic exchange: for a moment the target is missing; resume() repairs that.
        os.rename(target, backup)
        os.rename(staged, target)
    _fsync_dir(target.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE); False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif _exists(path):
        path.unlink()


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True)
    else:
        shutil.copy2(src, dst, follow_symlinks=False)


def _digest(path: Path) -> dict[str, Any]:
    """Checksums of a file, or of every file, link and folder under a folder."""
    if path.is_symlink():
        return {"link": os.readlink(path)}
    if path.is_file():
        return {"sha256": _sha256(path)}
    files: dict[str, str] = {}
    links: dict[str, str] = {}
    dirs: list[str] = []
    for root, subdirs, names in os.walk(path):
        rel_root = Path(root).relative_to(path)
        for d in list(subdirs):
            p = Path(root) / d
            if p.is_symlink():  # os.walk lists links to folders as folders
                subdirs.remove(d)
                links[str(rel_root / d)] = os.readlink(p)
            else:
                dirs.append(str(rel_root / d))
        for n in names:
            p = Path(root) / n
            if p.is_symlink():
                links[str(rel_root / n)] = os.readlink(p)
            else:
                files[str(rel_root / n)] = _sha256(p)
    return {"files": files, "links": links, "dirs": sorted(dirs)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    """Atomic write: a temp file beside it, fsync, then os.replace."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_tree(path: Path) -> None:
    if path.is_symlink():
        return
    if path.is_file():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        return
    for root, _, names in os.walk(path):
        for n in names:
            p = Path(root) / n
            if not p.is_symlink():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        _fsync_dir(Path(root))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync folders; the rename is still atomic
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- engine state


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


# --------------------------------------------------------------------------- engine


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
        ``target: root`` acts on the event's incident group's top suspect instead."""
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
        if not event.group or not event.suspects or event.status == "resolved":
            return event
        root = str(event.suspects[0][0])
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


# --------------------------------------------------------------------------- approvals


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


# --------------------------------------------------------------------------- replay


@dataclass
class ReplayResult:
    """What the engine would have done over past events, and how fast it would have helped."""

    decisions: list[Decision]
    incidents: list[dict[str, Any]]
    summary: dict[str, Any]

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for d in self.decisions:
            run = d.run
            out.append({
                "time": iso(pd.Timestamp(d.at, unit="s")), "entity": d.entity, "cause": d.cause,
                "confidence": _number(d.confidence), "decision": d.decision, "reason": d.reason,
                "playbook": d.playbook,
                "steps": " > ".join(s.name for s in run.steps) if run else "",
                "outcome": run.outcome if run else "",
                "recovered_after_s": (run.recovered_at - d.at)
                if run and run.recovered_at is not None else None,
            })
        return out

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows())

    def format(self) -> str:
        rows = self.rows()
        parts = [format_audit(rows, columns=list(rows[0])) if rows else "(no events)"]
        if self.incidents:
            cols = ["entity", "start", "cause", "event_id", "playbook", "acted_at", "outcome",
                    "time_to_recovery_s"]
            parts.append(format_audit(self.incidents, columns=cols))
        s = self.summary
        kinds = s["decisions"]
        line = (f"{s['events']} event(s): {s['acted']} would run ({kinds['act']} act, "
                f"{kinds['dry_run']} dry_run, {kinds['pending']} pending approval), "
                f"{s['skipped']} skipped "
                f"({', '.join(f'{k} {v}' for k, v in s['skip_reasons'].items()) or 'none'}); "
                f"simulated: {s['recovered']} recovered, {s['escalated']} escalated")
        parts.append(line)
        if s.get("incidents"):
            rate = s["success_rate"]
            ttr = s["median_time_to_recovery_s"]
            parts.append(
                f"{s['incidents']} incident(s): {s['incidents_recovered']} recovered by the "
                f"playbook of their cause (success rate {rate:.0%}), median time to recovery "
                + (format_seconds(round(ttr)) if ttr is not None else "-")
                + f"; wrong actions: {s['wrong_playbook']} incident(s) got another cause's "
                f"playbook, {s['actions_without_incident']} run(s) on events of no incident")
        return "\n\n".join(parts)

    def __str__(self) -> str:
        return self.format()


class EventsRecoveredReader:
    """A :class:`MetricReader` for replay that also answers the verify condition that names no
    metric, ``recovered [for N windows]`` (read as ``ftml:recovered:N``): 1.0 once no replayed
    event of the entity is open at clock time, i.e. its last active window has passed, as
    ``watch`` answers it once the entity's alert has resolved; other metrics from ``inner``."""

    def __init__(self, inner: MetricReader, events: Sequence[Event], clock: Clock):
        self.inner = inner
        self.clock = clock
        spans: dict[str, list[tuple[float, float]]] = {}
        for ev in events:
            spans.setdefault(ev.entity, []).append((epoch_seconds(ev.start),
                                                    epoch_seconds(ev.end)))
        self._spans = {e: np.array(v, dtype=np.float64) for e, v in spans.items()}

    def latest(self, entity: str, metric: str) -> float | None:
        if not metric.startswith(RECOVERED_PREFIX):
            return self.inner.latest(entity, metric)
        spans = self._spans.get(entity)
        now = self.clock.now()
        open_now = spans is not None and bool(((spans[:, 0] <= now) & (now <= spans[:, 1])).any())
        return 0.0 if open_now else 1.0


def replay(events: Sequence[Event], metric_reader: MetricReader | pd.DataFrame,
           playbooks: PlaybookSet, incidents: pd.DataFrame | Iterable[Mapping[str, Any]] | None
           = None, clock: FakeClock | None = None, model_version: str = "",
           mode: str | None = None) -> ReplayResult:
    """Replay past events through the engine with simulated actions.

    Each event is handled at its ``start`` as if it were open, in time order. The engine
    decides as it would live (``mode`` overrides the playbook file's modes, as ``watch
    --mode`` does): decision and reason are its own. Every ladder that the decision stands
    for (act, dry_run, or pending approval) is run with actions that succeed at once, and
    verification reads the metrics that followed (pass a metric frame, or a reader that
    reads at ``clock``'s time); a dry run's or an approval's ladder is rehearsed, out of the
    engine's runs, as in that mode no run would hold the entity. With ``incidents`` (entity,
    start, end[, cause]) it reports, per incident, whether the playbook of its cause would
    have recovered it, and how long after the incident start.
    """
    clock = clock or FakeClock()
    if isinstance(metric_reader, pd.DataFrame):
        metric_reader = FrameMetricReader(metric_reader, clock)
    metric_reader = EventsRecoveredReader(metric_reader, events, clock)
    engine = RecoveryEngine(playbooks, clock=clock, metrics=metric_reader,
                            actions=SimulatedActions(), notifier=_SilentNotifier(), mode=mode,
                            model_version=model_version)
    decisions = []
    ordered = sorted(events, key=lambda e: epoch_seconds(e.start))
    try:
        for event in ordered:
            clock.set(epoch_seconds(event.start))
            opened = dataclasses.replace(event, status="open")
            decision = engine.handle(opened)
            if decision.run is None:
                decision.run = engine.rehearse(opened, decision)
            decisions.append(decision)
    finally:
        engine.close()
    incident_rows, unmatched_runs = _score_incidents(decisions, ordered, incidents, playbooks) \
        if incidents is not None else ([], 0)
    return ReplayResult(decisions=decisions, incidents=incident_rows,
                        summary=_summary(decisions, incident_rows, unmatched_runs))


class _SilentNotifier:
    def send(self, kind: str, message: str, event: Event) -> None:
        pass


def _incident_records(incidents: pd.DataFrame | Iterable[Mapping[str, Any]]) -> list[dict]:
    records = incidents.to_dict("records") if isinstance(incidents, pd.DataFrame) \
        else [dict(r) for r in incidents]
    for i, r in enumerate(records):
        for key in ("entity", "start", "end"):
            if key not in r:
                raise ConfigError(f"incident has no '{key}'", source="incidents",
                                  where=f"row {i + 1}", hint="incidents need entity, start, end")
    return records


def _score_incidents(decisions: list[Decision], ordered: list[Event],
                     incidents: pd.DataFrame | Iterable[Mapping[str, Any]],
                     playbooks: PlaybookSet) -> tuple[list[dict], int]:
    """Per incident, its outcome: ``missed`` (no event), ``not_acted`` (events, no run),
    ``acted_before`` (every run was over before the incident began), ``wrong_playbook`` (the
    run was another cause's playbook), ``escalated`` (the right playbook did not recover
    it) or ``recovered`` (the right playbook's verify passed, at or after the incident
    start: the time to recovery is never negative). An incident without a cause cannot
    tell a wrong playbook: any verified run counts. Also returns the runs on events that
    overlap no incident (actions on false alarms)."""
    by_entity: dict[str, list[tuple[Event, Decision]]] = {}
    for event, decision in zip(ordered, decisions, strict=True):
        by_entity.setdefault(event.entity, []).append((event, decision))
    used: set[int] = set()
    rows = []
    for inc in _incident_records(incidents):
        start, end = epoch_seconds(inc["start"]), epoch_seconds(inc["end"])
        cause = inc.get("cause")
        cause = None if cause is None or (isinstance(cause, float) and math.isnan(cause)) \
            else str(cause)
        row = {"entity": str(inc["entity"]), "start": iso(pd.Timestamp(start, unit="s")),
               "end": iso(pd.Timestamp(end, unit="s")), "cause": cause,
               "event_id": None, "detected_at": None, "playbook": None, "acted_at": None,
               "outcome": "missed", "recovered": False, "time_to_recovery_s": None}
        overlapping = [(e, d) for e, d in by_entity.get(row["entity"], [])
                       if epoch_seconds(e.start) <= end and epoch_seconds(e.end) >= start]
        used.update(id(d) for _, d in overlapping)
        if overlapping:
            first_event = overlapping[0][0]
            row.update(event_id=first_event.id,
                       detected_at=iso(pd.Timestamp(epoch_seconds(first_event.start), unit="s")),
                       outcome="not_acted")
            runs = [d.run for _, d in overlapping if d.run is not None]
            if runs:
                row["outcome"] = "acted_before"
            # A run over before the incident began (its verify passed on the normal metrics
            # before it) did nothing for it.
            runs = [r for r in runs if max(r.ended, r.recovered_at or r.ended) >= start]
            if runs:
                run = runs[0]
                playbook = playbooks.get(run.playbook)
                right = cause is None or (playbook is not None
                                          and playbook.cause in (cause, "*"))
                row.update(playbook=run.playbook,
                           acted_at=iso(pd.Timestamp(run.started, unit="s")))
                if not right:
                    row["outcome"] = "wrong_playbook"
                elif run.recovered_at is not None and run.recovered_at >= start:
                    row.update(outcome="recovered", recovered=True,
                               time_to_recovery_s=run.recovered_at - start)
                else:
                    row["outcome"] = "escalated"
        rows.append(row)
    unmatched = sum(1 for d in decisions if d.run is not None and id(d) not in used)
    return rows, unmatched


def _summary(decisions: list[Decision], incidents: list[dict],
             unmatched_runs: int = 0) -> dict[str, Any]:
    reasons: dict[str, int] = {}
    kinds = dict.fromkeys((DecisionKind.ACT, DecisionKind.DRY_RUN, DecisionKind.PENDING), 0)
    for d in decisions:
        if d.decision == DecisionKind.SKIP:
            reasons[d.reason] = reasons.get(d.reason, 0) + 1
        else:
            kinds[d.decision] += 1
    runs = [d.run for d in decisions if d.run is not None]
    summary: dict[str, Any] = {
        "events": len(decisions), "acted": len(runs), "skipped": sum(reasons.values()),
        "decisions": kinds, "skip_reasons": dict(sorted(reasons.items())),
        "recovered": sum(r.outcome == "recovered" for r in runs),
        "escalated": sum(r.outcome == "escalated" for r in runs),
    }
    if incidents:
        ttr = [r["time_to_recovery_s"] for r in incidents if r["recovered"]]
        summary.update(incidents=len(incidents), incidents_recovered=len(ttr),
                       success_rate=len(ttr) / len(incidents),
                       median_time_to_recovery_s=float(np.median(ttr)) if ttr else None,
                       mean_time_to_recovery_s=float(np.mean(ttr)) if ttr else None,
                       wrong_playbook=sum(r["outcome"] == "wrong_playbook" for r in incidents),
                       actions_without_incident=unmatched_runs)
    return summary


def _number(value: float | None) -> float | None:
    """A float for a table cell; NaN (no value) as None, shown as '-'."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


# --------------------------------------------------------------------------- helpers


def _epoch_array(values: pd.Series) -> np.ndarray:
    ts = pd.to_datetime(values, utc=True)
    return ((ts - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(dtype=float)


def _show(value: float | None) -> str:
    return "missing" if value is None else f"{value:g}"
