"""A small real web service with a fault switch, for the live chaos lab.

    python service.py SPEC.json

``SPEC.json`` (written by :mod:`examples.live.lab`) names the instance, its port, its config
file, where it writes its metrics and its pid. Standard library only, so that it starts in a
fraction of a second and shares nothing with the watcher but the files it writes.

What it serves (127.0.0.1 only):

* ``GET /api/item?id=N``: the work. 30 % of requests are cache hits; the others call a
  (simulated) upstream named in the config, a few milliseconds away (lognormal), busy for 3 %
  of them (a 503: real services always have a few errors); or, when the config has an
  ``upstream_url``, that real service (another instance: the lab's cascade), whose failure
  is then a 502 here.
* ``GET /healthz``: ``{"ok": true, "pid": ...}`` once it serves.
* ``GET /stats``: the figures of the last step (below), the pid, the fault and the config.
* ``POST /fault`` ``{"kind": K}``: the fault switch. ``memory_leak`` (the process keeps
  allocating), ``cpu_hog`` (a thread spins), ``latency`` (the upstream becomes slow), ``none``
  (clears latency). The fourth fault, ``bad_config``, is not a switch: it is a bad config file
  (an upstream that does not exist), which the service loads like any other change.

The config file is reloaded when it changes (checked every 100 ms) and on SIGHUP; a file that
does not parse is refused and the old config kept, as a careful service does. A config that
parses but is wrong is what makes the error burst.

Every step (``step`` seconds, aligned to the clock) the service appends one JSON line in ftml's
metric contract to its metrics file: ``timestamp`` (the end of the step), ``entity``,
``latency_p50_ms``, ``latency_p95_ms``, ``error_rate``, ``request_rate`` (over the requests of the last
``stats_window`` seconds, 2 by default: as a dashboard's rate over a short range, so that a
p95 of a dozen requests does not jump at every hiccup of a busy host) and ``rss_mb`` (now).
The file is opened and closed for every line, so it can be rotated under the service, and a
restart continues it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

#: Upstreams that exist; a config naming another one makes every upstream call fail.
UPSTREAMS = ("inventory", "inventory-eu")
FAULTS = ("memory_leak", "cpu_hog", "latency", "none")
PAGE = os.sysconf("SC_PAGE_SIZE")


class State:
    """Everything the handlers and the background threads share."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.name = spec["name"]
        self.entity = spec["entity"]
        self.step = float(spec["step"])
        self.config_path = Path(spec["config"])
        self.metrics_path = Path(spec["metrics"])
        self.lock = threading.Lock()
        # (step end, latency ms, ok) of the requests of the last `stats_window` seconds
        self.samples: list[tuple[float, float, bool]] = []
        self.stats_window = max(float(spec.get("stats_window", 2.0)), self.step)
        self.config: dict = {}
        self.config_stamp: tuple | None = None
        self.latency_fault = False
        self.hog: threading.Thread | None = None
        self.leak: threading.Thread | None = None
        self.leaked: list[list[dict]] = []
        self.last: dict = {}
        self.stop = threading.Event()
        self.rng = random.Random()
        self.started = time.time()

    # -- config ----------------------------------------------------------------------

    def reload(self, force: bool = False) -> None:
        try:
            st = self.config_path.stat()
        except FileNotFoundError:
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self.config_stamp and not force:
            return
        self.config_stamp = stamp
        try:
            config = json.loads(self.config_path.read_text())
            if not isinstance(config, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            log(f"{self.name}: config refused ({exc}); keeping version "
                f"{self.config.get('version')}")
            return
        self.config = config
        log(f"{self.name}: config version {config.get('version')} loaded "
            f"(upstream {config.get('upstream')})")

    # -- faults ----------------------------------------------------------------------

    def set_fault(self, kind: str) -> None:
        if kind == "latency":
            self.latency_fault = True
        elif kind == "none":
            self.latency_fault = False
        elif kind == "cpu_hog" and self.hog is None:
            self.hog = threading.Thread(target=self._spin, name="hog", daemon=True)
            self.hog.start()
        elif kind == "memory_leak" and self.leak is None:
            self.leak = threading.Thread(target=self._grow, name="leak", daemon=True)
            self.leak.start()
        log(f"{self.name}: fault {kind}")

    def fault(self) -> str:
        kinds = [k for k, on in (("memory_leak", self.leak), ("cpu_hog", self.hog),
                                 ("latency", self.latency_fault)) if on]
        return ",".join(kinds) or "none"

    def _spin(self) -> None:
        x = 0
        while not self.stop.is_set():
            for i in range(20_000):  # pure Python: holds a core (and the GIL, in turns)
                x ^= i * i
        del x

    def _grow(self) -> None:
        """The classic Python leak: a record of every "request" kept in a list that nobody
        empties. Objects, not one big buffer: the garbage collector walks them all, so the
        process also spends more and more CPU on them, as a real leak does."""
        rate = float(self.spec.get("leak_records_per_s", 40_000))
        cap = int(self.spec.get("leak_cap_records", 1_500_000))
        tick = 0.1
        per_tick = int(rate * tick)
        n = 0
        while not self.stop.wait(tick) and n < cap:
            self.leaked.append([{"id": n + i, "path": "/api/item", "query": f"id={n + i}",
                                 "tags": [n, i]} for i in range(per_tick)])
            n += per_tick

    # -- requests --------------------------------------------------------------------

    def item(self, item_id: int) -> tuple[int, dict]:
        cfg = self.config
        body = {"id": item_id}
        if self.rng.random() < float(cfg.get("cache_ratio", 0.3)):
            body["cached"] = True
        elif cfg.get("upstream_url"):
            # The upstream is another instance of this service (the lab's cascade): its
            # answer, slow or failed, is ours.
            try:
                with urllib.request.urlopen(f"{cfg['upstream_url']}?id={item_id}",
                                            timeout=2.0) as resp:
                    resp.read()
            except urllib.error.HTTPError as exc:
                return 502, {"error": f"upstream answered {exc.code}"}
            except OSError as exc:
                return 502, {"error": f"upstream unreachable: {exc}"}
        else:
            if cfg.get("upstream") not in UPSTREAMS:
                return 502, {"error": f"upstream {cfg.get('upstream')!r} unreachable"}
            if self.rng.random() < float(cfg.get("busy_ratio", 0.03)):
                return 503, {"error": "upstream busy"}
            # A real dependency's latency is a distribution, not a constant (lognormal).
            delay = float(cfg.get("upstream_ms", 4)) * self.rng.lognormvariate(0.0, 0.5) / 1000
            if self.latency_fault:
                delay += self.rng.uniform(0.25, 0.45)
            time.sleep(delay)
        body["digest"] = hashlib.sha256(str(item_id).encode() * 256).hexdigest()[:16]
        return 200, body

    def record(self, latency_ms: float, ok: bool) -> None:
        with self.lock:
            self.samples.append((time.time(), latency_ms, ok))

    # -- metrics ---------------------------------------------------------------------

    def write_metrics(self) -> None:
        """One line per step, at the step's end (aligned to the clock)."""
        step = self.step
        while True:
            boundary = (math.floor(time.time() / step) + 1) * step
            if self.stop.wait(max(0.0, boundary - time.time())):
                return
            since = boundary - self.stats_window
            with self.lock:
                self.samples = [x for x in self.samples if x[0] > since]
                samples = [x for x in self.samples if x[0] <= boundary]
            # A service younger than the range divides by its age, not by the whole range.
            span = min(self.stats_window, max(step, boundary - self.started))
            n = len(samples)
            lat = sorted(x[1] for x in samples)
            row = {
                "timestamp": round(boundary, 3),
                "entity": self.entity,
                "latency_p50_ms": round(lat[max(0, math.ceil(0.50 * n) - 1)], 2) if n else None,
                "latency_p95_ms": round(lat[max(0, math.ceil(0.95 * n) - 1)], 2) if n else None,
                "error_rate": round(sum(not x[2] for x in samples) / n, 4) if n else None,
                "request_rate": round(n / span, 2),
                "rss_mb": round(rss_mb(), 2),
            }
            self.last = row
            line = json.dumps(row) + "\n"
            # One write of a whole line to a file opened for appending: a reader never sees
            # half a line from us, and a rotated file is simply created again.
            fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)

    def watch_config(self) -> None:
        while not self.stop.wait(0.1):
            self.reload()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / (1 << 20)


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def make_handler(state: State):
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: dict) -> None:
            data = (json.dumps(body) + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 - http.server's name
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/api/item":
                started = time.perf_counter()
                query = urllib.parse.parse_qs(url.query)
                try:
                    code, body = state.item(int(query.get("id", ["0"])[0]))
                except ValueError:
                    code, body = 400, {"error": "id must be a number"}
                self._reply(code, body)
                state.record((time.perf_counter() - started) * 1000.0, code < 500)
            elif url.path == "/healthz":
                self._reply(200, {"ok": True, "pid": os.getpid(), "name": state.name,
                                  "config_version": state.config.get("version")})
            elif url.path == "/stats":
                self._reply(200, {**state.last, "pid": os.getpid(), "fault": state.fault(),
                                  "config": state.config})
            else:
                self._reply(404, {"error": "not found"})

        def do_POST(self):  # noqa: N802
            if self.path != "/fault":
                self._reply(404, {"error": "not found"})
                return
            try:
                n = int(self.headers.get("Content-Length") or 0)
                kind = json.loads(self.rfile.read(n) or b"{}").get("kind")
            except (ValueError, AttributeError):
                kind = None
            if kind not in FAULTS:
                self._reply(400, {"error": f"kind must be one of {', '.join(FAULTS)}"})
                return
            state.set_fault(kind)
            self._reply(200, {"fault": state.fault()})

        def log_message(self, *args):  # one line per request would drown the log
            pass

    return Handler


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: service.py SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    state = State(spec)
    state.reload(force=True)
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer(("127.0.0.1", int(spec["port"])), make_handler(state))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGHUP, lambda *_: state.reload(force=True))
    for target in (server.serve_forever, state.write_metrics, state.watch_config):
        threading.Thread(target=target, daemon=True).start()
    pidfile = Path(spec["pidfile"])
    tmp = pidfile.with_name(f".{pidfile.name}.{os.getpid()}")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, pidfile)  # after bind: a pid in the file means the port is ours
    log(f"{state.name}: pid {os.getpid()} serving on 127.0.0.1:{spec['port']}")
    while not done.wait(0.5):
        pass
    state.stop.set()
    server.shutdown()
    server.server_close()
    try:
        if pidfile.read_text().strip() == str(os.getpid()):
            pidfile.unlink()
    except FileNotFoundError:
        pass
    log(f"{state.name}: pid {os.getpid()} stopped")
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # Nothing is left to clean up: skip the interpreter's teardown, which for a process that
    # leaked millions of objects means freeing them one by one (seconds of a stopping service
    # that still holds its memory) before the supervisor may start the next one.
    sys.stderr.flush()
    os._exit(code)
