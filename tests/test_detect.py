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
    s = det.anomaly_score(np.vstack([X[:5], np.full((1, 4), 8.0)]))
    assert ((s > 0) & (s < 1)).all()
    assert s[-1] > s[:5].max()
    check_input_not_mutated(det.anomaly_score, X)
    check_same_seed_same_result(lambda: IsolationDetector(n_estimators=20),
                                lambda d: d.fit(X), lambda d: d.anomaly_score(X[:50]))
    check_persistence_round_trip(det, lambda d: d.anomaly_score(X[:50]), tmp_path)


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


# --------------------------------------------------------------------------- tail threshold


def _ar_scores(rng, n_ent: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of ``n_ent`` entities with autocorrelated, heavy-ish tailed scores."""
    ent = np.repeat([f"e{i}" for i in range(n_ent)], n).astype(object)
    end_ns = np.tile(np.arange(n) * STEP, n_ent)
    noise = rng.standard_t(4, size=(n_ent, n))
    kernel = np.ones(6) / 6  # windows overlap: neighbouring scores move together
    smooth = np.array([np.convolve(x, kernel, mode="same") for x in noise]).ravel()
    return ent, end_ns, 0.5 + 0.05 * smooth


def test_opening_scores_say_where_k_of_n_holds():
    from ftml.detect import opening_scores

    rng = np.random.default_rng(0)
    ent = np.repeat(["a", "b"], 200).astype(object)
    t = np.r_[np.arange(200), np.arange(200)]
    t[50:] += 5  # a gap inside entity a
    end_ns = t * STEP
    scores = rng.random(400)
    rules = EventRules()
    opening = opening_scores(ent, end_ns, scores, rules, STEP)
    for thr in np.quantile(scores, [0.3, 0.6, 0.8, 0.9]):
        flags = scores >= thr
        active = np.zeros(400, dtype=bool)
        for i in range(400):  # the k-of-n rule, counted by hand
            look = (ent == ent[i]) & (t > t[i] - rules.of_windows) & (t <= t[i])
            active[i] = flags[i] and flags[look].sum() >= rules.min_windows
        assert np.array_equal(opening >= thr, active)


def test_tail_threshold_holds_its_budget_on_a_later_period():
    """Calibrated on 4 entity-days, where the budget allows less than one false alarm, the
    tail fit's threshold keeps a much longer later period near the budget; the empirical
    threshold (just above the calibration maximum) raises several times more."""
    from ftml.detect import tail_threshold

    rng = np.random.default_rng(1)
    rules = EventRules()
    ent, end_ns, scores = _ar_scores(rng, 4, 1440)
    budget = 0.1
    fit = tail_threshold(ent, end_ns, scores, rules, STEP, {}, budget, 4.0)
    assert fit is not None and fit["peaks"] >= 8
    empirical = AlarmThreshold(budget, rules).fit(ent, end_ns, scores, STEP).threshold_
    pot = AlarmThreshold(budget, rules, tail="pot").fit(ent, end_ns, scores, STEP)
    assert pot.threshold_ == max(empirical, fit["threshold"])
    later_ent, later_end, later = _ar_scores(np.random.default_rng(2), 20, 1440 * 10)
    days = 200.0

    def rate(thr: float) -> float:
        return len(build_events(later_ent, later_end, later, thr, rules, STEP)) / days

    assert rate(pot.threshold_) <= 2 * budget
    assert rate(empirical) > 2 * budget


def test_tail_threshold_needs_peaks():
    from ftml.detect import tail_threshold

    rules = EventRules()
    ent = np.array(["e"] * 30, dtype=object)
    assert tail_threshold(ent, np.arange(30) * STEP, np.full(30, 0.5), rules, STEP, {}, 0.1,
                          0.1) is None
    # Plenty of peaks, but a calibration far shorter than the budget's horizon: the fit would
    # extrapolate by more than MAX_TAIL_EXTRAPOLATION, so there is none.
    ent2, end2, scores2 = _ar_scores(np.random.default_rng(1), 4, 1440)
    assert tail_threshold(ent2, end2, scores2, rules, STEP, {}, 0.1, 4.0) is not None
    assert tail_threshold(ent2, end2, scores2, rules, STEP, {}, 0.1, 0.05) is None
    with pytest.raises(ValueError, match="unknown threshold tail"):
        AlarmThreshold(0.1, rules, tail="bogus").fit(ent, np.arange(30) * STEP,
                                                       np.full(30, 0.5), STEP)


def test_forest_plus_robust_flags_a_one_metric_fault_the_forest_dilutes():
    """Twenty metrics; a window where one metric alone is far off. The forest alone ranks it
    among ordinary windows' tails; the ensemble puts it above every fit window."""
    from ftml.features import stats_view

    rng = np.random.default_rng(0)
    m = 20
    S = rng.standard_normal((4000, 2 * m))
    X = stats_view(S, m)
    odd = S[:1].copy()
    odd[0, m + 3] = 12.0  # the "last" stat of metric 3
    odd[0, 3] = 2.0
    x_odd = stats_view(odd, m)
    forest = IsolationDetector(n_estimators=100, random_state=0).fit(X)
    assert forest.anomaly_score(x_odd)[0] < np.quantile(forest.anomaly_score(X), 0.9999)
    for how in ("forest+robust", "forest|robust"):
        both = IsolationDetector(n_estimators=100, random_state=0, ensemble=how).fit(X)
        f_fit, r_fit = both.component_scores(X)
        assert np.allclose(forest.anomaly_score(X), f_fit)
        assert both.anomaly_score(x_odd)[0] > both.anomaly_score(X).max()
        # Ordinary windows keep the forest's scale (about its median).
        assert abs(np.median(both.anomaly_score(X)) - np.median(f_fit)) < 0.02
    with pytest.raises(ValueError, match="unknown ensemble"):
        IsolationDetector(ensemble="nope").fit(X)
