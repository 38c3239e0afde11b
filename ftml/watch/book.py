"""The alert ledger: alerts raised (firing, recently resolved), resolves held back, events held
back from recovery while their incident group gathers, and per sink the queue of records not
yet delivered; saved atomically to ``STATE/alerts.json`` before any of them is sent, then
delivered with backoff."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ftml.errors import FtmlError
from ftml.io import write_text
from ftml.sinks import Sink, SinkError
from ftml.watch.metrics import WatchMetrics

log = logging.getLogger("ftml.watch")  # one logger for the whole loop: what users filter on


ALERTS_FILE = "alerts.json"
# 2: with "held" (events waiting for their incident group's hold to end) and "released"
# (groups whose hold has ended); a format-1 file reads as one with neither.
STATE_FORMAT = 2
#: Groups whose hold has ended remembered, so that their later events are decided at once.
RELEASED_MEMORY = 2_000
#: Resolved alert ids remembered so that a replay after a restart does not raise them again.
RESOLVED_MEMORY = 20_000


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
        # Events held back from recovery (Watcher's group_wait): event id -> {"event": the
        # latest Event.to_dict(), "entity", "due_slot": the step its entity's data must reach,
        # "due_at": seconds, the latest the hold lasts if that data does not come}.
        self.held: dict[str, dict[str, Any]] = {}
        # Incident groups whose hold has ended: group id -> when (seconds).
        self.released: OrderedDict[str, float] = OrderedDict()
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
        self.held = dict(data.get("held") or {})
        self.released = OrderedDict(data.get("released") or {})
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
                               "held": self.held, "released": self.released,
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

    def remember_released(self, group: str, at: float) -> None:
        self.released[group] = at
        self.released.move_to_end(group)
        while len(self.released) > RELEASED_MEMORY:
            self.released.popitem(last=False)
        self.dirty = True

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
