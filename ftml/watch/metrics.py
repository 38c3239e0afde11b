"""The loop's own Prometheus metrics, in an injected registry, and the per-entity score
gauge read at scrape time."""

from __future__ import annotations

import math
from typing import Any

from ftml.watch.health import DEGRADED_REASONS


class WatchMetrics:
    """The loop's Prometheus metrics, in an injected registry."""

    def __init__(self, registry=None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.ticks = Counter("ftml_watch_ticks", "Ticks run", registry=r)
        self.tick_seconds = Histogram(
            "ftml_watch_tick_seconds", "Time a tick takes", registry=r,
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.lag = Gauge("ftml_watch_lag_seconds",
                         "Clock time minus the newest data timestamp", registry=r)
        self.rows = Counter("ftml_watch_rows", "Metric rows read", ["source"], registry=r)
        self.skipped = Counter("ftml_watch_skipped_lines", "Bad data lines skipped",
                               ["source"], registry=r)
        self.late = Counter("ftml_watch_late_rows",
                            "Rows older than the buffer, dropped", registry=r)
        self.windows = Counter("ftml_watch_windows", "Windows scored", registry=r)
        self.entities = Gauge("ftml_watch_entities", "Entities seen", registry=r)
        self.open_events = Gauge("ftml_watch_open_events", "Events open now", registry=r)
        self.alerts = Counter("ftml_watch_alerts", "Alerts raised, by status", ["status"],
                              registry=r)
        self.delivered = Counter("ftml_watch_alerts_delivered", "Alerts delivered",
                                 ["sink", "status"], registry=r)
        self.queued = Gauge("ftml_watch_alerts_queued", "Alerts waiting for delivery",
                            ["sink"], registry=r)
        self.actions = Counter("ftml_watch_actions", "Recovery decisions, by decision",
                               ["decision"], registry=r)
        self.errors = Counter("ftml_watch_errors", "Errors by component (source, sink, "
                              "engine, loop) and name", ["component", "name"], registry=r)
        self.source_up = Gauge("ftml_watch_source_up", "1 if the last poll succeeded",
                               ["source"], registry=r)
        self.degraded = Gauge("ftml_watch_degraded", "1 while /healthz reports this reason "
                              "(missing_metrics, no_windows)", ["reason"], registry=r)
        self.degraded_ticks = Counter("ftml_watch_degraded_ticks", "Ticks that ended "
                                      "degraded, by reason", ["reason"], registry=r)
        for reason in DEGRADED_REASONS:
            self.degraded.labels(reason).set(0)


class ScoreCollector:
    """``ftml_watch_score{entity}``: the latest window score, read at scrape time (no cost
    per tick however many entities)."""

    def __init__(self, watcher: Any):
        self.watcher = watcher

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        w = self.watcher
        g = GaugeMetricFamily("ftml_watch_score", "Latest window score (0..1)",
                              labels=["entity"])
        names, scores = w._score_snapshot
        for name, s in zip(names, scores, strict=False):
            if not math.isnan(s):
                g.add_metric([name], float(s))
        yield g
        t = GaugeMetricFamily("ftml_watch_threshold", "Score threshold of the model")
        t.add_metric([], float(w.model.threshold))
        yield t
