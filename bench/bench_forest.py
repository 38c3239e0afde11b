"""Forest inference: ``ftml.fast`` against scikit-learn on the same fitted models.

Bulk: rows scored per second on 1 000 000 x 40 float64 rows (best of a few runs, wall clock),
``ftml`` with its default threads and, in the ``1 thread`` rows, with one thread against
scikit-learn's default (it scores sequentially unless given a joblib context). Single row:
median latency of many one-row calls. Models: IsolationForest with 100 and 200 trees of
max_samples 256 and 512, a DecisionTreeClassifier and a 100-tree RandomForestClassifier
(default depth: deep, uneven trees), fitted on 20 000 rows. Every ftml result is checked
against scikit-learn's (max abs difference <= 1e-9) before it is timed. ``ratio`` is
ftml / anchor: above 1 is faster for rows/s, below 1 is faster for ms.

    python -m bench.bench_forest [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.ensemble import IsolationForest, RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier

from bench.common import fmt, row
from ftml.fast import KERNEL_AVAILABLE, compile_forest

TITLE = "Forest inference (ftml.fast vs scikit-learn)"
N_FEATURES = 40
N_TRAIN = 20_000


def _seconds(fn, X, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn(X)
        times.append(time.perf_counter() - started)
    return times


def _models(rng: np.random.Generator):
    X = rng.normal(size=(N_TRAIN, N_FEATURES))
    # Four causes from a few features plus noise: deep trees, as on real metrics.
    y = ((X[:, 0] + X[:, 1] ** 2 + rng.normal(scale=0.5, size=N_TRAIN) > 1).astype(int)
         + 2 * (X[:, 2] * X[:, 3] > 0.3))
    for n_trees in (100, 200):
        for max_samples in (256, 512):
            yield (f"iforest {n_trees} trees x {max_samples}", "score_samples",
                   IsolationForest(n_estimators=n_trees, max_samples=max_samples,
                                   random_state=0).fit(X))
    yield "decision tree", "predict_proba", DecisionTreeClassifier(random_state=0).fit(X, y)
    forest = RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=-1).fit(X, y)
    forest.n_jobs = None  # fitted in parallel, predicts with scikit-learn's default
    yield "random forest 100 trees", "predict_proba", forest


def run(quick: bool = False) -> list[dict]:
    n_rows = 100_000 if quick else 1_000_000
    repeats = 2 if quick else 3
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n_rows, N_FEATURES))
    rows = []
    for name, method, est in _models(rng):
        fast = compile_forest(est)
        single = compile_forest(est, n_jobs=1)
        sk, ft, ft1 = (getattr(m, method) for m in (est, fast, single))

        started = time.perf_counter()
        expected = sk(X)  # the reference, and the first scikit-learn timing
        sk_s = min([time.perf_counter() - started, *_seconds(sk, X, repeats - 1)])
        diff = float(np.abs(ft(X) - expected).max())
        if diff > 1e-9:
            raise AssertionError(f"{name}: ftml differs from scikit-learn by {diff}")
        ft_s, ft1_s = min(_seconds(ft, X, repeats)), min(_seconds(ft1, X, repeats))
        rows.append(row(f"{name}: bulk", n_rows / ft_s, n_rows / sk_s, "rows/s",
                        vs="scikit-learn", max_abs_diff=diff))
        rows.append(row(f"{name}: bulk, 1 thread", n_rows / ft1_s, n_rows / sk_s, "rows/s",
                        vs="scikit-learn"))

        one = X[:1]
        sk_calls = 50 if quick else 200
        ft_ms = float(np.median(_seconds(ft, one, 20 * sk_calls))) * 1e3
        sk_ms = float(np.median(_seconds(sk, one, sk_calls))) * 1e3
        rows.append(row(f"{name}: single row", ft_ms, sk_ms, "ms", vs="scikit-learn"))
        for r in rows[-3:]:
            print(f"   {r['name']:<48} ftml {fmt(r['ftml']):>10}  sklearn {fmt(r['anchor']):>10}"
                  f"  {r['unit']:<6}  ratio {fmt(r['ratio'])}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_forest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 000 rows, fewer repeats")
    args = parser.parse_args(argv)
    if not KERNEL_AVAILABLE:
        print("warning: ftml._forest_kernel is not built; run `pip install -e .`")
    run(quick=args.quick)


if __name__ == "__main__":
    main()
