"""The watch log source: tailed files -> per (entity, step) log series, steps closed once
every file has written past them (or on the clock when live), zeros for silent steps, late
lines counted, checkpoints that resume exactly.

The unit tests give the source a small parser and counter of their own (the Python logging
format, lines and errors per step), so that what is tested is the source's bookkeeping; the
last test runs the real parser and series of ftml.logs when they are there."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from ftml.errors import ConfigError
from ftml.logs.source import LogSource, make_log_source
from ftml.sources import Source, SourceError, make_source

STEP_NS = 60 * 10**9
MODEL = SimpleNamespace(step_ns=STEP_NS, metrics=["log:lines", "log:error"])
RECORD = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+) [\w.]+: (.*)$")


def parse(lines: list[str], *, fmt=None, entity=None, path=None, **_) -> pd.DataFrame:
    rows = []
    for i, text in enumerate(lines):
        m = RECORD.match(text)
        if m:
            rows.append([m.group(1), m.group(2).lower(), m.group(3), i + 1])
        elif rows:
            rows[-1][2] += "\n" + text
    frame = pd.DataFrame(rows, columns=["ts", "level", "msg", "line"])
    frame["ts"] = pd.to_datetime(frame["ts"], format="%Y-%m-%d %H:%M:%S,%f", utc=True)
    frame["entity"] = entity or Path(path).stem
    return frame


def count(frame: pd.DataFrame, model) -> pd.DataFrame:
    ts = frame["ts"]
    ns = ts.to_numpy() if pd.api.types.is_integer_dtype(ts) else \
        pd.DatetimeIndex(ts).as_unit("ns").asi8
    slot = (ns + model.step_ns // 2) // model.step_ns
    g = pd.DataFrame({"entity": frame["entity"].to_numpy(), "slot": slot,
                      "error": (frame["level"] == "error").to_numpy()})
    out = g.groupby(["entity", "slot"], sort=True).agg(lines=("error", "size"),
                                                       errors=("error", "sum")).reset_index()
    return pd.DataFrame({"entity": out["entity"],
                         "timestamp": pd.to_datetime(out["slot"] * model.step_ns, utc=True),
                         "log:lines": out["lines"].astype(float),
                         "log:error": out["errors"].astype(float)})


def line(ts: pd.Timestamp, level: str = "INFO", msg: str = "request handled") -> str:
    return f"{ts.strftime('%Y-%m-%d %H:%M:%S')},{ts.microsecond // 1000:03d} {level} app: {msg}\n"


def source(paths, **kw) -> LogSource:
    return LogSource([str(p) for p in paths], MODEL, parse=parse, series=count, **kw)


def run(src: LogSource, now: float, polls: int = 50) -> pd.DataFrame:
    out = []
    for _ in range(polls):
        frame = src.poll(now)
        if frame is not None:
            out.append(frame)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


@pytest.fixture(scope="module")
def fleet_logs(tmp_path_factory):
    from ftml.simulate import simulate_logs

    d = tmp_path_factory.mktemp("logs")
    _, _, logs = simulate_logs(entities=3, days=0.5, seed=2)
    paths = []
    for name, text in logs.items():
        (d / f"{name}.log").write_text(text)
        paths.append(d / f"{name}.log")
    return paths


def expected(paths) -> pd.DataFrame:
    """The batch count of whole files, with zero steps between an entity's lines."""
    parts = [parse(p.read_text().splitlines(), path=str(p)) for p in paths]
    rows = count(pd.concat(parts, ignore_index=True), MODEL)
    full = []
    for ent, g in rows.groupby("entity"):
        idx = pd.date_range(g["timestamp"].min(), g["timestamp"].max(), freq="60s")
        f = g.set_index("timestamp").reindex(idx).fillna({"log:lines": 0, "log:error": 0})
        f["entity"] = ent
        full.append(f.rename_axis("timestamp").reset_index())
    return pd.concat(full, ignore_index=True)[["entity", "timestamp", "log:lines", "log:error"]]


def test_log_source_is_a_source():
    assert isinstance(source(["x.log"]), Source)


