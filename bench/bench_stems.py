"""Stem baselines (``read.stem_baselines``) on and off, on the second family of simulated
worlds with renamed pods, by bench/PROTOCOL_generalization.md's amendment of 2026-12-06 22:35
(and bench/PROTOCOL_diagnosis.md's line of the same time): detection through the runner
``python -m bench generalization`` uses for worlds 3-4 (``run_part``: ftml and the same
baselines under the same event rule and budget), diagnosis through ``bench diagnosis``'s
(``prepare``, ``judge``: ``full``, the plain tree and the majority answer).

    python -m bench.bench_stems selection   # world 3, seeds 40 and 41 (never used before)
    python -m bench.bench_stems held-out    # worlds 3-4, the benches' own seeds
    python -m bench stems                   # the same, recorded in docs/benchmarks.md
    python -m bench.bench_stems unseen      # every other set: entities not in training
    python -m bench.bench_stems nezha       # Nezha OB both ways (pods renamed between days)

Nothing here chooses anything by itself: it prints the figures the protocol's rule reads.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

SELECTION_SEEDS = (40, 41)
#: Off is the product as it was (every unseen entity on the fleet-wide baseline).
CONFIGS = {"off": {"read": {"stem_baselines": False}}, "on": {"read": {"stem_baselines": True}}}


def detection(work: Path, world: int, seeds) -> dict:
    """Per seed and pooled: {on/off: {detector: Counts}} through bench generalization's
    runner."""
    from bench import datasets

    return {seed: detect_split(work, datasets.simulated(work, seed, world=world))
            for seed in seeds}


def detect_split(work: Path, split) -> dict:
    """{on/off: {detector: Counts}} of one split, as bench generalization's ``run_part``
    computes them; ftml's also with ``flagged`` (entity-hours inside ftml's events, of the
    judged entity-hours): a detector that stays on for hours finds every incident in its span,
    which event F1 alone rewards."""
    from bench import bench_generalization as bg
    from bench.common import run_split

    out = {}
    for name, extra in CONFIGS.items():
        sp = bg.with_config(split, extra)
        res = run_split(sp, work / name, baselines=False)
        per = {"ftml": bg.ftml_counts(res),
               **bg.baselines_on(bg._split_dir(work / name, sp), res.evaluation)}
        events = next(iter(res.evaluation.runs.values())).events
        hours = sum((e.end - e.start).total_seconds() for e in events) / 3600
        span = split.test.groupby("entity")["timestamp"].agg(lambda t: (t.max() - t.min())
                                                              .total_seconds() / 3600).sum()
        per["ftml"].flagged = (hours, float(span))
        out[name] = per
    return out


def diagnosis(work: Path, world: int, seeds) -> dict:
    """Pooled over seeds: {on/off: bench diagnosis's pooled() entry of full, plain tree and
    majority} (leave-one-cause-out is not run: the model, its training windows and so every
    diagnoser are the same on and off; only the judged events differ)."""
    from bench import bench_diagnosis as bd
    from ftml.config import Config
    from ftml.simulate import simulate_fleet

    out = {}
    for name, extra in CONFIGS.items():
        config = Config.from_dict(extra)
        res = []
        for seed in seeds:
            tr, tr_inc = simulate_fleet(entities=8, days=bd.TRAIN_DAYS, seed=seed,
                                        start=str(bd.START), world=world)
            te, te_inc = simulate_fleet(
                entities=8, days=bd.TEST_DAYS, seed=seed + 1000, fleet_seed=seed, world=world,
                start=str(bd.START + bd.pd.Timedelta(days=bd.TRAIN_DAYS)))
            split = bd.prepare(f"{name} world {world} seed {seed}", tr, tr_inc, te, te_inc,
                               config, work)
            full = bd.fit_variant(split.training, split.model.config, "full")
            res.append({"full": (bd.judge(split, full), None, 0),
                        "plain tree": (bd.judge(split, bd.plain_tree(split.training)), 0.0, 0),
                        "majority": (bd.judge(split, bd.majority(split.training)), 0.0, 0)})
        out[name] = bd.pooled(res)
    return out


def _det_line(label: str, per: dict) -> str:
    from bench.bench_generalization import LABELS

    parts = []
    for name in CONFIGS:
        c = per[name]
        f = c["ftml"]
        auc = "-" if f.auc is None else f"{f.auc:.2f}"
        hours, span = getattr(f, "flagged", (0.0, 0.0))
        parts.append(f"{name}: ftml F1 {f.f1:.3f} (R/P {f.recall or 0:.2f}/"
                     f"{f.precision or 0:.2f}, FA {f.fa_judged or 0:.2f}/entity-day, AUC-PR "
                     f"{auc}, flagged {hours / span if span else 0:.1%} of entity-hours); "
                     + ", ".join(f"{LABELS[k]} {c[k].f1:.3f}" for k in ("robust_z", "ecod",
                                                                         "iforest")))
    return f"  {label}: " + "; ".join(parts)


def _diag_line(label: str, per: dict) -> str:
    parts = []
    for name in CONFIGS:
        r = per[name]
        full = r["full"][0]
        fa = full["fa_named"]
        parts.append(f"{name}: accuracy {full['diag']['accuracy'] or 0:.3f} "
                     f"(n={full['diag']['n']}), false alarms named "
                     f"{'-' if fa is None else f'{fa:.3f}'} of {full['false_alarms']}, "
                     f"majority {r['majority'][0]['diag']['accuracy'] or 0:.3f}, plain tree "
                     f"{r['plain tree'][0]['diag']['accuracy'] or 0:.3f}")
    return f"  {label}: " + "; ".join(parts)


def report(worlds_seeds_det: list[tuple[int, tuple]], worlds_seeds_diag: list[tuple[int, tuple]]
           ) -> tuple[dict, dict]:
    """Prints a line per seed and pooled; returns ({(world, seeds): pooled detection},
    {(world, seeds): pooled diagnosis})."""
    dets, diags = {}, {}
    with tempfile.TemporaryDirectory(prefix="ftml-stems-") as tmp:
        work = Path(tmp)
        for world, seeds in worlds_seeds_det:
            t = time.perf_counter()
            det = detection(work / f"det{world}", world, seeds)
            pooled = {name: {k: None for k in det[seeds[0]][name]} for name in CONFIGS}
            for seed in seeds:
                print(_det_line(f"detection world {world} seed {seed}", det[seed]), flush=True)
                for name in CONFIGS:
                    for k, c in det[seed][name].items():
                        pooled[name][k] = c if pooled[name][k] is None else pooled[name][k].add(c)
            for name in CONFIGS:
                fl = [det[sd][name]["ftml"].flagged for sd in seeds]
                pooled[name]["ftml"].flagged = (sum(h for h, _ in fl), sum(x for _, x in fl))
            print(_det_line(f"detection world {world} seeds {seeds} pooled", pooled),
                  f"({time.perf_counter() - t:.0f} s)", flush=True)
            dets[(world, seeds)] = pooled
        for world, seeds in worlds_seeds_diag:
            t = time.perf_counter()
            diag = diagnosis(work / f"diag{world}", world, seeds)
            print(_diag_line(f"diagnosis world {world} seeds {seeds} pooled", diag),
                  f"({time.perf_counter() - t:.0f} s)", flush=True)
            diags[(world, seeds)] = diag
    return dets, diags


TITLE = "Stem baselines (renamed pods): worlds 3-4 held out, on and off"


def run(quick: bool = False) -> list[dict]:
    """The held-out report of the protocol amendment (worlds 3-4), as rows: ftml with stem
    baselines (the default) against the same without, beside robust z, ECOD, IForest (each on
    the same windows, so they change too), the plain tree and the majority answer."""
    from bench import bench_diagnosis as bd
    from bench import bench_generalization as bg
    from bench.common import row

    worlds = (3,) if quick else bg.WORLD_PARTS["held-out"]
    det_seeds = bg.WORLD_SEEDS[:1] if quick else bg.WORLD_SEEDS
    dets, diags = report([(w, det_seeds) for w in worlds],
                         [] if quick else [(w, bd.WORLD_SEEDS) for w in bd.WORLDS2])
    rows = []
    for (world, seeds), per in dets.items():
        on, off = per["on"], per["off"]
        for name, c in (("on", on), ("off", off)):
            f = c["ftml"]
            hours, span = f.flagged
            rows.append(row(
                f"world {world} seeds {seeds[0]}-{seeds[-1]}: detection, stems {name}",
                round(f.f1, 3), round(off["ftml"].f1, 3) if name == "on" else None,
                vs="stems off" if name == "on" else None, recall=f.recall,
                precision=f.precision, fa_judged=f.fa_judged, auc_pr=f.auc,
                flagged_share=hours / span if span else None,
                **{bg.LABELS[k]: round(c[k].f1, 3) for k in ("robust_z", "ecod", "iforest")}))
    for (world, seeds), per in diags.items():
        for name in CONFIGS:
            r = per[name]
            full = r["full"][0]
            rows.append(row(
                f"world {world} seeds {seeds[0]}-{seeds[-1]}: diagnosis accuracy (detected, "
                f"n={full['diag']['n']}), stems {name}", full["diag"]["accuracy"],
                r["majority"][0]["diag"]["accuracy"], vs="majority",
                plain_tree=r["plain tree"][0]["diag"]["accuracy"],
                false_alarms_named=full["fa_named"], false_alarms=full["false_alarms"]))
    return rows


def unseen() -> None:
    """Every other set of both benches: how many test entities were not in training, and how
    many of those have a trained stem (they alone can score differently on and off)."""
    from bench import bench_generalization as bg
    from bench import datasets
    from bench.common import data_dir
    from ftml.config import Config
    from ftml.io import entity_stem, map_entities

    root = data_dir()

    def names(frame, cfg):
        col = cfg.read.entity_col or "entity"
        s = frame[col].astype("string") if col in frame else frame["entity"].astype("string")
        return set(map(str, map_entities(s, cfg.read.entity_map)))

    def line(label, splits):
        tot = stem = 0
        for sp in splits:
            cfg = Config.from_dict(sp.config) if sp.config else Config()
            tr, te = names(sp.train, cfg), names(sp.test, cfg)
            new = te - tr
            trained = {entity_stem(n) for n in tr}
            tot += len(new)
            stem += sum(entity_stem(n) in trained for n in new)
        print(f"  {label}: {tot} test entities not in training, {stem} of them with a "
              "trained stem", flush=True)

    with tempfile.TemporaryDirectory(prefix="ftml-stems-") as tmp:
        work = Path(tmp)
        for name, parts in bg._parts(root, work, quick=False):
            for part, make in parts.items():
                line(f"generalization {name} {part}", make())
        import bench.bench_diagnosis as bd
        for seeds in (bd.SEEDS, bd.SELECTION_SEEDS, bd.SELECTION2_SEEDS):
            line(f"diagnosis sim seeds {seeds}",
                 [datasets.simulated(work, s) for s in seeds])
        if (root / "nezha").is_dir():
            import dataclasses

            sp = datasets.nezha(root)
            line("diagnosis Nezha OB 08-22->08-23", [sp])
            line("diagnosis Nezha OB 08-23->08-22",
                 [dataclasses.replace(sp, train=sp.test, test=sp.train)])
        if (root / "petshop").is_dir():
            line("diagnosis PetShop", datasets.petshop(root))


def nezha() -> None:
    """Nezha OB both directions (its pods are renamed between the two days), on and off:
    detection as bench generalization, diagnosis as bench diagnosis."""
    import dataclasses

    from bench import bench_diagnosis as bd
    from bench import datasets
    from bench.common import data_dir
    from ftml.config import Config

    root = data_dir()
    sp = datasets.nezha(root)
    rev = dataclasses.replace(sp, train=sp.test, test=sp.train,
                              train_incidents=sp.test_incidents, test_incidents=sp.train_incidents)
    with tempfile.TemporaryDirectory(prefix="ftml-stems-") as tmp:
        work = Path(tmp)
        for label, split in (("08-22->08-23", sp), ("08-23->08-22", rev)):
            split = dataclasses.replace(split, name=f"nezha {label}")
            print(_det_line(f"detection Nezha OB {label}", detect_split(work / "det", split)),
                  flush=True)
            diag = {}
            for name, extra in CONFIGS.items():
                cfg = Config.from_dict(extra)
                s = bd.prepare(f"{name} nezha {label}", split.train, split.train_incidents,
                               split.test, split.test_incidents, cfg, work / "diag")
                full = bd.fit_variant(s.training, s.model.config, "full")
                diag[name] = {"full": (bd.judge(s, full), None, 0),
                              "plain tree": (bd.judge(s, bd.plain_tree(s.training)), 0.0, 0),
                              "majority": (bd.judge(s, bd.majority(s.training)), 0.0, 0)}
            print(_diag_line(f"diagnosis Nezha OB {label}", diag), flush=True)


def main(argv: list[str]) -> None:
    what = argv[0] if argv else "selection"
    if what == "selection":
        report([(3, SELECTION_SEEDS)], [(3, SELECTION_SEEDS)])
    elif what == "held-out":
        run()
    elif what == "unseen":
        unseen()
    elif what == "nezha":
        nezha()
    else:
        raise SystemExit(f"unknown: {what} (selection, held-out or unseen)")


if __name__ == "__main__":
    main(sys.argv[1:])
