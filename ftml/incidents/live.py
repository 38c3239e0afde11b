"""Grouping for ``ftml watch``: events arrive one at a time and are regrouped with the same
function as batch scoring (:class:`LiveGrouper`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ftml.events import Event
from ftml.incidents.grouping import ONSET_LOOKBACK, Grouping, reads_scores
from ftml.incidents.groups import assign_groups
from ftml.incidents.trail import ScoreTrail

#: Events a live grouper keeps: those that started at most this long before the newest.
LIVE_HORIZON = pd.Timedelta(hours=6)


#: ... and at most this many (the oldest go first).
LIVE_MAX_EVENTS = 2000


class LiveGrouper:
    """Grouping for ``ftml watch``: events arrive one at a time (each tick re-diagnoses the
    open ones); :meth:`assign` keeps the latest version of each recent event and groups them
    all again, so an event gets the group and suspects that ``ftml score`` would give over the
    same events. A group can still change while its events arrive: an event that starts
    earlier but opens later becomes the group's first, and the id follows it. A ranking that
    reads window scores (:data:`ONSET_RANKINGS`) reads those given to :meth:`add_scores`
    (the watch loop's scored windows, kept over the horizon and the onset lookback); new
    scores make the next :meth:`assign` group again."""

    def __init__(self, grouping: Grouping, horizon: pd.Timedelta = LIVE_HORIZON,
                 max_events: int = LIVE_MAX_EVENTS):
        self.grouping = grouping
        self.horizon = horizon
        self.max_events = max_events
        self.events_: dict[str, Event] = {}
        self.result_: dict[str, tuple] = {}  # id -> (group, suspects, evidence), while valid
        self.scores_ = ScoreTrail() if reads_scores(grouping) else None
        self._scores_seen = -1  # the trail version the cached result was grouped with
        self._scored_until: int | None = None  # the newest scored window's end (ns)

    def add_scores(self, names, codes: np.ndarray, end_ns: np.ndarray,
                   scores: np.ndarray) -> None:
        """Scored windows (see :meth:`ScoreTrail.add`), when the ranking reads them. The
        horizon then runs back from the newest window too (:meth:`assign` forgets the events
        that began before it); scores before it and the onset lookback are forgotten here, so
        that a kept event is never ranked without the scores of its onset."""
        if self.scores_ is None or not len(codes):
            return
        self.scores_.add(names, codes, end_ns, scores)
        newest = max(int(np.max(end_ns)), self._scored_until or np.iinfo(np.int64).min)
        self._scored_until = newest
        cut = newest - int(self.horizon.value)
        self.scores_.trim(cut - int((self.grouping.step * ONSET_LOOKBACK[0]).value))

    def assign(self, event: Event) -> Event:
        """Set ``group``, ``suspects`` and ``evidence`` on ``event`` (in place; returned)."""
        known = self.events_.get(event.id)
        fresh = self.scores_ is None or self.scores_.version == self._scores_seen
        if (known is not None and fresh and _same_for_grouping(known, event)
                and event.id in self.result_):
            # Nothing the grouping reads has changed since the last regrouping (the common
            # case: an open event seen again on the next tick).
            event.group, suspects, evidence = self.result_[event.id]
            event.suspects, event.evidence = [list(x) for x in suspects], list(evidence)
            return event
        self.events_[event.id] = dataclasses.replace(event)
        newest = max(pd.Timestamp(e.start) for e in self.events_.values())
        if self._scored_until is not None:  # the horizon runs back from the newest window too
            newest = max(newest, pd.Timestamp(self._scored_until, tz="UTC"))
        kept = sorted((e for e in self.events_.values()
                       if pd.Timestamp(e.start) >= newest - self.horizon),
                      key=lambda e: pd.Timestamp(e.start))[-self.max_events:]
        self.events_ = {e.id: e for e in kept}
        if event.id not in self.events_:  # older than everything kept: grouped on its own
            kept = [dataclasses.replace(event)]
        work = [dataclasses.replace(e) for e in kept]
        assign_groups(work, self.grouping, self.scores_)
        self._scores_seen = self.scores_.version if self.scores_ is not None else -1
        self.result_ = {e.id: (e.group, e.suspects, e.evidence) for e in work}
        mine = next(e for e in work if e.id == event.id)
        event.group, event.suspects, event.evidence = mine.group, mine.suspects, mine.evidence
        return event


def _same_for_grouping(a: Event, b: Event) -> bool:
    return (a.entity, a.start, a.end, a.score, a.top_z, a.top_metrics, a.cause) == \
        (b.entity, b.start, b.end, b.score, b.top_z, b.top_metrics, b.cause)
