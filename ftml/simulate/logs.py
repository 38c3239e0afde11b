"""Application logs of a simulated run (``ftml simulate --logs``), from their own random stream.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ftml.errors import ConfigError
from ftml.simulate.catalog import _HOUR_S, _MIN_S
from ftml.simulate.fleet import _MEAN_OVER_P95, _Effects, _Fault, _Run, _simulate, simulate_fleet
from ftml.simulate.worlds import WORLDS

# Application logs of the same run, in Python ``logging`` format (:data:`LOG_FORMAT`). They
# follow the metrics: sampled request lines in proportion to the traffic served, an ERROR
# line for a share of the failed requests, startup lines at every restart, and for each fault
# the lines its cause writes (a bad deploy's new exception with its traceback, a leak's GC
# warnings, pool checkout timeouts, ...), as strong as the fault is at that step. They are
# drawn from their own random stream: asking for logs never changes the metrics.

#: The layout of every simulated log line (a record's traceback lines follow it unprefixed).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LOG_SALT = 0x6C6F6773  # "logs": a seed sequence of its own, apart from the metric streams
_TRAFFIC_LINES_PER_S = 0.05  # sampled request lines at the entity's weekday peak
_ERROR_LOG_SHARE = 0.01  # failed requests that write an ERROR line (errors are sampled less)
_MAX_ERROR_LINES_PER_S = 2.0  # the logger's rate limit
_BENIGN_WARN_PER_H = 1.0  # slow requests, retries, deprecations on a healthy day
_FAULT_WARN_PER_MIN = 3.0  # a fault's own warnings at full strength
_BOOT_WORKERS = (2, 8)

_LOGGER = {"web": "gunicorn.access", "api": "api.handlers", "db": "db.server",
           "cache": "cache.server", "worker": "worker.jobs"}
_ROUTES = {
    "web": ("/", "/products/", "/cart", "/checkout", "/search"),
    "api": ("/api/v1/orders/", "/api/v1/users/", "/api/v1/items", "/api/v1/search"),
    "db": ("orders", "users", "items", "sessions"),
    "cache": ("session:", "user:", "page:"),
    "worker": ("reports.render", "emails.send", "thumbnails.resize", "exports.csv"),
}
_DEPENDENCY = {"web": ("api", 8000), "api": ("postgres", 5432), "db": ("replica", 5432),
               "cache": ("redis-peer", 6379), "worker": ("api", 8000)}
# A bad deploy ships one of these bugs: (file, function, the exception's last line).
_BUGS = (
    ("orders/serializers.py", "to_dict", "KeyError: 'customer_id'"),
    ("billing/tax.py", "compute_total",
     "TypeError: unsupported operand type(s) for +: 'NoneType' and 'float'"),
    ("search/query.py", "build_filter", "AttributeError: 'NoneType' object has no attribute "
     "'strip'"),
    ("users/views.py", "profile", "ValueError: invalid literal for int() with base 10: ''"),
    ("cart/pricing.py", "apply_discount", "ZeroDivisionError: division by zero"),
    ("feeds/render.py", "render_item", "jinja2.exceptions.UndefinedError: 'item' is undefined"),
    ("auth/tokens.py", "decode", "ImportError: cannot import name 'urlsafe_decode' from "
     "'app.utils'"),
    ("jobs/schedule.py", "next_run", "RecursionError: maximum recursion depth exceeded"),
)
_HEX = np.array(list("0123456789abcdef"))


def _hex(rng: np.random.Generator, k: int, digits: int = 8) -> np.ndarray:
    return _HEX[rng.integers(0, 16, (k, digits))].view(f"<U{digits}").ravel().astype(object)


def _ip(rng: np.random.Generator, k: int) -> np.ndarray:
    a, b, c = (rng.integers(lo, 255, k) for lo in (0, 0, 1))
    return _cat("10.", a, ".", b, ".", c)


def _cat(*parts) -> np.ndarray:
    """Element-wise concatenation of strings and arrays (one pass per part, not per line)."""
    k = next(len(p) for p in parts if not isinstance(p, str))
    out = np.full(k, "", dtype=object)
    for part in parts:
        out = out + (part if isinstance(part, str) else np.asarray(part).astype(str).astype(object))
    return out


@dataclass
class _LogLines:
    """Lines of one entity as columns, in no particular order until :meth:`text`."""

    t_ns: list = dataclasses.field(default_factory=list)
    level: list = dataclasses.field(default_factory=list)
    msg: list = dataclasses.field(default_factory=list)

    def add(self, t_ns: np.ndarray, level: str, msg: np.ndarray) -> None:
        if len(t_ns):
            self.t_ns.append(np.asarray(t_ns, dtype=np.int64))
            self.level.append(np.full(len(t_ns), level, dtype=object))
            self.msg.append(np.asarray(msg, dtype=object))

    def text(self, logger: str) -> str:
        if not self.t_ns:
            return ""
        t = np.concatenate(self.t_ns)
        order = np.argsort(t, kind="stable")
        stamp = np.datetime_as_string(t[order].astype("datetime64[ns]").astype("datetime64[ms]"),
                                      unit="ms")
        chars = stamp.astype("<U23").view("<U1").reshape(-1, 23).copy()
        chars[:, 10], chars[:, 19] = " ", ","  # ISO -> logging's asctime
        stamp = chars.view("<U23").ravel().astype(object)
        lines = _cat(stamp, " ", np.concatenate(self.level)[order], f" {logger}: ",
                     np.concatenate(self.msg)[order])
        return "\n".join(lines.tolist()) + "\n"


def _poisson_lines(rng: np.random.Generator, rate: np.ndarray, stamps_ns: np.ndarray,
                   step_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """(step of each line, time of each line) for Poisson counts of mean ``rate`` per step."""
    counts = rng.poisson(np.maximum(rate, 0.0))
    steps = np.repeat(np.arange(len(rate)), counts)
    return steps, stamps_ns[steps] + rng.integers(0, step_ns, len(steps))


def _fault_strength(cause: str, eff: _Effects, s: int, e: int) -> np.ndarray:
    """How strongly a fault shows at each of its steps, 0..1, from the effects it set."""
    raw = {
        "memory_leak": eff.mem_pull, "cpu_saturation": eff.cpu_pull,
        "network_degradation": eff.retrans_mult - 1, "disk_full": eff.disk_pull,
        "pool_exhaustion": eff.conn_pull, "bad_deploy": eff.error_add,
        "slow_dependency": eff.latency_add_ms,
    }[cause][s:e]
    top = float(np.max(raw)) if len(raw) else 0.0
    return raw / top if top > 0 else raw


def _entity_logs(run: _Run, i: int, rng: np.random.Generator) -> str:
    """One entity's log file."""
    p, tl, series, trace = run.profiles[i], run.tl, run.series[i], run.traces[i]
    eff: _Effects = trace["eff"]
    role = p.role
    step_s = tl.step_s
    step_ns = int(step_s * 1e9)
    t_ns = run.stamps.asi8
    rps, latency = series["request_rate"], series["latency_p95_ms"]
    routes = np.asarray(_ROUTES[role], dtype=object)
    dep, dep_port = _DEPENDENCY[role]
    out = _LogLines()

    # Requests served: sampled lines, as many as the traffic.
    steps, t = _poisson_lines(rng, _TRAFFIC_LINES_PER_S * step_s * rps / p.rps, t_ns, step_ns)
    k = len(steps)
    route = routes[rng.integers(0, len(routes), k)]
    ms = np.round(latency[steps] * _MEAN_OVER_P95 * rng.lognormal(0, 0.4, k)).astype(int)
    out.add(t, "INFO", _request_lines(role, rng, k, route, ms))

    # Failed requests: a share of them writes an ERROR line; the part a fault adds is written
    # in that fault's words below, the rest (a healthy trickle, timeouts) generically.
    requests = rps * step_s
    cap = _MAX_ERROR_LINES_PER_S * step_s
    fault_share = np.minimum(eff.error_add, series["error_rate"])
    base_share = np.maximum(series["error_rate"] - fault_share, 0.0)
    steps, t = _poisson_lines(rng, np.minimum(base_share * requests * _ERROR_LOG_SHARE, cap),
                              t_ns, step_ns)
    k = len(steps)
    route = routes[rng.integers(0, len(routes), k)]
    timeout = latency[steps] > 5 * p.latency_ms
    kind = np.where(timeout, 2, rng.integers(0, 2, k))
    msgs = np.where(
        kind == 0, _cat("Request failed: ", route, " -> 502 Bad Gateway from upstream ",
                        _ip(rng, k), f":{dep_port}"),
        np.where(kind == 1, _cat("Client ", _ip(rng, k), " closed the connection before ",
                                 route, " was sent (", rng.integers(1, 64, k), " kB pending)"),
                 _cat("Request failed: ", route, " -> 504 Gateway Timeout after ",
                      np.round(latency[steps]).astype(int), " ms")))
    out.add(t, "ERROR", msgs)

    # Benign warnings now and then.
    steps, t = _poisson_lines(rng, np.full(tl.n, _BENIGN_WARN_PER_H * step_s / _HOUR_S), t_ns,
                              step_ns)
    k = len(steps)
    kind = rng.integers(0, 3, k)
    msgs = np.where(
        kind == 0, _cat("Slow request: ", routes[rng.integers(0, len(routes), k)], " took ",
                        np.round(np.maximum(latency[steps] * rng.uniform(1.5, 3, k),
                                            rng.uniform(1000, 3000, k))).astype(int),
                        " ms (threshold 1000 ms)"),
        np.where(kind == 1, _cat(f"Retrying call to {dep} (attempt 2 of 3): read timeout ",
                                 rng.integers(1, 30, k) * 100, " ms"),
                 f"Deprecated setting 'workers_per_core' in /etc/{role}/config.yaml; use "
                 "'workers'"))
    out.add(t, "WARNING", msgs)

    for fault in run.faults[i]:
        _fault_logs(out, run, i, fault, rng, fault_share, requests, cap)
    _restart_logs(out, run, i, rng)
    return out.text(_LOGGER[role])


