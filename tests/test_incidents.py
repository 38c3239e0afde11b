"""Incident grouping and root ranking (ftml.incidents), table-driven on hand-made events."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from ftml import api
from ftml.errors import InputError
from ftml.events import Event
from ftml.incidents import (
    JOINS,
    RANKINGS,
    Grouping,
    ScoreTrail,
    Topology,
    assign_groups,
    group_id,
    load_topology,
)

T0 = pd.Timestamp("2026-01-05T00:00:00Z")
GAP = pd.Timedelta(minutes=5)
# frontend calls checkout and cart; checkout calls cart and payment.
CALLS = Topology.from_edges([("frontend", "checkout"), ("frontend", "cart"),
                             ("checkout", "cart"), ("checkout", "payment")])


def ev(entity: str, start_min: float, end_min: float, score: float = 0.8,
       z: float = 5.0, metric: str = "latency") -> Event:
    start = T0 + pd.Timedelta(minutes=start_min)
    return Event(entity=entity, start=start, end=T0 + pd.Timedelta(minutes=end_min),
                 score=score, top_metrics=[metric], top_z=[z], cause="cpu",
                 id=f"{entity}-{start_min}")


def groups_of(events: list[Event]) -> list[set[str]]:
    by: dict[str, set[str]] = {}
    for e in events:
        by.setdefault(e.group, set()).add(e.id)
    return sorted(by.values(), key=lambda s: sorted(s))


GROUPING_CASES = [
    # (name, events, topology, expected groups as sets of event ids)
    ("onsets within the gap on two entities join",
     [ev("a", 0, 10), ev("b", 3, 12)], None, [{"a-0", "b-3"}]),
    ("onsets exactly the gap apart join",
     [ev("a", 0, 10), ev("b", 5, 20)], None, [{"a-0", "b-5"}]),
    ("an onset beyond the gap is a new incident, though the first event still lasts",
     [ev("a", 0, 60), ev("b", 16, 20)], None, [{"a-0"}, {"b-16"}]),
    ("onsets count from the group's first: no chaining",
     [ev("a", 0, 10), ev("b", 4, 30), ev("c", 8, 40), ev("d", 12, 40)], None,
     [{"a-0", "b-4"}, {"c-8", "d-12"}]),
    ("topology: unconnected entities stay apart though they overlap",
     [ev("cart", 0, 10), ev("billing", 2, 10)],
     Topology.from_edges([("cart", "db"), ("billing", "ledger")]), [{"billing-2"}, {"cart-0"}]),
    ("topology: callers of the same callee join",
     [ev("cart", 0, 10), ev("frontend", 2, 10), ev("checkout", 1, 9)], CALLS,
     [{"cart-0", "checkout-1", "frontend-2"}]),
    ("topology: an entity it does not know joins on time alone",
     [ev("cart", 0, 10), ev("host-7", 2, 10)], CALLS, [{"cart-0", "host-7-2"}]),
    ("one entity's two events in one incident",
     [ev("a", 0, 2), ev("a", 4, 9), ev("b", 1, 4)], None, [{"a-0", "a-4", "b-1"}]),
    ("topology: onsets close but too many hops apart",
     [ev("a", 0, 9), ev("d", 1, 9)], Topology.from_edges([("a", "b"), ("b", "c"), ("c", "d")]),
     [{"a-0"}, {"d-1"}]),
]


@pytest.mark.parametrize("name,events,topology,expected", GROUPING_CASES,
                         ids=[c[0] for c in GROUPING_CASES])
def test_grouping(name, events, topology, expected):
    records = assign_groups(events, Grouping(GAP, topology, "v1"))
    assert groups_of(events) == sorted(expected, key=lambda s: sorted(s))
    assert len(records) == len(expected)
    assert sorted(i for r in records for i in r["events"]) == sorted(e.id for e in events)


# api calls db (the cascade of examples/live: a root in the callee, a symptom in its caller).
CASCADE = Topology.from_edges([("front", "api"), ("api", "db")])
CHAIN = Topology.from_edges([("a", "b"), ("b", "c"), ("c", "d")])
JOIN_CASES = [
    # (name, events, topology, expected groups for each of onset, overlap, overlap_callers).
    # GAP is 5 steps of 1 min and Grouping's window 15 steps: a join is at most 15 min after.
    ("a caller's event opening 8 min into its callee's joins it",
     [ev("api", 0, 30), ev("front", 8, 30)], CASCADE,
     ([{"api-0"}, {"front-8"}], [{"api-0", "front-8"}], [{"api-0", "front-8"}])),
    ("a callee's event opening in its caller's: linked, but not its callers",
     [ev("front", 0, 30), ev("api", 8, 30)], CASCADE,
     ([{"front-0"}, {"api-8"}], [{"api-8", "front-0"}], [{"front-0"}, {"api-8"}])),
    ("two hops along the calls still join; the reverse does not for callers",
     [ev("db", 0, 30), ev("front", 9, 30), ev("d", 0, 30), ev("a", 9, 30)],
     Topology.from_edges([("front", "api"), ("api", "db"), ("a", "b"), ("b", "c"),
                          ("c", "d")]),
     ([{"d-0"}, {"db-0"}, {"a-9"}, {"front-9"}], [{"d-0"}, {"db-0", "front-9"}, {"a-9"}],
      [{"d-0"}, {"db-0", "front-9"}, {"a-9"}])),
    ("more than a window after the onset stays apart, though it overlaps",
     [ev("api", 0, 60), ev("front", 16, 60)], CASCADE,
     ([{"api-0"}, {"front-16"}],) * 3),
    ("after the earlier event ended and its gap passed: apart",
     [ev("api", 0, 2), ev("front", 8, 20)], CASCADE, ([{"api-0"}, {"front-8"}],) * 3),
    ("within the gap after the earlier event ended: joined",
     [ev("api", 0, 2), ev("front", 7, 20)], CASCADE,
     ([{"api-0"}, {"front-7"}], [{"api-0", "front-7"}], [{"api-0", "front-7"}])),
    ("joins do not chain past a window from the merged group's onset",
     [ev("a", 0, 100), ev("b", 8, 100), ev("c", 16, 100)], None,
     ([{"a-0"}, {"b-8"}, {"c-16"}], [{"a-0", "b-8"}, {"c-16"}], [{"a-0", "b-8"}, {"c-16"}])),
    ("too many hops apart: overlapping events stay apart",
     [ev("a", 0, 30), ev("d", 8, 30)], CHAIN, ([{"a-0"}, {"d-8"}],) * 3),
    ("without a call graph any overlapping entity joins",
     [ev("x", 0, 30), ev("y", 10, 30)], None,
     ([{"x-0"}, {"y-10"}], [{"x-0", "y-10"}], [{"x-0", "y-10"}])),
    ("an entity the call graph does not know joins on time alone",
     [ev("api", 0, 30), ev("host-7", 10, 30)], CASCADE,
     ([{"api-0"}, {"host-7-10"}], [{"api-0", "host-7-10"}], [{"api-0", "host-7-10"}])),
    ("a later group joins the earliest group it overlaps",
     [ev("p", 0, 30), ev("q", 6, 30), ev("r", 12, 30)], None,
     ([{"p-0"}, {"q-6"}, {"r-12"}], [{"p-0", "q-6", "r-12"}], [{"p-0", "q-6", "r-12"}])),
    ("the same entity flapping within the gap is one incident",
     [ev("api", 0, 10), ev("api", 14, 30)], CASCADE,
     ([{"api-0"}, {"api-14"}], [{"api-0", "api-14"}], [{"api-0", "api-14"}])),
]


@pytest.mark.parametrize("name,events,topology,expected", JOIN_CASES,
                         ids=[c[0] for c in JOIN_CASES])
@pytest.mark.parametrize("join", JOINS)
def test_joining_overlapping_groups(join, name, events, topology, expected):
    want = expected[JOINS.index(join)]
    events = [dataclasses.replace(e) for e in events]
    records = assign_groups(events, Grouping(GAP, topology, "v1", join=join))
    assert groups_of(events) == sorted(want, key=lambda s: sorted(s))
    assert len(records) == len(want)
    for r in records:  # the id is the earliest member's; every member has the group's suspects
        members = [e for e in events if e.group == r["group"]]
        first = min(members, key=lambda e: (e.start, e.entity))
        assert r["group"] == group_id(first.entity, first.start, "v1")
        assert all(e.suspects == members[0].suspects for e in members)


def test_an_unknown_join_is_refused():
    with pytest.raises(ValueError, match="unknown join"):
        assign_groups([ev("a", 0, 5)], Grouping(GAP, None, "v1", join="chain"))


@pytest.mark.parametrize("join", JOINS)
def test_live_grouper_joins_as_batch_does(join):
    """watch regroups with the same function: a caller's event that opens while its callee's
    runs gets the callee's group, as ``ftml score`` gives it."""
    from ftml.incidents import LiveGrouper

    events = [ev("api", 0, 30), ev("front", 8, 30), ev("db", 50, 60), ev("api", 58, 70)]
    grouping = Grouping(GAP, CASCADE, "v1", join=join)
    batch = [dataclasses.replace(e) for e in events]
    assign_groups(batch, grouping)
    live = LiveGrouper(grouping)
    for e in events:  # first seen while open (ending at its onset), then with its final state
        live.assign(dataclasses.replace(e, end=e.start))
    got = [live.assign(dataclasses.replace(e)) for e in events]
    assert [(g.group, g.suspects) for g in got] == [(b.group, b.suspects) for b in batch]
    assert len({g.group for g in got}) == (4 if join == "onset" else 2)


