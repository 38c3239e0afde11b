"""Whether the loop can do its work beyond ticking: what ``/healthz`` says and
``ftml_watch_degraded`` counts."""

from __future__ import annotations

import numpy as np

#: Why /healthz may say "degraded" (the ``reason`` label of ftml_watch_degraded).
DEGRADED_REASONS = ("missing_metrics", "no_windows")


class Health:
    """Whether the loop can do its work, beyond ticking: every metric of the model arrives
    (a metric no source gives leaves every window incomplete) and windows get scored. Fed
    once per tick; the reasons go to /healthz and ftml_watch_degraded."""

    def __init__(self, metrics: list[str], now: float, interval: float, warmup: float,
                 after: int):
        self.metrics = metrics
        self.started = now
        self.span = after * interval  # how long an absence is tolerated once seen
        self.interval = interval
        self.warmup = max(warmup, self.span)
        self.seen_at = np.full(len(metrics), -np.inf)  # last tick with a finite value
        self.rows_at: float | None = None  # last tick with rows
        self.last_window_at: float | None = None
        self.reasons: dict[str, str] = {}

    def update(self, now: float, vals: list[np.ndarray], windows: int) -> dict[str, str]:
        if vals:
            self.rows_at = now
            have = np.zeros(len(self.metrics), dtype=bool)
            for v in vals:
                have |= np.isfinite(v).any(axis=0)
            self.seen_at[have] = now
        if windows:
            self.last_window_at = now
        reasons: dict[str, str] = {}
        # Rows came, but never with this metric: missing now. Seen once: missing when rows
        # kept coming without it for a span (a source that is down is not this: no rows).
        if self.rows_at is None:
            missing = np.zeros(len(self.metrics), dtype=bool)
        else:
            missing = np.where(np.isneginf(self.seen_at), True,
                               self.rows_at - self.seen_at > self.span)
        if missing.any():
            names = [m for m, x in zip(self.metrics, missing, strict=True) if x]
            reasons["missing_metrics"] = (
                f"missing metrics: no source gives {', '.join(names)} (the model needs every "
                "metric it was trained on; its windows stay incomplete)")
        since = now - (self.last_window_at if self.last_window_at is not None else self.started)
        limit = self.span if self.last_window_at is not None else self.warmup
        if since > limit:
            reasons["no_windows"] = (f"no windows scored for {since / self.interval:.0f} "
                                     f"intervals ({since:.0f}s)")
        self.reasons = reasons
        return reasons
