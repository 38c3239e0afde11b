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

from ftml.config import DiagnoseConfig
from ftml.errors import InputError
from ftml.events import Event, iso
from ftml.io import to_ns

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
    # The entities the model knows (None: any): only they may be suspects without alerting,
    # so the hosts and addresses of a call graph are walked through but never blamed.
    entities: tuple[str, ...] | None = None
    # How suspects are ranked, one of :data:`RANKINGS` (``diagnose.ranking`` in the config).
    ranking: str = "walk_context"
    # The model's step: the onset rankings' spans (:data:`ONSET_SPAN`) are counted in it.
    step: pd.Timedelta = pd.Timedelta(minutes=1)
    # Whether a later group whose events overlap a linked earlier one joins it, one of
    # :data:`JOINS` (``diagnose.group_join``), and the bound on that: a joined group starts at
    # most ``window`` steps (the model's ``features.window``) after the merged group's onset.
    join: str = "onset"
    window: int = 15


#: How groups form (bench/PROTOCOL_rca.md, round 4): ``onset``, events whose onsets are within
#: the gap of a group's first; ``overlap``, then a later group joins an earlier one when one of
#: its events starts while (or at most a gap after) an event of the earlier is open on a linked
#: entity (the same, or at most :data:`MAX_HOPS` apart in the call graph; any without one), and
#: its onset is at most a window after the merged group's; ``overlap_callers``, the same with
#: "linked" directed: the later event's entity calls the earlier's (a root's symptoms show in
#: its callers, later).
JOINS = ("onset", "overlap", "overlap_callers")


#: Root-cause rankings (bench/PROTOCOL_rca.md): ``members``, the alerting entities of the group
#: only; ``context``, those first, then the entities whose event is still open at the group's
#: onset, then the alerting entities' call-graph neighbours; ``walk``, every entity by a random
#: walk with restart from the alerting ones along the call graph; ``walk_context``, the
#: ``context`` blocks each ordered by the walk. Round 2 (variants of ``walk_context``):
#: ``walk_lift``, the walk's mass divided by the graph's own popularity (a uniform-start walk),
#: so that a hub is not first for being one; ``walk_recent``, an open entity weighs in the
#: walk by exp(-age / gap) and, begun at most a gap before the group, ranks with the members;
#: ``blend``, the members by the mean of their walk rank and their member-score rank. Without a
#: call graph every walk ranking is ``context``. Round 3 (they read the window scores, a
#: :class:`ScoreTrail`): ``onset_score``, the alerting entities (members and open ones), then
#: every other, each by its largest window score from the group's onset (its *onset peak*, see
#: :data:`ONSET_SPAN`); ``onset_walk``, ``walk_context``'s blocks, each ordered by the mean of
#: the walk rank and the onset-peak rank; ``onset_lift``, ``onset_score`` with each onset peak
#: less the entity's median score over the lookback before the onset (:data:`ONSET_LOOKBACK`).
RANKINGS = ("members", "context", "walk", "walk_context", "walk_lift", "walk_recent", "blend",
            "onset_score", "onset_walk", "onset_lift")
#: The rankings that read window scores: scoring keeps a :class:`ScoreTrail` only for them.
ONSET_RANKINGS = ("onset_score", "onset_walk", "onset_lift")
#: The onset peak is taken over windows ending in [onset - first, onset + second] steps.
ONSET_SPAN = (1, 5)
#: ``onset_lift``'s baseline: an entity's median score over windows ending in
#: [onset - first, onset - second) steps.
ONSET_LOOKBACK = (31, 1)


def grouping_for(model, topology: str | Path | None = None) -> Grouping:
    """How a model's (a :class:`ftml.bundle.Model`) events are grouped: its
    ``diagnose.group_gap`` and ``rank_*`` weights, and the call graph from ``topology`` (else
    the config's ``diagnose.topology``). A model saved before these keys existed reads them
    from the class defaults."""
    gc = model.config.diagnose
    path = topology if topology is not None else gc.topology
    baseline = getattr(getattr(model, "featurizer", None), "baseline_", None)
    known = getattr(baseline, "entities", None)
    ranking = str(getattr(gc, "ranking", Grouping.ranking))
    if ranking not in RANKINGS:
        raise InputError(f"unknown diagnose.ranking {ranking!r}", where="diagnose.ranking",
                         hint=f"one of {', '.join(RANKINGS)}")
    join = str(getattr(gc, "group_join", Grouping.join))
    if join not in JOINS:
        raise InputError(f"unknown diagnose.group_join {join!r}", where="diagnose.group_join",
                         hint=f"one of {', '.join(JOINS)}")
    return Grouping(gap=model.step * int(gc.group_gap), topology=load_topology(path),
                    model_version=model.version,
                    weights=(gc.rank_onset, gc.rank_size, gc.rank_score, gc.rank_graph),
                    entities=tuple(map(str, known)) if known is not None else None,
                    ranking=ranking, step=pd.Timedelta(model.step), join=join,
                    window=int(model.config.features.window))


def reads_scores(grouping: Grouping | None) -> bool:
    """Whether ``grouping``'s ranking reads window scores (scoring then keeps a trail)."""
    return grouping is not None and grouping.ranking in ONSET_RANKINGS


