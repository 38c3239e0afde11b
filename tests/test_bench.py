"""The benchmark harness on tiny data: discovery, the table, docs/benchmarks.md (merged,
atomic), skipping when the real data is absent, and the data-set adapters."""

import sys
import types

import numpy as np
import pandas as pd
import pytest

import bench.__main__ as harness
from bench import bench_quality, bench_realdata, datasets
from bench.common import SkipBench, data_dir, majority_accuracy, row

# --------------------------------------------------------------------------- harness


def _module(name, run, doc="A tiny benchmark."):
    mod = types.ModuleType(f"bench.bench_{name}")
    mod.__doc__ = doc
    mod.TITLE = f"tiny {name}"
    mod.run = run
    return mod


@pytest.fixture
def fake_benches(monkeypatch):
    calls = []

    def ok(quick=False):
        calls.append(quick)
        return [row("speed", 2.0, 4.0, "s"), row("recall", 0.9, random=0.1)]

    def skip():
        raise SkipBench("no data here")

    def broken():
        raise RuntimeError("boom")

    mods = {"ok": ok, "skip": skip, "broken": broken}
    for name, fn in mods.items():
        monkeypatch.setitem(sys.modules, f"bench.bench_{name}", _module(name, fn))
    monkeypatch.setattr(harness, "discover", lambda: sorted(mods))
    return calls


def test_discover_finds_the_bench_modules():
    names = harness.discover()
    assert {"quality", "realdata", "diagnosis"} <= set(names)
    assert all((harness.BENCH_DIR / f"bench_{n}.py").exists() for n in names)


def test_row_ratio():
    assert row("x", 3.0, 2.0)["ratio"] == 1.5
    assert row("x", 3.0, None)["ratio"] is None and row("x", None, 2.0)["ratio"] is None
    assert row("x", 1.0, 0.0)["ratio"] is None


def test_run_prints_one_table_and_writes_sections(fake_benches, tmp_path, capsys):
    out = tmp_path / "docs" / "benchmarks.md"
    assert harness.main(["ok", "skip", "--quick", "--out", str(out)]) == 0
    assert fake_benches == [True]  # --quick reaches run(quick=...)
    printed = capsys.readouterr().out
    assert "skipped: no data here" in printed
    table = printed[printed.index("bench "):]
    assert "speed" in table and "recall" in table and "ratio" in table
    text = out.read_text()
    assert "Last run:" in text and "commit `" in text
    assert "<!-- bench:ok -->" in text and "| speed | 2.000 | 4.000 | 0.500 | s |" in text
    assert "<!-- bench:skip -->" in text and "Skipped (" in text and "no data here" in text
    assert not list(out.parent.glob(".*.tmp")), "written atomically, no temp file left"


def test_a_later_run_keeps_other_sections_and_earlier_figures_of_skipped(fake_benches,
                                                                       tmp_path, monkeypatch):
    out = tmp_path / "b.md"
    harness.main(["ok", "--out", str(out)])
    first = out.read_text()
    # 'ok' now skips (data gone): its earlier figures stay
    monkeypatch.setitem(sys.modules, "bench.bench_ok",
                        _module("ok", lambda: (_ for _ in ()).throw(SkipBench("gone"))))
    assert harness.main(["ok", "skip", "--out", str(out)]) == 0
    second = out.read_text()
    section = first[first.index("<!-- bench:ok -->"):first.index("<!-- /bench:ok -->")]
    assert section in second
    assert "<!-- bench:skip -->" in second


def test_failed_bench_exits_1_but_others_are_written(fake_benches, tmp_path):
    out = tmp_path / "b.md"
    assert harness.main(["broken", "ok", "--out", str(out)]) == 1
    text = out.read_text()
    assert "<!-- bench:ok -->" in text and "<!-- bench:broken -->" not in text


