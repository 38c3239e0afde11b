"""Stem baselines (``read.stem_baselines``): an entity not in training whose name less a
generated suffix (a pod renamed by a deploy) is the stem of trained entities is scored against
their baseline, not the fleet-wide one; every driver alike; nothing else changes."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
sys.path.insert(0, str(Path(__file__).parent))

import test_checks  # noqa: E402  (its DRIVERS: every driver of the pipeline core)
import watch_data  # noqa: E402

from ftml import api  # noqa: E402
from ftml.bundle import load_model  # noqa: E402
from ftml.config import Config  # noqa: E402
from ftml.features import fit_baseline  # noqa: E402
from ftml.io import entity_stem  # noqa: E402
from ftml.pipeline import unseen_entities, unseen_entities_warning  # noqa: E402


@pytest.mark.parametrize("name, stem", [
    ("checkout-7f3a9", "checkout"),  # one random hex id
    ("checkout-b21c0", "checkout"),
    ("ts-order-service-5d8f7c9b4-x2k9q", "ts-order-service"),  # Deployment: hash + 5
    ("ts-order-service-5d8f7c9b4", "ts-order-service"),  # a ReplicaSet: one generated part
    ("api-3123456789-x2k9q", "api"),  # before Kubernetes 1.8: a decimal hash
    ("backup-28391234-b5c7d", "backup"),  # CronJob: minutes since the epoch + 5
    ("fluentd-xkzqb", "fluentd"),  # DaemonSet: Kubernetes' 5 chars, no digit in them
    ("svc-db-08-49e17", "svc-db-08"),  # only the last part goes
    ("web-1", "web-1"),  # a StatefulSet's ordinal: its own identity
    ("web-0042", "web-0042"),  # digits alone never go
    ("node-2024", "node-2024"),
    ("redis-master", "redis-master"),  # a word
    ("my-app-backend-proxy", "my-app-backend-proxy"),  # words with vowels, not a hash
    ("app-eabcf", "app-eabcf"),  # letters with vowels and no digit: not generated
    ("api-v2", "api-v2"),  # too short
    ("checkout", "checkout"),
    ("Checkout-7F3A9", "Checkout-7F3A9"),  # not a Kubernetes name (upper case)
])
def test_the_stem_rule(name, stem):
    assert entity_stem(name) == stem


def _baseline(names, levels, stems=True):
    """One metric, one reading per entity and hour: entity i sits at levels[i]."""
    rng = np.random.default_rng(0)
    n = 24 * 20
    codes = np.repeat(np.arange(len(names)), n)
    values = (np.asarray(levels, float)[codes] + rng.normal(0, 1, len(codes)))[:, None]
    ts = np.tile(np.arange(n, dtype=np.int64) * 3_600_000_000_000 // 20, len(names))
    b = fit_baseline(values, codes, list(names), ts, by_hour=True)
    b.stems = stems
    return b


def test_an_unseen_pod_borrows_its_stems_baseline_else_the_fleets():
    names = ["checkout-7f3a9", "checkout-1b2c4", "db-5d8f7c9b4-x2k9q", "web-1", "web-2"]
    b = _baseline(names, [100, 110, 500, 10, 20])
    asked = ["checkout-b21c0", "db-6c7f8d9b5-q2w4z", "web-3", "cache-7f3a9", "web-1",
             "checkout"]
    idx = b.entity_index(asked)
    n = len(names)
    assert idx.tolist() == [n + 1, 2, -1, -1, 3, n + 1]  # checkout: several pods, median
    center, scale = b.tables()
    ts = np.array([5 * 3_600_000_000_000])  # 05:00
    rows = b.row_index_of(idx, np.repeat(ts, len(asked)))
    np.testing.assert_allclose(center[rows[0]], np.median(b.center[:2, 5], axis=0))
    np.testing.assert_allclose(scale[rows[0]], np.median(b.scale[:2, 5], axis=0))
    np.testing.assert_array_equal(center[rows[1]], b.center[2, 5])  # its one trained pod
    np.testing.assert_array_equal(center[rows[2]], b.fleet_center[5])  # no trained stem
    assert b.borrowed_stems(["checkout-b21c0", "web-3", "db-6c7f8d9b5-q2w4z"]) == [
        "checkout", None, "db"]
    # Off: the fleet's, as before; the rows of trained entities and the fleet are the same.
    off = _baseline(names, [100, 110, 500, 10, 20], stems=False)
    assert off.entity_index(asked).tolist() == [-1, -1, -1, -1, 3, -1]
    assert off.borrowed_stems(["checkout-b21c0"]) == [None]
    c_off, s_off = off.tables()
    np.testing.assert_array_equal(center[:len(c_off)], c_off)
    np.testing.assert_array_equal(scale[:len(s_off)], s_off)


def test_a_bundle_from_before_stems_decodes_with_them_on_and_the_cache_is_not_stored():
    b = _baseline(["checkout-7f3a9", "checkout-1b2c4"], [100, 110])
    b.entity_index(["checkout-b21c0"])  # fills the derived table
    state = b.__getstate__()
    assert "_stem_cache" not in state and state["stems"] is True
    del state["stems"]  # as a bundle written before the option
    old = type(b).__new__(type(b))
    old.__dict__.update(state)
    assert old.stems is True
    assert old.entity_index(["checkout-b21c0"]).tolist() == [3]


def test_the_option_reaches_the_baseline_and_the_yaml_key_exists(tmp_path):
    (tmp_path / "ftml.yaml").write_text("read:\n  stem_baselines: false\n")
    from ftml.config import load_config

    assert load_config(tmp_path / "ftml.yaml").read.stem_baselines is False
    assert Config().read.stem_baselines is True
    from ftml.pipeline import featurizer_of

    cfg = load_config(tmp_path / "ftml.yaml")
    assert featurizer_of(cfg.features, cfg.read).stem_baselines is False
    assert featurizer_of(cfg.features).stem_baselines is True


# --------------------------------------------------------------------------- scoring

RENAMED = {"web-1": "web-1-7f3a9", "web-2": "web-2-b21c0", "db-1": "db-1-5d8f7c9b4-x2k9q"}


@pytest.fixture(scope="module")
def renamed(tmp_path_factory):
    """A model of web-1, web-2, db-1, and its live data as pods renamed by a deploy."""
    tmp = tmp_path_factory.mktemp("stems")
    rows, inc = watch_data.training()
    rows.to_csv(tmp / "train.csv", index=False)
    inc.to_csv(tmp / "incidents.csv", index=False)
    api.train([tmp / "train.csv"], tmp / "model", incidents=tmp / "incidents.csv")
    live, _ = watch_data.live()
    live.to_csv(tmp / "orig.csv", index=False)
    pods = live.assign(entity=live["entity"].map(RENAMED))
    pods.to_csv(tmp / "live.csv", index=False)
    pods.to_parquet(tmp / "live.parquet", index=False)
    return tmp, load_model(tmp / "model"), pods


#: What an event says beside names (its id, group, suspects and evidence name its entities).
_SAID = ("entity", "start", "end", "score", "cause", "confidence", "top_causes", "top_metrics",
         "top_z", "status", "cause_source", "playbook")


def _events(evs, back=None):
    out = []
    for e in evs:
        d = e.to_dict()
        if back is not None:
            d = {k: d[k] for k in _SAID}
            d["entity"] = back.get(d["entity"], d["entity"])
        out.append(d)
    return sorted(out, key=lambda d: (d["entity"], d["start"]))


def _without_stems(model):
    model = copy.copy(model)
    model.featurizer = copy.copy(model.featurizer)
    model.featurizer.baseline_ = copy.copy(model.featurizer.baseline_)
    model.featurizer.baseline_.stems = False
    model.featurizer.__dict__.pop("_tables_cache", None)
    model.featurizer.baseline_.__dict__.pop("_stem_cache", None)
    return model


def test_renamed_pods_score_as_their_trained_selves(renamed):
    tmp, model, _ = renamed
    back = {v: k for k, v in RENAMED.items()}
    orig = _events(api.score(model, [tmp / "orig.csv"]).events, {})
    pods = api.score(model, [tmp / "live.csv"])
    assert len(orig) >= 3
    assert pods.unseen == sorted(RENAMED.values())
    assert _events(pods.events, back) == orig
    # Off, the same pods get the fleet's baseline: other events (the old behaviour).
    off = api.score(_without_stems(model), [tmp / "live.csv"])
    assert _events(off.events, back) != _events(pods.events, back)


def test_models_without_unseen_entities_give_the_same_events_on_and_off(renamed):
    tmp, model, _ = renamed
    on = api.score(model, [tmp / "orig.csv"])
    off = api.score(_without_stems(model), [tmp / "orig.csv"])
    assert on.unseen == []
    assert _events(on.events) == _events(off.events)


@pytest.mark.parametrize("driver", sorted(test_checks.DRIVERS))
def test_every_driver_scores_renamed_pods_alike(renamed, driver):
    tmp, model, pods = renamed
    reference = _events(api.score(model, [tmp / "live.csv"], chunk_rows=10**9).events)
    assert len(reference) >= 3
    assert _events(test_checks.DRIVERS[driver](tmp, model, pods)) == reference


def test_the_warning_line_says_which_baseline_each_unseen_entity_got(renamed):
    _, model, _ = renamed
    names = ["web-1", "web-2-b21c0", "db-1-5d8f7c9b4-x2k9q", "cache-7f3a9"]
    line = unseen_entities_warning(model, unseen_entities(model, names), len(names))
    assert line == (
        "3 of 4 entities not in training: 2 scored against the baseline of their stem "
        "(db-1-5d8f7c9b4-x2k9q -> db-1-*, web-2-b21c0 -> web-2-*), the rest against the "
        "fleet-wide baseline (all training entities pooled, per hour of day): cache-7f3a9")
    line = unseen_entities_warning(model, unseen_entities(model, ["web-2-b21c0"]))
    assert line == ("1 entities not in training: 1 scored against the baseline of their stem "
                    "(web-2-b21c0 -> web-2-*), none against the fleet-wide baseline")
    # Without stems (or none matching): the line as it always was.
    line = unseen_entities_warning(_without_stems(model),
                                   unseen_entities(model, ["web-2-b21c0"]))
    assert line.startswith("1 entity was not in training and is scored against the "
                           "fleet-wide baseline")


def test_score_says_it_on_stderr(renamed, tmp_path):
    import subprocess

    tmp, _, _ = renamed
    proc = subprocess.run([sys.executable, "-m", "ftml", "score", "--model", str(tmp / "model"),
                           "--metrics", str(tmp / "live.csv"), "--out",
                           str(tmp_path / "ev.jsonl")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [w for w in proc.stderr.splitlines() if "not in training" in w]
    assert lines == ["ftml: warning: 3 of 3 entities not in training: 3 scored against the "
                     "baseline of their stem (db-1-5d8f7c9b4-x2k9q -> db-1-*, web-1-7f3a9 -> "
                     "web-1-*, web-2-b21c0 -> web-2-*), none against the fleet-wide baseline"]
    assert pd.read_json(tmp_path / "ev.jsonl", lines=True)["entity"].isin(
        RENAMED.values()).all()
