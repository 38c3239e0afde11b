"""Load for the live lab: steady requests to each service instance until stopped.

    python loadgen.py --rate 25 --threads 4 [--swing 0.3 --period 40] [--out FILE] URL [URL ...]

Per target, ``--threads`` threads share ``--rate`` requests per second (closed loop: a slow
service gets fewer requests, as with real clients that wait for answers). The rate swings by
``--swing`` (a fraction) around ``--rate`` over ``--period`` seconds, each target in its own
phase: real traffic is never flat, and a history of perfectly flat figures would make every
later wobble look new. Refused connections
(an instance restarting) are retried after a short pause. Every ``--report`` seconds one JSON
line of client-side figures per target is appended to ``--out`` (default stdout); SIGTERM
ends it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import random
import signal
import sys
import threading
import time
import urllib.parse


class Target:
    def __init__(self, url: str):
        parts = urllib.parse.urlsplit(url)
        self.url = url
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.lock = threading.Lock()
        self.ok = self.failed = self.refused = 0

    def count(self, field: str) -> None:
        with self.lock:
            setattr(self, field, getattr(self, field) + 1)

    def take(self) -> dict:
        with self.lock:
            out = {"target": self.url, "ok": self.ok, "failed": self.failed,
                   "refused": self.refused}
            self.ok = self.failed = self.refused = 0
        return out


def worker(target: Target, rate, stop: threading.Event, seed: int) -> None:
    """``rate()``: this thread's requests per second now."""
    rng = random.Random(seed)
    next_at = time.monotonic() + rng.uniform(0, 1.0 / rate())  # threads out of phase
    while not stop.wait(max(0.0, next_at - time.monotonic())):
        interval = 1.0 / rate()
        next_at += interval
        conn = http.client.HTTPConnection(target.host, target.port, timeout=3.0)
        try:
            conn.request("GET", f"/api/item?id={rng.randrange(100_000)}")
            resp = conn.getresponse()
            resp.read()
            target.count("ok" if resp.status < 500 else "failed")
        except ConnectionRefusedError:
            target.count("refused")
            stop.wait(0.05)
        except (OSError, http.client.HTTPException):
            target.count("failed")
        finally:
            conn.close()
        now = time.monotonic()
        if next_at < now - interval:  # fell behind (a slow answer): do not burst to catch up
            next_at = now


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("targets", nargs="+", help="base URLs")
    p.add_argument("--rate", type=float, default=25.0, help="requests/s per target")
    p.add_argument("--threads", type=int, default=4, help="threads per target")
    p.add_argument("--report", type=float, default=5.0, help="seconds between reports")
    p.add_argument("--out", help="append reports to this file (default stdout)")
    p.add_argument("--swing", type=float, default=0.0, help="rate swing, a fraction")
    p.add_argument("--period", type=float, default=60.0, help="seconds per swing")
    args = p.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    targets = [Target(u) for u in args.targets]
    threads = []
    start = time.monotonic()

    def rate_of(ti: int):
        phase = 2 * math.pi * ti / len(targets)
        return lambda: args.rate / args.threads * (1 + args.swing * math.sin(
            2 * math.pi * (time.monotonic() - start) / args.period + phase))

    for ti, target in enumerate(targets):
        for k in range(args.threads):
            t = threading.Thread(target=worker, args=(target, rate_of(ti), stop,
                                                      ti * 1000 + k), daemon=True)
            t.start()
            threads.append(t)
    out = open(args.out, "a") if args.out else sys.stdout  # noqa: SIM115
    while not stop.wait(args.report):
        for target in targets:
            print(json.dumps({"time": round(time.time(), 3), **target.take()}), file=out,
                  flush=True)
    for t in threads:
        t.join(timeout=4.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
