"""The training screen of metrics: per metric, what its readings and gaps cost
(:func:`metric_presence`, combinable over groups of entities) and which metrics cannot help
(:func:`metrics_to_drop`)."""

from __future__ import annotations

import numpy as np


def metric_presence(values: np.ndarray, segments: np.ndarray, names: list[str],
                    window: int) -> dict[str, np.ndarray]:
    """Per metric, what the training screen of metrics (:func:`metrics_to_drop`) needs of
    some rows (``segments``: each row's entity, an index into ``names``; an entity's rows
    together): observed rows (rows with any reading), readings, lowest and highest value, and
    the largest share of one entity's windows that the metric's gaps leave incomplete (and
    that entity). Only windows of ``window`` rows that all have some reading count, so the
    steps between runs cost no metric anything. Counts of separate groups of entities
    combine (Dask training screens the whole fleet)."""
    n, m = values.shape
    w = int(window)
    present = np.isfinite(values)
    observed = present.any(axis=1)
    worst = np.zeros(m)
    worst_entity = np.full(m, "", dtype=object)
    if n >= w:
        end = np.arange(w - 1, n, dtype=np.int64)
        seen = np.r_[0, np.cumsum(observed)]
        whole = seen[end + 1] - seen[end + 1 - w] == w  # every row with some reading
        end = end[(segments[end] == segments[end + 1 - w]) & whole]
        n_ent = int(segments.max()) + 1
        windows = np.bincount(segments[end], minlength=n_ent)
        lost = np.zeros((n_ent, m))
        for j in range(m):  # a loop over metrics, vectorized over rows
            gaps = np.r_[0, np.cumsum(~present[:, j])]
            hit = gaps[end + 1] - gaps[end + 1 - w] > 0
            lost[:, j] = np.bincount(segments[end[hit]], minlength=n_ent)
        share = lost / np.maximum(windows, 1)[:, None]
        at = share.argmax(axis=0)
        worst = share[at, np.arange(m)]
        worst_entity = np.asarray(names, dtype=object)[at]
    return {"observed": np.int64(observed.sum()), "present": present.sum(axis=0),
            "worst_share": worst, "worst_entity": worst_entity,
            "low": np.fmin.reduce(values, axis=0) if n else np.full(m, np.nan),
            "high": np.fmax.reduce(values, axis=0) if n else np.full(m, np.nan)}


def metrics_to_drop(counts: list[dict[str, np.ndarray]], metrics: list[str],
                    missing_fraction: float, gappy_fraction: float) -> dict[str, str]:
    """Metrics that cannot help, over all the given :func:`metric_presence`, and why: no
    reading at all ("empty"), one value everywhere ("constant"), missing in at least
    ``missing_fraction`` of the observed rows, or with gaps that leave more than
    ``gappy_fraction`` of one entity's windows incomplete (a window needs every metric: such
    a metric would cost that entity those windows of every metric, so it costs the fleet its
    own features instead)."""
    observed = sum(int(c["observed"]) for c in counts)
    present = sum(c["present"] for c in counts)
    low = np.fmin.reduce(np.array([c["low"] for c in counts]), axis=0)
    high = np.fmax.reduce(np.array([c["high"] for c in counts]), axis=0)
    shares = np.array([c["worst_share"] for c in counts])
    worst_part = shares.argmax(axis=0)
    out: dict[str, str] = {}
    for j, name in enumerate(metrics):  # a loop over metrics, not rows
        missing = 1.0 - present[j] / max(observed, 1)
        share = shares[worst_part[j], j]
        if present[j] == 0:
            out[name] = "empty"
        elif low[j] == high[j]:
            out[name] = "constant"
        elif missing >= missing_fraction:
            out[name] = f"missing in {missing:.1%} of rows"
        elif share > gappy_fraction:
            entity = counts[worst_part[j]]["worst_entity"][j]
            out[name] = f"its gaps cost {share:.0%} of {entity}'s windows"
    return out
