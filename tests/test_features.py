import numpy as np
import pandas as pd
import pytest

from ftml.config import ReadConfig
from ftml.features import (
    STATS,
    Featurizer,
    counters_to_rates,
    detect_counters,
    feature_names,
    fit_baseline,
    trailing_level,
    window_features,
)
from ftml.io import MetricData, normalise
from tests.invariants import check_input_not_mutated, check_persistence_round_trip


def _pandas_reference(z: np.ndarray, segments: np.ndarray, w: int) -> pd.DataFrame:
    """The same features the slow, obvious way: groupby().rolling()."""
    frame = pd.DataFrame(z).assign(seg=segments)
    roll = frame.groupby("seg").rolling(w)
    t = np.arange(w) - (w - 1) / 2

    def slope(x):
        return float(np.dot(t, x - x.mean()) / np.dot(t, t))

    parts = {
        "mean": roll.mean(), "std": roll.std(ddof=0), "min": roll.min(), "max": roll.max(),
        "last": frame.groupby("seg").rolling(1).mean(),
        "slope": roll.apply(slope, raw=True), "median": roll.median(),
    }
    return pd.concat({k: v.drop(columns="seg", errors="ignore").reset_index(drop=True)
                      for k, v in parts.items()}, axis=1)


@pytest.mark.parametrize("window", [2, 5, 15])
def test_window_features_match_pandas_rolling(window):
    rng = np.random.default_rng(window)
    z = rng.normal(size=(300, 3))
    segments = np.repeat([0, 1, 2], 100)
    X, end = window_features(z, segments, window)
    ref = _pandas_reference(z, segments, window)
    ref = ref.dropna()
    assert np.array_equal(end, ref.index.to_numpy())
    m = z.shape[1]
    for k, stat in enumerate(STATS):
        np.testing.assert_allclose(X[:, k * m:(k + 1) * m], ref[stat].to_numpy(), atol=1e-9,
                                   err_msg=stat)


@pytest.mark.parametrize("case, expected_ends", [
    ("no gaps", [2, 3, 4, 5, 6, 7, 8, 9]),
    ("nan at row 4", [2, 3, 7, 8, 9]),
    ("segment break at 5", [2, 3, 4, 7, 8, 9]),
])
def test_windows_skip_missing_rows_and_segment_borders(case, expected_ends):
    z = np.ones((10, 2))
    seg = np.zeros(10, dtype=int)
    if case == "nan at row 4":
        z[4, 1] = np.nan
    if case == "segment break at 5":
        seg[5:] = 1
    _, end = window_features(z, seg, 3)
    assert end.tolist() == expected_ends


def test_stride_counts_from_each_segment_start():
    z = np.zeros((20, 1))
    seg = np.repeat([0, 1], 10)
    _, end = window_features(z, seg, 4, stride=3)
    assert end.tolist() == [3, 6, 9, 13, 16, 19]


def test_feature_names_are_stat_major():
    assert feature_names(["a", "b"])[:3] == ["a:mean", "b:mean", "a:std"]


def test_counter_detected_and_turned_into_rate_with_resets():
    counter = np.r_[np.arange(0, 1000, 10.0), np.arange(0, 500, 10.0)]  # restart at row 100
    noise = np.random.default_rng(0).normal(size=150)
    values = np.c_[counter, noise]
    seg = np.zeros(150, dtype=int)
    assert detect_counters(values, seg, ["bytes_total", "cpu"]) == ["bytes_total"]
    rates = counters_to_rates(values, seg, [0], step_seconds=10.0)
    assert np.isnan(rates[0, 0])
    assert np.allclose(rates[1:100, 0], 1.0)
    assert rates[100, 0] == 0.0  # after a reset the increase is the new value (0)
    assert np.allclose(rates[101:, 0], 1.0)
    assert np.array_equal(rates[:, 1], noise)


