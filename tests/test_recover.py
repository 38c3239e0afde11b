"""Recovery engine: decisions, ladders, verification, real actions, recovery points, replay."""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ftml.audit import read_audit
from ftml.errors import ActionError, ConfigError, PlaybookError
from ftml.events import Event
from ftml.playbooks import parse_playbooks
from ftml.recover import (
    ActionResult,
    FakeClock,
    FrameMetricReader,
    LocalActions,
    RecoveryEngine,
    RecoveryPoints,
    SystemClock,
    approve,
    pending_approvals,
    reject,
    replay,
)
from ftml.recover.points import _digest

HELPERS = Path(__file__).parent / "helpers"
T0 = pd.Timestamp("2024-05-01T10:00:00Z").timestamp()
PY = sys.executable


def event(entity="web-1", cause="memory_leak", confidence=0.9, status="open", at=T0,
          minutes=10) -> Event:
    start = pd.Timestamp(at, unit="s", tz="UTC")
    return Event(entity=entity, start=start, end=start + pd.Timedelta(minutes=minutes),
                 score=0.8, cause=cause, confidence=confidence, status=status,
                 id=f"{entity}-{int(at)}")


def playbooks(text: str, **kw):
    return parse_playbooks(textwrap.dedent(text), source="test.yaml", **kw)


class FakeRunner:
    """Records each action; results by step position in the ladder (default: success)."""

    def __init__(self, results=None):
        self.calls = []
        self.results = results or {}

    def run(self, action, fields, timeout, event):
        self.calls.append((action.kind, dict(fields), timeout))
        result = self.results.get(len(self.calls), ActionResult(ok=True, exit_code=0))
        return ActionResult(**vars(result))


class ScriptedReader:
    """Metric values as a function of the clock: values[metric] = [(from_time, value), ...]."""

    def __init__(self, clock, values):
        self.clock = clock
        self.values = values
        self.reads = 0

    def latest(self, entity, metric):
        self.reads += 1
        current = None
        for since, value in self.values.get(metric, []):
            if self.clock.now() >= since:
                current = value
        return current


class Notes:
    def __init__(self):
        self.sent = []

    def send(self, kind, message, event):
        self.sent.append((kind, message))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


# --------------------------------------------------------------------------- decisions

DECIDE = f"""
version: 1
defaults:
  mode: auto
  min_confidence: 0.6
  cooldown: 10m
  max_attempts: 3
  window: 1h
  backoff: {{initial: 15m, factor: 2, max: 1h}}
  verify: {{timeout: 2m, interval: 30s}}
guards:
  max_actions_per_hour: 5
  maintenance:
    - {{entity: "db-*", start: {T0 - 3600}, end: {T0 + 3600}, reason: upgrade}}
  silences:
    - {{entity: "canary-*", start: {T0 - 3600}, end: {T0 + 3600}}}
playbooks:
  - name: leak
    cause: memory_leak
    steps:
      - exec: [/usr/local/bin/restart-app, "{{entity}}"]
        verify: [mem_used_pct < 70]
"""


def run_row(entity="web-1", started=-30, ended=-29, outcome="recovered", mode="auto",
            playbook="leak"):
    """A past run, times in minutes from T0 (ended None: still running)."""
    return {"entity": entity, "playbook": playbook, "event_id": "old", "mode": mode,
            "started": T0 + started * 60, "deadline": T0 + (started + 60) * 60,
            "ended": None if ended is None else T0 + ended * 60, "outcome": outcome}


def with_runs(*runs):
    def setup(engine):
        engine.load_state({"format": 1, "runs": list(runs), "approvals": []})
    return setup


def pending_for_entity(engine):
    engine.mode = "approve"
    engine.handle(event())
    engine.mode = None


# scenario -> (engine mode, event overrides, setup, expected decision, expected reason)
SCENARIOS = {
    "acts": (None, {}, None, "act", "auto"),
    "dry run records only": ("dry_run", {}, None, "dry_run", "dry_run"),
    "approve mode waits": ("approve", {}, None, "pending", "approval_required"),
    "event already resolved": (None, {"status": "resolved"}, None, "skip", "resolved"),
    "no playbook for cause": (None, {"cause": "alien_invasion"}, None, "skip", "no_playbook"),
    "low confidence": (None, {"confidence": 0.3}, None, "skip", "low_confidence"),
    "maintenance window": (None, {"entity": "db-1"}, None, "skip", "maintenance"),
    "silenced": (None, {"entity": "canary-7"}, None, "skip", "silenced"),
    "approval pending on entity": (None, {}, pending_for_entity, "skip", "pending_approval"),
    "another action running": (None, {}, with_runs(run_row(started=-1, ended=None)),
                               "skip", "busy"),
    "dead run does not block": (None, {}, with_runs(run_row(started=-120, ended=None)),
                                "act", "auto"),
    "circuit open": (None, {}, with_runs(run_row(started=-50, ended=-49),
                                         run_row(started=-40, ended=-39),
                                         run_row(started=-30, ended=-29)),
                     "skip", "circuit_open"),
    "attempts outside window": (None, {}, with_runs(run_row(started=-90, ended=-89),
                                                    run_row(started=-80, ended=-79),
                                                    run_row(started=-70, ended=-69)),
                                "act", "auto"),
    "cooldown": (None, {}, with_runs(run_row(started=-6, ended=-5)), "skip", "cooldown"),
    "cooldown over": (None, {}, with_runs(run_row(started=-12, ended=-11)), "act", "auto"),
    "began as a recovery settled": (None, {"at": T0 - 600}, with_runs(
        run_row(started=-16, ended=-15)), "skip", "aftermath"),
    "began after the recovery settled": (None, {"at": T0 - 300}, with_runs(
        run_row(started=-30, ended=-29)), "act", "auto"),
    "began during a recovery": (None, {"at": T0 - 1500}, with_runs(
        run_row(started=-26, ended=-15)), "skip", "aftermath"),
    "began before the last recovery": (None, {"at": T0 - 1800}, with_runs(
        run_row(started=-16, ended=-15)), "act", "auto"),
    "backoff after failures": (None, {}, with_runs(
        run_row(started=-55, ended=-54, outcome="escalated"),
        run_row(started=-25, ended=-24, outcome="escalated")), "skip", "cooldown"),
    "hourly limit": (None, {}, with_runs(*[run_row(entity=f"other-{i}", started=-50 + i,
                                                   ended=-49 + i) for i in range(5)]),
                     "skip", "rate_limited"),
    "dry runs do not use the real budget": (None, {}, with_runs(
        *[run_row(entity=f"o-{i}", started=-50 + i, ended=-50 + i, mode="dry_run",
                  outcome="dry_run") for i in range(5)]), "act", "auto"),
}


CATCH_ALL = """
version: 1
defaults: {mode: auto, min_confidence: 0.0, cooldown: 1m}
playbooks:
  - name: restart-anything
    cause: "*"
    steps:
      - exec: [/usr/local/bin/restart-app, "{entity}"]
"""


@pytest.mark.parametrize("cause", ["unknown", "no_fault"])
def test_no_playbook_acts_on_an_undiagnosed_event(cause):
    # A catch-all playbook at confidence 0 acts on any named cause, but never on 'unknown' (the
    # diagnoser does not know) or 'no_fault' (flagged but healthy): the audit says why.
    clock = FakeClock(T0)
    runner = FakeRunner()
    engine = RecoveryEngine(playbooks(CATCH_ALL), clock=clock, actions=runner)
    assert engine.handle(event(cause="memory_leak", entity="web-2")).decision == "act"
    runner.calls.clear()
    decision = engine.handle(event(cause=cause, confidence=1.0))
    assert (decision.decision, decision.reason) == ("skip", "not_diagnosed")
    assert runner.calls == []
    last = [r for r in engine.audit.read() if r["kind"] == "decision"][-1]
    assert (last["reason"], last["cause"]) == ("not_diagnosed", cause)
    assert cause in last["detail"]
    engine.close()


