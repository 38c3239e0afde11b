"""The live lab's judging, without running the lab: the cascade (issue 18) is rated apart, a
run of the cascade alone rates no fault goal it has no figure for, and which alert detects a
fault."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from examples.live.lab import (  # noqa: E402
    CascadeResult,
    FaultResult,
    describe_cascade,
    detection,
    goals_met,
)

FAULTS = {"faults": 2, "detection_rate": 1.0, "diagnosis_accuracy": 1.0, "recovery_rate": 1.0,
          "mttr_median_s": 8.0, "wrong_actions": 0, "benign_actions": 0, "repeated_actions": 0}


def test_without_a_cascade_only_the_fault_goals_are_rated():
    goals = dict(goals_met(FAULTS))
    assert len(goals) == 7 and all(goals.values())
    assert not any(text.startswith("cascade") for text in goals)


def test_the_cascade_is_met_only_at_the_root_with_the_caller_untouched_and_recovered():
    ok = {"acted_on_root": True, "caller_actions": 0, "caller_recovered_after_s": 16.4,
          "grouped": True}
    goals = dict(goals_met({**FAULTS, "cascade": ok}))
    assert goals["cascade: acted on the root"] and goals["cascade: 0 actions on the caller"]
    assert goals["cascade: the caller recovered with the root"]
    assert goals["cascade: one incident group"]
    for bad in ({"acted_on_root": False}, {"caller_actions": 1},
                {"caller_recovered_after_s": None}, {"grouped": False}):
        goals = dict(goals_met({**FAULTS, "cascade": {**ok, **bad}}))
        assert not all(goals.values()), bad


def test_the_cascade_alone_rates_no_fault_goal():
    alone = {"faults": 0, "detection_rate": None, "diagnosis_accuracy": None,
             "recovery_rate": None, "mttr_median_s": None, "wrong_actions": 0,
             "benign_actions": 0, "repeated_actions": 0,
             "cascade": {"acted_on_root": True, "caller_actions": 0,
                         "caller_recovered_after_s": 3.0, "grouped": True}}
    goals = dict(goals_met(alone))
    assert all(goals.values()) and "all faults detected" not in goals


def test_the_cascade_line_says_where_it_acted_and_what_the_caller_got():
    r = FaultResult(index=0, kind="latency", entity="live/api-1", injected_at=100.0,
                    detected_at=107.0, action_at=113.0, playbook="latency-page.api-1",
                    actions=1)
    c = CascadeResult(fault=r, caller="live/front-1", caller_alerts=["x"],
                      caller_first_cause="latency", caller_recovered_at=116.0,
                      caller_skips=["symptom: a symptom of incident g1; root live/api-1"],
                      groups={"live/api-1": "g1", "live/front-1": "g1"})
    line = describe_cascade(c)
    assert c.grouped and c.acted_on_root
    assert "root api-1" in line and "caller front-1: alerted as latency, 0 action(s)" in line
    assert "skips: symptom" in line and "recovered +16.0s" in line
    assert "one incident group" in line


def _alert(id_, cause, revision=0, status="firing", entity="live/a", at=10.0):
    return {"id": id_, "cause": cause, "revision": revision, "status": status,
            "entity": entity, "seen_at": at}


@pytest.mark.parametrize("alerts, before, expected", [
    ([_alert("n", "memory_leak")], set(), ("n", "memory_leak", 10.0, "")),
    # a new alert named unknown still detects: the diagnosis is judged apart
    ([_alert("n", "unknown")], set(), ("n", "unknown", 10.0, "")),
    # another instance's alert, or a resolve, is not a detection
    ([_alert("n", "memory_leak", entity="live/b")], set(), None),
    ([_alert("o", "memory_leak", status="resolved")], set(), None),
    # the wobble's alert open at injection: its own first record is no detection ...
    ([_alert("o", "no_fault")], {"o"}, None),
    # ... nor a revision that still names no fault ...
    ([_alert("o", "unknown", revision=1)], {"o"}, None),
    # ... but its revision to a fault's cause is (the fault joined the wobble's event)
    ([_alert("o", "unknown", revision=1, at=11.0), _alert("o", "memory_leak", revision=2, at=12.0)],
     {"o"}, ("o", "memory_leak", 12.0, "joined the alert open at injection (revised to memory_leak)")),
    # a revision of an alert that opened after injection is not a second detection
    ([_alert("n", "memory_leak", revision=1)], set(), None),
])
def test_which_alert_detects_a_fault(alerts, before, expected):
    assert detection(alerts, "live/a", before) == expected