RANKING_CASES = [
    # (name, events, topology, expected top suspect)
    ("earliest and largest change wins without topology",
     [ev("a", 0, 10, z=9.0), ev("b", 2, 10, z=3.0), ev("c", 3, 10, z=2.5)], None, "a"),
    ("a much larger change beats a slightly earlier one",
     [ev("a", 0, 10, z=1.2, score=0.6), ev("b", 1, 10, z=30.0, score=0.9)], None, "b"),
    ("topology: the callee whose callers alert wins over its callers",
     [ev("frontend", 0, 10, z=6.0), ev("checkout", 0, 10, z=6.0), ev("cart", 1, 10, z=5.0)],
     CALLS, "cart"),
    ("topology: a caller with quiet callees beats nothing-to-tell",
     [ev("frontend", 0, 10, z=5.0), ev("payment", 0, 10, z=5.0)], CALLS, "frontend"),
]


@pytest.mark.parametrize("name,events,topology,top", RANKING_CASES,
                         ids=[c[0] for c in RANKING_CASES])
def test_members_ranking(name, events, topology, top):
    """The alerting entities alone (the ranking kept for the benchmark's ablation)."""
    assign_groups(events, Grouping(pd.Timedelta(hours=1), topology, "v1", ranking="members"))
    assert {e.group for e in events} == {events[0].group}
    suspects = events[0].suspects
    assert suspects[0][0] == top
    assert all(e.suspects == suspects for e in events)  # the same list on every member
    scores = [s for _, s in suspects]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert sorted(x for x, _ in suspects) == sorted({e.entity for e in events})
    assert events[0].evidence and events[0].evidence[0].startswith(f"{top}:")


