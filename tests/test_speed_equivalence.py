"""The fast paths give what the plain ones give (no timing here: speed lives in bench/).

- Window stats: the compiled kernel and its numpy fallback agree bit for bit, and both agree
  with pandas ``groupby().rolling()`` (<= 1e-9), also on flat windows and large values.
- A window's features do not depend on how the rows around it are chunked (bit for bit).
- Baselines: one sort per group gives exactly ``np.nanpercentile``'s values.
- Training featurizes only the windows it needs and gets the model that featurizing every
  window gives; scoring pushes only the windows near a flag to the event builder and gets the
  events that pushing every window gives.
- The CSV reader's fast path gives the same rows as pandas' reader.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from ftml import api, features, pipeline
from ftml.bundle import load_model
from ftml.config import Config, ReadConfig
from ftml.detect import AlarmThreshold, EventRules, IsolationDetector
from ftml.features import (
    STATS,
    Featurizer,
    detector_view,
    fit_baseline,
    level,
    statistics,
    stats_view,
    window_features,
    window_stats,
)
from ftml.incidents import assign_groups, grouping_for
from ftml.io import MetricData, iter_metric_rows, normalise, read_metrics, to_ns

# --------------------------------------------------------------------------- window stats


def _z(n: int, m: int, seed: int) -> np.ndarray:
    """Standardised-looking values with the awkward cases: ties, flat runs, +-0, big values."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, m))
    z[rng.random((n, m)) < 0.1] = 1.5  # ties
    z[n // 4:n // 4 + 40, 0] = 0.0  # a flat run
    z[n // 3:n // 3 + 30, m - 1] = -0.0
    z[n // 2:n // 2 + 25, :] = 7.25  # flat in every metric
    z[rng.random((n, m)) < 0.01] = 1e3  # clipped extremes
    z[rng.random(n) < 0.01, 0] = np.nan  # missing rows
    return z


def _pandas_rolling(z: np.ndarray, segments: np.ndarray, w: int) -> dict[str, np.ndarray]:
    """The features the obvious way: pandas groupby().rolling()."""
    frame = pd.DataFrame(z).assign(seg=segments)
    roll = frame.groupby("seg").rolling(w)
    t = np.arange(w) - (w - 1) / 2

    def slope(x):
        return float(np.dot(t, x - x.mean()) / np.dot(t, t)) if w > 1 else 0.0

    parts = {"mean": roll.mean(), "std": roll.std(ddof=0), "min": roll.min(), "max": roll.max(),
             "last": frame.groupby("seg").rolling(1).mean(),
             "slope": roll.apply(slope, raw=True), "median": roll.median()}
    out = {k: v.drop(columns="seg", errors="ignore").reset_index(drop=True).to_numpy()
           for k, v in parts.items()}
    # pandas' running std drifts (~1e-6) on a flat window after large values: numpy's two-pass
    # std of each window is the exact reference there.
    exact = np.full_like(z, np.nan)
    exact[w - 1:] = np.lib.stride_tricks.sliding_window_view(z, w, axis=0).std(axis=-1)
    out["std"] = np.where(np.isnan(out["std"]), np.nan, exact)
    return out


@pytest.mark.parametrize("window", [1, 2, 4, 15])
def test_window_features_match_pandas_on_awkward_values(window):
    z = _z(900, 3, window)
    segments = np.repeat([0, 1, 2], 300)
    X, end = window_features(z, segments, window)
    ref = _pandas_rolling(z, segments, window)
    complete = ~np.isnan(np.hstack(list(ref.values()))).any(axis=1)
    assert np.array_equal(end, np.flatnonzero(complete))
    m = z.shape[1]
    for k, stat in enumerate(STATS):
        np.testing.assert_allclose(X[:, k * m:(k + 1) * m], ref[stat][end], rtol=0, atol=1e-9,
                                   err_msg=stat)


@pytest.mark.parametrize("window", [1, 2, 3, 8, 15])
@pytest.mark.parametrize("stats", [None, ("median", "last"), ("slope", "min", "std"),
                                   ("max", "mean", "max")])
def test_kernel_and_numpy_fallback_agree_bit_for_bit(window, stats, monkeypatch):
    if statistics._window_kernel is None:
        pytest.skip("ftml._window_kernel is not built (pip install -e .)")
    z = np.where(np.isnan(_z(2000, 4, window)), 0.0, _z(2000, 4, window))
    rng = np.random.default_rng(window)
    ends = np.unique(np.r_[np.arange(window - 1, 2000), rng.integers(window - 1, 2000, 300)])
    # slid, slid a few rows at a time (up to (window + 1) // 2, then sorted afresh), any order
    for rows in (ends, ends[::3], ends[::8], ends[::9], ends[rng.permutation(len(ends))[:500]]):
        fast = window_stats(z, rows, window, stats)
        monkeypatch.setattr(statistics, "_window_kernel", None)
        slow = window_stats(z, rows, window, stats)
        monkeypatch.undo()
        assert fast.tobytes() == slow.tobytes()


@pytest.mark.parametrize("span", [1, 2, 7, 360])
@pytest.mark.parametrize("clip", [0.0, 1.0, 3.5])
def test_trailing_level_kernel_and_numpy_agree_bit_for_bit(span, clip, monkeypatch):
    if getattr(level._window_kernel, "trailing_level", None) is None:
        pytest.skip("ftml._window_kernel is not built (pip install -e .)")
    z = _z(1500, 4, span)
    z[np.random.default_rng(span).random(z.shape) < 0.05] = np.nan  # missing values, skipped
    z[200:210, 1] = 0.5 / (1 << level._LEVEL_BITS)  # ties in the fixed point's rounding
    segments = np.repeat([0, 1, 2, 3], [400, 1, 599, 500])
    fast = features.trailing_level(z, segments, span, clip)
    monkeypatch.setattr(level, "_window_kernel", None)
    slow = features.trailing_level(z, segments, span, clip)
    assert fast.tobytes() == slow.tobytes()


def test_a_window_is_the_same_bits_whatever_the_rows_around_it():
    z = _z(3000, 3, 0)
    segments = np.repeat(np.arange(6), 500)
    X, end = window_features(z, segments, 15)
    for cut in (1, 14, 15, 16, 777, 1500):
        Xa, ea = window_features(z[cut:], segments[cut:], 15)
        take = np.isin(end, ea + cut)
        assert Xa.tobytes() == X[take].tobytes()


def test_stats_subset_feeds_the_same_detector_view():
    z = np.nan_to_num(_z(1000, 5, 1))
    X, end = window_features(z, np.zeros(1000, dtype=int), 15)
    for stats in (["median", "last"], ["mean", "max", "slope"], ["last"]):
        S = window_stats(z, end, 15, stats)
        assert stats_view(S, 5).tobytes() == detector_view(X, 5, stats).tobytes()


@pytest.mark.parametrize("window", [1, 3, 15, 16])
@pytest.mark.parametrize("stats", [["median", "last"], ["last", "max", "min"], ["median", "mean"]])
def test_window_view_is_the_view_of_the_stats(window, stats):
    z = _z(3000, 4, window)
    end = features.complete_windows(np.isnan(z).any(axis=1), np.zeros(3000, dtype=int), window)
    got = features.window_view(z, end, window, stats)
    want = stats_view(window_stats(z, end, window, stats), 4)
    assert np.array_equal(got, want)  # the same numbers (a zero may differ in sign only)


def _data(entities=4, days=2, seed=0, gaps=True) -> MetricData:
    rng = np.random.default_rng(seed)
    n = days * 1440
    t = pd.date_range("2026-01-01", periods=n, freq="60s", tz="UTC")
    parts = []
    for i in range(entities):
        cpu = 40 + 10 * np.sin(np.arange(n) / 1440 * 2 * np.pi) + rng.normal(0, 1, n)
        part = pd.DataFrame({"entity": f"e{i}", "timestamp": t, "cpu": cpu,
                             "mem": 50 + rng.normal(0, 0.5, n),
                             "bytes_total": np.cumsum(rng.integers(10, 20, n)).astype(float)})
        if gaps:
            part = part.drop(index=rng.choice(n, 30, replace=False))
            part.loc[part.sample(20, random_state=i).index, "mem"] = np.nan
        parts.append(part)
    frame, step = normalise(pd.concat(parts, ignore_index=True), None, 3)
    return MetricData(frame, step, ["cpu", "mem", "bytes_total"])


@pytest.mark.parametrize("stride", [1, 4])
def test_chunked_windows_are_the_whole_frames_bit_for_bit(stride):
    data = _data()
    fz = Featurizer(window=15, stride=stride, hour_of_day=True, level_window=0).fit(data)
    whole = fz.transform_frame(data.frame)
    for chunk_rows in (97, 1000, 5000):
        parts = list(fz.iter_windows(data, chunk_rows=chunk_rows))
        cat = features.Windows.concat(parts, whole.X.shape[1], 3)
        assert np.array_equal(cat.row, whole.row)
        assert cat.X.tobytes() == whole.X.tobytes()
        assert np.array_equal(cat.last, whole.last, equal_nan=True)
    rows = fz.complete_rows(data.frame)
    assert np.array_equal(rows, whole.row)
    X, last = fz.features_at(data.frame, rows[::7], chunk_rows=300)
    assert X.tobytes() == whole.X[::7].tobytes()
    S, _ = fz.features_at(data.frame, rows, stats=["median", "last"], chunk_rows=1000)
    assert stats_view(S, 3).tobytes() == detector_view(whole.X, 3, ["median", "last"]).tobytes()


def test_standardise_is_the_baselines_formula():
    data = _data()
    fz = Featurizer(hour_of_day=True, level_window=0).fit(data)
    z, codes, values = fz.standardise(data.frame)
    center, scale = fz.baseline_.rows(data.frame["entity"], to_ns(data.frame["timestamp"]))
    assert np.array_equal(z, np.clip((values - center) / scale, -features.Z_CLIP,
                                     features.Z_CLIP), equal_nan=True)


@pytest.mark.parametrize("by_hour", [False, True])
def test_baseline_is_nanpercentile_exactly(by_hour):
    rng = np.random.default_rng(3)
    n = 6000
    values = rng.normal(size=(n, 4)) * [1, 10, 100, 0.01]
    values[rng.random((n, 4)) < 0.05] = np.nan
    values[:1500, 2] = np.nan  # an entity without this metric
    values[3000:3200, 3] = 0.0
    codes = np.repeat(np.arange(4), 1500)
    ts = np.arange(n, dtype=np.int64) * 60 * 10**9
    got = fit_baseline(values, codes, list("abcd"), ts, by_hour)
    # The reference: np.nanpercentile per entity-hour, as written before.
    hours = 24 if by_hour else 1
    hour = (ts // 3_600_000_000_000) % 24 if by_hour else np.zeros(n, dtype=np.int64)
    for e in range(4):
        for h in range(hours):
            rows = values[(codes == e) & (hour == h)]
            if not len(rows):
                continue
            with warnings.catch_warnings():  # all-NaN columns
                warnings.simplefilter("ignore", RuntimeWarning)
                q01, q25, q50, q75, q99 = np.nanpercentile(rows, [1, 25, 50, 75, 99], axis=0)
            ok = ~np.isnan(q50)
            assert np.array_equal(got.center[e, h][ok], q50[ok])
            want = np.maximum((q75 - q25) / features.IQR_TO_SIGMA,
                              (q99 - q01) / features.P01_P99_TO_SIGMA)
            floor = np.maximum(np.abs(q50) * 0.01, 1e-3)
            assert np.array_equal(got.scale[e, h][ok], np.maximum(want, floor)[ok])


# --------------------------------------------------------------------------- train and score


def _fleet_files(tmp_path, days=4, seed=0):
    from ftml.simulate import simulate_fleet

    wide, incidents = simulate_fleet(entities=4, days=days, seed=seed)
    wide.to_csv(tmp_path / "metrics.csv", index=False)
    incidents.to_csv(tmp_path / "incidents.csv", index=False)
    return tmp_path / "metrics.csv", tmp_path / "incidents.csv"


def _reference_fit(data, incidents, config):
    """Training the plain way: features of every window, then the same selection."""
    fc, dc = config.features, config.detect
    frame = data.frame
    ts = to_ns(frame["timestamp"])
    ent = frame["entity"].to_numpy(dtype=object)
    from ftml.io import label_times

    row_label = label_times(ent, ts, incidents)
    fz = Featurizer(window=fc.window, stride=fc.stride, hour_of_day=fc.hour_of_day,
                    level_window=fc.level_window, level_clip=fc.level_clip).fit(
        data, exclude_rows=row_label >= 0)
    w = fz.transform_frame(frame)
    in_incident = np.r_[0, np.cumsum(row_label >= 0)]
    touched = in_incident[w.row + 1] - in_incident[np.maximum(w.row + 1 - fc.window, 0)] > 0
    t_min, t_max = ts.min(), ts.max()
    t_cut = t_min + (1.0 - dc.calibration_fraction) * (t_max - t_min)
    fit_w = w.take((w.end_ns < t_cut) & ~touched)
    cal_w = w.take(w.end_ns >= t_cut)
    rng = np.random.default_rng(dc.random_state)
    if len(fit_w) > pipeline.training.MAX_FIT_WINDOWS:
        fit_w = fit_w.take(np.sort(rng.choice(len(fit_w), pipeline.training.MAX_FIT_WINDOWS, replace=False)))
    m = len(fz.metrics_)
    det = IsolationDetector(n_estimators=dc.n_estimators, max_samples=dc.max_samples,
                           random_state=dc.random_state).fit(
        detector_view(fit_w.X, m, dc.stats))
    rules = EventRules(dc.min_windows, dc.of_windows, dc.merge_gap, dc.cooldown)
    from ftml.io import incident_spans

    thr = AlarmThreshold(dc.alarm_budget, rules).fit(
        cal_w.entity, cal_w.end_ns, det.anomaly_score(detector_view(cal_w.X, m, dc.stats)),
        int(data.step.value), incident_spans(incidents))
    return fz, det, thr, len(fit_w), len(cal_w)


def test_training_on_the_windows_it_needs_gives_the_full_featurization_model(tmp_path,
                                                                            monkeypatch):
    metrics, incidents_path = _fleet_files(tmp_path)
    config = Config()
    config.detect.n_estimators = 50
    data = read_metrics([metrics], config.read)
    from ftml.io import read_incidents

    incidents = read_incidents(incidents_path, data.entities, config.read)
    monkeypatch.setattr(pipeline.training, "MAX_FIT_WINDOWS", 3000)  # the sample path too
    model, info = api.fit_model(data, incidents, config)
    fz, det, thr, n_fit, n_cal = _reference_fit(data, incidents, config)
    assert info["training"]["fit_windows"] == n_fit
    assert info["training"]["calibration_windows"] == n_cal
    assert model.threshold == thr.threshold_
    assert info["calibration"]["false_alarms"] == thr.false_alarms_
    w = fz.transform_frame(data.frame)
    view = detector_view(w.X, len(fz.metrics_), config.detect.stats)
    assert np.array_equal(model.detector.anomaly_score(view), det.anomaly_score(view))
    assert model.diagnoser is not None


def _reference_events(model, metrics):
    """Scoring the plain way: every window of the whole file, with its payload, into one
    builder."""
    data = read_metrics([metrics], model.config.read, metrics=model.metrics)
    w = model.featurizer.transform_frame(data.frame)
    scores = model.score_windows(w)
    builder = model.event_builder()
    raws = builder.push(w.entity, w.end_ns, scores, model.payload(w)) + builder.flush()
    events = sorted((model.to_event(r) for r in raws), key=lambda e: (e.entity, e.start))
    assign_groups(events, grouping_for(model))  # the incident stage, over the whole list
    return [e.to_dict() for e in events], w, scores, len(data.frame)


@pytest.mark.parametrize("chunk_rows", [None, 700, 4000])
def test_scoring_gives_the_events_of_pushing_every_window(tmp_path, chunk_rows):
    metrics, incidents = _fleet_files(tmp_path)
    config = Config()
    config.detect.n_estimators = 50
    config.detect.alarm_budget = 1.0  # plenty of events, flapping and cooldowns included
    api.train([metrics], tmp_path / "model", incidents=incidents, config=config)
    model = load_model(tmp_path / "model")
    want, w, scores, n_rows = _reference_events(model, metrics)
    assert len(want) >= 5
    kwargs = {} if chunk_rows is None else {"chunk_rows": chunk_rows}
    got = api.score(model, [metrics], windows_out=tmp_path / "w.parquet", **kwargs)
    assert [e.to_dict() for e in got.events] == want
    assert got.windows == len(w)
    assert got.rows == n_rows and got.entities == 4
    table = got.window_table
    assert np.array_equal(table["score"].to_numpy(), scores)
    assert np.array_equal(table["entity"].to_numpy(dtype=object), w.entity.astype(str))


# --------------------------------------------------------------------------- reading


def test_chunked_csv_reader_gives_pandas_rows(tmp_path):
    rng = np.random.default_rng(0)
    n = 5000
    t = pd.date_range("2026-01-01", periods=n, freq="60s", tz="UTC")
    frame = pd.DataFrame({"timestamp": t.strftime("%Y-%m-%dT%H:%M:%SZ"),
                          "host": rng.choice(["a", "b", "7"], n),
                          "cpu": rng.normal(size=n).round(6),
                          "count": rng.integers(0, 100, n)})
    frame.loc[rng.random(n) < 0.05, "cpu"] = np.nan
    path = tmp_path / "m.csv"
    frame.to_csv(path, index=False)
    # Chunks of 1234 rows, read as ftml reads a file, against the frame pandas wrote: entity
    # names that look like numbers stay text, missing values stay NaN, counts keep their value.
    chunks = list(iter_metric_rows([path], ReadConfig(), chunk_rows=1234))
    assert len(chunks) > 1
    a = pd.concat(chunks, ignore_index=True)
    assert a["entity"].astype(str).tolist() == frame["host"].tolist()
    assert np.array_equal(to_ns(a["timestamp"]), to_ns(pd.Series(t)))
    for c in ("cpu", "count"):
        assert np.array_equal(a[c].to_numpy(float), frame[c].to_numpy(float), equal_nan=True)


@pytest.mark.parametrize("case, problem, where", [
    ("text in a late row", "text 'oops' in a metric column", "row 2902, column 'cpu_pct'"),
    ("back in time", "rows go back in time across chunks", "entity 'svc-api-04'"),
])
def test_errors_in_later_chunks_surface_from_the_read_ahead(tmp_path, case, problem, where):
    from ftml.errors import InputError

    metrics, incidents = _fleet_files(tmp_path, days=2)
    config = Config()
    config.detect.n_estimators = 20
    api.train([metrics], tmp_path / "model", incidents=incidents, config=config)
    rows = pd.read_csv(metrics)
    if case == "text in a late row":
        rows["cpu_pct"] = rows["cpu_pct"].astype(object)
        rows.loc[2901, "cpu_pct"] = "oops"
    else:  # a late chunk holds rows older than the chunks before
        rows = pd.concat([rows, rows[rows["entity"] == "svc-api-04"].head(50)],
                         ignore_index=True)
    bad = tmp_path / "bad.csv"
    rows.to_csv(bad, index=False)
    with pytest.raises(InputError) as err:
        api.score(tmp_path / "model", [bad], chunk_rows=1000)
    assert err.value.problem == problem and err.value.where == where