def _request_lines(role: str, rng: np.random.Generator, k: int, route: np.ndarray,
                   ms: np.ndarray) -> np.ndarray:
    ip = _ip(rng, k)
    if role == "web":
        tail = np.where(np.char.endswith(route.astype(str), "/"),
                        rng.integers(1000, 99999, k).astype(str), "")
        return _cat(ip, ' - "GET ', route, tail.astype(object), ' HTTP/1.1" 200 ',
                    rng.integers(500, 90000, k), " ", ms, "ms")
    if role == "api":
        tail = np.where(np.char.endswith(route.astype(str), "/"),
                        rng.integers(1000, 99999, k).astype(str), "")
        method = np.where(rng.random(k) < 0.8, "GET", "POST").astype(object)
        return _cat("request_id=", _hex(rng, k), " method=", method, " path=", route,
                    tail.astype(object), " status=200 duration_ms=", ms, " client=", ip)
    if role == "db":
        return _cat("query ok: table=", route, " rows=", rng.integers(0, 500, k),
                    " duration_ms=", ms, " client=", ip)
    if role == "cache":
        return _cat("GET key=", route, _hex(rng, k), " hit=",
                    np.where(rng.random(k) < 0.9, "true", "false").astype(object),
                    " duration_us=", ms * 1000 + rng.integers(0, 1000, k), " client=", ip)
    return _cat("job ", _hex(rng, k), " task=", route, " finished in ", ms, " ms (queue wait ",
                rng.integers(0, 5000, k), " ms)")


