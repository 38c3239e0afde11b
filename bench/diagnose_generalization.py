"""Where ftml's forest loses incidents that the robust statistic finds (issue #14, round 5
diagnosis; bench/PROTOCOL_generalization.md): **selection parts only**.

``python -m bench.diagnose_generalization [SET ...]`` (SET in smd asd nab skab sim worlds;
default all six selection sets). Per set, for the forest (the default), the robust statistic
(the view's largest-deviation column, ``robust only``) and static robust z, each thresholded by
``AlarmThreshold`` on the calibration slice as bench/bench_generalization.py does, and per
judged incident:

* whether it is found (the same event rule and matching);
* if not: whether its score ever crossed the threshold (windows ending within the incident,
  widened by the matching tolerance) and, if it did, the largest number of flagged windows in
  any 8-step look-back (so "crossed but failed 5-of-8" is told from "never crossed");
* its peak score's position against the healthy calibration windows (the share of them scoring
  at least as high), for forest and robust alike: a calibration-free comparison;
* (SMD) how many metrics the interpretation label names for it.

And the forest's sensitivity to one metric: healthy calibration windows with one metric's
``median`` and ``last`` set to a deviation of ``z`` robust scales (the rest untouched, the
cross-metric columns recomputed), the share of them the forest then scores above its
threshold, per ``z``, beside where the robust statistic's threshold lies in ``z``.
Nothing here chooses anything; it prints what it measures.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench import datasets
from bench.bench_generalization import (
    SIM_PARTS,
    WORLD_PARTS,
    WORLD_SEEDS,
    _robust_z,
    _split_dir,
    _touches,
    _view,
    count_false_alarms,
)
from bench.common import require_data, run_split

SETS = ("smd", "asd", "nab", "skab", "sim", "worlds")
Z_GRID = (3.0, 6.0, 12.0, 25.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
#: Shares of healthy calibration windows at which both scores' exceedances are compared.
SHARES = (0.02, 0.005, 0.001)


def selection_splits(root: Path, name: str, work: Path):
    from bench.bench_generalization import ASD_PARTS, NAB_PARTS, SKAB_PARTS, SMD_PARTS

    if name == "smd":
        return [datasets.smd(root, SMD_PARTS["selection"])]
    if name == "asd":
        return [datasets.asd(root, ASD_PARTS["selection"])]
    if name == "nab":
        return datasets.nab(root, NAB_PARTS["selection"])
    if name == "skab":
        return [datasets.skab(root, SKAB_PARTS["selection"])]
    if name == "sim":
        return [datasets.simulated(work, s) for s in SIM_PARTS["selection"]]
    return [datasets.simulated(work, s, world=w) for w in WORLD_PARTS["selection"]
            for s in WORLD_SEEDS]


def smd_dims(root: Path) -> dict[tuple[str, pd.Timestamp], int]:
    """(machine, incident start) -> number of metrics its interpretation label names."""
    seg = pd.read_csv(root / "smd" / "interpretation_segments_index.csv")
    out = {}
    for m, g in seg.groupby("machine"):
        n_train = len(pd.read_csv(root / "smd" / "train" / f"{m}.csv.gz", usecols=[0]))
        t0 = datasets.SMD_START + pd.Timedelta(minutes=n_train)  # test row 0
        for r in g.itertuples(index=False):
            out[(m, t0 + pd.Timedelta(minutes=int(r.start)))] = int(r.n_dims)
    return out


def analyse(split, work: Path, dims: dict | None) -> list[dict]:
    from ftml.detect import AlarmThreshold, build_events
    from ftml.evaluate import MATCH_TOLERANCE
    from ftml.io import incident_spans, read_incidents, read_metrics

    out = run_split(split, work, baselines=False)
    model = out.evaluation.model
    n_met, stats = len(model.metrics), list(model.config.detect.stats)
    read, step_ns = model.config.read, int(model.step.value)
    d = _split_dir(work, split)
    train = read_metrics([d / "train.parquet"], read, model.metrics)
    inc_path = d / "train_incidents.csv"
    spans = incident_spans(read_incidents(inc_path, train.entities, read)
                           if inc_path.exists() else None)
    t_cut = pd.Timestamp(model.manifest["training"]["calibration_start"]).value
    span_ns = (model.featurizer.window - 1) * step_ns

    def scores_of(data, keep=None):
        ent, end, V_all, sc = [], [], [], {"forest": [], "robust": [], "robust_z": []}
        for w in model.featurizer.iter_windows(data):
            sel = np.ones(len(w.end_ns), bool) if keep is None else keep(w)
            V = _view(w.X[sel], n_met, stats)
            f, r = model.detector.component_scores(V)
            sc["forest"].append(f)
            sc["robust"].append(r)
            sc["robust_z"].append(_robust_z(w.X[sel], n_met))
            ent.append(w.entity[sel])
            end.append(w.end_ns[sel])
            V_all.append(V.astype(np.float32))
        return (np.concatenate(ent), np.concatenate(end), np.vstack(V_all),
                {k: np.concatenate(v) for k, v in sc.items()})

    c_ent, c_end, c_V, c_sc = scores_of(train, lambda w: w.end_ns >= t_cut)
    healthy = ~_touches(c_ent, c_end, span_ns, spans)
    thr = {}
    for k, s in c_sc.items():
        thr[k] = AlarmThreshold(budget=model.config.detect.alarm_budget, rules=model.event_rules,
                                tail=model.config.detect.threshold_tail).fit(
            c_ent, c_end, s, step_ns, spans).threshold_
    test = read_metrics([d / "test.parquet"], read, model.metrics)
    t_ent, t_end, t_V, t_sc = scores_of(test)
    incidents = out.evaluation.incidents
    tol = int(pd.Timedelta(MATCH_TOLERANCE).value)
    rows = []
    found = {}
    for k, s in t_sc.items():
        evs = build_events(t_ent, t_end, s, thr[k], model.event_rules, step_ns)
        hit = np.zeros(len(incidents), bool)
        for e in evs:
            hit |= ((incidents["entity"].to_numpy() == e.entity)
                    & (incidents["start"].map(lambda x: pd.Timestamp(x).value).to_numpy()
                       <= e.end_ns + tol)
                    & (incidents["end"].map(lambda x: pd.Timestamp(x).value).to_numpy()
                       >= e.start_ns - tol))
        found[k] = hit
    ref = {k: np.sort(c_sc[k][healthy]) for k in c_sc}
    names = np.asarray(model.metrics, dtype=object)
    for i, inc in enumerate(incidents.itertuples(index=False)):
        a, b = pd.Timestamp(inc.start).value - tol, pd.Timestamp(inc.end).value + tol
        sel = (t_ent == inc.entity) & (t_end >= a) & (t_end <= b)
        r = {"set": split.name, "entity": inc.entity, "start": pd.Timestamp(inc.start),
             "minutes": (pd.Timestamp(inc.end) - pd.Timestamp(inc.start)).value / 60e9 + 1,
             "windows": int(sel.sum())}
        if dims is not None:
            r["dims"] = dims.get((inc.entity, pd.Timestamp(inc.start)), -1)
        t = t_end[sel] // step_ns
        for k in t_sc:
            s = t_sc[k][sel]
            flags = s >= thr[k]
            lo = np.searchsorted(t, t - model.event_rules.of_windows, side="right")
            cs = np.r_[0, np.cumsum(flags)]
            kmax = int((cs[1:] - cs[lo]).max()) if len(t) else 0
            peak = float(s.max()) if len(s) else np.nan
            tail = (len(ref[k]) - np.searchsorted(ref[k], peak, side="left")) / max(len(ref[k]), 1)
            r[f"{k}_found"] = bool(found[k][i])
            r[f"{k}_flags"] = int(flags.sum())
            r[f"{k}_k8"] = kmax
            r[f"{k}_tail"] = float(tail)  # share of healthy calibration windows >= the peak
        if sel.any():  # which metric deviates most at the robust statistic's peak
            j = int(np.argmax(t_sc["robust"][sel]))
            V = t_V[sel][j]
            per = np.maximum(np.abs(V[:n_met]), np.abs(V[n_met:2 * n_met]))
            top = np.argsort(-per)[:3]
            r["top_metrics"] = ",".join(f"{names[m]}:{np.expm1(per[m]):.0f}" for m in top)
        rows.append(r)
    sens = sensitivity(model, c_V[healthy], n_met, thr)
    breadth = {(nm, z): sensitivity(model, c_V[healthy], n_met, thr, zs=(z,), n_moved=nm)[z]
               for nm in (1, 2, 4, 8) for z in (3.0, 100.0) if nm <= n_met}
    print(f"\n== {split.name}: thresholds forest {thr['forest']:.4f} robust {thr['robust']:.3f} "
          f"(|z| {np.expm1(thr['robust']):.1f}) robust_z {thr['robust_z']:.2f}; "
          f"forest healthy-cal share >= thr "
          f"{(ref['forest'] >= thr['forest']).mean():.5f}, robust "
          f"{(ref['robust'] >= thr['robust']).mean():.5f}", flush=True)
    print("   one-metric injection (z -> share of healthy cal windows the forest flags): "
          + ", ".join(f"{z:g}:{v:.2f}" for z, v in sens.items()), flush=True)
    # The time shape of healthy exceedances: at the same share of healthy calibration windows
    # above a cut, how many events (the event rule) each score makes per entity-day.
    cal_days = thr_days(c_ent, c_end, step_ns)
    for q in SHARES:
        line = []
        for k in ("forest", "robust", "robust_z"):
            cut = np.quantile(c_sc[k][healthy], 1 - q)
            fa = count_false_alarms(c_ent, c_end, c_sc[k], cut, model.event_rules, step_ns,
                                    spans)
            line.append(f"{k} {fa / cal_days:.2f}")
        print(f"   top {q:.1%} of healthy cal windows -> false alarms per entity-day: "
              + ", ".join(line), flush=True)
    print("   breadth (n metrics moved by z -> share the forest flags): " + ", ".join(
        f"{nm}x{z:g}:{v:.2f}" for (nm, z), v in breadth.items()), flush=True)
    return rows


def thr_days(ent, end, step_ns) -> float:
    tot = 0.0
    for e in np.unique(ent):
        x = end[ent == e]
        tot += (len(x)) * step_ns / 86400e9
    return tot


def sensitivity(model, V: np.ndarray, n_met: int, thr: dict, n: int = 400,
                seed: int = 0, zs=Z_GRID, n_moved: int = 1) -> dict[float, float]:
    """Healthy windows with one metric (drawn at random per window) set to a deviation of z
    robust scales in both its stats (signed log, as the view), the cross-metric columns
    recomputed: the share the forest scores at or above its threshold, per z."""
    rng = np.random.default_rng(seed)
    if not len(V):
        return {}
    rows = V[rng.choice(len(V), min(n, len(V)), replace=False)].astype(np.float64)
    k = (rows.shape[1] - 2) // n_met
    out = {}
    for z in zs:
        X = rows.copy()
        for _ in range(n_moved):  # (metrics drawn with replacement: at most n_moved distinct)
            m = rng.integers(0, n_met, len(X))
            sign = rng.choice([-1.0, 1.0], len(X))  # one direction for both of its stats
            for s in range(k):
                X[np.arange(len(X)), s * n_met + m] = np.log1p(z) * sign
        per = np.abs(X[:, :-2]).reshape(len(X), k, n_met).max(axis=1)
        top2 = -np.partition(-per, 1, axis=1)[:, :2] if n_met > 1 else np.c_[per, per]
        X[:, -2:] = top2
        f = model.detector.component_scores(X)[0]
        out[z] = float((f >= thr["forest"]).mean())
    return out


def summarise(rows: list[dict]) -> None:
    df = pd.DataFrame(rows)
    if df.empty:
        return
    for name, g in df.groupby("set", sort=False):
        print(f"\n-- {name}: {len(g)} incidents; found forest {g.forest_found.sum()}, robust "
              f"{g.robust_found.sum()}, robust z {g.robust_z_found.sum()}")
        for k in ("forest", "robust", "robust_z"):
            miss = g[~g[f"{k}_found"]]
            never = (miss[f"{k}_flags"] == 0).sum()
            crossed = ((miss[f"{k}_flags"] > 0) & (miss[f"{k}_k8"] < 5)).sum()
            k8 = (miss[f"{k}_k8"] >= 5).sum()
            print(f"   {k:9s} missed {len(miss)}: never crossed {never}, crossed but < 5 of 8 "
                  f"{crossed}, 5-of-8 held but no event (cooldown/merge) {k8}")
        fr = g[g.robust_found & ~g.forest_found]
        rf = g[~g.robust_found & g.forest_found]
        print(f"   found by robust not forest: {len(fr)}; by forest not robust: {len(rf)}")
        if len(fr):
            print("   of those (robust yes, forest no): forest peak tail share median "
                  f"{fr.forest_tail.median():.4f}, robust's {fr.robust_tail.median():.5f}; "
                  f"forest flags>0 in {(fr.forest_flags > 0).sum()}")
            if "dims" in fr:
                print(f"   metrics labelled (dims) of those: {fr.dims.tolist()}; of all found "
                      f"by forest: {g[g.forest_found].dims.tolist()}")
            for r in fr.itertuples(index=False):
                print(f"     {r.entity} {r.start} {r.minutes:.0f} min: forest flags {r.forest_flags}"
                      f" k8 {r.forest_k8} tail {r.forest_tail:.4f} | robust flags {r.robust_flags}"
                      f" k8 {r.robust_k8} tail {r.robust_tail:.5f} | {r.top_metrics}")
        if "dims" in g:
            for lab, sub in (("1 metric", g[g.dims == 1]), ("2-3", g[g.dims.between(2, 3)]),
                             (">=4", g[g.dims >= 4])):
                print(f"   dims {lab}: {len(sub)} incidents; found forest "
                      f"{sub.forest_found.sum()}, robust {sub.robust_found.sum()}, "
                      f"robust z {sub.robust_z_found.sum()}")


def main(argv: list[str]) -> int:
    root = require_data()
    names = argv or list(SETS)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ftml-diag-") as tmp:
        work = Path(tmp)
        for name in names:
            dims = smd_dims(root) if name == "smd" else None
            for split in selection_splits(root, name, work):
                rows += analyse(split, work / name, dims)
    summarise(rows)
    pd.DataFrame(rows).to_csv(Path(tempfile.gettempdir()) / "ftml_q5_incidents.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