def test_unknown_bench_is_exit_2(fake_benches, capsys):
    assert harness.main(["nope"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


def test_no_write_leaves_no_file(fake_benches, tmp_path):
    out = tmp_path / "b.md"
    assert harness.main(["ok", "--no-write", "--out", str(out)]) == 0
    assert not out.exists()


def test_realdata_skips_cleanly_without_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FTML_DATA", str(tmp_path / "absent"))
    assert data_dir() == tmp_path / "absent"
    with pytest.raises(SkipBench, match="not found"):
        bench_realdata.run()
    out = tmp_path / "b.md"
    assert harness.main(["realdata", "--out", str(out)]) == 0
    assert "skipped: real data not found" in capsys.readouterr().out
    assert "Skipped (" in out.read_text()


# --------------------------------------------------------------------------- adapters, tiny


def _tiny_smd(root, machines=("machine-9-1", "machine-9-2"), n=900):
    rng = np.random.default_rng(0)
    base = root / "smd"
    for d in ("train", "test"):
        (base / d).mkdir(parents=True, exist_ok=True)
    index = []
    for k, name in enumerate(machines):
        cols = {"cpu_r": rng.normal(0.3, 0.02, n), "mem_u": rng.normal(0.5, 0.01, n)}
        pd.DataFrame(cols).to_csv(base / "train" / f"{name}.csv.gz", index=False)
        test = pd.DataFrame({"cpu_r": rng.normal(0.3, 0.02, n), "mem_u": rng.normal(0.5, 0.01, n)})
        label = np.zeros(n, dtype=int)
        a, b = 400 + 50 * k, 460 + 50 * k
        label[a:b] = 1
        test.loc[a:b - 1, "cpu_r"] += 0.5
        test["label"] = label
        test.to_csv(base / "test" / f"{name}.csv.gz", index=False)
        index.append((name, a, b, "cpu"))
    pd.DataFrame(index, columns=["machine", "start", "end_exclusive",
                                 "dominant_group_by_fraction"]).to_csv(
        base / "interpretation_segments_index.csv", index=False)
    return root


def test_smd_adapter_rows_are_minutes_and_segments_are_incidents(tmp_path):
    split = datasets.smd(_tiny_smd(tmp_path))
    assert list(split.train.columns[:2]) == ["timestamp", "entity"]
    one = split.train[split.train["entity"] == "machine-9-1"]["timestamp"]
    assert (one.diff().dropna() == pd.Timedelta(minutes=1)).all()
    for name, grp in split.test.groupby("entity"):
        assert grp["timestamp"].min() > split.train[split.train["entity"] == name][
            "timestamp"].max(), "test follows train in time"
    inc = split.test_incidents
    assert inc["cause"].tolist() == ["cpu", "cpu"]
    first = split.test[split.test["entity"] == "machine-9-1"]["timestamp"].iloc
    assert inc["start"].iloc[0] == first[400] and inc["end"].iloc[0] == first[459]
    assert len(split.train_incidents) == 0


@pytest.mark.parametrize("flags, runs", [
    ([0, 1, 1, 0, 1], [(1, 3), (4, 5)]), ([1, 1], [(0, 2)]), ([0, 0], []),
])
def test_runs_of(flags, runs):
    assert datasets.runs_of(np.array(flags, bool)) == runs


def test_realdata_end_to_end_on_tiny_smd(tmp_path, monkeypatch):
    monkeypatch.setenv("FTML_DATA", str(_tiny_smd(tmp_path / "data")))
    rows = bench_realdata.run(quick=False)
    names = [r["name"] for r in rows]
    assert any("SMD (2 machines): event recall" in n for n in names)
    recall = next(r for r in rows if r["name"].endswith("event recall"))
    assert recall["vs"] == "robust z" and "random" in recall
    assert 0 <= recall["ftml"] <= 1


def test_majority_accuracy():
    assert majority_accuracy(["a", "a", "b"], ["a", "b", "b", "a"]) == 0.5
    assert majority_accuracy([], ["a"]) is None


def test_quality_bench_rows_carry_targets(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_quality, "TRAIN_DAYS", 3)
    monkeypatch.setattr(bench_quality, "TEST_DAYS", 1)
    rows = bench_quality.fleet(2, tmp_path, compare_merlion=True)
    by = {r["name"].split(": ", 1)[1]: r for r in rows}
    assert by["event recall"]["target"] == ">= 0.9"
    assert by["false alarms"]["anchor"] == 0.14 and by["false alarms"]["vs"] == "Merlion"
    timing = next(r for k, r in by.items() if k.startswith("train"))
    assert timing["unit"] == "s" and timing["anchor"] == 780 and timing["target"] == "< 60"


# --------------------------------------------------------------------------- adapters, real data

needs_data = pytest.mark.skipif(not (data_dir() / "nezha").is_dir(),
                                reason=f"real data not at {data_dir()}")


@needs_data
def test_real_nezha_and_nab_splits_are_time_ordered_with_incidents_in_range():
    root = data_dir()
    splits = [datasets.nezha(root), *datasets.nab(root)]
    for s in splits:
        for name, grp in s.test.groupby("entity"):
            tr = s.train[s.train["entity"] == name]
            assert tr.empty or tr["timestamp"].max() < grp["timestamp"].min(), s.name
        span = s.test.groupby("entity")["timestamp"].agg(["min", "max"])
        for inc in s.test_incidents.itertuples():
            assert span.loc[inc.entity, "min"] <= inc.start <= span.loc[inc.entity, "max"]
            assert inc.start <= inc.end
    nezha = splits[0]
    assert set(nezha.test_incidents["cause"]) == {"cpu_contention", "cpu_consumed",
                                                  "network_delay", "code_error"}
    assert nezha.train["timestamp"].max() < pd.Timestamp("2022-08-23", tz="UTC")


# --------------------------------------------------------------------------- bench rca


@pytest.mark.parametrize("ranks, expected", [
    ([1, 1], (1.0, 1.0, 1.0)),
    ([1, None], (0.5, 0.5, 0.5)),  # a miss counts in every AC@k
    ([2, 6], (0.0, 0.5, 0.4)),  # AC@1..5 = 0, .5, .5, .5, .5
])
def test_rca_accuracy_at_k(ranks, expected):
    from bench import bench_rca

    got = bench_rca._ranks_to_metrics(ranks)
    assert (got["ac1"], got["ac3"], got["avg5"]) == pytest.approx(expected)


def test_rca_baro_ranks_the_entity_that_moved_most_against_its_before_window():
    from bench import bench_rca

    t = pd.date_range("2026-01-01", periods=40, freq="min", tz="UTC")
    rng = np.random.default_rng(0)
    frame = pd.concat([pd.DataFrame({"timestamp": t, "entity": e,
                                     "cpu": 10 + rng.normal(0, 1, 40) + jump * (np.arange(40)
                                                                                >= 30)})
                       for e, jump in (("a", 3.0), ("b", 20.0), ("c", 0.0))])
    pre, post = frame[frame["timestamp"] < t[30]], frame[frame["timestamp"] >= t[30]]
    assert bench_rca._baro(pre, post)[:2] == ["b", "a"]


def test_rca_skips_cleanly_without_data(tmp_path, monkeypatch):
    from bench import bench_rca

    monkeypatch.setenv("FTML_DATA", str(tmp_path / "absent"))
    with pytest.raises(SkipBench, match="not found"):
        bench_rca.run()


# --------------------------------------------------------------------------- generalization


def test_ecod_batch_of_one_is_pyods_score_of_a_single_row():
    pytest.importorskip("pyod")
    from pyod.models.ecod import ECOD

    from bench.bench_generalization import ecod_batch_of_one

    rng = np.random.default_rng(0)
    X = rng.gamma(2.0, size=(300, 5))
    X[:, 1] = -X[:, 1]  # left-skewed
    X[:, 2] = np.round(X[:, 2])  # ties
    T = rng.gamma(2.0, size=(25, 5))
    T[:, 2] = np.round(T[:, 2])
    det = ECOD().fit(X)
    want = np.array([det.decision_function(t[None])[0] for t in T])
    got = ecod_batch_of_one(X, np.sort(X, axis=0), T)
    assert np.allclose(got, want, rtol=0, atol=1e-9)


def test_generalization_pools_counts_and_names_the_best_baseline():
    from bench.bench_generalization import Counts, part_row

    a = Counts(incidents=4, found=2, events=4, false_alarms=2, entity_days=10.0,
               cal_false_alarms=1, cal_entity_days=10.0, seconds=1.0, auc_pr=[0.5])
    b = Counts(incidents=4, found=4, events=4, false_alarms=0, entity_days=10.0,
               cal_false_alarms=0, cal_entity_days=10.0, seconds=1.0, auc_pr=[0.7])
    pooled = a.add(b)
    assert (pooled.recall, pooled.precision, pooled.fa_judged) == (0.75, 0.75, 0.1)
    assert pooled.fa_cal == 0.05 and pooled.auc == pytest.approx(0.6)
    weak = Counts(incidents=4, found=1, events=2, false_alarms=1, entity_days=10.0)
    counts = {"ftml": pooled, "robust_z": weak, "ecod": a, "iforest": weak,
              "forest": a, "robust": weak, "forest+robust": a, "forest|robust": weak}
    r = part_row("X held-out", counts, 3, budget=0.1)
    assert r["vs"] == "ECOD" and r["anchor"] == pytest.approx(a.f1, abs=1e-3)
    assert r["fa_judged_over_cal"] == pytest.approx(2.0)
    assert r["fa_judged_over_budget"] == pytest.approx(1.0)


def test_candidate_config_is_merged_over_each_split(monkeypatch):
    from bench.bench_generalization import candidate_config, with_config

    monkeypatch.setenv("FTML_BENCH_CONFIG", '{"detect": {"threshold_tail": "pot"}}')
    split = datasets.Split("s", pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), pd.DataFrame(),
                           config={"read": {"step": "60s"}, "detect": {"alarm_budget": 0.2}})
    got = with_config(split, candidate_config())
    assert got.config == {"read": {"step": "60s"},
                          "detect": {"alarm_budget": 0.2, "threshold_tail": "pot"}}
    assert split.config["detect"] == {"alarm_budget": 0.2}  # the split itself is unchanged


def _tiny_skab(root, n=400):
    rng = np.random.default_rng(0)
    base = root / "skab"
    cols = ["Accelerometer1RMS", "Current", "Pressure"]

    def write(path, start, anomaly):
        path.parent.mkdir(parents=True, exist_ok=True)
        t = pd.date_range(start, periods=n, freq="1s")
        frame = pd.DataFrame({"datetime": t.strftime("%Y-%m-%d %H:%M:%S"),
                              **{c: rng.random(n) for c in cols}})
        if anomaly is not None:
            frame["anomaly"] = anomaly
            frame["changepoint"] = 0.0
        frame.to_csv(path, sep=";", index=False, compression="gzip")

    write(base / "data" / "anomaly-free" / "anomaly-free.csv.gz", "2020-02-08 10:00:00", None)
    flags = np.zeros(n)
    flags[100:150] = 1
    write(base / "data" / "valve1" / "0.csv.gz", "2020-03-09 10:00:00", flags)
    write(base / "data" / "valve1" / "1.csv.gz", "2020-03-09 10:05:00", flags)  # overlaps 0
    pd.DataFrame({"file": ["data/valve1/0.csv.gz", "data/valve1/1.csv.gz"],
                  "fault_class_derived": ["valve_closure_inlet"] * 2}).to_csv(
        base / "labels_index.csv", index=False)


def test_skab_adapter_one_entity_per_file_and_labelled_runs(tmp_path):
    _tiny_skab(tmp_path)
    split = datasets.skab(tmp_path, ("valve1",))
    assert set(split.train["entity"]) == {"skab-anomaly-free"}
    assert sorted(split.test["entity"].unique()) == ["skab-valve1-0", "skab-valve1-1"]
    assert "anomaly" not in split.test and "changepoint" not in split.test
    inc = split.test_incidents
    assert len(inc) == 2 and set(inc["cause"]) == {"valve_closure_inlet"}
    assert ((inc["end"] - inc["start"]) == pd.Timedelta(seconds=49)).all()
    assert split.config == {"read": {"step": "1s"}}


def test_asd_adapter_rows_are_five_minute_steps(tmp_path):
    rng = np.random.default_rng(0)
    for part, n in (("train", 300), ("test", 200)):
        d = tmp_path / "asd" / part
        d.mkdir(parents=True)
        frame = pd.DataFrame(rng.random((n, 3)), columns=["m0", "m1", "m2"])
        frame["label"] = 0
        if part == "test":
            frame.loc[50:59, "label"] = 1
        frame.to_csv(d / "omi-1.csv.gz", index=False, compression="gzip")
    split = datasets.asd(tmp_path)
    assert list(split.train.columns) == ["timestamp", "entity", "m0", "m1", "m2"]
    assert split.test["timestamp"].iloc[0] - split.train["timestamp"].iloc[-1] == \
        pd.Timedelta(minutes=5)
    inc = split.test_incidents
    assert len(inc) == 1 and inc["end"].iloc[0] - inc["start"].iloc[0] == pd.Timedelta(minutes=45)


@pytest.mark.parametrize(("score", "want"), [
    (-1.0, -np.log10(1000 / 1001)),  # below every reference window: share 1
    (499.5, -np.log10(500 / 1001)),  # half of the reference at least as high
    (989.0, -np.log10(11 / 1001)),  # just under the 99 % quantile: the empirical share
    (989.01 + 8.991, 3.0),  # one (q99.9 - q99) past q99: one decade more
    (989.01 + 89.91, 12.0),  # far past the reference's maximum: still ordered, linearly
])
def test_tail_rank_is_the_share_above_then_an_exponential_tail(score, want):
    from bench.bench_generalization import TailRank

    rank = TailRank(np.arange(1000.0))  # q99 = 989.01, q99.9 = 998.001
    assert rank(np.array([score]))[0] == pytest.approx(want, abs=0.01)


@pytest.mark.parametrize(("how", "want"), [("rank|", [3.0, 2.0]), ("rank+", [1.5, 2.0])])
def test_rank_scores_max_or_mean_of_the_two_tails(how, want):
    from bench.bench_generalization import TailRank, rank_scores

    ref = np.arange(1000.0)
    ranks = (TailRank(ref), TailRank(ref))
    got = rank_scores(np.array([998.01, 998.01 - 9.0]), np.array([-1.0, 998.01 - 9.0]),
                      ranks, how)
    assert got == pytest.approx(want, abs=0.02)


def _calm_then_spiky(days=2.0, spikes=3):
    """Two entities of one-minute windows: ``calm`` at 0, ``spiky`` at 0 with ``spikes``
    isolated runs of 10 windows at 5 (each one false alarm at any threshold below 5)."""
    n = int(days * 1440)
    t = np.arange(n, dtype=np.int64) * 60 * 10**9
    spiky = np.zeros(n)
    for k in range(spikes):
        spiky[200 + k * 400:210 + k * 400] = 5.0
    ent = np.array(["calm"] * n + ["spiky"] * n, dtype=object)
    return ent, np.r_[t, t], np.r_[np.zeros(n), spiky]


@pytest.mark.parametrize(("days", "weight"), [(1.0, 0.5), (3.0, 0.75)])
def test_entity_offsets_shrink_each_own_threshold_toward_the_fleets(days, weight):
    from bench.bench_generalization import count_false_alarms, entity_offsets, shifted
    from ftml.detect import AlarmThreshold, EventRules

    ent, end, s = _calm_then_spiky(days)
    model = types.SimpleNamespace(step=pd.Timedelta("60s"), event_rules=EventRules(),
                                  config=types.SimpleNamespace(detect=types.SimpleNamespace(
                                      alarm_budget=0.1, threshold_tail="empirical")))
    fleet = AlarmThreshold(budget=0.1, rules=EventRules()).fit(ent, end, s, 60 * 10**9)
    own = AlarmThreshold(budget=0.1, rules=EventRules()).fit(ent[ent == "spiky"],
                                                             end[ent == "spiky"],
                                                             s[ent == "spiky"], 60 * 10**9)
    off = entity_offsets(ent, end, s, fleet.threshold_, model, {})
    assert off["spiky"] == pytest.approx(weight * (own.threshold_ - fleet.threshold_))
    assert off["calm"] <= 0.0  # a calm entity's own threshold is lower than the fleet's
    moved = shifted(ent, s, off)
    assert np.array_equal(moved[ent == "spiky"], s[ent == "spiky"] - off["spiky"])
    unseen = shifted(np.array(["other"], dtype=object), np.array([1.0]), off)
    assert unseen[0] == 1.0  # an entity with no calibration keeps the fleet threshold
    assert count_false_alarms(ent, end, s, 4.0, EventRules(), 60 * 10**9, {}) == 3


# Round 2 (protocol amendment 2026-12-04 15:25): cross-fitted calibration.

@pytest.mark.parametrize(("span", "end", "fold", "inside"), [
    (0, 9, 0, True),  # 4 blocks of 10 steps over 0..39: the first block
    (0, 10, 1, True),  # the second block: the other fold
    (0, 39, 1, True),  # the last block (4th): fold 1
    (3, 7, 0, True),  # windows of 3 steps: span -3..39, blocks of 10.75
    (3, 10, 1, False),  # ends in block 1, starts in block 0: not a fit window
    (3, 12, 1, True),
    (0, 1010, 1, True),  # entity b: its own span (1000..1039), its own blocks
    (0, 1005, 0, True),
])
def test_time_folds_alternate_blocks_of_each_entitys_span(span, end, fold, inside):
    from bench.bench_generalization import time_folds

    t = np.r_[np.arange(40), np.arange(1000, 1040)].astype(np.int64)
    ent = np.array(["a"] * 40 + ["b"] * 40, dtype=object)
    f, i = time_folds(ent, t, span, n_blocks=4)
    k = int(np.flatnonzero(t == end)[0])
    assert (f[k], i[k]) == (fold, inside)
    assert set(np.unique(f)) == {0, 1}


def _mean_scorer(rows):
    m = float(rows[:, 0].mean())
    return lambda X: np.full(len(X), m)


@pytest.mark.parametrize(("fit_ok", "min_fit", "want"), [
    # rows 0-3 fold 0 (values 1, 2, 3, 4), rows 4-7 fold 1 (10, 20, 30, 40)
    ([1] * 8, 1, [25.0] * 4 + [2.5] * 4),  # each fold scored by the other fold's fit
    ([1, 1, 0, 0, 1, 0, 0, 1], 1, [25.0] * 4 + [1.5] * 4),  # only fit rows fit
    ([1, 1, 0, 0, 1, 0, 0, 1], 3, None),  # a fold with too few fit rows: no cross-fit
])
def test_cross_fit_scores_each_fold_by_the_others_fit(fit_ok, min_fit, want):
    from bench.bench_generalization import cross_fit

    V = np.array([1, 2, 3, 4, 10, 20, 30, 40], dtype=float)[:, None]
    fold = np.array([0] * 4 + [1] * 4)
    got = cross_fit(V, fold, np.array(fit_ok, dtype=bool), _mean_scorer, min_fit=min_fit)
    if want is None:
        assert got is None
    else:
        assert got[0] == pytest.approx(want)
        assert len(got[1]) == 2


def test_fold_forest_is_the_defaults_forest_and_scores_an_outlier_higher():
    from bench.bench_generalization import _fold_forest
    from ftml.config import DetectConfig

    rng = np.random.default_rng(0)
    V = rng.normal(size=(2000, 4))
    model = types.SimpleNamespace(config=types.SimpleNamespace(detect=DetectConfig()))
    score = _fold_forest(model)(V)
    s = score(np.array([[0.0] * 4, [8.0] * 4]))
    assert s[1] > s[0] + 0.2


# --------------------------------------------------------------------------- round 3: drift

_DAY = 86_400 * 10**9
_MIN = 60 * 10**9


def _days(values_per_day, entity="a"):
    """Windows at 1-min steps, one UTC day per entry of ``values_per_day`` (a score array)."""
    end = np.concatenate([d * _DAY + np.arange(len(v)) * _MIN
                          for d, v in enumerate(values_per_day)])
    return (np.full(len(end), entity, dtype=object), end.astype(np.int64),
            np.concatenate(values_per_day).astype(np.float64))


def test_drift_day_stats_are_numpys_median_and_q90_per_entity_day():
    from bench.drift import day_stats, sorted_quantile

    rng = np.random.default_rng(1)
    e1, t1, s1 = _days([rng.random(700), rng.random(1440)], "b")
    e2, t2, s2 = _days([rng.random(5)], "a")
    ent, d, n, med, q = day_stats(np.r_[e1, e2], np.r_[t1, t2], np.r_[s1, s2])
    assert list(ent) == ["a", "b", "b"] and list(d) == [0, 0, 1] and list(n) == [5, 700, 1440]
    for i, v in enumerate((s2, s1[:700], s1[700:])):
        assert med[i] == pytest.approx(np.quantile(v, 0.5), abs=1e-15)
        assert q[i] == pytest.approx(np.quantile(v, 0.9), abs=1e-15)
        assert sorted_quantile(np.sort(v), 0.9) == pytest.approx(q[i], abs=1e-15)


@pytest.mark.parametrize("widen, day1, want", [
    # The previous day sat .2 above the reference median, as wide: the shift alone takes the
    # next day back to the reference day.
    (True, lambda s: s + 0.2, lambda s: s),
    (False, lambda s: s + 0.2, lambda s: s),
    # A quiet day (below the reference) never raises the next day's scores: unchanged.
    (True, lambda s: s - 0.2, lambda s: s - 0.2),
    # Three times as wide about the same median: narrowed back by 3 (Y1), unchanged (Y1s).
    (True, lambda s: 0.5 + 3 * (s - 0.5), lambda s: s),
    (False, lambda s: 0.5 + 3 * (s - 0.5), lambda s: 0.5 + 3 * (s - 0.5)),
])
def test_drift_scores_correct_each_day_by_the_day_before(widen, day1, want):
    from bench.drift import day_stats, drift_scores

    base = np.linspace(0.4, 0.6, 1440)
    ent, end, s = _days([day1(base), day1(base)])  # day 0 and day 1 alike
    ref_m, ref_q = np.quantile(base, [0.5, 0.9])
    out = drift_scores(ent, end, s, _MIN, (ref_m, ref_q), widen)
    assert np.array_equal(out[:1440], s[:1440])  # the first day has no day before
    _, _, _, m, q = day_stats(ent[:1440], end[:1440], s[:1440])
    shift = max(0.0, m[0] - ref_m)
    w = max(1.0, (q[0] - m[0]) / (ref_q - ref_m)) if widen else 1.0
    np.testing.assert_allclose(out[1440:], ref_m + (s[1440:] - shift - ref_m) / w, atol=1e-12)
    np.testing.assert_allclose(out[1440:], want(base), atol=1e-9)


def test_drift_needs_a_quarter_day_before_and_the_same_entity():
    from bench.drift import drift_scores

    # a: its day 0 has 359 windows (< a quarter of 1440): day 1 unchanged; b: 360, corrected;
    # c's high day never touches a's or b's scores (per entity).
    e_a, t_a, s_a = _days([np.full(359, 0.9), np.full(10, 0.7)], "a")
    e_b, t_b, s_b = _days([np.full(360, 0.9), np.full(10, 0.7)], "b")
    e_c, t_c, s_c = _days([np.full(1440, 5.0)], "c")
    ent, end, s = np.r_[e_c, e_b, e_a], np.r_[t_c, t_b, t_a], np.r_[s_c, s_b, s_a]
    out = drift_scores(ent, end, s, _MIN, (0.5, 0.6))
    got = {k: out[(ent == k) & (end >= _DAY)] for k in "ab"}
    np.testing.assert_allclose(got["a"], 0.7)
    np.testing.assert_allclose(got["b"], 0.7 - 0.4)
    np.testing.assert_allclose(out[ent == "c"], 5.0)  # its first day: nothing before


# --------------------------------------------------------------------------- logs ablation


def _arm(recall, diagnosis, fa):
    return {"fa_per_entity_day": fa, "causes": {"bad_deploy": {"recall": recall,
                                                               "diagnosis": diagnosis}}}


def test_logs_ablation_selection_rule():
    """Amendment 1's rule: the best min(recall, diagnosis) among candidates that meet the
    goal without more false alarms than metrics only; else the best that beats the current
    logs arm without more false alarms; else none. Ties: fewer log series."""
    from bench.bench_logs_ablation import select

    series = {"C1": 24, "C2": 4, "C3": 7}
    base = {"metrics": _arm(0.8, 0.8, 0.30), "current": _arm(0.4, 1.0, 0.20)}
    figs = {**base, "C1": _arm(0.95, 0.92, 0.25), "C2": _arm(0.97, 0.95, 0.31),
            "C3": _arm(0.93, 0.92, 0.30)}
    assert select(figs, series)[0] == "C3"  # C2 is better but has more false alarms
    figs["C3"] = _arm(0.92, 0.95, 0.29)
    assert select(figs, series)[0] == "C3"  # a tie with C1 on min: fewer series
    figs = {**base, "C1": _arm(0.95, 0.5, 0.2), "C2": _arm(0.7, 0.8, 0.3),
            "C3": _arm(0.3, 1.0, 0.1)}
    chosen, why = select(figs, series)
    assert chosen == "C2" and "no candidate meets the goal" in why  # 0.7 > 0.5 > 0.4
    figs["C2"] = _arm(0.7, 0.8, 0.5)
    assert select(figs, series)[0] == "C1"
    figs["C1"] = _arm(0.35, 0.5, 0.2)
    assert select(figs, series)[0] is None


# --------------------------------------------------------------------------- round 4: dead band


def test_dead_band_is_the_99th_percentile_of_healthy_days_median_excess():
    from bench.drift import dead_band

    # 101 days of entity a, medians .50 + k/1000 (k = 0..100): excesses 0 .. .1, their 99 %
    # quantile .099; entity b's day of 359 windows (< a quarter day) is left out although
    # its median (9) would dominate.
    e1, t1, s1 = _days([np.full(400, 0.5 + k / 1000) for k in range(101)], "a")
    e2, t2, s2 = _days([np.full(359, 9.0)], "b")
    ent, end, s = np.r_[e1, e2], np.r_[t1, t2], np.r_[s1, s2]
    assert dead_band(ent, end, s, _MIN, 0.5) == pytest.approx(0.099, abs=1e-12)
    # Every day below the reference median: floored at 0 (a band never widens the other way).
    assert dead_band(e1, t1, s1, _MIN, 0.8) == 0.0
    # No day with a quarter day of windows: the wobble is unknown, so nothing is corrected.
    assert dead_band(e2, t2, s2, _MIN, 0.5) == float("inf")
    assert dead_band(e2[:0], t2[:0], s2[:0], _MIN, 0.5) == float("inf")


@pytest.mark.parametrize("medians, band, days, want_shift", [
    # The previous day moved .2 above the reference (.5), the band is .05: .15 taken off.
    ([0.7, 0.7], 0.05, 1, 0.15),
    # Inside the band (a healthy wobble): unchanged.
    ([0.53, 0.53], 0.05, 1, 0.0),
    # A quiet day never raises the next day.
    ([0.3, 0.3], 0.0, 1, 0.0),
    # Unknown wobble (no healthy training day): unchanged even after a large move.
    ([2.0, 2.0], float("inf"), 1, 0.0),
    # Two days' persistence: the smaller of the two previous days' excess.
    ([0.6, 0.9, 0.9], 0.05, 2, 0.05),
    ([0.9, 0.6, 0.9], 0.05, 2, 0.05),
    # One day up only (an incident's day): no correction with persistence, with one day .35.
    ([0.5, 0.9, 0.9], 0.05, 2, 0.0),
    ([0.5, 0.9, 0.9], 0.05, 1, 0.35),
])
def test_band_scores_take_off_only_the_move_beyond_the_band(medians, band, days, want_shift):
    from bench.drift import band_scores

    base = np.linspace(-0.1, 0.1, 1440)  # median 0: each day's median is its offset
    ent, end, s = _days([m + base for m in medians])
    out = band_scores(ent, end, s, _MIN, 0.5, band, days)
    last = slice(1440 * (len(medians) - 1), None)
    np.testing.assert_allclose(out[last], s[last] - want_shift, atol=1e-12)
    np.testing.assert_array_equal(out[:1440 * days], s[:1440 * days])  # nothing before them


def test_band_scores_need_every_previous_day_to_count():
    from bench.drift import band_scores

    # Day 0 has 359 windows (< a quarter day): with persistence day 2 is unchanged although
    # day 1 moved; with one day, day 2 is corrected by day 1 alone.
    ent, end, s = _days([np.full(359, 0.9), np.full(1440, 0.9), np.full(10, 0.9)])
    two = band_scores(ent, end, s, _MIN, 0.5, 0.1, 2)
    one = band_scores(ent, end, s, _MIN, 0.5, 0.1, 1)
    np.testing.assert_allclose(two[-10:], 0.9)
    np.testing.assert_allclose(one[-10:], 0.9 - 0.3)


def _arm2(recall, diagnosis, fa, named):
    return {**_arm(recall, diagnosis, fa), "fa_named_share": named}


def test_logs_ablation_amendment2_rule():
    """Amendment 2: eligible when bad_deploy recall and diagnosis >= .9, false alarms <= the
    metrics arm's, false alarms named <= max(.10, current's), and on the diagnosis benchmark
    F <= full's, U >= full's, A >= full's - .03; the best min wins (ties: N1); adopted only
    if its diagnosis beats current's."""
    from bench.bench_logs_ablation import select2

    base = {"metrics": _arm2(0.95, 0.95, 0.20, 0.2), "current": _arm2(1.0, 0.90, 0.18, 0.05)}
    diag = {"full": (0.89, 0.025, 0.83), "N1": (0.89, 0.025, 0.83), "N2": (0.90, 0.02, 0.85)}
    figs = {**base, "N1": _arm2(1.0, 0.95, 0.18, 0.08), "N2": _arm2(1.0, 0.97, 0.19, 0.09)}
    assert select2(figs, diag)[0] == "N2"  # the better min
    figs["N2"] = _arm2(1.0, 0.95, 0.17, 0.05)
    assert select2(figs, diag)[0] == "N1"  # a tie on min: N1 first
    diag["N1"] = (0.89, 0.05, 0.83)  # names more false alarms on the diagnosis benchmark
    assert select2(figs, diag)[0] == "N2"
    diag["N2"] = (0.90, 0.02, 0.80)  # unseen answered unknown falls
    chosen, why = select2(figs, diag)
    assert chosen is None and "no candidate is eligible" in why
    diag = {"full": (0.89, 0.025, 0.83), "N1": (0.89, 0.025, 0.83), "N2": (0.85, 0.0, 0.9)}
    assert select2(figs, diag)[0] == "N1"  # N2 loses more than .03 of accuracy
    figs["N1"] = _arm2(1.0, 0.95, 0.21, 0.05)  # more false alarms than metrics only
    assert select2(figs, diag)[0] is None
    figs["N1"] = _arm2(1.0, 0.95, 0.18, 0.15)  # names more than max(.10, current's)
    assert select2(figs, diag)[0] is None
    figs["N1"] = _arm2(1.0, 0.90, 0.18, 0.05)  # eligible but no better than current
    chosen, why = select2(figs, diag)
    assert chosen is None and "not above current" in why
    assert select2({**figs, "N1": _arm2(1.0, 0.95, 0.1, 0.0)}, None)[0] is None


# --------------------------------------------------------------------------- round 6


def test_fold_forest_balanced_is_w1s_forest():
    from bench.bench_generalization import _fold_forest
    from ftml.config import DetectConfig
    from ftml.detect import IsolationDetector

    rng = np.random.default_rng(0)
    V = rng.normal(size=(2000, 8))
    dc = DetectConfig()
    model = types.SimpleNamespace(config=types.SimpleNamespace(detect=dc))
    got = _fold_forest(model, view="balanced")(V)(V[:50])
    want = IsolationDetector(n_estimators=dc.n_estimators, max_samples=dc.max_samples,
                             random_state=dc.random_state, ensemble="forest",
                             view="balanced").fit(V).component_scores(V[:50])[0]
    np.testing.assert_array_equal(got, want)
    plain = _fold_forest(model)(V)(V[:50])
    assert not np.array_equal(got, plain)  # the view reaches the forest


def test_round6_references_are_z3s_band_and_v1s_half_budget_scales_over_all_training():
    from bench.bench_generalization import round6_judged, round6_references
    from bench.drift import band_scores, dead_band
    from ftml.config import DetectConfig
    from ftml.detect import AlarmThreshold, EventRules, combine_scores

    rng = np.random.default_rng(1)
    # Three days of one entity at 1-min steps; day 2's forest score sits .3 higher (a moved
    # regime), one incident on day 0 (its windows are not clean).
    ent, end, _ = _days([np.zeros(1440)] * 3)
    oof = 0.45 + 0.02 * rng.standard_normal(len(end))
    oof[2 * 1440:] += 0.3
    robust = rng.standard_normal(len(end))
    clean = np.ones(len(end), dtype=bool)
    clean[100:160] = False
    spans = {"a": np.array([[end[100], end[159]]], dtype=np.int64)}
    dc = DetectConfig()
    model = types.SimpleNamespace(config=types.SimpleNamespace(detect=dc))
    ref = round6_references(ent, end, oof, robust, clean, _MIN, spans, model)
    M, B = ref["band"]
    assert M == np.median(oof[clean])
    assert B == dead_band(ent[clean], end[clean], oof[clean], _MIN, M)
    rules = EventRules(min_windows=dc.min_windows, of_windows=dc.of_windows,
                       merge_gap=dc.merge_gap, cooldown=dc.cooldown)
    for i, s in enumerate((oof, robust)):
        half = AlarmThreshold(budget=dc.alarm_budget / 2, rules=rules,
                              tail=dc.threshold_tail).fit(ent, end, s, _MIN, spans)
        assert ref["scales"][i, 1] == half.threshold_  # its own half-budget threshold
        assert ref["scales"][i, 0] == np.median(s[clean])  # its median clear of incidents
    train = ref["train"]
    np.testing.assert_array_equal(train["xfit balanced"], oof)
    np.testing.assert_array_equal(train["xfit balanced band 2d"],
                                  band_scores(ent, end, oof, _MIN, M, B, 2))
    np.testing.assert_array_equal(train["xfit balanced budget|"],
                                  combine_scores(oof, robust, ref["scales"], "forest|robust"))
    # The judged period gets the same transforms with the training references.
    judged = round6_judged(ent, end, oof, robust, _MIN, ref)
    for k, v in judged.items():
        np.testing.assert_array_equal(v, train[k])


def test_round7_threshold_is_the_higher_of_all_training_and_the_slice_and_counts_both():
    from bench.bench_generalization import count_false_alarms, higher_threshold
    from ftml.config import DetectConfig
    from ftml.detect import AlarmThreshold, EventRules

    rng = np.random.default_rng(2)
    dc = DetectConfig()
    rules = EventRules(min_windows=dc.min_windows, of_windows=dc.of_windows,
                       merge_gap=dc.merge_gap, cooldown=dc.cooldown)
    model = types.SimpleNamespace(config=types.SimpleNamespace(detect=dc), event_rules=rules,
                                  step=pd.Timedelta(minutes=1))
    spans = {}

    def fit(ent, end, s, mask):
        return AlarmThreshold(budget=dc.alarm_budget, rules=rules, tail=dc.threshold_tail).fit(
            ent[mask], end[mask], s[mask], _MIN, spans)

    # Twenty calm days (the whole period's budget allows two false alarms), then a 21st (the
    # slice, whose budget allows none) with bursts of high scores: the slice's own threshold is
    # the higher one; and the reverse (bursts in the first days only).
    for noisy_slice in (True, False):
        days = [0.02 * rng.standard_normal(1440) for _ in range(21)]
        for d in ([20] if noisy_slice else [0, 1, 2]):
            for k in range(0, 1440, 120):
                days[d][k:k + 10] += 1.0 + rng.random()
        ent, end, s = _days(days)
        in_slice = end >= 20 * _DAY
        every = np.ones(len(s), dtype=bool)
        t_all, t_cal = fit(ent, end, s, every), fit(ent, end, s, in_slice)
        hi, on_all, on_slice = higher_threshold(ent, end, s, in_slice, t_all.threshold_,
                                                t_all.entity_days_, model, spans)
        assert hi == max(t_all.threshold_, t_cal.threshold_)
        assert (hi == t_cal.threshold_) == noisy_slice and t_cal.threshold_ != t_all.threshold_
        assert on_all == (count_false_alarms(ent, end, s, hi, rules, _MIN, spans),
                          t_all.entity_days_)
        assert on_slice == (count_false_alarms(ent[in_slice], end[in_slice], s[in_slice], hi,
                                               rules, _MIN, spans), t_cal.entity_days_)
        if not noisy_slice:  # t_all is the final one: its own count
            assert on_all[0] == t_all.false_alarms_
        else:  # the slice's is: its own count there
            assert on_slice[0] == t_cal.false_alarms_


def test_dump_counts_appends_one_json_line_per_set(tmp_path, monkeypatch):
    import json

    from bench.bench_generalization import Counts, dump_counts

    c = Counts(incidents=3, found=1, events=2, false_alarms=1, entity_days=2.5,
               cal_false_alarms=0, cal_entity_days=1.0, seconds=0.5, auc_pr=[0.4])
    dump_counts("A", {"selection": {"ftml": c}})  # no path set: nothing written
    path = tmp_path / "counts.jsonl"
    monkeypatch.setenv("FTML_BENCH_COUNTS", str(path))
    dump_counts("A", {"selection": {"ftml": c}})
    dump_counts("B", {"held-out": {"ftml": c}})
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["set"] for x in lines] == ["A", "B"]
    assert Counts(**lines[0]["parts"]["selection"]["ftml"]) == c
