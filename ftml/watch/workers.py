"""The threads beside the loop: the recovery engine's (one queue of events to decide, and
polls for approvals given elsewhere) and alert delivery's."""

from __future__ import annotations

import copy
import logging
import threading
import time
from typing import Any

from ftml.events import Event

log = logging.getLogger("ftml.watch")  # one logger for the whole loop: what users filter on


class WorkersMixin:
    """Recovery and delivery off the loop's thread (a part of :class:`Watcher`)."""

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
