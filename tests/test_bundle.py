"""Model bundles are data, never code: what a loaded bundle gives is the model in memory, bit for
bit, for every diagnoser; a bundle that would run code, a changed or cut file, a wrong key are
refused with one line and exit 2 (the CLI run as a real subprocess); old pickle bundles are
refused, and converted only when asked."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest

from ftml import api
from ftml.bundle import (
    ARRAYS_FILE,
    BUNDLE_FILES,
    LEGACY_FILE,
    MANIFEST_FILE,
    STATE_FILE,
    Model,
    _canonical,
    load_model,
    save_model,
)
from ftml.config import Config
from ftml.errors import ModelError
from ftml.fast import FastForest
from ftml.io import read_incidents, read_metrics
from ftml.simulate import write_simulation

PY = sys.executable
KEY = b"a long random secret for the tests"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fleet")
    write_simulation(out, entities=4, days=3, seed=3)
    return out


def _config(classifier: str = "tree") -> Config:
    config = Config()
    config.detect.n_estimators = 40  # small and quick; the bundle's job is the same
    config.diagnose.classifier = classifier
    return config


def _fit(fleet: Path, classifier: str, incidents: bool, rules: Path | None = None):
    config = _config(classifier)
    data = read_metrics([fleet / "metrics.csv"], config.read)
    inc = read_incidents(fleet / "incidents.csv", data.entities, config.read) \
        if incidents else None
    model, info = api.fit_model(data, inc, config, rules)
    return model, info, data


@pytest.fixture(scope="module")
def bundle(fleet, tmp_path_factory) -> Path:
    """An unsigned tree bundle, trained once (tests copy it before changing it)."""
    out = tmp_path_factory.mktemp("bundle") / "model"
    api.train([fleet / "metrics.csv"], out, incidents=fleet / "incidents.csv",
              config=_config())
    return out


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _reseal(bundle: Path) -> None:
    """What an attacker without the key can do: update the manifest's sha256s and digest to
    the files as they are now."""
    m = json.loads((bundle / MANIFEST_FILE).read_text())
    m["files"] = {name: hashlib.sha256((bundle / name).read_bytes()).hexdigest()
                  for name in BUNDLE_FILES}
    m["digest"] = hashlib.sha256(_canonical(m)).hexdigest()
    (bundle / MANIFEST_FILE).write_text(json.dumps(m))


def _ftml(*args, env: dict | None = None, cwd: Path | None = None):
    full_env = dict(os.environ)
    full_env.pop("FTML_MODEL_KEY", None)
    full_env.update(env or {})
    return subprocess.run([PY, "-m", "ftml", *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=300)


def _assert_refused(run, *words: str) -> str:
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("ftml: error: "), lines[0]
    assert "Traceback" not in run.stderr + run.stdout
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- same bits


@pytest.mark.parametrize("classifier,incidents,rules", [
    ("tree", True, False), ("svm", True, False), ("forest", True, False),
    ("tree", False, False), ("tree", True, True)])
def test_a_loaded_bundle_scores_and_diagnoses_as_the_model_in_memory(
        fleet, tmp_path, classifier, incidents, rules):
    rules_path = None
    if rules:
        rules_path = tmp_path / "rules.yaml"
        rules_path.write_text("rules:\n  - 'disk_used_pct > 90 for 2 windows -> disk_full'\n")
    model, info, data = _fit(fleet, classifier, incidents, rules_path)
    w = model.featurizer.transform(data)
    if not incidents:  # calibrated on unlabelled faults, it flags nothing here: make it flag
        model.threshold = float(np.quantile(model.score_windows(w), 0.98))
    save_model(model, tmp_path / "model", info)
    loaded = load_model(tmp_path / "model")
    assert (loaded.diagnoser is None) == (not incidents)
    # The forest is scored from the stored node arrays: no scikit-learn forest is rebuilt.
    assert isinstance(loaded.detector.forest_, FastForest)
    assert loaded.score_windows(w).tobytes() == model.score_windows(w).tobytes()
    assert loaded.threshold == model.threshold and loaded.rules == model.rules
    assert loaded.config == model.config and loaded.event_rules == model.event_rules
    assert loaded.version == model.version
    if incidents:
        X = w.X[:: max(1, len(w) // 3000)]
        assert loaded.diagnoser.predict_proba(X).tobytes() == \
            model.diagnoser.predict_proba(X).tobytes()
        assert loaded.diagnoser.min_confidence_ == model.diagnoser.min_confidence_
        names = model.featurizer.feature_names_
        assert loaded.diagnoser.explain(names) == model.diagnoser.explain(names)
    mine = [e.to_dict() for e in api.score(model, [fleet / "metrics.csv"]).events]
    theirs = [e.to_dict() for e in api.score(loaded, [fleet / "metrics.csv"]).events]
    assert mine and theirs == mine
    if incidents:  # the classifier's probabilities (top causes) are in the events compared
        assert any(e["cause_source"] == "classifier" and e["top_causes"] for e in mine)
    if rules:
        assert any(e["cause_source"].startswith("rule:") for e in mine)


def test_a_bundle_is_json_and_arrays_only_and_the_same_model_writes_the_same_bytes(
        fleet, tmp_path):
    model, info, _ = _fit(fleet, "svm", True)
    save_model(model, tmp_path / "a", info)
    save_model(model, tmp_path / "b", info)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(
        [MANIFEST_FILE, *BUNDLE_FILES])
    for name in BUNDLE_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    json.loads((tmp_path / "a" / STATE_FILE).read_text())
    with np.load(tmp_path / "a" / ARRAYS_FILE, allow_pickle=False) as z:
        assert all(z[k].dtype.kind != "O" for k in z.files)
    m = json.loads((tmp_path / "a" / MANIFEST_FILE).read_text())
    assert m["format_version"] == 3 and m["signature"] == "unsigned"
    assert LEGACY_FILE not in json.dumps(m)


def test_loading_never_unpickles_or_evaluates(bundle, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a bundle was unpickled or evaluated")

    for mod, name in [(pickle, "load"), (pickle, "loads"), (joblib, "load")]:
        monkeypatch.setattr(mod, name, refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    import builtins
    monkeypatch.setattr(builtins, "eval", refuse)
    assert isinstance(load_model(bundle), Model)


def test_an_unlisted_class_cannot_be_saved(fleet, tmp_path):
    model, info, _ = _fit(fleet, "tree", False)
    model.rules = [object()]
    with pytest.raises(TypeError, match="not a class a bundle may hold"):
        save_model(model, tmp_path / "m", info)


def test_unsigned_bundle_is_noted_once_per_process(bundle, tmp_path, caplog):
    copy = _copy(bundle, tmp_path / "m")
    with caplog.at_level(logging.WARNING, logger="ftml.bundle"):
        load_model(copy)
        load_model(copy)
    notes = [r for r in caplog.records if "unsigned" in r.getMessage()]
    assert len(notes) == 1


def test_a_diagnoser_from_another_scikit_learn_is_noted(bundle, tmp_path, caplog):
    copy = _copy(bundle, tmp_path / "m")
    m = json.loads((copy / MANIFEST_FILE).read_text())
    m["versions"]["scikit-learn"] = "0.1"
    (copy / MANIFEST_FILE).write_text(json.dumps(m))
    _reseal(copy)
    with caplog.at_level(logging.WARNING, logger="ftml.bundle"):
        load_model(copy)
    assert any("scikit-learn 0.1" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ftml.bundle"):
        load_model(bundle)
    assert not any("scikit-learn" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- refusals


def _malicious_legacy(where: Path, marker: Path) -> Path:
    """An old-format bundle whose model.joblib runs a command when unpickled, its manifest's
    sha256 updated to match: what anyone who can write to the models folder could make."""

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    where.mkdir(parents=True)
    blob = pickle.dumps(Payload())
    (where / LEGACY_FILE).write_bytes(blob)
    (where / MANIFEST_FILE).write_text(json.dumps({
        "format_version": 2, "model_version": "abcdef012345",
        "sha256": hashlib.sha256(blob).hexdigest()}))
    return where


@pytest.mark.parametrize("command", ["explain", "score", "watch"])
def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(fleet, tmp_path, command):
    marker = tmp_path / "PAYLOAD_RAN"
    evil = _malicious_legacy(tmp_path / "evil", marker)
    args = {"explain": ["explain", evil],
            "score": ["score", "--model", evil, "--metrics", fleet / "metrics.csv",
                      "--out", tmp_path / "ev.jsonl"],
            "watch": ["watch", "--model", evil, "--source", f"file:{fleet / 'metrics.csv'}",
                      "--state", tmp_path / "state"]}[command]
    _assert_refused(_ftml(*args), "pickle", "ftml model convert")
    assert not marker.exists()
    assert not (tmp_path / "ev.jsonl").exists()


def test_a_pickle_beside_a_data_bundle_is_never_read(bundle, tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    copy = _copy(bundle, tmp_path / "m")
    _malicious_legacy(tmp_path / "evil", marker)
    (copy / LEGACY_FILE).write_bytes((tmp_path / "evil" / LEGACY_FILE).read_bytes())
    run = _ftml("explain", copy)
    assert run.returncode == 0, run.stderr
    assert not marker.exists()


def test_a_class_outside_the_list_is_refused_even_with_the_manifest_resealed(bundle, tmp_path):
    copy = _copy(bundle, tmp_path / "m")
    state = json.loads((copy / STATE_FILE).read_text())
    state["model"]["state"]["rules"] = [{"__object__": "posix.system", "state": {}}]
    (copy / STATE_FILE).write_text(json.dumps(state))
    _reseal(copy)
    _assert_refused(_ftml("explain", copy), "posix.system", "does not rebuild")


@pytest.mark.parametrize("name", [STATE_FILE, ARRAYS_FILE, MANIFEST_FILE])
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_changed_or_cut_file_is_refused(bundle, tmp_path, name, damage):
    copy = _copy(bundle, tmp_path / "m")
    data = bytearray((copy / name).read_bytes())
    if damage == "flip":
        # A byte inside the content: for the manifest, one of a number's digits (valid JSON).
        at = data.index(b'"threshold": 0.') + 16 if name == MANIFEST_FILE else len(data) // 2
        data[at] = ord("1") if data[at] != ord("1") else ord("2")
    else:
        del data[len(data) * 2 // 3:]
    (copy / name).write_bytes(bytes(data))
    _assert_refused(_ftml("explain", copy), "refus" if name != MANIFEST_FILE or
                    damage == "flip" else "manifest")


def test_every_array_is_covered_by_the_checksum(bundle, tmp_path):
    """A flipped byte in each array member of arrays.npz (not only somewhere in the file)."""
    import zipfile

    with zipfile.ZipFile(bundle / ARRAYS_FILE) as zf:
        members = [(i.filename, i.header_offset, i.compress_size) for i in zf.infolist()]
    blob = (bundle / ARRAYS_FILE).read_bytes()
    for name, offset, size in members:
        damaged = bytearray(blob)
        damaged[offset + 30 + len(name) + size // 2] ^= 0x01  # inside the member's data
        copy = tmp_path / name
        _copy(bundle, copy)
        (copy / ARRAYS_FILE).write_bytes(bytes(damaged))
        with pytest.raises(ModelError, match="sha256"):
            load_model(copy)


# --------------------------------------------------------------------------- signatures


@pytest.fixture(scope="module")
def signed(fleet, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("signed") / "model"
    key_file = out.parent / "key"
    key_file.write_bytes(KEY + b"\n")
    run = _ftml("train", "--metrics", fleet / "metrics.csv", "--incidents",
                fleet / "incidents.csv", "--out", out, "--quiet", "--sign-key-file", key_file)
    assert run.returncode == 0, run.stderr
    return out


def test_a_signed_bundle_loads_with_its_key_and_not_with_another(signed, fleet, tmp_path):
    m = json.loads((signed / MANIFEST_FILE).read_text())
    assert m["signature"]["scheme"] == "hmac-sha256"
    run = _ftml("score", "--model", signed, "--metrics", fleet / "metrics.csv", "--out",
                tmp_path / "ev.jsonl", "--quiet", "--sign-key-file", signed.parent / "key")
    assert run.returncode == 0 and run.stderr == "", run.stderr
    run = _ftml("explain", signed, env={"FTML_MODEL_KEY": KEY.decode()})
    assert run.returncode == 0 and run.stderr == "", run.stderr
    _assert_refused(_ftml("explain", signed, env={"FTML_MODEL_KEY": "another key"}), "HMAC")
    (tmp_path / "other").write_text("another key\n")
    _assert_refused(_ftml("watch", "--model", signed, "--source", "stdin", "--sign-key-file",
                          tmp_path / "other"), "HMAC")
    # Without a key it loads, and says once that nothing was checked.
    run = _ftml("explain", signed)
    assert run.returncode == 0
    assert run.stderr.count("ftml: note:") == 1 and "no key" in run.stderr


def test_the_environment_key_signs_and_verifies(fleet, tmp_path, monkeypatch):
    model, info, _ = _fit(fleet, "tree", False)
    monkeypatch.setenv("FTML_MODEL_KEY", KEY.decode())
    save_model(model, tmp_path / "m", info)
    assert json.loads((tmp_path / "m" / MANIFEST_FILE).read_text())["signature"]["hmac"]
    assert load_model(tmp_path / "m").version == model.version
    monkeypatch.setenv("FTML_MODEL_KEY", "another key")
    with pytest.raises(ModelError, match="HMAC does not match"):
        load_model(tmp_path / "m")
    assert load_model(tmp_path / "m", key=KEY).version == model.version


def test_a_resealed_signed_bundle_is_refused_with_the_key(signed, bundle, tmp_path):
    copy = _copy(signed, tmp_path / "m")
    (copy / ARRAYS_FILE).write_bytes((bundle / ARRAYS_FILE).read_bytes())  # another model
    _reseal(copy)
    _assert_refused(_ftml("explain", copy, env={"FTML_MODEL_KEY": KEY.decode()}), "HMAC")


def test_an_unsigned_bundle_is_refused_when_a_key_is_given(bundle):
    _assert_refused(_ftml("explain", bundle, env={"FTML_MODEL_KEY": KEY.decode()}),
                    "unsigned")


def test_a_missing_key_file_is_one_line(bundle, tmp_path):
    _assert_refused(_ftml("explain", bundle, "--sign-key-file", tmp_path / "nope"), "key file")


# --------------------------------------------------------------------------- old bundles


def _legacy(model: Model, info: dict, where: Path) -> Path:
    """A format-2 bundle as ftml wrote them before: the model pickled by joblib."""
    where.mkdir(parents=True)
    model.version, model.manifest = "pending", {}
    joblib.dump(model, where / LEGACY_FILE, compress=3)
    digest = hashlib.sha256((where / LEGACY_FILE).read_bytes()).hexdigest()
    (where / MANIFEST_FILE).write_text(json.dumps(
        {"format_version": 2, "model_version": digest[:12], "sha256": digest, **info},
        default=str))
    model.version = digest[:12]
    return where


def test_convert_rewrites_an_old_bundle_as_data_and_warns(fleet, tmp_path):
    model, info, data = _fit(fleet, "forest", True)
    old = _legacy(model, info, tmp_path / "m")
    _assert_refused(_ftml("explain", old), "pickle")
    run = _ftml("model", "convert", old)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("ftml: warning:") == 1 and "unpickles" in run.stderr
    assert not (old / LEGACY_FILE).exists()
    loaded = load_model(old)
    assert loaded.version == model.version  # same model, same event ids
    w = model.featurizer.transform(data)
    assert loaded.score_windows(w).tobytes() == model.score_windows(w).tobytes()
    assert loaded.diagnoser.predict_proba(w.X[:500]).tobytes() == \
        model.diagnoser.predict_proba(w.X[:500]).tobytes()
    assert json.loads((old / MANIFEST_FILE).read_text())["converted_from"]["format_version"] == 2


def test_convert_refuses_a_pickle_that_does_not_match_its_checksum(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    evil = _malicious_legacy(tmp_path / "evil", marker)
    (evil / LEGACY_FILE).write_bytes((evil / LEGACY_FILE).read_bytes() + b".")
    _assert_refused(_ftml("model", "convert", evil), "sha256")
    assert not marker.exists()


# --------------------------------------------------------------------------- index checks


@functools.lru_cache(maxsize=4)
def _fit_once(fleet: Path, classifier: str, incidents: bool) -> Model:
    """A fitted model shared by tests that only read it."""
    return _fit(fleet, classifier, incidents)[0]


@pytest.mark.parametrize("classifier,suffix,corrupt", [
    ("tree", ".tree_.left_child", lambda a: a.__setitem__(0, len(a) + 5)),
    ("tree", ".tree_.feature", lambda a: a.__setitem__(0, 10_000)),
    ("forest", ".tree_.right_child", lambda a: a.__setitem__(0, 0)),
    ("svm", "._n_support", lambda a: a.__setitem__(0, a[0] + 7)),
    (None, "forest_._nodes", None),
])
def test_indices_compiled_code_follows_unchecked_are_checked_on_load(fleet, classifier, suffix,
                                                                     corrupt):
    """A tree child or feature out of range, support vector counts that do not add up, forest
    node arrays pointing outside: refused when decoded, before scikit-learn's Cython, libsvm
    or the forest kernel could read out of bounds."""
    from ftml.bundle import _codec, _model_state
    from ftml.codec import CodecError

    model = _fit_once(fleet, classifier or "tree", classifier is not None)
    codec = _codec()
    state, arrays = codec.encode(_model_state(model))
    name = next(k for k in sorted(arrays) if k.endswith(suffix))
    arrays = dict(arrays)
    arrays[name] = arrays[name].copy()
    if corrupt is None:  # the FastForest's first inner node points past the end
        nodes = arrays[name]
        inner = np.flatnonzero(~np.isnan(nodes["threshold"]))[0]
        nodes["left"][inner] = len(nodes) + 3
    else:
        corrupt(arrays[name])
    assert codec.decode(*codec.encode(_model_state(model))) is not None
    with pytest.raises(CodecError, match="inconsistent|out of range|shapes"):
        codec.decode(state, arrays)
