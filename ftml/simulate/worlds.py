"""The second family of simulated worlds (:data:`WORLDS`): other noise laws, cycles and fleet
dynamics applied to a simulated fleet.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ftml.io import to_ns
from ftml.simulate.catalog import _DECIMALS, METRICS

#: The second family of simulated worlds: what each one changes. World 0 is the simulator
#: itself. Worlds 1-2 are for choosing settings, 3-4 for judging them (bench generalization).
WORLDS: dict[int, str] = {
    0: "the simulator as it is",
    1: "heavy tails (Student-t 3 noise) and heteroscedastic noise (larger at low traffic)",
    2: "a strong weekly cycle (quiet weekends) and a nightly batch job (cpu, io, threads)",
    3: "scale in/out (replicas absent for hours) and renamed pods (a new suffix per deploy)",
    4: "all of 1-3 at once",
}
_HEAVY = ("latency_p95_ms", "gc_pause_ms", "io_wait_pct", "error_rate")
_T_DF, _T_SCALE = 3, 0.08  # multiplicative Student-t noise on the heavy-tailed metrics
_HETERO_SD = 0.15  # relative noise at the fleet's lowest traffic; shrinks as sqrt(traffic)
_WEEKEND_LOAD = 0.45  # traffic share left on Saturdays and Sundays
_BATCH_HOUR, _BATCH_MINUTES = 2, 45  # the nightly batch job starts at 02:00 UTC
_BATCH_ADD = {"cpu_pct": 25.0, "io_wait_pct": 8.0, "threads": 20.0}
_ABSENT_PER_ENTITY_DAY, _ABSENT_HOURS = 0.2, (2.0, 12.0)
_RENAMES_PER_ENTITY_DAY = 0.3
_LOAD_SCALED = ("request_rate", "connections", "threads", "net_retransmits")


def apply_world(metrics: pd.DataFrame, incidents: pd.DataFrame, world: int,
                rng: np.random.Generator, step: pd.Timedelta
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A simulated fleet changed into another world (:data:`WORLDS`): the faults stay where
    they were (incidents move with renamed pods), the benign behaviour around them changes."""
    metrics = metrics.copy()
    incidents = incidents.copy()
    parts = {1, 2, 3} if world == 4 else {world}
    ent = metrics["entity"].to_numpy(dtype=object)
    ts = metrics["timestamp"]
    if 2 in parts:
        weekend = (ts.dt.day_of_week >= 5).to_numpy()
        for col in _LOAD_SCALED:
            metrics.loc[weekend, col] = metrics.loc[weekend, col] * _WEEKEND_LOAD
        minutes = (ts.dt.hour * 60 + ts.dt.minute).to_numpy()
        batch = (minutes >= _BATCH_HOUR * 60) & (minutes < _BATCH_HOUR * 60 + _BATCH_MINUTES)
        for col, add in _BATCH_ADD.items():
            metrics.loc[batch, col] = metrics.loc[batch, col] + add * rng.uniform(
                0.7, 1.3, int(batch.sum()))
        metrics["cpu_pct"] = metrics["cpu_pct"].clip(upper=100.0)
    if 1 in parts:
        n = len(metrics)
        for col in _HEAVY:
            metrics[col] = metrics[col] * np.exp(_T_SCALE * rng.standard_t(_T_DF, n))
        load = metrics["request_rate"].to_numpy(dtype=float)
        floor = np.nanquantile(load, 0.01) if np.isfinite(load).any() else 1.0
        rel = _HETERO_SD * np.sqrt(max(floor, 1e-9) / np.maximum(load, max(floor, 1e-9)))
        rel = np.nan_to_num(rel, nan=_HETERO_SD)
        for col in ("error_rate", "latency_p95_ms", "cpu_pct"):
            metrics[col] = metrics[col] * np.exp(rel * rng.standard_normal(n))
        metrics["error_rate"] = metrics["error_rate"].clip(upper=1.0)
        metrics["cpu_pct"] = metrics["cpu_pct"].clip(upper=100.0)
    if 3 in parts:
        t_ns = to_ns(ts)
        t0, t1 = int(t_ns.min()), int(t_ns.max())
        days = (t1 - t0) / 86_400e9
        keep = np.ones(len(metrics), dtype=bool)
        new_name = ent.copy()
        renames = []
        inc_ent = incidents["entity"].to_numpy(dtype=object)
        inc_a, inc_b = to_ns(incidents["start"]), to_ns(incidents["end"])
        for name in sorted(set(ent)):
            mine = ent == name
            for _ in range(rng.poisson(_ABSENT_PER_ENTITY_DAY * days)):  # scale in, then out
                a = rng.uniform(t0, t1)
                b = a + rng.uniform(*_ABSENT_HOURS) * 3600e9
                # A replica is not scaled in during a fault: that would hide it, not test it.
                if ((inc_ent == name) & (inc_a < b) & (inc_b >= a)).any():
                    continue
                keep &= ~(mine & (t_ns >= a) & (t_ns < b))
            cuts = np.sort(rng.uniform(t0, t1, rng.poisson(_RENAMES_PER_ENTITY_DAY * days)))
            edge = np.iinfo(np.int64)  # integer bounds: float ns would miss the last row
            bounds = np.r_[edge.min, cuts.astype(np.int64), edge.max]
            for a, b in zip(bounds[:-1], bounds[1:], strict=True):
                pod = f"{name}-{rng.integers(16**5):05x}"
                new_name[mine & (t_ns >= a) & (t_ns < b)] = pod
                renames.append((name, int(a), int(b), pod))
        # An incident belongs to the pod name its start had.
        inc_start = to_ns(incidents["start"])
        inc_names = incidents["entity"].to_numpy(dtype=object).copy()
        for name, a, b, pod in renames:
            inc_names[(inc_names == name) & (inc_start >= a) & (inc_start < b)] = pod
        incidents["entity"] = pd.array(inc_names.astype(str), dtype="str")
        metrics["entity"] = pd.array(new_name.astype(str), dtype="str")
        metrics = metrics[keep].reset_index(drop=True)
    for col in METRICS:
        metrics[col] = np.round(metrics[col].to_numpy(dtype=float), _DECIMALS[col])
    return metrics, incidents
