"""Scoring throughput on a Dask LocalCluster of 1 and 2 single-threaded workers against the
single-process path (``api.score``), on a simulated fleet stored as a Parquet dataset of one
file per day (24 entities x 14 days at 1-minute steps; ``--quick``: 8 x 4). A model trained on
the 7 days before scores it; the cluster runs must write the single-process events byte for
byte (``same``). Throughput counts input rows per second of wall time, reading included; the
cluster time excludes starting the cluster and the workers' first imports (a warm-up run), as
for a long-lived cluster. Peak RSS: per worker process on the cluster, of the whole process on
the single path. ``cpu_s``: CPU seconds spent (workers, driver and scheduler), which does not
depend on what else the machine runs. The machine has 2 cores shared by the workers, the
scheduler and the driver, so 2 workers can at best double the speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench.common import REPO, SkipBench, row

TITLE = "Scoring on a Dask cluster"
START = pd.Timestamp("2026-01-05T00:00:00Z")
TRAIN_DAYS = 7

_SINGLE = """
import json, sys, time
from bench.bench_dask import _usage
from ftml import api
from ftml.bundle import load_model
model = load_model(sys.argv[1])
t, c = time.perf_counter(), _usage()[0]
api.score(model, [sys.argv[2]], out=sys.argv[3])
cpu, rss = _usage()
print(json.dumps({"seconds": time.perf_counter() - t, "cpu": cpu - c, "rss_mb": rss}))
"""


def _usage() -> tuple[float, float]:
    """(CPU seconds so far, peak RSS in MB) of this process. The peak is VmHWM, not ru_maxrss:
    a process started by fork + exec inherits its parent's ru_maxrss."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    try:
        with open("/proc/self/status") as fh:
            hwm = next((int(x.split()[1]) for x in fh if x.startswith("VmHWM:")), r.ru_maxrss)
    except OSError:  # not Linux
        hwm = r.ru_maxrss
    return r.ru_utime + r.ru_stime, hwm / 1024


def _fleet(work: Path, entities: int, days: int) -> tuple[Path, str, int]:
    from ftml import api
    from ftml.simulate import simulate_fleet

    train, incidents = simulate_fleet(entities=entities, days=TRAIN_DAYS, seed=0, start=str(START))
    train.to_parquet(work / "train.parquet", index=False)
    incidents.to_csv(work / "incidents.csv", index=False)
    api.train([work / "train.parquet"], work / "model", incidents=work / "incidents.csv")
    later, _ = simulate_fleet(entities=entities, days=days, seed=1, fleet_seed=0,
                              start=str(START + pd.Timedelta(days=TRAIN_DAYS)))
    (work / "data").mkdir()
    for day, part in later.groupby(later["timestamp"].dt.strftime("%Y-%m-%d")):
        part.to_parquet(work / "data" / f"day={day}.parquet", index=False)
    return work / "model", str(work / "data" / "*.parquet"), len(later)


def _single(model: Path, glob: str, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", _SINGLE, str(model), glob, str(out)], env=env,
                         capture_output=True, text=True, check=True, timeout=3600)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _cluster(model: Path, glob: str, out: Path, workers: int, warmup: str) -> dict:
    from ftml import distributed

    with distributed.connect(f"local:{workers}") as client:
        distributed.score(model, [warmup], client)  # imports and first calls on each worker
        before, driver = client.run(_usage), _usage()[0]
        t = time.perf_counter()
        result = distributed.score(model, [glob], client, out=out)
        seconds = time.perf_counter() - t
        after = client.run(_usage)
        # The driver process also runs the LocalCluster's scheduler: cluster overhead too.
        cpu = _usage()[0] - driver + sum(after[w][0] - before[w][0] for w in after)
    return {"seconds": seconds, "cpu": cpu, "rss_mb": max(a[1] for a in after.values()),
            "windows": result.windows}


def run(quick: bool = False) -> list[dict]:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise SkipBench("Dask is not installed (pip install 'ftml[dask]')") from None
    entities, days = (8, 4) if quick else (24, 14)
    with tempfile.TemporaryDirectory(prefix="ftml-bench-dask-") as tmp:
        work = Path(tmp)
        model, glob, n_rows = _fleet(work, entities, days)
        warmup = sorted((work / "data").glob("*.parquet"))[0]
        single = _single(model, glob, work / "single.jsonl")
        reference = (work / "single.jsonl").read_bytes()
        base = n_rows / single["seconds"]
        rows = [row("score, single process", round(base), unit="rows/s",
                    rows=n_rows, seconds=round(single["seconds"], 2),
                    cpu_s=round(single["cpu"], 1))]
        mem = [row("peak RSS, single process", round(single["rss_mb"]), unit="MB")]
        for n in (1, 2):
            out = work / f"dask{n}.jsonl"
            res = _cluster(model, glob, out, n, str(warmup))
            rate = n_rows / res["seconds"]
            rows.append(row(f"score, dask {n} worker{'s' if n > 1 else ''}", round(rate), base,
                            "rows/s", vs="single process", rows=n_rows,
                            seconds=round(res["seconds"], 2), cpu_s=round(res["cpu"], 1),
                            same=out.read_bytes() == reference))
            mem.append(row(f"peak RSS per worker, {n} worker{'s' if n > 1 else ''}",
                           round(res["rss_mb"]), round(single["rss_mb"]), "MB",
                           vs="single process"))
    return rows + mem


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(r)
