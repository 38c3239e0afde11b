"""`make demo`: simulate a fleet -> train -> score a later, unseen period -> summary.

The scored period is simulated with another seed, so neither its faults nor its noise were seen
in training; the summary compares the events with the simulator's labels.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ftml import api
from ftml.config import Config
from ftml.evaluate import entity_days_of, event_metrics
from ftml.io import read_incidents, read_metrics
from ftml.simulate import write_split_simulation


def run(out: Path, entities: int = 8, train_days: float = 14, test_days: float = 7,
        seed: int = 0, classifier: str = "tree", quiet: bool = False,
        config: Config | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    t0 = time.perf_counter()
    train_dir, test_dir, model_dir = out / "train", out / "test", out / "model"
    # The test period follows the training period on the same fleet, with its own seed:
    # faults and noise never seen in training.
    write_split_simulation(out, entities=entities, days=train_days, test_days=test_days,
                           seed=seed, start="2026-01-05T00:00:00Z")
    say(f"simulated {entities} entities: {train_days} days to train, {test_days} days to score "
        f"({time.perf_counter() - t0:.1f} s)")
    config = config or Config()
    config.diagnose.classifier = classifier
    t1 = time.perf_counter()
    trained = api.train([train_dir / "metrics.csv"], model_dir,
                        incidents=train_dir / "incidents.csv", config=config, quiet=True)
    cal = trained.manifest["calibration"]
    say(f"trained model {trained.manifest['model_version']} in {time.perf_counter() - t1:.1f} s: "
        f"threshold {cal['threshold']:.3f}, causes {', '.join(trained.manifest['causes'])}")
    t2 = time.perf_counter()
    playbooks = Path(__file__).resolve().parent.parent / "playbooks.example.yaml"
    result = api.score(model_dir, [test_dir / "metrics.csv"], out=out / "events.jsonl",
                       playbooks=playbooks if playbooks.exists() else None)
    say(f"scored {result.windows} windows in {time.perf_counter() - t2:.1f} s "
        f"-> {out / 'events.jsonl'}")
    data = read_metrics([test_dir / "metrics.csv"])
    incidents = read_incidents(test_dir / "incidents.csv", data.entities)
    m = event_metrics(result.events, incidents, entity_days_of(data.frame, data.step))
    say("")
    say(summary_table(m))
    say(f"\ntotal {time.perf_counter() - t0:.1f} s")
    return m


def summary_table(m: dict) -> str:
    lines = [f"{'cause':22s} {'incidents':>9s} {'found':>6s} {'diagnosed right':>16s}"]
    for cause, s in sorted(m["per_cause"].items()):
        lines.append(f"{cause:22s} {s['incidents']:9d} {s['found']:6d} {s['right']:16d}")
    lines += [
        "",
        f"event recall     {m['event_recall']:.3f}  ({m['found']}/{m['incidents']} incidents)",
        f"event precision  {m['event_precision']:.3f}  ({m['events']} events)",
        f"event F1         {m['event_f1']:.3f}",
        f"false alarms     {m['false_alarms_per_entity_day']:.3f} per entity-day "
        f"({m['false_alarms']} in {m['entity_days']:.1f} entity-days)",
        f"detection delay  median {m['delay_minutes_median']:.1f} min, "
        f"p90 {m['delay_minutes_p90']:.1f} min",
        f"diagnosis        accuracy {m['diagnosis_accuracy']:.3f} on found incidents, "
        f"abstained {m['diagnosis_abstained']:.3f}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="out/demo", type=Path)
    p.add_argument("--entities", type=int, default=8)
    p.add_argument("--train-days", type=float, default=14)
    p.add_argument("--test-days", type=float, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classifier", default="tree", choices=["tree", "svm", "forest"])
    args = p.parse_args(argv)
    run(args.out, args.entities, args.train_days, args.test_days, args.seed, args.classifier)
    return 0


if __name__ == "__main__":
    sys.exit(main())