@pytest.mark.parametrize("scenario", list(SCENARIOS), ids=list(SCENARIOS))
def test_decision_table(scenario):
    mode, overrides, setup, expected, reason = SCENARIOS[scenario]
    clock = FakeClock(T0)
    runner = FakeRunner()
    reader = ScriptedReader(clock, {"mem_used_pct": [(0, 50.0)]})
    engine = RecoveryEngine(playbooks(DECIDE), clock=clock, metrics=reader, actions=runner,
                            mode=mode, model_version="m7")
    if setup:
        setup(engine)
    runner.calls.clear()
    decision = engine.handle(event(**overrides))
    assert (decision.decision, decision.reason) == (expected, reason), decision.detail
    assert bool(runner.calls) == (expected == "act")  # only 'act' runs anything
    audit = engine.audit.read()
    last = [r for r in audit if r["kind"] == "decision"][-1]
    assert (last["decision"], last["reason"], last["model_version"]) == (expected, reason, "m7")
    if expected == "skip":
        assert decision.detail  # every skip says why in words too
    engine.close()


def test_backoff_detail_and_the_wait_grows():
    clock = FakeClock(T0)
    engine = RecoveryEngine(playbooks(DECIDE), clock=clock, actions=FakeRunner(),
                            metrics=ScriptedReader(clock, {}))
    with_runs(run_row(started=-55, ended=-54, outcome="escalated"),
              run_row(started=-25, ended=-24, outcome="escalated"))(engine)
    d = engine.handle(event())
    assert d.reason == "cooldown" and "backoff after 2 failed attempt(s): 30m" in d.detail
    clock.advance(6 * 60 + 1)  # 30 minutes after the last failure
    assert engine.handle(event()).decision == "act"


def test_dry_run_plan_shows_rendered_steps_and_is_remembered():
    clock = FakeClock(T0)
    engine = RecoveryEngine(playbooks(DECIDE), clock=clock, actions=FakeRunner(),
                            mode="dry_run")
    d = engine.handle(event())
    assert d.plan[0]["arguments"]["argv"] == ["/usr/local/bin/restart-app", "web-1"]
    assert d.plan[0]["verify"] == "mem_used_pct < 70 within 2m"
    # A dry run starts the cooldown, so an open event is not re-planned on every tick.
    clock.advance(60)
    assert engine.handle(event()).reason == "cooldown"
    rows = engine.audit.read()
    assert json.loads(rows[0]["arguments"])[0]["arguments"]["argv"][1] == "web-1"


# --------------------------------------------------------------------------- ladders

LADDER = """
version: 1
defaults: {mode: auto, verify: {timeout: 2m, interval: 30s}}
playbooks:
  - name: leak
    cause: memory_leak
    steps:
      - name: restart
        exec: [/bin/restart, "{entity}"]
        verify: [mem_used_pct < 70]
      - name: scale
        exec: [/bin/scale, "{entity}"]
        verify: {all: [mem_used_pct < 70, error_rate < 0.01], timeout: 5m}
"""


def ladder_engine(values, results=None, text=LADDER, **kw):
    clock = FakeClock(T0)
    runner = FakeRunner(results)
    notes = Notes()
    reader = ScriptedReader(clock, values)
    engine = RecoveryEngine(playbooks(text), clock=clock, metrics=reader, actions=runner,
                            notifier=notes, **kw)
    return engine, clock, runner, notes


def test_verify_polls_until_conditions_hold_without_waiting():
    engine, clock, runner, _ = ladder_engine({"mem_used_pct": [(0, 90.0), (T0 + 75, 60.0)]})
    started = time.monotonic()
    d = engine.handle(event())
    assert time.monotonic() - started < 5  # the fake clock waited, not us
    assert d.run.outcome == "recovered" and d.run.recovered_by == "restart"
    assert clock.slept == [30, 30, 30]
    assert d.run.recovered_at == T0 + 90
    step = d.run.steps[0]
    assert step.verified and step.verification["readings"] == {"mem_used_pct": 60.0}
    assert len(runner.calls) == 1


def test_failed_verify_leads_to_the_next_step():
    engine, clock, runner, notes = ladder_engine(
        {"mem_used_pct": [(0, 90.0), (T0 + 200, 60.0)], "error_rate": [(0, 0.001)]})
    d = engine.handle(event())
    first, second = d.run.steps
    assert (first.name, first.verified, first.status) == ("restart", False, "verify_failed")
    assert (second.name, second.verified) == ("scale", True)
    assert d.run.outcome == "recovered" and d.run.recovered_by == "scale"
    assert [c[0] for c in runner.calls] == ["exec", "exec"]
    assert notes.sent == []
    steps = [r for r in engine.audit.read() if r["kind"] == "step"]
    assert [(r["decision"], r["verified"]) for r in steps] == [("verify_failed", 0), ("ok", 1)]
    assert "not verified within 2m: mem_used_pct=90" in steps[0]["detail"]


def test_exhausted_ladder_escalates():
    engine, clock, runner, notes = ladder_engine({"mem_used_pct": [(0, 95.0)]})
    d = engine.handle(event())
    assert d.run.outcome == "escalated"
    assert [s.name for s in d.run.steps] == ["restart", "scale", "escalate"]
    assert [c[0] for c in runner.calls] == ["exec", "exec", "escalate"]
    step = [r for r in engine.audit.read() if r["kind"] == "step"][-1]
    assert json.loads(step["arguments"]) == {
        "message": "no step recovered web-1 (memory_leak); a human is needed"}
    assert clock.now() == T0 + 120 + 300  # both verify timeouts, nothing more
    result = [r for r in engine.audit.read() if r["kind"] == "result"][0]
    assert result["decision"] == "escalated" and result["duration_s"] == 420


def test_failed_action_is_not_verified_and_the_ladder_goes_on():
    engine, _, runner, _ = ladder_engine(
        {"mem_used_pct": [(0, 50.0)], "error_rate": [(0, 0.0)]},
        results={1: ActionResult(ok=False, exit_code=3, error="exit code 3")})
    d = engine.handle(event())
    assert d.run.steps[0].verified is None and d.run.steps[0].status == "failed"
    assert d.run.recovered_by == "scale"


def test_failed_checkpoint_stops_the_ladder():
    text = """
    version: 1
    defaults: {mode: auto}
    playbooks:
      - name: p
        cause: memory_leak
        steps:
          - checkpoint: {name: conf, paths: [/nonexistent/ftml-test]}
          - exec: [/bin/risky]
    """
    engine, _, runner, notes = ladder_engine({}, text=text)
    engine.actions = LocalActions(points=None, notifier=notes)
    d = engine.handle(event())
    assert [s.kind for s in d.run.steps] == ["checkpoint", "escalate"]
    assert "checkpoints need a state folder" in d.run.steps[0].result.error
    assert d.run.outcome == "escalated"


def test_verify_without_reader_or_with_a_broken_one_fails_safely():
    engine, _, _, _ = ladder_engine({})
    engine.metrics = None
    d = engine.handle(event())
    assert d.run.outcome == "escalated"
    assert "no metric reader" in d.run.steps[0].verification["summary"]

    class Broken:
        def latest(self, entity, metric):
            raise RuntimeError("prometheus down")

    engine2, _, _, _ = ladder_engine({})
    engine2.metrics = Broken()
    d2 = engine2.handle(event())
    assert "prometheus down" in d2.run.steps[0].verification["summary"]


def test_playbook_escalate_message_and_notify_steps():
    text = """
    version: 1
    defaults: {mode: auto}
    playbooks:
      - name: p
        cause: memory_leak
        escalate: "page the {cause} owners about {entity}"
        steps:
          - notify: "looking at {entity}"
          - exec: [/bin/fix]
            verify: [mem_used_pct < 1]
    """
    engine, _, _, notes = ladder_engine({"mem_used_pct": [(0, 50.0)]}, text=text)
    engine.actions = LocalActions(notifier=notes)
    d = engine.handle(event())
    assert notes.sent[0] == ("notify", "looking at web-1")
    assert notes.sent[-1] == ("escalate", "page the memory_leak owners about web-1")
    assert d.run.steps[1].status == "failed"  # /bin/fix does not exist
    assert "cannot run /bin/fix" in d.run.steps[1].result.error


