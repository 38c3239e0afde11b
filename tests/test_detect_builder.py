"""EventBuilder: bounded memory for long events, state_dict/load_state, open_events."""

import json
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftml.detect import BUILDER_STATE_VERSION, EventBuilder, EventRules, find_runs
from ftml.errors import InputError

STEP = 60


def reference(ent, end_ns, scores, payload, rules, thr, k):
    """The unbounded behaviour: find_runs over each entity's whole history, the cooldown (no
    event starts within it; a run that outlasts it starts at its first active window after
    it), and the top-k windows of the whole event (ties: the earlier window), in time order."""
    out = []
    for e in np.unique(ent):
        m = ent == e
        t, s, p = end_ns[m] // STEP, scores[m], payload[m]
        flags = s >= thr
        kept = -np.inf
        for start, first, last in find_runs(t, flags, rules):
            limit = kept + rules.cooldown
            if t[last] <= limit:
                continue
            if t[first] <= limit:
                # The first window after the cooldown that k-of-n makes active.
                first = next(i for i in range(first, last + 1) if t[i] > limit and flags[i]
                             and flags[(t > t[i] - rules.of_windows) & (t <= t[i])].sum()
                             >= rules.min_windows)
                start = next(i for i in range(len(t)) if flags[i]
                             and t[i] > t[first] - rules.of_windows)
            kept = t[last]
            seg = slice(start, last + 1)
            top = np.sort(np.argsort(-s[seg], kind="stable")[:min(k, last - start + 1)])
            out.append((str(e), int(t[start] * STEP), int(t[last] * STEP),
                        int(t[first] * STEP), float(s[seg].max()), int(last - start + 1),
                        p[seg][top].tolist(), s[seg][top].tolist()))
    return sorted(out)


def key(events):
    return sorted((e.entity, e.start_ns, e.end_ns, e.detected_ns, e.peak_score, e.n_windows,
                   e.payload.tolist(), e.top_scores.tolist()) for e in events)


def stream(seed, n=1200, n_ent=3, long_run=2400):
    """Scores on a coarse grid (ties in the top-k), a long anomalous stretch, time gaps."""
    rng = np.random.default_rng(seed)
    total = n * n_ent
    scores = np.round(rng.random(total) * (rng.random(total) < 0.5), 1)
    a = int(rng.integers(0, total - long_run))
    scores[a:a + long_run] += 0.6
    ent = np.array([f"e{i % n_ent}" for i in range(total)], dtype=object)
    gaps = rng.random(total) < 0.002
    gaps[a:a + long_run] = False  # the long event stays one
    t = np.arange(total) // n_ent + np.cumsum(gaps) * 3
    payload = rng.normal(size=(total, 3))
    return ent, t * STEP, scores, payload


def push_in_chunks(builder, data, chunk, start=0, stop=None):
    ent, end_ns, scores, payload = data
    stop = len(end_ns) if stop is None else stop
    out = []
    for a in range(start, stop, chunk):
        b = min(stop, a + chunk)
        out += builder.push(ent[a:b], end_ns[a:b], scores[a:b], payload[a:b])
    return out


RULES = [
    EventRules(),  # the defaults: 5 of 8, merge 10, cooldown 30
    EventRules(min_windows=2, of_windows=4, merge_gap=3, cooldown=4),
    EventRules(min_windows=1, of_windows=1, merge_gap=0, cooldown=0),
    EventRules(min_windows=2, of_windows=6, merge_gap=1, cooldown=0),  # look-back > merge gap
]


@pytest.mark.parametrize("rules", RULES)
@pytest.mark.parametrize("chunk", [1, 7, 10_000])
@pytest.mark.parametrize("k", [1, 3, 32])
def test_long_events_are_the_unbounded_ones_whatever_the_chunking(rules, chunk, k):
    data = stream(seed=chunk + k)
    want = reference(*data, rules, 0.5, k)
    builder = EventBuilder(rules, 0.5, STEP, top_windows=k)
    got = push_in_chunks(builder, data, chunk) + builder.flush()
    assert key(got) == want
    if rules.merge_gap >= rules.of_windows:  # (else the cooldown may cut the long one)
        assert any(e.n_windows > 500 for e in got)  # a long event was among them


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=300), st.integers(1, 40),
       st.integers(1, 2), st.integers(1, 4), st.integers(1, 6), st.integers(0, 6),
       st.integers(0, 6))