def _fault_logs(out: _LogLines, run: _Run, i: int, fault: _Fault, rng: np.random.Generator,
                fault_share: np.ndarray, requests: np.ndarray, cap: float) -> None:
    """What one fault writes: its warnings, rising with its strength, and its share of the
    failed requests in its own words."""
    p, tl, series = run.profiles[i], run.tl, run.series[i]
    s, e = fault.start, fault.end
    step_ns = int(tl.step_s * 1e9)
    t_ns = run.stamps.asi8[s:e]
    w = _fault_strength(fault.cause, run.traces[i]["eff"], s, e)
    dep, port = _DEPENDENCY[p.role]
    routes = np.asarray(_ROUTES[p.role], dtype=object)
    warn_rate = _FAULT_WARN_PER_MIN * tl.step_s / _MIN_S * w
    err_rate = np.minimum(fault_share[s:e] * requests[s:e] * _ERROR_LOG_SHARE, cap)
    warn_steps, warn_t = _poisson_lines(rng, warn_rate, t_ns, step_ns)
    err_steps, err_t = _poisson_lines(rng, err_rate, t_ns, step_ns)
    kw, ke = len(warn_steps), len(err_steps)
    mem, conns = series["mem_used_pct"][s:e], series["connections"][s:e]
    cause = fault.cause
    if cause == "memory_leak":
        warn_rate = warn_rate * w  # GC warnings climb faster than the heap
        warn_steps, warn_t = _poisson_lines(rng, warn_rate, t_ns, step_ns)
        kw = len(warn_steps)
        gc_mult = run.traces[i]["eff"].gc_mult[s:e][warn_steps]
        gc = np.round(p.gc_major_ms * gc_mult * rng.lognormal(0, 0.25, kw)).astype(int)
        out.add(warn_t, "WARNING", _cat("GC overhead high: full collection took ", gc,
                                        " ms, heap ", np.round(mem[warn_steps]).astype(int),
                                        "% used after collection"))
    elif cause == "cpu_saturation":
        out.add(warn_t, "WARNING", _cat("Event loop blocked for ",
                                        rng.integers(200, 5000, kw), " ms; ",
                                        rng.integers(20, 400, kw), " requests queued"))
        late = w > 0.8
        steps, t = _poisson_lines(rng, 0.3 * warn_rate * late, t_ns, step_ns)
        out.add(t, "CRITICAL", _cat("WORKER TIMEOUT (pid:", rng.integers(100, 32000, len(t)),
                                    ")"))
    elif cause == "network_degradation":
        out.add(warn_t, "WARNING", _cat("Connection reset by peer talking to ", _ip(rng, kw),
                                        f":{port}; retrying (attempt ",
                                        rng.integers(1, 4, kw), " of 3)"))
        out.add(err_t, "ERROR", _cat("Failed to reach ", _ip(rng, ke), f":{port}: [Errno 110] "
                                     "Connection timed out"))
    elif cause == "disk_full":
        disk = series["disk_used_pct"][s:e]
        filling = disk > 90
        steps, t = _poisson_lines(rng, warn_rate * filling, t_ns, step_ns)
        out.add(t, "WARNING", _cat("Disk usage ", np.round(disk[steps], 1),
                                   f"% on /var/lib/{p.role} exceeds 90%"))
        out.add(err_t, "ERROR", _cat("OSError: [Errno 28] No space left on device: '/var/lib/",
                                     p.role, "/tmp/", _hex(rng, ke), ".part'"))
    elif cause == "pool_exhaustion":
        out.add(warn_t, "WARNING", _cat("Connection pool 'primary' at ",
                                        np.round(100 * conns[warn_steps] / p.conn_max).astype(int),
                                        "% capacity (in use=", conns[warn_steps].astype(int),
                                        f", max={int(p.conn_max)})"))
        out.add(err_t, "ERROR", _cat(f"TimeoutError: QueuePool limit of size {int(p.conn_max)} "
                                     "overflow 0 reached, connection timed out, timeout ",
                                     rng.integers(5, 31, ke), ".00"))
    elif cause == "bad_deploy":
        path, func, exc = _BUGS[int(rng.integers(len(_BUGS)))]
        line_no = int(rng.integers(40, 900))
        route = routes[rng.integers(0, len(routes), ke)]
        method = np.where(rng.random(ke) < 0.7, "GET", "POST").astype(object)
        # The record's own line names the exception (as logger.exception("... %s", exc)
        # does): a reader that keeps only that line still sees the new bug.
        out.add(err_t, "ERROR", _cat(
            "Exception on ", method, " ", route, f": {exc}\nTraceback (most recent call "
            f'last):\n  File "/app/{p.role}/{path}", line {line_no}, in {func}\n{exc}'))
    elif cause == "slow_dependency":
        slow = np.round(series["latency_p95_ms"][s:e][warn_steps]
                        * rng.uniform(0.5, 1.0, kw)).astype(int)
        out.add(warn_t, "WARNING", _cat(f"Slow call to {dep} at ", _ip(rng, kw), f":{port}: ",
                                        slow, " ms (threshold 500 ms)"))
        out.add(err_t, "ERROR", _cat(f"Timeout calling {dep} at ", _ip(rng, ke), f":{port} "
                                     "after ", rng.integers(3, 31, ke) * 1000, " ms"))


