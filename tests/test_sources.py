"""Metric sources of ``ftml watch``: tailing files (half lines, rotation, truncation, bad
lines), stdin, this machine (psutil), and Prometheus' HTTP API (served by a small fake on
loopback: backfill, aligned instant queries, catch-up after an outage, errors)."""

from __future__ import annotations

import io
import json
import math
import os
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from ftml.config import ReadConfig
from ftml.errors import ConfigError
from ftml.sources import (
    LOCAL_METRICS,
    FileSource,
    LocalConfig,
    LocalSource,
    PrometheusConfig,
    PrometheusSource,
    SourceError,
    StdinSource,
    WatchSourceConfig,
    make_source,
    source_config,
)

HEADER = "timestamp,entity,cpu,mem\n"


def line(i: int, entity: str = "web-1") -> str:
    ts = pd.Timestamp("2026-02-01", tz="UTC") + pd.Timedelta(minutes=i)
    return f"{ts.strftime('%Y-%m-%dT%H:%M:%SZ')},{entity},{10 + i},{50 + i}\n"


def jline(i: int, entity: str = "web-1") -> str:
    ts = pd.Timestamp("2026-02-01", tz="UTC") + pd.Timedelta(minutes=i)
    return json.dumps({"timestamp": ts.isoformat(), "entity": entity, "cpu": 10 + i,
                       "mem": 50 + i}) + "\n"


def cpus(frame) -> list[float]:
    return [] if frame is None else frame["cpu"].tolist()


def append(path, text):
    with open(path, "a") as fh:
        fh.write(text)


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_half_written_last_line_waits_for_its_newline(tmp_path, fmt):
    path = tmp_path / f"m.{fmt}"
    mk = line if fmt == "csv" else jline
    path.write_text((HEADER if fmt == "csv" else "") + mk(0) + mk(1)[:12])
    src = FileSource(path)
    assert cpus(src.poll(0)) == [10]
    assert src.poll(0) is None  # still half a line
    append(path, mk(1)[12:] + mk(2))
    frame = src.poll(0)
    assert cpus(frame) == [11, 12]
    assert list(frame.columns[:2]) == ["entity", "timestamp"]
    assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"


