"""Chunked scoring carries the trailing level's sums, not its span of raw rows (issue 15).

Each chunk of ``api.score`` carries only the raw rows of ``chunk_carry_steps`` (a window and
twice the fill reach) per entity, and the level's units and sums (``LevelCarry``) go from
frame to frame. Whatever the chunk size, events, window scores and window tables are the bits
of scoring the whole file in one frame (``Featurizer.transform_frame``), on data made to break
it: tiny chunks, gaps longer than the fill reach (and longer than a window), a counter with a
reset, a level span longer than a chunk, entities starting and ending mid-chunk, rows off the
step and duplicated across a chunk boundary, and a stride.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from ftml import api
from ftml.bundle import load_model
from ftml.config import Config
from ftml.incidents import assign_groups, grouping_for
from ftml.io import read_metrics, to_ns
from ftml.pipeline import carry_steps, chunk_carry_steps

T0 = pd.Timestamp("2026-03-02", tz="UTC")


def _entity(name: str, start: int, n: int, rng, gaps=()) -> pd.DataFrame:
    i = np.arange(start, start + n)
    t = T0 + pd.to_timedelta(i * 60 + rng.integers(-12, 13, n), unit="s")  # off the step
    part = pd.DataFrame({
        "entity": name, "timestamp": t,
        "cpu": 40 + 10 * np.sin(i / 1440 * 2 * np.pi) + rng.normal(0, 1, n),
        "mem": 50 + np.cumsum(rng.normal(0, 0.05, n)),  # a slow drift: the level matters
        "bytes_total": np.cumsum(rng.integers(100, 200, n)).astype(float)})
    part.loc[rng.random(n) < 0.03, "mem"] = np.nan  # single missing values, filled or not
    keep = np.ones(n, dtype=bool)
    for at, length in gaps:
        keep[at:at + length] = False
    return part[keep]


def _fleet(seed: int, days: float = 1.0, messy: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = int(days * 1440)
    if not messy:
        return pd.concat([_entity(f"e{k}", 0, n, rng) for k in range(4)], ignore_index=True)
    parts = [
        _entity("e0", 0, n, rng, gaps=[(100, 3), (240, 4), (400, 9), (600, 40), (901, 2)]),
        _entity("e1", 130, n - 130, rng, gaps=[(50, 25), (300, 5)]),  # starts late
        _entity("e2", 0, n - 333, rng, gaps=[(70, 1), (500, 17)]),  # ends early
        _entity("e3", 211, 500, rng, gaps=[(30, 4), (260, 120)]),  # starts late, ends early
    ]
    rows = pd.concat(parts, ignore_index=True)
    e0 = rows["entity"] == "e0"
    rows.loc[e0 & (np.arange(len(rows)) % 777 == 5), "bytes_total"] = 50.0  # counter resets
    dup = rows[e0].iloc[::97].copy()  # a second reading in the same steps
    dup["cpu"] += 0.5
    dup["timestamp"] += pd.Timedelta("10s")
    return pd.concat([rows, dup], ignore_index=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("carry")
    _fleet(1, days=2, messy=False).sort_values("timestamp").to_csv(tmp / "train.csv",
                                                                   index=False)
    config = Config()
    config.read.max_fill_steps = 2
    config.features.window = 6
    config.features.level_window = 90  # longer than a chunk's rows of an entity
    config.detect.n_estimators = 30
    config.detect.max_samples = 128
    config.detect.alarm_budget = 3.0  # plenty of events
    api.train([tmp / "train.csv"], tmp / "model", config=config)
    return tmp, load_model(tmp / "model")


def _one_piece(model, path):
    """Every window of the whole file in one frame, into one builder."""
    data = read_metrics([path], model.config.read, metrics=model.metrics)
    w = model.featurizer.transform_frame(data.frame)
    scores = model.score_windows(w)
    builder = model.event_builder()
    raws = builder.push(w.entity, w.end_ns, scores, model.payload(w)) + builder.flush()
    events = sorted((model.to_event(r) for r in raws), key=lambda e: (e.entity, e.start))
    assign_groups(events, grouping_for(model))
    return [e.to_dict() for e in events], w, scores


@pytest.mark.parametrize("order", ["time", "entity"])
@pytest.mark.parametrize("stride", [1, 4])
def test_chunked_scoring_is_one_piece_bit_for_bit(trained, tmp_path, order, stride):
    tmp, model = trained
    if stride > 1:
        model = copy.deepcopy(model)
        model.featurizer.stride = stride
    rows = _fleet(2)
    rows = rows.sort_values(["timestamp"] if order == "time" else ["entity", "timestamp"],
                            kind="stable")
    path = tmp_path / "live.csv"
    rows.to_csv(path, index=False)
    want, w, scores = _one_piece(model, path)
    assert len(w) > 1000 and (len(want) >= 3 or stride > 1)
    table = pd.DataFrame({"entity": w.entity.astype(str), "score": scores,
                          "ns": w.end_ns}).sort_values(["entity", "ns"], kind="stable")
    for chunk_rows in (50, 137, 1000, 10**9):
        got = api.score(model, [path], chunk_rows=chunk_rows, windows_out=tmp_path / "w.csv")
        assert [e.to_dict() for e in got.events] == want, chunk_rows
        assert got.windows == len(w)
        t = got.window_table
        assert t["score"].to_numpy().tobytes() == table["score"].to_numpy().tobytes()
        assert np.array_equal(t["entity"].to_numpy(dtype=object),
                              table["entity"].to_numpy(dtype=object))
        assert np.array_equal(to_ns(t["timestamp"]), table["ns"].to_numpy())


def test_chunks_carry_a_window_and_the_fill_reach_not_the_levels_span(trained, tmp_path,
                                                                      monkeypatch):
    tmp, model = trained
    read = model.config.read
    k = chunk_carry_steps(model.featurizer, read)
    assert k == model.featurizer.window + 2 * read.max_fill_steps
    assert k < carry_steps(model.featurizer, read) - model.featurizer.level_window
    rows = _fleet(3).sort_values("timestamp", kind="stable")
    path = tmp_path / "live.csv"
    rows.to_csv(path, index=False)
    seen: list[pd.DataFrame] = []
    real = api.normalise

    def spy(raw, *args, **kwargs):  # the real normalise; the rows it was given, kept
        seen.append(raw[["entity", "timestamp"]].copy())
        return real(raw, *args, **kwargs)

    monkeypatch.setattr(api, "normalise", spy)
    api.score(model, [path], chunk_rows=200)
    assert len(seen) > 20
    # Rows of a chunk from before its new rows, per entity: at most k steps back from the
    # newest row carried.
    step = model.step
    for before, now in zip(seen, seen[1:], strict=False):
        newest = before.groupby("entity", observed=True)["timestamp"].max()
        for name, ts in now.groupby("entity", observed=True)["timestamp"]:
            carried = ts[ts <= newest.get(name, T0 - step)]
            if len(carried):
                assert carried.min() > newest[name] - k * step
    n_normalised = sum(len(s) for s in seen)
    entities = rows["entity"].nunique()
    assert n_normalised <= len(rows) + len(seen) * entities * (k + 1)


@pytest.mark.parametrize("level_window, fill, window", [(0, 2, 6), (3, 1, 2), (200, 3, 15),
                                                       (200, 0, 15), (3, 0, 2)])
def test_chunked_scoring_is_one_piece_for_other_spans(tmp_path, level_window, fill, window):
    # No level (the carry keeps only commits and first slots), a span shorter than a window,
    # and the defaults' window and fill reach; chunks as small as a few rows of each entity.
    _fleet(1, days=2, messy=False).sort_values("timestamp").to_csv(tmp_path / "train.csv",
                                                                   index=False)
    config = Config()
    config.read.max_fill_steps = fill
    config.features.window = window
    config.features.level_window = level_window
    config.detect.n_estimators = 20
    config.detect.max_samples = 128
    config.detect.alarm_budget = 3.0
    api.train([tmp_path / "train.csv"], tmp_path / "model", config=config)
    model = load_model(tmp_path / "model")
    _fleet(5).sort_values("timestamp", kind="stable").to_csv(tmp_path / "live.csv",
                                                             index=False)
    want, w, scores = _one_piece(model, tmp_path / "live.csv")
    assert len(want) >= 3
    order = np.lexsort((w.end_ns, w.entity.astype(str)))
    for chunk_rows in (7, 50):
        got = api.score(model, [tmp_path / "live.csv"], chunk_rows=chunk_rows,
                        windows_out=tmp_path / "w.csv")
        assert [e.to_dict() for e in got.events] == want, chunk_rows
        assert got.window_table["score"].to_numpy().tobytes() == scores[order].tobytes()


@pytest.mark.parametrize("span", [1, 5, 90])
def test_ring_kernel_is_the_bits_of_the_ring_copied_in_front(monkeypatch, span):
    # The compiled path reads the carried ring where it lies; the numpy path copies it in front
    # of each run and takes the levels of both. Runs primed and not, rows with NaN, runs
    # shorter and longer than the span, every turn of the ring.
    from types import SimpleNamespace

    from ftml.features import level as lv

    if getattr(lv._window_kernel, "trailing_level_ring", None) is None:
        pytest.skip("the window kernel is not built")
    rng = np.random.default_rng(span)
    m, n_ent = 3, 6
    carry = lv.LevelCarry(span=span, clip=3.0, n_metrics=m)
    carry.codes([f"e{k}" for k in range(n_ent)])
    carry.ring[:] = rng.normal(0, 2, carry.ring.shape)
    carry.ring[rng.random(carry.ring.shape) < 0.2] = np.nan
    carry.commit[:] = [100, 101, 102, 103, lv._NONE, 110 + span]  # e4: never committed
    lengths = [3, span + 7, 1, 2 * span + 3, 5, span]
    ent = np.repeat(np.arange(n_ent), lengths)
    start = np.where(carry.commit == lv._NONE, 50, carry.commit + 1)
    start[2] += 1  # e2's rows do not follow its commit: no ring in front
    slot = np.concatenate([s + np.arange(k) for s, k in zip(start, lengths, strict=True)])
    z = rng.normal(0, 2, (len(ent), m))
    z[rng.random(z.shape) < 0.1] = np.nan
    got = carry.remove_level(z.copy(), ent.copy(), ent, slot)[0]
    numpy_only = SimpleNamespace(trailing_level=lv._window_kernel.trailing_level)
    monkeypatch.setattr(lv, "_window_kernel", numpy_only)
    want = carry.remove_level(z.copy(), ent.copy(), ent, slot)[0]
    assert got.tobytes() == want.tobytes()
