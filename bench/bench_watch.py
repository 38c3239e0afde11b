"""The online loop at fleet scale: 1000 entities x 20 metrics per tick.

Measures the time of ``Watcher.tick()`` (poll, normalise, features, score, events, alerts,
delivery) over 10 000 ticks, the work ``run()`` does between ticks (``Watcher.maintain``: the
checkpoint, dropping raw rows too old to matter), and the process's resident memory along the
way.
Goal: p99 <= 50 ms per tick and flat memory on a 2-core machine.

The data are drawn from the distribution the model was trained on, with a fault injected
into a few entities now and then, so that events open and resolve as in a real fleet. The
frames are drawn in advance and cycled, so that the tick times are ftml's, not the
generator's. ``FTML_BENCH_WATCH_TICKS`` sets the number of ticks (default 10 000; 2000 with
``--quick``).

    python -m bench.bench_watch            # prints the rows
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ENTITIES = 1000
METRICS = 20
TICKS = int(os.environ.get("FTML_BENCH_WATCH_TICKS", "10000"))
QUICK_TICKS = int(os.environ.get("FTML_BENCH_WATCH_TICKS", "2000"))
WARMUP = 200
GOAL_P99_MS = 50.0
STEP_S = 60
START = pd.Timestamp("2026-03-02", tz="UTC")


def _levels(n_entities: int, rng: np.random.Generator) -> np.ndarray:
    return 10.0 + rng.uniform(0, 5, (n_entities, 1)) + np.arange(METRICS)[None, :]


def _train(tmp: Path) -> Path:
    """A model on six hours of the same 1000 entities, drawn from the bench's distribution
    (each entity its own levels, as in a real fleet)."""
    from ftml import api
    from ftml.config import Config

    rng = np.random.default_rng(0)
    n = 360
    names = np.array([f"host-{i:04d}" for i in range(ENTITIES)], dtype=object)
    levels = _levels(ENTITIES, np.random.default_rng(1))
    t = pd.date_range(START - pd.Timedelta(seconds=STEP_S * n), periods=n,
                      freq=f"{STEP_S}s", tz="UTC")
    vals = levels[None] + rng.normal(0, 1, (n, ENTITIES, METRICS))
    frame = pd.DataFrame(vals.reshape(-1, METRICS), columns=[f"m{j:02d}" for j in range(METRICS)])
    frame.insert(0, "entity", np.tile(names, n))
    frame.insert(0, "timestamp", np.repeat(t, ENTITIES))
    frame.to_parquet(tmp / "train.parquet", index=False)
    cfg = Config()
    cfg.features.hour_of_day = False
    api.train([tmp / "train.parquet"], tmp / "model", config=cfg)
    return tmp / "model"


class _Fleet:
    """A source: each poll, one row per entity at the next step. Every 500 ticks a fault
    (+8 sigma on three metrics for 30 steps) starts on 5 entities."""

    name = "bench"
    skipped = 0
    more = False
    exhausted = False

    def __init__(self, pool: int = 97):
        rng = np.random.default_rng(2)
        self.names = np.array([f"host-{i:04d}" for i in range(ENTITIES)], dtype=object)
        levels = _levels(ENTITIES, np.random.default_rng(1))
        self.pool = levels[None] + rng.normal(0, 1, (pool, ENTITIES, METRICS))
        self.columns = pd.Index([f"m{j:02d}" for j in range(METRICS)], dtype=object)
        self.rng = rng
        self.i = 0
        self.faulty = np.empty(0, dtype=np.int64)
        self.fault_until = -1

    def bind(self, step, keep_steps):
        pass

    def poll(self, now):
        i = self.i
        self.i += 1
        vals = self.pool[i % len(self.pool)]
        if i % 500 == 250:
            self.faulty = self.rng.choice(ENTITIES, 5, replace=False)
            self.fault_until = i + 30
        if i < self.fault_until:
            vals = vals.copy()
            vals[self.faulty, :3] += 8.0
        frame = pd.DataFrame(vals, columns=self.columns)
        frame.insert(0, "timestamp", START + pd.Timedelta(seconds=STEP_S * i))
        frame.insert(0, "entity", self.names)
        return frame

    def state(self):
        return {"i": self.i}

    def restore(self, state):
        self.i = int(state["i"])

    def close(self):
        pass


class _Clock:
    def __init__(self):
        self.t = START.timestamp()

    def now(self):
        return self.t

    def sleep(self, seconds):
        self.t += seconds


def run(ticks: int | None = None, quick: bool = False) -> list[dict]:
    import psutil
    from prometheus_client import CollectorRegistry

    from ftml.bundle import load_model
    from ftml.sinks import JsonlSink
    from ftml.watch import Watcher

    if ticks is None:
        ticks = QUICK_TICKS if quick else TICKS
    load = os.getloadavg()[0]  # beside every figure: the machine is shared
    proc = psutil.Process()
    with tempfile.TemporaryDirectory(prefix="ftml-bench-watch-") as tmp:
        tmp = Path(tmp)
        model = load_model(_train(tmp))
        clock = _Clock()
        w = Watcher(model, [_Fleet()], [JsonlSink(tmp / "alerts.jsonl")],
                    state_dir=tmp / "state", clock=clock, registry=CollectorRegistry())
        gc.collect()
        times = np.empty(ticks)
        cpu = np.empty(ticks)  # CPU time of this thread: the tick without the waits for a core
        maint = []
        rss = []
        opened = resolved = windows = 0
        for k in range(ticks):
            t0, c0 = time.perf_counter(), time.thread_time()
            out = w.tick()
            times[k] = time.perf_counter() - t0
            cpu[k] = time.thread_time() - c0
            spent = w.maintain()  # the checkpoint, between ticks (as run() does)
            if spent:
                maint.append(spent * 1000)
            clock.t += STEP_S
            opened += len(out.opened)
            resolved += len(out.resolved)
            windows += out.windows
            if k % 100 == 0:
                rss.append((k, proc.memory_info().rss))
        w.shutdown()
    steady = times[WARMUP:] * 1000
    p50, p99 = np.percentile(steady, [50, 99])
    c50, c99 = np.percentile(cpu[WARMUP:] * 1000, [50, 99])
    rss_k = np.array([k for k, _ in rss])
    rss_mb = np.array([r for _, r in rss]) / 2**20
    after = rss_mb[rss_k >= min(1000, ticks // 4)]
    start_mb, end_mb = float(after[0]), float(after[-1])
    slope = float(np.polyfit(rss_k[rss_k >= min(1000, ticks // 4)], after, 1)[0]) * 1000 \
        if len(after) > 2 else 0.0
    label = f"watch {ENTITIES}x{METRICS}"
    return [
        {"name": f"{label}: tick p50 (goal p99 {GOAL_P99_MS:g} ms)", "ftml": round(float(p50), 2),
         "anchor": GOAL_P99_MS, "ratio": round(float(p50) / GOAL_P99_MS, 3), "unit": "ms"},
        {"name": f"{label}: tick p99 over {ticks} ticks", "ftml": round(float(p99), 2),
         "anchor": GOAL_P99_MS, "ratio": round(float(p99) / GOAL_P99_MS, 3), "unit": "ms"},
        {"name": f"{label}: tick CPU time p50", "ftml": round(float(c50), 2),
         "anchor": GOAL_P99_MS, "ratio": round(float(c50) / GOAL_P99_MS, 3), "unit": "ms"},
        {"name": f"{label}: tick CPU time p99", "ftml": round(float(c99), 2),
         "anchor": GOAL_P99_MS, "ratio": round(float(c99) / GOAL_P99_MS, 3), "unit": "ms"},
        {"name": f"{label}: tick max", "ftml": round(float(steady.max()), 2),
         "anchor": GOAL_P99_MS, "ratio": round(float(steady.max()) / GOAL_P99_MS, 3),
         "unit": "ms"},
        {"name": f"{label}: RSS at the end vs after warm-up", "ftml": round(end_mb, 1),
         "anchor": round(start_mb, 1), "ratio": round(end_mb / start_mb, 3), "unit": "MB"},
        {"name": f"{label}: RSS growth per 1000 ticks (fit)", "ftml": round(slope, 2),
         "anchor": 0.0, "ratio": None, "unit": "MB"},
        {"name": f"{label}: between ticks (checkpoint every {w.config.checkpoint_every:g} s "
                 f"= {w.config.checkpoint_every / STEP_S:g} ticks; old rows dropped), p50 / max",
         "ftml": round(float(np.median(maint)), 2) if maint else None,
         "anchor": round(float(np.max(maint)), 2) if maint else None,
         "ratio": None, "unit": "ms"},
        {"name": f"{label}: events opened / resolved, windows scored",
         "ftml": opened, "anchor": resolved, "ratio": None,
         "unit": f"events ({windows} windows)"},
        {"name": f"{label}: load average (1 min) at the start / at the end",
         "ftml": round(load, 2), "anchor": round(os.getloadavg()[0], 2), "ratio": None,
         "unit": "runnable processes (2 cores)"},
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
