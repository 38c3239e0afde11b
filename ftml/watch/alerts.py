"""The alert lifecycle: an event opened by the builder fires an alert, a sharper diagnosis
revises it (same id, new label set), its end resolves it; events of the warm-up history
and events lost with their builder state are settled here too."""

from __future__ import annotations

import copy
import logging
from typing import Any

from ftml.detect import RawEvent
from ftml.diagnose import UNKNOWN
from ftml.events import Event
from ftml.incidents import LiveGrouper, grouping_for
from ftml.sinks import alert_record
from ftml.watch.results import TickResult

log = logging.getLogger("ftml.watch")  # one logger for the whole loop: what users filter on


class AlertsMixin:
    """Events -> alerts in the :class:`~ftml.watch.book.AlertBook` (a part of :class:`Watcher`)."""

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
            self._refresh_held([ev])  # held for its group: decided (as over) when it ends
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
        # Each event was grouped with those diagnosed before it: an event opening later in
        # this tick may join (and re-rank) its group, so every event takes the group that all
        # of this tick's events make before it fires or reaches the engine.
        grouper = self._incidents()
        for ev, _ in current.values():
            grouper.assign(ev)
        self._refresh_held([ev for ev, _ in current.values()])
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