# frontend calls checkout and cart; checkout calls cart and payment; each runs on a host.
HOSTED = Topology.from_edges([(a, b) for a, b in zip(CALLS.source, CALLS.target, strict=True)]
                             + [("frontend", "10.0.0.1"), ("checkout", "10.0.0.2"),
                                ("cart", "10.0.0.2"), ("payment", "10.0.0.3")])
SERVICES = ("frontend", "checkout", "cart", "payment")

WALK_CASES = [
    # (name, events, topology, top suspect, entities that must be among the suspects)
    ("an alerting entity is always first, though a quiet hub gets more walk mass",
     [ev("frontend", 0, 10, z=5.0), ev("payment", 0, 10, z=5.0)], CALLS, None,
     {"frontend", "payment", "checkout"}),
    ("the quiet callee of two alerting callers is a suspect",
     [ev("frontend", 0, 10, z=5.0), ev("checkout", 0, 10, z=5.0)], CALLS, None, {"cart"}),
    ("a lone alerting entity stays first",
     [ev("cart", 0, 10, z=9.0)], CALLS, "cart", {"frontend", "checkout"}),
]


@pytest.mark.parametrize("name,events,topology,top,among", WALK_CASES,
                         ids=[c[0] for c in WALK_CASES])
def test_default_ranking(name, events, topology, top, among):
    assign_groups(events, Grouping(pd.Timedelta(hours=1), topology, "v1", entities=SERVICES))
    suspects = events[0].suspects
    alerting = {e.entity for e in events}
    assert suspects[0][0] in alerting and (top is None or suspects[0][0] == top)
    assert among <= {x for x, _ in suspects}
    names = [x for x, _ in suspects]
    assert names[:len(alerting)] == [x for x in names if x in alerting]  # alerting first
    scores = [s for _, s in suspects]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert all(e.suspects == suspects for e in events)


