"""Scoring a saved model imports neither scikit-learn nor scipy (issue 15): a bundle's detector
is rebuilt as ftml.detect.ForestScorer, which scores with the same bits as the fitted
IsolationDetector; IsolationDetector and Diagnoser are loaded on first use."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ftml import api
from ftml.bundle import load_model
from ftml.detect import ForestScorer, IsolationDetector

REPO = Path(__file__).resolve().parent.parent

_CHILD = ("import json, sys\n"
          "from ftml import api, cli  # noqa: F401 - what `ftml score` imports\n"
          "r = api.score(sys.argv[1], [sys.argv[2]], out=sys.argv[3])\n"
          "print(json.dumps({'events': len(r.events), 'windows': r.windows,"
          " 'loaded': sorted(m for m in ('sklearn', 'scipy') if m in sys.modules)}))\n")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from tests.conftest import _make_wide_frame, _write_metrics

    work = tmp_path_factory.mktemp("lazy")
    entities = ("a", "b", "c")
    train = _write_metrics(_make_wide_frame(entities, periods=400, seed=1), work / "train.csv")
    test = _make_wide_frame(entities, periods=200, seed=2, start="2026-01-06T00:00:00Z")
    test.loc[test.index[150:170], "cpu"] += 40.0  # something to flag
    test = _write_metrics(test, work / "test.csv")
    result = api.train([train], work / "model", quiet=True)
    return result.model, work / "model", test


def _score_in_child(path: Path, test: Path, out: Path) -> dict:
    p = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(test), str(out)],
                       capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_scoring_a_saved_model_imports_neither_scikit_learn_nor_scipy(saved):
    model, path, test = saved
    assert model.diagnoser is None  # no incidents: nothing of scikit-learn's in the bundle
    out = path.parent / "events_child.jsonl"
    child = _score_in_child(path, test, out)
    assert child["loaded"] == []
    # ... and gives the events of the model in memory, whose detector is scikit-learn's kind.
    here = api.score(model, [test], out=path.parent / "events_here.jsonl")
    assert isinstance(model.detector, IsolationDetector)
    assert child["windows"] == here.windows > 0
    assert out.read_text() == (path.parent / "events_here.jsonl").read_text()


def test_the_check_sees_scikit_learn_when_a_bundle_needs_it(tmp_path):
    # The same child, on a model with a diagnoser (scikit-learn's objects): the check can fail.
    from tests.test_api import _fleet

    metrics, incidents = _fleet(tmp_path, days=2)
    result = api.train([metrics], tmp_path / "model", incidents=incidents, quiet=True)
    assert result.model.diagnoser is not None
    child = _score_in_child(tmp_path / "model", metrics, tmp_path / "events.jsonl")
    assert "sklearn" in child["loaded"]


def test_a_loaded_detector_scores_the_same_bits_as_the_fitted_one(saved):
    model, path, _ = saved
    loaded = load_model(path).detector
    assert type(loaded) is ForestScorer
    X = np.random.default_rng(0).normal(0, 2, (5000, model.detector.n_features_in_))
    assert np.array_equal(loaded.anomaly_score(X), model.detector.anomaly_score(X))
    f_loaded, r_loaded = loaded.component_scores(X)
    f_fitted, r_fitted = model.detector.component_scores(X)
    assert np.array_equal(f_loaded, f_fitted) and np.array_equal(r_loaded, r_fitted)


@pytest.mark.parametrize("ensemble", ["forest+robust", "forest|robust"])
def test_a_loaded_ensemble_scores_the_same_bits(ensemble):
    from ftml.bundle import _codec

    rng = np.random.default_rng(1)
    X = rng.normal(size=(3000, 6))
    det = IsolationDetector(n_estimators=30, random_state=0, ensemble=ensemble).fit(X)
    state, arrays = _codec().encode(det)
    loaded = _codec(with_sklearn=False).decode(state, arrays)
    assert type(loaded) is ForestScorer and loaded.ensemble == ensemble
    assert np.array_equal(loaded.anomaly_score(X[:500]), det.anomaly_score(X[:500]))


def test_a_loaded_detector_refuses_what_the_fitted_one_refuses(saved):
    _, path, _ = saved
    loaded = load_model(path).detector
    width = loaded.n_features_in_
    with pytest.raises(ValueError, match="features"):
        loaded.anomaly_score(np.zeros((3, width + 1)))
    bad = np.zeros((3, width))
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        loaded.anomaly_score(bad)
    with pytest.raises(AttributeError, match="not fitted"):
        ForestScorer().anomaly_score(np.zeros((3, width)))
    assert loaded.anomaly_score(np.zeros((0, width))).shape == (0,)


def test_the_lazily_loaded_estimators_keep_their_names(saved):
    model, _, _ = saved
    from ftml import detect, diagnose
    from ftml.diagnose import Diagnoser

    assert IsolationDetector.__module__ == "ftml.detect"
    assert Diagnoser.__module__ == "ftml.diagnose"
    again = pickle.loads(pickle.dumps(model.detector))  # pickles find them by those names
    assert type(again) is IsolationDetector
    for module in (detect, diagnose):
        with pytest.raises(AttributeError):
            module.NoSuchThing  # noqa: B018
