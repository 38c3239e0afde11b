"""Round 3 of bench/PROTOCOL_rca.md: rankings that read window scores from the group's onset
(ftml.incidents ScoreTrail, onset_score, onset_walk, onset_lift), and the trail kept by the
scoring drivers and the live grouper."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pandas as pd
import pytest

from ftml import api
from ftml.config import Config
from ftml.errors import InputError
from ftml.incidents import (
    ONSET_RANKINGS,
    Grouping,
    LiveGrouper,
    ScoreTrail,
    assign_groups,
    grouping_for,
    onset_scores,
)
from tests.test_incidents import CALLS, GAP, STAR, STAR_ENTITIES, T0, ev

MINUTE = pd.Timedelta(minutes=1)
MIN_NS = int(MINUTE.value)


def trail_of(scores: dict[str, dict[int, float]], base: float | None = None,
             minutes: range = range(-40, 60)) -> ScoreTrail:
    """A trail from {entity: {minute: score}}; with ``base``, every other minute of
    ``minutes`` scores ``base``."""
    names, ends, values = [], [], []
    for entity, by_minute in scores.items():
        cells = dict.fromkeys(minutes, base) if base is not None else {}
        cells.update(by_minute)
        for m, s in cells.items():
            names.append(entity)
            ends.append(T0.value + m * MIN_NS)
            values.append(s)
    codes, uniq = pd.factorize(pd.Series(names))
    trail = ScoreTrail()
    trail.add(np.asarray(uniq, dtype=object), codes, np.array(ends), np.array(values))
    return trail


ONSET_SCORE_CASES = [
    # (name, {minute: score} of entity "a", span, how, expected value at onset 0 or None)
    ("the largest score in the span, both ends in", {-2: 0.9, -1: 0.5, 5: 0.7, 6: 0.99},
     (1, 5), "max", 0.7),
    ("a window before the span and after it is not read", {-2: 0.9, 6: 0.99}, (1, 5), "max",
     None),
    ("the lookback median: [onset - 31, onset - 1) steps",
     {-32: 9.0, -31: 1.0, -10: 2.0, -2: 3.0, -1: 100.0}, (31, 1), "median", 2.0),
    ("an even count: the mean of the middle two", {-20: 1.0, -10: 2.0, -5: 4.0, -3: 8.0},
     (31, 1), "median", 3.0),
]


@pytest.mark.parametrize("name,scores,span,how,expected", ONSET_SCORE_CASES,
                         ids=[c[0] for c in ONSET_SCORE_CASES])
def test_onset_scores(name, scores, span, how, expected):
    names = np.array(["a", "b"], dtype=object)
    keys, values = onset_scores(trail_of({"a": scores, "zz": {0: 5.0}}), names,
                                np.array([T0.value]), MIN_NS, span, how=how)
    got = dict(zip(keys.tolist(), values.tolist(), strict=True))
    assert 1 not in got  # "b" has no window; "zz", not a name, is left out
    assert got.get(0) == (pytest.approx(expected) if expected is not None else None)


def test_onset_scores_are_the_same_a_window_at_a_time(monkeypatch):
    import ftml.incidents.trail as inc  # the walk and the onset scores read it there

    rng = np.random.default_rng(4)
    trail = trail_of({e: {m: float(rng.uniform()) for m in range(-40, 60)}
                      for e in ("a", "b", "c")})
    names = np.array(["a", "b", "c"], dtype=object)
    onsets = T0.value + np.array([0, 7, 30]) * MIN_NS
    whole = onset_scores(trail, names, onsets, MIN_NS, (31, 1), how="median")
    monkeypatch.setattr(inc, "WALK_CELLS", 1)
    parts = onset_scores(trail, names, onsets, MIN_NS, (31, 1), how="median")
    assert np.array_equal(whole[0], parts[0]) and np.allclose(whole[1], parts[1])
    assert len(whole[0]) == 9


def test_score_trail_joins_parts_of_different_entities_in_time_order_and_trims():
    trail = ScoreTrail()
    trail.add(np.array(["b", "a"], dtype=object), np.array([0, 1, 0]),
              np.array([30, 10, 50]), np.array([0.3, 0.1, 0.5]))
    trail.add(np.array(["c"], dtype=object), np.array([0]), np.array([20]), np.array([0.2]))
    names, code, end, score = trail.arrays()
    assert names.tolist() == ["a", "b", "c"]
    assert names[code].tolist() == ["a", "c", "b", "b"] and end.tolist() == [10, 20, 30, 50]
    assert score.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.5])
    version = trail.version
    trail.trim(25)
    assert trail.version > version and trail.arrays()[2].tolist() == [30, 50]
    assert len(trail) == 2


def _ranked(events, ranking: str, trail: ScoreTrail, topology=STAR,
            entities=STAR_ENTITIES) -> list[list[str]]:
    work = [dataclasses.replace(e) for e in events]
    records = assign_groups(work, Grouping(GAP, topology, "v1", entities=entities,
                                           ranking=ranking, step=MINUTE), trail)
    return [[x for x, _ in r["suspects"]] for r in records]


def test_onset_score_ranks_the_alerting_entities_first_each_block_by_its_onset_peak():
    # cart and frontend alert in the group, checkout's event is still open at its onset;
    # payment never alerts but scores highest. Members by onset peak, checkout among them
    # (alerting), payment after every alerting entity.
    events = [ev("cart", 0, 10), ev("frontend", 1, 10), ev("checkout", -30, 60)]
    trail = trail_of({"cart": {2: 0.7}, "frontend": {3: 0.8}, "checkout": {1: 0.9},
                      "payment": {2: 0.99}, "shipping": {30: 0.99}}, base=0.3)
    groups = _ranked(events, "onset_score", trail)
    assert groups[-1][:4] == ["checkout", "frontend", "cart", "payment"]
    members = _ranked(events, "walk_context", trail)[-1]
    assert members[:2] != ["checkout", "frontend"]  # the walk orders them otherwise


def test_onset_lift_does_not_lift_an_entity_that_scores_high_all_the_time():
    # noisy scores 0.85 before the onset and peaks 0.9 in it; cart rises from 0.3 to 0.8.
    events = [ev("cart", 0, 10), ev("frontend", 0, 10)]
    trail = trail_of({"frontend": {m: 0.85 for m in range(-40, 0)} | {2: 0.9},
                      "cart": {2: 0.8}}, base=0.3)
    (plain,) = _ranked(events, "onset_score", trail)
    (lifted,) = _ranked(events, "onset_lift", trail)
    assert plain[:2] == ["frontend", "cart"]
    assert lifted[:2] == ["cart", "frontend"]


def test_onset_walk_orders_each_block_by_the_mean_of_walk_and_onset_peak_ranks():
    # Walk: checkout (the hub), currency, frontend; onset peak: currency, frontend, checkout.
    # Mean ranks 1.5 (currency), 2 (checkout), 2.5 (frontend).
    events = [ev("checkout", 0, 10), ev("currency", 0, 10), ev("frontend", 0, 10)]
    trail = trail_of({"currency": {1: 0.9}, "frontend": {1: 0.8}, "checkout": {1: 0.5}},
                     base=0.3)
    (walked,) = _ranked(events, "walk_context", trail)
    (mixed,) = _ranked(events, "onset_walk", trail)
    assert walked[:3] == ["checkout", "currency", "frontend"]
    assert mixed[:3] == ["currency", "checkout", "frontend"]
    assert set(mixed[3:]) <= set(STAR_ENTITIES) - {"checkout", "currency", "frontend"}


def test_onset_walk_without_a_call_graph_is_onset_score():
    events = [ev("cart", 0, 10), ev("frontend", 1, 10)]
    trail = trail_of({"cart": {2: 0.7}, "frontend": {3: 0.8}, "payment": {1: 0.9}}, base=0.3)
    entities = ("cart", "frontend", "payment")
    assert _ranked(events, "onset_walk", trail, None, entities) == \
        _ranked(events, "onset_score", trail, None, entities) == [["frontend", "cart", "payment"]]


@pytest.mark.parametrize("ranking", ONSET_RANKINGS)
def test_a_ranking_that_reads_scores_needs_them(ranking):
    with pytest.raises(ValueError, match="reads window scores"):
        assign_groups([ev("a", 0, 5)], Grouping(GAP, None, "v1", ranking=ranking))


def _model(ranking: str, **diagnose):
    config = Config.from_dict({"diagnose": {"ranking": ranking, **diagnose}}, source="test")
    return types.SimpleNamespace(config=config, step=MINUTE, version="v1", featurizer=None)


def test_grouping_reads_the_ranking_and_the_step_from_the_config():
    grouping = grouping_for(_model("onset_lift"))
    assert (grouping.ranking, grouping.step) == ("onset_lift", MINUTE)
    assert grouping_for(_model("walk_context")).ranking == Grouping.ranking
    with pytest.raises(InputError, match="diagnose.ranking"):
        grouping_for(_model("pagerank"))


def test_grouping_reads_the_join_and_the_window_from_the_config():
    grouping = grouping_for(_model("walk_context", group_join="overlap_callers"))
    assert (grouping.join, grouping.window) == ("overlap_callers", 15)
    assert grouping_for(_model("walk_context")).join == Grouping.join
    with pytest.raises(InputError, match="diagnose.group_join"):
        grouping_for(_model("walk_context", group_join="chain"))


def test_live_grouper_reads_its_scores_and_regroups_when_they_move():
    events = [ev("cart", 0, 10), ev("frontend", 1, 10)]
    trail = trail_of({"cart": {2: 0.7}, "frontend": {3: 0.8}}, base=0.3)
    grouping = Grouping(GAP, CALLS, "v1", ranking="onset_score", step=MINUTE)
    batch = [dataclasses.replace(e) for e in events]
    assign_groups(batch, grouping, trail)
    live = LiveGrouper(grouping)
    live.add_scores(*trail.arrays())
    for e in events:  # each seen once while the group forms, then again
        live.assign(dataclasses.replace(e))
    got = [live.assign(dataclasses.replace(e)) for e in events]
    assert [(g.group, g.suspects) for g in got] == [(b.group, b.suspects) for b in batch]
    assert got[0].suspects[0][0] == "frontend"
    # cart's score rises later in the span: the same event, seen again, is ranked anew.
    live.add_scores(np.array(["cart"], dtype=object), np.array([0]),
                    np.array([T0.value + 4 * MIN_NS]), np.array([0.95]))
    assert live.assign(dataclasses.replace(events[0])).suspects[0][0] == "cart"


def test_live_grouper_keeps_the_horizon_and_the_lookback_of_scores():
    live = LiveGrouper(Grouping(GAP, None, "v1", ranking="onset_score", step=MINUTE),
                       horizon=pd.Timedelta(minutes=10))
    live.add_scores(*trail_of({"a": {m: 0.5 for m in range(0, 100)}}).arrays())
    ends = live.scores_.arrays()[2]
    assert ends.min() == T0.value + (99 - 10 - 31) * MIN_NS
    assert LiveGrouper(Grouping(GAP, None, "v1")).scores_ is None  # no ranking reads them


def test_score_keeps_the_trail_for_an_onset_ranking_alike_however_chunked(tmp_path):
    from tests.test_api import _fleet

    metrics, incidents = _fleet(tmp_path, days=3, seed=3)
    api.train([metrics], tmp_path / "model", incidents=incidents,
              config=Config.from_dict({"diagnose": {"ranking": "onset_score"}}, source="t"))
    whole = api.score(tmp_path / "model", [metrics], windows_out=tmp_path / "w.parquet")
    chunked = api.score(tmp_path / "model", [metrics], chunk_rows=1000)
    assert whole.groups and whole.groups == chunked.groups
    # The same as ranking the events afresh from the per-window table.
    again = [dataclasses.replace(e) for e in whole.events]
    from ftml.bundle import load_model

    records = assign_groups(again, grouping_for(load_model(tmp_path / "model")),
                            ScoreTrail.from_table(whole.window_table))
    assert records == whole.groups
