"""The trained model and its bundle on disk: ``model.joblib`` + ``manifest.json``.

A bundle is loaded only after the sha256 of ``model.joblib`` matches the manifest: unpickling
runs code, so a changed file is refused before it is read.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import joblib
import numpy as np
import pandas as pd
import sklearn

from ftml import __version__
from ftml.config import Config
from ftml.detect import EventBuilder, EventRules, IsolationDetector, RawEvent
from ftml.diagnose import NO_FAULT, UNKNOWN, Diagnoser, Rule, apply_rules
from ftml.errors import ModelError
from ftml.events import Event, event_id
from ftml.features import Featurizer, Windows, detector_view
from ftml.io import MetricData, write_bytes, write_text

# 2: the featurizer may take each metric's trailing level off (FeatureConfig.level_window); an
# older ftml must refuse such a bundle. A version-1 bundle reads as before (no levels).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MODEL_FILE = "model.joblib"
MANIFEST_FILE = "manifest.json"


@dataclass
class Model:
    """Everything scoring needs: featurizer, detector, threshold, event rules, diagnoser, rules."""

    featurizer: Featurizer
    detector: IsolationDetector
    threshold: float
    event_rules: EventRules
    diagnoser: Diagnoser | None
    rules: list[Rule]
    config: Config
    version: str = "unsaved"
    manifest: dict[str, Any] = field(default_factory=dict)
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
        return self.detector.score_samples(
            detector_view(windows.X, len(self.metrics), self.config.detect.stats))

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
        top_metrics = [self.metrics[i] for i in np.argsort(-deviation, kind="stable")[:k]]
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
                     id=event_id(raw.entity, start, self.version))


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


def save_model(model: Model, out_dir: str | Path, info: dict[str, Any]) -> dict[str, Any]:
    """Write the bundle; returns the manifest. ``info``: training facts for the manifest."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    import io as _io

    buf = _io.BytesIO()
    model.version = "pending"
    model.manifest = {}
    joblib.dump(model, buf, compress=3)
    blob = buf.getvalue()
    digest = hashlib.sha256(blob).hexdigest()
    manifest = {
        "format_version": FORMAT_VERSION,
        "model_version": digest[:12],
        "sha256": digest,
        "versions": {"ftml": __version__, "scikit-learn": sklearn.__version__,
                     "numpy": np.__version__, "pandas": pd.__version__,
                     "python": platform.python_version()},
        "metrics": model.metrics,
        "counters": model.featurizer.counters_,
        "feature_schema": model.featurizer.feature_names_,
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
    write_bytes(out / MODEL_FILE, blob)
    write_text(out / MANIFEST_FILE, json.dumps(manifest, indent=2, default=str) + "\n")
    model.version = manifest["model_version"]
    model.manifest = manifest
    return manifest


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
    if not isinstance(manifest, dict):
        raise ModelError("manifest is not a JSON object", source=str(path), hint="re-train")
    return manifest


def load_model(model_dir: str | Path) -> Model:
    """Verify, then load. Refuses an unknown format version or a changed model file."""
    d = Path(model_dir)
    manifest = read_manifest(d)
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ModelError(f"bundle format version {version!r} is not supported (this ftml "
                         f"reads {', '.join(map(str, READABLE_VERSIONS))})",
                         source=str(d / MANIFEST_FILE),
                         hint="re-train the model with this ftml")
    path = d / MODEL_FILE
    if not path.exists():
        raise ModelError("model.joblib is missing", source=str(d), hint="re-train the model")
    if sha256_file(path) != manifest.get("sha256"):
        raise ModelError("model.joblib does not match the sha256 in manifest.json; refusing "
                         "to load it", source=str(path),
                         hint="the file was changed or corrupted: re-train or restore it")
    model = joblib.load(path)  # safe: the checksum above matched
    if not isinstance(model, Model):
        raise ModelError("model.joblib holds no ftml model", source=str(path), hint="re-train")
    model.version = manifest["model_version"]
    model.manifest = manifest
    return model