class ScoreTrail:
    """Window scores over time, for the rankings that read them (:data:`ONSET_RANKINGS`): per
    scored window its entity, end and detector score. Batch scoring keeps every window of the
    run (16 bytes each), ``ftml watch``'s live grouper those of its horizon. ``version`` counts
    the changes, so a cached grouping knows when the scores it read have moved on."""

    def __init__(self) -> None:
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._joined: tuple[np.ndarray, ...] | None = None
        self.version = 0

    def add(self, names, codes: np.ndarray, end_ns: np.ndarray, scores: np.ndarray) -> None:
        """Windows of entities ``names[codes]``, ending at ``end_ns`` (ns), scored ``scores``."""
        if not len(codes):
            return
        self._parts.append((np.asarray(names, dtype=object), np.asarray(codes, dtype=np.int32),
                            np.asarray(end_ns, dtype=np.int64),
                            np.asarray(scores, dtype=np.float32)))
        self._joined = None
        self.version += 1

    @classmethod
    def from_table(cls, table: pd.DataFrame) -> ScoreTrail:
        """A trail from a per-window table (``--windows-out``: entity, timestamp, score)."""
        trail = cls()
        codes, names = pd.factorize(table["entity"].astype(str))
        trail.add(np.asarray(names, dtype=object), codes,
                  to_ns(pd.to_datetime(table["timestamp"], utc=True)),
                  table["score"].to_numpy(float))
        return trail

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(names, sorted; per window: code into names, end ns, score), by end."""
        if self._joined is None:
            if not self._parts:
                self._joined = (np.empty(0, dtype=object), np.empty(0, dtype=np.int64),
                                np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))
            else:
                names = np.unique(np.concatenate([p[0] for p in self._parts]).astype(str))
                names = names.astype(object)
                code = np.concatenate([np.searchsorted(names, p[0].astype(str))[p[1]]
                                       for p in self._parts])
                end = np.concatenate([p[2] for p in self._parts])
                score = np.concatenate([p[3] for p in self._parts])
                order = np.argsort(end, kind="stable")
                self._joined = (names, code[order], end[order], score[order])
                # One part from now on: later adds join to it, not to every part again.
                self._parts = [(names, code[order].astype(np.int32), end[order], score[order])]
        return self._joined

    def trim(self, before_ns: int) -> None:
        """Forget the windows ending before ``before_ns``."""
        names, code, end, score = self.arrays()
        keep = int(np.searchsorted(end, before_ns, side="left"))
        if keep:
            self._parts = [(names, code[keep:].astype(np.int32), end[keep:], score[keep:])]
            self._joined = None
            self.version += 1

    def __len__(self) -> int:
        return len(self.arrays()[1])


def onset_scores(trail: ScoreTrail, names: np.ndarray, g_onset: np.ndarray, step_ns: int,
                 span: tuple[int, int], *, how: str = "max"
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per (group, entity) with a window ending in [onset - span[0], onset + span[1]] steps
    (``how="median"``: in [onset - span[0], onset - span[1]) steps), that largest (median)
    score: (sorted keys group * len(names) + entity code, values). Entities ``names`` does not
    hold are left out. Groups go through at most :data:`WALK_CELLS` windows at a time."""
    t_names, t_code, t_end, t_score = trail.arrays()
    n_names = len(names)
    pos = np.searchsorted(names, t_names) if len(names) else np.zeros(len(t_names), np.int64)
    pos = np.minimum(pos, max(n_names - 1, 0))
    known = (names[pos] == t_names) if n_names else np.zeros(len(t_names), dtype=bool)
    ent_of = np.where(known, pos, -1)[t_code] if len(t_code) else np.empty(0, np.int64)
    lo_t = g_onset - span[0] * step_ns
    hi_t = g_onset + (span[1] if how == "max" else -span[1]) * step_ns
    lo = np.searchsorted(t_end, lo_t, side="left")
    hi = (np.searchsorted(t_end, hi_t, side="right") if how == "max"
          else np.searchsorted(t_end, hi_t, side="left"))
    reps = np.maximum(hi - lo, 0)
    keys_out, vals_out = [], []
    bounds = np.searchsorted(np.cumsum(reps), np.arange(0, int(reps.sum()), WALK_CELLS),
                             side="right")
    bounds = np.unique(np.r_[0, bounds, len(reps)])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        r = reps[a:b]
        win = np.repeat(lo[a:b], r) + (np.arange(int(r.sum())) - np.repeat(np.cumsum(r) - r, r))
        grp = np.repeat(np.arange(a, b, dtype=np.int64), r)
        ent = ent_of[win]
        ok = ent >= 0
        keys_out.append(grp[ok] * n_names + ent[ok])
        vals_out.append(t_score[win[ok]].astype(float))
    key = np.concatenate(keys_out) if keys_out else np.empty(0, np.int64)
    val = np.concatenate(vals_out) if vals_out else np.empty(0)
    if how == "max":
        uk, inv = np.unique(key, return_inverse=True)
        peak = np.full(len(uk), -np.inf)
        np.maximum.at(peak, inv, val)
        return uk, peak
    order = np.lexsort((val, key))
    key, val = key[order], val[order]
    uk, first, count = np.unique(key, return_index=True, return_counts=True)
    return uk, (val[first + (count - 1) // 2] + val[first + count // 2]) / 2


def default_weights() -> tuple[float, float, float, float]:
    d = DiagnoseConfig()
    return (d.rank_onset, d.rank_size, d.rank_score, d.rank_graph)


def group_id(entity: str, start: pd.Timestamp, model_version: str) -> str:
    """Stable id of a group: a hash of its earliest event's entity and start and the model
    version, so that chunked, Dask and live scoring name the same incident alike."""
    key = f"group\x1f{entity}\x1f{pd.Timestamp(start).isoformat()}\x1f{model_version}"
    return "g" + hashlib.sha256(key.encode()).hexdigest()[:15]


def assign_groups(events: list[Event], grouping: Grouping | None,
                  scores: ScoreTrail | None = None) -> list[dict]:
    """Set ``group``, ``suspects`` and ``evidence`` on every event, in place; returns one
    record per group (see :data:`GROUP_FIELDS`), by start. Vectorized over all groups: only
    the lists written onto the events (top suspects, evidence) are built per group.
    ``scores``: the window scores of the run, which the rankings of :data:`ONSET_RANKINGS`
    read (and need)."""
    if grouping is None or not events:
        return []
    if grouping.ranking not in RANKINGS:
        raise ValueError(f"unknown ranking {grouping.ranking!r}; one of {', '.join(RANKINGS)}")
    if grouping.join not in JOINS:
        raise ValueError(f"unknown join {grouping.join!r}; one of {', '.join(JOINS)}")
    if reads_scores(grouping) and scores is None:
        raise ValueError(f"ranking {grouping.ranking!r} reads window scores: pass scores=")
    start = np.array([pd.Timestamp(e.start).value for e in events], dtype=np.int64)
    end = np.array([pd.Timestamp(e.end).value for e in events], dtype=np.int64)
    entity = np.array([str(e.entity) for e in events], dtype=object)
    score = np.array([float(e.score) for e in events])
    size = np.array([max(e.top_z, default=0.0) for e in events], dtype=float)
    label = _components(start, entity, grouping)
    if grouping.join != "onset":
        label = _join_overlapping(label, start, end, entity, grouping)
    n_groups = int(label.max()) + 1
    # Every entity that can be named: the alerting ones, the call graph's, the model's.
    topo = grouping.topology
    pool = set(entity.tolist())
    if topo is not None:
        pool.update(topo.nodes)
    if grouping.entities is not None:
        pool.update(grouping.entities)
    names = np.array(sorted(pool), dtype=object)
    ent_code = np.searchsorted(names, entity)
    allowed = (np.isin(names, np.array(grouping.entities, dtype=object))
               if grouping.entities is not None else np.ones(len(names), dtype=bool))
    # Events in group order, each group's in time order (ties: by entity).
    order = np.lexsort((ent_code, start, label))
    lab_o = label[order]
    g_first = np.flatnonzero(np.r_[True, lab_o[1:] != lab_o[:-1]])
    # Pairs (group, entity): an entity's events in one group are one suspect.
    pair_key = label.astype(np.int64) * len(names) + ent_code
    keys, pair_of = np.unique(pair_key, return_inverse=True)
    n_pairs = len(keys)
    p_group, p_ent = keys // len(names), keys % len(names)
    onset = np.full(n_pairs, np.iinfo(np.int64).max)
    np.minimum.at(onset, pair_of, start)
    peak = np.full(n_pairs, -np.inf)
    np.maximum.at(peak, pair_of, score)
    big = np.zeros(n_pairs)
    np.maximum.at(big, pair_of, size)
    # The first event of each pair (in time order): its evidence.
    first_event = np.empty(n_pairs, dtype=np.int64)
    po = pair_of[order]
    is_first = np.zeros(len(order), dtype=bool)
    _, first_pos = np.unique(po, return_index=True)
    is_first[first_pos] = True
    first_event[po[is_first]] = order[is_first]
    total, callers, callees, known = rank_pairs(
        p_group, p_ent, names, onset, big, peak, grouping, n_groups=n_groups)
    g_end = np.full(n_groups, np.iinfo(np.int64).min)
    np.maximum.at(g_end, label, end)
    g_onset = np.full(n_groups, np.iinfo(np.int64).max)
    np.minimum.at(g_onset, label, start)
    cand = _candidates(grouping, names, allowed, p_group, p_ent, onset, total, big, start, end,
                       score, size, ent_code, g_onset, scores)
    c_group, c_ent, c_block, c_key, c_onset, c_shown, c_pair, c_open = cand
    # Suspects: by block, then score, then earlier onset, then name.
    rank = np.lexsort((c_ent, c_onset, -c_key, c_block, c_group))
    rg = c_group[rank]
    # Shown scores never rise down the list (a later block is shown below the one before).
    c_shown = c_shown.copy()
    c_shown[rank] = pd.Series(c_shown[rank]).groupby(rg).cummin().to_numpy()
    bounds = np.r_[np.flatnonzero(np.r_[True, rg[1:] != rg[:-1]]), len(rank)]
    adj = _adjacency(topo, names) if topo is not None else None
    adj_in = adj.T.tocsr() if adj is not None else None  # callee row: its callers
    pair_bounds = np.searchsorted(p_group, np.arange(n_groups + 1))  # pairs by group
    records = []
    ev_bounds = np.r_[g_first, len(order)]
    for gi, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        g = int(rg[a])
        ranked = rank[a:b]
        first = events[int(order[ev_bounds[gi]])]
        gid = group_id(first.entity, first.start, grouping.model_version)
        suspects = [[str(names[c_ent[c]]), round(float(c_shown[c]), 4)]
                    for c in ranked[:MAX_SUSPECTS]]
        evidence = []
        for c in ranked[:EVIDENCE_SUSPECTS]:
            who = names[c_ent[c]]
            p = int(c_pair[c])
            if p < 0:
                evidence.append(_context_evidence(who, int(c_ent[c]), int(c_open[c]), events,
                                                  adj, adj_in,
                                                  p_ent[pair_bounds[g]:pair_bounds[g + 1]]))
                continue
            ev = events[int(first_event[p])]
            lag = (int(onset[p]) - int(g_onset[g])) / 1e9
            what = (f"{ev.top_metrics[0]} z={ev.top_z[0]:.1f}" if ev.top_metrics and ev.top_z
                    else f"score {ev.score:.2f}")
            when = "moved first" if lag == 0 else f"moved {lag:g}s after the first"
            graph = (f"; {callers[p]} alerting caller(s), {callees[p]} alerting callee(s)"
                     if known[p] else "")
            evidence.append(f"{who}: {what}, {when}{graph}")
        members = order[ev_bounds[gi]:ev_bounds[gi + 1]]
        for i in members:
            ev = events[int(i)]
            ev.group, ev.suspects, ev.evidence = gid, [list(x) for x in suspects], list(evidence)
        ranked_members = [int(c_pair[c]) for c in ranked if c_pair[c] >= 0]
        records.append({
            "group": gid, "start": iso(pd.Timestamp(int(g_onset[g]), tz="UTC")),
            "end": iso(pd.Timestamp(int(g_end[g]), tz="UTC")),
            "entities": [str(names[p_ent[p]]) for p in ranked_members],
            "events": [events[int(i)].id for i in members], "suspects": suspects,
            "cause": events[int(first_event[ranked_members[0]])].cause, "evidence": evidence})
    records.sort(key=lambda r: (r["start"], r["group"]))
    return records


def _adjacency(topo: Topology, names: np.ndarray):
    """The call graph over ``names`` (every node of ``topo`` is one): caller row, callee
    column, 1 per call."""
    src = np.searchsorted(names, topo.source)
    dst = np.searchsorted(names, topo.target)
    from scipy.sparse import coo_matrix  # lazily: scoring without a call graph needs no scipy
    m = coo_matrix((np.ones(len(src)), (src, dst)), shape=(len(names), len(names))).tocsr()
    m.data[:] = 1.0  # a repeated edge is one call
    return m


#: Random walk: chance of a restart per step, and the weight of walking from a callee back
#: to its caller (against 1 for caller to callee): a fault's callers alert because they wait
#: on it, so the walk leans towards callees but does not stick at a leaf.
WALK_RESTART, WALK_BACK, WALK_STEPS = 0.15, 0.3, 100
#: An entity whose event is still open at a group's onset weighs this much in the walk's
#: start, against an alerting member.
OPEN_WEIGHT = 0.5


def _candidates(grouping: Grouping, names: np.ndarray, allowed: np.ndarray,
                p_group: np.ndarray, p_ent: np.ndarray, p_onset: np.ndarray,
                total: np.ndarray, big: np.ndarray, start: np.ndarray, end: np.ndarray,
                score: np.ndarray, size: np.ndarray, ent_code: np.ndarray,
                g_onset: np.ndarray, trail: ScoreTrail | None = None) -> tuple[np.ndarray, ...]:
    """Every suspect of every group, one row each: (group, entity code, block, key, onset,
    shown score, member pair or -1, open event or -1). Members are the group's alerting
    entities (block 0, key = :func:`rank_pairs`' score); see :data:`RANKINGS` for the rest."""
    n_pairs, n_groups, n_names = len(p_group), len(g_onset), len(names)
    none = np.full(n_pairs, -1, dtype=np.int64)
    members = (p_group, p_ent, np.zeros(n_pairs, dtype=np.int64), total, p_onset, total,
               np.arange(n_pairs), none)
    if grouping.ranking == "members":
        return members
    member_keys = p_group * n_names + p_ent  # sorted: pairs come from np.unique
    # Events still open at a group's onset (started before it, not yet ended), not members.
    by_onset = np.argsort(g_onset, kind="stable")
    go = g_onset[by_onset]
    lo = np.searchsorted(go, start, side="right")
    hi = np.searchsorted(go, end, side="right")
    reps = np.maximum(hi - lo, 0)
    ev_rep = np.repeat(np.arange(len(start)), reps)
    offs = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
    o_group = by_onset[np.repeat(lo, reps) + offs]
    o_ent = ent_code[ev_rep]
    keep = ~_contains(member_keys, o_group * n_names + o_ent) & allowed[o_ent]
    o_group, o_ent, ev_rep = o_group[keep], o_ent[keep], ev_rep[keep]
    # Their weight: size (against the group's largest member change) and detector score,
    # with no onset credit (they began before the incident); one row per (group, entity).
    w_onset, w_size, w_score, _ = grouping.weights
    g_size = np.zeros(n_groups)
    np.maximum.at(g_size, p_group, np.log1p(np.maximum(big, 0.0)))
    rel = np.minimum(np.log1p(np.maximum(size[ev_rep], 0.0)) / np.maximum(g_size[o_group], 1e-12),
                     1.0)
    o_key = (w_size * rel + w_score * np.clip(score[ev_rep], 0, 1)) / max(
        w_onset + w_size + w_score, 1e-12)
    uk, inv = np.unique(o_group * n_names + o_ent, return_inverse=True)
    best = np.full(len(uk), -1.0)
    np.maximum.at(best, inv, o_key)
    # The open event shown as evidence: the one with the largest weight (then the earliest).
    pick = np.lexsort((start[ev_rep], -o_key, inv))
    first_of = np.r_[True, inv[pick][1:] != inv[pick][:-1]][:len(pick)]
    open_ev = np.empty(len(uk), dtype=np.int64)
    open_ev[inv[pick][first_of]] = ev_rep[pick][first_of]
    og, oe = uk // n_names, uk % n_names
    g_min = np.full(n_groups, np.inf)
    np.minimum.at(g_min, p_group, total)
    topo = grouping.topology
    peaks = (_onset_peaks(grouping, trail, names, g_onset) if reads_scores(grouping)
             else None)
    if grouping.ranking in ("onset_score", "onset_lift") or (
            grouping.ranking == "onset_walk" and topo is None):
        return _onset_candidates(names, allowed, members, og, oe, open_ev, start[open_ev],
                                 peaks)
    if topo is None or grouping.ranking == "context":
        blocks = [members, (og, oe, np.ones(len(uk), dtype=np.int64), best, start[open_ev],
                            best * g_min[og], np.full(len(uk), -1, dtype=np.int64), open_ev)]
        if topo is not None:
            blocks.append(_neighbours(topo, names, allowed, np.union1d(member_keys, uk),
                                      p_group, p_ent, total, g_min, n_groups))
        return tuple(np.concatenate(parts) for parts in zip(*blocks, strict=True))
    return _walk_candidates(grouping, names, allowed, p_group, p_ent, p_onset, total,
                            og, oe, best, open_ev, n_groups, start[open_ev], g_onset, peaks)


def _onset_peaks(grouping: Grouping, trail: ScoreTrail, names: np.ndarray,
                 g_onset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each (group, entity)'s onset peak (sorted keys group x entity, values); for
    ``onset_lift`` less the entity's median over the lookback (none there: less 0)."""
    step_ns = int(grouping.step.value)
    keys, peak = onset_scores(trail, names, g_onset, step_ns, ONSET_SPAN)
    if grouping.ranking == "onset_lift":
        b_keys, base = onset_scores(trail, names, g_onset, step_ns, ONSET_LOOKBACK,
                                    how="median")
        peak = peak - _lookup(b_keys, base, keys, 0.0)
    return keys, peak


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, query: np.ndarray,
            default: float) -> np.ndarray:
    """``values`` at each query key of ``sorted_keys``, ``default`` where it is absent."""
    out = np.full(len(query), default, dtype=float)
    found = _contains(sorted_keys, query)
    out[found] = values[np.searchsorted(sorted_keys, query[found])]
    return out


def _onset_candidates(names: np.ndarray, allowed: np.ndarray, members: tuple[np.ndarray, ...],
                      og: np.ndarray, oe: np.ndarray, open_ev: np.ndarray,
                      open_start: np.ndarray, peaks: tuple[np.ndarray, np.ndarray]
                      ) -> tuple[np.ndarray, ...]:
    """``onset_score`` and ``onset_lift``: the alerting entities (members, then those whose
    event is open at the onset; block 0) and every other entity with a window in the onset
    span (block 1), each by its onset peak (shown: over the group's largest, 0 if none)."""
    n_names = len(names)
    p_group, p_ent, _, _, p_onset, _, p_pair, p_open = members
    keys, peak = peaks
    a_group, a_ent = np.r_[p_group, og], np.r_[p_ent, oe]
    a_flat = a_group * n_names + a_ent
    a_key = _lookup(keys, peak, a_flat, -np.inf)
    rest = ~_contains(np.sort(a_flat), keys) & allowed[keys % n_names]
    group = np.r_[a_group, keys[rest] // n_names]
    n_a, n_r = len(a_group), int(rest.sum())
    key = np.r_[a_key, peak[rest]]
    lifted = np.maximum(key, 0.0)
    g_top = np.zeros(int(group.max()) + 1 if len(group) else 0)
    np.maximum.at(g_top, group, lifted)
    shown = np.divide(lifted, g_top[group], out=np.zeros(len(key)), where=g_top[group] > 0)
    none = np.full(len(og) + n_r, -1, dtype=np.int64)
    return (group, np.r_[a_ent, keys[rest] % n_names],
            np.r_[np.zeros(n_a, dtype=np.int64), np.ones(n_r, dtype=np.int64)], key,
            np.r_[p_onset, open_start, np.full(n_r, np.iinfo(np.int64).max)], shown,
            np.r_[p_pair, none], np.r_[p_open, open_ev, np.full(n_r, -1, dtype=np.int64)])


def _contains(sorted_keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Per query key, whether it is in ``sorted_keys``."""
    j = np.searchsorted(sorted_keys, query)
    return (j < len(sorted_keys)) & (sorted_keys[np.minimum(j, max(len(sorted_keys) - 1, 0))]
                                     == query) if len(sorted_keys) else np.zeros(len(query),
                                                                                 dtype=bool)


#: The walk keeps, per group, its members and at most this many other entities (by mass);
#: groups are walked this many (group x entity) cells at a time, to bound memory.
WALK_KEEP, WALK_CELLS = MAX_SUSPECTS, 2_000_000


def _walk_candidates(grouping: Grouping, names: np.ndarray, allowed: np.ndarray,
                     p_group: np.ndarray, p_ent: np.ndarray, p_onset: np.ndarray,
                     total: np.ndarray, og: np.ndarray, oe: np.ndarray, best: np.ndarray,
                     open_ev: np.ndarray, n_groups: int, open_start: np.ndarray,
                     g_onset: np.ndarray, peaks: tuple[np.ndarray, np.ndarray] | None = None
                     ) -> tuple[np.ndarray, ...]:
    """``walk``, ``walk_context`` and its variants (:data:`RANKINGS`): a random walk with restart
    along the call graph from each group's members (weighted by their score) and open entities
    (by :data:`OPEN_WEIGHT` times theirs; ``walk_recent``: by theirs times exp(-age / gap));
    members and the :data:`WALK_KEEP` other entities with the most mass are suspects, by mass
    (``walk_context``: members first; ``walk_lift``: mass over the graph's own popularity;
    ``walk_recent``: open entities begun at most a gap before the onset rank with the members;
    ``blend``: members by the mean of their walk rank and their member-score rank;
    ``onset_walk``: each block by the mean of its walk rank and its onset-peak rank)."""
    ranking = grouping.ranking
    n_names = len(names)
    gap = max(int(grouping.gap.value), 1)
    age = (g_onset[og] - open_start).astype(float)  # how long before the group it began
    recent = (age <= gap) if ranking == "walk_recent" else np.zeros(len(og), dtype=bool)
    open_w = (best * np.exp(-age / gap) if ranking == "walk_recent" else OPEN_WEIGHT * best)
    # The walk is linear in where it starts: one walk per entity that starts any (members and
    # open entities), then each group's mass is its start weights times those.
    active = np.unique(np.r_[p_ent, oe])
    adj = _adjacency(grouping.topology, names)
    walks = _walk_from(adj, active)  # (active, names)
    if ranking == "walk_lift":
        walks = walks / _popularity(adj, allowed)[None, :]
    col = np.searchsorted(active, np.r_[p_ent, oe])
    c_member, c_open = col[:len(p_ent)], col[len(p_ent):]
    step = max(1, WALK_CELLS // max(n_names, 1))
    out: list[tuple[np.ndarray, ...]] = []
    for g0 in range(0, n_groups, step):  # up to ``step`` groups at once
        g1 = min(n_groups, g0 + step)
        pm = (p_group >= g0) & (p_group < g1)
        om = (og >= g0) & (og < g1)
        from scipy.sparse import coo_matrix  # lazily: scoring without a call graph needs no scipy
        weights = coo_matrix((np.r_[total[pm], open_w[om]],
                              (np.r_[p_group[pm], og[om]] - g0, np.r_[c_member[pm], c_open[om]])),
                             shape=(g1 - g0, len(active))).tocsr()
        rows_sum = np.asarray(weights.sum(axis=1))
        mass = np.asarray(weights @ walks) / np.where(rows_sum > 0, rows_sum, 1.0)
        # The first block: members, and (walk_recent) the open entities begun in the lead-up.
        rm = om & recent
        m_rows = np.r_[p_group[pm], og[rm]] - g0
        m_cols = np.r_[p_ent[pm], oe[rm]]
        m_pair = np.r_[np.flatnonzero(pm), np.full(int(rm.sum()), -1, dtype=np.int64)]
        m_open = np.r_[np.full(int(pm.sum()), -1, dtype=np.int64), open_ev[rm]]
        m_onset = np.r_[p_onset[pm], open_start[rm]]
        others = np.where(allowed[None, :], mass, 0.0)
        others[m_rows, m_cols] = 0.0
        k = min(WALK_KEEP, n_names)
        top = np.argpartition(-others, k - 1, axis=1)[:, :k] if k else np.zeros((g1 - g0, 0),
                                                                              dtype=np.int64)
        t_rows = np.repeat(np.arange(g1 - g0), top.shape[1])
        t_cols = top.ravel()
        hit = others[t_rows, t_cols] > 0
        t_rows, t_cols = t_rows[hit], t_cols[hit]
        open_of = np.full(len(t_rows), -1, dtype=np.int64)
        if om.any():
            okeys = (og[om] - g0) * n_names + oe[om]  # sorted (from np.unique)
            q = t_rows * n_names + t_cols
            found = _contains(okeys, q)
            open_of[found] = open_ev[om][np.searchsorted(okeys, q[found])]
        rows = np.r_[m_rows, t_rows]
        key = np.r_[mass[m_rows, m_cols], others[t_rows, t_cols]]
        g_top = np.zeros(g1 - g0)
        np.maximum.at(g_top, rows, key)
        key = key / np.where(g_top > 0, g_top, 1.0)[rows]
        n_m, n_t = len(m_rows), len(t_rows)
        block = (np.zeros(n_m + n_t, dtype=np.int64) if ranking == "walk"
                 else np.r_[np.zeros(n_m, dtype=np.int64), np.ones(n_t, dtype=np.int64)])
        shown = key
        if ranking == "blend" and n_m:
            key, shown = key.copy(), key.copy()
            key[:n_m], shown[:n_m] = _mean_rank(m_rows, key[:n_m], total[pm])
        elif ranking == "onset_walk" and len(rows):
            peak = _lookup(*peaks, (rows + g0) * n_names + np.r_[m_cols, t_cols], -np.inf)
            key, shown = _mean_rank(rows * 2 + block, key, peak)
        out.append((rows + g0, np.r_[m_cols, t_cols], block, key,
                    np.r_[m_onset, np.full(n_t, np.iinfo(np.int64).max)], shown,
                    np.r_[m_pair, np.full(n_t, -1, dtype=np.int64)],
                    np.r_[m_open, open_of]))
    return tuple(np.concatenate(parts) for parts in zip(*out, strict=True))


def _ranks_in_group(rows: np.ndarray, value: np.ndarray) -> np.ndarray:
    """1-based rank of each value within its row (group), largest first (ties: in order)."""
    order = np.lexsort((np.arange(len(rows)), -value, rows))
    first = np.r_[0, np.flatnonzero(rows[order][1:] != rows[order][:-1]) + 1]
    pos = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
    rank = np.empty(len(order), dtype=float)
    rank[order] = pos + 1
    return rank


def _mean_rank(ids: np.ndarray, mass: np.ndarray, other: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """``blend`` and ``onset_walk``: within each ``ids`` (a group's block), the order key is
    minus the mean of the rank by walk mass and the rank by ``other``, ties by mass (a mass
    term below half a rank step: ``mass`` is in 0..1, so it never reorders distinct means);
    shown, (count + 1 - mean rank) / count, so the one first on both shows 1."""
    mean = (_ranks_in_group(ids, mass) + _ranks_in_group(ids, other)) / 2
    count = np.bincount(ids)[ids].astype(float)
    return -mean + 0.49 * mass, (count + 1 - mean) / count


def _popularity(adj, allowed: np.ndarray) -> np.ndarray:
    """``walk_lift``'s divisor: each entity's mass from the same walk started uniformly over
    the entities that may be suspects, floored at what a start gets from its own restart (an
    entity no walk reaches is not lifted out of nothing)."""
    starts = np.flatnonzero(allowed)
    if not len(starts):
        return np.ones(adj.shape[0])
    step_matrix = _walk_step(adj)
    e = np.zeros(adj.shape[0])
    e[starts] = 1.0 / len(starts)
    pop = e.copy()
    for _ in range(WALK_STEPS):
        pop = e + step_matrix @ pop
    return np.maximum(pop, 1.0 / len(starts))


def _neighbours(topo: Topology, names: np.ndarray, allowed: np.ndarray, taken: np.ndarray,
                p_group: np.ndarray, p_ent: np.ndarray,
                total: np.ndarray, g_min: np.ndarray, n_groups: int) -> tuple[np.ndarray, ...]:
    """Block 2 of ``context``: the call-graph neighbours (callers or callees) of a group's
    alerting entities that neither alert nor are open (``taken``: their sorted group x entity
    keys), by the summed score of their alerting neighbours (the largest shown just below the
    group's lowest member)."""
    n_names = len(names)
    adj = _adjacency(topo, names)
    both = ((adj + adj.T) > 0).astype(float)
    from scipy.sparse import coo_matrix  # lazily: scoring without a call graph needs no scipy
    member_score = coo_matrix((total, (p_group, p_ent)), shape=(n_groups, n_names)).tocsr()
    near = (member_score @ both).tocoo()
    flat = near.row.astype(np.int64) * n_names + near.col
    ok = (near.data > 0) & ~_contains(taken, flat) & allowed[near.col]
    g, e, v = near.row[ok].astype(np.int64), near.col[ok].astype(np.int64), near.data[ok]
    top = np.zeros(n_groups)
    np.maximum.at(top, g, v)
    key = v / np.maximum(top[g], 1e-12)
    none = np.full(len(g), -1, dtype=np.int64)
    return (g, e, np.full(len(g), 2, dtype=np.int64), key,
            np.full(len(g), np.iinfo(np.int64).max), key * g_min[g], none, none)


def _walk_step(adj):
    """One step of the walk on ``adj`` (caller row, callee column), as the matrix that maps
    the mass on each entity to the mass it sends on, the restart taken out."""
    trans = (adj + WALK_BACK * adj.T).tocsr()
    out = np.asarray(trans.sum(axis=1)).ravel()
    inv = np.where(out > 0, 1.0 / np.where(out > 0, out, 1.0), 0.0)
    return ((1 - WALK_RESTART) * (trans.multiply(inv[:, None]))).T.tocsr()


def _walk_from(adj, sources: np.ndarray) -> np.ndarray:
    """For each entity code in ``sources``, the stationary mass of a random walk with restart
    to it on the call graph ``adj`` (caller row, callee column), up to a positive factor: the
    walk moves to a callee (weight 1) or back to a caller (:data:`WALK_BACK`), restarts with
    :data:`WALK_RESTART`, and a node with no call sends its mass back to the start. That
    fixed point is (I - (1 - restart) P)^-1 e, summed here as a series of WALK_STEPS terms,
    sources a block at a time. One row per source."""
    n = adj.shape[0]
    step_matrix = _walk_step(adj)
    result = np.empty((len(sources), n))
    block = max(1, WALK_CELLS // max(n, 1))
    for a in range(0, len(sources), block):
        cols = sources[a:a + block]
        e = np.zeros((n, len(cols)))
        e[cols, np.arange(len(cols))] = 1.0
        y = e.copy()
        for _ in range(WALK_STEPS):  # every source of the block at once
            y = e + step_matrix @ y
        result[a:a + len(cols)] = y.T
    return result


def _context_evidence(who: str, code: int, open_event: int, events: list[Event], adj, adj_in,
                      member_codes: np.ndarray) -> str:
    """Why an entity that does not alert in the group is a suspect."""
    if open_event >= 0:
        ev = events[open_event]
        what = (f"{ev.top_metrics[0]} z={ev.top_z[0]:.1f}" if ev.top_metrics and ev.top_z
                else f"score {ev.score:.2f}")
        return f"{who}: no new event; its event open since {iso(ev.start)} ({what})"
    if adj is None:
        return f"{who}: no event"
    calls = int(np.isin(adj.indices[adj.indptr[code]:adj.indptr[code + 1]], member_codes).sum())
    called = int(np.isin(adj_in.indices[adj_in.indptr[code]:adj_in.indptr[code + 1]],
                         member_codes).sum())
    return (f"{who}: no event; calls {calls} and is called by {called} alerting "
            "entit(y/ies)")


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
    from scipy.sparse import coo_matrix  # only with a call graph: scoring needs no scipy
    from scipy.sparse.csgraph import connected_components

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


def _join_overlapping(label: np.ndarray, start: np.ndarray, end: np.ndarray,
                      entity: np.ndarray, grouping: Grouping) -> np.ndarray:
    """Onset groups (``label``) joined as :data:`JOINS` says: a later group B joins an earlier
    A when an event of B starts while an event of A on a linked entity is open (or at most a
    gap after it ended) and B's onset is at most a window after the onset of the group A
    belongs to by then. Candidate pairs of events come from one sorted search (an event and
    those that started at most a window and a gap before it); only the joins, a few per group,
    are walked one by one, in onset order. Returns labels 0..k-1 again."""
    n = len(start)
    gap, horizon = int(grouping.gap.value), int((grouping.step * grouping.window).value)
    n_lab = int(label.max()) + 1
    onset = np.full(n_lab, np.iinfo(np.int64).max)
    np.minimum.at(onset, label, start)
    order = np.argsort(start, kind="stable")
    s = start[order]
    # Every earlier group member ``m`` that can overlap ``e`` started in
    # [onset(B) - window, e.start], and e.start <= onset(B) + gap: so in [e.start - window - gap,
    # e.start].
    lo = np.searchsorted(s, s - horizon - gap, side="left")
    hi = np.searchsorted(s, s, side="right")
    counts = hi - lo
    e_pos = np.repeat(np.arange(n), counts)
    m_pos = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + \
        np.repeat(lo, counts)
    e, m = order[e_pos], order[m_pos]
    le, lm = label[e], label[m]
    keep = ((le != lm) & (onset[lm] <= onset[le]) & (end[m] + gap >= start[e])
            & (onset[le] - onset[lm] <= horizon))
    e, m = e[keep], m[keep]
    if not len(e):
        return label
    linked = _linked_pairs(entity[e], entity[m], grouping)
    b, a = label[e[linked]], label[m[linked]]
    if not len(b):
        return label
    # Joins walked in the later group's onset order, each into the earliest merged group the
    # bound allows. A merged group's root is its earliest member, so its onset is the root's.
    root = np.arange(n_lab)
    pairs = np.unique(np.stack([b, a], axis=1), axis=0)
    pairs = pairs[np.lexsort((onset[pairs[:, 1]], pairs[:, 0], onset[pairs[:, 0]]))]
    bounds = np.r_[np.flatnonzero(np.r_[True, pairs[1:, 0] != pairs[:-1, 0]]), len(pairs)]
    for i, j in zip(bounds[:-1], bounds[1:], strict=True):
        later = int(pairs[i, 0])
        best = -1
        for earlier in pairs[i:j, 1]:
            r = int(earlier)
            while root[r] != r:
                r = int(root[r])
            # r == later: an earlier group of the same onset already joined this one.
            if r != later and onset[later] - onset[r] <= horizon and (
                    best < 0 or onset[r] < onset[best]):
                best = r
        if best >= 0:
            root[later] = best
    while True:  # pointer jumping: every group to its root
        up = root[root]
        if np.array_equal(up, root):
            break
        root = up
    return np.unique(root[label], return_inverse=True)[1].astype(np.int64)


def _linked_pairs(a: np.ndarray, b: np.ndarray, grouping: Grouping) -> np.ndarray:
    """For event pairs (entities ``a`` of the later, ``b`` of the earlier event): linked as
    the grouping's join reads it (see :data:`JOINS`)."""
    linked = np.ones(len(a), dtype=bool)
    topo = grouping.topology
    if topo is None:
        return linked
    uniq = np.unique(np.r_[a, b])
    near = _near_entities(topo, uniq, directed=grouping.join == "overlap_callers")
    ca = np.array([near.index.get(x, -1) for x in a], dtype=np.int64)
    cb = np.array([near.index.get(x, -1) for x in b], dtype=np.int64)
    both = (ca >= 0) & (cb >= 0)
    linked[both] = near.hops[ca[both], cb[both]] <= MAX_HOPS
    return linked | (a == b)


@dataclass
class _Near:
    index: dict[str, int]
    hops: np.ndarray  # undirected call-graph distance between entities (inf: not connected)


def _near_entities(topo: Topology, entities: np.ndarray, directed: bool = False) -> _Near:
    """Call-graph hops between ``entities`` (those in the graph); ``directed``: along call
    edges only, row = caller side (hops[i, j]: i reaches j by calling)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import shortest_path

    nodes = topo.nodes
    index = {n: i for i, n in enumerate(nodes)}
    src = np.array([index[x] for x in topo.source], dtype=np.int64)
    dst = np.array([index[x] for x in topo.target], dtype=np.int64)
    adj = coo_matrix((np.ones(len(src)), (src, dst)), shape=(len(nodes), len(nodes))).tocsr()
    known = [str(e) for e in entities if str(e) in index]
    cols = np.array([index[e] for e in known], dtype=np.int64)
    # Distances from the alerting entities only (not all pairs of a large graph).
    hops = (shortest_path(adj, directed=directed, unweighted=True, indices=cols)[:, cols]
            if len(cols) else np.zeros((0, 0)))
    return _Near({e: i for i, e in enumerate(known)}, hops)


def rank_pairs(group: np.ndarray, entity: np.ndarray, names: np.ndarray, onset: np.ndarray,
               size: np.ndarray, peak: np.ndarray, grouping: Grouping, n_groups: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Root-cause score (0..1, higher: more likely the root) of every alerting entity of every
    group at once; ``group``, ``entity`` (codes into ``names``), ``onset``, ``size`` and
    ``peak`` are one value per (group, entity) pair. Also, per pair, its alerting callers and
    callees in the group and whether the call graph knows the entity.

    Terms, each in 0..1, weighted by ``grouping.weights``: onset (the first to move scores 1,
    one that moved a group gap later 1/e), size (the log of the largest z of its top metrics
    against the group's largest), the detector's peak score and, with a call graph, how much
    the entity looks like where the fault sits: among its alerting neighbours, the share that
    are callers (they wait on it) rather than callees (it waits on them); an entity with no
    alerting neighbour scores 0.5 (nothing to tell). A group of one entity has no graph term."""
    w_onset, w_size, w_score, w_graph = grouping.weights
    n = len(group)
    g_onset = np.full(n_groups, np.iinfo(np.int64).max)
    np.minimum.at(g_onset, group, onset)
    lag = (onset - g_onset[group]).astype(float)
    onset_term = np.exp(-lag / max(int(grouping.gap.value), 1))
    log_size = np.log1p(np.maximum(size, 0.0))
    g_size = np.zeros(n_groups)
    np.maximum.at(g_size, group, log_size)
    size_term = np.divide(log_size, g_size[group], out=np.zeros(n), where=g_size[group] > 0)
    total = w_onset * onset_term + w_size * size_term + w_score * np.clip(peak, 0, 1)
    weight = np.full(n, w_onset + w_size + w_score)
    callers = np.zeros(n, dtype=np.int64)
    callees = np.zeros(n, dtype=np.int64)
    known = np.zeros(n, dtype=bool)
    topo = grouping.topology
    if topo is not None:
        pos = {str(x): i for i, x in enumerate(names)}
        src = np.array([pos.get(x, -1) for x in topo.source], dtype=np.int64)
        dst = np.array([pos.get(x, -1) for x in topo.target], dtype=np.int64)
        ok = (src >= 0) & (dst >= 0)
        src, dst = src[ok], dst[ok]
        known = np.isin(names.astype(str), topo.nodes)[entity]
        # For each pair and each call out of its entity: is the callee alerting in the group?
        key = group * len(names) + entity  # sorted: pairs come from np.unique
        by_src = np.argsort(src, kind="stable")
        src_s, dst_s = src[by_src], dst[by_src]
        lo = np.searchsorted(src_s, entity, side="left")
        hi = np.searchsorted(src_s, entity, side="right")
        deg = hi - lo
        pair_rep = np.repeat(np.arange(n), deg)
        offs = np.arange(int(deg.sum())) - np.repeat(np.cumsum(deg) - deg, deg)
        callee_ent = dst_s[np.repeat(lo, deg) + offs]
        want = group[pair_rep] * len(names) + callee_ent
        j = np.searchsorted(key, want)
        hit = (j < n) & (key[np.minimum(j, n - 1)] == want)
        np.add.at(callees, pair_rep[hit], 1)
        np.add.at(callers, j[hit], 1)
        g_count = np.bincount(group, minlength=n_groups)
        has_graph = g_count[group] > 1
        share = np.where(callers + callees > 0,
                         callers / np.maximum(callers + callees, 1), 0.5)
        graph_term = np.where(known, share, 0.5)
        total = total + np.where(has_graph, w_graph * graph_term, 0.0)
        weight = weight + np.where(has_graph, w_graph, 0.0)
    return total / np.maximum(weight, 1e-12), callers, callees, known


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
