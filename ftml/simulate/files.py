"""Simulated fleets written to files: metrics, incidents, logs, and the train/test split.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pandas as pd

from ftml.errors import ConfigError
from ftml.io import write_table, write_text
from ftml.simulate.catalog import CAUSES, FORMATS
from ftml.simulate.fleet import _check_args, simulate_fleet
from ftml.simulate.logs import simulate_logs


def write_simulation(out_dir: str | Path, *, format: str = "csv", logs: bool = False,
                     **kwargs) -> dict:
    """Simulate (``kwargs`` go to :func:`simulate_fleet`) and write ``out_dir/metrics.<format>``
    and ``out_dir/incidents.csv``; with ``logs`` also ``out_dir/logs/<entity>.log``
    (:func:`simulate_logs`). Returns a summary for the user."""
    if format not in FORMATS:
        raise ConfigError(f"unknown format {format!r}", hint=f"use one of: {', '.join(FORMATS)}")
    args = inspect.signature(simulate_fleet).bind(**kwargs)  # TypeError on unknown arguments
    args.apply_defaults()
    if logs:
        metrics, incidents, texts = simulate_logs(**args.arguments)
    else:
        metrics, incidents = simulate_fleet(**args.arguments)
    out = Path(out_dir)
    metrics_path, incidents_path = out / f"metrics.{format}", out / "incidents.csv"
    write_table(metrics, metrics_path)
    write_table(incidents, incidents_path)
    counts = incidents["cause"].value_counts()
    summary = {
        "metrics_path": str(metrics_path),
        "incidents_path": str(incidents_path),
        "format": format,
        "rows": len(metrics),
        "entities": int(metrics["entity"].nunique()),
        "days": float(args.arguments["days"]),
        "step": str(args.arguments["step"]),
        "seed": args.arguments["seed"],
        "world": args.arguments["world"],
        "incidents": len(incidents),
        "incidents_per_cause": {c: int(counts.get(c, 0)) for c in CAUSES},
    }
    if logs:
        for name, text in texts.items():
            write_text(out / "logs" / f"{name}.log", text)
        summary["logs_dir"] = str(out / "logs")
        summary["log_lines"] = sum(_record_count(t) for t in texts.values())
    return summary


def _record_count(text: str) -> int:
    """Log records in a simulated log text (a traceback's lines belong to their record)."""
    return text.count("\n") - text.count("\nTraceback") - 2 * text.count('\n  File "')


#: Added to ``seed`` for the test period of a split: its faults and noise are not training's.
TEST_SEED_OFFSET = 1000


def write_split_simulation(out_dir: str | Path, *, test_days: float, format: str = "csv",
                           days: float = 7, seed: int = 0, start: str = "2026-01-05T00:00:00Z",
                           **kwargs) -> dict:
    """One fleet, two periods: ``out_dir/train/`` holds ``days`` to train on and
    ``out_dir/test/`` the ``test_days`` right after, of the same entities, with faults and
    noise of another seed (never seen in training): what scoring a later week looks like.
    Returns both summaries."""
    if not test_days > 0:
        raise ConfigError(f"test days must be positive, got {test_days!r}")
    out = Path(out_dir)
    train = write_simulation(out / "train", format=format, days=days, seed=seed, start=start,
                             **kwargs)
    test_start = _check_args(1, days, kwargs.get("step", "60s"), start, 0.0)[1] \
        + pd.Timedelta(days=days)
    test = write_simulation(out / "test", format=format, days=test_days,
                            seed=seed + TEST_SEED_OFFSET, fleet_seed=seed,
                            start=test_start.isoformat(), **kwargs)
    return {"train": train, "test": test}
