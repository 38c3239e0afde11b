"""The threads beside the loop: the recovery engine's (one queue of events to decide, and
polls for approvals given elsewhere) and alert delivery's; and the hold before an incident
group is decided (``group_wait``)."""

from __future__ import annotations

import copy
import logging
import threading
from typing import Any

import pandas as pd

from ftml.diagnose import NOT_A_CAUSE
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
        if isinstance(item, Event) and self._hold(item):
            return
        self._enqueue(item)

    # -- the hold before a new incident group is decided ---------------------------------

    @property
    def group_wait(self) -> int:
        """Steps a new incident group is held before recovery decides on it (0: none)."""
        wait = self.config.group_wait
        return int(self.model.config.diagnose.group_gap) + 1 if wait is None else int(wait)

    def _hold(self, ev: Event) -> bool:
        """Hold ``ev`` back if its incident group is still gathering: the group's first event
        that a playbook takes starts the hold, and every event of the group that comes before
        it ends is held with it; a held event is replaced by its latest version. True when
        held."""
        wait = self.group_wait
        if wait <= 0 or not ev.group:
            return False
        book = self.book
        if ev.id not in book.held and (ev.cause in NOT_A_CAUSE or ev.playbook is None):
            # The engine skips it whatever its group (no fault named, or no playbook takes
            # it): decided now, and no hold starts for its group.
            return False
        with book.lock:
            held = book.held.get(ev.id)
            if held is not None:
                held["event"] = ev.to_dict()
                book.dirty = True
                return True
            if ev.group in book.released:
                return False  # its group has been decided: this event joins it at once
            b = self._buffers
            code = b.index.get(ev.entity)
            newest = int(b.newest[code]) if code is not None else int(
                pd.Timestamp(ev.end).value // self.step_ns)
            book.held[ev.id] = {"event": ev.to_dict(), "entity": ev.entity,
                                "due_slot": newest + wait,
                                # A source that stops must not hold recovery back for long.
                                "due_at": self.clock.now() + 2 * wait * self.step_ns / 1e9}
            book.dirty = True
        log.info("holding %s %s %s for incident %s: decided once %d more step(s) of data "
                 "have come", ev.id, ev.entity, ev.cause, ev.group, wait)
        return True

    def _refresh_held(self, events: list[Event]) -> None:
        """The latest diagnosis of held events (re-diagnosed every tick while open), by the
        alert's rule: a held event takes a new diagnosis that a playbook takes too, never one
        that falls back to ``unknown`` (a young event's diagnosis wavers; without the hold
        the engine would have decided on the sure one). One that has ended is held as ended."""
        book = self.book
        with book.lock:
            for ev in events:
                held = book.held.get(ev.id)
                if held is None:
                    continue
                if ev.status == "resolved":
                    held["event"] = {**held["event"], "status": "resolved",
                                     "end": ev.to_dict()["end"]}
                elif ev.cause not in NOT_A_CAUSE and ev.playbook is not None:
                    held["event"] = ev.to_dict()
                else:
                    continue
                book.dirty = True

    def _release_held(self, now: float, everything: bool = False) -> None:
        """Hand the events of every incident group whose hold has ended to the engine, with the
        group and suspects that all the events that came meanwhile make, the top suspect's
        event first (the engine acts on the root; the others are its symptoms).
        ``everything``: at the end of the stream, no more data will come."""
        book = self.book
        with book.lock:
            if not book.held:
                return
            held = {k: dict(v) for k, v in book.held.items()}
        latest = self._incidents().result_
        b = self._buffers
        groups: dict[str, list[tuple[Event, str]]] = {}
        due: dict[str, bool] = {}
        for ev_id, h in held.items():
            ev = Event.from_dict(h["event"])
            first = ev.group
            if ev_id in latest:  # regrouped since: the group and ranking as they stand now
                ev.group, suspects, evidence = latest[ev_id]
                ev.suspects, ev.evidence = [list(x) for x in suspects], list(evidence)
            code = b.index.get(h["entity"])
            ready = everything or now >= float(h["due_at"]) or (
                code is not None and int(b.newest[code]) >= int(h["due_slot"]))
            groups.setdefault(ev.group, []).append((ev, first))
            due[ev.group] = due.get(ev.group, False) or ready
        for gid, members in groups.items():
            if not due[gid]:
                continue
            top = str(members[0][0].suspects[0][0]) if members[0][0].suspects else None
            members.sort(key=lambda m: (m[0].entity != top, m[0].start, m[0].entity))
            with book.lock:
                for ev, first in members:
                    book.held.pop(ev.id, None)
                    book.remember_released(first, now)
                book.remember_released(gid, now)
            log.info("incident %s: hold over, deciding %d event(s) (%s); top suspect %s", gid,
                     len(members), ", ".join(ev.entity for ev, _ in members), top)
            for ev, _ in members:
                self._enqueue(ev)

    def _enqueue(self, item: Event | str) -> None:
        if self._engine_thread is None:
            self._engine_thread = threading.Thread(target=self._engine_loop,
                                                   name="ftml-recover", daemon=True)
            self._engine_thread.start()
        item = copy.deepcopy(item)
        with self._engine_idle:
            self._engine_pending += 1
        self._engine_q.put(item)

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
                with self._engine_idle:
                    self._engine_pending -= 1
                    self._engine_idle.notify_all()

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
        """Block until queued recovery work is done (tests, and before exiting). Counted from
        enqueue to the end of handling: an item the engine thread has taken off the queue but
        not yet begun is still pending (the queue is empty then, and busy not yet set)."""
        with self._engine_idle:
            return self._engine_idle.wait_for(lambda: self._engine_pending == 0, timeout)

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
