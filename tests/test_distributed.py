"""ftml on Dask: a real ``dask scheduler`` and two ``dask worker`` processes on loopback, started
here and stopped at the end; plus the planning and exactness pieces without a cluster."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

pytest.importorskip("distributed")

from distributed import Client  # noqa: E402

from ftml import api  # noqa: E402
from ftml import distributed as fd  # noqa: E402
from ftml.bundle import MANIFEST_FILE, load_model  # noqa: E402
from ftml.cli import main  # noqa: E402
from ftml.config import load_config  # noqa: E402
from ftml.errors import ConfigError  # noqa: E402
from ftml.features import counters_from_counts, detect_counters  # noqa: E402
from ftml.incidents import ScoreTrail, assign_groups, grouping_for  # noqa: E402
from ftml.io import infer_step, read_metrics  # noqa: E402
from ftml.pipeline import publish_events, write_events  # noqa: E402
from ftml.simulate import simulate_fleet  # noqa: E402

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A model trained locally, and a later period split as a partitioned Parquet dataset (per
    day and per half of the fleet), scored locally: the reference output."""
    tmp = tmp_path_factory.mktemp("fleet")
    train, incidents = simulate_fleet(entities=6, days=3, seed=1)
    train.to_parquet(tmp / "train.parquet", index=False)
    incidents.to_csv(tmp / "incidents.csv", index=False)
    # A one-hour trailing level (the default is hours): two days still split into time
    # slices, and each slice's margin must carry the level's span.
    (tmp / "ftml.yaml").write_text("features: {level_window: 60}\n")
    api.train([tmp / "train.parquet"], tmp / "model", incidents=tmp / "incidents.csv",
              config=load_config(tmp / "ftml.yaml"))
    later, _ = simulate_fleet(entities=6, days=2, seed=7)
    (tmp / "data").mkdir()
    day = later["timestamp"].dt.strftime("%Y%m%d")
    first_half = later["entity"].isin(sorted(later["entity"].unique())[:3])
    for (d, half), part in later.groupby([day, first_half]):
        part.to_parquet(tmp / "data" / f"{d}-{'a' if half else 'b'}.parquet", index=False)
    glob = str(tmp / "data" / "*.parquet")
    run = CliRunner().invoke(main, ["score", "--model", str(tmp / "model"), "--metrics", glob,
                                    "--out", str(tmp / "local.jsonl"), "--windows-out",
                                    str(tmp / "local-windows.csv"), "--quiet"])
    assert run.exit_code == 0, run.output
    assert len((tmp / "local.jsonl").read_text().splitlines()) >= 3  # events to compare
    return tmp, glob


# --------------------------------------------------------------------------- the cluster


