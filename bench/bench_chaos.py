"""Fault tolerance on a real running service (``make chaos``; ``examples/live``).

Four instances of a small HTTP service run as their own processes under a steady load. A
model is trained on their own history (their latency, error and memory figures plus ftml's
``local`` source), with three labelled faults of each kind. Then ``ftml watch --mode auto``
runs over them as its own process and twelve faults are injected one at a time: memory leak
(-> restart), CPU hog (-> restart, else escalate), bad config (-> roll back to the last good
recovery point) and slow upstream (-> notify, page; the simulated on-call fixes it). Each is
timed from injection to detection, diagnosis, action and verified recovery, in wall-clock
seconds with 1 s steps. Goals: every fault detected, >= 90 % diagnosed right, >= 95 %
recovered and verified, median MTTR <= 3 min, no wrong or repeated action. ``anchor`` is the
goal. The machine is shared, so the figures include its noise. ``--quick``: 4 faults on a
shorter history and 0.5 s steps.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from bench.common import REPO, row

TITLE = "Live chaos: detection, diagnosis, recovery and MTTR on a real service"


def run(quick: bool = False) -> list[dict]:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from examples.live.chaos import run as chaos_run
    from examples.live.lab import Settings

    settings, faults = Settings(), 12
    if quick:
        settings = replace(settings, step=0.5, train_round=3, lead_steps=40, tail_steps=30,
                           hold_steps=8, gap_steps=6, min_windows=6, of_windows=8)
        faults = 4
    with tempfile.TemporaryDirectory(prefix="ftml-chaos-") as tmp:
        out = chaos_run(settings, faults, Path(tmp) / "lab",
                        log=lambda m: print("   " + m, flush=True), trail=False)
    print("\n".join("   " + line for line in out["report"].splitlines()), flush=True)
    if out["left_running"]:
        raise RuntimeError(f"processes left running: {out['left_running']}")
    s = out["summary"]
    t = out["timings"]
    detail = f"{s['faults']} faults, step {s['step_s']:g}s"
    return [
        row("detection rate", s["detection_rate"], 1.0, "fraction", detail=detail),
        row("diagnosis accuracy", s["diagnosis_accuracy"], 0.9, "fraction",
            detail=f"{s['diagnosed_right']}/{s['detected']} detected"),
        row("recovered and verified", s["recovery_rate"], 0.95, "fraction",
            detail=f"{s['recovered_without_human']} by ftml alone, latency paged by design"),
        row("MTTR median", s["mttr_median_s"], 180.0, "s", detail="injection -> verified"),
        row("MTTR max", s["mttr_max_s"], None, "s"),
        row("time to detect, median", s["ttd_median_s"], None, "s"),
        row("wrong actions", s["wrong_actions"], 0, "count"),
        row("repeated actions", s["repeated_actions"], 0, "count"),
        row("false alarms", s["false_alarms"], None, "count",
            detail="alerts with no fault on their instance"),
        row("run time", round(t["total_s"]), None, "s",
            detail=f"history {t['history_s']:.0f}s, chaos {t['chaos_s']:.0f}s"),
    ]


if __name__ == "__main__":
    from bench.common import fmt

    for r in run(quick="--quick" in sys.argv):
        print(f"{r['name']:<26} {fmt(r['ftml']):>8}  goal {fmt(r['anchor']):>6}  {r['unit']}")