def test_hosts_of_the_call_graph_are_walked_through_but_never_suspects():
    events = [ev("checkout", 0, 10, z=5.0)]
    assign_groups(events, Grouping(GAP, HOSTED, "v1", entities=SERVICES))
    names = [x for x, _ in events[0].suspects]
    assert names[0] == "checkout" and "cart" in names
    assert not any(x.startswith("10.") for x in names)


def test_an_entity_whose_event_is_still_open_is_a_suspect_with_evidence():
    events = [ev("cart", 0, 60, z=8.0), ev("frontend", 30, 40, z=4.0)]
    for topology in (None, CALLS):
        assign_groups(events, Grouping(GAP, topology, "v1", entities=SERVICES))
        late = events[1]
        assert late.group != events[0].group
        names = [x for x, _ in late.suspects]
        assert names[0] == "frontend" and "cart" in names[:3]
        if topology is None:
            assert names == ["frontend", "cart"]
        line = late.evidence[names.index("cart")]
        assert line.startswith("cart: no new event; its event open since 2026-01-05T00:00:00")


@pytest.mark.parametrize("ranking", [r for r in RANKINGS if "walk" in r or r == "blend"])
def test_walk_is_the_same_however_many_groups_go_through_at_once(monkeypatch, ranking):
    import ftml.incidents.trail as inc  # the walk and the onset scores read it there

    # Some events outlast the next group's onset, so walk_recent has open entities to weigh.
    events = [ev(e, 20 * i + j, 20 * i + j + (25 if j else 5), z=3.0 + i + j)
              for i in range(6) for j, e in enumerate(SERVICES[i % 3:i % 3 + 2])]
    whole = [dataclasses.replace(e) for e in events]
    # Window scores (onset_walk reads them): each service rising at its own onsets.
    trail = _rising_trail(events)
    assign_groups(whole, Grouping(GAP, HOSTED, "v1", entities=SERVICES, ranking=ranking), trail)
    monkeypatch.setattr(inc, "WALK_CELLS", 1)  # one group (and one window) per pass
    parts = [dataclasses.replace(e) for e in events]
    assign_groups(parts, Grouping(GAP, HOSTED, "v1", entities=SERVICES, ranking=ranking), trail)
    assert [(e.group, e.suspects, e.evidence) for e in whole] == \
        [(e.group, e.suspects, e.evidence) for e in parts]
    assert len({e.group for e in whole}) == 6


@pytest.mark.parametrize("ranking", RANKINGS)
def test_every_ranking_names_every_alerting_entity_of_a_small_group(ranking):
    events = [ev("frontend", 0, 10), ev("cart", 1, 10, z=7.0)]
    records = assign_groups(events, Grouping(GAP, CALLS, "v1", ranking=ranking,
                                             entities=SERVICES), ScoreTrail())
    assert {"frontend", "cart"} <= {x for x, _ in events[0].suspects}
    assert set(records[0]["entities"]) == {"frontend", "cart"}


def _rising_trail(events: list[Event]) -> ScoreTrail:
    """A score per entity and minute over the events' span: 0.4, and its event's z / 10
    (at most 0.95) from each of its onsets for 3 minutes."""
    names = np.array(sorted({e.entity for e in events}), dtype=object)
    minutes = np.arange(-40, 200)
    code = np.repeat(np.arange(len(names)), len(minutes))
    t = np.tile(minutes, len(names))
    score = np.full(len(code), 0.4)
    for e in events:
        m = int((e.start - T0) / pd.Timedelta(minutes=1))
        hit = (names[code] == e.entity) & (t >= m) & (t < m + 3)
        score[hit] = np.maximum(score[hit], min(e.top_z[0] / 10, 0.95))
    trail = ScoreTrail()
    trail.add(names, code, T0.value + t * 60_000_000_000, score)
    return trail


# Round 2 (bench/PROTOCOL_rca.md): frontend calls checkout and currency; checkout, a hub, calls
# five services.
STAR = Topology.from_edges([("frontend", "checkout"), ("frontend", "currency")]
                           + [("checkout", x) for x in ("cart", "payment", "shipping", "email",
                                                        "currency")])
STAR_ENTITIES = ("frontend", "checkout", "cart", "payment", "shipping", "email", "currency")


