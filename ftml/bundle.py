"""The trained model and its bundle on disk: data only, never code.

A bundle is ``manifest.json`` + ``model.json`` (every object of the model as plain data:
settings, rules, label names, config) + ``arrays.npz`` (its arrays: baselines, the forest's
node arrays as :mod:`ftml.fast` walks them, the diagnoser's trees, support vectors and
calibration), read with ``allow_pickle=False``. Loading checks the manifest's digest (and, given
a key, its HMAC-SHA256), then each file's sha256, then rebuilds the objects through
:class:`ftml.codec.Codec`, which creates only the classes listed in :func:`_codec`: nothing in a
bundle is unpickled or evaluated, so a changed bundle can make a wrong model, never run code.

Bundles of format 1 and 2 (``model.joblib``, a pickle) are refused; ``ftml model convert``
turns one into this format, knowingly unpickling it once.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import platform
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from ftml import __version__
from ftml.config import MISFIT_FLOOR, MISFIT_RATIO, Config
from ftml.detect import EventBuilder, EventRules, ForestScorer, RawEvent
from ftml.diagnose import NO_FAULT, UNKNOWN, Rule, apply_rules
from ftml.errors import ConfigError, ModelError
from ftml.events import Event, event_id
from ftml.features import Featurizer, Windows, detector_view
from ftml.io import MetricData, write_bytes, write_text

if TYPE_CHECKING:  # scikit-learn's estimators: imported only where they are needed
    from ftml.detect import IsolationDetector
    from ftml.diagnose import Diagnoser

log = logging.getLogger(__name__)

# 3: data only (model.json + arrays.npz), no pickle. 2: the featurizer's trailing level.
# Formats 1 and 2 were pickles (model.joblib): refused, see convert_legacy.
FORMAT_VERSION = 3
LEGACY_VERSIONS = (1, 2)
MANIFEST_FILE = "manifest.json"
STATE_FILE = "model.json"
ARRAYS_FILE = "arrays.npz"
BUNDLE_FILES = (STATE_FILE, ARRAYS_FILE)
LEGACY_FILE = "model.joblib"
KEY_ENV = "FTML_MODEL_KEY"
HMAC_SCHEME = "hmac-sha256"
UNSIGNED = "unsigned"
# Manifest keys outside what its digest and HMAC cover (they are computed over the rest).
_SEAL_KEYS = ("digest", "signature")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so that the same model writes the same bytes


@dataclass
class Model:
    """Everything scoring needs: featurizer, detector, threshold, event rules, diagnoser, rules."""

    featurizer: Featurizer
    detector: IsolationDetector | ForestScorer  # loaded from a bundle: a ForestScorer
    threshold: float
    event_rules: EventRules
    diagnoser: Diagnoser | None
    rules: list[Rule]
    config: Config
    version: str = "unsaved"
    manifest: dict[str, Any] = field(default_factory=dict)
    # The templates and series of the logs it was trained with (ftml.logs.LogModel), or None.
    logs: Any = None
    # Its scores are the forest's on the configured stats and its payload all features then
    # last values, so a scorer may compute both from the stats alone (window_view), without
    # whole Windows. A model that scores windows its own way says False.
    scores_from_stats: ClassVar[bool] = True

    @property
    def metrics(self) -> list[str]:
        return self.featurizer.metrics_

    @property
    def step(self) -> pd.Timedelta:
        return self.featurizer.step_

    @property
    def causes(self) -> list[str]:
        # no_fault (flagged but healthy) is a class the diagnoser learns, not a cause.
        return [str(c) for c in self.diagnoser.classes_ if c != NO_FAULT] \
            if self.diagnoser is not None else sorted({r.cause for r in self.rules})

    def score_windows(self, windows: Windows) -> np.ndarray:
        return self.detector.anomaly_score(
            detector_view(windows.X, len(self.metrics), self.config.detect.stats,
                          self.featurizer.stats))

    def event_builder(self) -> EventBuilder:
        return EventBuilder(self.event_rules, self.threshold, int(self.step.value),
                            top_windows=self.config.diagnose.max_event_windows)

    def payload(self, windows: Windows) -> np.ndarray:
        """What the event builder keeps per window for diagnosis: features, then last values."""
        return np.hstack([windows.X, windows.last])

    def to_event(self, raw: RawEvent, status: str = "resolved") -> Event:
        n_feat = len(self.featurizer.feature_names_)
        X, last = raw.payload[:, :n_feat], raw.payload[:, n_feat:]
        deviation = self.featurizer.deviation(X).mean(axis=0)
        k = self.config.detect.top_metrics
        top_idx = np.argsort(-deviation, kind="stable")[:k]
        top_metrics = [self.metrics[i] for i in top_idx]
        cause, conf, top, source = UNKNOWN, 0.0, [], "none"
        if self.diagnoser is not None:
            cause, conf, top = self.diagnoser.diagnose(X)
            source = "classifier"
        rule = apply_rules(self.rules, self.metrics, last)
        if rule is not None:
            cause, conf, source = rule.cause, 1.0, f"rule:{rule.name}"
            top = [(rule.cause, 1.0)] + [(c, p) for c, p in top if c != rule.cause][:2]
        start = pd.Timestamp(raw.start_ns, unit="ns", tz="UTC")
        return Event(entity=raw.entity, start=start,
                     end=pd.Timestamp(raw.end_ns, unit="ns", tz="UTC"),
                     score=raw.peak_score, cause=cause, confidence=conf, top_causes=top,
                     top_metrics=top_metrics, cause_source=source, status=status,
                     id=event_id(raw.entity, start, self.version),
                     top_z=[float(x) for x in deviation[top_idx]])


def data_digest(data: MetricData) -> str:
    """A digest of the training data: which rows and values the model saw."""
    h = hashlib.sha256()
    h.update(",".join(data.metrics).encode())
    h.update(pd.util.hash_pandas_object(data.frame, index=False).to_numpy().tobytes())
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- keys


def model_key(key_file: str | Path | None = None) -> bytes | None:
    """The signing key: the contents of ``key_file`` (surrounding whitespace stripped), else
    the environment variable ``FTML_MODEL_KEY``, else None (bundles are unsigned)."""
    if key_file is not None:
        try:
            key = Path(key_file).read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the key file: {exc.strerror or exc}",
                              source=str(key_file)) from None
        if not key:
            raise ConfigError("the key file is empty", source=str(key_file),
                              hint="write a long random secret into it")
        return key
    env = os.environ.get(KEY_ENV, "").strip()
    return env.encode() if env else None


def _canonical(manifest: dict[str, Any]) -> bytes:
    """The bytes the digest and HMAC cover: the manifest without them, as canonical JSON."""
    body = {k: v for k, v in manifest.items() if k not in _SEAL_KEYS}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _hmac(key: bytes, manifest: dict[str, Any]) -> str:
    return hmac.new(key, _canonical(manifest), hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------- saving


def save_model(model: Model, out_dir: str | Path, info: dict[str, Any],
               key: bytes | None = None, model_version: str | None = None) -> dict[str, Any]:
    """Write the bundle; returns the manifest. ``info``: training facts for the manifest.
    ``key`` (default :func:`model_key`'s environment variable) signs it; ``model_version``
    keeps an identity (a converted bundle's), else it is the digest of the files."""
    import sklearn

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = key if key is not None else model_key()
    state, arrays = _codec().encode(_model_state(model))
    members, index = _pack(arrays)
    files = {STATE_FILE: (json.dumps({"model": state, "arrays": index}, indent=1) +
                          "\n").encode(),
             ARRAYS_FILE: _npz_bytes(members)}
    digests = {name: hashlib.sha256(blob).hexdigest() for name, blob in files.items()}
    version = model_version or hashlib.sha256(
        "".join(f"{n}:{d};" for n, d in sorted(digests.items())).encode()).hexdigest()[:12]
    manifest = {
        "format_version": FORMAT_VERSION,
        "model_version": version,
        "files": digests,
        "versions": {"ftml": __version__, "scikit-learn": sklearn.__version__,
                     "numpy": np.__version__, "pandas": pd.__version__,
                     "python": platform.python_version()},
        "metrics": model.metrics,
        "counters": model.featurizer.counters_,
        "feature_schema": model.featurizer.feature_names_,
        "stats": list(model.featurizer.stats),  # what its features are (features.STAT_TABLE)
        "step_seconds": model.step.total_seconds(),
        "window": model.featurizer.window,
        "stride": model.featurizer.stride,
        "history_steps": model.featurizer.history_steps,  # steps a window's features read
        "causes": model.causes,
        "classifier": model.diagnoser.classifier if model.diagnoser is not None else None,
        "min_confidence": (model.diagnoser.min_confidence_ if model.diagnoser is not None
                           else None),
        "rules": [str(r) for r in model.rules],
        "threshold": model.threshold,
        "event_rules": vars(model.event_rules),
        "config": model.config.to_dict(),
        **info,
    }
    # Sealed as it reads back: what JSON makes of it (default=str for timestamps and the like).
    manifest = json.loads(json.dumps(manifest, default=str))
    manifest["digest"] = hashlib.sha256(_canonical(manifest)).hexdigest()
    manifest["signature"] = ({"scheme": HMAC_SCHEME, "hmac": _hmac(key, manifest)}
                             if key else UNSIGNED)
    for name, blob in files.items():
        write_bytes(out / name, blob)
    # The manifest last: until it is replaced, a reader sees the old bundle's digests, and a
    # bundle half-written by a crash is refused rather than loaded.
    write_text(out / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    model.version = manifest["model_version"]
    model.manifest = manifest
    return manifest


def _model_state(model: Model) -> Model:
    """The model without what a bundle does not hold (its version and manifest: the bundle's
    own manifest is that; a model without logs is stored as before logs existed)."""
    copy = Model.__new__(Model)
    copy.__dict__.update({k: v for k, v in vars(model).items()
                          if k not in ("version", "manifest") and not (k == "logs" and v is None)})
    return copy


def _pack(arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """Arrays of one plain dtype concatenated into one member each (a forest diagnoser has
    thousands of small arrays, and each npz member costs a header parse to read), with the
    index ``name -> [member, offset, shape]``. Structured arrays stay members of their own."""
    groups: dict[str, list[np.ndarray]] = {}
    index: dict[str, list] = {}
    members: dict[str, np.ndarray] = {}
    for name in sorted(arrays):
        arr = np.asarray(arrays[name])
        if arr.dtype.names is not None:
            member = f"s{len(members)}"
            members[member] = arr
            index[name] = [member, 0, list(arr.shape)]
            continue
        key = arr.dtype.str
        parts = groups.setdefault(key, [])
        index[name] = [key, sum(p.size for p in parts), list(arr.shape)]
        parts.append(arr.ravel())
    for n, (key, parts) in enumerate(groups.items()):
        member = f"p{n}"
        members[member] = np.concatenate(parts)
        for entry in index.values():
            if entry[0] == key:
                entry[0] = member
    return members, index


def _unpack(members: dict[str, np.ndarray], index: Any) -> dict[str, np.ndarray]:
    if not isinstance(index, dict):
        raise ValueError("the array index is not a mapping")
    out = {}
    for name, entry in index.items():
        member, offset, shape = entry
        flat = members[member]
        if flat.dtype.names is not None:
            out[name] = flat.reshape(shape)
            continue
        size = int(np.prod(shape, dtype=np.int64))
        if not (isinstance(offset, int) and 0 <= offset and offset + size <= flat.size):
            raise ValueError(f"array {name!r} lies outside its member")
        out[name] = flat[offset:offset + size].reshape(shape).copy()
    return out


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """``numpy.savez_compressed`` with fixed member dates, never pickling: the same arrays
    give the same bytes (so the same model has the same version)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arrays[name]), allow_pickle=False)
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


# --------------------------------------------------------------------------- loading


def read_manifest(model_dir: str | Path) -> dict[str, Any]:
    d = Path(model_dir)
    path = d / MANIFEST_FILE
    if not d.is_dir():
        raise ModelError("model directory not found", source=str(d),
                         hint="train one with 'ftml train --out DIR'")
    if not path.exists():
        raise ModelError("not a model bundle: no manifest.json", source=str(d),
                         hint="point --model at a directory written by 'ftml train'")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelError("manifest is not valid JSON", source=str(path),
                         hint="re-train the model") from None
    except OSError as exc:
        raise ModelError(f"cannot read the manifest: {exc.strerror or exc}",
                         source=str(path)) from None
    if not isinstance(manifest, dict):
        raise ModelError("manifest is not a JSON object", source=str(path), hint="re-train")
    return manifest


_warned_unchecked: set[str] = set()


def load_model(model_dir: str | Path, key: bytes | None = None) -> Model:
    """Verify, then rebuild the model from data. Refuses an unknown or pickled (old) format,
    a manifest whose digest (or, given ``key`` -- default :func:`model_key`'s environment
    variable -- HMAC) does not match, and files whose sha256 differs from the manifest's."""
    d = Path(model_dir)
    manifest = read_manifest(d)
    where = str(d / MANIFEST_FILE)
    version = manifest.get("format_version")
    if version in LEGACY_VERSIONS:
        raise ModelError(f"bundle format {version} is a pickle ({LEGACY_FILE}), which this "
                         "ftml does not load: unpickling can run code", source=str(d),
                         hint="re-train with 'ftml train ... --out DIR', or, if you trust "
                              "the bundle, convert it once with 'ftml model convert DIR'")
    if version != FORMAT_VERSION:
        raise ModelError(f"bundle format version {version!r} is not supported (this ftml "
                         f"reads {FORMAT_VERSION})", source=where,
                         hint="re-train the model with this ftml")
    if not hmac.compare_digest(str(manifest.get("digest", "")),
                               hashlib.sha256(_canonical(manifest)).hexdigest()):
        raise ModelError("manifest.json does not match its digest; refusing the bundle",
                         source=where, hint="the file was changed or damaged: re-train")
    key = key if key is not None else model_key()
    signature = manifest.get("signature")
    signed = isinstance(signature, dict) and signature.get("scheme") == HMAC_SCHEME
    if key is not None:
        if not signed:
            raise ModelError("the bundle is unsigned but a key was given; refusing it",
                             source=where, hint="re-train with 'ftml train --sign-key-file'")
        if not hmac.compare_digest(str(signature.get("hmac", "")), _hmac(key, manifest)):
            raise ModelError("the bundle's HMAC does not match the key; refusing it",
                             source=where, hint="it was changed or signed with another key: "
                                                "re-train, or give the key it was signed with")
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != set(BUNDLE_FILES):
        raise ModelError("manifest does not list the bundle's files", source=where,
                         hint="re-train the model")
    blobs = {}
    for name in BUNDLE_FILES:
        path = d / name
        try:
            blob = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read {name}: {exc.strerror or exc}", source=str(path),
                             hint="re-train or restore the bundle") from None
        if not hmac.compare_digest(hashlib.sha256(blob).hexdigest(), str(files[name])):
            raise ModelError(f"{name} does not match the sha256 in manifest.json; refusing "
                             "the bundle", source=str(path),
                             hint="the file was changed or damaged: re-train or restore it")
        blobs[name] = blob
    model = _rebuild(blobs, d)
    model.version = str(manifest["model_version"])
    model.manifest = manifest
    _note_other_sklearn(model, manifest, d)
    if key is None and str(d) not in _warned_unchecked:
        _warned_unchecked.add(str(d))
        if signed:
            log.warning("ftml: note: %s: model bundle is signed but no key was given, so its "
                        "HMAC is not checked (pass --sign-key-file or set %s)", d, KEY_ENV)
        else:
            log.warning("ftml: note: %s: model bundle is unsigned, so its authenticity is not "
                        "checked (sign it with 'ftml train --sign-key-file' and load it with "
                        "the same key)", d)
    return model


def _note_other_sklearn(model: Model, manifest: dict[str, Any], d: Path) -> None:
    """The forest is stored in ftml's own layout, but the diagnoser is scikit-learn's objects
    with their attributes as that version had them: say so when this version differs."""
    if model.diagnoser is None:
        return  # nothing of scikit-learn's: no need to import it
    import sklearn

    trained = (manifest.get("versions") or {}).get("scikit-learn")
    if trained != sklearn.__version__:
        log.warning("ftml: note: %s: the diagnoser was trained with scikit-learn %s, this is "
                    "%s; re-train if its diagnoses fail or look wrong", d, trained,
                    sklearn.__version__)


def _rebuild(blobs: dict[str, bytes], d: Path) -> Model:
    from ftml.codec import CodecError

    try:
        state = json.loads(blobs[STATE_FILE])
        with np.load(io.BytesIO(blobs[ARRAYS_FILE]), allow_pickle=False) as z:
            members = {name: z[name] for name in z.files}
        codec = _codec(with_sklearn=_needs_sklearn(blobs[STATE_FILE]))
        model = codec.decode(state["model"], _unpack(members, state["arrays"]))
    except (CodecError, ValueError, TypeError, KeyError, IndexError, AttributeError, OSError,
            zipfile.BadZipFile, UnicodeDecodeError, RecursionError) as exc:
        raise ModelError(f"the bundle's data does not rebuild a model: {_first_line(exc)}",
                         source=str(d), hint="re-train the model") from None
    problem = _model_problem(model)
    if problem:
        raise ModelError(f"the bundle's data does not rebuild a model: {problem}",
                         source=str(d), hint="re-train the model")
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _model_problem(model: Any) -> str | None:
    """What is wrong with the types of a decoded model's parts, or None."""
    if not isinstance(model, Model):
        return "its root is not a model"
    want = {"featurizer": Featurizer, "detector": ForestScorer, "event_rules": EventRules,
            "config": Config, "threshold": float}
    for name, kind in want.items():
        if not isinstance(getattr(model, name, None), kind):
            return f"{name} is not a {kind.__name__}"
    if model.diagnoser is not None and not isinstance(model.diagnoser, _diagnoser_class()):
        return "diagnoser is not a Diagnoser"
    if not isinstance(model.rules, list) or not all(isinstance(r, Rule) for r in model.rules):
        return "rules are not a list of rules"
    return _logs_problem(getattr(model, "logs", None))


def _logs_problem(logs: Any) -> str | None:
    from ftml.logs import LogModel, Templates

    if logs is None:
        return None
    if not isinstance(logs, LogModel) or not isinstance(logs.templates, Templates):
        return "logs are not a log model"
    try:
        _ = logs.templates.drain  # the tree rebuilds from its JSON, or the bundle is bad
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        return f"its log templates do not rebuild: {exc}"
    return None


# --------------------------------------------------------------------------- the codec


def _diagnoser_class() -> type:
    from ftml.diagnose import Diagnoser

    return Diagnoser


def _needs_sklearn(state_json: bytes) -> bool:
    """Whether a bundle's model data holds scikit-learn objects (a diagnoser): one without them
    decodes without importing scikit-learn (seconds of a short scoring run)."""
    return (b'"sklearn.' in state_json or b'"ftml.diagnose.Diagnoser"' in state_json
            or b'"__tree__"' in state_json)


#: A fitted detector and a loaded one are stored under this one name; it decodes as the
#: ForestScorer, all that scoring needs.
_DETECTOR_NAME = "ftml.detect.IsolationDetector"


def _codec(with_sklearn: bool = True):
    """The classes a bundle may hold, and the checks their decoded arrays must pass.

    A detector decodes as a :class:`~ftml.detect.ForestScorer` (its forest the node arrays
    ftml.fast walks). ``with_sklearn=False``: ftml's classes alone, for data that holds no
    scikit-learn object (:func:`_needs_sklearn`); decoding one is then refused."""
    from ftml import config as cfg
    from ftml.codec import Codec
    from ftml.fast import FastForest
    from ftml.features import Baseline
    from ftml.logs import LogModel, Templates

    classes = [Model, Featurizer, Baseline, FastForest, EventRules, Rule, cfg.Config,
               cfg.ReadConfig, cfg.FeatureConfig, cfg.DetectConfig, cfg.DiagnoseConfig,
               cfg.LogConfig, LogModel, Templates]
    state_of: dict[type, Callable] = {ForestScorer: _detector_state}
    check: dict[type, Callable] = {FastForest: _check_fast_forest}
    tree_type = None
    if with_sklearn:
        from sklearn.calibration import (
            CalibratedClassifierCV,
            _CalibratedClassifier,
            _SigmoidCalibration,
        )
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.model_selection import KFold, StratifiedKFold
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVC
        from sklearn.tree import DecisionTreeClassifier
        from sklearn.tree._tree import Tree

        from ftml.detect import IsolationDetector

        classes += [_diagnoser_class(), DecisionTreeClassifier, RandomForestClassifier,
                    Pipeline, StandardScaler, CalibratedClassifierCV, _CalibratedClassifier,
                    _SigmoidCalibration, SVC, KFold, StratifiedKFold]
        state_of[IsolationDetector] = _detector_state
        check[SVC] = _check_svc
        tree_type = Tree
    table = {f"{c.__module__}.{c.__qualname__}": c for c in classes}
    table[_DETECTOR_NAME] = ForestScorer
    codec = Codec(table, state_of=state_of, check=check, tree_type=tree_type)
    for kind in state_of:  # a fitted and a loaded detector are stored alike
        codec.names[kind] = _DETECTOR_NAME
    return codec


def _detector_state(detector: ForestScorer) -> dict:
    """The detector with its forest as the node arrays :mod:`ftml.fast` scores from (the
    scikit-learn forest itself is not needed to score)."""
    from ftml.fast import FastForest

    state = dict(detector.__getstate__())
    state.pop("_sklearn_version", None)
    fast = detector._scorer()
    if not isinstance(fast, FastForest):
        raise TypeError("the detector's forest did not compile (ftml.fast unavailable)")
    state["forest_"] = fast
    return state


def _check_fast_forest(forest) -> None:
    from ftml.fast import _LAYOUT

    if forest.__dict__.get("_layout") != _LAYOUT:
        raise ValueError("forest arrays of another layout")
    for name in ("_block_rows", "_group_trees"):
        value = forest.__dict__.get(name)
        if not isinstance(value, int) or not 1 <= value <= 1 << 20:
            raise ValueError(f"{name} out of range")
    forest._check_arrays()


def _check_svc(svc) -> None:
    """libsvm reads the support vectors and coefficients by the counts given, unchecked. (An
    unfitted SVC, a calibrator's template, has none: scikit-learn refuses to predict with it.)"""
    if "support_vectors_" not in svc.__dict__ and "_n_support" not in svc.__dict__:
        return
    sv = np.asarray(svc.support_vectors_)
    n_sv = sv.shape[0]
    n_support = np.asarray(svc._n_support)
    n_class = len(n_support)
    ok = (sv.ndim == 2 and sv.dtype == np.float64 and n_support.sum() == n_sv
          and (n_support >= 0).all() and len(svc.classes_) == n_class
          and np.asarray(svc.support_).shape == (n_sv,)
          and np.asarray(svc._dual_coef_).shape == (n_class - 1, n_sv)
          and np.asarray(svc._intercept_).shape == (n_class * (n_class - 1) // 2,)
          and np.asarray(svc._probA).size in (0, n_class * (n_class - 1) // 2)
          and np.asarray(svc._probB).size == np.asarray(svc._probA).size
          and sv.shape[1] == svc.n_features_in_ and svc.shape_fit_[1] == sv.shape[1])
    if not ok:
        raise ValueError("support vectors and coefficients of inconsistent shapes")


# --------------------------------------------------------------------------- old bundles


def convert_legacy(model_dir: str | Path, key: bytes | None = None,
                   before_unpickle: Callable[[], None] | None = None) -> dict[str, Any]:
    """Rewrite a format 1 / 2 bundle (``model.joblib``) in this format, in place; returns
    the new manifest. This UNPICKLES ``model.joblib`` (after checking its sha256 against the
    manifest; ``before_unpickle`` is called just before, e.g. to warn): only for a bundle you
    trust. The model keeps its version (event ids, watch
    checkpoints); ``model.joblib`` is removed once the new manifest is in place."""
    import joblib

    d = Path(model_dir)
    manifest = read_manifest(d)
    version = manifest.get("format_version")
    where = str(d / MANIFEST_FILE)
    if version not in LEGACY_VERSIONS:
        raise ModelError(f"bundle format {version!r} is not an old pickle bundle "
                         f"({', '.join(map(str, LEGACY_VERSIONS))})", source=where,
                         hint="nothing to convert" if version == FORMAT_VERSION else
                              "re-train the model")
    path = d / LEGACY_FILE
    if not path.exists():
        raise ModelError(f"{LEGACY_FILE} is missing", source=str(d), hint="re-train the model")
    if sha256_file(path) != manifest.get("sha256"):
        raise ModelError(f"{LEGACY_FILE} does not match the sha256 in manifest.json; refusing "
                         "to unpickle it", source=str(path),
                         hint="the file was changed or damaged: re-train")
    if before_unpickle is not None:
        before_unpickle()
    model = joblib.load(path)  # the user asked for this, warned; the checksum matched
    if not isinstance(model, Model):
        raise ModelError(f"{LEGACY_FILE} holds no ftml model", source=str(path),
                         hint="re-train")
    info = {k: v for k, v in manifest.items() if k in ("training", "calibration", "diagnosis")}
    info["converted_from"] = {"format_version": version, "sha256": manifest.get("sha256"),
                              "ftml": (manifest.get("versions") or {}).get("ftml")}
    new = save_model(model, d, info, key=key, model_version=str(manifest["model_version"]))
    path.unlink()
    return new


# --------------------------------------------------------------------------- fit to the data


def misfit_warning(model: Model, flagged: int | None, windows: int) -> str | None:
    """A line saying the model does not fit the data when it flags far more of its windows
    (``MISFIT_RATIO`` times) than it did on its own calibration slice; None if it fits or
    the model (an older bundle) did not record that share."""
    calibrated = model.manifest.get("calibration", {}).get("flagged_fraction")
    if calibrated is None or flagged is None or windows <= 0:
        return None
    share = flagged / windows
    if share <= MISFIT_RATIO * max(float(calibrated), MISFIT_FLOOR):
        return None
    return (f"{share:.0%} of windows flagged, {share / max(calibrated, MISFIT_FLOOR):.0f}x the "
            f"{calibrated:.1%} the model flagged on its calibration slice: the model does not "
            "fit this data (other entities, or another scale than in training), and its events "
            "say little; train on history of these entities")
