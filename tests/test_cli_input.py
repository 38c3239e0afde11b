"""Bad input through the command line: one line on stderr naming the file and the place,
exit code 2, no traceback and no output left behind."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ftml import api
from ftml.cli import main
from ftml.config import Config

ENTITIES = ("web-1", "web-2", "db-1")
HEADER = "timestamp,entity,cpu,latency_ms\n"


def synthetic_metrics(days: float = 2.0, entities=ENTITIES, seed: int = 0) -> pd.DataFrame:
    """A quiet fleet: a daily cycle plus noise, one row per entity per minute."""
    rng = np.random.default_rng(seed)
    times = pd.date_range("2026-01-05", periods=int(days * 1440), freq="min", tz="UTC")
    minute = np.arange(len(times))
    daily = 40 + 10 * np.sin(2 * np.pi * minute / 1440)
    parts = [pd.DataFrame({
        "timestamp": times.strftime("%Y-%m-%dT%H:%M:%SZ"), "entity": entity,
        "cpu": np.round(daily + rng.normal(0, 2, len(times)), 3),
        "latency_ms": np.round(rng.gamma(5, 4, len(times)), 3)}) for entity in entities]
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def good_metrics(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "metrics.csv"
    synthetic_metrics().to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, good_metrics) -> Path:
    out = tmp_path_factory.mktemp("model") / "model"
    config = Config()
    config.detect.n_estimators = 25  # a small forest: these tests are about input, not skill
    api.train([good_metrics], out, config=config)
    return out


def small_csv(rows: list[str]) -> str:
    """A valid little file (two entities, ten minutes) with ``rows`` appended."""
    lines = [f"2026-01-05T00:{m:02d}:00Z,{e},{40 + m},{20 + m}" for e in ("web-1", "web-2")
             for m in range(10)]
    return HEADER + "\n".join(lines + rows) + "\n"


def run(args: list[str]):
    result = CliRunner().invoke(main, args)
    return result


def assert_clean_failure(result, *names: str, out: Path | None = None) -> str:
    """Exit 2, exactly one 'ftml: error:' line on stderr containing every name, no traceback,
    nothing on stdout and no --out left behind."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("ftml: error: "), line
    for name in names:
        assert name in line, f"{name!r} not in {line!r}"
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    assert result.stdout == ""
    if out is not None:
        assert not out.exists(), f"{out} was left behind"
    return line


# Each case: file name, its bytes, then what the error line must name besides the file.
TRAIN_CASES = {
    "empty file": ("metrics.csv", b"", ["file is empty"]),
    "no metric columns": ("metrics.csv", b"timestamp,entity\n2026-01-05T00:00:00Z,a\n",
                          ["no metric columns"]),
    "unparseable timestamp": ("metrics.csv", small_csv(["yesterday,web-1,1,2"]).encode(),
                              ["row 21", "column 'timestamp'", "'yesterday'"]),
    "text in metric column": ("metrics.csv", small_csv(["2026-01-05T00:10:00Z,web-1,high,2"])
                              .encode(), ["row 21", "column 'cpu'", "'high'", "--exclude"]),
    "unknown layout": ("metrics.csv", b"timestamp,entity,metric\n2026-01-05T00:00:00Z,a,cpu\n",
                       ["unknown layout", "'value'"]),
    "plain CSV named .csv.gz": ("metrics.csv.gz", small_csv([]).encode(), ["not gzip"]),
    "gzip named .csv": ("metrics.csv", gzip.compress(small_csv([]).encode()),
                        ["gzip-compressed", ".csv.gz"]),
    "ragged row": ("metrics.csv", small_csv(["2026-01-05T00:10:00Z,web-1,1,2,3"]).encode(),
                   ["line 22", "5 fields"]),
    "bad JSON line": ("metrics.jsonl",
                      b'{"timestamp": "2026-01-05T00:00:00Z", "cpu": 1}\n{"timestamp": \n',
                      ["line 2", "not valid JSON"]),
    "unknown file type": ("metrics.xlsx", b"PK\x03\x04", ["unknown file type"]),
}