def _suspects(events: list[Event], ranking: str, **kw) -> dict[str, list[str]]:
    """Suspect names per group's first event id, under ``ranking``, on copies of ``events``."""
    work = [dataclasses.replace(e) for e in events]
    assign_groups(work, Grouping(GAP, STAR, "v1", entities=STAR_ENTITIES, ranking=ranking, **kw))
    out: dict[str, list[str]] = {}
    for e in sorted(work, key=lambda e: e.start):
        out.setdefault(e.group, [x for x, _ in e.suspects])
    return out


def test_walk_lift_does_not_put_a_hub_first_for_being_one():
    # Three alerting entities alike in onset, size and score: the plain walk puts the hub
    # first (every walk passes through it); lifted over the graph's own popularity it is not.
    events = [ev("checkout", 0, 10), ev("currency", 0, 10), ev("frontend", 0, 10)]
    (plain,) = _suspects(events, "walk_context").values()
    (lifted,) = _suspects(events, "walk_lift").values()
    assert plain[0] == "checkout"
    assert lifted[0] != "checkout" and lifted[0] in {"currency", "frontend"}
    assert set(lifted[:3]) == {"checkout", "currency", "frontend"}  # alerting still first


def test_walk_recent_ranks_an_entity_open_since_the_lead_up_with_the_members():
    # email's event began 4 min before frontend's group (within the 5-min gap) and still
    # runs; shipping's began 108 min before. walk_context lists every open entity after the
    # quiet hub's walk mass allows; walk_recent ranks email with the alerting members, and
    # shipping, open for hours, after them.
    events = [ev("payment", 0, 2), ev("email", 4, 60, z=8.0, score=0.9),
              ev("frontend", 8, 12, z=2.0, score=0.5), ev("shipping", -100, 60, z=8.0, score=0.9)]
    late = lambda by: next(v for v in by.values() if v[0] == "frontend")  # noqa: E731
    context = late(_suspects(events, "walk_context"))
    recent = late(_suspects(events, "walk_recent"))
    assert context.index("checkout") < context.index("email")
    assert recent[:2] == ["frontend", "email"]
    assert recent.index("shipping") > recent.index("email")
    work = [dataclasses.replace(e) for e in events]
    assign_groups(work, Grouping(GAP, STAR, "v1", entities=STAR_ENTITIES, ranking="walk_recent"))
    front = next(e for e in work if e.entity == "frontend")
    assert front.evidence[1].startswith("email: no new event; its event open since "
                                        "2026-01-05T00:04:00Z")


def test_blend_orders_members_by_their_mean_rank():
    # Walk: checkout (the hub), currency, frontend; member score (no graph term): currency,
    # frontend, checkout. Mean ranks 1.5 (currency), 2 (checkout), 2.5 (frontend).
    events = [ev("checkout", 2, 10, z=1.5, score=0.3), ev("currency", 0, 10, z=9.0, score=0.9),
              ev("frontend", 1, 10, z=4.0, score=0.6)]
    weights = (1.0, 1.0, 0.5, 0.0)
    (walked,) = _suspects(events, "walk_context", weights=weights).values()
    (members,) = _suspects(events, "members", weights=weights).values()
    (blend,) = _suspects(events, "blend", weights=weights).values()
    assert walked[:3] == ["checkout", "currency", "frontend"]
    assert members == ["currency", "frontend", "checkout"]
    assert blend[:3] == ["currency", "checkout", "frontend"]
    work = [dataclasses.replace(e) for e in events]
    assign_groups(work, Grouping(GAP, STAR, "v1", entities=STAR_ENTITIES, ranking="blend",
                                 weights=weights))
    shown = [s for _, s in work[0].suspects]
    assert shown[:3] == [pytest.approx(5 / 6, abs=1e-4), pytest.approx(4 / 6, abs=1e-4),
                         pytest.approx(3 / 6, abs=1e-4)]
    assert shown == sorted(shown, reverse=True)


def test_blend_breaks_a_tie_of_mean_ranks_by_walk_mass():
    # With the callers-share term, checkout is second by member score: mean ranks tie at 1.5
    # for checkout (walk 1, score 2) and currency (walk 2, score 1); the walk decides.
    events = [ev("checkout", 1, 10, z=3.0, score=0.6), ev("currency", 0, 10, z=9.0, score=0.9),
              ev("frontend", 2, 10, z=2.0, score=0.5)]
    (walked,) = _suspects(events, "walk_context").values()
    (members,) = _suspects(events, "members").values()
    (blend,) = _suspects(events, "blend").values()
    assert walked[:2] == ["checkout", "currency"] and members[:2] == ["currency", "checkout"]
    assert blend[:3] == ["checkout", "currency", "frontend"]


