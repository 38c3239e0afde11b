"""The metric screen: metrics that cannot help are left out of training with one warning line,
and the model remembers them."""

from __future__ import annotations

import copy
from collections.abc import Collection

from ftml.config import Config, ReadConfig
from ftml.errors import InputError
from ftml.features import (
    metric_presence,
    metrics_to_drop,
)
from ftml.io import MetricData


def screen_metrics(data: MetricData, read: ReadConfig, window: int,
                   keep_constant: Collection[str] = ()) -> MetricData:
    """``data`` without the metrics that cannot help (:func:`ftml.features.metrics_to_drop`):
    empty, constant, almost always missing, or with gaps that cost one entity many of its
    ``window``-step windows. They join ``data.dropped`` (text columns the reader left out are
    there already). ``keep_constant``: metrics kept even when constant in training, because
    they are so by construction and any other value later is news (``log:unseen``, the lines
    of templates training never saw, is 0 throughout training)."""
    codes, names = data.entity_codes()
    return without_metrics(data, metrics_to_screen(
        [metric_presence(data.values(), codes, names, window)], data.metrics, read,
        keep_constant))


def metrics_to_screen(presences: list, metrics: list[str], read: ReadConfig,
                      keep_constant: Collection[str] = ()) -> dict[str, str]:
    """Metric -> why it is left out, from the presence counts of one or more disjoint sets of
    entities (Dask training's groups): the one rule of :func:`screen_metrics`."""
    drop = metrics_to_drop(presences, metrics, read.drop_missing_fraction,
                           read.drop_gappy_fraction)
    keep = set(keep_constant)
    return {m: why for m, why in drop.items() if not (m in keep and why == "constant")}


def without_metrics(data: MetricData, drop: dict[str, str]) -> MetricData:
    dropped = {**data.dropped, **drop}
    keep = [m for m in data.metrics if m not in drop]
    require_metrics(keep, dropped, data.sources[0] if len(data.sources) == 1 else "metrics")
    frame = data.frame.drop(columns=list(drop)) if drop else data.frame
    return MetricData(frame, data.step, keep, data.sources, dropped)


def require_metrics(usable: list[str], dropped: dict[str, str], source: str) -> None:
    if not usable:
        raise InputError(f"no metric can be used: {dropped_text(dropped)}", source=source,
                         hint="give metrics that vary and are mostly present")


def dropped_text(dropped: dict[str, str]) -> str:
    return ", ".join(f"{m} ({why})" for m, why in dropped.items())


def dropped_warning(dropped: dict[str, str]) -> str | None:
    """The one stderr line for metrics training left out (None: none)."""
    if not dropped:
        return None
    n = len(dropped)
    return f"left out {n} metric{'s' if n > 1 else ''} that cannot help: {dropped_text(dropped)}"


def remember_dropped(config: Config, dropped: dict[str, str]) -> Config:
    """The config a model keeps: the user's, with the dropped metrics excluded from reading,
    so that scoring, evaluation and watch ignore them where present and need them nowhere."""
    if not dropped:
        return config
    out = copy.deepcopy(config)
    out.read.exclude = list(out.read.exclude) + [m for m in dropped if m not in out.read.exclude]
    return out