def test_baseline_is_robust_and_per_hour():
    ts = (np.arange(48 * 60) * 60 * 10**9).astype(np.int64)
    hour = (ts // 3_600_000_000_000) % 24
    values = (hour * 10.0)[:, None] + np.random.default_rng(1).normal(size=(len(ts), 1))
    values[5] = 1e9  # one wild outlier does not move a median
    codes = np.zeros(len(ts), dtype=int)
    flat = fit_baseline(values, codes, ["e"], ts, by_hour=False)
    hourly = fit_baseline(values, codes, ["e"], ts, by_hour=True)
    assert flat.center.shape == (1, 1, 1) and hourly.center.shape == (1, 24, 1)
    assert abs(hourly.center[0, 13, 0] - 130) < 1
    assert hourly.scale[0, 13, 0] < flat.scale[0, 0, 0]
    # An unseen entity gets the fleet baseline.
    c, s = hourly.rows(np.array(["new"], dtype=object), ts[:1])
    assert c.shape == (1, 1) and np.isfinite(s).all()


def _data(n=600, entities=("a", "b"), seed=0) -> MetricData:
    rng = np.random.default_rng(seed)
    rows = []
    t = pd.date_range("2026-01-01", periods=n, freq="60s", tz="UTC")
    for i, e in enumerate(entities):
        rows.append(pd.DataFrame({"entity": e, "timestamp": t,
                                  "cpu": 50 + 10 * i + rng.normal(size=n),
                                  "bytes_total": np.cumsum(rng.integers(1, 9, n)).astype(float)}))
    raw = pd.concat(rows, ignore_index=True)
    frame, step = normalise(raw, None, ReadConfig().max_fill_steps)
    return MetricData(frame, step, ["cpu", "bytes_total"])


def test_chunked_windows_equal_whole():
    data = _data()
    fz = Featurizer(window=7, hour_of_day=False, level_window=0).fit(data)
    whole = fz.transform_frame(data.frame)
    chunks = list(fz.iter_windows(data, chunk_rows=97))
    assert len(chunks) > 5
    assert np.array_equal(np.concatenate([c.end_ns for c in chunks]), whole.end_ns)
    np.testing.assert_allclose(np.vstack([c.X for c in chunks]), whole.X, atol=1e-9)


def test_featurizer_invariants(tmp_path):
    data = _data()
    fz = Featurizer(window=5, hour_of_day=False, level_window=0).fit(data)
    assert fz.counters_ == ["bytes_total"]
    check_input_not_mutated(fz.transform_frame, data.frame)
    check_persistence_round_trip(fz, lambda f: f.transform(data).X, tmp_path)


def _level_reference(z, segments, span, clip):
    """trailing_level the obvious way: per row, a loop over the rows before it."""
    out = np.zeros_like(z)
    for i in range(len(z)):
        lo = i - span
        while lo < i and segments[max(lo, 0)] != segments[i]:
            lo += 1
        past = np.clip(z[max(lo, 0):i], -clip, clip)
        count = (~np.isnan(past)).sum(axis=0)
        out[i] = np.nansum(past, axis=0) / np.maximum(count, max(span // 2, 1))
    return out


@pytest.mark.parametrize("span, clip", [(1, 1.0), (6, 0.5), (40, 3.0)])
def test_trailing_level_is_the_clipped_mean_of_the_rows_before(span, clip):
    rng = np.random.default_rng(span)
    z = rng.normal(scale=2.0, size=(200, 3))
    z[rng.random(z.shape) < 0.1] = np.nan
    segments = np.repeat([0, 1, 2], [90, 10, 100])
    got = trailing_level(z, segments, span, clip)
    np.testing.assert_allclose(got, _level_reference(z, segments, span, clip), atol=1e-5)


def test_level_takes_off_slow_drift_but_at_most_clip_of_a_fault():
    n, span, clip = 2000, 200, 2.0
    z = np.zeros((n, 1))
    z[1000:, 0] = 1.5  # a lasting shift of the level ...
    z[1500:1800, 0] += 10.0  # ... and a long fault on top of it
    level = trailing_level(z, np.zeros(n, dtype=int), span, clip)
    corrected = z - level
    assert abs(corrected[1400, 0]) < 1e-5  # the shift is gone once the span has passed it
    assert (corrected[1500:1800, 0] >= 10.0 + 1.5 - clip - 1e-5).all()


def test_levels_are_the_same_bits_however_the_rows_are_chunked():
    data = _data(n=900, entities=("a", "b", "c"), seed=3)
    data.frame.loc[data.frame.index[100:103], "cpu"] = np.nan  # a gap inside a level's span
    fz = Featurizer(window=7, hour_of_day=False, level_window=60, level_clip=2.0).fit(data)
    assert fz.history_steps == 7 + 60
    whole = fz.transform_frame(data.frame)
    chunks = list(fz.iter_windows(data, chunk_rows=97))
    assert np.array_equal(np.concatenate([c.end_ns for c in chunks]), whole.end_ns)
    assert np.array_equal(np.vstack([c.X for c in chunks]), whole.X)
    rows = whole.row[::5]
    X, _ = fz.features_at(data.frame, rows, chunk_rows=150)
    assert np.array_equal(X, whole.X[::5])
    # The level moves the features: without it they differ.
    plain = Featurizer(window=7, hour_of_day=False, level_window=0).fit(data).transform_frame(data.frame)
    assert not np.array_equal(plain.X, whole.X)


def test_bundles_without_a_level_window_keep_plain_z(tmp_path):
    data = _data()
    fz = Featurizer(window=5, hour_of_day=False, level_window=0).fit(data)
    del fz.level_window  # a featurizer pickled before levels existed
    assert fz.history_steps == 5
    z, codes, _ = fz.standardise(data.frame)
    z0, _, _ = fz.standardise(data.frame, level=False)
    assert np.array_equal(z, z0, equal_nan=True)


def test_a_statistic_is_one_row_of_the_table_and_old_featurizers_keep_theirs(monkeypatch):
    """Adding a row to STAT_TABLE gives new featurizers the stat (numpy-only: no kernel slot),
    while one fitted before keeps exactly its features (so its bundle needs no new format)."""
    from ftml import features
    from ftml.features import featurizer, statistics

    data = _data()
    old = Featurizer(window=5, hour_of_day=False, level_window=0).fit(data)
    before = old.transform_frame(data.frame)
    row = features.Stat("range", lambda g: g.max(axis=1) - g.min(axis=1))
    monkeypatch.setattr(statistics, "STAT_TABLE", (*features.STAT_TABLE, row))
    monkeypatch.setitem(features.STAT, "range", row)
    # The table's names, where they are read: the stats module and the featurizer's fit.
    for module in (statistics, featurizer):
        monkeypatch.setattr(module, "STATS", (*features.STATS, "range"))
    new = Featurizer(window=5, hour_of_day=False, level_window=0).fit(data)
    assert new.stats[-1] == "range" and old.stats == STATS
    assert new.feature_names_[-2:] == ["cpu:range", "bytes_total:range"]
    w = new.transform_frame(data.frame)
    m = len(new.metrics_)
    col = {s: slice(i * m, (i + 1) * m) for i, s in enumerate(new.stats)}
    np.testing.assert_array_equal(w.X[:, col["range"]], w.X[:, col["max"]] - w.X[:, col["min"]])
    np.testing.assert_array_equal(w.X[:, :len(STATS) * m], before.X)
    after = old.transform_frame(data.frame)
    assert after.X.shape == before.X.shape and np.array_equal(after.X, before.X)
    # What a scorer asks for, a window subset of stats, also computes the new one.
    S = features.window_stats(np.asarray(data.frame[["cpu"]], dtype=float), np.array([10, 20]),
                              5, ("range", "max"))
    assert S.shape == (2, 2)
