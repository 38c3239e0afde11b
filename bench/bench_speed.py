"""Speed and memory of featurization, scoring and training, each beside its anchor.

Data: a fleet generated here (in a temporary directory, seed 0): 20 metrics per entity at
1-minute steps (4 decimals), a daily cycle, noise, and level shifts in a few metrics now and
then so that events happen. Rows are written time-major (all entities of a minute, then the
next minute), as a scraper writes them.

- ``featurize``: all 7 window stats (window 15) of every window of 700 entities x 1440 minutes
  x 20 metrics, against the same computed with pandas ``groupby().rolling()`` (mean, std,
  min, max, median, last, and the slope from rolling moments); rows/s, higher is better.
  Checked equal (<= 1e-9) before timing. ``forest stats`` rows: only the median and last
  value, the stats the forest sees, which is what scoring computes for every window.
- ``score CSV``: ``ftml score`` (the CLI, a fresh process: imports, model load, reading,
  scoring, events file) on a 700 x 1440 x 20 CSV (~1 M rows; 200 entities with ``--quick``),
  against pandas ``read_csv`` of the same file in a fresh process (the call timed, not
  ``import pandas``); seconds, median of 3 runs of each, alternating, so that the load of a
  shared machine weighs on both alike; the goal is ratio <= 3 (issue 15). The model is
  trained on the day before, without incidents (so no diagnoser: scoring imports neither
  scikit-learn nor scipy). ``identical`` says whether scoring in one piece gives the same
  events file. ``cores busy`` = CPU seconds / wall seconds of the ``ftml score`` process.
  ``score CPU phase`` rows: CPU seconds per phase of ``api.score`` (``bench/score_phases.py``,
  read-ahead off so that phases do not overlap), with ``read_csv``'s CPU seconds beside them
  (see ``docs/speed.md`` for what they say about the goal).
- ``score large CSV``: peak RSS of ``ftml score`` on a large CSV (5 GB; ~1 GB with
  ``--quick``: the RSS does not grow with the file, see the rows/s and the chunk size),
  against the 1 GB budget.
- ``train``: ``api.train`` on 30 days x 100 entities x 20 metrics (4.3 M rows, Parquet) in a
  fresh process, against the 60 s budget; its peak RSS beside it.

Times are wall-clock on a machine that may be shared: see the CPU count and the load average
in ``detail``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import REPO, row

TITLE = "Speed and memory (featurize, score, train)"
N_METRICS = 20
WINDOW = 15
START = pd.Timestamp("2026-01-01T00:00:00Z")
RSS_BUDGET_MB = 1024
SIDE_BY_SIDE = 3  # runs of ftml score and of pandas, alternating (the median is shown)
TRAIN_BUDGET_S = 60.0


# --------------------------------------------------------------------------- data


def fleet(entities: int, minutes: int, seed: int = 0, start: pd.Timestamp = START,
          first_minute: int = 0) -> pd.DataFrame:
    """Wide rows, time-major: timestamp, entity, m00..m19, from ``start`` (the time of
    ``first_minute``, which sets the phase of the daily cycle and the noise). Entity levels
    depend on ``seed`` only, so later days of the same fleet share them."""
    levels = np.random.default_rng(seed)
    base = levels.uniform(10, 100, (entities, 1, N_METRICS))
    noise = levels.uniform(0.02, 0.08, (entities, 1, N_METRICS))
    rng = np.random.default_rng([seed, first_minute])
    minute = first_minute + np.arange(minutes)
    daily = np.sin(minute / 1440 * 2 * np.pi)[None, :, None] * base * 0.2
    vals = base + daily + rng.normal(0, 1, (entities, minutes, N_METRICS)) * base * noise
    # Level shifts: about one per entity-day, 20-90 minutes long, in 1-3 metrics.
    n_faults = max(1, entities * minutes // 1440)
    ent = rng.integers(0, entities, n_faults)
    at = rng.integers(0, max(1, minutes - 90), n_faults)
    for e, a, length, k in zip(ent, at, rng.integers(20, 90, n_faults),
                               rng.integers(1, 4, n_faults), strict=True):
        cols = rng.choice(N_METRICS, k, replace=False)
        vals[e, a:a + length, cols] += (base[e, 0, cols] * rng.uniform(0.3, 1.0, k))[:, None]
    t = start + pd.to_timedelta(np.arange(minutes), unit="min")
    vals = np.round(vals, 4)  # as exporters write them (and quicker to write as text)
    frame = pd.DataFrame(vals.transpose(1, 0, 2).reshape(-1, N_METRICS),
                         columns=[f"m{j:02d}" for j in range(N_METRICS)])
    frame.insert(0, "entity", np.tile([f"host-{i:04d}" for i in range(entities)], minutes))
    frame.insert(0, "timestamp", np.repeat(t, entities))
    return frame


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%SZ")


def write_large_csv(path: Path, entities: int, target_bytes: int) -> int:
    """A CSV of about ``target_bytes``: one generated day, repeated with later dates (fast to
    write; the values repeat daily, which does not matter for memory). Returns its rows."""
    day = fleet(entities, 1440, seed=0)
    text = day.to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%SZ").encode()
    header, body = text.split(b"\n", 1)
    days = max(1, -(-target_bytes // len(body)))
    stamp = START.strftime("%Y-%m-%dT").encode()
    with open(path, "wb") as fh:
        fh.write(header + b"\n")
        for d in range(days):
            date = (START + pd.Timedelta(days=d)).strftime("%Y-%m-%dT").encode()
            fh.write(body if d == 0 else body.replace(stamp, date))
    return days * len(day)


# --------------------------------------------------------------------------- helpers


def _best(fn, repeats: int) -> float:
    return _best_wall_cpu(fn, repeats)[0]


def _best_wall_cpu(fn, repeats: int) -> tuple[float, float]:
    """Best wall-clock and best CPU time (all threads) of ``repeats`` runs."""
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu)


def _child(code: str, *args: str) -> dict:
    """Run Python code in a fresh process; it prints one JSON line last. Adds the child's peak
    RSS (MB) as ``rss_mb``."""
    wrapper = (
        "import json, resource, subprocess, sys\n"
        "p = subprocess.run([sys.executable, '-c', sys.argv[1], *sys.argv[2:]],"
        " capture_output=True, text=True)\n"
        "if p.returncode: sys.stderr.write(p.stderr); sys.exit(p.returncode)\n"
        "out = json.loads(p.stdout.strip().splitlines()[-1])\n"
        "ru = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "out['rss_mb'] = ru.ru_maxrss / 1024\n"
        "out['cpu_s'] = ru.ru_utime + ru.ru_stime\n"
        "print(json.dumps(out))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-c", wrapper, code, *args], capture_output=True,
                       text=True, env=env, cwd=REPO)
    if p.returncode:
        raise RuntimeError(f"child failed: {p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


_PARSE = ("import sys, time, json, pandas as pd\n"
          "t, c = time.perf_counter(), time.process_time(); f = pd.read_csv(sys.argv[1])\n"
          "print(json.dumps({'seconds': time.perf_counter() - t,"
          " 'call_cpu_s': time.process_time() - c, 'rows': len(f)}))\n")

_SCORE_CLI = ("import sys, time, json, runpy\n"
              "t = time.perf_counter()\n"
              "sys.argv = ['ftml', 'score', '--quiet', *sys.argv[1:]]\n"
              "from ftml.cli import main\n"
              "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
              "print(json.dumps({'seconds': time.perf_counter() - t}))\n")

_TRAIN = ("import sys, time, json\n"
          "t = time.perf_counter()\n"
          "from ftml import api\n"
          "r = api.train([sys.argv[1]], sys.argv[2], quiet=True)\n"
          "print(json.dumps({'seconds': time.perf_counter() - t,"
          " 'train_seconds': r.manifest['training']['seconds'],"
          " 'rows': r.manifest['training']['rows']}))\n")


def _load() -> str:
    try:
        return f"load {os.getloadavg()[0]:.1f}"
    except OSError:
        return ""


# --------------------------------------------------------------------------- benchmarks


def _pandas_features(z: np.ndarray, seg: np.ndarray, w: int, stats: str) -> np.ndarray:
    """The window features with pandas groupby().rolling(): the anchor."""
    cols = list(range(z.shape[1]))
    frame = pd.DataFrame(z).assign(seg=seg)
    roll = frame.groupby("seg")[cols].rolling(w)
    if stats == "forest":
        return np.hstack([roll.median().to_numpy(), z])
    mean = roll.mean().to_numpy()
    # The slope from rolling moments: cov(t, z) / var(t), t the row number.
    t = np.arange(len(z), dtype=np.float64)[:, None]
    tz = pd.DataFrame(z * t).assign(seg=seg).groupby("seg")[cols].rolling(w).mean().to_numpy()
    t_mean = pd.Series(t[:, 0]).groupby(seg).rolling(w).mean().to_numpy()[:, None]
    slope = (tz - t_mean * mean) / ((w * w - 1) / 12.0)
    return np.hstack([mean, roll.std(ddof=0).to_numpy(), roll.min().to_numpy(),
                      roll.max().to_numpy(), z, slope, roll.median().to_numpy()])


def bench_featurize(quick: bool) -> list[dict]:
    from ftml import features

    entities = 100 if quick else 700
    rng = np.random.default_rng(0)
    z = rng.normal(size=(entities * 1440, N_METRICS))
    seg = np.repeat(np.arange(entities), 1440)
    n = len(z)
    rows = []
    for stats, label in ((None, "all 7 stats"), (["median", "last"], "forest stats")):
        kind = "forest" if stats else "all"

        def ours(stats=stats):
            end = features.complete_windows(np.isnan(z).any(axis=1), seg, WINDOW)
            return features.window_stats(z, end, WINDOW, stats), end

        X, end = ours()
        ref = _pandas_features(z, seg, WINDOW, kind)
        err = np.abs(X - ref[end]).max()
        if not err <= 1e-9:
            raise AssertionError(f"features differ from pandas by {err}")
        t_ours, c_ours = _best_wall_cpu(ours, 3)
        t_pandas, c_pandas = _best_wall_cpu(
            lambda kind=kind: _pandas_features(z, seg, WINDOW, kind), 2)
        rows.append(row(f"featurize {entities}x1440x{N_METRICS}, {label}", n / t_ours,
                        n / t_pandas, "rows/s", vs="pandas groupby().rolling()",
                        target=">= 10 x" if stats is None else None,
                        ok=bool(t_pandas / t_ours >= 10) if stats is None else None,
                        detail=f"{t_ours:.2f} s vs {t_pandas:.2f} s (CPU {c_ours:.2f} s vs "
                               f"{c_pandas:.2f} s), max diff {err:.1e}, "
                               f"{'C kernel' if features.KERNEL_AVAILABLE else 'numpy'}, "
                               f"{_load()}"))
    return rows


def _median(values: list[float]) -> float:
    return float(np.median(values))


def _child_script(module: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                       env=env, cwd=REPO)
    if p.returncode:
        raise RuntimeError(f"{module} failed: {p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench_score(work: Path, quick: bool) -> list[dict]:
    from ftml import api

    entities = 200 if quick else 700
    train = work / "score_train.parquet"
    fleet(entities, 1440, seed=0).to_parquet(train)
    api.train([train], work / "score_model", quiet=True)
    csv = work / "score.csv"
    write_csv(fleet(entities, 1440, seed=0, start=START + pd.Timedelta(days=1),
                    first_minute=1440), csv)
    n_rows = entities * 1440
    # Side by side, alternating, so that the load of a shared machine weighs on both alike.
    parses, runs = [], []
    for _ in range(SIDE_BY_SIDE):
        parses.append(_child(_PARSE, str(csv)))
        runs.append(_child(_SCORE_CLI, "--model", str(work / "score_model"), "--metrics",
                           str(csv), "--out", str(work / "events.jsonl")))
    parse_s = _median([r["seconds"] for r in parses])
    parse_cpu = _median([r["call_cpu_s"] for r in parses])
    score_s = _median([r["seconds"] for r in runs])
    cpu_s = _median([r["cpu_s"] for r in runs])
    rss = max(r["rss_mb"] for r in runs)
    load = _load()
    phases = _child_script("bench.score_phases", str(work / "score_model"), str(csv))
    whole = api.score(work / "score_model", [csv], out=work / "events_whole.jsonl",
                      chunk_rows=10**9)
    same = (work / "events.jsonl").read_text() == (work / "events_whole.jsonl").read_text()
    api_run = api.score(work / "score_model", [csv], out=work / "events_api.jsonl")
    size_mb = csv.stat().st_size / 2**20
    cores = os.cpu_count() or 1
    rows = [
        row(f"score CSV {entities}x1440x{N_METRICS} ({n_rows / 1e6:.2f} M rows, "
            f"{size_mb:.0f} MB): ftml score CLI", score_s, parse_s, "s",
            vs="pandas read_csv (parse only)", target="<= 3 x",
            ok=bool(score_s <= 3 * parse_s),
            detail=f"median of {SIDE_BY_SIDE}, side by side; CPU {cpu_s:.1f} s = "
                   f"{cpu_s / score_s:.2f} of {cores} cores busy; read_csv CPU "
                   f"{parse_cpu:.2f} s; {len(whole.events)} events; one piece identical: "
                   f"{'yes' if same else 'NO'}; imported: "
                   f"{', '.join(phases['loaded_after_score']) or 'no scikit-learn, no scipy'}"
                   f"; peak RSS {rss:.0f} MB; {load}"),
        row("score CSV: api.score in process (no imports / model load)", api_run.seconds,
            parse_s, "s", vs="pandas read_csv (parse only)",
            detail=f"{n_rows / api_run.seconds / 1e6:.2f} M rows/s"),
    ]
    total = sum(phases["phases"].values())
    for name, cpu in phases["phases"].items():
        rows.append(row(f"score CPU phase: {name}", cpu, None, "CPU s",
                        detail=f"{cpu / total:.0%} of {total:.1f} CPU s (phases one after "
                               f"another: read-ahead off); {_load()}"))
    return rows


def bench_memory(work: Path, quick: bool) -> list[dict]:
    from ftml import api

    entities = 700
    target = (1 if quick else 5) * 2**30
    train = work / "mem_train.parquet"
    fleet(entities, 1440, seed=0).to_parquet(train)
    # A model of the same fleet: one of other entities would flag everything, and an event
    # keeps every window's features until it ends (see the report on this benchmark).
    api.train([train], work / "mem_model", quiet=True)
    big = work / "large.csv"
    t0 = time.perf_counter()
    n_rows = write_large_csv(big, entities, target)
    write_s = time.perf_counter() - t0
    res = _child(_SCORE_CLI, "--model", str(work / "mem_model"), "--metrics", str(big),
                 "--out", str(work / "events_large.jsonl"))
    size_gb = big.stat().st_size / 2**30
    big.unlink()
    return [row(f"score large CSV ({size_gb:.1f} GB, {n_rows / 1e6:.1f} M rows): peak RSS",
                res["rss_mb"], RSS_BUDGET_MB, "MB", vs="budget", target="<= 1 x",
                ok=bool(res["rss_mb"] <= RSS_BUDGET_MB),
                detail=f"{res['seconds']:.0f} s ({n_rows / res['seconds'] / 1e6:.2f} M rows/s);"
                       f" --chunk-rows 1 M (read 250 k at a time); file written in "
                       f"{write_s:.0f} s; {_load()}")]


def bench_train(work: Path, quick: bool) -> list[dict]:
    entities, days = (20, 30) if quick else (100, 30)
    path = work / "train.parquet"
    parts = [fleet(entities, 1440, seed=1, start=START + pd.Timedelta(days=d),
                   first_minute=1440 * d) for d in range(days)]
    pd.concat(parts, ignore_index=True).to_parquet(path)
    del parts
    res = _child(_TRAIN, str(path), str(work / "train_model"))
    return [row(f"train {days} d x {entities} entities x {N_METRICS} metrics "
                f"({res['rows'] / 1e6:.2f} M rows)", res["seconds"], TRAIN_BUDGET_S, "s",
                vs="budget", target="<= 1 x", ok=bool(res["seconds"] <= TRAIN_BUDGET_S),
                detail=f"api.train {res['train_seconds']:.1f} s + imports; peak RSS "
                       f"{res['rss_mb']:.0f} MB; {_load()}")]


def run(quick: bool = False, only: tuple[str, ...] = ()) -> list[dict]:
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ftml-bench-speed-") as tmp:
        work = Path(tmp)
        steps = {"featurize": lambda: bench_featurize(quick),
                 "score": lambda: bench_score(work, quick),
                 "memory": lambda: bench_memory(work, quick),
                 "train": lambda: bench_train(work, quick)}
        for name, step in steps.items():
            if not only or name in only:
                started = time.perf_counter()
                rows.extend(step())
                print(f"   {name}: {time.perf_counter() - started:.0f} s", flush=True)
    return rows


if __name__ == "__main__":
    import argparse

    from bench.common import fmt

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("only", nargs="*", help="parts to run: featurize, score, memory, train "
                   "(default: all)")
    args = p.parse_args()
    for r in run(args.quick, tuple(args.only)):
        print("  ".join(f"{k}={fmt(v)}" for k, v in r.items()))
