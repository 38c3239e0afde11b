"""Helpers shared by the benchmarks: where the data is, result rows, and one train -> evaluate
experiment through ftml's public API.

A benchmark module ``bench/bench_<name>.py`` exposes ``run() -> list[dict]`` (it may accept
``quick``), each row ``{name, ftml, anchor, ratio, unit}`` plus optional extra columns; it
raises :class:`SkipBench` when it cannot run here (e.g. the real data is absent).
"""

from __future__ import annotations

import math
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


class SkipBench(Exception):  # noqa: N818 - it is a signal, not an error
    """Raised by a benchmark that cannot run here; the message says why."""


def data_dir() -> Path:
    """The real data sets: ``$FTML_DATA``, else ``../shared/data`` beside the repository."""
    env = os.environ.get("FTML_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def require_data(*folders: str) -> Path:
    root = data_dir()
    if not root.is_dir():
        raise SkipBench(f"real data not found at {root} (set FTML_DATA to its folder)")
    missing = [f for f in folders if not (root / f).is_dir()]
    if missing:
        raise SkipBench(f"{root} has no {', '.join(missing)}")
    return root


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def row(name: str, ftml: Any, anchor: Any = None, unit: str = "", **extra: Any) -> dict:
    """A result row; ``ratio`` = ftml / anchor when both are numbers."""
    ratio = ftml / anchor if _number(ftml) and _number(anchor) and anchor else None
    return {"name": name, "ftml": ftml, "anchor": anchor, "ratio": ratio, "unit": unit, **extra}


def fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}" if abs(x) < 1000 else f"{x:.0f}"
    return str(x)


def git_commit() -> str:
    """Short commit of the repository, with '+dirty' when the tree has changes."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, text=True,
                             capture_output=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, text=True, capture_output=True, timeout=10).stdout
        return sha + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# --------------------------------------------------------------------------- one experiment


@dataclass
class Outcome:
    """What one train -> evaluate experiment gave."""

    evaluation: Any  # ftml.evaluate.Evaluation
    train_seconds: float
    evaluate_seconds: float

    @property
    def report(self) -> dict[str, Any]:
        return self.evaluation.report


def run_split(split, workdir: Path, baselines: bool = True) -> Outcome:
    """Write a :class:`bench.datasets.Split` as files, train on its training part and evaluate
    on its test part, all through ftml's public API (``api.train``, ``evaluate``)."""
    from ftml import api
    from ftml.config import Config
    from ftml.evaluate import evaluate
    from ftml.io import write_table

    d = workdir / "".join(c if c.isalnum() else "_" for c in split.name)
    d.mkdir(parents=True, exist_ok=True)
    train, test = d / "train.parquet", d / "test.parquet"
    write_table(split.train, train)
    write_table(split.test, test)
    tr_inc = None
    if len(split.train_incidents):
        tr_inc = d / "train_incidents.csv"
        write_table(split.train_incidents, tr_inc)
    te_inc = d / "test_incidents.csv"
    write_table(split.test_incidents, te_inc)
    config = Config.from_dict(split.config, source=split.name)
    t0 = time.perf_counter()
    api.train([train], d / "model", incidents=tr_inc, config=config)
    t1 = time.perf_counter()
    ev = evaluate(d / "model", [test], te_inc, baselines=baselines,
                  calibration_metrics=[train], calibration_incidents=tr_inc)
    return Outcome(ev, round(t1 - t0, 2), round(time.perf_counter() - t1, 2))


def majority_accuracy(train_causes, test_causes) -> float | None:
    """Accuracy of always naming the most frequent training cause: the floor a diagnosis must
    clear."""
    train_causes, test_causes = list(train_causes), list(test_causes)
    if not train_causes or not test_causes:
        return None
    top = max(sorted(set(train_causes)), key=train_causes.count)
    return sum(c == top for c in test_causes) / len(test_causes)