# --------------------------------------------------------------------------- real exec


def exec_engine(tmp_path, argv, timeout="30s", env="", clock=None):
    text = f"""
    version: 1
    defaults: {{mode: auto, step_timeout: {timeout}}}
    playbooks:
      - name: p
        cause: memory_leak
        steps:
          - exec:
              argv: {json.dumps(argv)}
              {env}
    """
    clock = clock or FakeClock(T0)
    notes = Notes()
    engine = RecoveryEngine(playbooks(text), clock=clock, state_dir=tmp_path / "state",
                            notifier=notes)
    return engine


NASTY = ["web; touch {pwned}", "$(touch {pwned})", "`touch {pwned}`", "$(reboot)",
         "web' && touch {pwned} '", "a b\tc\nd", "{{cause}}", "*", "~root", "web|id>{pwned}"]


@pytest.mark.parametrize("name", NASTY)
def test_entity_is_one_literal_argument_never_shell(tmp_path, name):
    pwned = tmp_path / "pwned"
    entity = name.replace("{pwned}", str(pwned)).replace("{{cause}}", "{cause}")
    out = tmp_path / "argv.json"
    engine = exec_engine(tmp_path, [PY, str(HELPERS / "argv_dump.py"), str(out), "{entity}",
                                    "--host={entity}", "{cause}"])
    d = engine.handle(event(entity=entity))
    assert d.run.steps[0].result.exit_code == 0, d.run.steps[0].result
    assert json.loads(out.read_text()) == [entity, f"--host={entity}", "memory_leak"]
    assert not pwned.exists()
    audit_argv = json.loads([r for r in engine.audit.read() if r["kind"] == "step"][0]
                            ["arguments"])["argv"]
    assert audit_argv[3] == entity


def test_the_documented_injection_attempts_stay_literal(tmp_path):
    out = tmp_path / "argv.json"
    existed = Path("/tmp/pwned").exists()
    engine = exec_engine(tmp_path, [PY, str(HELPERS / "argv_dump.py"), str(out), "{entity}"])
    for entity in ("web; touch /tmp/pwned", "$(reboot)"):
        engine.handle(event(entity=entity, at=T0))
        assert json.loads(out.read_text()) == [entity]
        engine.clock.advance(3600)  # past the cooldown for the next one
    assert Path("/tmp/pwned").exists() == existed


@pytest.mark.parametrize("entity", ["-rf", "--delete-everything"])
def test_option_like_values_are_refused(tmp_path, entity):
    out = tmp_path / "argv.json"
    engine = exec_engine(tmp_path, [PY, str(HELPERS / "argv_dump.py"), str(out), "{entity}"])
    d = engine.handle(event(entity=entity))
    step = d.run.steps[0]
    assert not step.result.ok and "would read as an option" in step.result.error
    assert not out.exists()


def test_numbers_may_be_negative(tmp_path):
    out = tmp_path / "argv.json"
    engine = exec_engine(tmp_path, [PY, str(HELPERS / "argv_dump.py"), str(out), "{score}"])
    d = engine.handle(dataclasses.replace(event(), score=-0.5))
    assert d.run.steps[0].result.ok and json.loads(out.read_text()) == ["-0.5"]


def test_timeout_stops_the_process_and_its_children(tmp_path):
    childfile = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(childfile)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    engine = exec_engine(tmp_path, [PY, "-c", code], timeout="1500ms")
    started = time.monotonic()
    d = engine.handle(event())
    step = d.run.steps[0]
    assert time.monotonic() - started < 20
    assert step.result.timed_out and step.status == "timeout"
    assert "timed out after 1.5s" in step.result.error
    child = int(childfile.read_text())
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_output_is_bounded_and_exit_code_kept(tmp_path):
    code = "import sys; print('x' * 100000); print('the end'); sys.exit(3)"
    engine = exec_engine(tmp_path, [PY, "-c", code])
    step = engine.handle(event()).run.steps[0]
    assert step.result.exit_code == 3 and step.status == "failed"
    assert len(step.result.output.encode()) <= 4096 and step.result.output.endswith("the end\n")
    row = [r for r in engine.audit.read() if r["kind"] == "step"][0]
    assert row["exit_code"] == 3 and len(row["output"]) <= 4096 and row["reason"] == "exit_code"
    assert row["duration_s"] > 0


def test_secret_env_reaches_the_process_but_not_the_audit(tmp_path, monkeypatch):
    monkeypatch.setenv("OPS_TOKEN", "tok-3xec-s3cret")
    seen = tmp_path / "seen"
    code = f"import os; open({str(seen)!r}, 'w').write(os.environ['TOKEN']); print(os.environ['TOKEN'])"
    engine = exec_engine(tmp_path, [PY, "-c", code], env="env: {TOKEN: {env: OPS_TOKEN}}")
    d = engine.handle(event())
    assert d.run.steps[0].result.ok
    assert seen.read_text() == "tok-3xec-s3cret"
    engine.close()
    assert_secret_absent(tmp_path / "state", "tok-3xec-s3cret")
    step = [r for r in read_audit(tmp_path / "state") if r["kind"] == "step"][0]
    assert step["output"].strip() == "***"
    assert json.loads(step["arguments"])["env"] == {"TOKEN": "<env:OPS_TOKEN>"}


def assert_secret_absent(state_dir: Path, secret: str):
    rows = read_audit(state_dir)
    assert secret not in json.dumps(rows)
    for path in state_dir.glob("state.db*"):  # the database and its WAL, byte by byte
        assert secret.encode() not in path.read_bytes(), path