def test_default_group_gap_is_round_2s_choice():
    from ftml.config import DiagnoseConfig

    # bench/PROTOCOL_rca.md round 2, candidate H: 2 steps (5 let a group opened minutes
    # before a fault take in the fault's own events).
    assert DiagnoseConfig().group_gap == 2


def test_unknown_ranking_is_refused():
    with pytest.raises(ValueError, match="unknown ranking"):
        assign_groups([ev("a", 0, 5)], Grouping(GAP, None, "v1", ranking="pagerank"))


def test_evidence_names_the_metric_and_lag():
    events = [ev("a", 0, 10, z=9.0, metric="cpu"), ev("b", 2, 10, z=3.0)]
    assign_groups(events, Grouping(GAP, None, "v1"))
    assert events[0].evidence[0] == "a: cpu z=9.0, moved first"
    assert events[0].evidence[1] == "b: latency z=3.0, moved 120s after the first"


def test_group_id_is_the_earliest_members_and_stable():
    events = [ev("b", 2, 10), ev("a", 0, 10)]
    assign_groups(events, Grouping(GAP, None, "v1"))
    assert events[0].group == events[1].group == group_id("a", T0, "v1")
    again = [ev("a", 0, 10), ev("b", 2, 10)]
    assign_groups(again, Grouping(GAP, None, "v1"))
    assert again[0].group == events[0].group
    other = [ev("a", 0, 10), ev("b", 2, 10)]
    assign_groups(other, Grouping(GAP, None, "v2"))
    assert other[0].group != events[0].group


def test_group_fields_round_trip_through_the_event_record():
    events = [ev("a", 0, 10), ev("b", 2, 10)]
    assign_groups(events, Grouping(GAP, CALLS, "v1"))
    back = Event.from_dict(json.loads(json.dumps(events[1].to_dict())))
    assert (back.group, back.suspects, back.evidence, back.top_z) == (
        events[1].group, [[e, round(s, 6)] for e, s in events[1].suspects],
        events[1].evidence, events[1].top_z)


TOPOLOGY_FILES = [
    ("edge list with header", "Source,Target,Weight\nfrontend,cart,1\ncart,redis,2\n",
     {("frontend", "cart"), ("cart", "redis")}),
    ("edge list without header or weight", "frontend,cart\ncart,redis\n",
     {("frontend", "cart"), ("cart", "redis")}),
    ("adjacency matrix", ",a,b,c\na,0,1,0\nb,0,0,1.0\nc,0,0,0\n", {("a", "b"), ("b", "c")}),
]


@pytest.mark.parametrize("name,text,edges", TOPOLOGY_FILES, ids=[c[0] for c in TOPOLOGY_FILES])
def test_load_topology(tmp_path, name, text, edges):
    path = tmp_path / "graph.csv"
    path.write_text(text)
    topo = load_topology(path)
    assert set(zip(topo.source.tolist(), topo.target.tolist(), strict=True)) == edges


@pytest.mark.parametrize("text,message", [
    ("justonecolumn\nx\n", "two columns"),
    ("source,target\nfrontend,\n", "empty source or target"),
    (",a,b\na,0,x\nb,0,0\n", "non-numbers"),
])
def test_bad_topology_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "graph.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_topology(path)
    with pytest.raises(InputError, match="not found"):
        load_topology(tmp_path / "absent.csv")


def test_score_groups_are_the_same_however_the_input_is_chunked(tmp_path):
    """Stable group ids across chunked scoring, and --groups-out one row per group."""
    from tests.test_api import _fleet

    metrics, incidents = _fleet(tmp_path, days=3, seed=3)
    api.train([metrics], tmp_path / "model", incidents=incidents)
    whole = api.score(tmp_path / "model", [metrics], out=tmp_path / "a.jsonl",
                      groups_out=tmp_path / "ga.jsonl")
    chunked = api.score(tmp_path / "model", [metrics], out=tmp_path / "b.jsonl",
                        chunk_rows=1000, groups_out=tmp_path / "gb.jsonl")
    assert whole.events and all(e.group for e in whole.events)
    assert whole.groups == chunked.groups
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert (tmp_path / "ga.jsonl").read_text() == (tmp_path / "gb.jsonl").read_text()
    rows = [json.loads(x) for x in (tmp_path / "ga.jsonl").read_text().splitlines()]
    assert len(rows) == len({e.group for e in whole.events})
    for r in rows:
        members = [e for e in whole.events if e.group == r["group"]]
        assert sorted(r["events"]) == sorted(e.id for e in members)
        assert set(r["entities"]) == {e.entity for e in members}
        assert r["suspects"][0][0] == members[0].suspects[0][0]
        assert set(r) >= {"start", "end", "entities", "suspects", "cause"}