def _dask(*args: str) -> list[str]:
    return [sys.executable, "-m", "dask", *args]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``dask scheduler`` + two ``dask worker`` (1 thread, 1 GB each, no nanny: a killed worker
    stays dead, so the kill test comes last) on 127.0.0.1. Tests ask for it before ``fleet``:
    the workers start while the local model trains, and :func:`_ready` waits for them."""
    tmp = tmp_path_factory.mktemp("cluster")
    info = tmp / "scheduler.json"
    procs: list[subprocess.Popen] = []
    client = None

    def start(*args: str, log: str) -> subprocess.Popen:
        p = subprocess.Popen(_dask(*args), stdout=open(tmp / log, "wb"),
                             stderr=subprocess.STDOUT, cwd=tmp)
        procs.append(p)
        return p

    try:
        sched = start("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                      "--scheduler-file", str(info), log="scheduler.log")
        deadline = time.monotonic() + 60
        while not info.exists() or not info.read_text().strip():
            assert sched.poll() is None, (tmp / "scheduler.log").read_text()
            assert time.monotonic() < deadline, "scheduler did not start"
            time.sleep(0.2)
        address = json.loads(info.read_text())["address"]
        for i in range(2):
            start("worker", "--scheduler-file", str(info), "--nthreads", "1", "--memory-limit",
                  "1GB", "--no-dashboard", "--no-nanny", "--host", "127.0.0.1", "--name",
                  f"w{i}", "--preload", "ftml.distributed", log=f"worker{i}.log")
        client = Client(address, timeout=30)
        yield address, client
    finally:
        if client is not None:
            try:
                client.shutdown()  # the scheduler closes its workers, then itself
            except Exception:  # already gone: the processes are stopped below
                client.close()
        for p in procs:
            if p.poll() is None:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _ready(cluster) -> tuple[str, Client]:
    address, client = cluster
    client.wait_for_workers(2, timeout=120)
    return address, client


def _score(model, glob, out, *extra):
    return CliRunner().invoke(main, ["score", "--model", str(model), "--metrics", glob,
                                     "--out", str(out), *extra])


def test_score_on_the_cluster_writes_the_local_events_byte_for_byte(cluster, fleet, tmp_path):
    tmp, glob = fleet
    address, _ = _ready(cluster)
    # 1500 rows a task: each entity's two days become time slices.
    run = _score(tmp / "model", glob, tmp_path / "events.jsonl", "--scheduler", address,
                 "--chunk-rows", "1500", "--windows-out", str(tmp_path / "windows.csv"))
    assert run.exit_code == 0, run.output
    groups, slices = map(int, re.search(r"(\d+) entity groups x (\d+) time slices",
                                        run.stderr).groups())
    assert groups > 1 and slices > 1
    assert (tmp_path / "events.jsonl").read_bytes() == (tmp / "local.jsonl").read_bytes()
    assert (tmp_path / "windows.csv").read_bytes() == (tmp / "local-windows.csv").read_bytes()


def test_train_on_the_cluster_writes_a_bundle_like_the_local_one(cluster, fleet, tmp_path):
    tmp, glob = fleet
    address, _ = _ready(cluster)
    run = CliRunner().invoke(main, ["train", "--metrics", str(tmp / "train.parquet"),
                                    "--incidents", str(tmp / "incidents.csv"), "--out",
                                    str(tmp_path / "model"), "--scheduler", address, "--quiet",
                                    "--config", str(tmp / "ftml.yaml")])
    assert run.exit_code == 0, run.output
    local, remote = load_model(tmp / "model"), load_model(tmp_path / "model")
    lm = json.loads((tmp / "model" / MANIFEST_FILE).read_text())
    rm = json.loads((tmp_path / "model" / MANIFEST_FILE).read_text())
    assert set(rm) == set(lm)
    assert set(rm["training"]) - set(lm["training"]) == {"dask_threads"}
    for key in ("format_version", "metrics", "counters", "feature_schema", "step_seconds",
                "causes", "event_rules"):
        assert rm[key] == lm[key], key
    for key in ("rows", "entities", "fit_windows", "calibration_windows", "data_sha256",
                "calibration_start"):
        assert rm["training"][key] == lm["training"][key], key
    for attr in ("center", "scale", "fleet_center", "fleet_scale"):
        assert np.array_equal(getattr(remote.featurizer.baseline_, attr),
                              getattr(local.featurizer.baseline_, attr)), attr
    # Under 80 000 fit windows the sample is all of them, so the forest is the local one.
    assert remote.threshold == pytest.approx(local.threshold, abs=1e-9)
    run = _score(tmp_path / "model", glob, tmp_path / "events.jsonl", "--quiet")
    assert run.exit_code == 0, run.output
    assert len((tmp_path / "events.jsonl").read_text().splitlines()) >= 1


def test_budget_scales_train_on_the_cluster_as_locally(cluster, fleet, tmp_path):
    """``detect.ensemble_scale: budget`` (each ensemble part's scale its own half-budget
    threshold over every group's calibration windows): the cluster's scales and threshold are
    the local ones (the fit sample is all windows here, so the forest is the local one)."""
    tmp, _ = fleet
    address, _ = _ready(cluster)
    cfg = tmp_path / "ftml.yaml"
    cfg.write_text("features: {level_window: 60}\n"
                   "detect: {ensemble: 'forest|robust', ensemble_scale: budget}\n")
    for where, extra in (("local", []), ("remote", ["--scheduler", address])):
        run = CliRunner().invoke(main, ["train", "--metrics", str(tmp / "train.parquet"),
                                        "--incidents", str(tmp / "incidents.csv"), "--out",
                                        str(tmp_path / where), "--quiet", "--config", str(cfg),
                                        *extra])
        assert run.exit_code == 0, run.output
    local, remote = load_model(tmp_path / "local"), load_model(tmp_path / "remote")
    assert np.allclose(remote.detector.scales_, local.detector.scales_, rtol=0, atol=1e-12)
    plain = load_model(tmp / "model")  # the forest alone: no scales at all
    assert getattr(plain.detector, "scales_", None) is None
    assert remote.threshold == pytest.approx(local.threshold, abs=1e-9)


def test_messy_data_trains_on_the_cluster_as_locally(cluster, tmp_path):
    # Redis-shaped: runs days apart, a text column, constant, empty and gappy metrics; the
    # runs in two files (the text only in the first) and four entities in two groups.
    from tests.test_messy_data import RUN_STARTS, redis_like

    ents = ("node-0", "node-1", "node-2", "node-3")
    redis_like(entities=ents, starts=RUN_STARTS[:3]).to_csv(tmp_path / "a.csv", index=False)
    redis_like(entities=ents, starts=RUN_STARTS[3:], seed=1).assign(
        **{"system.network.name": np.nan}).to_csv(tmp_path / "b.csv", index=False)
    address, _ = _ready(cluster)
    run = CliRunner().invoke(main, ["train", "--metrics", str(tmp_path / "*.csv"), "--out",
                                    str(tmp_path / "remote"), "--scheduler", address, "--quiet"])
    assert run.exit_code == 0, run.output
    assert "ftml: warning: left out 4 metrics that cannot help" in run.stderr
    api.train([tmp_path / "*.csv"], tmp_path / "local")
    lm = json.loads((tmp_path / "local" / MANIFEST_FILE).read_text())
    rm = json.loads((tmp_path / "remote" / MANIFEST_FILE).read_text())
    assert rm["dropped_metrics"] == lm["dropped_metrics"]
    assert set(rm["dropped_metrics"]) == {"system.network.name", "system.cpu.cores",
                                          "redis.cluster.slots_fail", "redis.keyspace.gappy"}
    assert rm["metrics"] == lm["metrics"] and rm["config"] == lm["config"]
    for key in ("rows", "fit_windows", "calibration_windows", "data_sha256",
                "calibration_start"):
        assert rm["training"][key] == lm["training"][key], key
    assert rm["calibration"]["threshold"] == pytest.approx(lm["calibration"]["threshold"])


def test_bad_input_on_the_cluster_is_one_line_and_exit_2(cluster, fleet, tmp_path):
    tmp, glob = fleet
    address, _ = _ready(cluster)
    frame = pd.read_parquet(sorted((tmp / "data").glob("*.parquet"))[0])
    frame.drop(columns=["cpu_pct"]).to_parquet(tmp_path / "part.parquet", index=False)
    run = _score(tmp / "model", str(tmp_path / "part.parquet"), tmp_path / "e.jsonl",
                 "--scheduler", address, "--quiet")
    assert run.exit_code == 2
    # One error line; the note that the (unsigned) model's authenticity was not checked aside.
    assert len([line for line in run.stderr.strip().splitlines()
                if "ftml: note:" not in line]) == 1, run.stderr
    assert "metric column(s) missing: cpu_pct" in run.stderr
    assert "Traceback" not in run.output
    assert not (tmp_path / "e.jsonl").exists()


# --------------------------------------------------------------------------- logs


def _as_jsonl(log_dir, out_dir, ghost: str | None = None) -> None:
    """Simulated per-entity logs -> JSON Lines of the whole fleet (the entity a field), cut
    in two by time: each file holds every entity, so it spans every entity group and time
    slice. ``ghost``: an entity with lines and no metrics, in the first file."""
    from ftml.logs import read_log_lines

    lines = pd.concat([b.frame() for b in read_log_lines([log_dir])], ignore_index=True)
    lines = lines.sort_values(["ts", "entity"], kind="stable", ignore_index=True)
    if ghost is not None:
        extra = lines.iloc[::50].assign(entity=ghost)
        lines = pd.concat([lines, extra]).sort_values("ts", kind="stable", ignore_index=True)
    frame = pd.DataFrame({"timestamp": pd.to_datetime(lines["ts"], utc=True).dt.strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"), "level": lines["level"], "entity": lines["entity"],
        "message": lines["msg"]})
    out_dir.mkdir()
    half = len(frame) // 2
    for i, part in enumerate((frame.iloc[:half], frame.iloc[half:])):
        part.to_json(out_dir / f"fleet-{i}.jsonl", orient="records", lines=True)


@pytest.fixture(scope="module")
def log_fleet(tmp_path_factory):
    """A simulated fleet with logs: train/ and test/ (metrics as Parquet), the logs as JSON
    Lines of the whole fleet (with an entity that has no metrics in training)."""
    from ftml.simulate import write_split_simulation

    d = tmp_path_factory.mktemp("logfleet")
    write_split_simulation(d, test_days=1.5, days=3, entities=6, seed=2, logs=True,
                           format="parquet")
    _as_jsonl(d / "train" / "logs", d / "train" / "jsonl", ghost="svc-ghost-99")
    _as_jsonl(d / "test" / "logs", d / "test" / "jsonl")
    # As the fleet above: a one-hour trailing level, and the scored period split by day and
    # half of the fleet, so that scoring makes entity groups and time slices.
    (d / "ftml.yaml").write_text("features: {level_window: 60}\n")
    later = pd.read_parquet(d / "test" / "metrics.parquet")
    (d / "test" / "parts").mkdir()
    day = later["timestamp"].dt.strftime("%Y%m%d")
    first_half = later["entity"].isin(sorted(later["entity"].unique())[:3])
    for (dd, half), part in later.groupby([day, first_half]):
        part.to_parquet(d / "test" / "parts" / f"{dd}-{'a' if half else 'b'}.parquet",
                        index=False)
    return d


def _train_logs(d, out, *extra):
    return CliRunner().invoke(main, [
        "train", "--metrics", str(d / "train" / "metrics.parquet"), "--incidents",
        str(d / "train" / "incidents.csv"), "--logs", str(d / "train" / "jsonl"),
        "--log-templates", "3", "--config", str(d / "ftml.yaml"), "--out", str(out), "--quiet",
        *extra])


def _same_bundle(a, b) -> None:
    """The model itself byte for byte; the manifest as well, but for the cluster's size and
    the time taken (and the digest over them)."""
    for name in ("model.json", "arrays.npz"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma, mb = (json.loads((x / MANIFEST_FILE).read_text()) for x in (a, b))
    for m in (ma, mb):
        m["training"].pop("seconds")
        m["training"].pop("dask_threads", None)
        m.pop("digest")
    assert ma == mb


def test_train_and_score_with_logs_on_the_cluster_are_the_local_runs(cluster, log_fleet,
                                                                       tmp_path, caplog):
    d = log_fleet
    address, _ = _ready(cluster)
    warned = {}
    for name, extra in (("local", ()), ("remote", ("--scheduler", address))):
        caplog.clear()
        run = _train_logs(d, tmp_path / name, *extra)
        assert run.exit_code == 0, run.output + run.stderr
        warned[name] = [r.getMessage() for r in caplog.records if r.name == "ftml.logs"]
    _same_bundle(tmp_path / "local", tmp_path / "remote")
    model = load_model(tmp_path / "remote")
    assert any(m.startswith("log:tpl:") for m in model.metrics)
    # The same warnings: here, for the entity with logs and no metrics.
    assert warned["remote"] == warned["local"] == [
        "ftml: warning: log lines of 1 entity without metrics left out: svc-ghost-99"]
    runs = {}
    for name, extra in (("local", ()), ("remote", ("--scheduler", address, "--chunk-rows",
                                                   "1500"))):
        runs[name] = _score(tmp_path / "local", str(d / "test" / "parts" / "*.parquet"),
                            tmp_path / f"{name}.jsonl", "--logs", str(d / "test" / "jsonl"),
                            "--windows-out", str(tmp_path / f"{name}-windows.csv"), *extra)
        assert runs[name].exit_code == 0, runs[name].output + runs[name].stderr
    groups, slices = map(int, re.search(r"(\d+) entity groups x (\d+) time slices",
                                        runs["remote"].stderr).groups())
    assert groups > 1 and slices > 1  # each log file spans several tasks of both kinds
    events = (tmp_path / "local.jsonl").read_text().splitlines()
    assert len(events) >= 3 and any('"log:' in e for e in events)
    assert (tmp_path / "remote.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    assert (tmp_path / "remote-windows.csv").read_bytes() == \
        (tmp_path / "local-windows.csv").read_bytes()


def test_entity_from_the_path_on_the_cluster_is_the_given_path(cluster, log_fleet, tmp_path,
                                                               monkeypatch):
    """Logs named by relative paths (pods/<entity>/app.log): the workers, whose working
    directory is another, read them at their absolute path, and the entity and the names in
    the bundle come from the path as given."""
    d = log_fleet
    address, _ = _ready(cluster)
    for f in sorted((d / "train" / "logs").glob("*.log")):
        (tmp_path / "pods" / f.stem).mkdir(parents=True)
        (tmp_path / "pods" / f.stem / "app.log").write_bytes(f.read_bytes())
    monkeypatch.chdir(tmp_path)
    args = ["train", "--metrics", str(d / "train" / "metrics.parquet"), "--logs", "pods",
            "--log-entity-from", "pods/{entity}/*.log", "--quiet"]
    for name, extra in (("local", ()), ("remote", ("--scheduler", address))):
        run = CliRunner().invoke(main, [*args, "--out", name, *extra])
        assert run.exit_code == 0, run.output + run.stderr
    _same_bundle(tmp_path / "local", tmp_path / "remote")
    sources = json.loads((tmp_path / "remote" / MANIFEST_FILE).read_text())["training"][
        "log_sources"]
    assert sources and all(s.startswith("pods/") for s in sources)


@pytest.mark.parametrize("case", ["binary", "out of order", "no date"])
@pytest.mark.parametrize("command", ["train", "score"])
def test_bad_logs_on_the_cluster_are_the_local_one_line(cluster, log_fleet, tmp_path, case,
                                                         command):
    from tests.test_logs import _bad_cases

    d = log_fleet
    address, _ = _ready(cluster)
    bad, _ = _bad_cases(tmp_path)[case]
    logs = [str(d / "test" / "jsonl" / "fleet-0.jsonl"), str(bad)]  # the bad one second
    if command == "score":
        trained = _train_logs(d, tmp_path / "model")
        assert trained.exit_code == 0, trained.output + trained.stderr
    outs = {}
    for name, extra in (("local", ()), ("remote", ("--scheduler", address))):
        out = tmp_path / f"{name}-out"
        if command == "train":
            args = ["train", "--metrics", str(d / "train" / "metrics.parquet"),
                    "--out", str(out)]
        else:
            args = ["score", "--model", str(tmp_path / "model"), "--metrics",
                    str(d / "test" / "metrics.parquet"), "--out", str(out)]
        run = CliRunner().invoke(main, [*args, *(x for p in logs for x in ("--logs", p)),
                                        "--quiet", *extra])
        assert run.exit_code == 2, run.output + run.stderr
        assert "Traceback" not in run.output + run.stderr
        assert not out.exists()  # nothing half-written
        outs[name] = [x for x in run.stderr.splitlines() if x.startswith("ftml: error")]
    assert len(outs["local"]) == 1 and outs["local"][0].startswith(f"ftml: error: {bad}: ")
    assert outs["remote"] == outs["local"]


def test_a_killed_worker_holding_log_pieces_has_them_made_again(cluster, log_fleet, tmp_path):
    """The log pieces live in the workers' memory: when the worker holding most of them dies
    mid-scoring, Dask reads their files again and the events are still the local ones. A
    new worker takes the dead one's place (the test below kills one too)."""
    d = log_fleet
    address, client = _ready(cluster)
    trained = _train_logs(d, tmp_path / "model")
    assert trained.exit_code == 0, trained.output + trained.stderr
    metrics, logs = str(d / "test" / "parts" / "*.parquet"), [str(d / "test" / "jsonl")]
    api.score(tmp_path / "model", [metrics], out=tmp_path / "local.jsonl", logs=logs)
    pids = client.run(os.getpid)
    failure: list[BaseException] = []

    def job():
        try:
            fd.score(tmp_path / "model", [metrics], address, out=tmp_path / "remote.jsonl",
                     chunk_rows=1000, logs=logs)
        except BaseException as exc:  # reported by the test
            failure.append(exc)

    runner = threading.Thread(target=job)
    runner.start()
    spare = None
    try:
        held: dict[str, int] = {}
        deadline = time.monotonic() + 60
        while runner.is_alive() and time.monotonic() < deadline:
            if any(str(k).startswith("ftml-scoring") for keys in client.processing().values()
                   for k in keys):
                for key, workers in client.who_has().items():
                    if str(key).startswith("ftml-piece"):
                        for w in workers:
                            held[w] = held.get(w, 0) + 1
                if held:
                    break
            time.sleep(0.01)
        assert held, "no scoring task was seen running while log pieces were held"
        os.kill(pids[max(held, key=held.get)], signal.SIGKILL)
        assert runner.is_alive()
    finally:
        runner.join(timeout=180)
        info = client.scheduler_info()  # a spare worker for the tests after this one
        spare = subprocess.Popen(_dask("worker", info["address"], "--nthreads", "1",
                                       "--memory-limit", "1GB", "--no-dashboard", "--no-nanny",
                                       "--host", "127.0.0.1", "--name", "spare"),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 cwd=tmp_path)
    assert not runner.is_alive() and not failure, failure
    assert (tmp_path / "remote.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    client.wait_for_workers(2, timeout=120)
    assert spare.poll() is None


def test_a_killed_worker_has_its_tasks_rerun_and_the_result_is_complete(cluster, fleet,
                                                                      tmp_path):
    tmp, glob = fleet
    address, client = _ready(cluster)
    pids = client.run(os.getpid)
    out = tmp_path / "events.jsonl"
    failure: list[BaseException] = []

    def job():
        try:  # 1000 rows a task: a job of many tasks
            fd.score(tmp / "model", [glob], address, out=out, chunk_rows=1000)
        except BaseException as exc:  # reported by the test
            failure.append(exc)

    runner = threading.Thread(target=job)
    runner.start()
    try:
        victim = None
        deadline = time.monotonic() + 60
        while victim is None and runner.is_alive() and time.monotonic() < deadline:
            for worker, keys in client.processing().items():
                if any(str(k).startswith("ftml-scoring") for k in keys):
                    victim = worker
                    break
            time.sleep(0.01)
        assert victim is not None, "no scoring task was seen running"
        os.kill(pids[victim], signal.SIGKILL)  # mid-task: the other worker re-runs its tasks
        assert runner.is_alive()
    finally:
        runner.join(timeout=180)
    assert not runner.is_alive() and not failure, failure
    assert out.read_bytes() == (tmp / "local.jsonl").read_bytes()


# --------------------------------------------------------------------------- without a cluster


def _in_process_plan(tmp, shape):
    """The fleet's model and a plan of ``shape`` (entity groups, time slices) over its files,
    to run the tasks in-process."""
    model = load_model(tmp / "model")
    read = model.config.read
    files = [str(p) for p in sorted((tmp / "data").glob("*.parquet"))]
    table = fd.index_table([fd.index_file(f, read, model.metrics, 5000) for f in files],
                           int(model.step.value))
    before, after = fd.margins(model.featurizer, read)
    return model, fd.plan(table, files, 10**9, 2, before, after, shape=shape)


@pytest.mark.parametrize("groups, slices", [(1, 1), (2, 5), (6, 8)])
def test_any_partition_gives_the_local_events(fleet, tmp_path, groups, slices):
    """Entity groups x time slices, run in-process: gaps and events at slice edges included."""
    tmp, _ = fleet
    model, the_plan = _in_process_plan(tmp, (groups, slices))
    collector = fd.EventCollector(model)
    for task in the_plan.tasks:
        collector.add(fd.score_task(model, 5000, False, task))
    events = collector.finish()
    # As ftml score does (local and Dask): incident groups over the whole list, then sorted.
    publish_events(events, lambda ev: None, grouping_for(model))
    write_events(events, tmp_path / "events.jsonl")
    assert (tmp_path / "events.jsonl").read_bytes() == (tmp / "local.jsonl").read_bytes()


def test_tasks_return_every_windows_score_for_a_ranking_that_reads_them(fleet):
    """diagnose.ranking onset_* (bench/PROTOCOL_rca.md round 3): the tasks' window scores,
    gathered on the driver, are the local run's per-window table, and rank alike."""
    import copy
    import dataclasses

    tmp, _ = fleet
    model, the_plan = _in_process_plan(tmp, (2, 5))
    collector = fd.EventCollector(model, ScoreTrail())
    for task in the_plan.tasks:
        collector.add(fd.score_task(model, 5000, False, task, with_scores=True))
    events = collector.finish()
    local = ScoreTrail.from_table(pd.read_csv(tmp / "local-windows.csv"))

    def frame(trail):
        names, code, end, score = trail.arrays()
        return (pd.DataFrame({"entity": names[code], "end": end, "score": score})
                .sort_values(["entity", "end"]).reset_index(drop=True))

    pd.testing.assert_frame_equal(frame(collector.scores), frame(local))
    grouping = dataclasses.replace(grouping_for(model), ranking="onset_score")
    assert assign_groups(copy.deepcopy(events), grouping, collector.scores) == \
        assign_groups(copy.deepcopy(events), grouping, local)
    assert fd.EventCollector(model).scores is None  # kept only when asked for


def _table(spans):
    """Index rows (file, entity, lo, hi) -> the planner's table, one row per slot."""
    return pd.DataFrame([{"file": f, "entity": e, "lo": lo, "hi": hi, "rows": hi - lo + 1}
                         for f, e, lo, hi in spans])


ENTS = [f"e{i}" for i in range(8)]


@pytest.mark.parametrize("name, spans, files, threads, task_rows, most_read", [
    # A file per day holding every entity: time slices (each also reads the day before or
    # after for its margins), not entity groups (each would read every file).
    ("by day", [(d, e, d * 1000, d * 1000 + 999) for d in range(8) for e in ENTS], 8, 2,
     4000, 3.8),
    # A file per entity over all time: entity groups, each file read once.
    ("by entity", [(i, e, 0, 7999) for i, e in enumerate(ENTS)], 8, 2, 16000, 1.0),
    # One file: split anyway, so that both workers work, though each task reads all of it.
    ("one file", [(0, e, 0, 999) for e in ENTS], 1, 2, 10**6, 2.0),
])
def test_plan_keeps_tasks_small_and_reads_little(name, spans, files, threads, task_rows,
                                                most_read):
    table = _table(spans)
    the_plan = fd.plan(table, [f"f{i}.parquet" for i in range(files)], task_rows, threads,
                       20, 5)
    tasks = the_plan.tasks
    assert len(tasks) >= threads
    assert max(t.rows for t in tasks) <= task_rows
    assert sum(t.rows for t in tasks) == int((table["hi"] - table["lo"] + 1).sum())
    assert the_plan.estimate["rows_read"] <= most_read * table["rows"].sum() + 1e-9
    assert sorted({e for t in tasks for e in t.entities}) == ENTS


def test_plan_without_time_split_keeps_each_entity_whole():
    table = _table([(d, e, d * 1000, d * 1000 + 999) for d in range(4) for e in ENTS])
    tasks = fd.plan(table, [f"f{i}.csv" for i in range(4)], 9000, 4, 0, 1,
                    split_time=False).tasks
    assert sorted(e for t in tasks for e in t.entities) == ENTS
    assert all(t.start == 0 and t.stop == 4000 for t in tasks)
    assert all(len(t.files) == 4 for t in tasks)


@pytest.mark.parametrize("seconds", [[60] * 5 + [120], [10, 10, 20, 20], [59.9, 60.1, 60.0]])
def test_step_from_spacing_counts_is_infer_steps(seconds):
    t = pd.to_datetime(np.cumsum([0, *seconds]) * 10**9, unit="ns", utc=True)
    rows = pd.DataFrame({"entity": "a", "timestamp": t})
    ns = np.diff(t.asi8)
    counts = pd.Series(ns).value_counts()
    ix = fd.FileIndex("f", pd.DataFrame(), [], counts)
    assert fd.infer_step_from([ix]) == infer_step(rows)


def test_fleet_counters_from_group_counts_match_detect_counters(fleet):
    tmp, _ = fleet
    read = load_model(tmp / "model").config.read
    data = read_metrics([tmp / "train.parquet"], read)
    path = str(tmp / "train.parquet")
    table = fd.index_table([fd.index_file(path, read, None, 10**6)], int(data.step.value))
    tasks = fd.plan(table, [path], 5000, 3, 0, 1, split_time=False).tasks
    assert len(tasks) > 1
    stats = [fd.train_stats_task(read, data.metrics, data.step, 10**6, 15, t) for t in tasks]
    codes, _ = data.entity_codes()
    assert counters_from_counts(stats, data.metrics) == \
        detect_counters(data.values(), codes, data.metrics)


@pytest.mark.parametrize("scheduler, problem", [
    ("not an address", "not a scheduler address"),
    ("local:0", "bad worker count"),
    ("tcp://127.0.0.1:9", "cannot reach the Dask scheduler"),
])
def test_bad_scheduler_is_a_config_error(scheduler, problem):
    with pytest.raises(ConfigError, match=problem):
        with fd.connect(scheduler, timeout=1):
            pass
