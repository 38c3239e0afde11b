"""The live chaos lab, short and sped up (0.5 s steps): five real instances of the example
service under load, a model trained on their own history (their figures plus ftml's ``local``
source), ``ftml watch --mode auto`` as its own process over them, and three faults injected
one at a time: a memory leak, a bad config change and slow responses.

Each must be detected, diagnosed, acted on once with its playbook (a real restart, a rollback
of the config to its last good recovery point, a page) and verified recovered; the audit
trail must say so; and nothing the lab started may be left running, also when the lab fails.
The full run (12 faults, all four kinds) is ``make chaos`` / ``bench/bench_chaos.py``; speed
is measured there, not here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from examples.live.chaos import run  # noqa: E402
from examples.live.lab import GOOD_CONFIG, Lab, Settings  # noqa: E402

# Excluded from `make test` until it is reliable under load: a clean-clone CI run once
# diagnosed the bad-config fault as latency. `make chaos-test` runs it.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.chaos]

KINDS = ("memory_leak", "bad_config", "latency")
# Five instances: more normal history per second of test, which the detector needs more than
# anything; three faults of each kind in training, so that the diagnoser's confidence cut
# (grouped cross-validation) has every cause in every fold.
SETTINGS = Settings(step=0.5, services=5, kinds=KINDS, train_per_kind=3,
                    parallel_training=True, lead_steps=32, hold_steps=8, gap_steps=6,
                    tail_steps=20, deadline_steps=60)


def ps_lines(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if marker in line]


@pytest.fixture(scope="module")
def chaos(tmp_path_factory):
    root = tmp_path_factory.mktemp("chaos") / "lab"
    lines: list[str] = []
    out = run(SETTINGS, len(KINDS), root, log=lines.append)
    out["root"], out["log"] = root, lines
    return out


def records(out, **match):
    return [r for r in out["audit"] if all(r.get(k) == v for k, v in match.items())]


def test_every_fault_is_detected_diagnosed_acted_on_once_and_verified(chaos):
    results = chaos["results"]
    log = "\n".join(chaos["log"]) + chaos["report"]
    assert [r.kind for r in results] == list(KINDS), log
    for r in results:
        assert r.detected, f"{r.kind} not detected\n{log}"
        assert r.diagnosed_right, f"{r.kind} diagnosed {r.diagnosis}\n{log}"
        assert r.playbook and r.playbook.split(".")[0] in (
            "leak-restart", "config-rollback", "latency-page"), log
        assert r.actions == 1 and not r.wrong_action, log
        assert r.recovered, f"{r.kind}: {r.note}\n{log}"
    s = chaos["summary"]
    assert (s["wrong_actions"], s["repeated_actions"]) == (0, 0), log
    assert s["detection_rate"] == s["diagnosis_accuracy"] == s["recovery_rate"] == 1.0


def test_the_audit_trail_shows_a_real_restart_a_rollback_and_a_page(chaos):
    leak, config, slow = chaos["results"]
    # The restart: the supervisor script ran (argv, no shell) and verification passed.
    restart = records(chaos, kind="step", event_id=leak.event_id, action="restart")
    assert len(restart) == 1 and restart[0]["exit_code"] == 0 and restart[0]["verified"] == 1
    argv = json.loads(restart[0]["arguments"])["argv"]
    assert argv[1].endswith("restart.py") and argv[2].endswith("spec.json")
    assert "restarted" in restart[0]["output"]
    old, new = (int(x) for x in restart[0]["output"].split("restarted ")[1].split(",")[0]
                .split(" -> "))
    assert old != new
    # The rollback: the suspect config was kept, the last good one restored and verified.
    steps = records(chaos, kind="step", event_id=config.event_id)
    assert [s["action"] for s in steps] == ["checkpoint", "rollback"]
    assert steps[1]["verified"] == 1
    inst = config.entity.split("/")[-1]
    restored = json.loads((chaos["root"] / "services" / inst / "config.json").read_text())
    assert restored["upstream"] == GOOD_CONFIG["upstream"]
    # The page: notify and escalate reached the pager; the on-call fixed it; the lab verified.
    steps = records(chaos, kind="step", event_id=slow.event_id)
    assert [(s["action"], s["exit_code"]) for s in steps] == [("notify", 200), ("escalate", 200)]
    assert [p["kind"] for p in chaos["pages"] if p["event_id"] == slow.event_id] == \
        ["notify", "escalate"]
    assert slow.verified_by == "lab" and slow.operator_fixed_at is not None
    # One decision to act per fault, each recorded before its steps.
    for r in chaos["results"]:
        acts = records(chaos, kind="decision", event_id=r.event_id, decision="act")
        assert len(acts) == 1
        assert acts[0]["id"] < min(x["id"] for x in records(chaos, event_id=r.event_id,
                                                             kind="step"))


def test_nothing_is_left_running(chaos):
    assert chaos["left_running"] == []
    assert ps_lines(str(chaos["root"])) == []


def test_a_failing_lab_still_stops_everything(tmp_path):
    root = tmp_path / "lab"
    settings = Settings(step=0.5, services=2)
    with pytest.raises(RuntimeError, match="boom"):
        with Lab(root, settings, log=lambda m: None) as lab:
            lab.inject(lab.instances[0], "cpu_hog")
            lab.restart(lab.instances[1])
            assert len(lab.processes()) == 3  # two instances and the load generator
            raise RuntimeError("boom")
    assert lab.processes() == []
    assert ps_lines(str(root)) == []
    assert lab.loadgen is None and lab.pager is None
