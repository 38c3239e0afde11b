"""train / score / explain end to end, through the library and through the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ftml import api
from ftml.bundle import ARRAYS_FILE, BUNDLE_FILES, MANIFEST_FILE, load_model
from ftml.cli import main
from ftml.config import Config
from ftml.diagnose import NO_FAULT
from ftml.errors import ModelError


def _fleet(tmp, days=3, seed=0):
    rng = np.random.default_rng(seed)
    n = int(days * 1440)
    t = pd.date_range("2026-01-01", periods=n, freq="60s", tz="UTC")
    rows, incidents = [], []
    for i, e in enumerate(["web-1", "web-2", "db-1"]):
        cpu = 40 + 10 * np.sin(np.arange(n) / 1440 * 2 * np.pi) + rng.normal(0, 1, n)
        mem = 50 + rng.normal(0, 0.5, n)
        for k, s in enumerate(range(600 + 100 * i, n - 200, 1100)):
            cause = ["cpu_hog", "mem_leak"][(k + i) % 2]
            if cause == "cpu_hog":
                cpu[s:s + 60] += 40
            else:
                mem[s:s + 60] += np.linspace(5, 40, 60)
            incidents.append((e, t[s], t[s + 59], cause))
        rows.append(pd.DataFrame({"timestamp": t, "entity": e, "cpu": cpu, "mem": mem,
                                  "bytes_total": np.cumsum(rng.integers(10, 20, n))}))
    metrics = pd.concat(rows).sort_values(["timestamp", "entity"])
    metrics.to_csv(tmp / "metrics.csv", index=False)
    pd.DataFrame(incidents, columns=["entity", "start", "end", "cause"]).to_csv(
        tmp / "incidents.csv", index=False)
    return tmp / "metrics.csv", tmp / "incidents.csv"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    metrics, incidents = _fleet(tmp)
    result = api.train([metrics], tmp / "model", incidents=incidents)
    return tmp, metrics, incidents, result


def test_bundle_has_manifest_with_versions_schema_and_checksum(trained):
    tmp, _, _, result = trained
    m = json.loads((tmp / "model" / MANIFEST_FILE).read_text())
    for key in ("format_version", "files", "digest", "signature", "versions", "metrics",
                "feature_schema",
                "step_seconds", "window", "training", "calibration", "causes"):
        assert key in m
    assert m["counters"] == ["bytes_total"]
    assert m["causes"] == ["cpu_hog", "mem_leak"]
    assert m["training"]["data_sha256"]


def test_score_finds_the_incidents_and_names_causes(trained):
    tmp, metrics, incidents, _ = trained
    res = api.score(tmp / "model", [metrics], out=tmp / "events.jsonl")
    inc = pd.read_csv(incidents, parse_dates=["start", "end"])
    found = right = 0
    for _, row in inc.iterrows():
        hits = [e for e in res.events if e.entity == row.entity and e.start <= row.end
                and e.end >= row.start]
        found += bool(hits)
        right += bool(hits) and hits[0].cause == row.cause
    assert found / len(inc) >= 0.8
    assert right / max(found, 1) >= 0.8
    lines = (tmp / "events.jsonl").read_text().splitlines()
    assert len(lines) == len(res.events)
    first = json.loads(lines[0])
    assert set(first) >= {"id", "entity", "start", "end", "score", "cause", "confidence",
                          "top_causes", "top_metrics", "playbook"}
    assert first["start"].endswith("Z")


def test_chunked_scoring_gives_identical_events(trained, tmp_path):
    tmp, metrics, _, _ = trained
    whole = api.score(tmp / "model", [metrics], out=tmp_path / "a.jsonl",
                      windows_out=tmp_path / "wa.csv")
    chunked = api.score(tmp / "model", [metrics], out=tmp_path / "b.jsonl", chunk_rows=1000,
                        windows_out=tmp_path / "wb.csv")
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert (tmp_path / "wa.csv").read_text() == (tmp_path / "wb.csv").read_text()
    assert whole.windows == chunked.windows


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_score_output_formats(trained, tmp_path, suffix):
    tmp, metrics, _, _ = trained
    out = tmp_path / f"events{suffix}"
    res = api.score(tmp / "model", [metrics], out=out)
    if suffix == ".parquet":
        assert len(pd.read_parquet(out)) == len(res.events)
    elif suffix == ".csv":
        assert len(pd.read_csv(out)) == len(res.events)


def test_changed_model_file_is_refused_before_it_is_read(trained, tmp_path, monkeypatch):
    tmp, _, _, _ = trained
    bundle = tmp_path / "model"
    bundle.mkdir()
    for f in (*BUNDLE_FILES, MANIFEST_FILE):
        (bundle / f).write_bytes((tmp / "model" / f).read_bytes())
    with open(bundle / ARRAYS_FILE, "ab") as fh:
        fh.write(b"tampered")
    called = []
    monkeypatch.setattr(np, "load", lambda *a, **k: called.append(a))
    with pytest.raises(ModelError, match="sha256"):
        load_model(bundle)
    assert not called


def test_unknown_format_version_is_refused(trained, tmp_path):
    tmp, _, _, _ = trained
    bundle = tmp_path / "model"
    bundle.mkdir()
    for f in BUNDLE_FILES:
        (bundle / f).write_bytes((tmp / "model" / f).read_bytes())
    m = json.loads((tmp / "model" / MANIFEST_FILE).read_text())
    m["format_version"] = 99
    (bundle / MANIFEST_FILE).write_text(json.dumps(m))
    with pytest.raises(ModelError, match="format version 99"):
        load_model(bundle)


def test_cli_train_score_explain(tmp_path, trained):
    _, metrics, incidents, _ = trained
    runner = CliRunner()
    r = runner.invoke(main, ["train", "--metrics", str(metrics), "--incidents", str(incidents),
                             "--out", str(tmp_path / "m"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "threshold" in r.output and "cpu_hog" in r.output
    r = runner.invoke(main, ["score", "--model", str(tmp_path / "m"), "--metrics", str(metrics),
                             "--out", str(tmp_path / "ev.csv"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "events" in r.output and (tmp_path / "ev.csv").exists()
    r = runner.invoke(main, ["explain", str(tmp_path / "m")])
    assert r.exit_code == 0 and "class:" in r.output
    assert "leave one cause out" in r.output  # the unseen-cause figure from training


def test_cli_missing_metric_in_scored_file_is_one_line_error(tmp_path, trained):
    tmp, metrics, _, _ = trained
    pd.read_csv(metrics).drop(columns=["mem"]).to_csv(tmp_path / "m.csv", index=False)
    r = CliRunner().invoke(main, ["score", "--model", str(tmp / "model"), "--metrics",
                                  str(tmp_path / "m.csv"), "--out", str(tmp_path / "ev.jsonl")])
    assert r.exit_code == 2
    assert "mem" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ev.jsonl").exists()


def test_cli_tampered_model_is_one_line_error(tmp_path, trained):
    tmp, metrics, _, _ = trained
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / MANIFEST_FILE).write_text((tmp / "model" / MANIFEST_FILE).read_text())
    for f in BUNDLE_FILES:
        (tmp_path / "m" / f).write_bytes(b"not the model")
    r = CliRunner().invoke(main, ["score", "--model", str(tmp_path / "m"), "--metrics",
                                  str(metrics), "--out", str(tmp_path / "ev.jsonl")])
    assert r.exit_code == 2 and "sha256" in r.stderr


def test_rules_override_the_classifier(tmp_path, trained):
    _, metrics, incidents, _ = trained
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - 'cpu > 70 for 2 windows -> cpu_pegged'\n")
    api.train([metrics], tmp_path / "m", incidents=incidents, rules=rules)
    res = api.score(tmp_path / "m", [metrics])
    pegged = [e for e in res.events if e.cause == "cpu_pegged"]
    assert pegged and all(e.cause_source == "rule:rule1" for e in pegged)


def test_detection_only_model_without_incidents(tmp_path, trained):
    _, metrics, _, _ = trained
    # Unlabelled history full of faults: calibration counts them as false alarms, so the
    # budget must allow for them.
    config = Config()
    config.detect.alarm_budget = 3.0
    api.train([metrics], tmp_path / "m", config=config)
    res = api.score(tmp_path / "m", [metrics])
    assert res.events and {e.cause for e in res.events} == {"unknown"}


def test_no_fault_windows_are_flagged_calibration_windows_clear_of_incidents(tmp_path):
    """The diagnoser's no_fault class learns from the calibration windows the detector scores
    highest that lie clear of every incident (and its aftermath), grouped into runs."""
    from ftml.io import read_incidents, read_metrics, to_ns
    from ftml.pipeline import (
        calibration_cut,
        calibration_scores,
        healthy_candidates,
        healthy_windows,
        incident_of_rows,
        split_windows,
    )

    metrics, incidents = _fleet(tmp_path)
    config = Config()
    data = read_metrics([metrics], config.read)
    inc = read_incidents(incidents, data.entities, config.read)
    model, info = api.fit_model(data, inc, config)
    assert NO_FAULT in model.diagnoser.classes_ and NO_FAULT not in model.causes
    assert info["diagnosis"]["no_fault_runs"] > 0
    frame, fz = data.frame, model.featurizer
    ts = to_ns(frame["timestamp"])
    codes, names = data.entity_codes()
    row_label = incident_of_rows(codes, names, ts, inc)
    t_cut = calibration_cut(ts.min(), ts.max(), config.detect.calibration_fraction)
    _, cal_rows, _ = split_windows(fz, frame, row_label, t_cut)
    scores = calibration_scores(fz, model.detector, frame, cal_rows, config.detect)
    cand = healthy_candidates(fz, frame, cal_rows, scores, inc, config)
    # clear of incidents: no candidate ends within a window before or window + cooldown after
    step = int(fz.step_.value)
    for e, t in zip(cand.entity, cand.end_ns, strict=True):
        own = inc[inc["entity"] == e]
        lo = to_ns(own["start"]) - fz.window * step
        hi = to_ns(own["end"]) + (fz.window + config.detect.cooldown) * step
        assert not ((t >= lo) & (t <= hi)).any()
    X, group = healthy_windows(cand, scores, step, config)
    assert len(X) == len(group) > 0
    floor = np.quantile(scores, 1 - config.diagnose.healthy_share)
    assert (cand.score[np.isin(cand.X, X).all(axis=1)] >= floor).all()
    assert np.bincount(group).max() <= config.diagnose.max_event_windows
    # switched off: no no_fault class
    off = Config()
    off.diagnose.healthy_windows = 0
    assert NO_FAULT not in api.fit_model(data, inc, off)[0].diagnoser.classes_


def test_change_features_train_and_score_alike_whole_and_chunked(tmp_path):
    # diagnose.change_features is a transform inside the diagnoser of the features every driver
    # hands it: the events of whole and chunked scoring are the same, and causes are named.
    metrics, incidents = _fleet(tmp_path)
    cfg = Config()
    cfg.diagnose.change_features = "only"
    api.train([metrics], tmp_path / "model", incidents=incidents, config=cfg)
    model = load_model(tmp_path / "model")
    assert model.diagnoser.change_features == "only"
    assert model.diagnoser.model_.n_features_in_ == 2 * len(model.metrics)
    whole = api.score(tmp_path / "model", [metrics], out=tmp_path / "a.jsonl")
    api.score(tmp_path / "model", [metrics], out=tmp_path / "b.jsonl", chunk_rows=1000)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    inc = pd.read_csv(incidents, parse_dates=["start", "end"])
    named = [e.cause for e in whole.events if e.cause not in ("unknown", NO_FAULT)]
    assert named and set(named) <= set(inc["cause"])
