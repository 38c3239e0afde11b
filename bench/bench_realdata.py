"""Real data: ftml trained and judged on public labelled sets, next to the baselines.

SMD (detection), NAB realAWSCloudwatch + realKnownCause (detection, univariate), Nezha Online
Boutique (train 2022-08-22, judge 2022-08-23: detection and diagnosis) and PetShop (diagnosis
of the fault class). Every split is in time order (or by case), thresholds come from training
data only, and everything goes through ftml's public API (``api.train``,
``ftml.evaluate.evaluate``) with default settings, except where a set forces a choice (noted).
Column ``anchor`` is the reference named in ``vs``: for detection the static robust z-score
threshold (through the same pipeline, calibrated to the same false-alarm budget), for diagnosis
always naming the most frequent training cause; ``random`` is a random score.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench import datasets
from bench.common import SkipBench, majority_accuracy, require_data, row, run_split

TITLE = "Real data (SMD, NAB, Nezha, PetShop)"
#: Machines used by --quick (SMD has 14; all of them take most of the time).
SMD_QUICK = ["machine-1-2", "machine-2-1", "machine-2-7"]
DETECTION = (
    ("event_recall", "event recall", ""),
    ("event_precision", "event precision", ""),
    ("event_f1", "event F1", ""),
    ("false_alarms_per_entity_day", "false alarms", "per entity-day"),
    ("auc_pr", "AUC-PR (windows)", ""),
    ("flagged_fraction", "share of test windows flagged", ""),
    ("delay_minutes_median", "detection delay median", "min"),
)


def _detection_rows(label: str, report: dict, keys=DETECTION) -> list[dict]:
    det, base = report["detection"], report["baselines"]
    out = []
    for key, name, unit in keys:
        out.append(row(f"{label}: {name}", det.get(key), base["robust_z"]["detection"].get(key),
                       unit, vs="robust z", random=base["random"]["detection"].get(key)))
    return out


def _pooled(reports: list[dict]) -> dict:
    """Event figures pooled over several evaluations (counts added up)."""
    def total(run: str, key: str) -> float:
        return sum((r["detection"] if run == "ftml" else r["baselines"][run]["detection"])[key]
                   for r in reports)

    out = {}
    for run in ("ftml", "random", "robust_z"):
        inc, found = total(run, "incidents"), total(run, "found")
        events, fa = total(run, "events"), total(run, "false_alarms")
        rec = found / inc if inc else None
        prec = (events - fa) / events if events else None
        f1 = 2 * prec * rec / (prec + rec) if rec is not None and prec and rec else 0.0
        out[run] = {"event_recall": rec, "event_precision": prec, "event_f1": f1,
                    "false_alarms_per_entity_day": fa / total(run, "entity_days")}
    return out


def _diagnosis_rows(label: str, outcome, split) -> list[dict]:
    ev = outcome.evaluation
    r = ev.report
    iw, de = r["diagnosis"]["incident_windows"], r["diagnosis"]["detected_events"]
    floor = majority_accuracy(split.train_incidents["cause"], split.test_incidents["cause"])
    base = r["baselines"]
    rows = [
        row(f"{label}: diagnosis accuracy (incident windows)", iw["accuracy"], floor,
            vs="majority class"),
        row(f"{label}: diagnosis macro-F1 (incident windows)", iw["macro_f1"]),
        row(f"{label}: diagnosis top-3 accuracy (incident windows)", iw["top3_accuracy"]),
        row(f"{label}: diagnosis abstained (incident windows)", iw["abstained"]),
    ]
    if split.task != "diagnosis":
        rows.append(row(f"{label}: diagnosis accuracy (detected events, n={de['n']})",
                        de["accuracy"], base["robust_z"]["diagnosis"]["accuracy"],
                        vs="robust z", random=base["random"]["diagnosis"]["accuracy"]))
    return rows


def _petshop_rows(label: str, outcome, split) -> list[dict]:
    """Diagnosis of each test issue from its own windows; classes never seen in training can
    only be abstained on (or got wrong)."""
    ev = outcome.evaluation
    seen = set(split.train_incidents["cause"])
    causes = ev.incidents["cause"].astype(str).tolist()
    pairs = [(c, d.cause) for c, d in zip(causes, ev.diagnosed, strict=True) if d is not None]
    known = [(c, p) for c, p in pairs if c in seen]
    unseen = [(c, p) for c, p in pairs if c not in seen]
    rows = _diagnosis_rows(label, outcome, split)
    rows.append(row(f"{label}: accuracy on classes seen in training (n={len(known)})",
                    sum(c == p for c, p in known) / len(known) if known else None,
                    majority_accuracy(split.train_incidents["cause"], [c for c, _ in known]),
                    vs="majority class"))
    rows.append(row(f"{label}: abstained on unseen classes (n={len(unseen)})",
                    sum(p == "unknown" for _, p in unseen) / len(unseen) if unseen else None))
    return rows


def run(quick: bool = False) -> list[dict]:
    root = require_data()
    rows: list[dict] = []
    timing: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ftml-bench-") as tmp:
        work = Path(tmp)

        def attempt(folder: str, fn):
            if not (root / folder).is_dir():
                print(f"  realdata: {folder} not in {root}, skipped", flush=True)
                return
            t = time.perf_counter()
            fn()
            timing.append(f"{folder} {time.perf_counter() - t:.0f} s")

        def smd():
            split = datasets.smd(root, SMD_QUICK if quick else None)
            out = run_split(split, work)
            label = f"SMD ({split.train['entity'].nunique()} machines)"
            rows.extend(_detection_rows(label, out.report))
            rows.append(row(f"{label}: train + evaluate time", out.train_seconds +
                            out.evaluate_seconds, unit="s"))

        def nab():
            reports = [run_split(s, work).report for s in datasets.nab(root)]
            pooled = _pooled(reports)
            n = sum(r["data"]["entities"] for r in reports)
            for key, name, unit in DETECTION[:4]:
                rows.append(row(f"NAB ({n} series): {name}", pooled["ftml"][key],
                                pooled["robust_z"][key], unit, vs="robust z",
                                random=pooled["random"][key]))

        def nezha():
            split = datasets.nezha(root)
            out = run_split(split, work)
            rows.extend(_detection_rows("Nezha OB", out.report))
            rows.extend(_diagnosis_rows("Nezha OB", out, split))

        def petshop():
            for split in datasets.petshop(root):
                out = run_split(split, work)
                rows.extend(_petshop_rows(split.name, out, split))

        attempt("smd", smd)
        attempt("nab", nab)
        attempt("nezha", nezha)
        attempt("petshop", petshop)
    if not rows:
        raise SkipBench(f"none of smd, nab, nezha, petshop found in {root}")
    print("  realdata: " + ", ".join(timing), flush=True)
    return rows
