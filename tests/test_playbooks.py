"""Playbook schema: the example file, matching, and errors that name the line and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd
import pytest

from ftml.errors import PlaybookError
from ftml.events import Event
from ftml.playbooks import (
    SIMULATOR_CAUSES,
    SIMULATOR_METRICS,
    Backoff,
    ExecAction,
    HttpAction,
    NotifyAction,
    SecretRef,
    load_playbooks,
    parse_playbooks,
    render,
    template_fields,
    validate,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "playbooks.example.yaml"


def event(cause="memory_leak", entity="web-1", confidence=0.9, **kw) -> Event:
    t = pd.Timestamp("2024-05-01T10:00:00Z")
    return Event(entity=entity, start=t, end=t + pd.Timedelta("10min"), score=0.8, cause=cause,
                 confidence=confidence, status="open", id="ev1", **kw)


def parse(text: str, **kw):
    return parse_playbooks(textwrap.dedent(text), source="playbooks.yaml", **kw)


# --------------------------------------------------------------------------- the example


def test_example_covers_every_simulator_cause_with_simulator_metrics():
    pbs = load_playbooks(EXAMPLE, known_metrics=SIMULATOR_METRICS)
    assert set(SIMULATOR_CAUSES) | {"unknown"} <= set(pbs.causes)
    for cause in SIMULATOR_CAUSES:
        matched = pbs.match(event(cause=cause, confidence=0.95))
        assert matched is not None and matched.cause == cause
        assert any(s.verify for s in matched.steps), f"{cause} has no verified step"
    unknown = pbs.match(event(cause="unknown", confidence=0.0))
    assert unknown is not None
    assert {s.action.kind for s in unknown.steps} <= {"notify", "escalate"}
    assert pbs.defaults.mode == "dry_run"  # an example must not act by default


def test_example_exercises_every_action_kind():
    pbs = load_playbooks(EXAMPLE)
    kinds = {s.action.kind for p in pbs.playbooks for s in p.steps}
    assert kinds == {"exec", "http", "checkpoint", "rollback", "notify", "escalate"}
    assert {"restart", "scale_out", "repair"} <= set(pbs.templates)


def test_describe_lists_cause_then_steps():
    pbs, text = validate(EXAMPLE)
    assert text == pbs.describe()
    assert text.splitlines()[0].startswith(f"{EXAMPLE}: 8 playbook(s), mode dry_run")
    assert "memory_leak -> restart-leaking-service" in text
    assert "  1. restart: " in text and "[verify mem_used_pct < 70 and gc_pause_ms < 200" in text
    assert "bad_deploy -> roll-back-bad-deploy (min_confidence 0.8, mode approve)" in text
    # A ladder that does not end in escalate says what happens when it is exhausted.
    pbs = parse("""
        version: 1
        playbooks:
          - {name: p, cause: c, steps: [{exec: [/bin/true]}]}
    """)
    assert "then: escalate (default message)" in pbs.describe()


# --------------------------------------------------------------------------- schema


MINIMAL = """
    version: 1
    defaults:
      mode: auto
      min_confidence: 0.7
      cooldown: 5m
      max_attempts: 2
      window: 2h
      backoff: {initial: 30s, factor: 3, max: 10m}
      step_timeout: 20s
      verify: {timeout: 2m, interval: 5s}
      approval_timeout: 15m
    guards:
      max_actions_per_hour: 4
      maintenance:
        - {entity: "db-*", start: 2024-05-01T00:00:00Z, end: 2024-05-01T02:00:00Z}
      silences:
        - {cause: disk_full, start: "2024-05-02 00:00", end: "2024-05-03 00:00", reason: known}
    templates:
      restart: [/usr/bin/systemctl, restart, "app@{entity}.service"]
    playbooks:
      - name: leak
        cause: memory_leak
        verify: [mem_used_pct < 70]
        steps:
          - restart:
            timeout: 45s
          - exec:
              argv: [/bin/echo, "{entity}", "{confidence:.2f}"]
              env: {TOKEN: {env: OPS_TOKEN}, HOST: "{entity}"}
            verify: {all: ["error_rate <= 0.01", "latency_p95_ms<300"], timeout: 30s}
          - http:
              url: https://ops.example/api/{entity}/restart
              headers: {Authorization: {env: OPS_TOKEN}, X-Cause: "{cause}"}
              json: {entity: "{entity}", n: 3, tags: ["{cause}"]}
          - escalate: {message: "help {entity}", url: https://pager.example/hook}
"""


def test_full_schema_is_read_into_dataclasses():
    pbs = parse(MINIMAL)
    d = pbs.defaults
    assert (d.mode, d.min_confidence, d.cooldown, d.max_attempts, d.window) == (
        "auto", 0.7, 300, 2, 7200)
    assert d.backoff == Backoff(30, 3, 600)
    assert (d.step_timeout, d.verify.timeout, d.verify.interval, d.approval_timeout) == (
        20, 120, 5, 900)
    g = pbs.guards
    assert g.max_actions_per_hour == 4 and g.one_action_per_entity
    assert g.maintenance[0].covers("db-1", "x", pd.Timestamp("2024-05-01T01:00Z").timestamp())
    assert not g.maintenance[0].covers("web-1", "x", pd.Timestamp("2024-05-01T01:00Z").timestamp())
    assert g.silences[0].covers("any", "disk_full", pd.Timestamp("2024-05-02T12:00Z").timestamp())
    assert not g.silences[0].covers("any", "cpu", pd.Timestamp("2024-05-02T12:00Z").timestamp())

    leak = pbs.playbooks[0]
    restart, execute, http, escalate = leak.steps
    assert isinstance(restart.action, ExecAction) and restart.action.template == "restart"
    assert restart.name == "restart" and restart.timeout == 45
    assert [str(c) for c in restart.verify.conditions] == ["mem_used_pct < 70"]  # playbook's
    assert execute.timeout == 20 and execute.verify.timeout == 30
    assert [str(c) for c in execute.verify.conditions] == [
        "error_rate <= 0.01", "latency_p95_ms < 300"]
    assert dict(execute.action.env) == {"TOKEN": SecretRef("OPS_TOKEN"), "HOST": "{entity}"}
    assert isinstance(http.action, HttpAction)
    assert dict(http.action.headers)["Authorization"] == SecretRef("OPS_TOKEN")
    assert http.action.body == {"entity": "{entity}", "n": 3, "tags": ["{cause}"]}
    assert isinstance(escalate.action, NotifyAction) and escalate.action.escalate
    assert escalate.verify is None  # notifications are never verified


def test_conditions_compare_and_missing_values_never_hold():
    pbs = parse(MINIMAL)
    lt, le = pbs.playbooks[0].steps[1].verify.conditions[1], \
        pbs.playbooks[0].steps[1].verify.conditions[0]
    assert lt.holds(299.9) and not lt.holds(300)
    assert le.holds(0.01) and not le.holds(0.02)
    assert not lt.holds(None) and not lt.holds(float("nan"))


def test_match_is_first_in_file_order_with_entity_and_confidence():
    pbs = parse("""
        version: 1
        defaults: {min_confidence: 0.5}
        playbooks:
          - {name: web-leak, cause: memory_leak, entity: "web-*", min_confidence: 0.9,
             steps: [{exec: [/bin/true]}]}
          - {name: any-leak, cause: memory_leak, steps: [{exec: [/bin/true]}]}
          - {name: catch-all, cause: "*", min_confidence: 0.0, steps: [notify]}
    """)
    assert pbs.match(event(entity="web-1", confidence=0.95)).name == "web-leak"
    assert pbs.match(event(entity="web-1", confidence=0.6)).name == "any-leak"
    assert pbs.match(event(entity="db-1", confidence=0.95)).name == "any-leak"
    assert pbs.match(event(entity="db-1", confidence=0.1)).name == "catch-all"
    assert pbs.match(event(cause="disk_full", confidence=0.0)).name == "catch-all"
    assert [p.name for p in pbs.candidates(event(entity="web-1"))] == [
        "web-leak", "any-leak", "catch-all"]


def test_no_match_without_playbook_for_cause():
    pbs = parse("""
        version: 1
        playbooks: [{name: p, cause: disk_full, steps: [escalate]}]
    """)
    assert pbs.match(event(cause="memory_leak")) is None


def test_relative_programs_and_checkpoint_paths_are_relative_to_the_file(tmp_path):
    path = tmp_path / "pb.yaml"
    path.write_text(textwrap.dedent("""
        version: 1
        playbooks:
          - name: p
            cause: c
            steps:
              - checkpoint: {name: conf, paths: [conf/app.yaml]}
              - exec: [./ops/fix.sh, "{entity}"]
              - exec: [systemctl, status]
    """))
    pbs = load_playbooks(path)
    cp, fix, status = pbs.playbooks[0].steps
    assert cp.action.paths == (str(tmp_path / "conf/app.yaml"),)
    assert fix.action.argv == (str(tmp_path / "ops/fix.sh"), "{entity}")
    assert status.action.argv == ("systemctl", "status")  # found on PATH, as written


def test_merge_keys_and_anchors_work():
    pbs = parse("""
        version: 1
        templates:
          restart: [/bin/true]
        playbooks:
          - &base {name: a, cause: x, steps: [restart]}
          - <<: *base
            name: b
            cause: y
    """)
    assert [p.cause for p in pbs.playbooks] == ["x", "y"]


def test_digest_changes_with_what_a_playbook_does():
    one = parse("version: 1\nplaybooks: [{name: p, cause: c, steps: [{exec: [/bin/a]}]}]")
    two = parse("version: 1\nplaybooks: [{name: p, cause: c, steps: [{exec: [/bin/b]}]}]")
    again = parse("version: 1\n\n\nplaybooks: [{name: p, cause: c, steps: [{exec: [/bin/a]}]}]")
    assert one.playbooks[0].digest != two.playbooks[0].digest
    assert one.playbooks[0].digest == again.playbooks[0].digest  # lines do not matter


def test_render_only_knows_event_fields_and_never_re_expands():
    fields = template_fields(event(entity="{cause} $(id)"), playbook="p")
    assert render("app@{entity}", fields) == "app@{cause} $(id)"
    assert render("{confidence:.1f}/{start}", fields) == "0.9/2024-05-01T10:00:00Z"
    with pytest.raises(KeyError):
        render("{entity.__class__}", fields)
    with pytest.raises(KeyError):
        render("{0}", fields)


def test_backoff_grows_and_is_capped():
    b = Backoff(initial=10, factor=2, max=35)
    assert [b.delay(n) for n in range(5)] == [0, 10, 20, 35, 35]


# --------------------------------------------------------------------------- errors

STEPS_OK = "steps: [{exec: [/bin/true]}]"

# (yaml, fragment of the message). The line marked `#!` is the line the error must name.
ERRORS = {
    "unknown action": ("""
        version: 1
        templates: {restart: [/bin/true]}
        playbooks:
          - {name: a, cause: a, steps: [restart]}
          - {name: b, cause: b, steps: [restart]}
          - name: c
            cause: c
            steps:
              - exce: [/bin/true]   #!
        """, "playbooks[2].steps[0]: unknown action 'exce' (did you mean 'exec'? use one of "
             "exec, http, checkpoint, rollback, notify, escalate, restart)"),
    "missing version": ("""
        playbooks: []   #!
        """, "missing 'version'"),
    "wrong version": ("""
        version: 2   #!
        playbooks: []
        """, "version: unsupported version 2"),
    "unknown top key": ("""
        version: 1
        playbook: []   #!
        """, "playbook: unknown key 'playbook' (did you mean 'playbooks'?"),
    "bad mode": ("""
        version: 1
        defaults:
          mode: yolo   #!
        playbooks: []
        """, "defaults.mode: unknown mode 'yolo' (use one of dry_run, approve, auto)"),
    "bad duration": ("""
        version: 1
        defaults:
          cooldown: soon   #!
        playbooks: []
        """, "defaults.cooldown: cannot read defaults.cooldown 'soon' (write e.g. 60s"),
    "confidence out of range": ("""
        version: 1
        defaults: {mode: auto,
          min_confidence: 1.5}   #!
        playbooks: []
        """, "defaults.min_confidence: must be between 0 and 1, got 1.5"),
    "argv as one string": ("""
        version: 1
        playbooks:
          - name: p
            cause: c
            steps:
              - exec: "systemctl restart {entity}"   #!
        """, "must be a list of arguments, not one string"),
    "program from placeholder": ("""
        version: 1
        playbooks:
          - name: p
            cause: c
            steps:
              - exec:
                - "{entity}"   #!
        """, "steps[0].exec[0]: the program may not come from a placeholder"),
    "unknown placeholder": ("""
        version: 1
        playbooks:
          - name: p
            cause: c
            steps:
              - exec: [/bin/echo, "{host}"]   #!
        """, "unknown placeholder '{host}'"),
    "attribute placeholder": ("""
        version: 1
        playbooks:
          - name: p
            cause: c
            steps:
              - exec: [/bin/echo, "{entity.__class__}"]   #!
        """, "unknown placeholder '{entity.__class__}'"),
    "positional placeholder": ("""
        version: 1
        playbooks:
          - name: p
            cause: c
            steps:
              - notify: "hi {}"   #!
        """, "unknown placeholder '{}'"),
    "bad condition": ("""
        version: 1
        playbooks:
          - name: p
            cause: c
            steps:
              - exec: [/bin/true]
                verify:
                  - mem_used_pct is low   #!
        """, "verify[0]: cannot read condition 'mem_used_pct is low'"),
    "unknown metric": ("""
        version: 1
        playbooks:
          - name: p
            cause: c
            steps:
              - exec: [/bin/true]
                verify: [mem_use_pct < 70]   #!
        """, "unknown metric 'mem_use_pct' (did you mean 'mem_used_pct'?"),
    "duplicate key": ("""
        version: 1
        playbooks:
          - name: p
            cause: c
            cause: d   #!
            steps: []
        """, "playbooks[0].cause: duplicate key 'cause'"),
    "step after escalate": ("""
        version: 1
        playbooks:
          - name: p
            cause: c
            steps:
              - escalate
              - exec: [/bin/true]   #!
        """, "step after 'escalate' never runs"),
    "two actions in a step": ("""
        version: 1
        playbooks:
          - name: p
            cause: c
            steps:
              - exec: [/bin/true]
                notify: hi   #!
        """, "more than one action: exec, notify"),
    "duplicate name": ("""
        version: 1
        playbooks:
          - {name: p, cause: c, steps: [escalate]}
          - {name: p,   #!
             cause: d, steps: [escalate]}
        """, "playbooks[1].name: name 'p' is used twice"),
    "shadowed playbook": ("""
        version: 1
        playbooks:
          - {name: all, cause: c, steps: [escalate]}
          - {name: web, cause: c, entity: "web-*", steps: [escalate]}   #!
        """, "playbook 'web' never runs (playbooks[0] 'all' matches the same events first"),
    "window backwards": ("""
        version: 1
        guards:
          maintenance:
            - start: 2024-05-02T00:00:00Z
              end: 2024-05-01T00:00:00Z   #!
        playbooks: []
        """, "maintenance[0].end: end is not after start"),
    "bad secret name": ("""
        version: 1
        playbooks:
          - name: p
            cause: c
            steps:
              - http:
                  url: https://x.example/
                  headers:
                    Authorization: {env: "PAGER TOKEN"}   #!
        """, "'PAGER TOKEN' is not an environment variable name"),
    "url not http": ("""
        version: 1
        playbooks:
          - name: p
            cause: c
            steps:
              - http: file:///etc/passwd   #!
        """, "url 'file:///etc/passwd' is not http(s)"),
    "placeholder in host": ("""
        version: 1
        playbooks:
          - name: p
            cause: c
            steps:
              - http: {url: "https://{entity}.example/restart"}   #!
        """, "placeholders may not choose the scheme or host of a url"),
    "placeholder in checkpoint path": ("""
        version: 1
        playbooks:
          - name: p
            cause: c
            steps:
              - checkpoint:
                  name: conf
                  paths:
                    - "/etc/{entity}"   #!
        """, "paths may not use placeholders"),
    "template with arguments": ("""
        version: 1
        templates: {restart: [/bin/true]}
        playbooks:
          - name: p
            cause: c
            steps:
              - restart: [now]   #!
        """, "template 'restart' takes no arguments"),
    "verify on notify": ("""
        version: 1
        playbooks:
          - name: p
            cause: c
            steps:
              - notify: hi
                verify: [cpu_pct < 1]   #!
        """, "a notify step is not verified"),
    "not yaml": ("""
        version: 1
        playbooks:
          - name: p
            cause: c: d   #!
        """, "not valid YAML: mapping values are not allowed here"),
    "missing steps": ("""
        version: 1
        playbooks:
          - name: p   #!
            cause: c
        """, "playbooks[0]: missing 'steps'"),
    "bad checkpoint name": ("""
        version: 1
        playbooks:
          - name: p
            cause: c
            steps:
              - rollback: ../../etc   #!
        """, "bad checkpoint name '../../etc'"),
}


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_errors_name_file_line_and_key(case):
    text, fragment = ERRORS[case]
    text = textwrap.dedent(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "#!" in t)
    with pytest.raises(PlaybookError) as info:
        parse_playbooks(text, source="playbooks.yaml", known_metrics=SIMULATOR_METRICS)
    message = str(info.value)
    assert message.startswith(f"playbooks.yaml: line {line}"), message
    assert fragment in message, message
    assert "\n" not in message


def test_error_has_the_documented_shape():
    _, fragment = ERRORS["unknown action"]
    text = textwrap.dedent(ERRORS["unknown action"][0])
    with pytest.raises(PlaybookError) as info:
        parse_playbooks(text, source="playbooks.yaml")
    assert str(info.value).startswith(
        "playbooks.yaml: line 10: playbooks[2].steps[0]: unknown action 'exce' (")
    assert isinstance(info.value, ValueError)  # callers may catch the builtin kind


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(PlaybookError, match="the file is empty"):
        load_playbooks(empty)
    with pytest.raises(PlaybookError, match="cannot read playbooks"):
        load_playbooks(tmp_path / "missing.yaml")


def test_simulator_names_agree_with_the_simulator():
    # playbooks may not import the simulator (module order), so its names are copied: check.
    simulate = pytest.importorskip("ftml.simulate")
    assert set(SIMULATOR_CAUSES) == set(simulate.CAUSES)
    assert set(SIMULATOR_METRICS) <= set(simulate.METRICS)


# --------------------------------------------------------------------------- one mode spelling


@pytest.mark.parametrize("written", ["dry_run", "dry-run"])
def test_both_spellings_of_dry_run_are_one_mode(written):
    pbs = parse(f"""
        version: 1
        defaults: {{mode: {written}}}
        playbooks:
          - {{name: p, cause: c, mode: {written}, {STEPS_OK}}}
    """)
    assert pbs.defaults.mode == "dry_run"
    assert pbs.playbooks[0].mode == "dry_run"
    from ftml.recover import RecoveryEngine

    engine = RecoveryEngine(pbs, mode=written)
    try:
        assert engine.mode == "dry_run"
    finally:
        engine.close()


@pytest.mark.parametrize("written", ["dry_run", "dry-run"])
def test_watch_takes_both_spellings_of_dry_run(written):
    from click.testing import CliRunner

    from ftml.cli import main

    # A missing model fails after the options are read: the mode itself is accepted.
    result = CliRunner().invoke(main, ["watch", "--model", "/nonexistent/model", "--source",
                                       "local", "--mode", written])
    assert result.exit_code == 2
    assert "--mode" not in result.output, result.output


# --------------------------------------------------------------------------- checked against a model


@pytest.fixture(scope="module")
def simulator_model(tmp_path_factory) -> Path:
    """A small model of a simulated fleet: it names the simulator's causes, reads its metrics."""
    from ftml import api
    from ftml.config import Config
    from ftml.simulate import write_simulation

    d = tmp_path_factory.mktemp("sim")
    write_simulation(d / "fleet", entities=4, days=3, seed=1)
    config = Config()
    config.detect.n_estimators = 25
    api.train([d / "fleet" / "metrics.csv"], d / "model",
              incidents=d / "fleet" / "incidents.csv", config=config)
    return d / "model"


def check(*args):
    from click.testing import CliRunner

    from ftml.cli import main

    return CliRunner().invoke(main, ["playbook", "check", *map(str, args)])


def test_the_example_checks_clean_against_a_simulator_model(simulator_model):
    result = check(EXAMPLE, "--model", simulator_model)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # no warning: every program exists and is executable


def test_the_examples_programs_only_say_what_they_would_do(tmp_path):
    import subprocess

    pbs = load_playbooks(EXAMPLE)
    programs = {s.action.argv[0] for p in pbs.playbooks for s in p.steps
                if isinstance(s.action, ExecAction)}
    assert len(programs) == 5
    for program in sorted(programs):
        run = subprocess.run([program, "web-1", "x"], capture_output=True, text=True,
                             cwd=tmp_path, timeout=10)
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith("ftml example: would "), run.stdout
        assert list(tmp_path.iterdir()) == []


def _with(tmp_path, old: str, new: str) -> Path:
    text = EXAMPLE.read_text()
    assert old in text
    path = tmp_path / "playbooks.yaml"
    path.write_text(text.replace(old, new).replace("./examples/ops/", f"{ROOT}/examples/ops/"))
    return path


def test_a_cause_the_model_never_names_is_refused(tmp_path, simulator_model):
    path = _with(tmp_path, "cause: memory_leak", "cause: memory_leek")
    assert check(path).exit_code == 0  # without a model nothing says it is wrong
    result = check(path, "--model", simulator_model)
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert line.startswith(f"ftml: error: {path}: line ")
    assert "'memory_leek'" in line and "did you mean 'memory_leak'?" in line


def test_a_metric_the_model_does_not_read_is_refused(tmp_path, simulator_model):
    path = _with(tmp_path, "mem_used_pct < 70", "mem_used_pc < 70")
    assert check(path).exit_code == 0
    result = check(path, "--model", simulator_model)
    assert result.exit_code == 2, result.output
    assert "unknown metric 'mem_used_pc'" in result.stderr
    assert "did you mean 'mem_used_pct'?" in result.stderr


def test_a_cause_without_playbook_is_a_warning(tmp_path, simulator_model):
    text = EXAMPLE.read_text()
    start = text.index("  - name: free-disk-space")
    end = text.index("  - name: recycle-connection-pool")
    path = tmp_path / "playbooks.yaml"
    path.write_text((text[:start] + text[end:]).replace("./examples/ops/",
                                                        f"{ROOT}/examples/ops/"))
    result = check(path, "--model", simulator_model)
    assert result.exit_code == 0, result.output
    assert result.stderr == (f"ftml: warning: {path}: no playbook for the model's cause(s) "
                             "disk_full\n")


def test_missing_and_non_executable_programs_are_warnings(tmp_path):
    plain = tmp_path / "plain.sh"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    path = tmp_path / "playbooks.yaml"
    path.write_text(textwrap.dedent(f"""
        version: 1
        playbooks:
          - name: a
            cause: c
            steps:
              - exec: [./missing.sh]
              - exec: [{plain}]
              - exec: [no-such-program-anywhere]
              - exec: [/bin/true]
    """))
    result = check(path)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"ftml: warning: {path}: line 7: program '{tmp_path / 'missing.sh'}' does not exist",
        f"ftml: warning: {path}: line 8: program '{plain}' is not executable",
        f"ftml: warning: {path}: line 9: program 'no-such-program-anywhere' is not on the PATH",
    ]


def test_score_warns_on_a_cause_the_model_never_names(tmp_path, simulator_model):
    from click.testing import CliRunner

    from ftml.cli import main

    path = _with(tmp_path, "cause: memory_leak", "cause: memory_leek")
    metrics = simulator_model.parent / "fleet" / "metrics.csv"
    result = CliRunner().invoke(main, ["score", "--model", str(simulator_model), "--metrics",
                                       str(metrics), "--out", str(tmp_path / "events.jsonl"),
                                       "--playbooks", str(path), "--quiet"])
    assert result.exit_code == 0, result.output
    warnings = [w for w in result.stderr.splitlines() if w.startswith("ftml: warning: ")]
    assert len(warnings) == 1 and "'memory_leek'" in warnings[0], result.stderr
