"""Action runners: what carries out a step's action (for real, or simulated), where notify
steps speak, and how an action reads once its placeholders are filled."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from ftml.audit import OUTPUT_LIMIT, excerpt, redact
from ftml.clock import Clock, SystemClock
from ftml.errors import ActionError
from ftml.events import Event
from ftml.playbooks import (
    Action,
    CheckpointAction,
    ExecAction,
    HttpAction,
    NotifyAction,
    RollbackAction,
    SecretRef,
    format_seconds,
    render,
)
from ftml.recover.points import RecoveryPoints
from ftml.recover.results import ActionResult
from ftml.recover.templates import render_argv, render_body, render_url

log = logging.getLogger("ftml.recover")


class Notifier(Protocol):
    """Where ``notify`` and ``escalate`` steps speak; ``kind`` is 'notify' or 'escalate'."""

    def send(self, kind: str, message: str, event: Event) -> None: ...


class LogNotifier:
    """Default notifier: a warning on the ``ftml.recover`` logger."""

    def send(self, kind: str, message: str, event: Event) -> None:
        log.warning("%s: %s [%s %s]", kind, message, event.entity, event.cause)


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