def test_real_process_is_restarted_by_a_real_exec_action(tmp_path):
    pidfile = tmp_path / "svc.pid"
    first = subprocess.Popen([PY, str(HELPERS / "sleeper.py"), str(pidfile)],
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
        old = int(pidfile.read_text())
        assert old == first.pid

        class ProcessReader:
            """'up' is 1 while the pid in the pidfile is a live process other than the old."""

            def latest(self, entity, metric):
                pid = int(pidfile.read_text())
                return float(pid != old and alive(pid))

        text = f"""
        version: 1
        defaults: {{mode: auto}}
        templates:
          restart: [{PY}, {HELPERS / 'restart.py'}, "{{entity}}", {pidfile}]
        playbooks:
          - name: restart-service
            cause: memory_leak
            steps:
              - restart:
                timeout: 30s
                verify: [up == 1]
        """
        engine = RecoveryEngine(playbooks(text), clock=FakeClock(T0), metrics=ProcessReader(),
                                state_dir=tmp_path / "state")
        d = engine.handle(event(entity="svc-1"))
        assert d.run.outcome == "recovered", d.run.steps[0]
        new = int(pidfile.read_text())
        assert new != old and alive(new)
        assert first.wait(timeout=10) == -signal.SIGTERM
        assert "restarted svc-1" in d.run.steps[0].result.output
    finally:
        for pid in {first.pid, int(pidfile.read_text()) if pidfile.exists() else first.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        first.wait(timeout=10)


# --------------------------------------------------------------------------- real http


class Recorder(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.hits.append({"path": self.path, "headers": dict(self.headers),
                                 "body": json.loads(body or b"null")})
        if self.path.startswith("/fail"):
            self.send_response(500)
            payload = b"boom"
        elif self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "/ok")
            payload = b""
        else:
            if self.path.startswith("/slow"):
                time.sleep(2)
            self.send_response(200)
            # Echo the headers back, secret included: the audit must still not show it.
            payload = json.dumps({"you_sent": dict(self.headers)}).encode()
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    srv.hits = []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def http_engine(tmp_path, server, path, extra="", timeout="10s"):
    url = f"http://127.0.0.1:{server.server_address[1]}{path}"
    text = f"""
    version: 1
    defaults: {{mode: auto, step_timeout: {timeout}}}
    playbooks:
      - name: page
        cause: memory_leak
        steps:
          - http:
              url: "{url}"
              headers:
                Authorization: {{env: PAGER_TOKEN}}
                X-Entity: "{{entity}}"
              {extra}
    """
    return RecoveryEngine(playbooks(text), clock=FakeClock(T0), state_dir=tmp_path / "state",
                          notifier=Notes())


def test_http_posts_json_with_secret_header_that_never_reaches_the_audit(tmp_path, server,
                                                                         monkeypatch):
    monkeypatch.setenv("PAGER_TOKEN", "Bearer pg-7f3a-SECRET")
    engine = http_engine(tmp_path, server, "/ok/{entity}",
                         extra='json: {host: "{entity}", why: "{cause} {confidence:.2f}"}')
    d = engine.handle(event(entity="web/1?x"))
    step = d.run.steps[0]
    assert step.result.ok and step.result.exit_code == 200 and d.run.outcome == "recovered"
    (hit,) = server.hits
    assert hit["path"] == "/ok/web%2F1%3Fx"  # a value cannot leave its path segment
    assert hit["headers"]["Authorization"] == "Bearer pg-7f3a-SECRET"
    assert hit["headers"]["X-Entity"] == "web/1?x"
    assert hit["body"] == {"host": "web/1?x", "why": "memory_leak 0.90"}
    assert "***" in step.result.output  # the echo was scrubbed
    engine.close()
    assert_secret_absent(tmp_path / "state", "pg-7f3a-SECRET")
    args = json.loads([r for r in read_audit(tmp_path / "state") if r["kind"] == "step"][0]
                      ["arguments"])
    assert args["headers"]["Authorization"] == "<env:PAGER_TOKEN>"


def test_http_default_body_is_the_event(tmp_path, server, monkeypatch):
    monkeypatch.setenv("PAGER_TOKEN", "t")
    engine = http_engine(tmp_path, server, "/ok")
    engine.handle(event())
    body = server.hits[0]["body"]
    assert body["event"]["entity"] == "web-1" and body["playbook"] == "page"


def test_http_errors_fail_the_step(tmp_path, server, monkeypatch):
    monkeypatch.setenv("PAGER_TOKEN", "t")
    step = http_engine(tmp_path, server, "/fail").handle(event()).run.steps[0]
    assert not step.result.ok and step.result.exit_code == 500 and step.result.output == "boom"


def test_http_redirects_are_refused(tmp_path, server, monkeypatch):
    monkeypatch.setenv("PAGER_TOKEN", "t")
    step = http_engine(tmp_path, server, "/redirect").handle(event()).run.steps[0]
    assert not step.result.ok and step.result.exit_code == 302
    assert [h["path"] for h in server.hits] == ["/redirect"]  # the token went nowhere else


def test_http_timeout(tmp_path, server, monkeypatch):
    monkeypatch.setenv("PAGER_TOKEN", "t")
    step = http_engine(tmp_path, server, "/slow", timeout="300ms").handle(event()).run.steps[0]
    assert not step.result.ok and step.result.timed_out


def test_http_missing_secret_sends_nothing(tmp_path, server, monkeypatch):
    monkeypatch.delenv("PAGER_TOKEN", raising=False)
    step = http_engine(tmp_path, server, "/ok").handle(event()).run.steps[0]
    assert not step.result.ok and "PAGER_TOKEN is not set" in step.result.error
    assert server.hits == []


def test_notify_and_escalate_can_post(tmp_path, server, monkeypatch):
    monkeypatch.setenv("PAGER_TOKEN", "t")
    url = f"http://127.0.0.1:{server.server_address[1]}/page"
    text = f"""
    version: 1
    defaults: {{mode: auto}}
    playbooks:
      - name: p
        cause: memory_leak
        steps:
          - escalate: {{message: "wake up: {{entity}}", url: "{url}",
                        headers: {{Authorization: {{env: PAGER_TOKEN}}}}}}
    """
    notes = Notes()
    engine = RecoveryEngine(playbooks(text), clock=FakeClock(T0), notifier=notes)
    d = engine.handle(event())
    assert d.run.outcome == "escalated" and notes.sent == [("escalate", "wake up: web-1")]
    assert server.hits[0]["body"]["kind"] == "escalate"
    assert server.hits[0]["body"]["message"] == "wake up: web-1"


# --------------------------------------------------------------------------- recovery points


@pytest.fixture
def app(tmp_path):
    """A config folder and a file: the things a checkpoint protects."""
    conf = tmp_path / "app" / "conf.d"
    conf.mkdir(parents=True)
    (conf / "a.conf").write_text("a = 1\n")
    (conf / "b.conf").write_text("b = 2\n")
    (conf / "sub").mkdir()
    (conf / "sub" / "c.conf").write_text("c = 3\n")
    os.symlink("a.conf", conf / "link.conf")
    main = tmp_path / "app" / "app.yaml"
    main.write_text("release: 41\n")
    return conf, main


def damage(conf: Path, main: Path):
    (conf / "a.conf").write_text("a = broken\n")
    (conf / "b.conf").unlink()
    (conf / "new.conf").write_text("surprise\n")
    main.write_text("release: 42\n")


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith((".ftml-stage-", ".ftml-old-"))]


def test_checkpoint_is_versioned_with_checksums_and_rollback_restores(tmp_path, app):
    conf, main = app
    before = (_digest(conf), _digest(main))
    points = RecoveryPoints(tmp_path / "store")
    cp = points.create("app", [conf, main], at=T0)
    assert (cp.version, cp.good, cp.created) == ("v000001", False, T0)
    manifest = json.loads((cp.path / "manifest.json").read_text())
    assert manifest["entries"][0]["digest"]["files"]["sub/c.conf"]
    assert manifest["entries"][0]["digest"]["links"] == {"link.conf": "a.conf"}
    assert not list((tmp_path / "store" / "app").glob(".tmp-*"))
    with pytest.raises(ActionError, match="no checkpoint of 'app' is marked good"):
        points.rollback("app")
    points.mark_good("app")
    assert points.latest_good("app").version == "v000001"
    damage(conf, main)
    points.create("app", [conf, main])  # a later, not-good checkpoint of the damage
    restored = points.rollback("app")
    assert restored.version == "v000001"
    assert (_digest(conf), _digest(main)) == before
    assert leftovers(tmp_path) == []
    # A named version restores that one, good or not.
    points.rollback("app", "v000002")
    assert main.read_text() == "release: 42\n"


def test_rollback_refuses_a_damaged_checkpoint_and_touches_nothing(tmp_path, app):
    conf, main = app
    points = RecoveryPoints(tmp_path / "store")
    cp = points.create("app", [conf, main], good=True)
    damage(conf, main)
    after = (_digest(conf), _digest(main))
    (cp.path / "data" / "0" / "a.conf").write_text("tampered\n")
    with pytest.raises(ActionError, match="damaged"):
        points.rollback("app")
    assert (_digest(conf), _digest(main)) == after


class Interrupt(Exception):
    pass


def interrupt_at(phase):
    def hook(at):
        if at == phase:
            raise Interrupt(at)
    return hook


def test_interrupted_rollback_leaves_old_or_new_and_finishes_on_rerun(tmp_path, app):
    conf, main = app
    old = (_digest(conf), _digest(main))
    points = RecoveryPoints(tmp_path / "store")
    points.create("app", [conf, main], good=True)
    damage(conf, main)
    damaged = (_digest(conf), _digest(main))
    points.hook = interrupt_at("swapped:0")
    with pytest.raises(Interrupt):
        points.rollback("app")
    # Half-way: the folder is already the checkpoint's, the file still the damaged one.
    assert _digest(conf) == old[0] and _digest(main) == damaged[1]
    points.hook = None
    points.rollback("app")
    assert (_digest(conf), _digest(main)) == old
    assert leftovers(tmp_path) == [] and not (tmp_path / "store/app/.rollback.json").exists()


def test_rollback_interrupted_while_staging_changes_nothing(tmp_path, app):
    conf, main = app
    points = RecoveryPoints(tmp_path / "store", hook=interrupt_at("staged"))
    points.create("app", [conf, main], good=True)
    damage(conf, main)
    damaged = (_digest(conf), _digest(main))
    with pytest.raises(Interrupt):
        points.rollback("app")
    assert (_digest(conf), _digest(main)) == damaged
    assert leftovers(tmp_path)  # staged copies exist until the next call
    assert points.resume() == ["app"]
    assert (_digest(conf), _digest(main)) == damaged and leftovers(tmp_path) == []


def test_rollback_killed_half_way_in_another_process(tmp_path, app):
    conf, main = app
    old = (_digest(conf), _digest(main))
    RecoveryPoints(tmp_path / "store").create("app", [conf, main], good=True)
    damage(conf, main)
    damaged = (_digest(conf), _digest(main))
    code = textwrap.dedent(f"""
        import os, signal
        from ftml.recover import RecoveryPoints
        def die(phase):
            if phase == "swapped:0":
                os.kill(os.getpid(), signal.SIGKILL)
        RecoveryPoints({str(tmp_path / 'store')!r}, hook=die).rollback("app")
    """)
    proc = subprocess.run([PY, "-c", code], timeout=120, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _digest(conf) in (old[0], damaged[0]) and _digest(main) in (old[1], damaged[1])
    assert (tmp_path / "store/app/.rollback.json").exists()
    RecoveryPoints(tmp_path / "store").resume("app")
    assert (_digest(conf), _digest(main)) == old and leftovers(tmp_path) == []


def test_rollback_without_atomic_exchange_recovers_from_a_crash_between_renames(
        tmp_path, app, monkeypatch):
    from ftml.recover import points as store

    conf, main = app
    old = _digest(conf)
    points = RecoveryPoints(tmp_path / "store")
    points.create("app", [conf], good=True)
    damage(conf, main)
    monkeypatch.setattr(store, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def crash_on_second_rename(src, dst):
        if ".ftml-stage-" in str(src):
            raise Interrupt("power cut")
        real_rename(src, dst)

    monkeypatch.setattr(store.os, "rename", crash_on_second_rename)
    with pytest.raises(Interrupt):
        points.rollback("app")
    assert not conf.exists()  # the one moment the fallback cannot avoid; resume repairs it
    monkeypatch.setattr(store.os, "rename", real_rename)
    points.resume("app")
    assert _digest(conf) == old and leftovers(tmp_path) == []


def test_checkpoint_errors_and_pruning(tmp_path, app):
    conf, main = app
    points = RecoveryPoints(tmp_path / "store", keep=2)
    with pytest.raises(ActionError, match="does not exist"):
        points.create("app", [tmp_path / "missing"])
    with pytest.raises(ActionError, match="bad checkpoint name"):
        points.create("../escape", [main])
    points.create("app", [main], good=True)
    for _ in range(3):
        points.create("app", [main])
    versions = [cp.version for cp in points.checkpoints("app")]
    assert versions == ["v000001", "v000003", "v000004"]  # the good one is kept
    with pytest.raises(ActionError, match="no checkpoint app/v000002"):
        points.get("app", "v000002")


def test_engine_checkpoint_and_rollback_steps(tmp_path, app):
    conf, main = app
    text = f"""
    version: 1
    defaults: {{mode: auto}}
    playbooks:
      - name: undo-deploy
        cause: bad_deploy
        steps:
          - checkpoint: {{name: bad-release, paths: [{main}]}}
          - rollback: {{name: release}}
            verify: [error_rate < 0.01]
    """
    clock = FakeClock(T0)
    engine = RecoveryEngine(playbooks(text), clock=clock, state_dir=tmp_path / "state",
                            metrics=ScriptedReader(clock, {"error_rate": [(0, 0.001)]}))
    engine.points.create("release", [main], good=True)
    main.write_text("release: 42\n")
    d = engine.handle(event(cause="bad_deploy"))
    assert d.run.outcome == "recovered" and d.run.recovered_by == "rollback"
    assert main.read_text() == "release: 41\n"
    bad = engine.points.checkpoints("bad-release")[0]
    assert (bad.path / "data" / "0").read_text() == "release: 42\n"


# --------------------------------------------------------------------------- approvals

APPROVE = """
version: 1
defaults: {mode: approve, approval_timeout: 30m, verify: {timeout: 1m, interval: 10s}}
playbooks:
  - name: leak
    cause: memory_leak
    steps:
      - exec: [/bin/restart, "{entity}"]
        verify: [mem_used_pct < 70]
"""


def approve_engine(tmp_path, text=APPROVE, clock=None):
    clock = clock or FakeClock(T0)
    runner = FakeRunner()
    engine = RecoveryEngine(playbooks(text), clock=clock, state_dir=tmp_path / "state",
                            actions=runner,
                            metrics=ScriptedReader(clock, {"mem_used_pct": [(0, 40.0)]}))
    return engine, clock, runner


def test_approval_runs_the_ladder_once(tmp_path):
    engine, clock, runner = approve_engine(tmp_path)
    d = engine.handle(event())
    assert d.decision == "pending" and d.approval_id and runner.calls == []
    assert [a.id for a in engine.pending()] == [d.approval_id]
    clock.advance(60)
    ran = engine.approve(d.approval_id, by="alice")
    assert (ran.decision, ran.reason, ran.approval_id) == ("act", "approved", d.approval_id)
    assert ran.run.outcome == "recovered" and len(runner.calls) == 1
    with pytest.raises(ActionError, match="is done, not pending"):
        engine.approve(d.approval_id)
    kinds = [(r["kind"], r["decision"]) for r in engine.audit.read()]
    assert kinds == [("decision", "pending"), ("approval", "approved"), ("decision", "act"),
                     ("step", "ok"), ("result", "recovered")]


def test_approval_expires(tmp_path):
    engine, clock, runner = approve_engine(tmp_path)
    d = engine.handle(event())
    clock.advance(30 * 60)
    assert engine.poll() == [] and engine.pending() == []
    with pytest.raises(ActionError, match="is expired"):
        engine.approve(d.approval_id)
    assert ("approval", "expired") in [(r["kind"], r["decision"]) for r in engine.audit.read()]
    assert runner.calls == []
    # The entity is free again: the next event asks anew.
    assert engine.handle(event()).decision == "pending"


def test_approve_from_another_process_then_engine_polls(tmp_path):
    engine, clock, runner = approve_engine(tmp_path)
    d = engine.handle(event())
    items, text = pending_approvals(tmp_path / "state")
    assert [a.id for a in items] == [d.approval_id] and d.approval_id in text
    approval, line = approve(tmp_path / "state", d.approval_id, by="bob", now=T0 + 5)
    assert line.startswith(f"approved {d.approval_id}: leak on web-1")
    assert (approval.status, approval.by, approval.event.entity) == ("approved", "bob", "web-1")
    # A second engine on the same state stands for the watch loop in another process.
    other, _, other_runner = approve_engine(tmp_path, clock=clock)
    decisions = other.poll()
    assert [x.reason for x in decisions] == ["approved"] and len(other_runner.calls) == 1
    assert engine.poll() == []  # runs once only


def test_reject_and_unknown_ids(tmp_path):
    engine, _, runner = approve_engine(tmp_path)
    d = engine.handle(event())
    approval, line = reject(tmp_path / "state", d.approval_id, now=T0)
    assert approval.status == "rejected" and line.startswith("rejected")
    with pytest.raises(ActionError, match="is rejected"):
        engine.approve(d.approval_id)
    with pytest.raises(ActionError, match="no approval 'nope'"):
        engine.approve("nope")
    with pytest.raises(ConfigError, match="no state database"):
        approve(tmp_path / "elsewhere", "x")


def test_approval_refused_when_the_playbook_changed(tmp_path):
    engine, clock, _ = approve_engine(tmp_path)
    d = engine.handle(event())
    changed, _, runner = approve_engine(tmp_path, text=APPROVE.replace("/bin/restart",
                                                                       "/bin/reboot"),
                                        clock=clock)
    with pytest.raises(ActionError, match="changed after approval"):
        changed.approve(d.approval_id)
    assert runner.calls == []


# --------------------------------------------------------------------------- state


def test_state_survives_a_restart_and_round_trips(tmp_path):
    clock = FakeClock(T0)
    pbs = playbooks(DECIDE)
    reader = ScriptedReader(clock, {"mem_used_pct": [(0, 50.0)]})
    first = RecoveryEngine(pbs, clock=clock, state_dir=tmp_path, metrics=reader,
                           actions=FakeRunner())
    assert first.handle(event()).decision == "act"
    state = first.state_dict()
    first.close()
    clock.advance(60)
    second = RecoveryEngine(pbs, clock=clock, state_dir=tmp_path, metrics=reader,
                            actions=FakeRunner())
    assert second.handle(event()).reason == "cooldown"
    fresh = RecoveryEngine(pbs, clock=clock, metrics=reader, actions=FakeRunner())
    fresh.load_state(json.loads(json.dumps(state)))
    assert fresh.handle(event()).reason == "cooldown"
    assert fresh.state_dict()["runs"][0]["outcome"] == "recovered"
    with pytest.raises(ConfigError):
        fresh.load_state({"runs": []})


def test_old_runs_are_forgotten():
    clock = FakeClock(T0)
    engine = RecoveryEngine(playbooks(DECIDE), clock=clock, actions=FakeRunner(),
                            metrics=ScriptedReader(clock, {"mem_used_pct": [(0, 50.0)]}))
    for day in range(10):
        clock.set(T0 + day * 86400)
        assert engine.handle(event(at=clock.now())).decision == "act"
    assert len(engine.state_dict()["runs"]) == 1
    assert len([r for r in engine.audit.read() if r["kind"] == "result"]) == 10  # audit keeps all


def test_unknown_mode_is_refused():
    with pytest.raises(ConfigError, match="unknown mode"):
        RecoveryEngine(playbooks(DECIDE), mode="yolo")


def test_clocks():
    clock = FakeClock("2024-05-01T10:00:00Z")
    assert clock.now() == T0
    clock.sleep(5)
    clock.advance(1.5)
    assert clock.now() == T0 + 6.5 and clock.slept == [5]
    real = SystemClock()
    assert abs(real.now() - time.time()) < 5
    real.sleep(0)


# --------------------------------------------------------------------------- replay


def metric_frame(entity="web-1", high_until_min=10, minutes=120, start=T0):
    times = pd.date_range(pd.Timestamp(start, unit="s", tz="UTC"), periods=minutes, freq="1min")
    mem = np.where(np.arange(minutes) < high_until_min, 95.0, 50.0)
    return pd.DataFrame({"timestamp": times, "entity": entity, "mem_used_pct": mem,
                         "error_rate": 0.001})


def test_frame_reader_reads_at_clock_time():
    clock = FakeClock(T0)
    reader = FrameMetricReader(metric_frame(high_until_min=3), clock)
    assert reader.latest("web-1", "mem_used_pct") == 95.0
    clock.set(T0 + 3 * 60 + 30)
    assert reader.latest("web-1", "mem_used_pct") == 50.0
    assert reader.latest("web-2", "mem_used_pct") is None
    assert reader.latest("web-1", "nope") is None
    clock.set(T0 - 1)
    assert reader.latest("web-1", "mem_used_pct") is None
    clock.set(T0 + 10 * 3600)  # long after the data: stale, so missing
    assert reader.latest("web-1", "mem_used_pct") is None
    with pytest.raises(ConfigError, match="no column 'entity'"):
        FrameMetricReader(pd.DataFrame({"timestamp": []}), clock)


REPLAY = """
version: 1
defaults: {mode: dry_run, cooldown: 30m, verify: {interval: 1m}}
playbooks:
  - name: leak
    cause: memory_leak
    steps:
      - restart:
        verify: {all: [mem_used_pct < 70], timeout: 5m}
      - scale_out:
        verify: {all: [mem_used_pct < 70], timeout: 10m}
templates:
  restart: [/bin/restart, "{entity}"]
  scale_out: [/bin/scale, "{entity}"]
"""


def test_replay_reports_what_would_run_and_time_to_recovery():
    later = T0 + 3 * 3600
    frames = pd.concat([metric_frame("web-1", high_until_min=10),
                        metric_frame("web-2", high_until_min=90),
                        metric_frame("web-1", high_until_min=0, start=later, minutes=30)])
    events = [event("web-1", at=T0), event("web-2", at=T0 + 30),
              event("web-1", at=T0 + 600),  # same incident, within cooldown
              event("web-3", cause="disk_full", at=T0 + 60),
              event("web-1", at=later, confidence=0.2)]
    incidents = pd.DataFrame({
        "entity": ["web-1", "web-2", "web-9"],
        "start": pd.to_datetime([T0, T0, T0], unit="s", utc=True),
        "end": pd.to_datetime([T0 + 900, T0 + 5400, T0 + 600], unit="s", utc=True),
    })
    started = time.monotonic()
    result = replay(events, frames, playbooks(REPLAY), incidents=incidents)
    assert time.monotonic() - started < 30
    by_entity = {(d.entity, d.at): d for d in result.decisions}
    first = by_entity[("web-1", T0)]
    # The engine's own decision in the file's mode; the ladder it stands for is rehearsed.
    assert (first.decision, first.reason, first.mode) == ("dry_run", "dry_run", "dry_run")
    assert first.run.recovered_by == "scale_out" and first.run.recovered_at == T0 + 600
    assert by_entity[("web-2", T0 + 30)].run.outcome == "escalated"
    # The third event comes within the cooldown after web-1's dry run.
    assert by_entity[("web-1", T0 + 600)].reason == "cooldown"
    assert by_entity[("web-3", T0 + 60)].reason == "no_playbook"
    assert by_entity[("web-1", later)].reason == "low_confidence"

    inc = {r["entity"]: r for r in result.incidents}
    assert inc["web-1"]["recovered"] and inc["web-1"]["time_to_recovery_s"] == 600
    assert inc["web-2"]["outcome"] == "escalated" and not inc["web-2"]["recovered"]
    assert inc["web-9"]["outcome"] == "missed"
    s = result.summary
    assert (s["events"], s["acted"], s["recovered"], s["escalated"]) == (5, 2, 1, 1)
    assert s["skip_reasons"]["no_playbook"] == 1
    assert s["success_rate"] == pytest.approx(1 / 3)
    assert s["median_time_to_recovery_s"] == 600

    text = str(result)
    assert "restart > scale_out" in text and "success rate 33%" in text
    assert "median time to recovery 10m" in text
    frame = result.to_frame()
    assert list(frame["decision"]).count("dry_run") == 2


def test_replay_without_incidents_and_with_a_reader():
    clock = FakeClock()
    reader = FrameMetricReader(metric_frame(high_until_min=0), clock)
    result = replay([event()], reader, playbooks(REPLAY), clock=clock)
    assert result.incidents == [] and "incidents" not in result.summary
    assert result.decisions[0].run.recovered_at == T0
    assert "1 event(s): 1 would run (0 act, 1 dry_run, 0 pending approval)" in str(result)


MODES = """
version: 1
defaults: {mode: dry_run, cooldown: 1m, verify: {interval: 1m, timeout: 5m}}
playbooks:
  - name: leak
    cause: memory_leak
    mode: approve
    steps:
      - exec: [/bin/restart, "{entity}"]
        verify: [mem_used_pct < 70]
  - name: disk
    cause: disk_full
    steps:
      - exec: [/bin/clean, "{entity}"]
        verify: [mem_used_pct < 70]
"""


@pytest.mark.parametrize("mode,expected", [
    (None, {"memory_leak": ("pending", "approval_required"), "disk_full": ("dry_run", "dry_run")}),
    ("dry-run", {"memory_leak": ("dry_run", "dry_run"), "disk_full": ("dry_run", "dry_run")}),
    ("auto", {"memory_leak": ("act", "auto"), "disk_full": ("act", "auto")}),
])
def test_replay_decides_by_the_engines_mode_rules(mode, expected):
    frames = pd.concat([metric_frame("web-1", high_until_min=0),
                        metric_frame("web-2", high_until_min=0)])
    events = [event("web-1", cause="memory_leak"), event("web-2", cause="disk_full")]
    result = replay(events, frames, playbooks(MODES), mode=mode)
    got = {d.cause: (d.decision, d.reason) for d in result.decisions}
    assert got == expected
    # The same as the engine decides on its own, in that mode.
    engine = RecoveryEngine(playbooks(MODES), clock=FakeClock(T0), actions=FakeRunner(),
                            mode=mode)
    try:
        live = {e.cause: (d.decision, d.reason) for e in events
                for d in [engine.handle(e)]}
    finally:
        engine.close()
    assert live == expected
    # Whatever the decision, the ladder it stands for is simulated: verify passes at once.
    assert all(d.run is not None and d.run.outcome == "recovered" for d in result.decisions)


def test_replay_counts_only_the_right_playbook_as_recovered():
    frames = pd.concat([metric_frame("web-1", high_until_min=0),
                        metric_frame("web-2", high_until_min=0),
                        metric_frame("web-3", high_until_min=0)])
    # web-1 leaks memory but is diagnosed disk_full: cleaning its disk "verifies", wrongly.
    events = [event("web-1", cause="disk_full"), event("web-2", cause="memory_leak"),
              event("web-3", cause="disk_full", at=T0 + 3000)]  # no incident: a false alarm
    incidents = pd.DataFrame({
        "entity": ["web-1", "web-2"], "cause": ["memory_leak", "memory_leak"],
        "start": pd.to_datetime([T0, T0], unit="s", utc=True),
        "end": pd.to_datetime([T0 + 600, T0 + 600], unit="s", utc=True)})
    result = replay(events, frames, playbooks(MODES), incidents=incidents, mode="auto")
    inc = {r["entity"]: r for r in result.incidents}
    assert inc["web-1"]["outcome"] == "wrong_playbook" and not inc["web-1"]["recovered"]
    assert inc["web-1"]["playbook"] == "disk" and inc["web-1"]["time_to_recovery_s"] is None
    assert inc["web-2"]["outcome"] == "recovered" and inc["web-2"]["time_to_recovery_s"] == 0
    s = result.summary
    assert (s["incidents"], s["incidents_recovered"], s["success_rate"]) == (2, 1, 0.5)
    assert (s["wrong_playbook"], s["actions_without_incident"]) == (1, 1)
    assert ("wrong actions: 1 incident(s) got another cause's playbook, 1 run(s) on events "
            "of no incident") in str(result)


def test_replay_times_are_never_negative_and_cells_never_nan():
    # An event that opened an hour before the incident (the model fits badly): its ladder
    # verified at once, on the normal metrics of then, so it did nothing for the incident.
    frames = metric_frame("web-1", high_until_min=0, minutes=180)
    events = [event("web-1", cause="disk_full", at=T0, minutes=70),
              event("web-2", cause="memory_leak", confidence=float("nan"), at=T0 + 60)]
    incidents = pd.DataFrame({
        "entity": ["web-1", "web-2"], "cause": ["disk_full", None],
        "start": pd.to_datetime([T0 + 3600, T0], unit="s", utc=True),
        "end": pd.to_datetime([T0 + 4200, T0 + 600], unit="s", utc=True)})
    result = replay(events, frames, playbooks(MODES), incidents=incidents, mode="auto")
    inc = {r["entity"]: r for r in result.incidents}
    assert inc["web-1"]["outcome"] == "acted_before"
    assert inc["web-1"]["time_to_recovery_s"] is None
    assert inc["web-2"]["cause"] is None
    for row in result.incidents:
        assert row["time_to_recovery_s"] is None or row["time_to_recovery_s"] >= 0
    assert all(r["recovered_after_s"] is None or r["recovered_after_s"] >= 0
               for r in result.rows())
    text = str(result)
    assert "nan" not in text.lower() and "-36" not in text


# --------------------------------------------------------------------------- target: root

ROOT_BOOK = """
version: 1
defaults: {mode: auto, min_confidence: 0.5, cooldown: 10m}
playbooks:
  - name: restart-root
    cause: latency
    target: root
    steps:
      - exec: [/usr/local/bin/restart-app, "{entity}"]
  - name: restart-here
    cause: cpu
    steps:
      - exec: [/usr/local/bin/restart-app, "{entity}"]
"""


def grouped(entity, cause="latency", group="g1", root="cart", at=T0):
    ev = event(entity=entity, cause=cause, at=at)
    ev.group, ev.suspects = group, [[root, 0.9], [entity, 0.5]]
    return ev


def test_target_root_acts_on_the_groups_top_suspect_and_symptoms_are_aftermath(tmp_path):
    runner = FakeRunner()
    clock = FakeClock(T0)
    engine = RecoveryEngine(playbooks(ROOT_BOOK), clock=clock, actions=runner,
                            metrics=ScriptedReader(clock, {}), state_dir=tmp_path / "state")
    first = engine.handle(grouped("frontend"))  # a caller alerts first
    assert first.decision == "act" and first.entity == "cart"
    assert runner.calls[0][1]["entity"] == "cart"  # the action ran on the root
    clock.advance(60)
    # Another symptom of the same incident: its root is already being recovered.
    again = engine.handle(grouped("checkout"))
    assert again.decision == "skip" and again.entity == "cart"
    # A symptom whose playbook acts where it alerts: not the top suspect, so not acted on.
    here = engine.handle(grouped("checkout", cause="cpu"))
    assert (here.decision, here.reason) == ("skip", "symptom")
    assert "incident g1" in here.detail and "root cart" in here.detail
    # Ranked first itself (the ranking changed) while its group's root is being recovered:
    # the recovery's aftermath.
    late = engine.handle(grouped("checkout", cause="cpu", root="checkout"))
    assert (late.decision, late.reason) == ("skip", "aftermath")
    assert "incident g1" in late.detail and "cart" in late.detail
    assert len(runner.calls) == 1
    # Another incident is not held back by this one.
    other = engine.handle(grouped("payment", cause="cpu", group="g2", root="payment"))
    assert other.decision == "act"
    groups = {r["group_id"] for r in engine.audit.read() if r["kind"] == "decision"}
    assert groups == {"g1", "g2"}
    engine.close()


def test_only_the_groups_top_suspect_is_acted_on_by_a_playbook_that_acts_where_it_alerts(
        tmp_path):
    # No run in the group yet: the caller's event (ranked second) is a symptom whatever its
    # playbook, the root's own event is acted on, and the audit names the group of each.
    runner = FakeRunner()
    clock = FakeClock(T0)
    engine = RecoveryEngine(playbooks(ROOT_BOOK), clock=clock, actions=runner,
                            metrics=ScriptedReader(clock, {}), state_dir=tmp_path / "state")
    caller = engine.handle(grouped("frontend", cause="cpu", root="cart"))
    assert (caller.decision, caller.reason, caller.entity) == ("skip", "symptom", "frontend")
    assert caller.detail == "a symptom of incident g1; root cart (its top suspect)"
    assert runner.calls == []
    root = engine.handle(grouped("cart", cause="cpu", root="cart"))
    assert root.decision == "act" and runner.calls[0][1]["entity"] == "cart"
    # A false alarm ranked first is still not acted on.
    quiet = engine.handle(grouped("payment", cause="no_fault", group="g2", root="payment"))
    assert (quiet.decision, quiet.reason) == ("skip", "not_diagnosed")
    rows = [r for r in engine.audit.read() if r["kind"] == "decision"]
    assert [(r["entity"], r["reason"], r["group_id"]) for r in rows] == [
        ("frontend", "symptom", "g1"), ("cart", "auto", "g1"), ("payment", "not_diagnosed", "g2")]
    assert len(runner.calls) == 1
    engine.close()


@pytest.mark.parametrize("first_cause, acted", [
    ("no_fault", True),  # the wobble ranked first is healthy by its diagnosis: not the root
    ("unknown", False),  # a fault never seen may be the root: its symptom is not acted on
    (None, False),  # the top suspect's own event not decided yet: the ranking stands
])
def test_a_top_suspect_diagnosed_no_fault_does_not_make_a_fault_its_symptom(
        tmp_path, first_cause, acted):
    runner = FakeRunner()
    clock = FakeClock(T0)
    engine = RecoveryEngine(playbooks(ROOT_BOOK), clock=clock, actions=runner,
                            metrics=ScriptedReader(clock, {}), state_dir=tmp_path / "state")
    if first_cause is not None:
        wobble = engine.handle(grouped("cart", cause=first_cause, root="cart"))
        assert (wobble.decision, wobble.reason) == ("skip", "not_diagnosed")
    fault = engine.handle(grouped("frontend", cause="cpu", root="cart"))
    if acted:
        assert fault.decision == "act" and runner.calls[0][1]["entity"] == "frontend"
    else:
        assert (fault.decision, fault.reason) == ("skip", "symptom")
        assert fault.detail == "a symptom of incident g1; root cart (its top suspect)"
        assert runner.calls == []
    engine.close()


def test_the_root_passed_over_is_named_and_a_later_fault_of_the_healthy_entity_counts(tmp_path):
    runner = FakeRunner()
    clock = FakeClock(T0)
    engine = RecoveryEngine(playbooks(ROOT_BOOK), clock=clock, actions=runner,
                            metrics=ScriptedReader(clock, {}), state_dir=tmp_path / "state")
    engine.handle(grouped("cart", cause="no_fault", root="cart"))
    three = grouped("checkout", cause="cpu", root="cart")
    three.suspects = [["cart", 0.9], ["frontend", 0.7], ["checkout", 0.5]]
    skipped = engine.handle(three)
    assert (skipped.decision, skipped.reason) == ("skip", "symptom")
    assert skipped.detail == ("a symptom of incident g1; root frontend (its first suspect not "
                              "diagnosed no_fault; cart was)")
    # The wobbling entity now has a fault of its own in the group: a root again.
    assert engine.handle(grouped("cart", cause="cpu", root="cart", at=T0 + 60)).decision == "act"
    again = engine.handle(grouped("frontend", cause="cpu", root="cart", at=T0 + 120))
    assert (again.decision, again.reason) == ("skip", "symptom")
    assert again.detail == "a symptom of incident g1; root cart (its top suspect)"
    assert [c[1]["entity"] for c in runner.calls] == ["cart"]
    engine.close()


def test_target_root_without_a_group_acts_where_it_alerts():
    runner = FakeRunner()
    clock = FakeClock(T0)
    engine = RecoveryEngine(playbooks(ROOT_BOOK), clock=clock, actions=runner,
                            metrics=ScriptedReader(clock, {}))
    d = engine.handle(event(entity="frontend", cause="latency"))
    assert d.decision == "act" and runner.calls[0][1]["entity"] == "frontend"


def test_target_must_be_entity_or_root():
    with pytest.raises(PlaybookError, match="target must be one of entity, root"):
        playbooks(ROOT_BOOK.replace("target: root", "target: upstream"))
    book = playbooks(ROOT_BOOK)
    assert [p.target for p in book.playbooks] == ["root", "entity"]


def test_old_state_database_gains_the_group_columns(tmp_path):
    import sqlite3

    state = tmp_path / "state"
    state.mkdir()
    conn = sqlite3.connect(state / "state.db")
    conn.executescript("CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT "
                       "NULL, ts TEXT NOT NULL, kind TEXT NOT NULL, event_id TEXT, entity TEXT, "
                       "cause TEXT, confidence REAL, model_version TEXT, playbook TEXT, step "
                       "INTEGER, mode TEXT, decision TEXT NOT NULL, reason TEXT, detail TEXT, "
                       "action TEXT, arguments TEXT, exit_code INTEGER, output TEXT, duration_s "
                       "REAL, verified INTEGER, verification TEXT, approval_id TEXT);"
                       "CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, entity TEXT NOT "
                       "NULL, playbook TEXT NOT NULL, event_id TEXT, mode TEXT NOT NULL, started "
                       "REAL NOT NULL, deadline REAL NOT NULL, ended REAL, outcome TEXT);")
    conn.close()
    clock = FakeClock(T0)
    engine = RecoveryEngine(playbooks(ROOT_BOOK), clock=clock, actions=FakeRunner(),
                            metrics=ScriptedReader(clock, {}), state_dir=state)
    assert engine.handle(grouped("frontend")).decision == "act"
    assert engine.audit.read()[-1]["group_id"] == "g1"
    engine.close()


RECOVERED_BOOK = """
version: 1
defaults: {mode: auto, min_confidence: 0.5, cooldown: 1m, verify: {interval: 1m, timeout: 30m}}
playbooks:
  - name: leak
    cause: memory_leak
    steps:
      - exec: [/bin/restart, "{entity}"]
        verify: [recovered for 3 windows]
"""


def test_replay_reads_the_recovered_verify_from_the_events_it_replays():
    # A verify that names no metric: a model trained on other metrics can still be replayed.
    # It holds once the entity's event has ended (its last active window passed), as watch
    # answers it once the alert resolved: never before the event's end.
    frames = metric_frame("web-1", high_until_min=0)
    events = [event("web-1", cause="memory_leak", minutes=10)]
    incidents = pd.DataFrame({"entity": ["web-1"], "cause": ["memory_leak"],
                              "start": pd.to_datetime([T0], unit="s", utc=True),
                              "end": pd.to_datetime([T0 + 600], unit="s", utc=True)})
    result = replay(events, frames, playbooks(RECOVERED_BOOK), incidents=incidents)
    (d,) = result.decisions
    assert d.decision == "act" and d.run.outcome == "recovered"
    (row,) = result.incidents
    assert row["outcome"] == "recovered" and row["time_to_recovery_s"] >= 600


# --------------------------------------------------------------------------- package layout


#: ftml.recover's modules in flow order: each imports only from those before it, so the
#: runners and the file store never reach the engine, and the engine reaches the guards.
RECOVER_FLOW = ["results", "metrics", "templates", "points", "actions", "guards", "state",
                "approvals", "engine", "replays"]


def _recover_imports(path: Path) -> set[str]:
    import ast

    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
            else [])
        out.update(n.split(".")[2] for n in names if n.startswith("ftml.recover."))
    return out


def test_recover_modules_import_only_the_ones_before_them():
    package = Path(__file__).resolve().parents[1] / "ftml" / "recover"
    modules = sorted(p.stem for p in package.glob("*.py") if p.stem != "__init__")
    assert sorted(RECOVER_FLOW) == modules, "give each new module its place in RECOVER_FLOW"
    bad = {m: sorted(imp for imp in _recover_imports(package / f"{m}.py")
                     if RECOVER_FLOW.index(imp) >= RECOVER_FLOW.index(m))
           for m in RECOVER_FLOW}
    assert not any(bad.values()), f"imports against the flow: {bad}"
    assert _recover_imports(package / "engine.py") >= {"guards", "actions"}


def test_the_recover_flow_check_sees_a_backward_import(tmp_path):
    f = tmp_path / "points.py"
    f.write_text("def f():\n    from ftml.recover.engine import RecoveryEngine\n"
                 "import ftml.recover.results\n")
    assert _recover_imports(f) == {"engine", "results"}
