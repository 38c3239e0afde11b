"""Shared fixtures: small synthetic metric frames and a writer for them in every file format.

The writer uses pandas directly, not ``ftml.io``, so that reader tests do not trust the code
they test.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(autouse=True)
def _no_note_said_yet():
    """The readers' notes are said once per process (ftml.io.contract.note_once): each test
    starts with none said, so that what it reads is said to it whatever ran before."""
    from ftml.io import contract

    contract._said.clear()
    yield

START = "2026-01-05T00:00:00Z"
ISO_SECONDS = "%Y-%m-%dT%H:%M:%SZ"


def _make_wide_frame(entities: Sequence[str] = ("web-1", "web-2"), periods: int = 30,
                     step: str = "60s", start: str = START, seed: int = 0,
                     metrics: Sequence[str] = ("cpu", "latency_ms")) -> pd.DataFrame:
    """Wide layout, regular step, no gaps: columns timestamp (UTC), entity, one per metric."""
    rng = np.random.default_rng(seed)
    times = pd.date_range(start, periods=periods, freq=pd.Timedelta(step))
    parts = []
    for i, entity in enumerate(entities):
        part = pd.DataFrame({"timestamp": times, "entity": entity})
        for j, metric in enumerate(metrics):
            # Distinct levels per entity and metric, rounded so text formats keep them exact.
            part[metric] = np.round(10.0 * (i + 1) + j + rng.normal(0, 1, periods), 3)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _to_long(wide: pd.DataFrame) -> pd.DataFrame:
    """Wide -> long layout: timestamp, entity, metric, value."""
    ids = [c for c in ("timestamp", "entity") if c in wide.columns]
    return wide.melt(id_vars=ids, var_name="metric", value_name="value")


def _write_metrics(frame: pd.DataFrame, path: Path, layout: str = "wide") -> Path:
    """Write ``frame`` (wide) at ``path`` in the format its suffix names, in ``layout``
    ('wide' or 'long'); datetimes become ISO 8601 UTC text in CSV and JSON Lines."""
    path = Path(path)
    table = _to_long(frame) if layout == "long" else frame
    name = path.name.lower()
    if name.endswith(".parquet"):
        table.to_parquet(path, index=False)
        return path
    text_table = table.copy()
    for col in text_table.columns:
        if isinstance(text_table[col].dtype, pd.DatetimeTZDtype):
            text_table[col] = text_table[col].dt.strftime(ISO_SECONDS)
    if ".csv" in name:
        data = text_table.to_csv(index=False).encode()
    elif ".jsonl" in name:
        data = text_table.to_json(orient="records", lines=True).encode()
    else:
        raise ValueError(f"no writer for {path}")
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


@pytest.fixture
def make_wide_frame() -> Callable[..., pd.DataFrame]:
    """Factory of small wide metric frames (2 entities x 30 one-minute steps by default)."""
    return _make_wide_frame


@pytest.fixture
def write_metrics() -> Callable[..., Path]:
    """Writer of a wide frame to .csv[.gz], .jsonl[.gz] or .parquet, wide or long layout."""
    return _write_metrics


# --------------------------------------------------------------------------- scheduling

# The files that take longest (per-file sums of --junitxml times, 2 cores), slowest first.
# With `-n 2 --dist loadfile` a file is one unit of work, and xdist by default hands out the
# files with the most tests first: test_watch_prometheus.py (3 tests, 2 minutes of a real
# Prometheus and Alertmanager in real time) came last, and the other worker sat idle for most
# of it. Started first, the long files run side by side and the many short ones fill in
# behind them. Files not named keep their order (by name); a stale list only costs balance.
SLOWEST_FILES = ("test_watch_prometheus.py", "test_watch.py", "test_level_carry.py",
                 "test_distributed.py", "test_bundle.py", "test_diagnose.py", "test_checks.py",
                 "test_record.py", "test_simulate.py", "test_detect_builder.py",
                 "test_notebook.py")


def pytest_configure(config: pytest.Config) -> None:
    # xdist's reordering by number of tests would undo the order below (it runs on the
    # controller, which collects nothing of its own).
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    # Stable: the tests of a file keep their order (test_distributed's kill test comes last).
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
