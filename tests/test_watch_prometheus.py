"""``ftml watch`` against a real Prometheus and a real Alertmanager, on loopback.

The test installs Debian's ``prometheus`` and ``prometheus-alertmanager`` if they are missing
(as root; skipped with the reason when apt cannot), starts both with their own configs on
free ports, plus an exporter (tests/helpers/exporter.py) whose metrics it controls. It trains
a small model on history drawn from the same generator, runs ``ftml watch --source
prometheus:... --sink alertmanager:...``, injects a fault, and checks that Alertmanager gets
the alert with the right cause, and that it resolves once the fault is gone. Everything it
started is stopped at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
import exporter  # noqa: E402  (the exporter's generator writes the training history)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HELPERS = Path(__file__).parent / "helpers"
PROMETHEUS = "/usr/bin/prometheus"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
ROOT = Path(__file__).resolve().parents[1]
HOSTS = ("web-1", "web-2", "web-3")
FAULTY = "web-2"
WARMUP_FAULTY = "web-3"  # a fault that is over before the watch starts
CATCHUP_FAULTY = "web-1"  # a fault that begins and ends while the watch is stopped
CAUSE = "cpu_saturation"


# --------------------------------------------------------------------------- set-up


def _installed(binaries=(PROMETHEUS, ALERTMANAGER)) -> bool:
    return all(os.access(b, os.X_OK) for b in binaries)


@pytest.fixture(scope="session")
def prometheus_binaries():
    """Install prometheus and prometheus-alertmanager with apt when missing."""
    _apt_install(("prometheus", "prometheus-alertmanager"), (PROMETHEUS, ALERTMANAGER))


@pytest.fixture(scope="session")
def node_exporter_binaries():
    """Install prometheus and prometheus-node-exporter with apt when missing."""
    _apt_install(("prometheus", "prometheus-node-exporter"), (PROMETHEUS, NODE_EXPORTER))


def _apt_install(packages: tuple[str, ...], binaries: tuple[str, ...]) -> None:
    if _installed(binaries):
        return
    if shutil.which("apt-get") is None:
        pytest.skip(f"{' / '.join(packages)} missing and there is no apt-get to install them")
    if os.geteuid() != 0:
        pytest.skip(f"{' / '.join(packages)} missing; installing them needs root")
    # No init system here: keep the packages from starting their services on install.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        for cmd in (["apt-get", "update"],
                    ["apt-get", "install", "-y", "--no-install-recommends", *packages]):
            try:
                r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            except subprocess.TimeoutExpired:
                pytest.skip(f"'{' '.join(cmd)}' timed out (is the network reachable?)")
            if r.returncode != 0:
                reason = (r.stderr or r.stdout).strip().splitlines()[-3:]
                print(f"{' '.join(cmd)} failed: {' | '.join(reason)}")
                pytest.skip(f"cannot install prometheus with apt: {' | '.join(reason)}")
    finally:
        if made_policy:
            policy.unlink()
    if not _installed(binaries):
        pytest.skip("apt installed the packages but the binaries are not where expected")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _wait(what: str, check, timeout: float, procs=()):
    """Poll ``check()`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: {p.args[0]} exited with {p.returncode}")
        try:
            out = check()
            if out:
                return out
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last_exc = exc
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}" +
                         (f" (last error: {last_exc})" if last_exc else ""))


class Processes:
    """Processes started by the test; all stopped at the end, whatever happened."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], **kw) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, **kw)
        proc._log = log  # type: ignore[attr-defined]
        self.procs.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        path = self.logdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            proc._log.close()  # type: ignore[attr-defined]


class Receiver:
    """A webhook receiver behind Alertmanager, on loopback: records each notification."""

    def __init__(self):
        self.notifications: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.notifications.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, status: str, **labels) -> list[dict]:
        """The alerts of the notifications so far in this status, with these labels."""
        return [a for n in self.notifications for a in n.get("alerts", [])
                if a.get("status") == status
                and all(a["labels"].get(k) == v for k, v in labels.items())]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def procs(tmp_path):
    p = Processes(tmp_path)
    yield p
    p.stop_all()


def _history(tmp: Path, seconds: int = 7200, seed: int = 1) -> tuple[Path, Path]:
    """Training history at a 1 s step, drawn by the exporter's generator, with labelled
    faults of each cause on every host."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    times = start + pd.to_timedelta(np.arange(seconds), unit="s")
    frames, incidents = [], []
    for h, host in enumerate(HOSTS):
        fault = np.full(seconds, None, dtype=object)
        for i, s in enumerate(range(300 + 100 * h, seconds - 200, 420)):
            cause = exporter.CAUSES[(i + h) % len(exporter.CAUSES)]
            length = int(rng.integers(60, 120))
            fault[s:s + length] = cause
            incidents.append((host, times[s], times[s + length - 1], cause))
        values = np.empty((seconds, len(exporter.METRICS)))
        for cause in (None, *exporter.CAUSES):
            rows = np.flatnonzero(fault == cause) if cause else np.flatnonzero(
                pd.isna(fault))
            values[rows] = exporter.sample(host, rng, cause, len(rows))
        frame = pd.DataFrame(values, columns=list(exporter.METRICS))
        frame.insert(0, "entity", host)
        frame.insert(0, "timestamp", times)
        frames.append(frame)
    metrics = tmp / "history.csv"
    pd.concat(frames).sort_values(["timestamp", "entity"]).to_csv(metrics, index=False)
    inc = tmp / "incidents.csv"
    pd.DataFrame(incidents, columns=["entity", "start", "end", "cause"]).to_csv(inc, index=False)
    return metrics, inc


# --------------------------------------------------------------------------- the test


def test_alert_fires_in_alertmanager_with_the_cause_and_resolves(prometheus_binaries, procs,
                                                                  receiver, tmp_path):
    """Also: a fault that ended before the watch started (in its warm-up backfill) sends
    nothing; one that begins and ends while the watch is stopped (SIGSTOP: catching up) fires
    then resolves, and Alertmanager notifies its webhook receiver of it."""
    from ftml import api
    from ftml.config import Config

    # A model at a 1 s step, with short windows so that the test is quick.
    cfg = Config()
    cfg.read.step = "1s"
    cfg.features.window = 5
    cfg.features.hour_of_day = False
    cfg.detect.min_windows, cfg.detect.of_windows = 2, 3
    cfg.detect.merge_gap, cfg.detect.cooldown = 3, 5
    metrics, incidents = _history(tmp_path)
    api.train([metrics], tmp_path / "model", incidents=incidents, config=cfg)

    control = tmp_path / "control.json"
    control.write_text(json.dumps({"faults": {}}))
    exp_port, prom_port, am_port, ftml_port = (_free_port() for _ in range(4))
    exp = procs.start("exporter", [sys.executable, str(HELPERS / "exporter.py"), "--port",
                                   str(exp_port), "--control", str(control), "--hosts",
                                   ",".join(HOSTS)])
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: demo\n    static_configs: [{{targets: ['127.0.0.1:{exp_port}']}}]\n")
    prom = procs.start("prometheus", [
        PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"])
    (tmp_path / "alertmanager.yml").write_text(
        "route: {receiver: hook, group_wait: 1s, group_interval: 1s, repeat_interval: 1h}\n"
        "receivers: [{name: hook, webhook_configs: "
        f"[{{url: 'http://127.0.0.1:{receiver.port}/', send_resolved: true}}]}}]\n")
    am = procs.start("alertmanager", [
        ALERTMANAGER, f"--config.file={tmp_path / 'alertmanager.yml'}",
        f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
        "--cluster.listen-address="])
    prom_url, am_url = f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{am_port}"

    def series():
        q = urllib.parse.urlencode({"query": "demo_cpu_pct"})
        return len(_get(f"{prom_url}/api/v1/query?{q}")["data"]["result"]) == len(HOSTS)

    _wait("Prometheus scraping the exporter", series, 60, [exp, prom])
    _wait("Alertmanager ready", lambda: _get(f"{am_url}/api/v2/status"), 60, [am])
    # Warm-up: a fault that begins and ends before the watch starts, in what it backfills.
    control.write_text(json.dumps({"faults": {WARMUP_FAULTY: CAUSE}}))
    time.sleep(15)
    control.write_text(json.dumps({"faults": {}}))
    time.sleep(8)

    (tmp_path / "watch.yaml").write_text(
        "watch:\n  prometheus:\n    entity_label: host\n    queries:\n" +
        "".join(f"      {m}: demo_{m}\n" for m in exporter.METRICS) +
        "  severity: {cpu_saturation: critical}\n  min_firing: 3s\n")
    watch = procs.start("ftml", [
        sys.executable, "-m", "ftml", "watch", "--model", str(tmp_path / "model"),
        "--source", f"prometheus:{prom_url}", "--sink", f"alertmanager:{am_url}",
        "--sink", f"jsonl:{tmp_path / 'alerts.jsonl'}",
        "--state", str(tmp_path / "state"), "--interval", "1s", "--config",
        str(tmp_path / "watch.yaml"), "--listen", f"127.0.0.1:{ftml_port}"])
    ftml_url = f"http://127.0.0.1:{ftml_port}"
    try:
        _wait("ftml /healthz", lambda: _get(f"{ftml_url}/healthz")["ticks"] > 3, 60, [watch])

        def scored() -> bool:  # the backfill filled the buffers: every host has a score
            text = urllib.request.urlopen(f"{ftml_url}/metrics", timeout=2).read().decode()
            return all(f'ftml_watch_score{{entity="{h}"}}' in text for h in HOSTS)

        _wait("scores of every host", scored, 60, [watch])
        warm = [ln for ln in procs.log("ftml").splitlines() if "warm-up:" in ln]
        assert len(warm) == 1 and WARMUP_FAULTY in warm[0], procs.log("ftml")[-3000:]
        assert not (tmp_path / "alerts.jsonl").exists() or \
            not (tmp_path / "alerts.jsonl").read_text()  # nothing sent to any sink
        text = urllib.request.urlopen(f"{ftml_url}/metrics", timeout=2).read().decode()
        assert "ftml_watch_alerts_total{" not in text  # nor counted
        assert not _get(f"{am_url}/api/v2/alerts")

        def alerts(**labels):
            out = []
            for a in _get(f"{am_url}/api/v2/alerts"):
                if all(a["labels"].get(k) == v for k, v in labels.items()):
                    out.append(a)
            return out

        control.write_text(json.dumps({"faults": {FAULTY: CAUSE}}))
        fired = _wait(f"a {CAUSE} alert on {FAULTY} in Alertmanager",
                      lambda: alerts(entity=FAULTY, cause=CAUSE, alertname="FtmlIncident"),
                      90, [watch])
        alert = fired[0]
        assert alert["labels"]["severity"] == "critical"
        assert alert["labels"]["id"]
        assert float(alert["annotations"]["confidence"]) > 0
        assert "cpu_pct" in alert["annotations"]["top_metrics"]
        assert alert["status"]["state"] == "active"
        alert_id = alert["labels"]["id"]

        control.write_text(json.dumps({"faults": {}}))
        _wait("the alert resolved", lambda: not alerts(id=alert_id), 90, [watch])

        text = urllib.request.urlopen(f"{ftml_url}/metrics", timeout=2).read().decode()
        assert "ftml_watch_ticks_total" in text
        assert 'ftml_watch_alerts_delivered_total{sink="alertmanager:' in text
        assert 'status="resolved"' in text
        health = _get(f"{ftml_url}/healthz")
        assert health["status"] == "ok" and health["queued_alerts"] == 0

        # Catching up: the watch stops (SIGSTOP) while a fault begins and ends; when it goes
        # on, one tick reads the whole gap. The event fires, then resolves min_firing later:
        # Alertmanager notifies its receiver.
        os.kill(watch.pid, signal.SIGSTOP)
        try:
            control.write_text(json.dumps({"faults": {CATCHUP_FAULTY: CAUSE}}))
            time.sleep(15)
            control.write_text(json.dumps({"faults": {}}))
            time.sleep(8)
        finally:
            os.kill(watch.pid, signal.SIGCONT)
        _wait("the caught-up event logged",
              lambda: re.search(rf"catching up: \S+ {CATCHUP_FAULTY} ", procs.log("ftml")),
              60, [watch])
        _wait(f"Alertmanager notifying the receiver of {CATCHUP_FAULTY}",
              lambda: receiver.alerts(entity=CATCHUP_FAULTY, status="firing"), 60, [watch])
        records = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_text().splitlines()]
        caught = [r for r in records if r["entity"] == CATCHUP_FAULTY]
        assert [r["status"] for r in caught][:1] == ["firing"]
        _wait("its resolve in Alertmanager", lambda: receiver.alerts(
            entity=CATCHUP_FAULTY, status="resolved"), 60, [watch])
        assert receiver.alerts(entity=FAULTY, status="firing")  # the live one was notified
    except BaseException:
        print("---- ftml log ----\n" + procs.log("ftml")[-6000:])
        print("---- alertmanager log ----\n" + procs.log("alertmanager")[-3000:])
        print("---- the receiver's notifications ----\n" + str(
            [(a["labels"]["entity"], a["status"], n.get("status"))
             for n in receiver.notifications for a in n["alerts"]]))
        with contextlib.suppress(Exception):
            print("---- Alertmanager's alerts ----\n" + str(_get(f"{am_url}/api/v2/alerts")))
            print(urllib.request.urlopen(f"{ftml_url}/metrics", timeout=2).read().decode())
        raise
    watch.send_signal(signal.SIGTERM)
    assert watch.wait(timeout=15) == 0, procs.log("ftml")[-3000:]
    assert (tmp_path / "state" / "watch.npz").exists()

    # ftml record: the same source and queries as training history; the model scores it.
    rec = tmp_path / "record.csv"
    r = subprocess.run([sys.executable, "-m", "ftml", "record", "--source",
                        f"prometheus:{prom_url}", "--config", str(tmp_path / "watch.yaml"),
                        "--since", "60s", "--step", "1s", "--out", str(rec)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = pd.read_csv(rec)
    assert list(got.columns) == ["timestamp", "entity", *exporter.METRICS]
    assert sorted(got["entity"].unique()) == sorted(HOSTS)
    assert 55 * len(HOSTS) <= len(got) <= 61 * len(HOSTS)
    assert got.groupby("entity")["timestamp"].apply(lambda t: t.is_unique).all()
    q = urllib.parse.urlencode({"query": "demo_cpu_pct", "time": got["timestamp"].iloc[-1]})
    now = {s["metric"]["host"]: float(s["value"][1])
           for s in _get(f"{prom_url}/api/v1/query?{q}")["data"]["result"]}
    last = got[got["timestamp"] == got["timestamp"].iloc[-1]].set_index("entity")["cpu_pct"]
    assert all(abs(last[h] - now[h]) < 1e-6 for h in last.index)  # what the queries give
    from ftml.bundle import load_model

    res = api.score(load_model(tmp_path / "model"), [rec],
                    windows_out=tmp_path / "record-windows.parquet")
    assert len(res.window_table) > 0
    live = tmp_path / "live-record.csv"
    r = subprocess.run([sys.executable, "-m", "ftml", "record", "--source",
                        f"prometheus:{prom_url}", "--config", str(tmp_path / "watch.yaml"),
                        "--for", "3s", "--step", "1s", "--out", str(live)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = pd.read_csv(live)
    assert sorted(got["entity"].unique()) == sorted(HOSTS) and len(got) >= 3 * len(HOSTS)


def test_the_node_exporter_example_config_records_every_metric(node_exporter_binaries, procs,
                                                                tmp_path):
    """examples/node-exporter/ftml.yaml against a real node exporter: every query is valid
    PromQL and gives one series per instance, and `ftml record` writes them all."""
    from ftml.config import ReadConfig, load_config
    from ftml.features import detect_counters
    from ftml.io import read_metrics
    from ftml.sources import source_config

    example = ROOT / "examples" / "node-exporter" / "ftml.yaml"
    queries = source_config(load_config(example).extra["watch"]).prometheus.queries
    ne_port, prom_port = _free_port(), _free_port()
    ne = procs.start("node-exporter", [NODE_EXPORTER,
                                       f"--web.listen-address=127.0.0.1:{ne_port}"])
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\nscrape_configs:\n"
        f"  - job_name: node\n    static_configs: [{{targets: ['127.0.0.1:{ne_port}']}}]\n")
    prom = procs.start("prometheus", [
        PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"])
    prom_url = f"http://127.0.0.1:{prom_port}"
    instance = f"127.0.0.1:{ne_port}"

    def every_query_answers() -> bool:
        for promql in queries.values():
            q = urllib.parse.urlencode({"query": promql})
            result = _get(f"{prom_url}/api/v1/query?{q}")["data"]["result"]
            if [r["metric"].get("instance") for r in result] != [instance]:
                return False
        return True

    _wait("every query of the example answering for the node exporter", every_query_answers,
          90, [ne, prom])
    time.sleep(12)
    out = tmp_path / "history.csv"
    r = subprocess.run([sys.executable, "-m", "ftml", "record", "--source",
                        f"prometheus:{prom_url}", "--config", str(example), "--since", "12s",
                        "--step", "1s", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = pd.read_csv(out)
    assert list(got.columns) == ["timestamp", "entity", *queries]
    assert set(got["entity"]) == {instance} and len(got) >= 11
    assert got[list(queries)].notna().all().all()
    data = read_metrics([out], ReadConfig(step="1s"))  # the example's step is 60s
    codes, _ = data.entity_codes()
    # Every _total column is a counter (in a few seconds a gauge may rise steadily too, and
    # the rise rule takes it: not asserted here).
    counters = detect_counters(data.values(), codes, data.metrics)
    assert {m for m in queries if m.endswith("_total")} <= set(counters)


def test_alertmanager_groups_an_incident_into_one_notification(prometheus_binaries, procs,
                                                               tmp_path):
    """A real Alertmanager routing with ``group_by: [group]``: the alerts ftml sends for the
    events of one incident group arrive at the receiver as one notification, naming the
    suspect; another incident is another notification."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from ftml.events import Event
    from ftml.sinks import AlertmanagerSink, alert_record

    notifications: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            notifications.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    am_port = _free_port()
    (tmp_path / "alertmanager.yml").write_text(
        "route: {receiver: hook, group_by: [group], group_wait: 2s, group_interval: 1m, "
        "repeat_interval: 1h}\n"
        f"receivers: [{{name: hook, webhook_configs: [{{url: "
        f"'http://127.0.0.1:{hook.server_port}/'}}]}}]\n")
    am = procs.start("alertmanager", [
        ALERTMANAGER, f"--config.file={tmp_path / 'alertmanager.yml'}",
        f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
        "--cluster.listen-address="])
    am_url = f"http://127.0.0.1:{am_port}"
    try:
        _wait("Alertmanager ready", lambda: _get(f"{am_url}/api/v2/status"), 60, [am])
        sink = AlertmanagerSink(am_url)
        now = pd.Timestamp.now(tz="UTC").floor("s")
        incidents = {"g-one": ["cart", "frontend", "checkout"], "g-two": ["payment"]}
        for group, entities in incidents.items():
            for entity in entities:
                ev = Event(entity=entity, start=now, end=now, score=0.9, cause="latency",
                           status="open", id=f"{group}-{entity}", group=group,
                           suspects=[[entities[0], 0.9]])
                sink.send(alert_record(ev, "firing", now.timestamp(), cause="latency",
                                       severity="critical", revision=0, model_version="m",
                                       step_s=1))
        _wait("two notifications", lambda: len(notifications) >= 2, 60, [am])
        time.sleep(3)  # nothing more arrives: one notification per incident
        assert len(notifications) == 2
        by_group = {n["groupLabels"]["group"]: n for n in notifications}
        assert set(by_group) == set(incidents)
        one = by_group["g-one"]["alerts"]
        assert sorted(a["labels"]["entity"] for a in one) == ["cart", "checkout", "frontend"]
        assert {a["annotations"]["suspect"] for a in one} == {"cart"}
    finally:
        hook.shutdown()