def test_replay_of_files_counts_what_batch_counts_with_zeros_between(fleet_logs):
    src = source(fleet_logs)
    for t in src.tailers.values():
        t.max_bytes = 64 << 10  # a backlog read over many polls, the files side by side
    got = run(src, now=time.time(), polls=400)
    assert src.late == 0
    want = expected(fleet_logs)
    # The newest steps stay open in a replay (no file has written past them yet).
    last = got["timestamp"].max()
    assert last >= want["timestamp"].max() - pd.Timedelta("3min")
    want = want[want["timestamp"] <= last]
    key = ["entity", "timestamp"]
    assert not got.duplicated(key).any()
    got = got.sort_values(key, ignore_index=True)
    want = want.sort_values(key, ignore_index=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    assert (got["log:lines"] == 0).any()  # quiet steps are zeros, not gaps


def test_live_steps_close_on_the_clock_and_a_silent_entity_gets_zeros(tmp_path):
    now = time.time()
    t0 = pd.Timestamp(now - 600, unit="s", tz="UTC").floor("min")
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_text("".join(line(t0 + pd.Timedelta(seconds=s)) for s in range(0, 540, 20)))
    b.write_text(line(t0))
    src = source([a, b])
    got = run(src, now=now, polls=3)
    b_rows = got[got["entity"] == "b"].sort_values("timestamp")
    assert b_rows["log:lines"].iloc[0] == 1
    assert len(b_rows) >= 7 and (b_rows["log:lines"].iloc[1:] == 0).all()
    a_rows = got[got["entity"] == "a"]
    assert a_rows["timestamp"].max() >= t0 + pd.Timedelta("8min")


def test_a_line_of_a_step_already_handed_over_is_late_and_counted(tmp_path):
    now = time.time()
    t0 = pd.Timestamp(now - 900, unit="s", tz="UTC").floor("min")
    path = tmp_path / "a.log"
    path.write_text("".join(line(t0 + pd.Timedelta(minutes=m)) for m in range(10)))
    src = source([path])
    first = run(src, now=now, polls=3)
    assert len(first)
    with open(path, "a") as fh:
        fh.write(line(t0 + pd.Timedelta(minutes=1), "ERROR", "too late"))
        fh.write(line(pd.Timestamp(now, unit="s", tz="UTC")))  # a line written now: in time
    run(src, now=now, polls=3)
    assert src.late == 1 and src.skipped >= 1


def test_a_records_traceback_in_the_next_read_stays_with_it(tmp_path):
    now = time.time()
    t0 = pd.Timestamp(now - 300, unit="s", tz="UTC").floor("min")
    path = tmp_path / "a.log"
    path.write_text(line(t0, "INFO") + line(t0 + pd.Timedelta(seconds=5), "ERROR", "Exception"))
    counted: list[pd.DataFrame] = []

    def spy(frame, model):
        counted.append(frame)
        return count(frame, model)

    src = LogSource([str(path)], MODEL, parse=parse, series=spy)
    src.poll(now)  # the ERROR record waits: its traceback may follow
    with open(path, "a") as fh:
        fh.write("Traceback (most recent call last):\nKeyError: 'x'\n")
    src.poll(now)  # it comes with more lines: now it waits for those
    src.poll(now)  # a quiet poll: it is handed over, whole
    msgs = pd.concat(counted)["msg"].tolist()
    assert msgs.count("request handled") == 1
    assert [m for m in msgs if m.startswith("Exception")] == [
        "Exception\nTraceback (most recent call last):\nKeyError: 'x'"]


def test_checkpoint_resumes_with_the_same_counts(fleet_logs):
    now = time.time()
    whole = source(fleet_logs)
    for t in whole.tailers.values():
        t.max_bytes = 64 << 10
    want = run(whole, now, polls=400)

    first = source(fleet_logs)
    for t in first.tailers.values():
        t.max_bytes = 64 << 10
    part1 = run(first, now, polls=7)
    state = json.loads(json.dumps(first.state()))  # as a checkpoint stores it
    first.close()
    second = source(fleet_logs)
    for t in second.tailers.values():
        t.max_bytes = 64 << 10
    second.restore(state)
    part2 = run(second, now, polls=400)
    got = pd.concat([part1, part2], ignore_index=True)
    key = ["entity", "timestamp"]
    assert not got.duplicated(key).any()
    pd.testing.assert_frame_equal(got.sort_values(key, ignore_index=True),
                                  want.sort_values(key, ignore_index=True), check_dtype=False)


def test_missing_files_fail_the_poll_until_one_appears(tmp_path):
    src = source([tmp_path / "a.log"])
    with pytest.raises(SourceError):
        src.check()
    with pytest.raises(SourceError, match="not found"):
        src.poll(time.time())
    (tmp_path / "a.log").write_text(line(pd.Timestamp.now(tz="UTC")))
    src.check()
    assert src.poll(time.time()) is None  # its one line is held for a traceback


def test_specs_through_make_source(tmp_path):
    from ftml.config import ReadConfig

    (tmp_path / "x.log").write_text("")
    with pytest.raises(ConfigError, match="without logs"):
        make_source(f"logs:{tmp_path}/x.log", ReadConfig())
    with pytest.raises(ConfigError, match="no file matches"):
        make_source(f"logs:{tmp_path}/*.nothing", ReadConfig(), logs=MODEL)
    src = make_source(f"logs:{tmp_path}/*.log,{tmp_path}/later.log", ReadConfig(), logs=MODEL)
    assert sorted(src.tailers) == [f"{tmp_path}/later.log", f"{tmp_path}/x.log"]
    j = make_log_source("journald:app.service,db.service", MODEL)
    assert j.journal is not None and j.journal.units == ["app.service", "db.service"]
    with pytest.raises(ConfigError, match="steps"):
        src.bind(pd.Timedelta("30s"), 100)
    src.bind(pd.Timedelta("60s"), 100)


def test_with_the_real_parser_and_series(tmp_path):
    """Train-time series of simulated logs == what the source counts while tailing them."""
    model_mod = pytest.importorskip("ftml.logs.model")
    from ftml.config import ReadConfig
    from ftml.io import read_metrics
    from ftml.simulate import write_simulation

    write_simulation(tmp_path, entities=2, days=0.5, seed=5, logs=True)
    data = read_metrics([str(tmp_path / "metrics.csv")], ReadConfig())
    paths = sorted(str(p) for p in (tmp_path / "logs").glob("*.log"))
    joined, model = model_mod.fit_logs(data, paths, ReadConfig())
    src = make_source("logs:" + ",".join(paths), ReadConfig(), logs=model)
    got = run(src, time.time(), polls=100)
    assert src.late == 0 and len(got)
    want = joined.frame.set_index(["entity", "timestamp"])[model.metrics]
    got = got.set_index(["entity", "timestamp"])[model.metrics]
    common = got.index.intersection(want.index)
    assert len(common) > 0.9 * len(got)
    np.testing.assert_allclose(got.loc[common].to_numpy(), want.loc[common].to_numpy())


def test_watch_with_a_metric_file_and_the_log_source_finds_what_batch_finds(tmp_path):
    """The watch loop, unchanged, joins a metric file source and the log source on (entity,
    step): replaying a later period gives the events batch scoring with logs gives."""
    pytest.importorskip("ftml.logs.model")
    from prometheus_client import CollectorRegistry

    from ftml import api
    from ftml.bundle import load_model
    from ftml.simulate import write_split_simulation
    from ftml.watch import Watcher

    class Clock:
        def __init__(self, t):
            self.t = t

        def now(self):
            return self.t

    write_split_simulation(tmp_path, test_days=1, days=3, entities=3, seed=98, logs=True)
    train, test = tmp_path / "train", tmp_path / "test"

    def logs(d):
        return sorted(str(p) for p in (d / "logs").glob("*.log"))

    api.train([train / "metrics.csv"], tmp_path / "model", incidents=train / "incidents.csv",
              logs=logs(train))
    batch = api.score(tmp_path / "model", [test / "metrics.csv"], logs=logs(test))
    model = load_model(tmp_path / "model")
    read = model.config.read
    log_source = make_source("logs:" + ",".join(logs(test)), read, None, model.metrics,
                             logs=model.logs)
    sources = [make_source(f"file:{test}/metrics.csv", read, None, model.metrics), log_source]
    w = Watcher(model, sources, clock=Clock(time.time()), registry=CollectorRegistry())
    events = []
    for _ in range(10):
        events += w.tick().resolved
        w.clock.t += 60
    events += w.finish().resolved
    assert log_source.skipped == 0
    assert len(batch.events) > 0

    def key(e):
        return (e.entity, str(e.start), e.cause)

    assert sorted(map(key, events)) == sorted(map(key, batch.events))
