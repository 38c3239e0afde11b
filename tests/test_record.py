"""``ftml record``: a watch source -> training history in the metric contract. The real
``local`` source here; the real Prometheus in tests/test_watch_prometheus.py."""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from ftml.config import ReadConfig
from ftml.features import detect_counters
from ftml.io import read_metrics
from ftml.record import record, time_arg
from ftml.recover import FakeClock
from ftml.sources import LOCAL_METRICS

PY = sys.executable
COUNTERS = [m for m in LOCAL_METRICS if m.endswith("_total")]


def test_the_local_source_records_the_contract_and_its_counters_train_as_counters(tmp_path):
    out = tmp_path / "history.csv"
    r = subprocess.run([PY, "-m", "ftml", "record", "--source", "local", "--for", "12s",
                        "--step", "1s", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "recorded" in r.stdout and str(out) in r.stdout
    raw = pd.read_csv(out)
    assert list(raw.columns) == ["timestamp", "entity", *LOCAL_METRICS]
    assert raw["entity"].nunique() == 1 and raw["entity"].iloc[0] == socket.gethostname()
    assert len(raw) >= 11
    data = read_metrics([out], ReadConfig())
    assert data.step == pd.Timedelta(seconds=1)
    assert list(data.metrics) == list(LOCAL_METRICS)
    codes, _ = data.entity_codes()
    # Every _total column is a counter at training (an idle disk or a zero error count
    # rises in few steps: by the rise rule alone they were gauges). (In 12 s a gauge may
    # rise steadily too and count as one by that rule: not asserted here.)
    assert set(COUNTERS) <= set(detect_counters(data.values(), codes, data.metrics))


def test_a_total_that_rises_rarely_is_a_counter_and_one_that_falls_is_not():
    n = 200
    seg = np.zeros(n, dtype=np.int64)
    idle = np.repeat(np.arange(10.0), 20)  # rises in 9 of 199 steps
    zero = np.zeros(n)
    noisy = 50 + np.sin(np.arange(n))  # falls often: not a counter, whatever its name
    values = np.column_stack([idle, zero, noisy, idle])
    names = ["disk_read_bytes_total", "net_errors_total", "temp_total", "idle_gauge"]
    assert detect_counters(values, seg, names) == names[:2]


def test_a_past_range_of_a_file_is_its_rows_in_the_range(tmp_path):
    src = tmp_path / "m.csv"
    t = pd.date_range("2026-03-01", periods=120, freq="60s", tz="UTC")
    pd.DataFrame({"timestamp": t, "entity": "a", "cpu": np.arange(120.0),
                  "bytes_total": np.arange(120.0) * 10}).to_csv(src, index=False)
    out = tmp_path / "rec.csv"
    summary = record(f"file:{src}", out, since="2026-03-01T00:30:00Z",
                     until="2026-03-01T00:59:00Z", clock=FakeClock("2026-03-02"))
    got = pd.read_csv(out)
    assert summary.rows == len(got) == 30
    assert list(got.columns) == ["timestamp", "entity", "cpu", "bytes_total"]
    assert got["timestamp"].iloc[0] == "2026-03-01T00:30:00Z"
    assert got["cpu"].tolist() == list(np.arange(30.0, 60.0))


def test_time_args_are_durations_ago_or_times():
    assert time_arg("2h", "--since", 10_000.0) == 10_000.0 - 7200
    assert time_arg("2026-03-01T00:00:00Z", "--since", 0.0) == \
        pd.Timestamp("2026-03-01", tz="UTC").timestamp()


@pytest.mark.parametrize("args, message", [
    (["--source", "local", "--out", "h.csv"], "--for DURATION"),
    (["--source", "local", "--for", "1h", "--since", "2h", "--out", "h.csv"], "--for DURATION"),
    (["--source", "local", "--since", "2h", "--out", "h.csv"], "no history"),
    (["--source", "local", "--for", "1h", "--out", "h.parquet"], "CSV"),
    (["--source", "local", "--for", "soon", "--out", "h.csv"], "cannot read --for"),
    (["--source", "file:m.csv", "--since", "yesterday-ish", "--out", "h.csv"], "--since"),
    (["--source", "prometheus:http://127.0.0.1:9", "--for", "1h", "--out", "h.csv"],
     "source unavailable"),
    (["--source", "prometheus:http://127.0.0.1:9", "--since", "1h", "--out", "h.csv"],
     "no Prometheus queries"),
])
def test_bad_record_options_are_one_line_errors_and_leave_no_file(tmp_path, args, message):
    (tmp_path / "ftml.yaml").write_text("watch:\n  prometheus: {queries: {cpu: up}}\n")
    if "no Prometheus queries" in message:
        config = []
    else:
        config = ["--config", str(tmp_path / "ftml.yaml")]
    r = subprocess.run([PY, "-m", "ftml", "record", *args, *config], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and r.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ftml.yaml"]
