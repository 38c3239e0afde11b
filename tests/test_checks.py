"""One reusable suite of checks (as river's ``checks``), run over registries: every estimator
keeps the estimator invariants, and every driver of the pipeline core gives the events of the
one-piece batch run, bit for bit.

Add an estimator to ESTIMATORS or a driver to DRIVERS and it is checked like the others.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
sys.path.insert(0, str(Path(__file__).parent))

import watch_data  # noqa: E402
from invariants import (  # noqa: E402
    check_input_not_mutated,
    check_persistence_round_trip,
    check_same_seed_same_result,
)

from ftml import api  # noqa: E402
from ftml import distributed as fd  # noqa: E402
from ftml.bundle import load_model  # noqa: E402
from ftml.detect import FlagGate, IsolationDetector  # noqa: E402
from ftml.diagnose import CLASSIFIERS, Diagnoser  # noqa: E402
from ftml.features import Featurizer  # noqa: E402
from ftml.incidents import grouping_for  # noqa: E402
from ftml.io import MetricData  # noqa: E402
from ftml.pipeline import publish_events  # noqa: E402
from ftml.recover import FakeClock  # noqa: E402
from ftml.watch import Watcher  # noqa: E402

# --------------------------------------------------------------------------- estimators


def _xy(seed=0, n=240):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = np.where(X[:, 0] > 0.3, "cpu", np.where(X[:, 1] > 0, "mem", "disk"))
    return X, y, np.arange(n) // 8


def _frame(seed=0):
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2026-01-05", periods=300, freq="60s", tz="UTC")
    parts = [pd.DataFrame({"entity": e, "timestamp": ts, "cpu": rng.normal(50, 5, len(ts)),
                           "bytes": np.cumsum(rng.integers(1, 9, len(ts))).astype(float)})
             for e in ("a", "b")]
    frame = pd.concat(parts, ignore_index=True)
    frame["entity"] = frame["entity"].astype("category")
    return MetricData(frame, pd.Timedelta("60s"), ["cpu", "bytes"])


# name -> (make, fit, output); each output is what must not change.
ESTIMATORS = {
    "IsolationDetector": (lambda: IsolationDetector(n_estimators=20, max_samples=64),
                          lambda est: est.fit(_xy()[0]),
                          lambda est: est.anomaly_score(_xy(1)[0])),
    "IsolationDetector[balanced, forest|robust]": (
        lambda: IsolationDetector(n_estimators=20, max_samples=64, view="balanced",
                                  ensemble="forest|robust"),
        lambda est: est.fit(_xy(n=240)[0]),
        lambda est: est.anomaly_score(_xy(1)[0])),
    **{f"Diagnoser[{c}]": (lambda c=c: Diagnoser(classifier=c),
                           lambda est: est.fit(*_xy()[:2], groups=_xy()[2]),
                           lambda est: est.predict_proba(_xy(1)[0]))
       for c in CLASSIFIERS},
    "Featurizer": (lambda: Featurizer(window=5, level_window=30),
                   lambda est: est.fit(_frame()),
                   lambda est: est.transform_frame(_frame(1).frame).X),
}


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_same_seed_same_result(name):
    make, fit, out = ESTIMATORS[name]
    check_same_seed_same_result(make, fit, out)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_persistence_round_trip(name, tmp_path):
    make, fit, out = ESTIMATORS[name]
    check_persistence_round_trip(fit(make()), out, tmp_path)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_output_does_not_mutate_input(name):
    make, fit, _ = ESTIMATORS[name]
    est = fit(make())
    if isinstance(est, Featurizer):
        check_input_not_mutated(est.transform_frame, _frame(1).frame)
    elif isinstance(est, Diagnoser):
        check_input_not_mutated(est.predict_proba, _xy(1)[0])
    else:
        check_input_not_mutated(est.anomaly_score, _xy(1)[0])


def test_the_gate_is_the_same_however_windows_are_chunked():
    rng = np.random.default_rng(3)
    step = 60 * 10**9
    ent = np.repeat(np.array(["a", "b", "c"], dtype=object), 400)
    end_ns = np.tile(np.arange(400, dtype=np.int64) * step, 3)
    scores = rng.uniform(size=len(ent)) ** 8  # rare flags
    from ftml.detect import EventRules

    whole = FlagGate(rules=EventRules(), threshold=0.5, step_ns=step).select(ent, end_ns,
                                                                              scores)
    gate = FlagGate(rules=EventRules(), threshold=0.5, step_ns=step)
    parts = []
    for a in range(0, 400, 37):  # time slices, every entity in each (as ticks and chunks)
        idx = np.flatnonzero((end_ns >= a * step) & (end_ns < (a + 37) * step))
        parts.append((idx, gate.select(ent[idx], end_ns[idx], scores[idx])))
    chunked = np.zeros(len(ent), dtype=bool)
    for idx, mask in parts:
        chunked[idx] = mask
    assert whole.any() and not whole.all()
    assert np.array_equal(whole, chunked)
    restored = FlagGate(rules=EventRules(), threshold=0.5, step_ns=step).load_state(
        gate.state_dict())
    assert restored.state_dict()["entities"] == gate.state_dict()["entities"]


# --------------------------------------------------------------------------- drivers


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A model trained on clean history, and live data with a fault on every entity."""
    tmp = tmp_path_factory.mktemp("checks")
    rows, inc = watch_data.training()
    rows.to_csv(tmp / "train.csv", index=False)
    inc.to_csv(tmp / "incidents.csv", index=False)
    api.train([tmp / "train.csv"], tmp / "model", incidents=tmp / "incidents.csv")
    live, _ = watch_data.live()
    live.to_csv(tmp / "live.csv", index=False)
    live.to_parquet(tmp / "live.parquet", index=False)
    return tmp, load_model(tmp / "model"), live


