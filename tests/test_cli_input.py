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
    "gzip named .csv": ("metrics.csv", gzip.compress(small_csv([]).encode(), mtime=0),
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
    ("metrics.csv", gzip.compress(small_csv([]).encode(), mtime=0), ["gzip-compressed"]),
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


# --------------------------------------------------------------------------- one set of options


def _renamed(frame: pd.DataFrame) -> pd.DataFrame:
    """The good fleet with other column names and a text column, as some exports are."""
    out = frame.rename(columns={"timestamp": "when", "entity": "node"})
    out["note"] = "ok"
    return out


@pytest.fixture(scope="module")
def renamed_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("renamed")
    metrics = d / "metrics.csv"
    _renamed(synthetic_metrics()).to_csv(metrics, index=False)
    config = d / "ftml.yaml"
    config.write_text("detect: {n_estimators: 25}\n")
    out = d / "model"
    result = run(["train", "--metrics", str(metrics), "--out", str(out), "--config", str(config),
                  "--timestamp-col", "when", "--entity-col", "node", "--exclude", "note",
                  "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def test_score_reads_as_the_model_was_trained(tmp_path, renamed_model):
    # No read option: the model remembers --timestamp-col, --entity-col and --exclude.
    later = tmp_path / "later.csv"
    _renamed(synthetic_metrics(days=0.5, seed=1)).to_csv(later, index=False)
    out = tmp_path / "events.jsonl"
    result = run(["score", "--model", str(renamed_model), "--metrics", str(later),
                  "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert out.exists()


@pytest.mark.parametrize("command", ["score", "evaluate", "replay"])
def test_every_reading_command_takes_the_read_options(tmp_path, model_dir, command):
    # A text column the model never saw: --exclude drops it, as the error message says.
    path = tmp_path / "metrics.csv"
    frame = synthetic_metrics(days=0.5, seed=2)
    frame["owner"] = "team-a"
    frame.to_csv(path, index=False)
    incidents = tmp_path / "incidents.csv"
    incidents.write_text("entity,start,end,cause\n"
                         "web-1,2026-01-05T03:00:00Z,2026-01-05T03:30:00Z,cpu_hog\n")
    playbooks = tmp_path / "playbooks.yaml"
    playbooks.write_text("version: 1\nplaybooks:\n  - name: cool\n    cause: unknown\n"
                         "    steps:\n      - escalate: hot\n")
    args = {"score": ["score", "--out", str(tmp_path / "events.jsonl")],
            "evaluate": ["evaluate", "--incidents", str(incidents)],
            "replay": ["playbook", "replay", "--playbooks", str(playbooks)]}[command]
    base = [*args, "--model", str(model_dir), "--metrics", str(path)]
    if command != "replay":
        base.append("--quiet")
    refused = run(base)
    assert_clean_failure(refused, "owner", "--exclude")
    result = run([*base, "--exclude", "owner"])
    assert result.exit_code == 0, (result.output, result.exception)


def test_watch_takes_the_read_options():
    result = run(["watch", "--help"])
    for option in ("--timestamp-col", "--entity-col", "--step", "--exclude"):
        assert option in result.output


def test_score_refuses_a_step_other_than_the_models(tmp_path, model_dir, good_metrics):
    out = tmp_path / "events.jsonl"
    result = run(["score", "--model", str(model_dir), "--metrics", str(good_metrics),
                  "--out", str(out), "--step", "30s", "--quiet"])
    assert_clean_failure(result, "--step 30s", "model's step", out=out)


def test_a_step_without_unit_says_it_is_seconds(tmp_path, good_metrics):
    out = tmp_path / "model"
    config = tmp_path / "ftml.yaml"
    config.write_text("detect: {n_estimators: 10}\n")
    result = run(["train", "--metrics", str(good_metrics), "--out", str(out), "--step", "60",
                  "--config", str(config), "--quiet"])
    assert result.exit_code == 0, result.output
    notes = result.stderr.strip().splitlines()
    assert notes == ["ftml: note: --step 60 has no unit: read as 60s (seconds)"]


def test_a_step_finer_than_the_data_is_named(tmp_path, good_metrics):
    out = tmp_path / "model"
    result = run(["train", "--metrics", str(good_metrics), "--out", str(out), "--step", "7s",
                  "--quiet"])
    assert_clean_failure(result, str(good_metrics), "--step 7s", "spacing of 60s",
                         "--step 60s", out=out)


def test_an_unknown_config_section_is_refused(tmp_path, good_metrics):
    config = tmp_path / "ftml.yaml"
    config.write_text("reed: {step: 60s}\ndetect: {n_estimators: 10}\n")
    out = tmp_path / "model"
    result = run(["train", "--metrics", str(good_metrics), "--out", str(out),
                  "--config", str(config), "--quiet"])
    assert_clean_failure(result, str(config), "unknown section 'reed'", "read", out=out)


@pytest.mark.parametrize("command", ["train", "score"])
def test_a_row_shorter_than_the_header_is_refused(tmp_path, model_dir, command):
    path = tmp_path / "metrics.csv"
    # Row 21 lacks its last field; an empty last field (row 22) is a missing value, allowed.
    path.write_text(small_csv(["2026-01-05T00:10:00Z,web-1,1", "2026-01-05T00:11:00Z,web-1,1,"]))
    if command == "train":
        out = tmp_path / "model"
        args = ["train", "--metrics", str(path), "--out", str(out), "--quiet"]
    else:
        out = tmp_path / "events.jsonl"
        args = ["score", "--model", str(model_dir), "--metrics", str(path), "--out", str(out),
                "--chunk-rows", "1000", "--quiet"]
    result = run(args)
    assert_clean_failure(result, str(path), "row 21", "3 fields", "header 4", out=out)


def test_an_empty_last_field_is_a_missing_value(tmp_path, model_dir):
    path = tmp_path / "metrics.csv"
    frame = synthetic_metrics(days=0.5, seed=3)
    frame["latency_ms"] = frame["latency_ms"].astype(object)
    frame.loc[5, "latency_ms"] = ""
    frame.to_csv(path, index=False)
    out = tmp_path / "events.jsonl"
    result = run(["score", "--model", str(model_dir), "--metrics", str(path), "--out", str(out),
                  "--chunk-rows", "1000", "--quiet"])
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------- fit to the data


def test_entities_not_in_training_are_named_once(tmp_path, model_dir):
    path = tmp_path / "metrics.csv"
    synthetic_metrics(days=0.5, entities=("web-1", "web-9", "db-7"), seed=4).to_csv(path,
                                                                                    index=False)
    result = run(["score", "--model", str(model_dir), "--metrics", str(path),
                  "--out", str(tmp_path / "events.jsonl"), "--quiet"])
    assert result.exit_code == 0, result.output
    lines = [w for w in result.stderr.splitlines() if "not in training" in w]
    assert lines == ["ftml: warning: 2 of 3 entities were not in training and are scored "
                     "against the fleet-wide baseline (all training entities pooled, per hour "
                     "of day): db-7, web-9"]


def _misfit(tmp_path) -> Path:
    """The training fleet at ten times its latency: most windows look anomalous."""
    frame = synthetic_metrics(days=0.5, seed=5)
    frame["latency_ms"] *= 10
    path = tmp_path / "metrics.csv"
    frame.to_csv(path, index=False)
    return path


def test_a_model_that_does_not_fit_the_data_says_so(tmp_path, model_dir, good_metrics):
    result = run(["score", "--model", str(model_dir), "--metrics", str(_misfit(tmp_path)),
                  "--out", str(tmp_path / "events.jsonl"), "--quiet"])
    assert result.exit_code == 0, result.output
    misfit = [w for w in result.stderr.splitlines() if "does not fit" in w]
    assert len(misfit) == 1 and misfit[0].startswith("ftml: warning: ")
    assert "% of windows flagged" in misfit[0] and "calibration slice" in misfit[0]
    # Its own kind of data: no warning.
    fine = run(["score", "--model", str(model_dir), "--metrics", str(good_metrics),
                "--out", str(tmp_path / "fine.jsonl"), "--quiet"])
    assert fine.exit_code == 0 and "warning" not in fine.stderr, fine.stderr


def test_evaluate_says_so_on_stderr_in_the_text_and_the_html(tmp_path, model_dir):
    incidents = tmp_path / "incidents.csv"
    incidents.write_text("entity,start,end,cause\n"
                         "web-1,2026-01-05T03:00:00Z,2026-01-05T03:30:00Z,cpu_hog\n")
    html = tmp_path / "report.html"
    result = run(["evaluate", "--model", str(model_dir), "--metrics", str(_misfit(tmp_path)),
                  "--incidents", str(incidents), "--html", str(html), "--quiet"])
    assert result.exit_code == 0, result.output
    assert sum("does not fit" in w for w in result.stderr.splitlines()) == 1
    assert sum(line.startswith("warning: ") and "does not fit" in line
               for line in result.stdout.splitlines()) == 1
    assert "<p class='warning'><b>Warning:</b>" in html.read_text()


# --------------------------------------------------------------------------- progress


def _stderr_on_a_terminal(args: list[str]) -> str:
    """Run ftml as its own process with stderr on a pseudo-terminal; what it drew there."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    main_fd, term_fd = pty.openpty()
    # A size, as a real terminal has (tqdm draws nothing 0 columns wide).
    fcntl.ioctl(term_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "ftml", *args], stdout=subprocess.DEVNULL,
                            stderr=term_fd, env=env)
    os.close(term_fd)
    out = b""
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        out += chunk
    os.close(main_fd)
    assert proc.wait(timeout=120) == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


def test_train_and_score_show_progress_on_a_terminal(tmp_path, good_metrics):
    config = tmp_path / "ftml.yaml"
    config.write_text("detect: {n_estimators: 10}\n")
    model = tmp_path / "model"
    drawn = _stderr_on_a_terminal(["train", "--metrics", str(good_metrics), "--out", str(model),
                                   "--config", str(config)])
    for stage in ("reading metrics", "baselines", "forest", "calibration", "diagnosis",
                  "writing the bundle"):
        assert f"training: {stage}" in drawn, drawn
    drawn = _stderr_on_a_terminal(["score", "--model", str(model), "--metrics",
                                   str(good_metrics), "--out", str(tmp_path / "events.jsonl")])
    assert "scoring" in drawn, drawn
    # --quiet draws nothing.
    assert "training" not in _stderr_on_a_terminal(
        ["train", "--metrics", str(good_metrics), "--out", str(tmp_path / "m2"), "--config",
         str(config), "--quiet"])


# --------------------------------------------------------------------------- start-up


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["score", "--help"]])
def test_help_and_version_import_no_heavy_library(args):
    # pandas alone took 0.5 s of `ftml --help`'s 0.7 s: commands import what they need.
    import subprocess
    import sys

    code = ("import sys\nfrom ftml.cli import main\n"
            f"sys.argv = ['ftml', *{args!r}]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = ('pandas', 'numpy', 'sklearn', 'scipy', 'yaml', 'joblib', 'tqdm')\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n")
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


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
