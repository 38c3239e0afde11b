"""The online loop: sources -> ring buffers -> the batch features, scores and events -> alerts,
recovery and sinks, one tick at a time.

Scoring online gives the same windows, scores and events as ``ftml score`` on the same data:
each tick normalises the buffered raw rows with :func:`ftml.io.normalise` and builds windows
with ``model.featurizer.transform_frame`` (the batch functions) -- in the steady state (one
new complete row per entity) its two halves, ``standardise`` and ``window_features``, run on
the new rows and each entity's last window only --, scores only windows not scored before,
and feeds them to one long-lived ``model.event_builder()``, which gives the same events
however its input is chunked (windows far from any active window are not fed at all: they
cannot change an event). A window is scored once it is *final*: none of its rows can still
change. A row can change while a metric's trailing gap is short enough to be forward-filled
yet may still grow too long to fill; windows over such a gap wait (usually not at all: when
the newest row is complete every window up to it is final).

Durability: undelivered alerts and the set of alerts already raised live in
``STATE/alerts.json``, written atomically before anything is sent; buffers, the event
builder, source positions and per-entity progress are checkpointed atomically to
``STATE/watch.npz``; recovery runs and approvals are in the engine's ``STATE/state.db``. After
a crash the loop resumes from the checkpoint, and the alert ledger and the engine's audit keep
it from raising an open event again or repeating an action.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import queue
import select
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ftml.bundle import Model
from ftml.config import parse_duration
from ftml.detect import EventBuilder, FlagGate, RawEvent
from ftml.diagnose import UNKNOWN
from ftml.errors import ConfigError, FtmlError
from ftml.events import Event
from ftml.features import Windows, level_of_sums, level_units, window_features
from ftml.incidents import LiveGrouper, grouping_for
from ftml.io import atomic_path, normalise, to_ns, write_text
from ftml.pipeline import carry_steps, gate_of, unseen_entities, unseen_entities_warning
from ftml.playbooks import RECOVERED_PREFIX
from ftml.recover import SystemClock
from ftml.sinks import Sink, SinkError, alert_record
from ftml.sources import Source, SourceError

log = logging.getLogger("ftml.watch")

CHECKPOINT_FILE = "watch.npz"
ALERTS_FILE = "alerts.json"
STATE_FORMAT = 1
# 2: the gate is batch's FlagGate (its state: each entity's last flag), not a ring of recent
# windows per entity.
CHECKPOINT_FORMAT = 2


class Waker:
    """Wakes the loop early: an Event whose ``set`` takes no lock, so a signal handler may
    call it. (``threading.Event.set`` takes a lock the interrupted main thread may already
    hold -- a deadlock, and the stop request lost.) A byte in a non-blocking pipe."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        # Closed only when unreachable: a source's reader thread may still set it after
        # shutdown, and a closed descriptor's number may by then belong to another file.
        weakref.finalize(self, _close_fds, self._r, self._w)

    def set(self) -> None:
        with contextlib.suppress(OSError):  # full (already set) or closed
            os.write(self._w, b"x")

    def wait(self, timeout: float | None) -> bool:
        """True when set (now or within ``timeout`` seconds); does not clear."""
        try:
            ready, _, _ = select.select([self._r], [], [], None if timeout is None
                                        else max(0.0, timeout))
        except (OSError, ValueError):
            return False
        return bool(ready)

    def clear(self) -> None:
        with contextlib.suppress(OSError):  # BlockingIOError: drained
            while os.read(self._r, 4096):
                continue


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


_NONE = np.iinfo(np.int64).min // 4  # "no slot yet"; far below any real slot, no overflow
#: Resolved alert ids remembered so that a replay after a restart does not raise them again.
RESOLVED_MEMORY = 20_000


# --------------------------------------------------------------------------- config


@dataclass
class WatchConfig:
    """The loop's own settings (the ``watch:`` config section, and CLI flags)."""

    interval: float | None = None  # seconds between ticks; None: the model's step
    checkpoint_every: float = 300.0  # seconds between checkpoints (and one at exit)
    severity: dict[str, str] = field(default_factory=dict)  # cause -> severity
    default_severity: str = "warning"
    backoff_initial: float = 1.0  # retry delay of a failed source or sink, doubling ...
    backoff_max: float = 60.0  # ... up to this
    engine_poll_every: float = 10.0  # seconds between engine.poll() (approvals from elsewhere)
    # A source that cannot be read when run() starts (file missing, Prometheus down) stops
    # the loop with a ConfigError; True: retry it with backoff like a later outage.
    wait_for_source: bool = False
    # /healthz says "degraded" when no window was scored for this many intervals (after the
    # first window's worth of steps), or a metric of the model had no value for as long.
    degraded_after: int = 10
    # An event that opened and ended inside one tick (catching up after an outage or a burst
    # of rows) fires, and resolves no sooner than this after: receivers that group alerts
    # before notifying (Alertmanager's group_wait, 30 s by default) would otherwise only
    # ever see it resolved, and notify nobody.
    min_firing: float = 60.0

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None, source: str = "config"
                     ) -> WatchConfig:
        if section is not None and not isinstance(section, Mapping):
            raise ConfigError("section must be a mapping", source=source, where="watch",
                              hint="e.g. 'watch: {interval: 60s}'")
        section = dict(section or {})
        for key in section:
            if key not in WATCH_KEYS:
                raise ConfigError(f"unknown key '{key}'", source=source, where="watch",
                                  hint=f"known keys: {', '.join(sorted(WATCH_KEYS))}")
        out = cls()
        for key in ("interval", "checkpoint_every", "backoff_initial", "backoff_max",
                    "engine_poll_every", "min_firing"):
            if key in section and section[key] is not None:
                try:
                    setattr(out, key, parse_duration(section[key], key).total_seconds())
                except ConfigError as exc:
                    raise ConfigError(exc.problem, source=source, where=f"watch.{key}",
                                      hint=exc.hint) from None
        sev = section.get("severity") or {}
        if not isinstance(sev, dict):
            raise ConfigError("watch.severity must map causes to severities", source=source)
        out.severity = {str(k): str(v) for k, v in sev.items()}
        out.default_severity = str(section.get("default_severity", out.default_severity))
        after = section.get("degraded_after")
        if after is not None:
            if not isinstance(after, int) or isinstance(after, bool) or after < 1:
                raise ConfigError(f"must be a whole number of intervals >= 1, got {after!r}",
                                  source=source, where="watch.degraded_after")
            out.degraded_after = after
        wait = section.get("wait_for_source")
        if wait is not None:
            if not isinstance(wait, bool):
                raise ConfigError(f"must be true or false, got {wait!r}", source=source,
                                  where="watch.wait_for_source")
            out.wait_for_source = wait
        return out


#: Keys of the ``watch:`` section: the loop's (WatchConfig) and the sources' (local, prometheus).
WATCH_KEYS = ("interval", "checkpoint_every", "severity", "default_severity", "backoff_initial",
              "backoff_max", "engine_poll_every", "wait_for_source", "degraded_after",
              "min_firing", "local", "prometheus")


# --------------------------------------------------------------------------- metrics


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


#: Why /healthz may say "degraded" (the ``reason`` label of ftml_watch_degraded).
DEGRADED_REASONS = ("missing_metrics", "no_windows")


class _Health:
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


class _ScoreCollector:
    """``ftml_watch_score{entity}``: the latest window score, read at scrape time (no cost
    per tick however many entities)."""

    def __init__(self, watcher: Watcher):
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


# --------------------------------------------------------------------------- buffers


