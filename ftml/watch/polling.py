"""Reading the sources: each polled in turn, a failing one retried with backoff and never
stopping the others; their rows conformed to the model's metrics."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ftml.errors import FtmlError
from ftml.io import to_ns
from ftml.sources import SourceError

log = logging.getLogger("ftml.watch")  # one logger for the whole loop: what users filter on


class PollingMixin:
    """Sources -> plain arrays of rows (a part of :class:`Watcher`)."""

    def _poll(self, now: float) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        frames = []
        for src in self.sources:
            name = src.name
            if now < self._src_next[name] or src.exhausted:
                continue
            try:
                frame = src.poll(now)
            except Exception as exc:  # a failing source never stops the others
                n = self._src_failures[name] = self._src_failures[name] + 1
                wait = min(self.config.backoff_max, self.config.backoff_initial * 2 ** (n - 1))
                self._src_next[name] = now + wait
                self.metrics.errors.labels("source", name).inc()
                self.metrics.source_up.labels(name).set(0)
                expected = isinstance(exc, (SourceError, OSError, FtmlError))
                log.log(logging.WARNING if expected else logging.ERROR,
                        "source %s failed (%s); retry in %.0fs", name, exc, wait,
                        exc_info=not expected)
                continue
            if self._src_failures[name]:
                log.info("source %s: reading again", name)
            self._src_failures[name] = 0
            self.metrics.source_up.labels(name).set(1)
            skipped = int(getattr(src, "skipped", 0))
            if skipped > self._src_skipped[name]:
                self.metrics.skipped.labels(name).inc(skipped - self._src_skipped[name])
                self._src_skipped[name] = skipped
            if frame is not None and len(frame):
                self.metrics.rows.labels(name).inc(len(frame))
                frames.append(self._conform(frame, name))
                self._warmup_tick |= bool(getattr(src, "warmup", False))
        return frames

    def _conform(self, frame: pd.DataFrame, source: str
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A source's rows -> (entity names, timestamps in ns, the model's metrics in its
        order); a metric the source lacks is missing. Plain arrays: cheap to join."""
        metrics = self._buffers.metrics
        cols = [str(c) for c in frame.columns]
        key = (source, tuple(cols))
        pos = self._layouts.get(key)
        if pos is None:
            where = {c: i for i, c in enumerate(cols)}
            pos = self._layouts[key] = [where.get(m, -1) for m in metrics]
            missing = [m for m, p in zip(metrics, pos, strict=True) if p < 0]
            if missing:
                log.warning("source %s has no %s: those values are missing (the model needs "
                            "them for complete windows)", source, ", ".join(missing))
        vals = np.full((len(frame), len(metrics)), np.nan)
        have = [j for j, p in enumerate(pos) if p >= 0]
        if have:  # all columns at once: one block copy, not a pandas call per metric
            vals[:, have] = frame.iloc[:, [pos[j] for j in have]].to_numpy(
                dtype=np.float64, na_value=np.nan)
        return (frame["entity"].to_numpy(dtype=object), to_ns(frame["timestamp"]), vals)
