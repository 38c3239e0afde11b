"""Round 5 settings (bench/PROTOCOL_generalization.md, amendment 2026-12-07 00:59): the forest on
the balanced view (``detect.view: balanced``) and the ensemble's parts each on its own
half-budget scale (``detect.ensemble_scale: budget``)."""

import numpy as np
import pytest

from ftml import api
from ftml.config import Config
from ftml.detect import AlarmThreshold, ForestScorer, IsolationDetector, balanced_view
from ftml.errors import ConfigError
from ftml.features import stats_view
from tests.test_api import _fleet


def test_the_balanced_view_repeats_the_cross_metric_columns_and_keeps_the_last_two():
    rng = np.random.default_rng(0)
    m = 5
    X = stats_view(rng.standard_normal((50, 2 * m)), m)  # 10 per-metric + 2 cross-metric
    B = balanced_view(X)
    assert B.shape == (50, 10 + 10)
    assert np.array_equal(B[:, :10], X[:, :10]) and np.array_equal(B[:, -2:], X[:, -2:])
    copies = B[:, 10:-2]
    assert np.array_equal(copies[:, 0::2], np.repeat(X[:, -2:-1], 4, axis=1))
    assert np.array_equal(copies[:, 1::2], np.repeat(X[:, -1:], 4, axis=1))
    one = stats_view(rng.standard_normal((7, 2)), 1)  # one metric: nothing to balance
    assert balanced_view(one) is one


def test_the_balanced_forest_flags_a_one_metric_fault_the_plain_one_dilutes():
    """Twenty metrics; one window with one metric far off in both stats. The plain forest ranks
    it among ordinary windows (under its 90 %); the balanced one in the top 1 %."""
    rng = np.random.default_rng(0)
    m = 20
    S = rng.standard_normal((4000, 2 * m))
    X = stats_view(S, m)
    odd = S[:1].copy()
    odd[0, [3, m + 3]] = 30.0
    x_odd = stats_view(odd, m)
    plain = IsolationDetector(n_estimators=100, random_state=0).fit(X)
    bal = IsolationDetector(n_estimators=100, random_state=0, view="balanced").fit(X)
    assert plain.anomaly_score(x_odd)[0] < np.quantile(plain.anomaly_score(X), 0.9)
    assert bal.anomaly_score(x_odd)[0] > np.quantile(bal.anomaly_score(X), 0.99)
    # The robust part is the same column whatever the forest sees.
    assert np.array_equal(bal.component_scores(X)[1], plain.component_scores(X)[1])
    with pytest.raises(ValueError, match="unknown view"):
        IsolationDetector(view="nope").fit(X)


def test_a_loaded_balanced_detector_scores_the_same_bits():
    from ftml.bundle import _codec

    X = stats_view(np.random.default_rng(1).normal(size=(3000, 12)), 6)
    det = IsolationDetector(n_estimators=30, random_state=0, view="balanced",
                            ensemble="forest|robust").fit(X)
    state, arrays = _codec().encode(det)
    loaded = _codec(with_sklearn=False).decode(state, arrays)
    assert type(loaded) is ForestScorer and loaded.view == "balanced"
    assert np.array_equal(loaded.anomaly_score(X[:500]), det.anomaly_score(X[:500]))


def test_budget_scales_put_each_part_at_its_own_half_budget_threshold():
    from ftml.config import DetectConfig
    from ftml.pipeline import budget_scales, event_rules_of

    rng = np.random.default_rng(3)
    step = 60 * 10**9
    n = 3 * 1440
    entity = np.repeat(np.array(["a", "b"], dtype=object), n)
    end_ns = np.tile(np.arange(n, dtype=np.int64) * step, 2)
    forest = 0.45 + 0.02 * rng.standard_normal(2 * n)
    forest[500:540] += 0.2  # a healthy run the forest sees
    robust = np.abs(rng.standard_normal(2 * n))
    dc = DetectConfig()
    scales = np.array([[0.45, 0.6], [0.7, 3.0]])
    out = budget_scales(scales, entity, end_ns, (forest, robust), step, {}, dc)
    assert np.array_equal(out[:, 0], scales[:, 0])  # the medians are kept
    for i, part in enumerate((forest, robust)):
        want = AlarmThreshold(budget=dc.alarm_budget / 2, rules=event_rules_of(dc)).fit(
            entity, end_ns, part, step).threshold_
        assert out[i, 1] == want


def test_training_with_budget_scales_thresholds_the_combined_score(tmp_path):
    metrics, incidents = _fleet(tmp_path, days=3)
    ens = {"ensemble": "forest|robust"}
    plain = api.train([metrics], tmp_path / "plain", incidents=incidents, quiet=True,
                      config=Config.from_dict({"detect": ens})).model
    budget = api.train([metrics], tmp_path / "budget", incidents=incidents, quiet=True,
                       config=Config.from_dict({"detect": {**ens, "ensemble_scale": "budget"}}))
    det = budget.model.detector
    # The same forest and medians as the quantile-scaled ensemble; only the anchors differ.
    assert np.array_equal(det.scales_[:, 0], plain.detector.scales_[:, 0])
    assert not np.array_equal(det.scales_[:, 1], plain.detector.scales_[:, 1])
    assert budget.manifest["calibration"]["threshold"] == budget.model.threshold
    # What is saved scores as what was trained (the scales go into the bundle).
    from ftml.bundle import load_model

    loaded = load_model(tmp_path / "budget").detector
    X = np.random.default_rng(0).normal(0, 2, (2000, det.n_features_in_))
    assert np.array_equal(loaded.anomaly_score(X), det.anomaly_score(X))


def test_an_unknown_ensemble_scale_is_refused_in_one_line(tmp_path):
    metrics, _ = _fleet(tmp_path, days=2)
    with pytest.raises(ConfigError, match="ensemble_scale"):
        api.train([metrics], tmp_path / "m", quiet=True,
                  config=Config.from_dict({"detect": {"ensemble_scale": "nope"}}))

