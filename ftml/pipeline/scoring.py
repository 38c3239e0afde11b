"""Scoring: normalised frames -> windows -> scores -> gate -> event sink (:class:`WindowScorer`),
and the end of a scoring run that every driver shares (:func:`finish_scoring`)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from ftml.bundle import Model
from ftml.detect import FlagGate
from ftml.events import Event
from ftml.features import (
    Windows,
    window_stats,
    window_view,
)
from ftml.incidents import Grouping, ScoreTrail, assign_groups, groups_table
from ftml.io import to_ns, write_records, write_table
from ftml.pipeline.plan import gate_of

# Rows a batch score holds at most per chunk by default.
SCORE_CHUNK_ROWS = 1_000_000
# Rows of a normalised chunk standardised and featurized at a time.
FEATURE_BLOCK_ROWS = 131_072




class EventSink(Protocol):
    """Where gated windows go: an :class:`~ftml.detect.EventBuilder`, or a recorder that keeps
    them for another process's builder (Dask)."""

    def push(self, entity: np.ndarray, end_ns: np.ndarray, scores: np.ndarray,
             payload: np.ndarray) -> list: ...


class WindowRecorder:
    """An :class:`EventSink` that keeps what it is pushed (the windows an event could use,
    with their features), to be pushed later into a builder elsewhere."""

    def __init__(self) -> None:
        self.parts: list[tuple] = []

    def push(self, entity, end_ns, scores, payload) -> list:
        self.parts.append((entity, end_ns, scores, payload))
        return []

    def arrays(self, n_payload: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(entity, end_ns, scores, payload) of everything pushed, in push order."""
        if not self.parts:
            return (np.empty(0, object), np.empty(0, np.int64), np.empty(0),
                    np.empty((0, n_payload)))
        entity, end_ns, scores = (np.concatenate([p[k] for p in self.parts]) for k in range(3))
        return entity, end_ns, scores, np.vstack([p[3] for p in self.parts])


_NEVER = np.iinfo(np.int64).min
_END_OF_TIME = np.iinfo(np.int64).max


@dataclass
class ScoredBlock:
    """One block of scored windows (sorted by entity, then time), as drivers see it."""

    entity: np.ndarray  # names (object)
    end_ns: np.ndarray
    scores: np.ndarray
    flags: np.ndarray


class WindowScorer:
    """Normalised frames -> windows -> scores -> gate -> event sink: the scoring core.

    Every window is scored from the stats the forest sees alone. Only the windows the gate
    (:class:`~ftml.detect.FlagGate`) lets through go on to the sink, with all their features:
    the builder gives the same events as with every window, for a fraction of the features and
    of its work. :meth:`frame` takes a chunk with, per entity, the time after which its windows
    are new and up to which they are final, so the same windows come out exactly once however
    the rows are chunked. ``emit=False`` scores windows only to teach the gate their flags (a
    Dask task does that for the windows just before its slice). ``carry=True``: the frames
    come one after another from one stream whose chunks carry only the raw rows of
    :func:`~ftml.pipeline.chunk_carry_steps`; the trailing level's state is carried here
    (:class:`~ftml.features.LevelCarry`). ``trail``: every emitted window's score goes there
    too (a ranking of :data:`ftml.incidents.ONSET_RANKINGS` reads them)."""

    def __init__(self, model: Model, sink: EventSink, *, keep_blocks: bool = False,
                 gate: FlagGate | None = None, carry: bool = False,
                 trail: ScoreTrail | None = None):
        self.model = model
        self.trail = trail
        # Chunked scoring (frames of :func:`ftml.api.stream_frames`, which carry only the raw
        # rows of :func:`chunk_carry_steps`): the trailing level's state goes frame to frame.
        self.carry = model.featurizer.level_carry() if carry else None
        self.sink = sink
        self.keep_blocks = keep_blocks
        self.gate = gate if gate is not None else gate_of(model)
        self.stats = list(model.config.detect.stats)
        self.n_windows = 0
        self.n_flagged = 0  # windows at or over the threshold
        self.n_rows = 0  # rows of the normalised input, each counted once
        self.entities: set[str] = set()
        self.blocks: list[ScoredBlock] = []
        self._newest: dict[str, int] = {}  # each entity's newest row counted

    def frame(self, frame: pd.DataFrame, since: dict[str, int] | None,
              until: dict[str, int] | None, *, emit: bool = True) -> list:
        """Score one normalised chunk (windows after ``since`` and up to ``until`` per entity;
        None: no bound); returns what the sink returned (closed events, for a builder)."""
        model, fz = self.model, self.model.featurizer
        w = fz.window
        names = [str(c) for c in frame["entity"].cat.categories]
        if emit:
            self._count_rows(frame, names)
        out: list = []
        seen = np.zeros(len(names), dtype=bool)
        for blk in fz.window_blocks(frame, FEATURE_BLOCK_ROWS, since=since, until=until,
                                    carry=self.carry):
            end, z, values, c = blk.end, blk.z, blk.values, blk.codes
            if not len(end):
                continue
            win = None
            if model.scores_from_stats:
                scores = model.detector.anomaly_score(window_view(z, end, w, self.stats))
            else:  # a model that scores (or keeps) windows its own way gets them whole
                win = Windows(window_stats(z, end, w, fz.stats), blk.names[c], blk.end_ns, blk.rows,
                              values[end])
                scores = np.asarray(model.score_windows(win))
            if not emit:
                self.gate.select(blk.names[c], blk.end_ns, scores)
                continue
            self.n_windows += len(end)
            seen[c] = True
            flags = scores >= model.threshold
            self.n_flagged += int(np.count_nonzero(flags))
            near = self.gate.select(blk.names[c], blk.end_ns, scores)
            if near.any():
                e = end[near]
                if win is None:  # what Model.payload gives: all features, then last values
                    payload = np.hstack([window_stats(z, e, w, fz.stats), values[e]])
                else:
                    payload = model.payload(win.take(near))
                out.extend(self.sink.push(blk.names[c[near]], blk.end_ns[near], scores[near],
                                          payload))
            if self.keep_blocks:
                self.blocks.append(ScoredBlock(blk.names[c], blk.end_ns, scores, flags))
            if self.trail is not None:
                self.trail.add(blk.names, c, blk.end_ns, scores)
        self.entities.update(np.asarray(names, dtype=object)[seen].tolist())
        return out

    def _count_rows(self, frame: pd.DataFrame, names: list[str]) -> None:
        # Rows carried over from the chunk before were counted there.
        codes = frame["entity"].cat.codes.to_numpy().astype(np.int64)
        ts = to_ns(frame["timestamp"])
        if not len(ts):
            return
        before = np.array([self._newest.get(n, _NEVER) for n in names], dtype=np.int64)
        self.n_rows += int((ts > before[codes]).sum())
        newest = np.full(len(names), _NEVER, dtype=np.int64)
        np.maximum.at(newest, codes, ts)
        for n, t in zip(names, newest.tolist(), strict=True):
            if t != _NEVER:
                self._newest[n] = max(t, self._newest.get(n, _NEVER))

    def window_table(self) -> pd.DataFrame:
        """Every scored window: entity, timestamp, score, flag (sorted by entity, time)."""
        return window_table(self.blocks)


def window_table(blocks: list[ScoredBlock]) -> pd.DataFrame:
    if not blocks:
        return pd.DataFrame({"entity": [], "timestamp": [], "score": [], "flag": []})
    table = pd.DataFrame({
        "entity": np.concatenate([b.entity for b in blocks]).astype(str),
        "timestamp": pd.to_datetime(np.concatenate([b.end_ns for b in blocks]), unit="ns",
                                    utc=True),
        "score": np.concatenate([b.scores for b in blocks]),
        "flag": np.concatenate([b.flags for b in blocks])})
    return table.sort_values(["entity", "timestamp"], kind="stable").reset_index(drop=True)


@dataclass
class ScoreResult:
    events: list[Event]
    windows: int
    entities: int
    rows: int
    seconds: float
    window_table: pd.DataFrame | None = None
    flagged: int | None = None  # windows at or over the threshold (None: not counted)
    unseen: list[str] = field(default_factory=list)  # entities scored on the fleet baseline
    groups: list[dict] = field(default_factory=list)  # one record per incident group


def unseen_entities(model: Model, names: Iterable[str]) -> list[str]:
    """Of these entities, those the model has no baseline of (sorted): they are scored
    against the baseline of their stem's trained entities or the fleet's fallback
    (:class:`ftml.features.Baseline`)."""
    names = sorted(map(str, names))
    known = model.featurizer.baseline_.own_index(names)
    return [n for n, k in zip(names, known.tolist(), strict=True) if k < 0]


def unseen_entities_warning(model: Model, unseen: list[str], of: int | None = None
                            ) -> str | None:
    """The one line for entities not seen in training, and the baseline they get (None:
    there are none); ``of``: how many entities were scored, when known."""
    if not unseen:
        return None
    baseline = model.featurizer.baseline_
    hours = ", per hour of day" if baseline.by_hour else ""
    stems = baseline.borrowed_stems(unseen)
    fleet = [n for n, s in zip(unseen, stems, strict=True) if s is None]
    if len(fleet) < len(unseen):  # some borrow their stem's baseline
        pairs = [f"{n} -> {s}-*" for n, s in zip(unseen, stems, strict=True) if s is not None]
        shown = ", ".join(pairs[:3]) + (", ..." if len(pairs) > 3 else "")
        count = f"{len(unseen)} of {of} entities" if of else f"{len(unseen)} entities"
        rest = ("none against the fleet-wide baseline" if not fleet else
                f"the rest against the fleet-wide baseline (all training entities pooled"
                f"{hours}): {_names(fleet)}")
        return (f"{count} not in training: {len(pairs)} scored against the baseline of "
                f"their stem ({shown}), {rest}")
    one = len(unseen) == 1 and not of
    count = f"{len(unseen)} of {of} entities were" if of else (
        f"{len(unseen)} entit{'y was' if one else 'ies were'}")
    return (f"{count} not in training and {'is' if one else 'are'} scored against the "
            f"fleet-wide baseline (all training entities pooled{hours}): {_names(unseen)}")


def _names(names: list[str]) -> str:
    return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10
                                    else "")


def write_events(events: list[Event], out: str | Path | None) -> None:
    """Events to ``out`` (jsonl, csv or parquet), atomically; nothing when ``out`` is None."""
    if out is not None:
        write_records([e.to_dict() for e in events], out)


def publish_events(events: list[Event], matcher, grouping: Grouping | None = None,
                   scores: ScoreTrail | None = None) -> list[dict]:
    """Scored events, in place: each gets its incident group (:mod:`ftml.incidents`; a
    ranking that reads window scores reads ``scores``) and recommended playbook, sorted by
    entity and start (local and Dask scoring alike). Returns the group records."""
    groups = assign_groups(events, grouping, scores)
    for ev in events:
        ev.playbook = matcher(ev)
    events.sort(key=lambda e: (e.entity, e.start))
    return groups


def write_groups(groups: list[dict], out: str | Path | None) -> None:
    """One row per incident group to ``out``, atomically; nothing when ``out`` is None."""
    if out is not None:
        write_records(groups_table(groups), out)


def finish_scoring(model: Model, events: list[Event], *, matcher, grouping: Grouping | None,
                   out: str | Path | None, groups_out: str | Path | None,
                   windows_out: str | Path | None, window_table, windows: int,
                   entities: Iterable[str], rows: int, flagged: int | None,
                   started: float, scores: ScoreTrail | None = None) -> ScoreResult:
    """The end of a scoring run, local and Dask alike: groups and playbooks on the events,
    events, groups and (``windows_out``) the per-window table written atomically, and the
    result. ``window_table``: a callable, called only when the table is wanted; ``scores``:
    the run's window scores, when the grouping's ranking reads them."""
    groups = publish_events(events, matcher, grouping, scores)
    write_events(events, out)
    write_groups(groups, groups_out)
    table = None
    if windows_out is not None:
        table = window_table()
        write_table(table, windows_out)
    entities = list(entities)
    return ScoreResult(events, windows, len(entities), rows,
                       round(time.perf_counter() - started, 3), table, flagged,
                       unseen_entities(model, entities), groups)

