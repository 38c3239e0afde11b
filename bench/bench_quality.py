"""Quality on simulated fleets, measured as `make demo` does: train on 14 days, then judge the
next 7 days of the same fleet simulated with another seed (faults and noise never seen in
training), through ``api.train`` / ``api.score`` / ``ftml.evaluate``, default settings.

Two fleets: 8 entities, and the competitor-comparable fleet of 24 services at 1-minute steps
(train + score time reported; target under a minute). Targets: event recall >= 0.9, event
precision >= 0.8, diagnosis accuracy >= 0.9, false alarms <= 0.2 per entity-day. ``anchor``:
Merlion's DefaultDetector on a 24-service, 14-day fleet (event F1 0.87 at 0.14 false alarms per
entity-day in 13 minutes; its data and split are not ours, so the comparison is indicative).
``random`` and ``robust_z``: the baselines through the same pipeline. The 24-entity fleet is
run for two seeds (0 and 1). Caution: the drift-level window and the alarm budget were chosen
looking at these fleets (8 entities seeds 0-2, 24 entities seeds 0-1), so these are not
held-out figures; thresholds themselves come from training data only. The held-out figures:
means over seeds 10-14 of both fleets (and the worst seed), on which nothing was chosen.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import row

TITLE = "Quality on simulated fleets"
START = pd.Timestamp("2026-01-05T00:00:00Z")
TRAIN_DAYS, TEST_DAYS = 14, 7
SEED = 0
#: Seeds no setting was chosen on (the level and the alarm budget were chosen on seeds 0-2,
#: the level variant on seeds 5-9): the honest figures.
HELD_OUT = (10, 11, 12, 13, 14)
#: (target text, check) per figure.
TARGETS = {
    "event_recall": (">= 0.9", lambda x: x >= 0.9),
    "event_precision": (">= 0.8", lambda x: x >= 0.8),
    "false_alarms_per_entity_day": ("<= 0.2", lambda x: x <= 0.2),
    "diagnosis_accuracy": (">= 0.9", lambda x: x >= 0.9),
    "seconds": ("< 60", lambda x: x < 60),
}
MERLION = {"event_f1": 0.87, "false_alarms_per_entity_day": 0.14, "seconds": 13 * 60}


def _target(key: str, value) -> dict:
    if key not in TARGETS:
        return {}
    text, ok = TARGETS[key]
    return {"target": text, "ok": bool(ok(value)) if value is not None else None}


def _judge(entities: int, work: Path, seed: int, baselines: bool
           ) -> tuple[dict, float, float, float]:
    """Simulate train and test, train, score, evaluate: (report, and the times before
    training, after training, after scoring)."""
    from ftml import api
    from ftml.evaluate import evaluate
    from ftml.simulate import write_simulation

    train, test = work / f"train{entities}s{seed}", work / f"test{entities}s{seed}"
    write_simulation(train, entities=entities, days=TRAIN_DAYS, seed=seed, start=str(START),
                     format="parquet")
    write_simulation(test, entities=entities, days=TEST_DAYS, seed=seed + 1000,
                     fleet_seed=seed, start=str(START + pd.Timedelta(days=TRAIN_DAYS)),
                     format="parquet")
    model = work / f"model{entities}s{seed}"
    t0 = time.perf_counter()
    api.train([train / "metrics.parquet"], model, incidents=train / "incidents.csv")
    t1 = time.perf_counter()
    api.score(model, [test / "metrics.parquet"])
    t2 = time.perf_counter()
    ev = evaluate(model, [test / "metrics.parquet"], test / "incidents.csv",
                  baselines=baselines, calibration_metrics=[train / "metrics.parquet"],
                  calibration_incidents=train / "incidents.csv")
    return ev.report, t0, t1, t2


def held_out(entities: int, work: Path, seeds=HELD_OUT) -> list[dict]:
    """Means (and the worst seed) over seeds chosen for nothing: no setting was looked at on
    them."""
    keys = ("event_recall", "event_precision", "event_f1", "false_alarms_per_entity_day")
    per = {k: [] for k in (*keys, "diagnosis_accuracy")}
    for seed in seeds:
        r, *_ = _judge(entities, work, seed, baselines=False)
        for k in keys:
            per[k].append(r["detection"][k])
        per["diagnosis_accuracy"].append(r["diagnosis"]["detected_events"]["accuracy"])
    label = f"sim {entities} entities, held-out seeds {seeds[0]}-{seeds[-1]}"
    rows = []
    for key, values in per.items():
        mean = float(np.mean(values))
        worst = float(np.min(values) if key != "false_alarms_per_entity_day"
                      else np.max(values))
        rows.append(row(f"{label}: {key.replace('_', ' ')}, mean", round(mean, 3),
                        unit="per entity-day" if key.startswith("false") else "",
                        detail=f"worst seed {worst:.3f}", **_target(key, mean)))
    return rows


def fleet(entities: int, work: Path, seed: int = SEED, compare_merlion: bool = False
          ) -> list[dict]:
    label = f"sim {entities} entities" + (f" (seed {seed})" if seed != SEED else "")
    r, t0, t1, t2 = _judge(entities, work, seed, baselines=True)
    det, base = r["detection"], r["baselines"]
    merlion = MERLION if compare_merlion else {}
    rows = []
    for key, name, unit in (("event_recall", "event recall", ""),
                            ("event_precision", "event precision", ""),
                            ("event_f1", "event F1", ""),
                            ("false_alarms_per_entity_day", "false alarms", "per entity-day"),
                            ("auc_pr", "AUC-PR (windows)", ""),
                            ("delay_minutes_median", "detection delay median", "min")):
        rows.append(row(f"{label}: {name}", det[key], merlion.get(key), unit,
                        vs="Merlion" if key in merlion else None,
                        random=base["random"]["detection"][key],
                        robust_z=base["robust_z"]["detection"][key], **_target(key, det[key])))
    de, iw = r["diagnosis"]["detected_events"], r["diagnosis"]["incident_windows"]
    rows.append(row(f"{label}: diagnosis accuracy (detected events, n={de['n']})",
                    de["accuracy"], random=base["random"]["diagnosis"]["accuracy"],
                    robust_z=base["robust_z"]["diagnosis"]["accuracy"],
                    **_target("diagnosis_accuracy", de["accuracy"])))
    rows.append(row(f"{label}: diagnosis accuracy (incident windows, n={iw['n']})",
                    iw["accuracy"], **_target("diagnosis_accuracy", iw["accuracy"])))
    rows.append(row(f"{label}: diagnosis macro-F1 (incident windows)", iw["macro_f1"]))
    seconds = round(t2 - t0, 1)
    rows.append(row(f"{label}: train {TRAIN_DAYS} d + score {TEST_DAYS} d", seconds,
                    merlion.get("seconds"), "s", vs="Merlion" if merlion else None,
                    detail=f"train {t1 - t0:.1f} s, score {t2 - t1:.1f} s",
                    **(_target("seconds", seconds) if compare_merlion else {})))
    return rows


def run(quick: bool = False) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="ftml-quality-") as tmp:
        rows = fleet(8, Path(tmp))
        if not quick:
            rows += fleet(24, Path(tmp), compare_merlion=True)
            # Another draw of the same kind of fleet: a figure must not hold for one seed only.
            rows += fleet(24, Path(tmp), seed=1, compare_merlion=True)
            for entities in (8, 24):
                rows += held_out(entities, Path(tmp))
    return rows