#: Round 5's settings (bench/PROTOCOL_generalization.md): the forest on the balanced view and
#: the ensemble's parts on their own half-budget scales. Scoring is the same code, so every
#: driver must still give the one-piece events.
ROUND5 = {"detect": {"view": "balanced", "ensemble": "forest|robust",
                     "ensemble_scale": "budget"}}


@pytest.fixture(scope="module")
def fleet_round5(fleet, tmp_path_factory):
    from ftml.config import Config

    tmp, _, live = fleet
    out = tmp_path_factory.mktemp("checks5")
    for name in ("live.csv", "live.parquet"):
        (out / name).write_bytes((tmp / name).read_bytes())
    api.train([tmp / "train.csv"], out / "model", incidents=tmp / "incidents.csv",
              config=Config.from_dict(ROUND5))
    return out, load_model(out / "model"), live


def _watch(per):
    def run(tmp, model, live):
        clock = FakeClock(live["timestamp"].min().timestamp())
        w = Watcher(model, [watch_data.Feed(live, per)], clock=clock, registry=CollectorRegistry())
        out = []
        while not w.exhausted:
            out += w.tick().resolved
            clock.advance(60)
        return out + w.finish().resolved
    return run


def _dask_partitions(groups, slices):
    def run(tmp, model, live):
        read = model.config.read
        path = str(tmp / "live.parquet")
        table = fd.index_table([fd.index_file(path, read, model.metrics, 5000)],
                               int(model.step.value))
        before, after = fd.margins(model.featurizer, read)
        the_plan = fd.plan(table, [path], 10**9, 2, before, after, shape=(groups, slices))
        collector = fd.EventCollector(model)
        for task in the_plan.tasks:
            collector.add(fd.score_task(model, 5000, False, task))
        events = collector.finish()
        publish_events(events, lambda ev: None, grouping_for(model))  # as fd.score does
        return events
    return run


DRIVERS = {
    "batch, chunked (997 rows)": lambda tmp, model, live: api.score(
        model, [tmp / "live.csv"], chunk_rows=997).events,
    "watch, step by step": _watch(1),
    "watch, 7 steps a tick": _watch(7),
    "watch, one backlog": _watch(10**6),
    "dask tasks, 2 groups x 5 slices": _dask_partitions(2, 5),
}


def _events(evs):
    return sorted((e.to_dict() for e in evs), key=lambda d: (d["entity"], d["start"]))


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_every_driver_gives_the_one_piece_events(fleet, driver):
    tmp, model, live = fleet
    reference = _events(api.score(model, [tmp / "live.csv"], chunk_rows=10**9).events)
    assert len(reference) >= 3
    assert _events(DRIVERS[driver](tmp, model, live)) == reference


# --------------------------------------------------------------------------- drivers, with logs


