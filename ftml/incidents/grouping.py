"""Which events form one incident: the grouping settings of a model (:class:`Grouping`,
:func:`grouping_for`), the stable group id, and the labels: onsets within a gap, split by the
call graph, then (``diagnose.group_join``) later groups that overlap a linked earlier one."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ftml.config import DiagnoseConfig
from ftml.errors import InputError
from ftml.incidents.topology import MAX_HOPS, Topology, _near_entities, load_topology

#: Suspects listed per group, and those given evidence.

#: Suspects listed per group, and those given evidence.
MAX_SUSPECTS, EVIDENCE_SUSPECTS = 5, 3


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


def default_weights() -> tuple[float, float, float, float]:
    d = DiagnoseConfig()
    return (d.rank_onset, d.rank_size, d.rank_score, d.rank_graph)


def group_id(entity: str, start: pd.Timestamp, model_version: str) -> str:
    """Stable id of a group: a hash of its earliest event's entity and start and the model
    version, so that chunked, Dask and live scoring name the same incident alike."""
    key = f"group\x1f{entity}\x1f{pd.Timestamp(start).isoformat()}\x1f{model_version}"
    return "g" + hashlib.sha256(key.encode()).hexdigest()[:15]


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
        ii, jj = np.triu_indices(len(idx), 1)
        keep = _linked(ent[ii], ent[jj], near)
        graph = coo_matrix((np.ones(int(keep.sum())), (ii[keep], jj[keep])),
                           shape=(len(idx), len(idx)))
        k, comp = connected_components(graph.tocsr(), directed=False)
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
    if grouping.topology is None:
        return np.ones(len(a), dtype=bool)
    near = _near_entities(grouping.topology, np.unique(np.r_[a, b]),
                          directed=grouping.join == "overlap_callers")
    return _linked(a, b, near)


def _linked(a: np.ndarray, b: np.ndarray, near) -> np.ndarray:
    """Per pair of entities: linked in the call graph, the one rule of grouping's topology
    split and its join. The same entity, and an entity the graph does not know (it joins on
    time alone), are linked; else at most :data:`MAX_HOPS` hops (``near.hops[a, b]``)."""
    known = pd.Index(list(near.index))  # near.index: name -> its row of near.hops, in order
    ca, cb = known.get_indexer(a), known.get_indexer(b)
    linked = np.ones(len(a), dtype=bool)
    both = (ca >= 0) & (cb >= 0)
    linked[both] = near.hops[ca[both], cb[both]] <= MAX_HOPS
    return linked | (a == b)
