"""Evaluation: the matching and figure functions on hand-made cases (table-driven), then
`evaluate` and `ftml evaluate` end to end on a small simulated fleet."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ftml import api
from ftml.cli import main
from ftml.diagnose import NO_FAULT, UNKNOWN
from ftml.evaluate import (
    BASELINES,
    RobustZScore,
    diagnosis_metrics,
    entity_days_of,
    evaluate,
    event_metrics,
    match_events,
    point_adjusted_f1,
    prf,
    random_point_adjusted_f1,
    window_metrics,
)
from ftml.events import Event
from ftml.features import STATS
from ftml.simulate import write_simulation
from tests.invariants import check_input_not_mutated

T0 = pd.Timestamp("2026-01-05T00:00:00Z")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "evaluation.md"


def _t(minutes: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(minutes=minutes)


def _ev(entity: str, a: float, b: float, cause: str = "x", top=()) -> Event:
    return Event(entity=entity, start=_t(a), end=_t(b), score=0.9, cause=cause,
                 top_causes=[(c, 0.3) for c in top])


def _incidents(rows) -> pd.DataFrame:
    return pd.DataFrame([(e, _t(a), _t(b), c) for e, a, b, c in rows],
                        columns=["entity", "start", "end", "cause"])


# --------------------------------------------------------------------------- matching


@pytest.mark.parametrize("event, found", [
    (("a", 10, 20), True),  # inside
    (("a", 0, 10), True),  # touches the start
    (("a", 24, 30), True),  # 4 min after the end: within the 5 min tolerance
    (("a", 26, 30), False),  # 6 min after: outside
    (("a", -20, 6), True),  # ends 4 min before the start
    (("a", -20, 4), False),  # ends 6 min before the start
    (("b", 10, 20), False),  # other entity
])
def test_match_events_overlap_with_tolerance(event, found):
    inc = _incidents([("a", 10, 20, "x")])
    assert bool(match_events([_ev(*event)], inc)[0, 0]) is found


def test_event_metrics_counts_recall_precision_false_alarms_and_delay():
    inc = _incidents([("a", 10, 20, "x"), ("a", 100, 120, "y"), ("b", 50, 60, "x")])
    events = [_ev("a", 12, 30, "x"), _ev("a", 200, 210, "x"), _ev("b", 48, 55, "y")]
    m = event_metrics(events, inc, entity_days=2.0)
    assert (m["incidents"], m["events"], m["found"], m["false_alarms"]) == (3, 3, 2, 1)
    assert m["event_recall"] == pytest.approx(2 / 3)
    assert m["event_precision"] == pytest.approx(2 / 3)
    assert m["false_alarms_per_entity_day"] == pytest.approx(0.5)
    assert m["delay_minutes_median"] == pytest.approx(1.0)  # delays 2 and 0 (floored)
    assert m["diagnosis_accuracy"] == pytest.approx(0.5)
    assert m["per_cause"]["x"] == {"incidents": 2, "found": 2, "right": 1}


def test_event_metrics_without_events_or_incidents():
    none = event_metrics([], _incidents([("a", 0, 1, "x")]), entity_days=1.0)
    assert none["event_recall"] == 0.0 and math.isnan(none["event_precision"])
    assert none["event_f1"] == 0.0
    empty = event_metrics([_ev("a", 0, 1)], _incidents([]), entity_days=1.0)
    assert math.isnan(empty["event_recall"]) and empty["false_alarms"] == 1


def test_entity_days_counts_rows_with_any_value():
    frame = pd.DataFrame({"entity": ["a"] * 4, "timestamp": [_t(i) for i in range(4)],
                          "m": [1.0, np.nan, 2.0, np.nan], "n": [np.nan, np.nan, 1.0, 3.0]})
    assert entity_days_of(frame, pd.Timedelta(hours=12)) == pytest.approx(1.5)


# --------------------------------------------------------------------------- window figures


@pytest.mark.parametrize("labels, flags, expected", [
    ([1, 1, 0, 0], [1, 0, 0, 0], (1.0, 0.5, 2 / 3)),
    ([1, 1, 0, 0], [1, 1, 1, 1], (0.5, 1.0, 2 / 3)),
    ([1, 0], [0, 0], (math.nan, 0.0, 0.0)),
    ([0, 0], [0, 0], (math.nan, math.nan, math.nan)),
])
def test_prf(labels, flags, expected):
    got = prf(np.array(labels, bool), np.array(flags, bool))
    for g, e in zip(got, expected, strict=True):
        assert (math.isnan(g) and math.isnan(e)) or g == pytest.approx(e)


def test_point_adjusted_f1_credits_a_whole_segment_for_one_flag():
    segment = np.array([-1, 0, 0, 0, 0, -1, 1, 1, -1])
    flags = np.array([0, 0, 1, 0, 0, 0, 0, 0, 0], bool)
    # segment 0 (4 windows) counts as flagged: tp 4, flagged 4, positives 6
    assert point_adjusted_f1(segment, flags) == pytest.approx(2 * 4 / (4 + 6))
    assert prf(segment >= 0, flags)[2] == pytest.approx(2 / 7)


def test_random_flags_reach_high_point_adjusted_f1_on_long_segments():
    # two long incidents in 10 000 windows, flags at a 1 % rate: point-adjusted F1 near 1
    segment = np.full(10_000, -1)
    segment[1000:3000], segment[6000:8000] = 0, 1
    flags = np.zeros(10_000, bool)
    flags[::100] = True
    assert random_point_adjusted_f1(segment, flags, seed=0) > 0.9
    assert prf(segment >= 0, flags)[2] < 0.05


def test_window_metrics_perfect_score_and_labels_by_window_end():
    inc = _incidents([("a", 10, 19, "x")])
    t = [_t(i) for i in range(40)]
    score = np.array([1.0 if 10 <= i <= 19 else 0.1 for i in range(40)])
    w = pd.DataFrame({"entity": "a", "timestamp": t, "score": score, "flag": score > 0.5})
    m = window_metrics(w, inc)
    assert m["positive_windows"] == 10
    assert m["flagged_fraction"] == pytest.approx(10 / 40)
    assert m["auc_pr"] == pytest.approx(1.0)
    assert m["auc_pr_random"] == pytest.approx(0.25)
    assert (m["point_precision"], m["point_recall"], m["point_f1"]) == (1.0, 1.0, 1.0)


# --------------------------------------------------------------------------- diagnosis figures


def test_diagnosis_metrics_confusion_abstained_top3_macro():
    true = ["a", "a", "b", "b", "c"]
    pred = ["a", "b", "b", UNKNOWN, "c"]
    top = [["a", "b"], ["b", "a"], ["b"], ["c", "a", "b"], ["c"]]
    m = diagnosis_metrics(true, pred, top)
    assert m["labels"] == ["a", "b", "c", UNKNOWN]
    assert m["confusion"] == [[1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["accuracy_answered"] == pytest.approx(3 / 4)
    assert m["abstained"] == pytest.approx(1 / 5)
    assert m["top3_accuracy"] == pytest.approx(1.0)
    # per-class F1: a 2/3, b 1/2, c 1
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)


def test_diagnosis_metrics_unknown_column_always_no_fault_per_cause_and_ece():
    m = diagnosis_metrics(["a", "b"], ["a", "a"], [["a"], ["a"]], [0.9, 0.5])
    assert m["labels"] == ["a", "b", UNKNOWN]  # unknown is a column even when never answered
    assert m["confusion"] == [[1, 0, 0], [1, 0, 0], [0, 0, 0]]
    assert m["per_cause"]["a"] == {"n": 1, "named": 2, "precision": 0.5, "recall": 1.0}
    assert m["per_cause"]["b"]["recall"] == 0.0 and math.isnan(m["per_cause"]["b"]["precision"])
    # bins: 0.9 right (gap 0.1), 0.5 wrong (gap 0.5) -> mean 0.3
    assert m["calibration_error"] == pytest.approx(0.3)
    m = diagnosis_metrics(["a", "a", "b"], ["a", NO_FAULT, UNKNOWN], [["a"]] * 3)
    assert m["labels"] == ["a", "b", NO_FAULT, UNKNOWN]
    assert m["confusion"][0] == [1, 0, 1, 0] and m["confusion"][1] == [0, 0, 0, 1]
    assert m["abstained"] == pytest.approx(2 / 3)  # no_fault is not an answer either


def test_event_metrics_count_false_alarms_named_a_cause():
    inc = _incidents([("a", 10, 19, "x")])
    events = [Event(entity="a", start=_t(12), end=_t(15), score=1.0, cause="x"),
              Event(entity="a", start=_t(40), end=_t(45), score=1.0, cause="x"),
              Event(entity="a", start=_t(60), end=_t(65), score=1.0, cause=NO_FAULT),
              Event(entity="b", start=_t(60), end=_t(65), score=1.0, cause=UNKNOWN)]
    m = event_metrics(events, inc, entity_days=1.0, tolerance=pd.Timedelta(0))
    assert m["false_alarms"] == 3
    assert (m["false_alarms_named"], m["false_alarms_named_by_cause"]) == (1, {"x": 1})
    assert m["false_alarms_named_share"] == pytest.approx(1 / 3)


def test_diagnosis_metrics_empty():
    m = diagnosis_metrics([], [], [])
    assert m["n"] == 0 and math.isnan(m["accuracy"]) and m["confusion"] == []


def test_robust_z_baseline_scores_largest_last_value_deviation():
    m = 3
    X = np.zeros((2, len(STATS) * m))
    last = STATS.index("last") * m
    X[0, last:last + m] = [0.5, -4.0, 1.0]
    X[1, 0:m] = 50.0  # a large mean does not count: only the last value
    assert RobustZScore(m).anomaly_score(X).tolist() == [4.0, 0.0]


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """3 entities: 4 days to train, then 1.5 unseen days (another seed) to judge."""
    tmp = tmp_path_factory.mktemp("evalfleet")
    write_simulation(tmp / "train", entities=3, days=4, seed=3, start=str(T0))
    write_simulation(tmp / "test", entities=3, days=1.5, seed=1003, fleet_seed=3,
                     start=str(T0 + pd.Timedelta(days=4)))
    api.train([tmp / "train" / "metrics.csv"], tmp / "model",
              incidents=tmp / "train" / "incidents.csv")
    return tmp


@pytest.fixture(scope="module")
def evaluation(fleet):
    return evaluate(fleet / "model", [fleet / "test" / "metrics.csv"],
                    fleet / "test" / "incidents.csv", baselines=True,
                    calibration_metrics=[fleet / "train" / "metrics.csv"],
                    calibration_incidents=fleet / "train" / "incidents.csv",
                    playbooks=Path(__file__).resolve().parent.parent / "playbooks.example.yaml")


def _documented_keys() -> set[str]:
    return set(re.findall(r"^\| `([a-z0-9_.]+)`", DOCS.read_text(), flags=re.M))


def test_report_has_exactly_the_documented_keys(evaluation):
    r = evaluation.report
    present = set()
    for k, v in r.items():  # two levels; maps keyed by data and the blocks are checked below
        if k in ("model", "data", "settings", "detection", "diagnosis", "recovery"):
            present |= {f"{k}.{kk}" for kk in v}
        else:
            present.add(k)
    assert present == _documented_keys()
    block = {"n", "accuracy", "accuracy_answered", "macro_f1", "top3_accuracy", "abstained",
             "calibration_error", "per_cause", "labels", "confusion"}
    assert set(r["diagnosis"]["detected_events"]) == block
    assert set(r["diagnosis"]["incident_windows"]) == block | {"no_windows"}
    for name in BASELINES:
        b = r["baselines"][name]
        assert set(b) == {"threshold", "calibration_false_alarms_per_entity_day", "detection",
                          "diagnosis"}
        assert set(b["detection"]) == set(r["detection"])
        assert set(r["comparison"][name]) == {"event_f1", "event_recall", "event_precision",
                                              "false_alarms_per_entity_day", "auc_pr",
                                              "point_f1", "diagnosis_accuracy_detected"}
    row = r["recovery"]["incidents"][0]
    assert set(row) == {"incident", "entity", "start", "end", "cause", "found", "event_id",
                        "diagnosed", "confidence", "playbook", "decision", "reason", "steps",
                        "outcome"}


def test_report_is_strict_json_and_figures_are_sane(evaluation):
    r = evaluation.report
    text = json.dumps(r, allow_nan=False)  # NaN would raise
    assert json.loads(text) == r
    d = r["detection"]
    assert d["incidents"] == r["data"]["incidents"] > 0
    assert 0 <= d["found"] <= d["incidents"]
    assert d["windows"] == r["data"]["windows"] > 0
    assert r["settings"]["match_tolerance_minutes"] == 5
    assert r["baselines"]["calibration"].startswith("training data")
    assert "IsolationForest is" in r["comparison"]["summary"]
    # the model finds incidents; a random score at the same budget finds (almost) none
    assert d["event_recall"] > r["baselines"]["random"]["detection"]["event_recall"]
    assert r["diagnosis"]["incident_windows"]["n"] + \
        r["diagnosis"]["incident_windows"]["no_windows"] == d["incidents"]


def test_baseline_is_scored_on_the_scale_it_was_calibrated_on(evaluation):
    """The robust z baseline scores raw |z| both in calibration and when scoring (not the
    forest's log-scaled view), so its threshold means the same in both."""
    model, data = evaluation.model, evaluation.data
    w = model.featurizer.transform(data)
    expected = RobustZScore(len(model.metrics)).anomaly_score(w.X)
    got = evaluation.runs["robust_z"].windows
    order = np.lexsort((w.end_ns, w.entity.astype(str)))
    assert np.allclose(got["score"].to_numpy(), expected[order])
    thr = evaluation.report["baselines"]["robust_z"]["threshold"]
    assert np.quantile(expected, 0.5) < thr < expected.max()


def test_recovery_names_a_playbook_for_found_and_diagnosed_incidents(evaluation):
    rows = evaluation.report["recovery"]["incidents"]
    assert len(rows) == evaluation.report["data"]["incidents"]
    assert all(r["playbook"] is None for r in rows if not r["found"])
    ran = [r for r in rows if r["playbook"]]
    assert ran, "some found incident should have a playbook that would run"
    assert all(r["steps"] and r["decision"] in ("act", "dry_run", "pending") for r in ran)


def test_same_input_same_figures_and_incidents_not_mutated(fleet, evaluation):
    inc = evaluation.incidents.copy()
    runs = []
    check_input_not_mutated(
        lambda i: runs.append(evaluate(fleet / "model", [fleet / "test" / "metrics.csv"], i)),
        inc)
    again = runs[0].report
    for key in ("detection", "diagnosis", "data"):
        assert again[key] == evaluation.report[key]
    assert again["baselines"] is None and again["comparison"] is None


def test_cli_evaluate_writes_json_and_exits_zero(fleet, tmp_path):
    out = tmp_path / "report.json"
    res = CliRunner().invoke(main, [
        "evaluate", "--model", str(fleet / "model"), "--metrics",
        str(fleet / "test" / "metrics.csv"), "--incidents", str(fleet / "test" / "incidents.csv"),
        "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "event recall" in res.output and "point-adjusted F1" in res.output
    # point-adjusted F1 is never printed without the random figure right under it
    lines = res.output.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("point-adjusted F1"))
    assert "random flags" in lines[i + 1]
    report = json.loads(out.read_text())
    assert report["report_version"] == 1 and report["baselines"] is None


@pytest.mark.parametrize("case", ["unknown_entity", "no_model", "bad_metrics"])
def test_cli_evaluate_bad_input_is_one_line_and_exit_2(fleet, tmp_path, case):
    model, metrics = fleet / "model", fleet / "test" / "metrics.csv"
    incidents = fleet / "test" / "incidents.csv"
    if case == "unknown_entity":
        incidents = tmp_path / "inc.csv"
        incidents.write_text("entity,start,end,cause\nnope,2026-01-09T00:00:00Z,"
                             "2026-01-09T01:00:00Z,x\n")
    elif case == "no_model":
        model = tmp_path / "missing"
    else:
        metrics = tmp_path / "m.csv"
        metrics.write_text("timestamp,entity,cpu_pct\nnot a time,a,1\n")
    res = CliRunner().invoke(main, ["evaluate", "--model", str(model), "--metrics",
                                    str(metrics), "--incidents", str(incidents)])
    assert res.exit_code == 2, res.output
    assert res.output.count("\n") == 1 and res.output.startswith("ftml: error:")


def test_grouping_metrics_count_groups_and_right_top_suspects():
    from ftml.evaluate import grouping_metrics

    t = pd.Timestamp("2026-01-01T00:00:00Z")
    evs = [Event(entity=e, start=t, end=t, score=0.9, group=g, suspects=[[top, 0.9]], id=e)
           for e, g, top in (("a", "g1", "a"), ("b", "g1", "a"), ("c", "g2", "x"))]
    got = grouping_metrics(evs, np.array([0, 1, 2, -1]))  # incident 4 not found
    assert got == {"groups": 2, "top_suspect_is_incident_entity": 1 / 3}
    assert grouping_metrics(evs, np.array([-1]))["top_suspect_is_incident_entity"] is None
