"""The :class:`Watcher`: the loop's state, one tick, and ``run()`` ticking every interval.
Its other jobs are the mixins of the modules before this one."""

from __future__ import annotations

import copy
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ftml.bundle import Model
from ftml.detect import EventBuilder, FlagGate
from ftml.errors import FtmlError
from ftml.features import Windows
from ftml.pipeline import carry_steps, gate_of
from ftml.recover import SystemClock
from ftml.sinks import Sink
from ftml.sources import Source
from ftml.watch.alerts import AlertsMixin
from ftml.watch.book import ALERTS_FILE, AlertBook
from ftml.watch.buffers import BufferReader, Buffers
from ftml.watch.checkpoint import CheckpointMixin
from ftml.watch.config import WatchConfig
from ftml.watch.health import DEGRADED_REASONS, Health
from ftml.watch.lifecycle import LifecycleMixin
from ftml.watch.metrics import ScoreCollector, WatchMetrics
from ftml.watch.polling import PollingMixin
from ftml.watch.results import TickResult
from ftml.watch.scoring import ScoringMixin
from ftml.watch.server import ServerMixin
from ftml.watch.waker import Waker
from ftml.watch.workers import WorkersMixin

log = logging.getLogger("ftml.watch")  # one logger for the whole loop: what users filter on


class Watcher(PollingMixin, ScoringMixin, AlertsMixin, WorkersMixin, CheckpointMixin,
              ServerMixin, LifecycleMixin):
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
        self.registry.register(ScoreCollector(self))

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
        self._buffers = Buffers(list(model.metrics), self.step_ns, self.keep_steps,
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
        self._health = Health(list(model.metrics), self.started_at, self.interval,
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
        # Items enqueued and not yet handled, under this condition: wait_engine wakes when
        # the engine thread finishes the last one, instead of polling the queue.
        self._engine_idle = threading.Condition()
        self._engine_pending = 0
        self._last_engine_poll = 0.0
        self._server: ThreadingHTTPServer | None = None
        if engine is not None and getattr(engine, "metrics", None) is None:
            engine.metrics = BufferReader(self, max_age=3 * model.step.total_seconds())
        if self.state_dir is not None:
            self._restore()
        self.metrics.open_events.set(len(self.book.firing))

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
        # No more data can join a held group: decide it now, while its events are open.
        self._release_held(now, everything=True)
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
        if self.engine is not None:
            self._release_held(now)
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


def _with_stride(fz, stride: int):
    out = copy.copy(fz)
    out.stride = stride
    return out