@pytest.fixture(scope="module")
def log_fleet(tmp_path_factory):
    """A model trained with logs (simulated: bad deploys write new templates), and a later
    period of the same fleet with its logs."""
    from ftml.simulate import write_split_simulation

    tmp = tmp_path_factory.mktemp("checks-logs")
    write_split_simulation(tmp, test_days=1.5, days=3, entities=6, seed=2, logs=True,
                           format="parquet")
    (tmp / "ftml.yaml").write_text("features: {level_window: 60}\n")  # slices, as fd's tests
    # Half the fleet writes no line in the last third of the period: the other half's lines
    # still cover those steps (their series are 0, not missing), which a task that holds
    # only quiet entities must know too.
    files = sorted((tmp / "test" / "logs").glob("*.log"))
    for f in files[:len(files) // 2]:
        lines = f.read_text().splitlines()
        f.write_text("\n".join(lines[:2 * len(lines) // 3]) + "\n")
    from ftml.config import load_config

    api.train([tmp / "train" / "metrics.parquet"], tmp / "model",
              incidents=tmp / "train" / "incidents.csv", logs=[tmp / "train" / "logs"],
              config=load_config(tmp / "ftml.yaml"))
    return tmp, load_model(tmp / "model")


def _dask_log_partitions(groups, slices):
    """The cluster's tasks run in-process: each log file cut into pieces by a worker's
    function, each scoring task given its pieces, the events built by the driver's
    collector."""
    def run(tmp, model):
        from ftml.logs import file_metrics

        read = model.config.read
        path = str(tmp / "test" / "metrics.parquet")
        table = fd.index_table([fd.index_file(path, read, file_metrics(model.metrics,
                                                                       model.logs), 5000)],
                               int(model.step.value))
        before, after = fd.margins(model.featurizer, read)
        the_plan = fd.plan(table, [path], 10**9, 2, before, after, shape=(groups, slices))
        group_of, ranges, keys = fd.log_pieces(model, the_plan)
        cut = [fd.log_file_task(model.logs.config, read.entity_map, model.logs.step_ns,
                                group_of, ranges, None, model, str(f), str(f))
               for f in sorted((tmp / "test" / "logs").glob("*.log"))]
        lo = min(s["lo"] for s, _ in cut if s["lo"] is not None)
        hi = max(s["hi"] for s, _ in cut if s["hi"] is not None)
        collector = fd.EventCollector(model)
        for task, key in zip(the_plan.tasks, keys, strict=True):
            parts = [(pieces[key], None) for _, pieces in cut if key in pieces]
            collector.add(fd.score_task(model, 5000, False, task, (lo, hi, parts)))
        events = collector.finish()
        publish_events(events, lambda ev: None, grouping_for(model))  # as fd.score does
        return events, collector.windows
    return run


def _scored(tmp, model, chunk_rows):
    res = api.score(model, [tmp / "test" / "metrics.parquet"], chunk_rows=chunk_rows,
                    logs=[tmp / "test" / "logs"])
    return res.events, res.windows


# name -> (tmp, model) -> (events, windows scored)
LOG_DRIVERS = {
    "batch, chunked (997 rows)": lambda tmp, model: _scored(tmp, model, 997),
    "dask tasks, 2 groups x 3 slices": _dask_log_partitions(2, 3),
    "dask tasks, 4 groups x 1 slice": _dask_log_partitions(4, 1),
}


@pytest.mark.parametrize("driver", sorted(LOG_DRIVERS))
def test_every_driver_with_logs_gives_the_one_piece_events(log_fleet, driver):
    tmp, model = log_fleet
    events, windows = _scored(tmp, model, 10**9)
    reference = _events(events)
    assert len(reference) >= 3
    assert any(m.startswith("log:") for e in reference for m in e["top_metrics"])
    got, got_windows = LOG_DRIVERS[driver](tmp, model)
    assert _events(got) == reference
    assert got_windows == windows


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_every_driver_gives_the_one_piece_events_with_round5_settings(fleet_round5, driver):
    tmp, model, live = fleet_round5
    assert model.detector.view == "balanced" and model.config.detect.ensemble_scale == "budget"
    reference = _events(api.score(model, [tmp / "live.csv"], chunk_rows=10**9).events)
    assert len(reference) >= 3
    assert _events(DRIVERS[driver](tmp, model, live)) == reference
