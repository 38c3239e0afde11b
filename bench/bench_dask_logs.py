"""Training and scoring with logs on a Dask LocalCluster of 2 single-threaded workers against
the single process (``api.train`` / ``api.score`` with ``logs=``), on a simulated fleet with
logs (``ftml simulate --logs``: 24 entities, 7 days to train on and the 7 days after to score,
1-minute steps, one log file per entity; ``--quick``: 8 entities, 2 + 2 days). The metrics to
score are one Parquet file per day. Each path runs in a process of its own; the cluster's
time excludes starting it and the workers' first imports (a warm-up run on the first day),
as for a long-lived cluster. The cluster scores with the single process's model, and must
write its events byte for byte (``same_events``). Its own model must have the same log
templates, log series and baselines (``same_logs``); the whole bundle is the same only while
the history before the calibration cut has at most 125 000 rows (docs/dask.md, "Same model as
local?"), which ``--quick`` has and the full fleet has not (``same_bundle``). Peak RSS is VmHWM: of the single
process; on the cluster, of the driver (which also runs the LocalCluster's scheduler) and of
the largest worker. ``cpu_s``: CPU seconds of every process of the path. The machine has 2
cores shared by the workers, the scheduler and the driver.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from bench.common import REPO, SkipBench, row

TITLE = "Training and scoring with logs on a Dask cluster"

_SINGLE = """
import json, sys, time
from bench.bench_dask import _usage
from ftml import api
d, out = sys.argv[1], sys.argv[2]
t = time.perf_counter()
api.train([d + "/train/metrics.parquet"], out + "/model", incidents=d + "/train/incidents.csv",
          logs=[d + "/train/logs"])
t_train = time.perf_counter() - t
api.score(out + "/model", [d + "/test/days/*.parquet"], out=out + "/events.jsonl",
          logs=[d + "/test/logs"])
cpu, rss = _usage()
print(json.dumps({"train_s": t_train, "total_s": time.perf_counter() - t, "cpu": cpu,
                  "rss_mb": rss}))
"""

_CLUSTER = """
import json, sys, time
from bench.bench_dask import _usage
from ftml import distributed

def main():
    d, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with distributed.connect(f"local:{workers}") as client:
        # Warm-up: the workers' imports and first calls, on the first day alone.
        distributed.train([d + "/test/days/" + sys.argv[4]], out + "/warm", client,
                          logs=[d + "/test/logs"])
        before, c0 = client.run(_usage), _usage()[0]
        t = time.perf_counter()
        distributed.train([d + "/train/metrics.parquet"], out + "/model", client,
                          incidents=d + "/train/incidents.csv", logs=[d + "/train/logs"])
        t_train = time.perf_counter() - t
        # The single process's model: its events are the ones to compare with.
        distributed.score(sys.argv[5] + "/model", [d + "/test/days/*.parquet"], client,
                          out=out + "/events.jsonl", logs=[d + "/test/logs"])
        total = time.perf_counter() - t
        after = client.run(_usage)
        cpu = _usage()[0] - c0 + sum(after[w][0] - before[w][0] for w in after)
    print(json.dumps({"train_s": t_train, "total_s": total, "cpu": cpu,
                      "rss_mb": _usage()[1],
                      "worker_rss_mb": max(a[1] for a in after.values())}))

if __name__ == "__main__":
    main()
"""


def _fleet(work: Path, entities: int, days: int) -> tuple[int, int]:
    from ftml.simulate import write_split_simulation

    summary = write_split_simulation(work, test_days=days, days=days, entities=entities,
                                     seed=0, logs=True, format="parquet")
    later = pd.read_parquet(work / "test" / "metrics.parquet")
    (work / "test" / "days").mkdir()
    for day, part in later.groupby(later["timestamp"].dt.strftime("%Y-%m-%d")):
        part.to_parquet(work / "test" / "days" / f"day={day}.parquet", index=False)
    rows = summary["train"]["rows"] + summary["test"]["rows"]
    return rows, summary["train"]["log_lines"] + summary["test"]["log_lines"]


def _run(script: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True,
                         text=True, timeout=7200)
    if res.returncode:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def _same(a: Path, b: Path) -> dict:
    import numpy as np

    from ftml.bundle import load_model

    ma, mb = load_model(a / "model"), load_model(b / "model")
    base_a, base_b = ma.featurizer.baseline_, mb.featurizer.baseline_
    return {"same_events": (a / "events.jsonl").read_bytes() == (b / "events.jsonl")
            .read_bytes(),
            "same_logs": ma.logs.templates.state == mb.logs.templates.state
            and ma.logs.metrics == mb.logs.metrics and ma.metrics == mb.metrics
            and np.array_equal(ma.logs.known_ids, mb.logs.known_ids)
            and all(np.array_equal(getattr(base_a, k), getattr(base_b, k))
                    for k in ("center", "scale", "fleet_center", "fleet_scale")),
            "same_bundle": all((a / "model" / f).read_bytes() == (b / "model" / f).read_bytes()
                               for f in ("model.json", "arrays.npz"))}


def run(quick: bool = False) -> list[dict]:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise SkipBench("Dask is not installed (pip install 'ftml[dask]')") from None
    entities, days = (8, 2) if quick else (24, 7)
    with tempfile.TemporaryDirectory(prefix="ftml-bench-dask-logs-") as tmp:
        work = Path(tmp)
        n_rows, n_lines = _fleet(work / "fleet", entities, days)
        first = sorted(p.name for p in (work / "fleet" / "test" / "days").glob("*.parquet"))[0]
        (work / "single").mkdir()
        (work / "dask").mkdir()
        single = _run(_SINGLE, str(work / "fleet"), str(work / "single"))
        dask = _run(_CLUSTER, str(work / "fleet"), str(work / "dask"), "2", first,
                    str(work / "single"))
        same = _same(work / "single", work / "dask")
    what = dict(rows=n_rows, log_lines=n_lines, entities=entities, days=f"{days}+{days}")
    rows = []
    for name, res in (("single process", single), ("dask 2 workers", dask)):
        base = None if res is single else single
        rows.append(row(f"train, {name}", round(res["train_s"], 1),
                        base and round(base["train_s"], 1), "s",
                        vs=base and "single process", **what))
        rows.append(row(f"score, {name}", round(res["total_s"] - res["train_s"], 1),
                        base and round(base["total_s"] - base["train_s"], 1), "s",
                        vs=base and "single process"))
        rows.append(row(f"train + score, {name}", round(res["total_s"], 1),
                        base and round(base["total_s"], 1), "s", vs=base and "single process",
                        cpu_s=round(res["cpu"], 1),
                        **(same if base else {})))
        rows.append(row(f"peak RSS, {name}" + (" (driver + scheduler)" if base else ""),
                        round(res["rss_mb"]), base and round(base["rss_mb"]), "MB",
                        vs=base and "single process"))
    rows.append(row("peak RSS per worker, dask 2 workers", round(dask["worker_rss_mb"]),
                    round(single["rss_mb"]), "MB", vs="single process"))
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(r)