class _Buffers:
    """Per entity: the raw rows of the last ``keep`` steps (flat, growable arrays) and the
    standardised values of the last window (``ring``)."""

    def __init__(self, metrics: list[str], step_ns: int, keep_steps: int, window: int,
                 recent: int, win_rows: int | None = None):
        self.metrics = metrics
        self.m = len(metrics)
        self.step_ns = step_ns
        self.keep = keep_steps
        self.w = window
        self.nw = recent
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        self._last_names: list[str] | None = None
        self._last_codes = np.empty(0, dtype=np.int64)
        self.n = 0
        self._ent = np.empty(1024, dtype=np.int64)
        self._ts = np.empty(1024, dtype=np.int64)
        self._vals = np.empty((1024, self.m))
        e = 0
        # Progress, in slots (timestamp // step):
        self.newest = np.empty(e, dtype=np.int64)  # newest slot read
        self.first = np.empty(e, dtype=np.int64)  # first slot ever read (stride alignment)
        self.done = np.empty(e, dtype=np.int64)  # windows ending at or before are scored
        self.last_finite = np.empty((e, self.m), dtype=np.int64)  # per metric
        self.last_score = np.empty(e)
        # The fast path: z (before levels are taken off) of the last grid rows a window needs
        # (``window``: the featurizer's history_steps), the last raw row, and whether they are
        # exactly what normalising the buffer would give.
        self.ring = np.empty((e, window, self.m))
        self.lastval = np.empty((e, self.m))
        self.ring_ok = np.empty(e, dtype=bool)
        # The ring is circular (a slot's row at slot % rows). With a trailing level: the last
        # window's rows less their levels (oldest first), and the fixed-point sum and count,
        # per metric, of the level's span before the next row (features.trailing_level).
        self.win = np.empty((e, window if win_rows is None else win_rows, self.m))
        self.lsum = np.empty((e, self.m), dtype=np.int64)
        self.lcnt = np.empty((e, self.m), dtype=np.int64)
        # Each entity's last `recent` window scores (circular; readers order them by time):
        # what the verify condition `recovered for N windows` reads.
        self.score_t = np.empty((e, recent), dtype=np.int64)
        self.score_s = np.empty((e, recent))
        self.score_head = np.empty(e, dtype=np.int64)

    _PER_ENTITY = {"newest": _NONE, "first": -_NONE, "done": _NONE, "last_finite": _NONE,
                   "last_score": np.nan, "ring": np.nan, "lastval": np.nan, "ring_ok": False,
                   "win": np.nan, "lsum": 0, "lcnt": 0, "score_t": _NONE, "score_s": np.nan,
                   "score_head": 0}

    @property
    def ent(self) -> np.ndarray:
        return self._ent[:self.n]

    @property
    def ts(self) -> np.ndarray:
        return self._ts[:self.n]

    @property
    def vals(self) -> np.ndarray:
        return self._vals[:self.n]

    def codes(self, names: list[str]) -> np.ndarray:
        if names == self._last_names:  # the usual tick: the same entities as the last one
            return self._last_codes
        out = []
        for n in names:  # per distinct entity, not per row
            c = self.index.get(n)
            if c is None:
                c = self.index[n] = len(self.names)
                self.names.append(n)
            out.append(c)
        self._grow()
        self._last_names, self._last_codes = list(names), np.asarray(out, dtype=np.int64)
        return self._last_codes

    def _grow(self) -> None:
        k = len(self.names) - len(self.newest)
        if k <= 0:
            return
        for key, fill in self._PER_ENTITY.items():
            cur = getattr(self, key)
            extra = np.full((k, *cur.shape[1:]), fill, dtype=cur.dtype)
            setattr(self, key, np.concatenate([cur, extra]))

    def slots(self, ts: np.ndarray) -> np.ndarray:
        return np.floor_divide(ts + self.step_ns // 2, self.step_ns)  # as normalise rounds

    def add(self, ent: np.ndarray, ts: np.ndarray, vals: np.ndarray
            ) -> tuple[np.ndarray, int, np.ndarray]:
        """Append rows. Returns (entities touched, rows dropped as too old, a mask of the
        rows that take the fast path: an entity's only new row, the step after its newest,
        complete, with nothing of the entity waiting)."""
        slot = self.slots(ts)
        # Late: older than what the buffer still holds (a backlog newer than that is kept
        # whole until its windows are built, then trimmed).
        old = slot <= self.newest[ent] - self.keep
        late = int(old.sum())
        if late:
            ent, ts, vals, slot = ent[~old], ts[~old], vals[~old], slot[~old]
        prev = self.newest[ent]
        fast = ((np.bincount(ent, minlength=len(self.names))[ent] == 1) & (slot == prev + 1)
                & np.isfinite(vals).all(axis=1) & self.ring_ok[ent] & (self.done[ent] == prev))
        np.maximum.at(self.newest, ent, slot)
        np.minimum.at(self.first, ent, slot)
        r, c = np.nonzero(np.isfinite(vals))
        np.maximum.at(self.last_finite, (ent[r], c), slot[r])
        self._append(ent, ts, vals)
        return np.unique(ent), late, fast

    def _append(self, ent: np.ndarray, ts: np.ndarray, vals: np.ndarray) -> None:
        n, k = self.n, len(ent)
        if n + k > len(self._ent):
            cap = max(2 * len(self._ent), n + k)
            # New arrays, never resized in place: a reader's snapshot stays intact.
            self._ent = np.concatenate([self._ent[:n], np.empty(cap - n, dtype=np.int64)])
            self._ts = np.concatenate([self._ts[:n], np.empty(cap - n, dtype=np.int64)])
            self._vals = np.concatenate([self._vals[:n], np.empty((cap - n, self.m))])
        self._ent[n:n + k] = ent
        self._ts[n:n + k] = ts
        self._vals[n:n + k] = vals
        self.n = n + k

    def drop_rows(self, start: int, codes: np.ndarray) -> None:
        """Forget the rows from ``start`` on of these entities (a tick whose rows failed)."""
        recent = np.arange(self.n) >= start
        keep = ~(recent & np.isin(self.ent, codes))
        self._rebuild(self.ent[keep], self.ts[keep], self.vals[keep])

    def _rebuild(self, ent: np.ndarray, ts: np.ndarray, vals: np.ndarray) -> None:
        # New arrays: a reader's snapshot of the old ones stays intact.
        cap = max(1024, 2 * len(ent))
        self._ent = np.empty(cap, dtype=np.int64)
        self._ts = np.empty(cap, dtype=np.int64)
        self._vals = np.empty((cap, self.m))
        self.n = 0
        self._append(ent, ts, vals)

    def trim(self, factor: float = 2.0) -> bool:
        """Drop rows older than ``keep`` steps behind their entity's newest. Amortised: only
        once the arrays hold ``factor`` times what is needed (0: always). True if it did."""
        if self.n <= factor * self.keep * max(1, len(self.names)) + 4096 * (factor > 0):
            return False
        keep = self.slots(self.ts) > self.newest[self.ent] - self.keep
        self._rebuild(self.ent[keep], self.ts[keep], self.vals[keep])
        return True

    def final_slots(self, codes: np.ndarray, limit: int) -> np.ndarray:
        """Per entity, the last slot whose windows can no longer change: the newest, unless a
        metric's trailing gap is short enough to be filled now and might still grow too long
        to fill (then windows over the gap wait)."""
        newest = self.newest[codes]
        lf = self.last_finite[codes]
        gap = newest[:, None] - lf
        waits = (gap > 0) & (gap <= limit) & (lf > _NONE)
        return np.minimum(newest, np.where(waits, lf, newest[:, None]).min(axis=1))

    # Checkpointed per-entity arrays. Not the fast path's ring, window and level sums (a
    # level_window's rows of every entity: the bulk of a checkpoint): after a restore the
    # general path rebuilds them from the raw rows, exactly (ring_ok starts False).
    ARRAYS = ("newest", "first", "done", "last_finite", "last_score", "lastval", "score_t",
              "score_s", "score_head")

    def remember_scores(self, codes: np.ndarray, t: np.ndarray, scores: np.ndarray) -> None:
        """Keep the last ``nw`` scores of each entity; windows sorted by entity, then time."""
        n = self.nw
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        counts = np.diff(np.r_[starts, len(codes)])
        rank = np.arange(len(codes)) - np.repeat(starts, counts)  # within its entity
        skip = np.repeat(np.maximum(counts - n, 0), counts)  # older than the last n
        keep = rank >= skip
        c = codes[keep]
        pos = (self.score_head[c] + rank[keep] - skip[keep]) % n
        self.score_t[c, pos] = t[keep]
        self.score_s[c, pos] = scores[keep]
        uc = codes[starts]
        self.score_head[uc] = (self.score_head[uc] + np.minimum(counts, n)) % n


class BufferReader:
    """The recovery engine's :class:`ftml.recover.MetricReader` over the loop's buffers: the
    latest raw value of a metric, or None when the newest is older than ``max_age``."""

    def __init__(self, watcher: Watcher, max_age: float):
        self.watcher = watcher
        self.max_age = max_age

    def latest(self, entity: str, metric: str) -> float | None:
        b = self.watcher._buffers
        code = b.index.get(entity)
        if code is not None and metric.startswith(RECOVERED_PREFIX):
            return self.recovered(entity, code, int(metric[len(RECOVERED_PREFIX):]))
        if code is None or metric not in b.metrics:
            return None
        ent, ts, vals = self.watcher._snapshot  # arrays of one tick: never half-updated
        j = b.metrics.index(metric)
        mask = (ent == code) & np.isfinite(vals[:, j])
        if not mask.any():
            return None
        i = np.flatnonzero(mask)[np.argmax(ts[mask])]
        if self.watcher.clock.now() - ts[i] / 1e9 > self.max_age:
            return None
        return float(vals[i, j])

    def recovered(self, entity: str, code: int, n: int) -> float:
        """1.0 when the entity has no firing alert, or its last ``n`` window scores are all
        under the model's threshold (the verify condition ``recovered for n windows``)."""
        w = self.watcher
        with w.book.lock:
            firing = any(f["entity"] == entity for f in w.book.firing.values())
        if not firing:
            return 1.0
        b = w._buffers
        n = min(n, b.nw)  # the loop remembers the last of_windows windows of each entity
        t, s = b.score_t[code].copy(), b.score_s[code].copy()
        have = t != _NONE
        last = s[have][np.argsort(t[have])][-n:]
        ok = len(last) == n and bool((last < w.model.threshold).all())
        return 1.0 if ok else 0.0


# --------------------------------------------------------------------------- alerts


class AlertBook:
    """Alerts raised (firing, recently resolved) and, per sink, the queue of records not yet
    delivered; saved atomically to ``alerts.json`` before any of them is sent."""

    def __init__(self, path: Path | None, sinks: Sequence[Sink]):
        self.path = path
        self.sinks = list(sinks)
        self.lock = threading.RLock()
        self.firing: dict[str, dict[str, Any]] = {}
        self.resolved: OrderedDict[str, None] = OrderedDict()
        # Resolves held back (Watcher's min_firing): alert id -> {"due": seconds, "record"}.
        self.deferred: dict[str, dict[str, Any]] = {}
        self.queues: dict[str, list[dict[str, Any]]] = {s.name: [] for s in self.sinks}
        self.failures: dict[str, int] = {s.name: 0 for s in self.sinks}
        self.next_try: dict[str, float] = {s.name: 0.0 for s in self.sinks}
        self.refreshed: dict[str, float] = {s.name: 0.0 for s in self.sinks}
        self.dirty = False
        if path is not None and path.exists():
            self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            log.error("%s: unreadable (%s): starting with no alert history", self.path, exc)
            return
        self.firing = dict(data.get("firing") or {})
        self.resolved = OrderedDict((i, None) for i in data.get("resolved") or [])
        self.deferred = dict(data.get("deferred") or {})
        for name, items in (data.get("queues") or {}).items():
            if name in self.queues:
                self.queues[name] = list(items)
            elif items:
                log.warning("%d undelivered alert(s) for sink %s, which is no longer "
                            "configured: dropped", len(items), name)

    def save(self) -> None:
        if self.path is None:
            self.dirty = False
            return
        with self.lock:  # written under the lock: an older snapshot never lands last
            text = json.dumps({"format": STATE_FORMAT, "firing": self.firing,
                               "resolved": list(self.resolved), "deferred": self.deferred,
                               "queues": self.queues}, default=str)
            try:
                write_text(self.path, text)
            except FtmlError as exc:  # e.g. a full disk: kept in memory, written next time
                log.error("cannot save alerts: %s", exc)
                return
            self.dirty = False

    def emit(self, record: dict[str, Any]) -> None:
        with self.lock:
            for q in self.queues.values():
                q.append(record)
            self.dirty = True

    def release(self, now: float | None) -> int:
        """Queue the held-back resolves due by ``now`` (None: all). Returns how many."""
        with self.lock:
            due = [k for k, d in self.deferred.items() if now is None or d["due"] <= now]
            for k in due:
                self.emit(self.deferred.pop(k)["record"])
            return len(due)

    def remember_resolved(self, alert_id: str) -> None:
        self.resolved[alert_id] = None
        self.resolved.move_to_end(alert_id)
        while len(self.resolved) > RESOLVED_MEMORY:
            self.resolved.popitem(last=False)

    def pending(self) -> int:
        with self.lock:
            return sum(len(q) for q in self.queues.values())

    def deliver(self, now: float, metrics: WatchMetrics, backoff: tuple[float, float],
                deadline: float | None = None) -> None:
        """Send queued records, oldest first, per sink; a failure stops that sink until its
        backoff passes. Sending happens outside the lock: ticks go on meanwhile."""
        changed = False
        for sink in self.sinks:
            name = sink.name
            if now < self.next_try[name]:
                continue
            while True:
                if deadline is not None and time.monotonic() > deadline:
                    break
                with self.lock:
                    q = self.queues[name]
                    record = q[0] if q else None
                if record is None:
                    break
                if not self._send(sink, record, now, metrics, backoff):
                    break
                with self.lock:
                    self.queues[name].pop(0)  # only this thread removes
                changed = True
                metrics.delivered.labels(name, record["status"]).inc()
            with self.lock:
                metrics.queued.labels(name).set(len(self.queues[name]))
                idle = not self.queues[name]
                firing = [f["record"] for f in self.firing.values()]
            every = getattr(sink, "resend_every", None)
            if idle and every and firing and now - self.refreshed[name] >= every:
                # Receivers that expire alerts (Alertmanager) hear again about firing ones.
                self.refreshed[name] = now
                for record in firing:
                    if not self._send(sink, record, now, metrics, backoff):
                        break
        if changed:
            self.save()

    def _send(self, sink: Sink, record: Mapping[str, Any], now: float, metrics: WatchMetrics,
              backoff: tuple[float, float]) -> bool:
        name = sink.name
        try:
            sink.send(record)
        except Exception as exc:  # a sink never stops the loop
            n = self.failures[name] = self.failures[name] + 1
            wait = min(backoff[1], backoff[0] * 2 ** (n - 1))
            self.next_try[name] = now + wait
            metrics.errors.labels("sink", name).inc()
            level = logging.WARNING if isinstance(exc, SinkError) else logging.ERROR
            log.log(level, "sink %s: delivery failed (%s); %d alert(s) queued, retry in "
                    "%.0fs", name, exc, len(self.queues[name]), wait)
            return False
        if self.failures[name]:
            log.info("sink %s: delivering again", name)
        self.failures[name] = 0
        return True


# --------------------------------------------------------------------------- the loop


@dataclass
class TickResult:
    rows: int = 0
    windows: int = 0
    opened: list[Event] = field(default_factory=list)
    resolved: list[Event] = field(default_factory=list)
    # Events of the warm-up history (read at start) that had ended before it: not alerts.
    warmup: list[Event] = field(default_factory=list)
    seconds: float = 0.0


class Watcher:
    """The online loop. ``tick()`` runs one round; ``run()`` ticks every interval until
    stopped, then flushes sinks and writes state. Clock and Prometheus registry are
    injected so that tests tick without waiting."""

    def __init__(self, model: Model, sources: Sequence[Source], sinks: Sequence[Sink] = (),
                 engine: Any = None, state_dir: str | Path | None = None, clock: Any = None,
                 registry: Any = None, config: WatchConfig | None = None,
                 on_windows: Callable[[Windows, np.ndarray], None] | None = None):
        self.model = model
        self.sources = list(sources)
        self.sinks = list(sinks)
        self.engine = engine
        self.clock = clock or SystemClock()
        self.config = config or WatchConfig()
        self.on_windows = on_windows
        self.state_dir = Path(state_dir) if state_dir is not None else None
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = WatchMetrics(registry)
        self.registry = self.metrics.registry
        self.registry.register(_ScoreCollector(self))

        fz = model.featurizer
        read = model.config.read
        self.step_ns = int(model.step.value)
        self.window = int(fz.window)
        self.stride = int(fz.stride)
        self.fill = int(read.max_fill_steps)
        # Kept per entity: a window, plus the forward-fill reach twice (a value needed by the
        # oldest new window may be filled from up to `fill` steps before it, and that window
        # may wait `fill` steps for a trailing gap), plus the row before (counter rates).
        # A window's rows are its own and the trailing levels' span before (history_steps).
        self.ring_rows = int(fz.history_steps)
        self.keep_steps = carry_steps(fz, read)
        # Windows are cut by stride from each entity's first row, as in batch: build them all
        # and keep the aligned ones.
        self._fz = fz if self.stride == 1 else _with_stride(fz, 1)
        self.interval = self.config.interval or model.step.total_seconds()
        self._counters = list(fz.counters_)
        # Object, not Arrow-string, column labels: selecting columns by name stays cheap.
        self._columns = pd.Index(list(model.metrics), dtype=object)
        self._layouts: dict[tuple, list[int]] = {}
        self._known = np.empty(0, dtype=np.int64)  # per entity code: Baseline.entity_index
        self._checked = 0  # entities (buffer codes) checked for a baseline: warned once
        self._buffers = _Buffers(list(model.metrics), self.step_ns, self.keep_steps,
                                 self.ring_rows, int(model.event_rules.of_windows),
                                 win_rows=self.window)
        self._snapshot = (self._buffers.ent, self._buffers.ts, self._buffers.vals)
        self._score_snapshot: tuple[list[str], np.ndarray] = ([], np.empty(0))
        self.builder: EventBuilder = model.event_builder()
        self.gate: FlagGate = gate_of(model)  # batch's gate: the same windows reach the builder
        self.book = AlertBook(self.state_dir / ALERTS_FILE if self.state_dir else None,
                              self.sinks)
        self._src_failures = {s.name: 0 for s in self.sources}
        self._src_next = {s.name: 0.0 for s in self.sources}
        self._src_skipped = {s.name: 0 for s in self.sources}
        self._nudge = Waker()  # wakes the loop before its interval is up
        for s in self.sources:
            s.bind(model.step, self.keep_steps)
            if hasattr(s, "nudge"):
                s.nudge = self._nudge
        self.ticks = 0  # of this process, as ftml_watch_ticks_total
        self.ticks_before = 0  # ticks of the runs before, from the checkpoint
        self.resumed_from: float | None = None  # when that checkpoint was written
        self.last_tick_at: float | None = None
        self.started_at = self.clock.now()
        self._health = _Health(list(model.metrics), self.started_at, self.interval,
                               (self.window + self.fill + 1) * model.step.total_seconds(),
                               self.config.degraded_after)
        self._tick_vals: list[np.ndarray] = []
        self._warmup_tick = False  # a source handed over its warm-up history this tick
        self._last_checkpoint = self.clock.now()
        self._stopping = False  # a plain flag: stop() may run in a signal handler
        self.stop_reason: str | None = None
        self._wake = threading.Event()
        self._delivery: threading.Thread | None = None
        self._engine_q: queue.Queue = queue.Queue()
        self._engine_thread: threading.Thread | None = None
        self._engine_busy = threading.Event()
        self._last_engine_poll = 0.0
        self._server: ThreadingHTTPServer | None = None
        if engine is not None and getattr(engine, "metrics", None) is None:
            engine.metrics = BufferReader(self, max_age=3 * model.step.total_seconds())
        if self.state_dir is not None:
            self._restore()
        self.metrics.open_events.set(len(self.book.firing))

    # -- public --------------------------------------------------------------------

    def tick(self) -> TickResult:
        """Poll sources, score new final windows, raise and resolve alerts, deliver."""
        started = time.perf_counter()
        now = self.clock.now()
        out = TickResult()
        frames = self._poll(now)
        self._tick_vals = [f[2] for f in frames]
        if frames:
            out.rows = sum(len(f[1]) for f in frames)
            self._process(frames, now, out, final=False)
        self._after_tick(now, out, started)
        return out

    def finish(self) -> TickResult:
        """End of the stream (e.g. stdin closed): score the windows still waiting, close the
        events still open, as batch scoring does at the end of a file."""
        started = time.perf_counter()
        now = self.clock.now()
        out = TickResult()
        self._process([], now, out, final=True)
        closed = self.builder.flush()
        self._closed(closed, now, out)
        self.book.release(None)  # nothing comes after the end of the stream
        self._after_tick(now, out, started)
        return out

    @property
    def exhausted(self) -> bool:
        return bool(self.sources) and all(s.exhausted for s in self.sources)

    def run(self, listen: tuple[str, int] | None = None,
            started: Callable[[], None] | None = None) -> None:
        """Tick every interval until :meth:`stop` (or every source has ended), then shut
        down cleanly. A source with a backlog is polled again at once. ``started`` is
        called once the start checks have passed (sources answer, the port is bound)."""
        try:
            if not self.config.wait_for_source:
                self.check_sources()
            if listen is not None:
                self.serve(*listen)
        except FtmlError:
            # Nothing ran: no checkpoint (it would overwrite the last one's source positions).
            for s in (*self.sources, *self.sinks):
                s.close()
            raise
        if started is not None:
            started()
        self._start_delivery()
        next_at = self.clock.now()
        try:
            while not self._stopping:
                try:
                    self.tick()
                except Exception:  # one bad tick is logged, never fatal
                    log.exception("tick failed")
                    self.metrics.errors.labels("loop", "tick").inc()
                self.maintain()
                if self.exhausted:
                    self.finish()
                    break
                if any(getattr(s, "more", False) for s in self.sources):
                    continue
                next_at += self.interval
                now = self.clock.now()
                if next_at < now:  # fell behind: skip the missed ticks, do not burst
                    next_at = now
                if self._nudge.wait(next_at - now):  # new input or stop: tick now
                    self._nudge.clear()
                    next_at = self.clock.now()
        finally:
            self.shutdown()

    def check_sources(self) -> None:
        """Raise ConfigError naming every source that cannot be read now (a missing file,
        a Prometheus that does not answer): at start that is a setting to fix, not an
        outage to wait out. Sources without a ``check`` (stdin, local) pass."""
        failed = []
        for src in self.sources:
            check = getattr(src, "check", None)
            if check is None:
                continue
            try:
                check()
            except (SourceError, OSError, FtmlError) as exc:
                failed.append(str(exc))
        if failed:
            raise ConfigError(f"source unavailable at start: {'; '.join(failed)}",
                              hint="fix the --source, or pass --wait-for-source to retry "
                                   "until it answers")

    def maintain(self) -> float:
        """Work between ticks, in the loop's idle time: dropping raw rows too old to matter
        (a copy of the buffers, now and then) and the periodic checkpoint. Returns the seconds
        it took (0 when nothing was due)."""
        started = time.perf_counter()
        if self.state_dir is not None and \
                self.clock.now() - self._last_checkpoint >= self.config.checkpoint_every:
            self._trim(0.0)  # the checkpoint then holds only the rows a restore needs
            self.checkpoint()
            return time.perf_counter() - started
        return time.perf_counter() - started if self._trim(2.0) else 0.0

    def _trim(self, factor: float) -> bool:
        if not self._buffers.trim(factor):
            return False
        b = self._buffers
        self._snapshot = (b.ent, b.ts, b.vals)
        return True

    def stop(self, reason: str | None = None) -> None:
        """Ask the loop to finish its tick and shut down. Takes no lock and does no I/O but
        one byte to a pipe, so a signal handler may call it."""
        if reason is not None and self.stop_reason is None:
            self.stop_reason = reason
        self._stopping = True
        self._nudge.set()

    def shutdown(self, flush_seconds: float = 3.0) -> None:
        """Flush sinks (bounded), write state, stop threads and the HTTP server."""
        if self.stop_reason is not None:
            log.info("%s: tick finished, stopping", self.stop_reason)
        self.stop()
        self._wake.set()
        if self._delivery is not None:
            self._delivery.join(timeout=flush_seconds + 1)
            self._delivery = None
        if self.state_dir is None:  # held-back resolves would be lost: out with them now
            self.book.release(None)
        self.book.deliver(self.clock.now(), self.metrics,
                          (self.config.backoff_initial, self.config.backoff_max),
                          deadline=time.monotonic() + flush_seconds)
        if self._engine_thread is not None:
            self._engine_q.put(None)
            self._engine_thread.join(timeout=2.0)
            if self._engine_thread.is_alive():
                log.warning("a recovery action is still running; its state is in the "
                            "engine's database")
        self.checkpoint()
        if self.book.dirty:
            self.book.save()
        for s in self.sources:
            s.close()
        for s in self.sinks:
            s.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- ticking -------------------------------------------------------------------

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

    def _process(self, frames: list[tuple], now: float, out: TickResult,
                 final: bool) -> None:
        b = self._buffers
        n_before = b.n
        fast_w = None
        if frames:
            names = np.concatenate([f[0] for f in frames])
            ts = np.concatenate([f[1] for f in frames])
            vals = np.concatenate([f[2] for f in frames])
            inverse, uniques = pd.factorize(names, sort=False)
            ent = b.codes([str(u) for u in uniques.tolist()])[inverse.astype(np.int64)]
            saved = {k: getattr(b, k)[ent].copy()
                     for k in ("newest", "first", "last_finite", "done")}
            touched, late, fast = b.add(ent, ts, vals)
            if late:
                self.metrics.late.inc(late)
                log.warning("%d row(s) older than the buffer (%d steps) dropped", late, b.keep)
                keep = b.slots(ts) > saved["newest"] - b.keep
                ent, ts, vals = ent[keep], ts[keep], vals[keep]
                saved = {k: v[keep] for k, v in saved.items()}
            general = np.setdiff1d(touched, ent[fast], assume_unique=False)
            if fast.any():
                fast_w = self._fast_windows(ent[fast], b.slots(ts[fast]), vals[fast])
        else:
            general = np.flatnonzero(b.newest > b.done)
        parts = [fast_w] if fast_w is not None and len(fast_w[0]) else []
        if len(general):
            try:
                gen_w = self._windows(general, final)
            except Exception as exc:
                # Rows that break normalisation (e.g. a stray timestamp making a huge grid)
                # would break every later tick too: this tick's rows of these entities are
                # dropped, with why; the fast path's entities go on.
                if frames:
                    b.drop_rows(n_before, general)
                    mine = np.isin(ent, general)
                    for k, v in saved.items():
                        getattr(b, k)[ent[mine]] = v[mine]
                b.ring_ok[general] = False
                self.metrics.errors.labels("loop", "windows").inc()
                log.error("rows of %d entities dropped: %s", len(general), exc,
                          exc_info=not isinstance(exc, FtmlError))
            else:
                if len(gen_w[0]):
                    parts.append(gen_w)
        if parts:
            w = parts[0][0] if len(parts) == 1 else Windows.concat(
                [p[0] for p in parts], parts[0][0].X.shape[1], b.m)
            codes = parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts])
            self._score(w, codes, now, out)
        # The trim is maintain()'s work between ticks; here only when nothing calls that.
        b.trim(4.0)
        self._snapshot = (b.ent, b.ts, b.vals)
        self.metrics.entities.set(len(b.names))

    def _fast_windows(self, codes: np.ndarray, slots: np.ndarray, vals: np.ndarray
                      ) -> tuple[Windows, np.ndarray]:
        """The steady state: one new complete row per entity, right after its newest. Its
        window is the entity's last `window` standardised rows, so the two halves of
        ``transform_frame`` (``standardise``, ``window_features``) run on the new rows only;
        the result is what ``transform_frame`` gives on the whole buffer."""
        b = self._buffers
        fz = self.model.featurizer
        names = np.asarray(b.names, dtype=object)
        ts = slots * self.step_ns
        if self._counters:
            # Rates need the row before: standardise (previous, new) pairs, keep the new.
            k = len(codes)
            pair_vals = np.empty((2 * k, b.m))
            pair_vals[0::2], pair_vals[1::2] = b.lastval[codes], vals
            pair_codes = np.repeat(codes, 2)
            pair_ts = np.repeat(ts, 2)
            pair_ts[0::2] -= self.step_ns
        else:
            pair_vals, pair_codes, pair_ts = vals, codes, ts
        if len(self._known) < len(b.names):  # each entity's place in the baseline, once
            self._known = np.concatenate(
                [self._known, fz.baseline_.entity_index(b.names[len(self._known):])])
        # What standardise(level=False) gives on these rows as a frame, without building one.
        z, values = fz.standardise_arrays(pair_vals, pair_codes,
                                          self._known[pair_codes], pair_ts)
        if self._counters:
            z, values = z[1::2], values[1::2]
        b.lastval[codes] = vals
        w, r = self.window, self.ring_rows
        span = r - w
        b.ring[codes, slots % r] = z  # circular: one row written, none moved
        if span > 0:
            # The new row less its trailing level, from the running sums of the span before
            # it: trailing_level's integers and float operations, so the same bits as
            # standardising the whole history. Then the span moves on by this row.
            clip = float(fz.level_clip)
            ue, ce = level_units(z, clip)
            ul, cl = level_units(b.ring[codes, (slots - span) % r], clip)
            z = z - level_of_sums(b.lsum[codes], b.lcnt[codes], span)
            b.lsum[codes] += ue - ul
            b.lcnt[codes] += ce - cl
        win = np.concatenate([b.win[codes, 1:], z[:, None, :]], axis=1)
        b.win[codes] = win
        b.done[codes] = slots
        X, end = window_features(win.reshape(-1, b.m), np.repeat(np.arange(len(codes)), w),
                                 w, 1, fz.stats)
        i = end // w
        keep = np.ones(len(i), dtype=bool)
        if self.stride > 1:
            keep = (slots[i] - b.first[codes[i]] - (w - 1)) % self.stride == 0
        i = i[keep]
        win = Windows(X[keep], names[codes[i]], ts[i], i.astype(np.int64), values[i])
        return win, codes[i]

    def _windows(self, touched: np.ndarray, final: bool) -> tuple[Windows, np.ndarray]:
        """New final windows of the touched entities, by normalising their buffered rows and
        ``model.featurizer.transform_frame``, exactly as batch; and each one's entity code.
        Also refreshes these entities' fast-path state."""
        b = self._buffers
        sel = np.zeros(len(b.names), dtype=bool)
        sel[touched] = True
        rows = sel[b.ent]
        names = np.asarray(b.names, dtype=object)
        raw = pd.DataFrame(b.vals[rows], columns=self._columns)
        raw.insert(0, "timestamp", pd.to_datetime(b.ts[rows], unit="ns", utc=True))
        raw.insert(0, "entity", pd.Categorical.from_codes(b.ent[rows], categories=names)
                   .remove_unused_categories())
        frame, _ = normalise(raw, self.model.step, self.fill, b.metrics)
        cats = frame["entity"].cat
        cat_code = np.array([b.index[str(n)] for n in cats.categories], dtype=np.int64)
        row_code = cat_code[cats.codes.to_numpy()]
        slot = to_ns(frame["timestamp"]) // self.step_ns
        # Only rows that new windows need: from a window before the first window not yet
        # scored, and the row before that (counter rates).
        need = slot >= b.done[row_code] - self.ring_rows
        if not need.all():
            frame = frame[need]
            row_code, slot = row_code[need], slot[need]
        if final:
            last = b.newest.copy()
        else:
            last = np.full(len(b.names), _NONE)
            last[touched] = b.final_slots(touched, self.fill)
        done_before = b.done.copy()
        b.done[touched] = np.maximum(b.done[touched], last[touched])
        # The batch block loop, with each entity's windows after those scored before and up
        # to the last final one (slots -> the ns bounds of window_blocks).
        step = self.step_ns
        since = {b.names[c]: (int(done_before[c]) + 1) * step - 1 for c in touched.tolist()
                 if done_before[c] != _NONE}
        until = {b.names[c]: (int(last[c]) + 1) * step - 1 for c in touched.tolist()}
        w = Windows.concat([blk.windows() for blk in self._fz.window_blocks(
            frame, max(len(frame), 1), since=since, until=until)],
            len(self.model.featurizer.feature_names_), b.m)
        self._refresh_fast(frame, row_code, slot, touched)
        if not len(w):
            return w, np.empty(0, dtype=np.int64)
        code = row_code[w.row]
        if self.stride > 1:  # counted from each entity's first slot ever, not the buffer's
            keep = (w.end_ns // step - b.first[code] - (self.window - 1)) % self.stride == 0
            return w.take(keep), code[keep]
        return w, code

    def _refresh_fast(self, frame: pd.DataFrame, row_code: np.ndarray, slot: np.ndarray,
                      touched: np.ndarray) -> None:
        """After the general path: the fast path's ring and last row of these entities, valid
        when every window up to the newest is scored (nothing waits on a gap)."""
        b = self._buffers
        fz = self.model.featurizer
        r, w = self.ring_rows, self.window
        z, _, _ = fz.standardise(frame, level=False)
        b.ring[touched] = np.nan
        lo = b.newest[row_code] - r + 1
        in_ring = slot >= lo
        b.ring[row_code[in_ring], slot[in_ring] % r] = z[in_ring]
        # The last window less its levels, by the batch function on the ring in time order;
        # the level's sums over the span before the next row: newest-span+1 .. newest.
        order = (b.newest[touched][:, None] + np.arange(1 - r, 1)) % r
        rows = b.ring[touched[:, None], order]
        if r > w:
            rows = fz.remove_level(rows.reshape(-1, b.m),
                                   np.repeat(np.arange(len(touched)), r)).reshape(rows.shape)
            u, c = level_units(b.ring[touched[:, None], order[:, w:]], float(fz.level_clip))
            b.lsum[touched] = u.sum(axis=1)
            b.lcnt[touched] = c.sum(axis=1)
        b.win[touched] = rows[:, r - w:]
        at_newest = slot == b.newest[row_code]
        b.lastval[touched] = np.nan
        b.lastval[row_code[at_newest]] = frame[b.metrics].to_numpy(dtype=np.float64)[at_newest]
        b.ring_ok[touched] = b.done[touched] == b.newest[touched]

    def _warn_unseen(self, names: list[str]) -> None:
        line = unseen_entities_warning(self.model, unseen_entities(self.model, names))
        if line:
            log.warning(line)

    def _score(self, w: Windows, codes: np.ndarray, now: float, out: TickResult) -> None:
        b = self._buffers
        model = self.model
        if self._checked < len(b.names):
            self._warn_unseen(b.names[self._checked:])
            self._checked = len(b.names)
        scores = model.score_windows(w)
        out.windows += len(w)
        self.metrics.windows.inc(len(w))
        if self.on_windows is not None:
            self.on_windows(w, scores)
        t = w.end_ns // self.step_ns
        order = np.lexsort((t, codes))  # per entity, in time order
        if not (order == np.arange(len(order))).all():
            w, codes, scores, t = w.take(order), codes[order], scores[order], t[order]
        b.last_score[codes] = scores  # in time order per entity: the last one wins
        b.remember_scores(codes, t, scores)
        self._score_snapshot = (list(b.names), b.last_score.copy())
        push = self.gate.select(w.entity, w.end_ns, scores)
        if self.book.firing:
            # An entity with a firing alert is always followed: were its event's state lost
            # (a restart without it), its later windows still resolve the alert.
            firing = [b.index[n] for n in {f["entity"] for f in self.book.firing.values()}
                      if n in b.index]
            push |= np.isin(codes, firing)
        if not push.any():
            return
        if not push.all():
            w, scores = w.take(push), scores[push]
        closed = self.builder.push(w.entity, w.end_ns, scores, model.payload(w))
        self._closed(closed, now, out)
        self._opened(sorted({str(e) for e in w.entity}), now, out)

    # -- events and alerts ----------------------------------------------------------

    def _diagnose(self, raw: RawEvent, status: str) -> Event:
        ev = self.model.to_event(raw, status=status)
        self._incidents().assign(ev)
        if self.engine is not None:
            pb = self.engine.playbooks.match(ev)
            ev.playbook = pb.name if pb is not None else None
        return ev

    def _incidents(self) -> LiveGrouper:
        """The live incident grouper (made on first use, from the model's config)."""
        grouper = self.__dict__.get("_grouper")
        if grouper is None:
            grouper = self.__dict__["_grouper"] = LiveGrouper(grouping_for(self.model))
        return grouper

    def _severity(self, cause: str) -> str:
        return self.config.severity.get(cause, self.config.default_severity)

    def _record(self, ev: Event, status: str, now: float, cause: str, severity: str,
                revision: int, previous: str | None = None,
                previous_severity: str | None = None, group: str | None = None
                ) -> dict[str, Any]:
        return alert_record(ev, status, now, cause=cause, severity=severity, revision=revision,
                            model_version=self.model.version,
                            step_s=self.step_ns / 1e9, previous_cause=previous,
                            previous_severity=previous_severity, group=group)

    def _closed(self, closed: list[RawEvent], now: float, out: TickResult) -> None:
        book = self.book
        for raw in closed:
            ev = self._diagnose(raw, "resolved")
            with book.lock:
                entry = book.firing.pop(ev.id, None)
                if entry is None and ev.id in book.resolved:
                    continue  # replayed after a restart: already resolved
                if entry is None and self._warmup_tick:
                    # Began and ended in the history read at start: the past, not an alert.
                    book.remember_resolved(ev.id)
                    out.warmup.append(ev)
                    continue
                if entry is not None:
                    rec = self._record(ev, "resolved", now, entry["cause"], entry["severity"],
                                       entry["revision"], group=entry.get("group"))
                    book.emit(rec)
                else:
                    self._caught_up(ev, now)
                    rec = book.deferred[ev.id]["record"]
                book.remember_resolved(ev.id)
            out.resolved.append(ev)
            self.metrics.alerts.labels("resolved").inc()
            log.info("resolved %s %s %s (started %s)", ev.id, ev.entity, rec["cause"],
                     rec["starts_at"])

    def _caught_up(self, ev: Event, now: float) -> None:
        """An event that opened and ended inside one tick (the loop catching up): it fires
        now, and its resolve waits ``min_firing`` (AlertBook.deferred), so that a receiver
        that groups before notifying sees it firing."""
        cause, severity = ev.cause, self._severity(ev.cause)
        opened = copy.copy(ev)
        opened.status = "open"
        self.book.emit(self._record(opened, "firing", now, cause, severity, 0))
        self.metrics.alerts.labels("firing").inc()
        self.book.deferred[ev.id] = {
            "due": now + self.config.min_firing,
            "record": self._record(ev, "resolved", now, cause, severity, 0)}
        log.info("opened and ended while catching up: %s %s %s (started %s): firing now, "
                 "resolved in %.0fs", ev.id, ev.entity, cause, ev.start,
                 self.config.min_firing)

    def _warmup_summary(self, events: list[Event]) -> None:
        shown = ", ".join(f"{e.entity} {e.cause} {e.start}..{e.end}" for e in events[:5])
        more = f" and {len(events) - 5} more" if len(events) > 5 else ""
        log.info("warm-up: %d event(s) in the history read at start had ended before the "
                 "watch started: not alerted (%s%s)", len(events), shown, more)

    def _opened(self, names: list[str], now: float, out: TickResult) -> None:
        book = self.book
        current = {}
        for raw in self.builder.open_events(names):
            ev = self._diagnose(raw, "open")
            current[ev.id] = (ev, raw)
        for ev_id, (ev, raw) in current.items():
            with book.lock:
                if ev_id in book.resolved:
                    continue
                entry = book.firing.get(ev_id)
                if entry is None:
                    cause = ev.cause
                    rec = self._record(ev, "firing", now, cause, self._severity(cause), 0)
                    book.firing[ev_id] = {"entity": ev.entity, "cause": cause,
                                          "severity": self._severity(cause), "revision": 0,
                                          "group": rec["group"],
                                          "end_slot": int(raw.end_ns // self.step_ns),
                                          "record": rec, "actionable": self._actionable(ev)}
                    book.emit(rec)
                    new = True
                else:
                    entry["end_slot"] = int(raw.end_ns // self.step_ns)
                    new = False
                    # The engine skipped it as too unsure; the diagnosis, sharper with more
                    # windows, now clears its playbook's bar: decide again (once).
                    if ev.cause == entry["cause"] and not entry.get("actionable", True) \
                            and self._actionable(ev):
                        entry["actionable"] = True
                        log.info("%s %s now %s at confidence %.2f: deciding again", ev_id,
                                 ev.entity, ev.cause, ev.confidence)
                        self._submit(ev)
                    # A firing alert changes identity only for a real diagnosis (never back to
                    # 'unknown'): the old label set is resolved, the new one fires, same id.
                    if ev.cause != entry["cause"] and ev.cause != UNKNOWN:
                        prev, prev_severity = entry["cause"], entry["severity"]
                        entry["revision"] += 1
                        entry["cause"] = ev.cause
                        entry["severity"] = self._severity(ev.cause)
                        rec = self._record(ev, "firing", now, ev.cause, entry["severity"],
                                           entry["revision"], previous=prev,
                                           previous_severity=prev_severity,
                                           group=entry.get("group"))
                        entry["record"] = rec
                        entry["actionable"] = self._actionable(ev)
                        book.emit(rec)
                        log.info("revised %s %s: %s -> %s", ev_id, ev.entity, prev, ev.cause)
                        self._submit(ev)
            if new:
                out.opened.append(ev)
                self.metrics.alerts.labels("firing").inc()
                log.info("opened %s %s %s (confidence %.2f, score %.3f, top %s)", ev_id,
                         ev.entity, ev.cause, ev.confidence, ev.score,
                         ", ".join(ev.top_metrics))
                self._submit(ev)
        # An alert whose event is neither open nor closed any more (its builder state was
        # lost) resolves once its entity has gone past it by the merge gap: the same rule.
        pushed = set(names)
        newest = {n: last // self.step_ns for n in names
                  if (last := self.builder.last_ns(n)) is not None}
        for ev_id, entry in list(book.firing.items()):
            ent = entry["entity"]
            if ent in pushed and ev_id not in current and ent in newest and \
                    newest[ent] - int(entry["end_slot"]) > self.model.event_rules.merge_gap:
                with book.lock:
                    book.firing.pop(ev_id, None)
                    prev = Event.from_dict(entry["record"]["event"])
                    prev.status = "resolved"
                    rec = self._record(prev, "resolved", now, entry["cause"],
                                       entry["severity"], entry["revision"],
                                       group=entry.get("group"))
                    book.remember_resolved(ev_id)
                    book.emit(rec)
                out.resolved.append(prev)
                self.metrics.alerts.labels("resolved").inc()
                log.info("resolved %s %s (its event state was lost)", ev_id, ent)

    # -- recovery ------------------------------------------------------------------

    def _actionable(self, ev: Event) -> bool:
        """Whether a playbook takes ``ev`` at its confidence (no engine: nothing to redo);
        :meth:`_diagnose` has matched it already."""
        return self.engine is None or ev.playbook is not None

    def _submit(self, item: Event | str) -> None:
        if self.engine is None:
            return
        if self._engine_thread is None:
            self._engine_thread = threading.Thread(target=self._engine_loop,
                                                   name="ftml-recover", daemon=True)
            self._engine_thread.start()
        self._engine_q.put(copy.deepcopy(item))

    def _engine_loop(self) -> None:
        while True:
            item = self._engine_q.get()
            if item is None:
                return
            self._engine_busy.set()
            try:
                if item == "poll":
                    for d in self.engine.poll():
                        self._decided(d)
                else:
                    self._handle(item)
            except Exception:
                log.exception("recovery engine failed")
                self.metrics.errors.labels("engine", "recover").inc()
            finally:
                self._engine_busy.clear()

    def _handle(self, ev: Event) -> None:
        # A decision that acted (or would have) is never taken twice for one event, also
        # not after a restart: the engine's audit, in its database, says so.
        for rec in self.engine.audit.read(event_id=ev.id):
            if rec["kind"] == "decision" and rec["decision"] != "skip":
                log.info("event %s already decided (%s): not again", ev.id, rec["decision"])
                return
        self._decided(self.engine.handle(ev))

    def _decided(self, d: Any) -> None:
        self.metrics.actions.labels(d.decision).inc()
        log.info("recovery: %s", d)

    def _maybe_poll_engine(self, now: float) -> None:
        """Approvals given elsewhere (``ftml approve``) run on the engine's next poll."""
        if self.engine is None or now - self._last_engine_poll < self.config.engine_poll_every:
            return
        self._last_engine_poll = now
        if self._engine_q.empty() and not self._engine_busy.is_set():
            self._submit("poll")

    def wait_engine(self, timeout: float = 10.0) -> bool:
        """Block until queued recovery work is done (tests, and before exiting)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._engine_q.empty() and not self._engine_busy.is_set():
                return True
            time.sleep(0.01)
        return False

    # -- after each tick -----------------------------------------------------------

    def _after_tick(self, now: float, out: TickResult, started: float) -> None:
        self.ticks += 1
        self.last_tick_at = now
        self.metrics.ticks.inc()
        self._note_health(now, out)
        self._end_warmup(out)
        self.book.release(now)
        self.metrics.open_events.set(len(self.book.firing))
        b = self._buffers
        if len(b.ts):
            self.metrics.lag.set(now - b.ts.max() / 1e9)
        if self.book.dirty:
            self.book.save()  # before any delivery: nothing raised is ever lost
        if self._delivery is None:
            self.book.deliver(now, self.metrics,
                              (self.config.backoff_initial, self.config.backoff_max))
        else:
            self._wake.set()
        self._maybe_poll_engine(now)
        out.seconds = time.perf_counter() - started
        self.metrics.tick_seconds.observe(out.seconds)

    def _end_warmup(self, out: TickResult) -> None:
        if out.warmup:
            self._warmup_summary(out.warmup)
        self._warmup_tick = False

    def _note_health(self, now: float, out: TickResult) -> None:
        before = self._health.reasons
        reasons = self._health.update(now, self._tick_vals, out.windows)
        self._tick_vals = []
        for key in DEGRADED_REASONS:
            self.metrics.degraded.labels(key).set(int(key in reasons))
            if key in reasons:
                self.metrics.degraded_ticks.labels(key).inc()
                if key not in before:
                    log.warning("degraded: %s", reasons[key])
            elif key in before:
                log.info("no longer degraded: %s", key.replace("_", " "))

    def _start_delivery(self) -> None:
        if self._delivery is not None or not self.sinks:
            return

        def loop() -> None:
            while not self._stopping:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                if self._stopping:
                    return
                try:
                    self.book.deliver(self.clock.now(), self.metrics,
                                      (self.config.backoff_initial, self.config.backoff_max))
                except Exception:
                    log.exception("delivery failed")

        self._delivery = threading.Thread(target=loop, name="ftml-deliver", daemon=True)
        self._delivery.start()

    # -- state ---------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Write buffers, event builder, progress and source positions atomically."""
        if self.state_dir is None:
            return
        try:
            with atomic_path(self.state_dir / CHECKPOINT_FILE) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, **self._checkpoint_arrays())  # straight to disk: no copy in memory
        except (OSError, FtmlError) as exc:  # a full disk must not stop the loop: retried
            log.error("checkpoint failed: %s", exc)
            self.metrics.errors.labels("loop", "checkpoint").inc()
        self._last_checkpoint = self.clock.now()

    def _checkpoint_arrays(self) -> dict[str, np.ndarray]:
        b = self._buffers
        # The builder's state (EventBuilder.state_dict): its arrays as "b_*", the rest in meta.
        builder = self.builder.state_dict()
        gate = self.gate.state_dict()
        meta = {"format": CHECKPOINT_FORMAT, "model_version": self.model.version,
                "metrics": b.metrics, "step_ns": self.step_ns, "entities": b.names,
                "gate": {"version": gate["version"], "entities": gate["entities"]},
                "builder": {k: v for k, v in builder.items() if not isinstance(v, np.ndarray)},
                "sources": {s.name: s.state() for s in self.sources},
                "ticks": self.ticks_before + self.ticks, "saved_at": self.clock.now()}
        return {
            "meta": np.frombuffer(json.dumps(meta, default=str).encode(), dtype=np.uint8),
            "ent": b.ent, "ts": b.ts, "vals": b.vals,
            **{f"e_{k}": getattr(b, k) for k in b.ARRAYS},
            **{f"b_{k}": v for k, v in builder.items() if isinstance(v, np.ndarray)},
            "g_last_flag": gate["last_flag"],
        }

    def _restore(self) -> None:
        path = self.state_dir / CHECKPOINT_FILE
        if not path.exists():
            return
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            meta = json.loads(arrays["meta"].tobytes().decode())
        except (OSError, ValueError, KeyError) as exc:
            log.error("%s: unreadable checkpoint (%s): starting fresh", path, exc)
            return
        for s in self.sources:
            st = (meta.get("sources") or {}).get(s.name)
            if st:
                s.restore(st)
        if meta.get("format") != CHECKPOINT_FORMAT:
            log.warning("checkpoint is of another ftml (format %s, this one writes %s): buffers "
                        "and events start afresh; firing alerts resolve as their entities "
                        "move on", meta.get("format"), CHECKPOINT_FORMAT)
            return
        if meta.get("model_version") != self.model.version or \
                meta.get("metrics") != self._buffers.metrics or \
                meta.get("step_ns") != self.step_ns:
            log.warning("checkpoint is of another model (%s): buffers and events start "
                        "afresh", meta.get("model_version"))
            return
        builder = {**(meta.get("builder") or {}),
                   **{k[2:]: v for k, v in arrays.items() if k.startswith("b_")}}
        try:
            self.builder.load_state(builder)
            self.gate.load_state({**(meta.get("gate") or {}),
                                  "last_flag": arrays.get("g_last_flag", np.empty(0))})
        except (FtmlError, KeyError, ValueError, TypeError) as exc:  # damaged or foreign
            log.warning("checkpoint's event state is unusable (%s): buffers and events start "
                        "afresh", exc)
            self.builder = self.model.event_builder()
            self.gate = gate_of(self.model)
            return
        b = self._buffers
        b.codes(meta["entities"])
        b._rebuild(arrays["ent"], arrays["ts"], arrays["vals"])
        for key in b.ARRAYS:
            setattr(b, key, arrays[f"e_{key}"].copy())
        b.ring_ok[:] = False
        # Counted on, not restored: this process's counters start at 0 (as Prometheus
        # expects of a counter); /healthz shows what came before apart.
        self.ticks_before = int(meta.get("ticks") or 0)
        self.resumed_from = meta.get("saved_at")
        self._snapshot = (b.ent, b.ts, b.vals)
        self._score_snapshot = (list(b.names), b.last_score.copy())
        log.info("resumed from checkpoint of %s: %d entities, %d open alert(s)",
                 pd.Timestamp(meta.get("saved_at", 0), unit="s", tz="UTC"), len(b.names),
                 len(self.book.firing))

    # -- HTTP ----------------------------------------------------------------------

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Start ``/metrics`` and ``/healthz`` on host:port (port 0: any free one)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        watcher = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, ctype, code = generate_latest(watcher.registry), CONTENT_TYPE_LATEST, 200
                elif path == "/healthz":
                    code, info = watcher.health()
                    body, ctype = (json.dumps(info) + "\n").encode(), "application/json"
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # scrapes are not news
                pass

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:  # in use, no such address, a port under 1024 without root
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                              where="--listen", hint="choose a free HOST:PORT") from None
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="ftml-http",
                         daemon=True).start()
        bound = self._server.server_address[:2]
        log.info("serving /metrics and /healthz on http://%s:%d", bound[0], bound[1])
        return bound[0], bound[1]

    def health(self) -> tuple[int, dict[str, Any]]:
        now = self.clock.now()
        since = now - (self.last_tick_at if self.last_tick_at is not None else self.started_at)
        ok = since <= 3 * self.interval + 5
        reasons = dict(self._health.reasons)
        status = "stalled" if not ok else "degraded" if reasons else "ok"
        return (200 if ok else 503), {
            "status": status, "reasons": list(reasons.values()),
            # Of this process, as the counters of /metrics; the runs before apart.
            "ticks": self.ticks, "started_at": _iso(self.started_at),
            "resumed": None if self.resumed_from is None else {
                "checkpoint_at": _iso(self.resumed_from), "ticks_before": self.ticks_before},
            "seconds_since_tick": round(since, 3), "open_events": len(self.book.firing),
            "queued_alerts": self.book.pending(),
            "sources": {s.name: ("up" if self._src_failures[s.name] == 0 else "failing")
                        for s in self.sources}}


# --------------------------------------------------------------------------- helpers


def _iso(seconds: float) -> str:
    return pd.Timestamp(seconds, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def _with_stride(fz, stride: int):
    out = copy.copy(fz)
    out.stride = stride
    return out


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"cannot read --listen {text!r}", hint="write HOST:PORT, e.g. "
                          "127.0.0.1:9109")
    return host or "127.0.0.1", int(port)
