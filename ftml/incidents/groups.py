"""Grouping and ranking put together: :func:`assign_groups` sets ``group``, ``suspects`` and
``evidence`` on every event and returns one record per group (``--groups-out``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ftml.events import Event, iso
from ftml.incidents.grouping import (
    EVIDENCE_SUSPECTS,
    JOINS,
    MAX_SUSPECTS,
    RANKINGS,
    Grouping,
    _components,
    _join_overlapping,
    group_id,
    reads_scores,
)
from ftml.incidents.rank import _candidates, _context_evidence, rank_pairs
from ftml.incidents.topology import _adjacency
from ftml.incidents.trail import ScoreTrail

#: Group columns of ``--groups-out``.
GROUP_FIELDS = ("group", "start", "end", "entities", "events", "suspects", "cause", "evidence")


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
    # The known entities are all in ``names`` (sorted): found by bisection. np.isin on object
    # arrays compares every pair (1000 known entities: 5 ms a call, which made the live
    # grouper the p99 of `bench watch`).
    allowed = np.ones(len(names), dtype=bool)
    if grouping.entities is not None:
        allowed[:] = False
        allowed[np.searchsorted(names, np.array(grouping.entities, dtype=object))] = True
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


def groups_table(records: list[dict]) -> list[dict]:
    """Group records as written by ``--groups-out`` (lists kept; the writer encodes them)."""
    return [{k: r[k] for k in GROUP_FIELDS} for r in records]
