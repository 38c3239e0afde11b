"""Logs beside metrics (ftml.logs): readers per format, templates through a saved bundle, train
and score with --logs end to end, and bad input as one line and exit 2."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from click.testing import CliRunner

from ftml.cli import main
from ftml.config import LogConfig
from ftml.errors import InputError
from ftml.logs import LogInput, ReadStats, Templates, log_series, read_log_lines
from ftml.logs.series import LINES, UNSEEN

T0 = "2026-01-05T10:00:00Z"
NS = pd.Timestamp(T0).value

# (format given or None for detection, line, expected ts, entity, level, msg, status)
FORMATS = [
    ("python", None, "2026-01-05 10:00:00,123 ERROR app.db: Connection refused to 10.0.0.1",
     NS + 123_000_000, "svc", "error", "Connection refused to 10.0.0.1", -1),
    ("python padded", None, "2026-01-05 10:00:00,000 WARNING  app: pool at 90%",
     NS, "svc", "warning", "pool at 90%", -1),
    ("iso zulu", None, "2026-01-05T10:00:00Z WARN disk almost full", NS, "svc", "warning",
     "disk almost full", -1),
    ("iso offset", None, "2026-01-05T12:00:00.5+02:00 [ERROR] boom", NS + 500_000_000, "svc",
     "error", "boom", -1),
    ("iso naive", None, "2026-01-05 10:00:00 started worker", NS, "svc", "info",
     "started worker", -1),
    ("iso dashes", None, "2026-01-05 10:00:00,000 - WARN  [main:Q@1] - Cannot open channel",
     NS, "svc", "warning", "[main:Q@1] - Cannot open channel", -1),
    ("kubectl", "kubectl", "2026-01-05T10:00:00.000000001Z ERROR failed to reach db", NS + 1,
     "svc", "error", "ERROR failed to reach db", -1),
    ("access", None, '10.1.2.3 - - [05/Jan/2026:11:00:00 +0100] "GET /api/x?id=7 HTTP/1.1" '
     '503 12 "-" "curl/8"', NS, "svc", "error", "GET /api/x?id=7 HTTP/1.1", 503),
    ("access 404", None, '10.1.2.3 - bob [05/Jan/2026:10:00:00 +0000] "POST /login HTTP/1.1" '
     '404 -', NS, "svc", "warning", "POST /login HTTP/1.1", 404),
    ("apache-error", None, "[Mon Jan 05 10:00:00 2026] [error] File does not exist: /var/x",
     NS, "svc", "error", "File does not exist: /var/x", -1),
    ("regex", r"^(?P<ts>\S+) \| (?P<level>\w+) \| (?P<entity>\S+) \| (?P<msg>.*)",
     "2026-01-05T10:00:00Z | crit | db-1 | disk failure", NS, "db-1", "error", "disk failure",
     -1),
    ("jsonl", None, '{"time": "2026-01-05T10:00:00Z", "level": "warning", "message": "slow", '
     '"host": "web-2"}', NS, "web-2", "warning", "slow", -1),
    ("jsonl epoch", None, '{"ts": 1767607200.25, "msg": "upstream failed", "status": 502}',
     NS + 250_000_000, "svc", "error", "upstream failed", 502),
    ("journald", None, '{"__REALTIME_TIMESTAMP": "1767607200000001", "PRIORITY": "3", '
     '"MESSAGE": "oops", "_HOSTNAME": "node-1", "_SYSTEMD_UNIT": "x.service"}', NS + 1000,
     "node-1", "error", "oops", -1),
]


@pytest.mark.parametrize("name,fmt,line,ts,entity,level,msg,status", FORMATS,
                         ids=[f[0] for f in FORMATS])
def test_each_format_reads(tmp_path, name, fmt, line, ts, entity, level, msg, status):
    path = tmp_path / "svc.log"
    path.write_text(line + "\n" + line + "\n")
    blocks = list(read_log_lines([path], LogConfig(format=fmt)))
    frame = pd.concat([b.frame() for b in blocks])
    assert len(frame) == 2
    got = frame.iloc[0]
    assert (int(got.ts), got.entity, got.level, got.msg, int(got.status)) == \
        (ts, entity, level, msg, status)


def test_syslog_reads_host_as_entity_and_a_year(tmp_path):
    path = tmp_path / "messages"
    path.write_text("Jan  5 10:00:00 web-1 sshd[123]: Accepted password for bob\n"
                    "Jan  5 10:00:01 web-2 cron: job done\n")
    frame = pd.concat(b.frame() for b in read_log_lines([path]))
    when = pd.to_datetime(frame["ts"], utc=True)
    assert list(frame["entity"]) == ["web-1", "web-2"]
    assert list(when.dt.strftime("%m-%d %H:%M:%S")) == ["01-05 10:00:00", "01-05 10:00:01"]
    assert when.iloc[0] <= pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=1)
    assert frame["msg"].iloc[0] == "Accepted password for bob"


def test_continuation_lines_crlf_gzip_and_entity_from_path(tmp_path):
    lines = ["2026-01-05 10:00:00,000 ERROR app: crash", "Traceback (most recent call last):",
             '  File "x.py", line 1', "2026-01-05 10:00:01,000 INFO app: recovered"]
    path = tmp_path / "pods" / "web-7" / "current.log.gz"
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wb") as fh:
        fh.write(("\r\n".join(lines)).encode())
    stats = ReadStats()
    cfg = LogConfig(entity_from="pods/{entity}/*.log.gz")
    frame = pd.concat(b.frame() for b in read_log_lines([tmp_path / "pods"], cfg, stats=stats))
    assert list(frame["msg"]) == ["crash", "recovered"]
    assert set(frame["entity"]) == {"web-7"}
    assert (stats.lines, stats.records, stats.continuation, stats.bad) == (4, 2, 2, {})


def test_entity_map_applies_to_log_entities(tmp_path):
    path = tmp_path / "checkout-5d8f9c7b6-x2x4z.log"
    path.write_text("2026-01-05 10:00:00,000 INFO app: ok\n")
    frame = pd.concat(b.frame() for b in read_log_lines(
        [path], LogConfig(), entity_map=r"^(.+)-[0-9a-f]{8,10}-[0-9a-z]{5}$"))
    assert list(frame["entity"]) == ["checkout"]


def test_a_few_bad_lines_are_skipped_and_counted(tmp_path):
    good = [f"2026-01-05 10:{i // 60:02d}:{i % 60:02d},000 INFO app: line {i}" for i in range(2000)]
    raw = "\n".join(good).encode() + b"\n"
    raw += b"2026-01-05 10:40:00,000 INFO app: caf\xe9\n"  # Latin-1: not UTF-8
    raw += b"2026-01-05 10:40:01,000 INFO app: " + b"x" * 70_000 + b"\n"  # too long
    raw += b"2026-01-05 08:00:00,000 INFO app: late\n"  # 2 h back in time
    path = tmp_path / "svc.log"
    path.write_bytes(raw)
    stats = ReadStats()
    frame = pd.concat(b.frame() for b in read_log_lines([path], LogConfig(), stats=stats))
    assert len(frame) == 2000
    assert stats.bad == {"not UTF-8": 1, "too long": 1, "out of time order": 1}
    assert stats.first_bad["not UTF-8"] == f"{path}:2001"
    assert stats.first_bad["too long"] == f"{path}:2002"
    assert stats.first_bad["out of time order"] == f"{path}:2003"
    assert stats.warning().startswith("skipped 3 bad log lines of 2003")


def test_a_megabyte_line_is_never_held_whole(tmp_path):
    # Blocks smaller than the line: the reader drops it block by block and counts it once.
    path = tmp_path / "svc.log"
    head = b"2026-01-05 10:00:00,000 INFO app: before\n"
    path.write_bytes(head + b"y" * (3 << 20) + b"\n" + head.replace(b"before", b"after"))
    stats = ReadStats()
    cfg = LogConfig(chunk_bytes=1 << 16)
    frame = pd.concat(b.frame() for b in read_log_lines([path], cfg, stats=stats))
    assert list(frame["msg"]) == ["before", "after"]
    assert stats.bad == {"too long": 1} and stats.first_bad["too long"] == f"{path}:2"
    assert stats.lines == 3


def test_templates_mask_and_group():
    t = Templates.for_config(LogConfig())
    msgs = pa.array(["Connection refused to 10.0.0.1:5432", "Connection refused to db.local:5432",
                     "wrote 12 bytes to /var/lib/x/y.bin", "wrote 7 bytes to /tmp/a/b",
                     "request 3f2a9c0d11 done", "request deadbeef99 done"])
    ids = t.ids(msgs, learn=True)
    assert ids[0] == ids[1] and ids[2] == ids[3] and ids[4] == ids[5]
    assert len(set(ids)) == 3
    assert t.text(ids[0]) == "Connection refused to <*>"
    # Looked up, not mined: a message no template takes is unseen (-1), the tree unchanged.
    found = t.ids(pa.array(["Connection refused to 10.9.9.9:1", "disk on fire"]), learn=False)
    assert found[0] == ids[0] and found[1] == -1 and len(t) == 3


def test_template_state_is_plain_json_and_rebuilds_the_same_tree():
    t = Templates.for_config(LogConfig())
    msgs = pa.array([f"job {i} finished in {i * 3} ms on node-{i % 4}" for i in range(50)] +
                    ["cache miss for key user", "cache miss for key order"])
    ids = t.ids(msgs, learn=True)
    t.freeze()
    state = json.loads(t.state)  # JSON only: no pickle, no code
    assert state["version"] == 1 and len(state["clusters"]) == len(t)
    again = Templates(depth=t.depth, sim_th=t.sim_th, max_children=t.max_children,
                      state=t.state)
    assert np.array_equal(again.ids(msgs, learn=False), ids)
    assert again.state_json() == t.state


def test_series_of_parsed_lines_for_a_live_source():
    """log_series takes a DataFrame of parsed lines (what a tail hands over)."""
    from ftml.logs.model import LogModel

    t = Templates.for_config(LogConfig())
    t.ids(pa.array(["user 1 logged in"] * 3), learn=True)
    model = LogModel(LogConfig(), 60 * 10**9, t, [LINES, "log:error", UNSEEN, "log:tpl:1"],
                     np.array([1]))
    lines = pd.DataFrame({"ts": pd.to_datetime([T0, T0, "2026-01-05T10:01:10Z"]),
                          "entity": ["a", "a", "b"], "level": ["INFO", "error", "info"],
                          "msg": ["user 2 logged in", "disk on fire", "user 9 logged in"]})
    out = log_series(lines, model)
    assert list(out.columns) == ["entity", "timestamp", LINES, "log:error", UNSEEN, "log:tpl:1"]
    assert out[[LINES, "log:error", UNSEEN, "log:tpl:1"]].to_numpy().tolist() == \
        [[2, 1, 1, 1], [1, 0, 0, 1]]
    assert list(out["timestamp"].astype(str)) == ["2026-01-05 10:00:00+00:00",
                                                   "2026-01-05 10:01:00+00:00"]


# --------------------------------------------------------------------------- end to end


def _write_logs(metrics_csv: Path, incidents_csv: Path, out_dir: Path, per_step: int = 4,
                seed: int = 0, burst: int = 8) -> None:
    """Per entity, Python-logging lines through its metrics' span; during its incidents half
    the lines are errors of one template, and ``burst`` more such errors a step (a count of
    lines is scaled in lines: a burst has to be one to stand out)."""
    rng = np.random.default_rng(seed)
    m = pd.read_csv(metrics_csv, usecols=["timestamp", "entity"])
    inc = pd.read_csv(incidents_csv)
    out_dir.mkdir(parents=True, exist_ok=True)
    for ent, g in m.groupby("entity"):
        ts = pd.DatetimeIndex(pd.to_datetime(g["timestamp"], utc=True)).as_unit("ns").asi8
        during = np.zeros(len(ts), bool)
        for r in inc[inc.entity == ent].itertuples():
            during |= (ts >= pd.Timestamp(r.start).value) & (ts <= pd.Timestamp(r.end).value)
        routine = np.repeat(during, per_step) & (rng.random(len(ts) * per_step) < 0.5)
        err = np.r_[routine, np.ones(int(during.sum()) * burst, bool)]
        t = np.r_[np.repeat(ts, per_step), np.repeat(ts[during], burst)]
        t = t + rng.integers(0, 60 * 10**9, len(t))
        order = np.argsort(t, kind="stable")
        t, err = t[order], err[order]
        n = rng.integers(1, 999, len(t)).astype(str)
        msg = np.where(err, np.char.add("Connection refused to 10.0.0.", n),
                       np.where(rng.random(len(t)) < 0.5, np.char.add("GET /api/items/", n),
                                np.char.add("cache hit for user ", n)))
        stamp = pd.to_datetime(t, utc=True).strftime("%Y-%m-%d %H:%M:%S,%f").str[:-3]
        text = stamp + " " + np.where(err, "ERROR", "INFO") + " app.main: " + msg
        (out_dir / f"{ent}.log").write_text("\n".join(text) + "\n")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    from ftml.simulate import write_simulation

    d = tmp_path_factory.mktemp("logfleet")
    write_simulation(d, entities=3, days=2, seed=1)
    _write_logs(d / "metrics.csv", d / "incidents.csv", d / "logs")
    return d


@pytest.fixture(scope="module")
def trained(fleet):
    model = fleet / "model"
    result = CliRunner().invoke(main, ["train", "--metrics", str(fleet / "metrics.csv"),
                                       "--incidents", str(fleet / "incidents.csv"),
                                       "--logs", str(fleet / "logs"), "--out", str(model),
                                       "--log-templates", "5", "--quiet"])
    assert result.exit_code == 0, result.output + result.stderr
    return model


def test_train_and_score_with_logs_end_to_end(fleet, trained):
    from ftml.bundle import load_model

    model = load_model(trained)
    assert model.logs is not None
    assert {LINES, "log:error"} <= set(model.metrics)
    tpl = [m for m in model.metrics if m.startswith("log:tpl:")]
    assert tpl and any("Connection refused to <*>" in model.logs.describe(m) for m in tpl)
    events = fleet / "events.jsonl"
    result = CliRunner().invoke(main, ["score", "--model", str(trained), "--metrics",
                                       str(fleet / "metrics.csv"), "--logs",
                                       str(fleet / "logs"), "--out", str(events), "--quiet"])
    assert result.exit_code == 0, result.output + result.stderr
    rows = [json.loads(x) for x in events.read_text().splitlines()]
    assert rows
    # The error bursts are what moves most in the incidents: a log series names them.
    inc = pd.read_csv(fleet / "incidents.csv")
    hit = [r for r in rows if r["entity"] in set(inc["entity"]) and r["cause"] != "no_fault"]
    assert hit and any(m.startswith("log:") for r in hit for m in r["top_metrics"])
    assert "= log: Connection refused to <*>" in result.output


def test_template_state_round_trips_through_the_bundle(fleet, trained):
    from ftml.bundle import load_model

    model = load_model(trained)
    lines = pd.concat(b.frame() for b in read_log_lines([fleet / "logs"]))
    msgs = pa.array(lines["msg"].to_numpy(dtype=object), pa.string())
    # Mining the training logs afresh gives the ids the loaded bundle looks up.
    fresh = Templates.for_config(LogConfig())
    assert np.array_equal(fresh.ids(msgs, learn=True), model.logs.templates.ids(msgs, False))
    out = CliRunner().invoke(main, ["logs", "templates", str(trained)])
    assert out.exit_code == 0 and "Connection refused to <*>" in out.output


def test_evaluate_with_logs(fleet, trained):
    from ftml.evaluate import evaluate

    ev = evaluate(trained, [fleet / "metrics.csv"], fleet / "incidents.csv",
                  logs=LogInput([str(fleet / "logs")]))
    assert LINES in ev.data.metrics and ev.report["detection"]["event_recall"] is not None


def test_scoring_a_log_model_without_logs_is_one_line(fleet, trained):
    result = CliRunner().invoke(main, ["score", "--model", str(trained), "--metrics",
                                       str(fleet / "metrics.csv"), "--out",
                                       str(fleet / "x.jsonl")])
    assert result.exit_code == 2
    err = [x for x in result.stderr.splitlines() if x.startswith("ftml: error")]
    assert err == ["ftml: error: the model was trained with logs, and none were given "
                   "(pass --logs with the log files of the scored period)"]


def _bad_cases(d: Path) -> dict[str, tuple[Path, str]]:
    good = [f"2026-01-05 10:{i // 60:02d}:{i % 60:02d},000 INFO app: ok {i}" for i in range(200)]
    cases = {}
    p = d / "binary.log"
    p.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 40)
    cases["binary"] = (p, "binary file (NUL bytes), not a text log")
    p = d / "latin1.log"
    p.write_bytes("\n".join(x + " caf\xe9" for x in good).encode("latin-1"))
    cases["encoding"] = (p, "lines read are bad, the first not UTF-8")
    p = d / "long.log"
    p.write_text("\n".join(x + " " + "z" * 70_000 for x in good))
    cases["megabyte lines"] = (p, "lines read are bad, the first too long")
    p = d / "order.log"
    p.write_text("\n".join(good[:50] + [x.replace("10:", "07:", 1) for x in good[50:]]))
    cases["out of order"] = (p, "lines read are bad, the first out of time order")
    p = d / "nodate.log"
    p.write_text("\n".join(x[11:] for x in good))
    cases["no date"] = (p, "the log lines are in no format ftml knows")
    return cases


@pytest.mark.parametrize("case", ["binary", "encoding", "megabyte lines", "out of order",
                                  "no date"])
def test_bad_log_input_is_one_line_and_exit_2(fleet, tmp_path, case):
    path, problem = _bad_cases(tmp_path)[case]
    out = tmp_path / "model"
    result = CliRunner().invoke(main, ["train", "--metrics", str(fleet / "metrics.csv"),
                                       "--logs", str(path), "--out", str(out), "--quiet"])
    assert result.exit_code == 2, result.output + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ftml: error: {path}: line "), lines
    assert problem in lines[0] and "(" in lines[0]  # the fix, in parentheses
    assert "Traceback" not in result.output + result.stderr
    assert not (out / "manifest.json").exists()  # nothing half-written


def test_log_options_without_logs_and_bad_regex(fleet, tmp_path):
    r = CliRunner().invoke(main, ["train", "--metrics", str(fleet / "metrics.csv"),
                                  "--log-format", "python", "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "log options without --logs" in r.stderr
    with pytest.raises(InputError, match="no named group msg"):
        list(read_log_lines([fleet / "logs"], LogConfig(format=r"^(?P<ts>\S+)")))


def test_grouping_accuracy_as_loghub_defines_it():
    from bench.bench_logs import grouping_accuracy

    truth = np.array(["A", "A", "B", "B", "C"])
    assert grouping_accuracy(truth, np.array([1, 1, 2, 2, 3])) == 1.0
    # B split in two: both its lines wrong; A and C merged: all three wrong.
    assert grouping_accuracy(truth, np.array([1, 1, 2, 4, 1])) == 0.0
    assert grouping_accuracy(truth, np.array([1, 1, 2, 4, 3])) == pytest.approx(0.6)


def test_logs_of_another_period_are_one_line(fleet, tmp_path):
    other = tmp_path / "svc-api-02.log"
    other.write_text("2025-03-01 10:00:00,000 INFO app: ok\n2025-03-01 10:05:00,000 INFO app: ok\n")
    r = CliRunner().invoke(main, ["train", "--metrics", str(fleet / "metrics.csv"), "--logs",
                                  str(other), "--out", str(tmp_path / "m"), "--quiet"])
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [
        "ftml: error: --logs: the logs (2025-03-01 10:00:00+00:00 to 2025-03-01 10:05:00+00:00) "
        "cover none of the metrics' time (give the log files of the same period as the "
        "metrics)"]


def test_unseen_is_kept_and_counts_are_scaled_in_lines(fleet, trained, tmp_path):
    """Every template of these logs is frequent, so log:unseen is 0 throughout training: the
    screen keeps it (a new template later is news), and its scale, like every count of lines,
    is at least one line. Without the count floor it is screened out as constant."""
    from ftml import api
    from ftml.bundle import load_model

    model = load_model(trained)
    f = model.featurizer
    assert UNSEEN in f.metrics_
    counts = [j for j, m in enumerate(f.metrics_) if m.startswith("log:")]
    assert counts and f.baseline_.scale[..., counts].min() >= 1.0
    assert f.baseline_.center[..., f.metrics_.index(UNSEEN)].max() == 0.0
    off = api.train([fleet / "metrics.csv"], tmp_path / "m", incidents=fleet / "incidents.csv",
                    logs=[str(fleet / "logs")], log_config=LogConfig(count_scale_floor=0.0))
    assert off.summary["dropped_metrics"].get(UNSEEN) == "constant"
    assert UNSEEN not in off.model.featurizer.metrics_


def test_novelty_leaves_the_log_unseen_features_out_of_the_open_set_distance(fleet, tmp_path):
    """Logs ablation amendments 2-3: with diagnose.open_set_ignore 'novelty' the diagnoser's
    distance leaves out exactly the features of log:unseen (0 in training by construction);
    "none" leaves every feature in. "novelty" is the default (amendment 3)."""
    from ftml import api
    from ftml.config import Config

    res = api.train([fleet / "metrics.csv"], tmp_path / "m", incidents=fleet / "incidents.csv",
                    logs=[str(fleet / "logs")])
    d, names = res.model.diagnoser, res.model.featurizer.feature_names_
    assert d is not None
    left_out = sorted(names[i] for i in d.ignored_)
    assert left_out and left_out == sorted(n for n in names if n.startswith(UNSEEN + ":"))
    assert not set(d.space_) & set(d.ignored_)
    cfg = Config()
    cfg.diagnose.open_set_ignore = "none"
    plain = api.train([fleet / "metrics.csv"], tmp_path / "p",
                      incidents=fleet / "incidents.csv", logs=[str(fleet / "logs")], config=cfg)
    assert plain.model.diagnoser.ignored_.size == 0
    assert len(plain.model.diagnoser.space_) == len(names)
