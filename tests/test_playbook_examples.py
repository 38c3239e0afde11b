"""The playbook examples that fit real models: hosts (node exporter / the local source) and
Kubernetes workloads, beside the simulator's. Each is loaded against a model trained on the
metrics of its own example config, as ``ftml watch --playbooks`` loads it, and the generic
``recovered`` verify needs no metric name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ftml import api
from ftml.bundle import load_model
from ftml.config import load_config
from ftml.errors import PlaybookError
from ftml.playbooks import RECOVERED_PREFIX, load_playbooks, parse_playbooks
from ftml.sources import source_config

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
KINDS = {
    "host": (ROOT / "playbooks.host.example.yaml", ROOT / "examples/node-exporter/ftml.yaml"),
    "kubernetes": (ROOT / "playbooks.kubernetes.example.yaml",
                   ROOT / "examples/kubernetes/ftml.yaml"),
}


def _history(metrics: list[str], days: float = 2.0, seed: int = 0) -> pd.DataFrame:
    """Quiet history of two entities with these metric names (``_total``: counters)."""
    rng = np.random.default_rng(seed)
    n = int(days * 1440)
    t = pd.date_range("2026-01-01", periods=n, freq="60s", tz="UTC")
    parts = []
    for i, entity in enumerate(("node-a:9100", "node-b:9100")):
        cols = {}
        for j, m in enumerate(metrics):
            if m.endswith("_total"):
                cols[m] = np.cumsum(rng.integers(0, 3, n) * (j + 1)).astype(float)
            else:
                cols[m] = 20 + 5 * i + j + rng.normal(0, 1, n)
        parts.append(pd.DataFrame({"timestamp": t, "entity": entity, **cols}))
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module", params=sorted(KINDS))
def kind_model(request, tmp_path_factory):
    """A model of that kind: trained on history with the metric names its example config's
    queries give, with that config (as after `ftml record` with it)."""
    playbooks, config_path = KINDS[request.param]
    config = load_config(config_path)
    metrics = list(source_config(config.extra["watch"]).prometheus.queries)
    tmp = tmp_path_factory.mktemp(request.param)
    _history(metrics).to_csv(tmp / "history.csv", index=False)
    api.train([tmp / "history.csv"], tmp / "model", config=config)
    return request.param, playbooks, tmp, load_model(tmp / "model"), metrics


def test_each_example_checks(kind_model):
    _, playbooks, _, _, _ = kind_model
    r = subprocess.run([PY, "-m", "ftml", "playbook", "check", str(playbooks)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "unknown ->" in r.stdout and "recovered for 3 windows" in r.stdout


def test_the_example_loads_against_a_model_of_its_kind_and_the_simulators_does_not(
        kind_model):
    _, playbooks, _, model, metrics = kind_model
    assert list(model.metrics) == metrics
    book = load_playbooks(playbooks, known_metrics=model.metrics)
    assert book.playbooks
    used = {c.metric for p in book.playbooks for s in p.steps if s.verify
            for c in s.verify.conditions}
    assert {m for m in used if not m.startswith(RECOVERED_PREFIX)} <= set(model.metrics)
    with pytest.raises(PlaybookError, match="unknown metric"):
        load_playbooks(ROOT / "playbooks.example.yaml", known_metrics=model.metrics)


def test_a_watch_with_a_model_of_that_kind_accepts_its_example(kind_model):
    name, playbooks, tmp, model, metrics = kind_model
    rows = _history(metrics, days=0.05, seed=1)
    rows["timestamp"] = rows["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    r = subprocess.run([PY, "-m", "ftml", "watch", "--model", str(tmp / "model"), "--source",
                        "stdin", "--playbooks", str(playbooks), "--state", str(tmp / "state"),
                        "--sink", f"jsonl:{tmp / 'alerts.jsonl'}", "--log-level", "warning"],
                       input=rows.to_json(orient="records", lines=True), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_recovered_is_a_verify_condition_without_a_metric_name():
    book = parse_playbooks("""
        version: 1
        playbooks:
          - name: any
            cause: unknown
            steps:
              - exec: [systemctl, restart, app.service]
                verify: [recovered]
              - exec: [systemctl, restart, db.service]
                verify: ["recovered for 5 windows", load1 < 4]
        """.replace("\n        ", "\n"), source="p.yaml", known_metrics=["load1"])
    first, second = (s.verify.conditions for s in book.playbooks[0].steps[:2])
    assert [str(c) for c in first] == ["recovered for 3 windows"]
    assert first[0].metric == f"{RECOVERED_PREFIX}3" and first[0].holds(1.0)
    assert not first[0].holds(0.0) and not first[0].holds(None)
    assert [str(c) for c in second] == ["recovered for 5 windows", "load1 < 4"]
    with pytest.raises(PlaybookError, match="recovered"):
        parse_playbooks("version: 1\nplaybooks:\n  - name: a\n    cause: x\n    steps:\n"
                        "      - exec: [\"true\"]\n        verify: [recovered for many windows]\n",
                        source="p.yaml")
