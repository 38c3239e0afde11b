"""Chaos run over the live lab: train on the services' own history, then inject faults under
``ftml watch --mode auto`` and report detection, diagnosis, recovery and MTTR.

    python -m examples.live.chaos                 # make chaos: 12 faults, 1 s steps
    python -m examples.live.chaos --faults 4 --step 0.5 --keep   # quicker; keep the run folder

With ``--cascade``, after the faults, a cascade: a fault in a service that another one calls
(over loopback), so that both alert; ftml must act on the callee only, and the caller recover
with it (counted apart; ``--cascade-only`` runs it alone, after the history and training, with
no other fault). It turns on the incident hold (``watch.group_wait: auto``), which is off by
default: see docs/chaos.md. Then benign disturbances (a deploy's restart, a traffic burst)
are injected the same way: an alert on them is allowed, an action is a wrong action
(``--benign none`` skips them).

Prints one line per fault, the figures (detection rate, diagnosis accuracy, recovery success,
MTTR median and max, wrong and repeated actions, false alarms), the goals met or missed, and
the audit trail. Exit code 0 when every goal is met, 1 when one is missed, 2 on a failure of
the lab itself. Everything started is stopped before it exits, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from examples.live.lab import (
    BENIGN,
    KINDS,
    Lab,
    LabError,
    Settings,
    goals_met,
    report,
    results_table,
    summarize,
)
from ftml.incidents import JOINS


def run(settings: Settings, faults: int, root: str | Path, log=None,
        trail: bool = True) -> dict[str, Any]:
    """The whole experiment in ``root``; returns results, summary, report text and timings."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    with Lab(root, settings, log=log) as lab:
        timings["start_s"] = time.monotonic() - started
        t = time.monotonic()
        history = lab.collect_history()
        timings["history_s"] = time.monotonic() - t
        t = time.monotonic()
        model = lab.train()
        timings["train_s"] = time.monotonic() - t
        t = time.monotonic()
        lab.start_watch()
        timings["watch_start_s"] = time.monotonic() - t
        t = time.monotonic()
        results = lab.run_chaos(faults)
        timings["chaos_s"] = time.monotonic() - t
        summary = summarize(lab, results)
        text = report(lab, results, summary, trail=trail)
        timings["total_s"] = time.monotonic() - started
        (lab.root / "results.json").write_text(json.dumps(
            {"summary": summary, "timings": timings, "model": model,
             "results": results_table(results)}, indent=1, default=str))
        audit = lab.audit()
        pages = list(lab.pages)
        from ftml.playbooks import load_playbooks

        playbooks = [{"name": pb.name, "cause": pb.cause, "entity": pb.entity,
                      "steps": [st.name for st in pb.steps]}
                     for pb in load_playbooks(lab.root / "playbooks.yaml").playbooks]
        alerts = list(lab.alerts)
    left = lab.processes()
    timings["total_s"] = time.monotonic() - started
    return {"results": results, "summary": summary, "report": text, "history": history,
            "model": model, "timings": timings, "audit": audit, "pages": pages,
            "alerts": alerts, "benign": list(lab.benign), "playbooks": playbooks,
            "cascade": lab.cascade,
            "left_running": left,
            "goals": goals_met(summary)}


def _group_wait(p: argparse.ArgumentParser, text: str | None) -> int | str | None:
    if text is None or text == "auto":
        return text
    if not text.isdigit():
        p.error(f"--group-wait {text!r}: a whole number of steps or 'auto'")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.live.chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faults", type=int, default=12, help="faults to inject (default 12)")
    p.add_argument("--step", type=float, default=1.0, help="seconds per step (default 1)")
    p.add_argument("--services", type=int, default=4, help="service instances (default 4)")
    p.add_argument("--train-per-kind", type=int, default=3,
                   help="labelled faults of each kind in the training history (default 3)")
    p.add_argument("--kinds", default=",".join(KINDS), help="fault kinds, comma-separated")
    p.add_argument("--benign", default=",".join(BENIGN),
                   help="benign disturbances after the faults, comma-separated, or 'none' "
                        f"(default {','.join(BENIGN)}): an alert at most, never an action")
    p.add_argument("--cascade", action="store_true",
                   help="add the cascade (a fault in a callee that a caller waits on)")
    p.add_argument("--cascade-only", action="store_true",
                   help="only the cascade: no other fault, no benign disturbance")
    p.add_argument("--cascade-kind", default="latency",
                   help="the fault injected in the callee (default latency)")
    p.add_argument("--group-wait", default=None,
                   help="watch.group_wait, the incident hold: steps or 'auto' (default: the "
                        "watcher's, auto)")
    p.add_argument("--group-join", default=None, choices=JOINS,
                   help="diagnose.group_join of the lab's model (default: the library's, onset)")
    p.add_argument("--dir", type=Path, help="run folder (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the run folder")
    p.add_argument("--json", type=Path, help="write results and summary as JSON here")
    p.add_argument("--no-trail", action="store_true", help="leave out the audit trail")
    args = p.parse_args(argv)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        p.error(f"unknown kinds {unknown}; known: {', '.join(KINDS)}")
    benign = tuple(k.strip() for k in args.benign.split(",") if k.strip() not in ("", "none"))
    unknown = [k for k in benign if k not in BENIGN]
    if unknown:
        p.error(f"unknown disturbances {unknown}; known: {', '.join(BENIGN)}")
    if args.cascade_kind not in kinds:
        p.error(f"--cascade-kind {args.cascade_kind} is not among --kinds: the model would "
                "not know it")
    faults = 0 if args.cascade_only else args.faults
    benign = () if args.cascade_only else benign
    settings = replace(Settings(), step=args.step, services=args.services, kinds=kinds,
                       train_per_kind=args.train_per_kind, benign=benign,
                       cascade=args.cascade or args.cascade_only,
                       cascade_kind=args.cascade_kind,
                       group_wait=_group_wait(p, args.group_wait), group_join=args.group_join)

    def terminate(signum, frame):  # run the lab's clean-up, as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    root = args.dir or Path(tempfile.mkdtemp(prefix="ftml-chaos-"))
    try:
        out = run(settings, faults, root, trail=not args.no_trail)
    except (LabError, OSError) as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("chaos: interrupted; everything started was stopped", file=sys.stderr)
        return 130
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(out["report"])
    tm = out["timings"]
    print(f"\nTook {tm['total_s']:.0f}s: history {tm['history_s']:.0f}s, training "
          f"{tm['train_s']:.1f}s, chaos {tm['chaos_s']:.0f}s"
          + (f"; run folder kept: {root}" if args.keep or args.dir else ""))
    if out["left_running"]:
        print(f"chaos: processes left running: {out['left_running']}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps({
            "summary": out["summary"], "timings": tm, "model": out["model"],
            "results": results_table(out["results"])}, indent=1, default=str))
    return 0 if all(ok for _, ok in out["goals"]) else 1


if __name__ == "__main__":
    sys.exit(main())
