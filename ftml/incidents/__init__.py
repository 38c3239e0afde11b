"""Incidents across entities: events whose onsets co-occur (and, when a call graph is known, that
are connected in it) become one group, and the group's entities are ranked as the likely root.

Sits after diagnosis and before recovery: it reads finished :class:`~ftml.events.Event`s and
sets their ``group``, ``suspects`` and ``evidence``. The ranking uses what the events already
hold (onset, peak score, the z of their top metrics against each entity's own baseline) plus
the call graph when given: a fault in a callee shows in its callers too (they wait on it), so an
alerting entity whose callees are quiet is preferred to one whose callees alert.

One module per job, in flow order: ``topology`` (call graphs), ``trail`` (window scores for the
onset rankings), ``grouping`` (settings, ids, which events form a group), ``rank`` (suspects),
``groups`` (both put together: :func:`assign_groups`), ``live`` (``watch``'s grouper).
"""

from ftml.incidents.grouping import (
    EVIDENCE_SUSPECTS,
    JOINS,
    MAX_SUSPECTS,
    ONSET_LOOKBACK,
    ONSET_RANKINGS,
    ONSET_SPAN,
    RANKINGS,
    Grouping,
    default_weights,
    group_id,
    grouping_for,
    reads_scores,
)
from ftml.incidents.groups import GROUP_FIELDS, assign_groups, groups_table
from ftml.incidents.live import LIVE_HORIZON, LIVE_MAX_EVENTS, LiveGrouper
from ftml.incidents.rank import rank_pairs
from ftml.incidents.topology import MAX_HOPS, Topology, load_topology
from ftml.incidents.trail import WALK_CELLS, ScoreTrail, onset_scores

__all__ = [
    "EVIDENCE_SUSPECTS", "GROUP_FIELDS", "JOINS", "LIVE_HORIZON", "LIVE_MAX_EVENTS", "MAX_HOPS",
    "MAX_SUSPECTS", "ONSET_LOOKBACK", "ONSET_RANKINGS", "ONSET_SPAN", "RANKINGS", "WALK_CELLS",
    "Grouping", "LiveGrouper", "ScoreTrail", "Topology", "assign_groups", "default_weights",
    "group_id", "grouping_for", "groups_table", "load_topology", "onset_scores", "rank_pairs",
    "reads_scores",
]