def test_same_as_unbounded_for_any_flags_and_rules(levels, chunk, n_ent, k, n, gap, cool):
    rules = EventRules(min_windows=min(2, n), of_windows=n, merge_gap=gap, cooldown=cool)
    scores = np.array(levels) / 4.0
    total = len(scores)
    ent = np.array([f"e{i % n_ent}" for i in range(total)], dtype=object)
    end_ns = (np.arange(total) // n_ent) * STEP
    payload = np.arange(total, dtype=np.float64)[:, None]
    builder = EventBuilder(rules, 0.5, STEP, top_windows=k)
    got = push_in_chunks(builder, (ent, end_ns, scores, payload), chunk) + builder.flush()
    assert key(got) == reference(ent, end_ns, scores, payload, rules, 0.5, k)


@pytest.mark.parametrize("second,want", [
    # (flagged steps after a first event at 0..9, events as (start, end) steps); cooldown 30
    (range(15, 25), [(0, 9)]),  # a flap inside the cooldown: suppressed
    (range(15, 100), [(0, 9), (33, 99)]),  # a fault that outlasts it: opens after it
    (range(60, 100), [(0, 9), (60, 99)]),  # after the cooldown: as ever
])
@pytest.mark.parametrize("chunk", [1, 13, 1000])
def test_the_cooldown_suppresses_flaps_not_a_fault_that_outlasts_it(second, want, chunk):
    rules = EventRules(min_windows=5, of_windows=8, merge_gap=2, cooldown=30)
    t = np.arange(120)
    scores = np.where((t < 10) | np.isin(t, list(second)), 0.9, 0.1)
    ent = np.array(["e"] * len(t), dtype=object)
    builder = EventBuilder(rules, 0.5, STEP, top_windows=3)
    got = push_in_chunks(builder, (ent, t * STEP, scores, t[:, None].astype(float)), chunk)
    got += builder.flush()
    # The outlasting fault's first window allowed to be active is step 40 (the first after
    # 9 + 30); the event starts at the first flag of its k-of-n look-back (33..40).
    assert [(e.start_ns // STEP, e.end_ns // STEP) for e in got] == want


def test_an_event_that_stays_open_holds_o_of_k_windows():
    rules, k = EventRules(), 32
    builder = EventBuilder(rules, 0.5, STEP, top_windows=k)
    rng = np.random.default_rng(0)
    held = []
    for t in range(20_000):  # two weeks at a one-minute step, anomalous throughout
        builder.push(np.array(["e"], dtype=object), np.array([t * STEP]),
                     0.6 + 0.4 * rng.random(1), rng.normal(size=(1, 140)))
        if t % 97 == 0 or t > 19_900:
            state = builder.state_dict()
            held.append(int(state["held"].sum() + state["cands"].sum()))
    bound = rules.of_windows + rules.merge_gap + 2 * k + 2
    assert max(held) <= bound
    (ev,) = builder.open_events()
    assert ev.n_windows == 20_000 and len(ev.payload) == k


@pytest.mark.parametrize("cut", [5, 400, 450, 601, 1199, 2999])
@pytest.mark.parametrize("via", ["pickle", "json", "none"])
def test_state_round_trip_mid_event_gives_the_events_of_no_interruption(cut, via):
    rules, k = EventRules(min_windows=2, of_windows=4, merge_gap=3, cooldown=4), 3
    data = stream(seed=7, n=1000)
    whole = EventBuilder(rules, 0.5, STEP, top_windows=k)
    want = push_in_chunks(whole, data, 5) + whole.flush()

    first = EventBuilder(rules, 0.5, STEP, top_windows=k)
    got = push_in_chunks(first, data, 5, 0, cut)
    state = first.state_dict()
    if via == "pickle":
        state = pickle.loads(pickle.dumps(state))
    elif via == "json":
        state = json.loads(json.dumps({k: v.tolist() if isinstance(v, np.ndarray) else v
                                       for k, v in state.items()}))
    second = EventBuilder(rules, 0.5, STEP, top_windows=k).load_state(state)
    assert key(second.open_events()) == key(first.open_events())
    got += push_in_chunks(second, data, 5, cut) + second.flush()
    assert key(got) == key(want)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(version=BUILDER_STATE_VERSION + 1), "version 2 is not supported"),
    (lambda s: s.pop("version"), "version None is not supported"),
    (lambda s: s.update(threshold=0.9), "of another builder"),
    (lambda s: s.update(top_windows=5), "of another builder"),
    (lambda s: s.pop("cand_seq"), "lacks cand_seq"),
])
def test_load_state_refuses_what_it_cannot_read(change, message):
    builder = EventBuilder(EventRules(), 0.5, STEP, top_windows=3)
    builder.push(np.array(["e"] * 3, dtype=object), np.arange(3) * STEP, np.ones(3),
                 np.zeros((3, 2)))
    state = builder.state_dict()
    change(state)
    fresh = EventBuilder(EventRules(), 0.5, STEP, top_windows=3)
    with pytest.raises(InputError, match=message):
        fresh.load_state(state)
    assert fresh.state_dict()["entities"] == []  # nothing half-loaded


def test_empty_state_round_trips():
    state = EventBuilder(EventRules(), 0.5, STEP).state_dict()
    assert state["entities"] == [] and state["version"] == BUILDER_STATE_VERSION
    restored = EventBuilder(EventRules(), 0.5, STEP).load_state(state)
    assert restored.open_events() == [] and restored.flush() == []


@pytest.mark.parametrize("cooldown", [0, 4])
def test_open_events_are_the_events_that_end_if_the_stream_ends_now(cooldown):
    rng = np.random.default_rng(3)
    rules = EventRules(min_windows=2, of_windows=3, merge_gap=3, cooldown=cooldown)
    builder = EventBuilder(rules, threshold=0.7, step_ns=STEP, top_windows=4)
    names = np.array(["a", "b", "c"], dtype=object)
    ent, end, sc = [], [], []
    for t in range(300):
        scores = rng.random(3) ** 3 + (rng.random(3) < 0.1)
        ent += names.tolist()
        end += [t * STEP] * 3
        sc += scores.tolist()
        builder.push(names, np.full(3, t * STEP), scores, np.zeros((3, 1)))
        e, en, s = np.array(ent, dtype=object), np.array(end), np.array(sc)
        # Open now: an event of the history so far whose last active window is recent.
        want = {x[:2] for x in reference(e, en, s, np.zeros((len(s), 1)), rules, 0.7, 4)
                if t * STEP - x[2] <= rules.merge_gap * STEP}
        assert {(x.entity, x.start_ns) for x in builder.open_events()} == want
        some = {(x.entity, x.start_ns) for x in builder.open_events(["a", "c", "zz"])}
        assert some == {w for w in want if w[0] in ("a", "c")}
    assert builder.last_ns("b") == 299 * STEP and builder.last_ns("zz") is None