@pytest.mark.parametrize("ranking", ["walk_context", "walk_lift", "walk_recent", "blend"])
def test_live_grouper_gives_the_batch_groups_as_events_arrive(ranking):
    from ftml.incidents import LiveGrouper

    # checkout's event (begun 4 min before payment's group) still runs at that group's onset
    # and at the last one's: open entities, recent and not, are ranked too.
    events = [ev("cart", 0, 10, z=9.0), ev("frontend", 1, 10), ev("checkout", 4, 40),
              ev("payment", 8, 20), ev("cart", 31, 35)]
    batch = [dataclasses.replace(e) for e in events]
    assign_groups(batch, Grouping(GAP, CALLS, "v1", ranking=ranking))
    live = LiveGrouper(Grouping(GAP, CALLS, "v1", ranking=ranking))
    got = []
    for e in events:  # each event seen while open, then again with its final state
        live.assign(dataclasses.replace(e))
    for e in events:
        got.append(live.assign(dataclasses.replace(e)))
    assert [(g.group, g.suspects, g.evidence) for g in got] == \
        [(b.group, b.suspects, b.evidence) for b in batch]
    assert len({g.group for g in got}) == 3
    assert "checkout" in {x for x, _ in got[3].suspects}


def test_live_grouper_forgets_events_beyond_its_horizon():
    from ftml.incidents import LiveGrouper

    live = LiveGrouper(Grouping(GAP, None, "v1"), horizon=pd.Timedelta(hours=1))
    live.assign(ev("a", 0, 5))
    live.assign(ev("b", 200, 205))
    assert set(live.events_) == {"b-200"}
    late = live.assign(ev("c", 1, 4))  # older than the horizon: its own group
    assert late.group == group_id("c", T0 + pd.Timedelta(minutes=1), "v1")


def test_score_groups_with_the_models_join_in_every_driver_alike(tmp_path):
    """diagnose.group_join is read from the model: a fault on web-1 that web-2 feels 8 min
    later (beyond the onset gap, while web-1's event is open) is one incident, in local and
    chunked scoring alike, where onsets alone make two."""
    import copy

    from ftml.bundle import load_model
    from ftml.config import Config
    from ftml.incidents import grouping_for
    from tests.test_api import _fleet

    metrics, incidents = _fleet(tmp_path, days=3, seed=3)
    config = Config.from_dict({"diagnose": {"group_join": "overlap"}}, source="test")
    api.train([metrics], tmp_path / "model", incidents=incidents, config=config)
    frame = pd.read_csv(metrics, parse_dates=["timestamp"])
    minute = (frame["timestamp"] - frame["timestamp"].min()) // pd.Timedelta(minutes=1)
    for entity, first in (("web-1", 3300), ("web-2", 3308)):  # quiet hours of both
        frame.loc[(frame["entity"] == entity) & minute.between(first, 3360), "cpu"] += 40
    cascade = tmp_path / "cascade.csv"
    frame[minute >= 2200].to_csv(cascade, index=False)
    whole = api.score(tmp_path / "model", [cascade])
    chunked = api.score(tmp_path / "model", [cascade], chunk_rows=1000)
    grouping = grouping_for(load_model(tmp_path / "model"))
    assert grouping.join == "overlap"
    assert whole.groups == chunked.groups == assign_groups(copy.deepcopy(whole.events), grouping)
    by_onset = assign_groups(copy.deepcopy(whole.events),
                             dataclasses.replace(grouping, join="onset"))
    assert len(whole.groups) == len(by_onset) - 1
    hit = [g for g in whole.groups if set(g["entities"]) == {"web-1", "web-2"}]
    assert len(hit) == 1 and hit[0]["suspects"][0][0] == "web-1"
