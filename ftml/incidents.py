"""Incidents across entities: events whose onsets co-occur (and, when a call graph is known, that
are connected in it) become one group, and the group's entities are ranked as the likely root.

Sits after diagnosis and before recovery: it reads finished :class:`~ftml.events.Event`s and
sets their ``group``, ``suspects`` and ``evidence``. The ranking uses what the events already
hold (onset, peak score, the z of their top metrics against each entity's own baseline) plus
the call graph when given: a fault in a callee shows in its callers too (they wait on it), so an
alerting entity whose callees are quiet is preferred to one whose callees alert.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, shortest_path

from ftml.config import DiagnoseConfig
from ftml.errors import InputError
from ftml.events import Event, iso

#: Suspects listed per group, and those given evidence.
MAX_SUSPECTS, EVIDENCE_SUSPECTS = 5, 3
#: Events of entities at most this many call-graph hops apart may join one group.
MAX_HOPS = 2
#: Group columns of ``--groups-out``.
GROUP_FIELDS = ("group", "start", "end", "entities", "events", "suspects", "cause", "evidence")


@dataclass(frozen=True)
class Topology:
    """A call graph: ``source`` calls ``target`` (edges, both arrays of entity names)."""

    source: np.ndarray
    target: np.ndarray
    weight: np.ndarray

    @property
    def nodes(self) -> list[str]:
        return sorted(set(self.source.tolist()) | set(self.target.tolist()))

    @classmethod
    def from_edges(cls, edges: list[tuple[str, str]] | pd.DataFrame) -> Topology:
        frame = pd.DataFrame(edges).iloc[:, :3] if len(edges) else pd.DataFrame([[], []]).T
        src = frame.iloc[:, 0].astype(str).to_numpy(dtype=object)
        dst = frame.iloc[:, 1].astype(str).to_numpy(dtype=object)
        w = (pd.to_numeric(frame.iloc[:, 2], errors="coerce").fillna(1.0).to_numpy(float)
             if frame.shape[1] > 2 else np.ones(len(src)))
        keep = src != dst
        return cls(src[keep], dst[keep], w[keep])


def load_topology(path: str | Path | None) -> Topology | None:
    """A call graph from CSV: an edge list ``source,target[,weight]`` (a header row is optional)
    or a square adjacency matrix (first header cell empty, row = caller, column = callee,
    non-zero = a call), as Nezha's ``dependency.csv`` and PetShop's ``graph.csv`` are."""
    if path is None:
        return None
    source = str(path)
    try:
        frame = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise InputError("topology file not found", source=source,
                         hint="give a CSV of source,target[,weight] call edges") from None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read topology: {str(exc).splitlines()[0]}",
                         source=source, hint="a CSV of source,target[,weight] rows") from None
    if frame.shape[1] < 2 or frame.empty:
        raise InputError("a topology needs two columns (source, target)", source=source,
                         hint="rows like 'frontend,cartservice' (caller, callee)")
    head = [str(c).strip() for c in frame.iloc[0]]
    if head[0] == "" and frame.shape[1] > 2 and frame.shape[0] == frame.shape[1]:
        names = head[1:]
        values = frame.iloc[1:, 1:].apply(pd.to_numeric, errors="coerce").to_numpy(float)
        if np.isnan(values).any():
            raise InputError("adjacency matrix holds non-numbers", source=source,
                             hint="cells are call weights (0: no call)")
        r, c = np.nonzero(values)
        rows = frame.iloc[1:, 0].astype(str).str.strip().tolist()
        return Topology.from_edges([(rows[i], names[j], values[i, j])
                                    for i, j in zip(r, c, strict=True)])
    if head[0].lower() in ("source", "src", "caller", "from"):
        frame = frame.iloc[1:]
    frame = frame.apply(lambda col: col.str.strip())
    empty = (frame.iloc[:, 0] == "") | (frame.iloc[:, 1] == "")
    if empty.any():
        line = int(np.flatnonzero(empty.to_numpy())[0]) + 1
        raise InputError("a topology row has an empty source or target", source=source,
                         where=f"row {line}", hint="each row: caller,callee[,weight]")
    return Topology.from_edges(frame)


@dataclass(frozen=True)
class Grouping:
    """How events are grouped: the time gap that still joins two events, the call graph (or
    None) and the model version that makes group ids stable."""

    gap: pd.Timedelta
    topology: Topology | None = None
    model_version: str = ""
    # Ranking weights: onset, size, detector score, call graph (diagnose.rank_* in the config).
    weights: tuple[float, float, float, float] = field(default_factory=lambda: default_weights())


def grouping_for(model, topology: str | Path | None = None) -> Grouping:
    """How a model's (a :class:`ftml.bundle.Model`) events are grouped: its
    ``diagnose.group_gap`` and ``rank_*`` weights, and the call graph from ``topology`` (else
    the config's ``diagnose.topology``). A model saved before these keys existed reads them
    from the class defaults."""
    gc = model.config.diagnose
    path = topology if topology is not None else gc.topology
    return Grouping(gap=model.step * int(gc.group_gap), topology=load_topology(path),
                    model_version=model.version,
                    weights=(gc.rank_onset, gc.rank_size, gc.rank_score, gc.rank_graph))


def default_weights() -> tuple[float, float, float, float]:
    d = DiagnoseConfig()
    return (d.rank_onset, d.rank_size, d.rank_score, d.rank_graph)


def group_id(entity: str, start: pd.Timestamp, model_version: str) -> str:
    """Stable id of a group: a hash of its earliest event's entity and start and the model
    version, so that chunked, Dask and live scoring name the same incident alike."""
    key = f"group\x1f{entity}\x1f{pd.Timestamp(start).isoformat()}\x1f{model_version}"
    return "g" + hashlib.sha256(key.encode()).hexdigest()[:15]


def assign_groups(events: list[Event], grouping: Grouping | None) -> list[dict]:
    """Set ``group``, ``suspects`` and ``evidence`` on every event, in place; returns one
    record per group (see :data:`GROUP_FIELDS`), by start."""
    if grouping is None or not events:
        return []
    start = np.array([pd.Timestamp(e.start).value for e in events], dtype=np.int64)
    entity = np.array([str(e.entity) for e in events], dtype=object)
    label = _components(start, entity, grouping)
    order = np.lexsort((entity, start, label))
    bounds = np.flatnonzero(np.r_[True, label[order][1:] != label[order][:-1], True])
    records = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        members = order[a:b]
        records.append(_rank_group([events[i] for i in members], grouping))
    records.sort(key=lambda r: (r["start"], r["group"]))
    return records


def _components(start: np.ndarray, entity: np.ndarray,
                grouping: Grouping) -> np.ndarray:
    """A group label per event. Time first: a group opens with the earliest event not yet
    grouped and takes every event that starts within ``gap`` of it (of the group's first
    onset, not of the last member: chained onsets would join the faults of a busy system one
    after another into one). Onsets, not whole spans: an entity's event can last for hours
    across several faults, and every later fault would overlap it; the symptoms of one fault
    start within minutes of its root. With a call graph, a time group splits into the
    connected components of "linked in the graph" (see :data:`MAX_HOPS`)."""
    gap = int(grouping.gap.value)
    order = np.argsort(start, kind="stable")
    s = start[order]
    new = np.zeros(len(s), dtype=bool)
    i = 0
    while i < len(s):  # one step per group, not per event
        new[i] = True
        i = int(np.searchsorted(s, s[i] + gap, side="right"))
    cluster = np.empty(len(start), dtype=np.int64)
    cluster[order] = np.cumsum(new) - 1
    topo = grouping.topology
    if topo is None:
        return cluster
    near = _near_entities(topo, np.unique(entity))
    label = np.empty(len(start), dtype=np.int64)
    next_label = 0
    bounds = np.flatnonzero(np.r_[new, True])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        idx = order[a:b]
        if len(idx) == 1:
            label[idx] = next_label
            next_label += 1
            continue
        ent = entity[idx]
        codes = np.array([near.index.get(x, -1) for x in ent])
        known = codes >= 0
        linked = np.ones((len(idx), len(idx)), dtype=bool)
        both = known[:, None] & known[None, :]
        if both.any():
            kc = np.where(known, codes, 0)
            linked[both] = near.hops[kc[:, None], kc[None, :]][both] <= MAX_HOPS
        linked |= ent[:, None] == ent[None, :]
        k, comp = connected_components(coo_matrix(linked).tocsr(), directed=False)
        label[idx] = comp + next_label
        next_label += k
    return label


@dataclass
class _Near:
    index: dict[str, int]
    hops: np.ndarray  # undirected call-graph distance between entities (inf: not connected)


def _near_entities(topo: Topology, entities: np.ndarray) -> _Near:
    nodes = topo.nodes
    index = {n: i for i, n in enumerate(nodes)}
    src = np.array([index[x] for x in topo.source], dtype=np.int64)
    dst = np.array([index[x] for x in topo.target], dtype=np.int64)
    adj = coo_matrix((np.ones(len(src)), (src, dst)), shape=(len(nodes), len(nodes))).tocsr()
    known = [str(e) for e in entities if str(e) in index]
    cols = np.array([index[e] for e in known], dtype=np.int64)
    # Distances from the alerting entities only (not all pairs of a large graph).
    hops = (shortest_path(adj, directed=False, unweighted=True, indices=cols)[:, cols]
            if len(cols) else np.zeros((0, 0)))
    return _Near({e: i for i, e in enumerate(known)}, hops)


def _rank_group(members: list[Event], grouping: Grouping) -> dict:
    """Rank the entities of one group and write the result onto its events."""
    first = members[0]  # sorted by start, then entity
    gid = group_id(first.entity, first.start, grouping.model_version)
    frame = pd.DataFrame({
        "entity": [str(e.entity) for e in members],
        "start": [pd.Timestamp(e.start).value for e in members],
        "score": [float(e.score) for e in members],
        "size": [max(e.top_z, default=0.0) for e in members],
    })
    per = frame.groupby("entity", sort=True).agg(
        onset=("start", "min"), score=("score", "max"), size=("size", "max"))
    names = per.index.to_numpy(dtype=object)
    scores, graph_note = rank_scores(per["onset"].to_numpy(np.int64), per["size"].to_numpy(float),
                                     per["score"].to_numpy(float), names, grouping.topology,
                                     int(grouping.gap.value), grouping.weights)
    rank = np.lexsort((names, per["onset"].to_numpy(), -scores))
    suspects = [[str(names[i]), round(float(scores[i]), 4)] for i in rank[:MAX_SUSPECTS]]
    first_of = {}
    for ev in members:  # members are in time order: the first event of each entity wins
        first_of.setdefault(str(ev.entity), ev)
    t0 = int(per["onset"].min())
    evidence = []
    for i in rank[:EVIDENCE_SUSPECTS]:
        ev = first_of[str(names[i])]
        lag = (int(per["onset"].iloc[i]) - t0) / 1e9
        what = (f"{ev.top_metrics[0]} z={ev.top_z[0]:.1f}" if ev.top_metrics and ev.top_z
                else f"score {ev.score:.2f}")
        when = "moved first" if lag == 0 else f"moved {lag:g}s after the first"
        evidence.append(f"{names[i]}: {what}, {when}{graph_note[i]}")
    top_entity = suspects[0][0]
    cause = first_of[top_entity].cause
    for ev in members:
        ev.group, ev.suspects, ev.evidence = gid, [list(s) for s in suspects], list(evidence)
    return {"group": gid, "start": iso(pd.Timestamp(t0, tz="UTC")),
            "end": iso(max(pd.Timestamp(e.end) for e in members)),
            "entities": [str(x) for x in names[rank]], "events": [e.id for e in members],
            "suspects": suspects, "cause": cause, "evidence": evidence}


def rank_scores(onset: np.ndarray, size: np.ndarray, peak: np.ndarray, names: np.ndarray,
                topology: Topology | None, onset_scale_ns: int,
                weights: tuple[float, float, float, float]) -> tuple[np.ndarray, list[str]]:
    """Root-cause score of each alerting entity of one group (higher: more likely the root),
    and a short note on what the call graph said about it.

    Terms, each in 0..1: onset (the first to move scores 1, one that moved ``onset_scale_ns``
    later 1/e), size
    (the log of the largest z of its top metrics against the group's largest), the detector's
    peak score and, with a call graph, how much the entity looks like where the fault sits:
    among its alerting neighbours, the share that are callers (they wait on it) rather than
    callees (it waits on them); an entity with quiet callees and no alerting neighbour at all
    scores 0.5 (nothing to tell). ``weights``: of onset, size, score and graph; the result is
    their weighted mean."""
    w_onset, w_size, w_score, w_graph = weights
    n = len(names)
    lag = (onset - onset.min()).astype(float)
    onset_term = np.exp(-lag / max(onset_scale_ns, 1))
    log_size = np.log1p(np.maximum(size, 0.0))
    size_term = log_size / log_size.max() if log_size.max() > 0 else np.zeros(n)
    total = w_onset * onset_term + w_size * size_term + w_score * np.clip(peak, 0, 1)
    notes = [""] * n
    if topology is not None and n > 1:
        pos = {str(x): i for i, x in enumerate(names)}
        src = np.array([pos.get(x, -1) for x in topology.source])
        dst = np.array([pos.get(x, -1) for x in topology.target])
        both = (src >= 0) & (dst >= 0)
        # callers[i]: alerting entities calling i; callees[i]: alerting entities i calls
        callers = np.bincount(dst[both], minlength=n)
        callees = np.bincount(src[both], minlength=n)
        known = np.isin(names.astype(str), topology.nodes)
        share = np.where(callers + callees > 0, callers / np.maximum(callers + callees, 1), 0.5)
        graph_term = np.where(known, share, 0.5)
        total = total + w_graph * graph_term
        notes = [(f"; {callers[i]} alerting caller(s), {callees[i]} alerting callee(s)"
                  if known[i] else "") for i in range(n)]
    top = w_onset + w_size + w_score + (w_graph if topology is not None and n > 1 else 0.0)
    return total / max(top, 1e-12), notes


def groups_table(records: list[dict]) -> list[dict]:
    """Group records as written by ``--groups-out`` (lists kept; the writer encodes them)."""
    return [{k: r[k] for k in GROUP_FIELDS} for r in records]


#: Events a live grouper keeps: those that started at most this long before the newest.
LIVE_HORIZON = pd.Timedelta(hours=6)
#: ... and at most this many (the oldest go first).
LIVE_MAX_EVENTS = 2000


class LiveGrouper:
    """Grouping for ``ftml watch``: events arrive one at a time (each tick re-diagnoses the
    open ones); :meth:`assign` keeps the latest version of each recent event and groups them
    all again, so an event gets the group and suspects that ``ftml score`` would give over the
    same events. A group can still change while its events arrive: an event that starts
    earlier but opens later becomes the group's first, and the id follows it."""

    def __init__(self, grouping: Grouping, horizon: pd.Timedelta = LIVE_HORIZON,
                 max_events: int = LIVE_MAX_EVENTS):
        self.grouping = grouping
        self.horizon = horizon
        self.max_events = max_events
        self.events_: dict[str, Event] = {}

    def assign(self, event: Event) -> Event:
        """Set ``group``, ``suspects`` and ``evidence`` on ``event`` (in place; returned)."""
        self.events_[event.id] = dataclasses.replace(event)
        newest = max(pd.Timestamp(e.start) for e in self.events_.values())
        kept = sorted((e for e in self.events_.values()
                       if pd.Timestamp(e.start) >= newest - self.horizon),
                      key=lambda e: pd.Timestamp(e.start))[-self.max_events:]
        self.events_ = {e.id: e for e in kept}
        if event.id not in self.events_:  # older than everything kept: grouped on its own
            kept = [dataclasses.replace(event)]
        work = [dataclasses.replace(e) for e in kept]
        assign_groups(work, self.grouping)
        mine = next(e for e in work if e.id == event.id)
        event.group, event.suspects, event.evidence = mine.group, mine.suspects, mine.evidence
        return event
