"""Log counts in the baseline and the screen (logs ablation, amendment 1): a count of lines
has a scale of at least one line, so one stray line is not a z of 1000; ``log:unseen``, 0 in
training by construction, is kept by the screen; metrics-only fitting is unchanged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ftml.config import LogConfig, ReadConfig
from ftml.features import Featurizer
from ftml.features.baseline import fit_baseline
from ftml.features.featurizer import Z_CLIP
from ftml.io import MetricData
from ftml.logs.model import LogModel
from ftml.logs.series import HTTP_5XX, LINES, UNSEEN
from ftml.logs.templates import Templates
from ftml.pipeline import screen_metrics

STEP = pd.Timedelta("60s")


def _data(n: int = 600, seed: int = 0) -> MetricData:
    """Two entities: a cpu that varies, a count of error lines that is 0 but for one stray
    line, and a count of unseen lines that is 0 throughout."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2026-01-05", periods=n, freq=STEP, tz="UTC")
    parts = []
    for e in ("a", "b"):
        err = np.zeros(n)
        err[n // 2] = 1.0
        parts.append(pd.DataFrame({"entity": e, "timestamp": ts,
                                   "cpu": 50 + rng.normal(0, 5, n), "log:error": err,
                                   UNSEEN: np.zeros(n)}))
    frame = pd.concat(parts, ignore_index=True)
    return MetricData(frame, STEP, ["cpu", "log:error", UNSEEN], ["test"], {})


def _z_of_one_line(featurizer: Featurizer, metric: str) -> float:
    row = pd.DataFrame({"entity": ["a"], "timestamp": [pd.Timestamp("2026-01-05T03:00Z")],
                        "cpu": [50.0], "log:error": [0.0], UNSEEN: [0.0]})
    row[metric] = 1.0
    z, _, _ = featurizer.standardise(row, level=False)
    return float(z[0, featurizer.metrics_.index(metric)])


@pytest.mark.parametrize("metric", ["log:error", UNSEEN])
def test_one_stray_line_is_a_z_of_one_with_the_count_floor(metric):
    data = _data()
    plain = Featurizer(level_window=0).fit(data)
    floored = Featurizer(level_window=0).fit(data, min_scale={"log:error": 1.0, UNSEEN: 1.0})
    # The generic floor (1e-3) makes one line the clip; one line of scale is one line.
    assert _z_of_one_line(plain, metric) == Z_CLIP
    assert _z_of_one_line(floored, metric) == pytest.approx(1.0)
    # cpu has no floor: the same baseline either way.
    j = plain.metrics_.index("cpu")
    assert np.array_equal(plain.baseline_.scale[..., j], floored.baseline_.scale[..., j])
    assert np.all(floored.baseline_.fleet_scale[:, 1:] >= 1.0)


def test_no_floor_is_the_baseline_of_before():
    rng = np.random.default_rng(3)
    values = np.where(rng.random((500, 3)) < 0.9, 0.0, rng.poisson(3, (500, 3)))
    codes = np.repeat([0, 1], 250)
    ts = np.arange(500, dtype=np.int64) * 60 * 10**9
    a = fit_baseline(values, codes, ["a", "b"], ts, True)
    b = fit_baseline(values, codes, ["a", "b"], ts, True, min_scale=None)
    c = fit_baseline(values, codes, ["a", "b"], ts, True, min_scale=np.zeros(3))
    for x in (b, c):
        assert np.array_equal(a.scale, x.scale) and np.array_equal(a.center, x.center)
        assert np.array_equal(a.fleet_scale, x.fleet_scale)


def test_the_screen_keeps_unseen_only_when_asked():
    data = _data()
    assert UNSEEN in screen_metrics(data, ReadConfig(), 15, keep_constant=[UNSEEN]).metrics
    dropped = screen_metrics(data, ReadConfig(), 15)
    assert UNSEEN not in dropped.metrics and dropped.dropped[UNSEEN] == "constant"


def _log_model(cfg: LogConfig) -> LogModel:
    metrics = [LINES, "log:error", HTTP_5XX, UNSEEN, "log:tpl:3"]
    return LogModel(cfg, int(STEP.value), Templates.for_config(cfg), metrics, np.array([3]))


def test_which_series_the_log_model_floors_and_keeps():
    model = _log_model(LogConfig())
    assert model.scale_floors() == {LINES: 1.0, "log:error": 1.0, UNSEEN: 1.0,
                                    "log:tpl:3": 1.0}  # the 5xx share is not a count
    assert model.kept_constant() == [UNSEEN]
    off = _log_model(LogConfig(count_scale_floor=0.0))
    assert off.scale_floors() == {} and off.kept_constant() == []
