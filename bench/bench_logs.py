"""Logs: template mining accuracy on loghub, and lines per second parsed into series.

- ``GA <system>``: grouping accuracy of ftml's template mining (``ftml.logs.templates``: its
  masking of numbers, hex ids, IPs and paths, then drain3's Drain with its defaults, depth 4,
  similarity 0.4, one setting for every system) on the ``Content`` column of
  ``../shared/data/loghub/<System>/<System>_2k.log_structured.csv`` (the header already split
  off, as loghub's README allows; the files of loghub commit dd61d09, templates of 2023), as
  the loghub benchmark (logpai/logparser ``evaluator.py``; Zhu et al., ICSE-SEIP 2019) defines
  it: a line is right only when the set of lines in its mined group is exactly the set in its
  ground-truth group. Beside it, Drain's published figure: the benchmark table of
  logpai/logparser's ``logparser/Drain/README.md`` (the Drain column of Zhu et al. 2019,
  Table IV), reached with a regex list, depth and threshold tuned per system, on that
  repository's ``loghub_2k`` annotation, whose templates differ in places from these
  (loghub's README): a comparison of magnitudes, not a rerun. Worst first.
- ``throughput``: lines/s of ``LogModel.series`` (read, parse, mask, mine, count per entity
  and step) on a generated Python-logging file (the ``ftml simulate --logs`` format: 20
  message kinds with numbers, IPs, hex ids and paths; 2 % errors, 3 % warnings), in a fresh
  process, against the 200 k lines/s goal; ``detail`` has the CPU seconds and the load.
- ``peak RSS``: that process's own peak (VmHWM) at two file sizes: reading is
  ``chunk_bytes`` (4 MB) at a time, so lines are never all held; what grows is the count
  table, one row per (entity, step, template) in use (500 k rows for the 30 M lines, 17 days
  of one service), not the lines.

Times are wall-clock on a machine that may be shared: see the load average in ``detail``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import REPO, SkipBench, require_data, row

TITLE = "Logs: template grouping accuracy (loghub) and lines/s into series"
GOAL_LINES_PER_S = 200_000

# Drain's grouping accuracy on loghub_2k: logpai/logparser, logparser/Drain/README.md,
# "Running the benchmark script on Loghub_2k datasets" table (Accuracy column), the figures
# of Zhu et al., "Tools and Benchmarks for Automated Log Parsing", ICSE-SEIP 2019, Table IV.
DRAIN_PUBLISHED = {
    "HDFS": 0.9975, "Hadoop": 0.9475, "Spark": 0.92, "Zookeeper": 0.9665, "BGL": 0.9625,
    "HPC": 0.887, "Thunderbird": 0.955, "Windows": 0.997, "Linux": 0.69, "Android": 0.911,
    "HealthApp": 0.78, "Apache": 1.0, "Proxifier": 0.5265, "OpenSSH": 0.7875,
    "OpenStack": 0.7325, "Mac": 0.7865,
}


def grouping_accuracy(truth: np.ndarray, parsed: np.ndarray) -> float:
    """loghub's GA: the share of lines whose parsed group is exactly their true group."""
    frame = pd.DataFrame({"t": pd.factorize(truth)[0], "p": pd.factorize(parsed)[0]})
    true_size = frame.groupby("t")["t"].transform("size")
    by_p = frame.groupby("p")
    one_truth = by_p["t"].transform("nunique") == 1
    same_size = by_p["t"].transform("size") == true_size
    return float((one_truth & same_size).mean())


def _mine(content: list[str]) -> np.ndarray:
    import pyarrow as pa

    from ftml.config import LogConfig
    from ftml.logs.templates import Templates

    return Templates.for_config(LogConfig()).ids(pa.array(content, pa.string()), learn=True)


def loghub_rows() -> list[dict]:
    root = require_data("loghub") / "loghub"
    rows = []
    for system, published in DRAIN_PUBLISHED.items():
        path = root / system / f"{system}_2k.log_structured.csv"
        if not path.exists():
            continue
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        ga = grouping_accuracy(table["EventId"].to_numpy(), _mine(table["Content"].tolist()))
        rows.append(row(f"GA {system}", round(ga, 4), published, "GA", vs="Drain (published)",
                        detail=f"{len(table)} lines, {table['EventId'].nunique()} templates"))
    if not rows:
        raise SkipBench(f"no loghub samples under {root}")
    rows.sort(key=lambda r: r["ftml"])
    mean = float(np.mean([r["ftml"] for r in rows]))
    anchor = float(np.mean([r["anchor"] for r in rows]))
    rows.append(row("GA mean (16 systems)", round(mean, 4), round(anchor, 4), "GA",
                    vs="Drain (published)"))
    return rows


# --------------------------------------------------------------------------- throughput

_KINDS = [
    ("INFO", "GET /api/v1/items/{n} 200 in {ms} ms"),
    ("INFO", "POST /api/v1/orders/{n} 201 in {ms} ms"),
    ("INFO", "user {u} logged in from {ip}"),
    ("INFO", "cache hit ratio {f} for shard {s}"),
    ("INFO", "request {hex} served by worker {s}"),
    ("INFO", "wrote {n} bytes to /var/lib/app/data/part-{s}.bin"),
    ("INFO", "heartbeat ok after {ms} ms"),
    ("INFO", "scheduled job {hex} queued at position {s}"),
    ("INFO", "connection pool size {s} idle {n}"),
    ("INFO", "GC young generation freed {n} KB in {ms} ms"),
    ("INFO", "session {hex} renewed for user {u}"),
    ("INFO", "config reloaded from /etc/app/app.yaml"),
    ("INFO", "checkpoint {n} committed"),
    ("INFO", "upstream {ip} answered in {ms} ms"),
    ("INFO", "batch of {n} events flushed"),
    ("INFO", "health check passed"),
    ("WARNING", "slow query took {ms} ms on table orders"),
    ("WARNING", "retrying request to {ip} attempt {s}"),
    ("ERROR", "Connection refused to {ip}"),
    ("ERROR", "Timeout after {ms} ms waiting for pool slot"),
]
_WEIGHTS = np.array([14, 10, 8, 8, 8, 6, 6, 5, 5, 5, 4, 3, 3, 3, 3, 4, 2, 1, 1, 1], float)