def test_rotation_reads_the_rest_of_the_old_file_then_the_new(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(HEADER + line(0))
    src = FileSource(path)
    assert cpus(src.poll(0)) == [10]
    append(path, line(1))  # written after the last poll, before rotation
    os.rename(path, tmp_path / "m.csv.1")
    path.write_text(HEADER + line(2))
    assert cpus(src.poll(0)) == [11, 12]
    append(path, line(3))
    assert cpus(src.poll(0)) == [13]


def test_truncation_starts_again_from_the_top_header_included(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(HEADER + line(0) + line(1) + line(2))
    src = FileSource(path)
    assert cpus(src.poll(0)) == [10, 11, 12]
    path.write_text("timestamp,entity,mem,cpu\n" + "2026-02-01T01:00:00Z,web-1,99,7\n")
    frame = src.poll(0)
    assert cpus(frame) == [7] and frame["mem"].tolist() == [99]


def test_bad_csv_lines_are_skipped_and_counted(tmp_path):
    path = tmp_path / "m.csv"
    bad = ["2026-02-01T00:03:00Z,web-1,lots,5\n",  # text in a metric
           "2026-02-01T00:04:00Z,web-1,1,2,3,4\n",  # too many fields
           "not a time,web-1,1,2\n",  # bad timestamp
           ",web-1,1,2\n"]  # empty timestamp
    path.write_text(HEADER + line(0) + line(1) + "".join(bad) + line(5) + line(6))
    src = FileSource(path)
    frame = src.poll(0)
    assert cpus(frame) == [10, 11, 15, 16]
    assert src.skipped == len(bad)


def test_missing_file_fails_until_it_appears(tmp_path):
    path = tmp_path / "later.jsonl"
    src = FileSource(path)
    with pytest.raises(SourceError, match="not found"):
        src.poll(0)
    path.write_text(jline(0))
    assert cpus(src.poll(0)) == [10]


def test_position_survives_a_restart_and_a_rotation_while_stopped_rereads(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(HEADER + line(0) + line(1))
    a = FileSource(path)
    a.poll(0)
    state = json.loads(json.dumps(a.state()))
    append(path, line(2))
    b = FileSource(path)
    b.restore(state)
    assert cpus(b.poll(0)) == [12]
    os.rename(path, tmp_path / "old.csv")
    path.write_text(HEADER + line(5))
    c = FileSource(path)
    c.restore(state)  # another file now: read it whole
    assert cpus(c.poll(0)) == [15]


def test_a_large_backlog_is_read_over_several_polls(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(HEADER + "".join(line(i) for i in range(500)))
    src = FileSource(path, max_bytes=4096)
    got = []
    while True:
        got += cpus(src.poll(0))
        if not src.more:
            break
    got += cpus(src.poll(0))
    assert got == [10 + i for i in range(500)]


def test_compressed_or_parquet_files_cannot_be_tailed(tmp_path):
    for name in ("m.csv.gz", "m.parquet"):
        with pytest.raises(ConfigError):
            FileSource(tmp_path / name)


# --------------------------------------------------------------------------- stdin


def test_stdin_reads_json_lines_and_ends_at_eof():
    stream = io.StringIO(jline(0) + "oops\n" + jline(1, "web-2"))
    src = StdinSource(ReadConfig(), stream=stream)
    src.nudge = threading.Event()
    src._thread.join(timeout=5)
    frame = src.poll(0)
    assert cpus(frame) == [10, 11] and frame["entity"].tolist() == ["web-1", "web-2"]
    assert src.skipped == 1
    assert src.poll(0) is None and src.exhausted


# --------------------------------------------------------------------------- local


def test_local_samples_the_host_and_named_processes_once_per_step():
    src = LocalSource(LocalConfig(processes=["python*", "no-such-process-xyz"], host="box"))
    src.bind(pd.Timedelta(seconds=60), 20)
    frame = src.poll(120.0)
    assert list(frame.columns) == ["entity", "timestamp", *LOCAL_METRICS]
    assert frame["entity"].tolist() == ["box", "box/python*", "box/no-such-process-xyz"]
    assert frame["timestamp"].iloc[0] == pd.Timestamp(120, unit="s", tz="UTC")
    host, py, missing = (frame.iloc[i] for i in range(3))
    assert 0 <= host["mem_used_pct"] <= 100 and host["threads"] > 0
    assert host["net_bytes_sent_total"] >= 0
    assert py["threads"] >= 1 and py["load1"] == host["load1"]
    assert math.isnan(missing["cpu_pct"])
    assert src.poll(150.0) is None  # the same step
    assert src.poll(181.0) is not None


# --------------------------------------------------------------------------- prometheus


class FakePrometheus:
    """Answers /api/v1/query and /api/v1/query_range from a function of (query, time)."""

    def __init__(self):
        self.requests: list[tuple[str, dict]] = []
        self.down = False
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                url = urllib.parse.urlparse(self.path)
                q = dict(urllib.parse.parse_qsl(url.query))
                fake.requests.append((url.path, q))
                if fake.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                if q["query"] == "bad(":
                    body = {"status": "error", "errorType": "bad_data",
                            "error": "parse error"}
                    self.send_response(400)
                elif url.path == "/api/v1/query":
                    body = fake.vector(q["query"], float(q["time"]))
                    self.send_response(200)
                else:
                    times = np.arange(float(q["start"]), float(q["end"]) + 1e-9,
                                      float(q["step"]))
                    body = fake.matrix(q["query"], times)
                    self.send_response(200)
                self.end_headers()
                self.wfile.write(json.dumps(body).encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def value(query, host, t):
        if query == "up_nan":
            return "NaN"
        return str(t / 60 + (100 if host == "b" else 0) + (0.5 if query == "mem" else 0))

    def series(self):
        return [{"host": "a", "job": "x"}, {"host": "b", "job": "x"}, {"job": "no-host"}]

    def vector(self, query, t):
        return {"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": m, "value": [t, self.value(query, m.get("host"), t)]}
            for m in self.series()]}}

    def matrix(self, query, times):
        return {"status": "success", "data": {"resultType": "matrix", "result": [
            {"metric": m, "values": [[t, self.value(query, m.get("host"), t)]
                                     for t in times]} for m in self.series()]}}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def prom():
    p = FakePrometheus()
    yield p
    p.close()


def _source(prom, queries=None):
    cfg = PrometheusConfig(queries=queries or {"cpu": "cpu", "mem": "mem"},
                           entity_label="host", timeout=2)
    src = PrometheusSource(prom.url, cfg)
    src.bind(pd.Timedelta(seconds=60), 10)
    return src


def test_first_poll_backfills_then_one_aligned_instant_query_per_step(prom):
    src = _source(prom)
    now = 6000 * 60 + 17.0  # 17 s into a step
    frame = src.poll(now)
    assert [p for p, _ in prom.requests] == ["/api/v1/query_range"] * 2
    q = prom.requests[0][1]
    assert float(q["end"]) == 6000 * 60 and float(q["start"]) == (6000 - 9) * 60
    assert len(frame) == 2 * 10  # hosts a and b, 10 steps; the series without host skipped
    assert src.skipped >= 1
    a = frame[frame["entity"] == "a"].sort_values("timestamp")
    assert a["cpu"].tolist() == [float(m) for m in range(5991, 6001)]
    assert a["mem"].tolist() == [m + 0.5 for m in range(5991, 6001)]
    prom.requests.clear()
    assert src.poll(now + 30) is None and prom.requests == []  # same step: nothing asked
    frame = src.poll(now + 60)
    assert [p for p, _ in prom.requests] == ["/api/v1/query"] * 2
    assert float(prom.requests[0][1]["time"]) == 6001 * 60
    assert frame["timestamp"].tolist() == [pd.Timestamp(6001 * 60, unit="s", tz="UTC")] * 2
    assert frame.set_index("entity")["cpu"].to_dict() == {"a": 6001.0, "b": 6101.0}


def test_an_outage_is_an_error_and_the_gap_is_filled_after_it(prom):
    src = _source(prom)
    t = 6000 * 60.0
    src.poll(t)
    prom.down = True
    for k in (1, 2, 3):
        with pytest.raises(SourceError, match="503"):
            src.poll(t + 60 * k)
    prom.down = False
    prom.requests.clear()
    frame = src.poll(t + 60 * 4)
    assert prom.requests[0][0] == "/api/v1/query_range"
    assert float(prom.requests[0][1]["start"]) == t + 60  # from the step after the last read
    assert sorted(frame[frame["entity"] == "a"]["cpu"]) == [6001.0, 6002.0, 6003.0, 6004.0]
    assert src.state() == {"last_t": t + 240}


def test_query_errors_name_the_query_and_a_dead_server_is_an_error(prom):
    src = _source(prom, {"cpu": "bad("})
    with pytest.raises(SourceError, match="parse error"):
        src.poll(60.0 * 100)
    prom.close()
    src = _source(prom)
    with pytest.raises(SourceError):
        src.poll(60.0 * 100)


def test_nan_values_are_missing(prom):
    src = _source(prom, {"cpu": "up_nan"})
    frame = src.poll(60.0 * 100)
    assert frame["cpu"].isna().all()


def test_the_entity_map_merges_pods_and_averages_their_samples(prom):
    prom.series = lambda: [{"host": "web-5d8f9c7b6-x2x4z"}, {"host": "web-7c9d8e6f5-q8w7e"},
                           {"host": "db-0"}]
    prom.value = lambda query, host, t: {"x2x4z": "1", "q8w7e": "3"}.get(host[-5:], "7")
    cfg = PrometheusConfig(queries={"cpu": "cpu"}, entity_label="host", timeout=2)
    src = make_source(f"prometheus:{prom.url}",
                      ReadConfig(entity_map=r"^(?P<entity>.+?)-[0-9a-f]{9}-[0-9a-z]{5}$"),
                      WatchSourceConfig(prometheus=cfg))
    src.bind(pd.Timedelta(seconds=60), 3)
    frame = src.poll(6000 * 60.0)
    assert len(frame) == 2 * 3  # two entities, three steps
    assert frame.groupby("entity")["cpu"].mean().to_dict() == {"web": 2.0, "db-0": 7.0}


def test_without_a_query_map_each_model_metric_is_its_own_query(prom):
    src = PrometheusSource(prom.url, PrometheusConfig(entity_label="host"), metrics=["cpu"])
    assert src.queries == {"cpu": "cpu"}


# --------------------------------------------------------------------------- specs


def test_make_source_and_its_config():
    cfg = source_config({"local": {"processes": ["nginx"]},
                         "prometheus": {"entity_label": "pod", "queries": {"cpu": "rate(x)"}}})
    assert cfg.local.processes == ["nginx"]
    assert cfg.prometheus.entity_label == "pod"
    src = make_source("prometheus:http://127.0.0.1:9090/", ReadConfig(), cfg)
    assert isinstance(src, PrometheusSource) and src.url == "http://127.0.0.1:9090"
    assert isinstance(make_source("file:/tmp/x.csv", ReadConfig()), FileSource)


@pytest.mark.parametrize("spec", ["kafka:x", "file:", "prometheus:localhost:9090", "files"])
def test_make_source_refuses_bad_specs(spec):
    with pytest.raises(ConfigError):
        make_source(spec, ReadConfig())


@pytest.mark.parametrize("section", [{"local": {"processes": "nginx"}},
                                     {"prometheus": {"queries": ["x"]}},
                                     {"local": []},
                                     {"prometheus": {"timeout": "soon"}},
                                     {"prometheus": {"timeout": "-5s"}},
                                     {"prometheus": {"timout": "5s"}},
                                     {"local": {"proceses": ["nginx"]}}])
def test_bad_watch_config_is_a_config_error(section):
    with pytest.raises(ConfigError):
        source_config(section)


@pytest.mark.parametrize("timeout, seconds", [("5s", 5.0), ("1.5s", 1.5), ("500ms", 0.5),
                                              ("1m", 60.0), (7, 7.0), (None, 5.0)])
def test_prometheus_timeout_is_read_by_the_duration_parser(timeout, seconds):
    cfg = source_config({"prometheus": {"timeout": timeout}})
    assert cfg.prometheus.timeout == seconds