@pytest.mark.parametrize("name,content,expected", TRAIN_CASES.values(), ids=TRAIN_CASES.keys())
def test_train_rejects_bad_metrics(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    out = tmp_path / "model"
    result = run(["train", "--metrics", str(path), "--out", str(out), "--quiet"])
    assert_clean_failure(result, str(path), *expected, out=out)


def test_train_rejects_truncated_parquet(tmp_path, good_metrics):
    whole = tmp_path / "whole.parquet"
    pd.read_csv(good_metrics).to_parquet(whole)
    path = tmp_path / "metrics.parquet"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    out = tmp_path / "model"
    result = run(["train", "--metrics", str(path), "--out", str(out), "--quiet"])
    assert_clean_failure(result, str(path), "truncated", out=out)


def test_train_names_the_row_of_the_second_file(tmp_path, good_metrics):
    second = tmp_path / "more.csv"
    second.write_text(small_csv(["2026-01-05T00:10:00Z,web-1,1,?"]))
    out = tmp_path / "model"
    result = run(["train", "--metrics", str(good_metrics), "--metrics", str(second),
                  "--out", str(out), "--quiet"])
    assert_clean_failure(result, str(second), "row 21", "column 'latency_ms'", out=out)


@pytest.mark.parametrize("args,expected", [
    (["--step", "soon"], ["--step", "cannot read step"]),
    (["--timestamp-col", "when"], ["no column 'when'", "--timestamp-col"]),
    (["--metrics", "missing/*.csv"], ["missing/*.csv", "no file matches"]),
    (["--metrics", "missing.csv"], ["missing.csv", "file not found"]),
], ids=["bad step", "missing timestamp column", "unmatched glob", "missing file"])
def test_train_rejects_bad_options(tmp_path, good_metrics, args, expected):
    out = tmp_path / "model"
    metrics = [] if "--metrics" in args else ["--metrics", str(good_metrics)]
    result = run(["train", *metrics, *args, "--out", str(out), "--quiet"])
    assert_clean_failure(result, *expected, out=out)


INCIDENT_CASES = {
    "end before start": ("entity,start,end,cause\n"
                         "web-1,2026-01-05T03:00:00Z,2026-01-05T03:30:00Z,cpu\n"
                         "web-2,2026-01-05T05:00:00Z,2026-01-05T04:00:00Z,disk\n",
                         ["row 2", "ends", "before it starts"]),
    "entity without metrics": ("entity,start,end,cause\n"
                               "web-9,2026-01-05T03:00:00Z,2026-01-05T03:30:00Z,cpu\n",
                               ["row 1", "column 'entity'", "'web-9'", "no metrics"]),
    "no entity, several in metrics": ("start,end,cause\n"
                                      "2026-01-05T03:00:00Z,2026-01-05T03:30:00Z,cpu\n",
                                      ["no 'entity' column"]),
    "unparseable start": ("entity,start,end,cause\nweb-1,noon,2026-01-05T03:30:00Z,cpu\n",
                          ["row 1", "column 'start'", "'noon'"]),
    "empty incidents file": ("", ["file is empty"]),
}


@pytest.mark.parametrize("content,expected", INCIDENT_CASES.values(), ids=INCIDENT_CASES.keys())
def test_train_rejects_bad_incidents(tmp_path, good_metrics, content, expected):
    incidents = tmp_path / "incidents.csv"
    incidents.write_text(content)
    out = tmp_path / "model"
    result = run(["train", "--metrics", str(good_metrics), "--incidents", str(incidents),
                  "--out", str(out), "--quiet"])
    assert_clean_failure(result, str(incidents), *expected, out=out)


# --------------------------------------------------------------------------- score


def test_score_works_on_good_input(tmp_path, model_dir, good_metrics):
    # The baseline the failure cases below differ from.
    out = tmp_path / "events.jsonl"
    result = run(["score", "--model", str(model_dir), "--metrics", str(good_metrics),
                  "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert out.exists()


def test_score_names_the_row_in_a_later_chunk(tmp_path, model_dir):
    frame = synthetic_metrics(days=1.0, entities=("web-1",))
    frame["cpu"] = frame["cpu"].astype(object)
    frame.loc[1234, "cpu"] = "n.a."
    path = tmp_path / "metrics.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "events.jsonl"
    result = run(["score", "--model", str(model_dir), "--metrics", str(path), "--out", str(out),
                  "--chunk-rows", "1000", "--quiet"])
    assert_clean_failure(result, str(path), "row 1235", "column 'cpu'", "'n.a.'", out=out)


def test_score_rejects_missing_metric(tmp_path, model_dir):
    path = tmp_path / "metrics.csv"
    synthetic_metrics(days=0.1).drop(columns="latency_ms").to_csv(path, index=False)
    out = tmp_path / "events.csv"
    result = run(["score", "--model", str(model_dir), "--metrics", str(path), "--out", str(out),
                  "--quiet"])
    assert_clean_failure(result, str(path), "latency_ms", "missing", out=out)


@pytest.mark.parametrize("name,content,expected", [
    ("metrics.csv", gzip.compress(small_csv([]).encode()), ["gzip-compressed"]),
    ("metrics.csv.gz", small_csv([]).encode(), ["not gzip"]),
    ("metrics.parquet", b"PAR1 not really", ["truncated"]),
    ("metrics.csv", small_csv(["2026-01-05T00:10:00Z,web-1,1,2,3"]).encode(), ["line 22"]),
], ids=["gzip named .csv", "plain named .csv.gz", "truncated parquet", "ragged row"])
def test_score_rejects_unreadable_files(tmp_path, model_dir, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    out = tmp_path / "events.jsonl"
    result = run(["score", "--model", str(model_dir), "--metrics", str(path), "--out", str(out),
                  "--quiet"])
    assert_clean_failure(result, str(path), *expected, out=out)


def test_score_groups_out_and_topology(tmp_path, model_dir, good_metrics):
    topo = tmp_path / "calls.csv"
    topo.write_text("source,target\nweb-1,db-1\nweb-2,db-1\n")
    out, groups = tmp_path / "events.jsonl", tmp_path / "groups.csv"
    result = run(["score", "--model", str(model_dir), "--metrics", str(good_metrics),
                  "--out", str(out), "--topology", str(topo), "--groups-out", str(groups)])
    assert result.exit_code == 0, result.output
    assert "incident groups" in result.output
    table = pd.read_csv(groups)
    assert list(table.columns) == ["group", "start", "end", "entities", "events", "suspects",
                                   "cause", "evidence"]
    events = pd.read_json(out, lines=True)
    assert len(table) == events["group"].nunique()


@pytest.mark.parametrize("content, expected", [
    ("source,target\nweb-1,\n", "empty source or target"),
    ("only\n", "two columns"),
])
def test_score_rejects_a_bad_topology_before_the_work(tmp_path, model_dir, good_metrics,
                                                      content, expected):
    topo = tmp_path / "calls.csv"
    topo.write_text(content)
    out, groups = tmp_path / "events.jsonl", tmp_path / "groups.csv"
    result = run(["score", "--model", str(model_dir), "--metrics", str(good_metrics),
                  "--out", str(out), "--topology", str(topo), "--groups-out", str(groups)])
    assert_clean_failure(result, "calls.csv", expected, out=out)
    assert not groups.exists()