def write_log(path: Path, n_lines: int, seed: int = 0, block: int = 250_000) -> int:
    """A Python-logging file of ``n_lines`` (20 lines/s of one service); its size in bytes."""
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp("2026-01-05T00:00:00").value
    p = _WEIGHTS / _WEIGHTS.sum()
    with open(path, "w") as fh:
        for start in range(0, n_lines, block):
            k = min(block, n_lines - start)
            t = t0 + (start + np.arange(k)) * 50_000_000
            stamp = pd.to_datetime(t).strftime("%Y-%m-%d %H:%M:%S").to_numpy(dtype=object)
            ms = (t // 1_000_000 % 1000).astype(str)
            kind = rng.choice(len(_KINDS), size=k, p=p)
            n = rng.integers(1, 10**6, k).astype(str)
            small = rng.integers(1, 64, k).astype(str)
            dur = rng.integers(1, 5000, k).astype(str)
            ip = np.char.add("10.0.3.", rng.integers(1, 255, k).astype(str))
            hx = np.char.mod("%012x", rng.integers(0, 2**48, k))
            user = np.char.add("u", rng.integers(1, 500, k).astype(str))
            frac = np.char.mod("%.2f", rng.random(k))
            out = np.empty(k, dtype=object)
            for j, (level, text) in enumerate(_KINDS):
                sel = np.flatnonzero(kind == j)
                if not len(sel):
                    continue
                parts = text.replace("{", "\x00{").replace("}", "}\x00").split("\x00")
                msg = np.full(len(sel), "", dtype=object)
                fields = {"{n}": n, "{ms}": dur, "{u}": user, "{ip}": ip, "{f}": frac,
                          "{s}": small, "{hex}": hx}
                for part in parts:
                    msg = msg + (fields[part][sel].astype(object) if part in fields else part)
                out[sel] = f" {level} app.web: " + msg
            lines = stamp + "," + np.char.zfill(ms, 3).astype(object) + out
            fh.write("\n".join(lines) + "\n")
    return path.stat().st_size


# The child's own peak (VmHWM): ru_maxrss would also count the parent's RSS at the fork,
# which Linux keeps across exec.
_CHILD = """
import json, resource, sys, time
def peak_mb():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
import numpy as np
from ftml.config import LogConfig, ReadConfig
from ftml.logs.model import LogInput, LogModel
from ftml.logs.templates import Templates
cfg = LogConfig()
model = LogModel(cfg, 60_000_000_000, Templates.for_config(cfg), [], np.zeros(0, np.int64))
t, c = time.perf_counter(), time.process_time()
cell, stats = model.series(LogInput([sys.argv[1]]), ReadConfig(), learn=True)
print(json.dumps({"seconds": time.perf_counter() - t, "cpu": time.process_time() - c,
                  "lines": stats.lines, "records": stats.records, "cells": len(cell),
                  "templates": len(model.templates),
                  "rss_mb": peak_mb()}))
"""


def _series_run(path: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path)], env=env, text=True,
                         capture_output=True, timeout=3600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f} on {os.cpu_count()} CPUs"


def throughput_rows(quick: bool) -> list[dict]:
    sizes = (1_000_000, 4_000_000) if quick else (4_000_000, 30_000_000)
    results = []
    with tempfile.TemporaryDirectory(prefix="ftml-bench-logs-") as tmp:
        for n in sizes:
            path = Path(tmp) / f"app-{n}.log"
            size = write_log(path, n)
            res = _series_run(path)
            res["bytes"] = size
            results.append(res)
            path.unlink()
    big = results[-1]
    rate = big["lines"] / big["seconds"]
    rows = [row(f"throughput ({big['lines'] / 1e6:.0f} M lines, {big['bytes'] / 1e9:.2f} GB)",
                round(rate), GOAL_LINES_PER_S, "lines/s", vs="goal", target=">= 1 x",
                ok=bool(rate >= GOAL_LINES_PER_S),
                detail=f"{big['seconds']:.1f} s wall, {big['cpu']:.1f} s CPU "
                       f"({big['lines'] / big['cpu']:,.0f} lines per CPU-s); "
                       f"{big['templates']} templates, {big['cells']} cells; {_load()}")]
    for res in results:
        rows.append(row(f"peak RSS ({res['bytes'] / 1e9:.2f} GB file)", round(res["rss_mb"]),
                        round(results[0]["rss_mb"]), "MB", vs=f"at {results[0]['bytes'] / 1e9:.2f} GB",
                        detail=f"{res['lines'] / 1e6:.0f} M lines, {res['seconds']:.1f} s"))
    return rows


def run(quick: bool = False) -> list[dict]:
    rows = []
    try:
        rows += loghub_rows()
    except SkipBench as exc:
        print(f"   loghub skipped: {exc}", flush=True)
    rows += throughput_rows(quick)
    return rows
