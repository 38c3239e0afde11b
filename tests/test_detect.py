import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.utils.estimator_checks import check_estimator

from ftml.detect import (
    AlarmThreshold,
    EventBuilder,
    EventRules,
    IsolationDetector,
    build_events,
    find_runs,
)
from tests.invariants import (
    check_input_not_mutated,
    check_persistence_round_trip,
    check_same_seed_same_result,
)

STEP = 60 * 10**9


def test_detector_passes_sklearn_estimator_checks():
    check_estimator(IsolationDetector(n_estimators=10, max_samples=32))


def test_detector_scores_outliers_higher_on_a_0_to_1_scale(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 4))
    det = IsolationDetector(n_estimators=50).fit(X)
    s = det.score_samples(np.vstack([X[:5], np.full((1, 4), 8.0)]))
    assert ((s > 0) & (s < 1)).all()
    assert s[-1] > s[:5].max()
    check_input_not_mutated(det.score_samples, X)
    check_same_seed_same_result(lambda: IsolationDetector(n_estimators=20),
                                lambda d: d.fit(X), lambda d: d.score_samples(X[:50]))
    check_persistence_round_trip(det, lambda d: d.score_samples(X[:50]), tmp_path)


RULES = EventRules(min_windows=2, of_windows=3, merge_gap=2, cooldown=0)


@pytest.mark.parametrize("flags, expected", [
    ("..........", []),
    ("...x......", []),  # one flag is not 2 of 3
    ("...xx.....", [(3, 4, 4)]),
    ("...x.x....", [(3, 5, 5)]),  # 2 of 3 with a hole
    ("...x..x...", []),  # too far apart
    ("..xx.xx...", [(2, 3, 6)]),  # active 3, 5, 6: gaps within merge_gap -> one event
    ("..xxx..xx..", [(2, 3, 4), (7, 8, 8)]),  # gap of 4 steps > merge_gap: two events
])
def test_find_runs_table(flags, expected):
    f = np.array([c == "x" for c in flags])
    assert find_runs(np.arange(len(f)), f, RULES) == expected


def test_find_runs_uses_time_not_window_count():
    # Windows 0, 1 and 10, 11 exist; flags on 1 and 10 are 9 steps apart: not 2 of 3.
    t = np.array([0, 1, 10, 11])
    f = np.array([False, True, True, False])
    assert find_runs(t, f, RULES) == []


def test_cooldown_suppresses_flapping():
    rules = EventRules(min_windows=1, of_windows=1, merge_gap=0, cooldown=5)
    scores = np.zeros(30)
    scores[[2, 5, 20]] = 1.0
    ev = build_events(np.array(["e"] * 30, dtype=object), np.arange(30) * STEP, scores, 0.5,
                      rules, STEP)
    assert [e.start_ns // STEP for e in ev] == [2, 20]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=200), st.integers(1, 50),
       st.integers(1, 3))
def test_event_builder_same_events_whatever_the_chunking(flags, chunk, n_ent):
    flags = np.array(flags)
    n = len(flags)
    ent = np.array([f"e{i % n_ent}" for i in range(n)], dtype=object)
    end_ns = (np.arange(n) // n_ent) * STEP
    scores = np.where(flags, 0.9, 0.1) + np.linspace(0, 0.01, n)
    rules = EventRules(min_windows=2, of_windows=4, merge_gap=3, cooldown=4)
    whole = build_events(ent, end_ns, scores, 0.5, rules, STEP)
    builder = EventBuilder(rules, 0.5, STEP, top_windows=1)
    parts = []
    for a in range(0, n, chunk):
        parts += builder.push(ent[a:a + chunk], end_ns[a:a + chunk], scores[a:a + chunk],
                              np.arange(a, min(n, a + chunk)))
    parts += builder.flush()
    key = sorted((e.entity, e.start_ns, e.end_ns, e.detected_ns, e.peak_score) for e in whole)
    assert sorted((e.entity, e.start_ns, e.end_ns, e.detected_ns, e.peak_score)
                  for e in parts) == key


def test_event_builder_keeps_the_top_windows_payload():
    scores = np.r_[np.zeros(5), [0.6, 0.9, 0.7, 0.8], np.zeros(20)]
    n = len(scores)
    builder = EventBuilder(EventRules(2, 3, 2, 0), 0.5, STEP, top_windows=2)
    payload = np.arange(n)[:, None] * 10.0
    ev = builder.push(np.array(["e"] * n, dtype=object), np.arange(n) * STEP, scores, payload)
    ev += builder.flush()
    assert len(ev) == 1
    assert ev[0].payload[:, 0].tolist() == [60.0, 80.0]  # the two highest, in time order
    assert ev[0].peak_score == 0.9 and ev[0].n_windows == 4


def test_threshold_meets_the_false_alarm_budget():
    rng = np.random.default_rng(3)
    n_ent, n = 4, 3 * 1440
    ent = np.repeat([f"e{i}" for i in range(n_ent)], n).astype(object)
    end_ns = np.tile(np.arange(n) * STEP, n_ent)
    scores = rng.beta(2, 5, n_ent * n)
    # One real incident on e0 with high scores.
    scores[1000:1060] = 0.95
    incidents = {"e0": np.array([[1000 * STEP, 1060 * STEP]])}
    rules = EventRules()
    for budget in (0.0, 0.5, 2.0):
        th = AlarmThreshold(budget, rules).fit(ent, end_ns, scores, STEP, incidents)
        assert th.false_alarms_per_entity_day_ <= budget + 1e-9
        events = build_events(ent, end_ns, scores, th.threshold_, rules, STEP)
        assert any(e.entity == "e0" and e.start_ns <= 1060 * STEP for e in events)
    strict = AlarmThreshold(0.0, rules).fit(ent, end_ns, scores, STEP, incidents).threshold_
    loose = AlarmThreshold(2.0, rules).fit(ent, end_ns, scores, STEP, incidents).threshold_
    assert loose <= strict
