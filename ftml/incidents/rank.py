"""Root-cause ranking: the suspects of each group, best first (:data:`RANKINGS
<ftml.incidents.grouping.RANKINGS>`), from the events' onsets, sizes and scores, the call graph
(a random walk with restart) and, for the onset rankings, the window scores."""

from __future__ import annotations

import numpy as np

from ftml.events import Event, iso
from ftml.incidents import trail as _trail  # module: WALK_CELLS is read at call time
from ftml.incidents.grouping import (
    MAX_SUSPECTS,
    ONSET_LOOKBACK,
    ONSET_SPAN,
    Grouping,
    reads_scores,
)
from ftml.incidents.topology import Topology, _adjacency
from ftml.incidents.trail import ScoreTrail, onset_scores

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


#: The walk keeps, per group, its members and at most this many other entities (by mass); it
#: walks at most :data:`ftml.incidents.trail.WALK_CELLS` (group x entity) cells at a time.
WALK_KEEP = MAX_SUSPECTS


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
    step = max(1, _trail.WALK_CELLS // max(n_names, 1))
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
    block = max(1, _trail.WALK_CELLS // max(n, 1))
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