def _restart_logs(out: _LogLines, run: _Run, i: int, rng: np.random.Generator) -> None:
    """Shutdown and startup lines of every restart: deploys bring a new version, a bad
    deploy's rollback the previous one, an OOM kill the same one."""
    p, tl = run.profiles[i], run.tl
    step_ns = int(tl.step_s * 1e9)
    t_ns = run.stamps.asi8
    deploys = {s for s, _ in run.deploys[i]}
    bad = {f.start: f for f in run.faults[i] if f.cause == "bad_deploy"}
    rollback = {f.end for f in run.faults[i] if f.cause == "bad_deploy"}
    leaks = {f.end for f in run.faults[i] if f.cause == "memory_leak"}
    major, minor = int(rng.integers(1, 5)), int(rng.integers(0, 40))
    patch, previous = 0, None
    dep, port = _DEPENDENCY[p.role]
    for s, length in run.traces[i]["restarts"]:
        version = f"{major}.{minor}.{patch}"
        lines: list[tuple[str, str]] = []
        if s + length in leaks:
            lines += [("ERROR", f"MemoryError: unable to allocate {int(rng.integers(1, 512))} "
                       "MiB for the request buffer"),
                      ("ERROR", f"Worker (pid:{int(rng.integers(100, 32000))}) was sent "
                       "SIGKILL! Perhaps out of memory?")]
        else:
            if s + length in rollback and previous is not None:
                lines.append(("WARNING", f"Rolling back to version {previous}"))
                version = previous
            elif s in deploys or s in bad:
                previous, patch = version, patch + 1
                version = f"{major}.{minor}.{patch}"
            lines += [("INFO", "Received SIGTERM, shutting down gracefully"),
                      ("INFO", "Shutting down: Master")]
        pid = int(rng.integers(100, 32000))
        lines += [("INFO", f"Starting {p.role} service version {version}"),
                  ("INFO", f"Loading configuration from /etc/{p.role}/config.yaml"),
                  ("INFO", f"Listening at: http://0.0.0.0:8000 ({pid})")]
        lines += [("INFO", f"Booting worker with pid: {pid + j + 1}")
                  for j in range(int(rng.integers(*_BOOT_WORKERS)))]
        lines += [("INFO", f"Connected to {dep} at 10.0.{int(rng.integers(0, 255))}."
                   f"{int(rng.integers(1, 255))}:{port}"),
                  ("INFO", f"Application startup complete in {int(rng.integers(800, 9000))} ms")]
        offsets = np.sort(rng.integers(0, max(length, 1) * step_ns, len(lines)))
        start = t_ns[min(s, tl.n - 1)]
        for (level, msg), off in zip(lines, offsets, strict=True):
            out.add(np.array([start + off]), level, np.array([msg], dtype=object))


def _fleet_logs(run: _Run) -> dict[str, str]:
    """Every entity's log text, by entity name."""
    seqs = np.random.SeedSequence([run.seed, _LOG_SALT]).spawn(len(run.names))
    return {name: _entity_logs(run, i, np.random.default_rng(seqs[i]))
            for i, name in enumerate(run.names)}


def simulate_logs(**kwargs) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """:func:`simulate_fleet` (same arguments) -> (metrics, incidents, logs): ``logs`` maps each
    entity to the text of its log file (:data:`LOG_FORMAT`). The metrics and incidents are
    exactly those :func:`simulate_fleet` gives for the same arguments."""
    args = inspect.signature(simulate_fleet).bind(**kwargs)
    args.apply_defaults()
    if args.arguments["world"] != 0 and args.arguments["world"] in WORLDS:
        raise ConfigError("logs are simulated for world 0 only",
                          hint="drop --world, or simulate without --logs")
    metrics, incidents, run = _simulate(**args.arguments, trace=True)
    return metrics, incidents, _fleet_logs(run)
