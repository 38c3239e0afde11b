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

The loop is :class:`ftml.watch.loop.Watcher`, made of one module per job; each imports only
the ones above it:

* ``waker``: wakes the loop early, from a signal handler or a source's reader thread;
* ``config``: the loop's settings (``WatchConfig``, the ``watch:`` section);
* ``results``: what one tick did (``TickResult``);
* ``health``: whether the loop can do its work (``/healthz``'s "degraded" reasons);
* ``metrics``: the loop's own Prometheus metrics;
* ``buffers``: the rows kept per entity, its progress, the fast path's ring, the last scores;
* ``book``: the alert ledger and the per-sink delivery queues (``alerts.json``);
* ``alerts``: the alert lifecycle: open, revise, resolve;
* ``scoring``: rows -> windows -> scores -> the event builder, by the batch functions;
* ``polling``: reading the sources, with backoff;
* ``workers``: the recovery and delivery threads;
* ``checkpoint``: ``watch.npz``, written and restored;
* ``server``: ``/metrics`` and ``/healthz``;
* ``lifecycle``: start checks, work between ticks, stop and shutdown;
* ``loop``: ``Watcher``: its state, one tick, and ``run()``.

:func:`ftml.api.watch` builds a Watcher from sources, sinks and playbooks and runs it. Every
public name is importable from ``ftml.watch`` itself.
"""

from __future__ import annotations

from ftml.watch.book import ALERTS_FILE, RESOLVED_MEMORY, STATE_FORMAT, AlertBook
from ftml.watch.buffers import BufferReader
from ftml.watch.checkpoint import CHECKPOINT_FILE, CHECKPOINT_FORMAT
from ftml.watch.config import WATCH_KEYS, WatchConfig
from ftml.watch.health import DEGRADED_REASONS
from ftml.watch.loop import Watcher
from ftml.watch.metrics import WatchMetrics
from ftml.watch.results import TickResult
from ftml.watch.server import parse_listen
from ftml.watch.waker import Waker

__all__ = [
    "ALERTS_FILE", "CHECKPOINT_FILE", "CHECKPOINT_FORMAT", "DEGRADED_REASONS", "RESOLVED_MEMORY",
    "STATE_FORMAT", "WATCH_KEYS", "AlertBook", "BufferReader", "TickResult", "Waker",
    "WatchConfig", "WatchMetrics", "Watcher", "parse_listen",
]
