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
