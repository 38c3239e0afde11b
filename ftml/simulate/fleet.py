"""The fleet simulator: entity profiles, traffic timelines, faults and their effects, restarts,
log rotation and collector artefacts, vectorised over steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ftml.config import parse_duration
from ftml.errors import ConfigError
from ftml.simulate.catalog import (
    _DAY_S,
    _DECIMALS,
    _EPOCH_WEEKDAY,
    _HOUR_S,
    _MAX_STEP,
    _MIN_S,
    _MIN_STEP,
    CAUSES,
    METRICS,
)
from ftml.simulate.worlds import WORLDS, apply_world


@dataclass(frozen=True)
class _Profile:
    """What sets one entity apart; the role gives typical values, each entity jitters them."""

    role: str
    rps: float  # requests/s at the weekday peak
    peak_cpu: float  # cpu_pct at the weekday peak
    idle_cpu: float  # cpu_pct with no traffic
    latency_ms: float  # p95 latency on an idle cpu
    trough: float  # load at the quietest hour, as a share of the peak
    peak_hour: float  # UTC hour of the daily peak
    weekend_dip: float  # share of the load that goes away at weekends
    mem_base: float  # mem_used_pct outside the collected heap
    heap_pct: float  # mem_used_pct that one GC cycle allocates and frees
    mem_creep_day: float  # slow growth of memory per day of uptime (fragmentation, caches)
    gc_period_min: float  # minutes between major collections at peak load
    gc_minor_ms: float
    gc_major_ms: float
    disk_base: float  # disk_used_pct at the start
    data_pct_day: float  # lasting disk growth per day
    log_pct_day: float  # disk_used_pct of logs written per day at peak load (rotated nightly)
    io_wait: float  # io_wait_pct at peak load
    threads_min: float  # idle thread-pool size
    threads_max: float
    conn_idle: float  # connections held with no traffic
    conn_per_rps: float  # keep-alive connections per request/s
    conn_max: float  # connection limit
    kb_per_request: float
    packets_per_request: float
    error_rate: float  # share of requests that fail on a healthy day


_ROLES = (
    _Profile("web", rps=300, peak_cpu=45, idle_cpu=4, latency_ms=80, trough=0.25, peak_hour=15,
             weekend_dip=0.35, mem_base=35, heap_pct=18, mem_creep_day=0.3, gc_period_min=12,
             gc_minor_ms=8, gc_major_ms=120, disk_base=30, data_pct_day=0.08, log_pct_day=3.0,
             io_wait=1.0, threads_min=24, threads_max=200, conn_idle=50, conn_per_rps=1.0,
             conn_max=1024, kb_per_request=40, packets_per_request=30, error_rate=0.002),
    _Profile("api", rps=150, peak_cpu=50, idle_cpu=5, latency_ms=120, trough=0.3, peak_hour=14,
             weekend_dip=0.3, mem_base=40, heap_pct=20, mem_creep_day=0.3, gc_period_min=10,
             gc_minor_ms=10, gc_major_ms=150, disk_base=35, data_pct_day=0.05, log_pct_day=2.0,
             io_wait=1.0, threads_min=20, threads_max=256, conn_idle=30, conn_per_rps=0.8,
             conn_max=512, kb_per_request=12, packets_per_request=12, error_rate=0.003),
    _Profile("db", rps=800, peak_cpu=55, idle_cpu=6, latency_ms=15, trough=0.3, peak_hour=15,
             weekend_dip=0.3, mem_base=62, heap_pct=8, mem_creep_day=0.1, gc_period_min=30,
             gc_minor_ms=3, gc_major_ms=40, disk_base=50, data_pct_day=0.4, log_pct_day=0.8,
             io_wait=6.0, threads_min=16, threads_max=150, conn_idle=20, conn_per_rps=0.15,
             conn_max=500, kb_per_request=6, packets_per_request=6, error_rate=0.0005),
    _Profile("cache", rps=3000, peak_cpu=30, idle_cpu=3, latency_ms=3, trough=0.2, peak_hour=15,
             weekend_dip=0.4, mem_base=55, heap_pct=10, mem_creep_day=0.2, gc_period_min=20,
             gc_minor_ms=1, gc_major_ms=15, disk_base=20, data_pct_day=0.02, log_pct_day=0.6,
             io_wait=0.3, threads_min=8, threads_max=64, conn_idle=50, conn_per_rps=0.1,
             conn_max=1000, kb_per_request=2, packets_per_request=3, error_rate=0.0002),
    # Batch workers: flatter load that peaks at night, long jobs.
    _Profile("worker", rps=40, peak_cpu=50, idle_cpu=5, latency_ms=900, trough=0.65, peak_hour=2,
             weekend_dip=0.1, mem_base=30, heap_pct=30, mem_creep_day=0.4, gc_period_min=6,
             gc_minor_ms=20, gc_major_ms=300, disk_base=40, data_pct_day=0.1, log_pct_day=1.5,
             io_wait=2.0, threads_min=8, threads_max=128, conn_idle=10, conn_per_rps=0.5,
             conn_max=128, kb_per_request=50, packets_per_request=40, error_rate=0.004),
)

_SIZE_SIGMA = 0.3  # spread of entity size (request rate) within a role, log scale
_SPREAD = 0.15  # default relative spread of an entity's characteristics around its role's
_PEAK_HOUR_SD = 0.75
_MEM_BASE_SD = 4.0
_DISK_BASE_SPREAD = 10.0
_MAX_PEAK_CPU = 65.0  # a healthy entity keeps headroom at its daily peak


def _jitter(role: _Profile, rng: np.random.Generator) -> _Profile:
    """One entity of ``role``: its own size and a little spread in every characteristic."""
    size = float(rng.lognormal(0.0, _SIZE_SIGMA))
    pools = max(1.0, size)  # bigger entities get bigger pools

    def spread(x: float, rel: float = _SPREAD) -> float:
        return float(x * rng.uniform(1 - rel, 1 + rel))

    return dataclasses.replace(
        role,
        rps=role.rps * size,
        peak_cpu=min(spread(role.peak_cpu), _MAX_PEAK_CPU),
        idle_cpu=spread(role.idle_cpu),
        latency_ms=spread(role.latency_ms, 0.25),
        trough=spread(role.trough),
        peak_hour=role.peak_hour + float(rng.normal(0.0, _PEAK_HOUR_SD)),
        weekend_dip=spread(role.weekend_dip),
        mem_base=role.mem_base + float(rng.normal(0.0, _MEM_BASE_SD)),
        heap_pct=spread(role.heap_pct, 0.25),
        mem_creep_day=spread(role.mem_creep_day, 0.5),
        gc_period_min=spread(role.gc_period_min, 0.3),
        gc_minor_ms=spread(role.gc_minor_ms, 0.3),
        gc_major_ms=spread(role.gc_major_ms, 0.3),
        disk_base=role.disk_base + float(rng.uniform(-_DISK_BASE_SPREAD, _DISK_BASE_SPREAD)),
        data_pct_day=spread(role.data_pct_day, 0.5),
        log_pct_day=spread(role.log_pct_day, 0.3),
        io_wait=spread(role.io_wait, 0.3),
        threads_min=round(spread(role.threads_min) * np.sqrt(pools)),
        threads_max=round(role.threads_max * pools),
        conn_idle=spread(role.conn_idle),
        conn_per_rps=spread(role.conn_per_rps),
        conn_max=round(role.conn_max * pools),
        kb_per_request=spread(role.kb_per_request, 0.3),
        packets_per_request=spread(role.packets_per_request, 0.3),
        error_rate=spread(role.error_rate, 0.4),
    )


def _fleet(rng: np.random.Generator, n: int) -> tuple[list[str], list[_Profile]]:
    """Entity names and profiles: every role once (while there are entities), then at random."""
    first = rng.permutation(len(_ROLES))[:n]
    rest = rng.integers(0, len(_ROLES), size=max(0, n - len(_ROLES)))
    roles = [_ROLES[i] for i in np.concatenate([first, rest])]
    names = [f"svc-{r.role}-{i + 1:02d}" for i, r in enumerate(roles)]
    return names, [_jitter(r, rng) for r in roles]


# --------------------------------------------------------------------------- time


@dataclass(frozen=True)
class _Timeline:
    n: int
    step_s: float
    days: np.ndarray  # days since the start
    epoch_days: np.ndarray  # days since 1970-01-01 UTC
    hour: np.ndarray  # UTC hour of the day
    weekend: np.ndarray  # 1 on Saturday and Sunday, 0 on weekdays, smooth in between

    def steps(self, minutes: float) -> int:
        """Whole steps (at least one) that last about ``minutes``."""
        return max(1, int(round(minutes * _MIN_S / self.step_s)))


_WEEKEND_CENTRE = 6.0  # Sunday 00:00, in days since Monday 00:00
_WEEKEND_HALF = 1.0  # days either side of the centre
_WEEKEND_EDGE = 12.0  # sharpness of the Friday->Saturday and Sunday->Monday edges, per day


def _timeline(start: pd.Timestamp, n: int, step_s: float) -> _Timeline:
    days = np.arange(n) * (step_s / _DAY_S)
    epoch_days = start.timestamp() / _DAY_S + days
    weekday = (epoch_days + _EPOCH_WEEKDAY) % 7
    # circular distance to Sunday 00:00 keeps the weekend smooth across the week's wrap
    off = np.abs((weekday - _WEEKEND_CENTRE + 3.5) % 7 - 3.5)
    weekend = 1.0 / (1.0 + np.exp(-_WEEKEND_EDGE * (_WEEKEND_HALF - off)))
    return _Timeline(n=n, step_s=step_s, days=days, epoch_days=epoch_days,
                     hour=(epoch_days % 1) * 24, weekend=weekend)


# --------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class _Fault:
    cause: str
    start: int  # first affected step
    end: int  # first step after the fault


# Fault durations in minutes (log-uniform between the bounds). Leaks and disk fills run until
# they hit the limit, so they are the slow ones.
_FAULT_MINUTES = {
    "memory_leak": (60, 360),
    "cpu_saturation": (15, 180),
    "network_degradation": (15, 150),
    "disk_full": (45, 270),
    "pool_exhaustion": (20, 180),
    "bad_deploy": (15, 120),
    "slow_dependency": (15, 180),
}
_START_CLEAR_H = 2.0  # no fault in the first hours: a detector needs some history first
_END_CLEAR_H = 1.0  # every fault ends (and is seen ending) inside the range
_MIN_NORMAL_H = 3.0  # normal time between two faults of one entity
_MIN_EXTRA_GAP_H = 0.5  # floor of the mean random gap when faults are asked for very often
_MIN_FAULT_STEPS = 3  # room for onset, body and recovery (or the restarts that end a fault)

_BENIGN_CLEAR_MIN = 30.0  # benign disturbances keep this far from faults
_DEPLOYS_PER_ROLE_DAY = 2.0  # release candidates; off-hours ones are mostly dropped
_DEPLOY_OFF_HOURS_KEEP = 0.15
_BUSINESS_HOURS = (8.0, 18.0)  # UTC
_DEPLOY_STAGGER_MIN = (2.0, 6.0)  # rolling deploy: one entity after another
_RESTART_MIN = (1.0, 3.0)
_BURSTS_PER_ENTITY_DAY = 2.0
_BURST_MIN = (2.0, 8.0)
_BURST_FACTOR = (1.3, 1.8)
_BURST_CPU_CEILING = 80.0  # cpu_pct beyond which the balancer sends a burst elsewhere
_ROTATE_HOUR = 3.0  # nightly log rotation (UTC), plus a per-entity cron offset
_ROTATE_JITTER_H = 0.5


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _schedule_faults(rng: np.random.Generator, tl: _Timeline, n_entities: int,
                     rate_per_day: float) -> list[list[_Fault]]:
    """Non-overlapping faults per entity with normal time between them.

    Causes come from a shuffled deck shared by the fleet, so every cause turns up about
    equally often (and at all, once there are as many faults as causes).
    """
    out: list[list[_Fault]] = [[] for _ in range(n_entities)]
    if rate_per_day <= 0:
        return out
    deck: list[str] = []
    step_h = tl.step_s / _HOUR_S
    typical_h = float(np.mean([np.sqrt(lo * hi) for lo, hi in _FAULT_MINUTES.values()])) / 60
    spacing_h = 24.0 / rate_per_day
    extra_mean_h = max(spacing_h - _MIN_NORMAL_H - typical_h, _MIN_EXTRA_GAP_H)
    last = tl.n - int(_END_CLEAR_H / step_h)
    for faults in out:
        t_h = _START_CLEAR_H + rng.uniform(0, spacing_h)
        while True:
            if not deck:
                deck = list(rng.permutation(CAUSES))
            cause = str(deck.pop())
            start = int(t_h / step_h)
            minutes = _log_uniform(rng, *_FAULT_MINUTES[cause])
            end = start + max(_MIN_FAULT_STEPS, int(minutes * _MIN_S / tl.step_s))
            if end > last:
                deck.append(cause)  # unused: it stays in the deck for the next entity
                break
            faults.append(_Fault(cause, start, end))
            t_h = end * step_h + _MIN_NORMAL_H + rng.exponential(extra_mean_h)
    return out


def _clear_of(faults: list[_Fault], start: int, end: int, margin: int) -> bool:
    return all(end + margin <= f.start or start >= f.end + margin for f in faults)


def _schedule_deploys(rng: np.random.Generator, tl: _Timeline, profiles: list[_Profile],
                      faults: list[list[_Fault]]) -> list[list[tuple[int, int]]]:
    """Rolling deploys per role: (start step, steps) restarts of each entity, clear of faults."""
    out: list[list[tuple[int, int]]] = [[] for _ in profiles]
    margin = tl.steps(_BENIGN_CLEAR_MIN)
    total_days = tl.n * tl.step_s / _DAY_S
    for role in sorted({p.role for p in profiles}):
        members = [i for i, p in enumerate(profiles) if p.role == role]
        for t in rng.uniform(0, tl.n, size=rng.poisson(_DEPLOYS_PER_ROLE_DAY * total_days)):
            at = int(t)
            business = (_BUSINESS_HOURS[0] <= tl.hour[at] < _BUSINESS_HOURS[1]
                        and tl.weekend[at] < 0.5)
            keep_p = 1.0 if business else _DEPLOY_OFF_HOURS_KEEP
            if rng.random() >= keep_p:
                continue
            for i in rng.permutation(members):
                length = tl.steps(rng.uniform(*_RESTART_MIN))
                if (at + length < tl.n and _clear_of(faults[i], at, at + length, margin)
                        and all(abs(at - s) > margin for s, _ in out[i])):
                    out[i].append((at, length))
                at += tl.steps(rng.uniform(*_DEPLOY_STAGGER_MIN))
    return out


def _schedule_bursts(rng: np.random.Generator, tl: _Timeline,
                     faults: list[_Fault]) -> list[tuple[int, int, float]]:
    """Short traffic bursts (start, steps, peak factor), clear of faults."""
    total_days = tl.n * tl.step_s / _DAY_S
    margin = tl.steps(_BENIGN_CLEAR_MIN)
    out = []
    for t in rng.uniform(0, tl.n, size=rng.poisson(_BURSTS_PER_ENTITY_DAY * total_days)):
        start, length = int(t), tl.steps(rng.uniform(*_BURST_MIN))
        factor = float(rng.uniform(*_BURST_FACTOR))
        if start + length < tl.n and _clear_of(faults, start, start + length, margin):
            out.append((start, length, factor))
    return out


# --------------------------------------------------------------------------- fault effects


@dataclass
class _Effects:
    """How faults bend an entity's normal behaviour, per step (neutral outside faults).

    A ``*_pull`` weight w moves a metric towards its target: x + w * (target - x), so w = 1
    pins it at the target whatever its normal level.
    """

    rps_mult: np.ndarray  # share of incoming requests that is served
    cpu_work_mult: np.ndarray  # cpu spent per request (blocked threads burn none)
    cpu_add: np.ndarray
    cpu_pull: np.ndarray
    cpu_target: np.ndarray
    latency_mult: np.ndarray
    latency_add_ms: np.ndarray
    error_add: np.ndarray
    mem_pull: np.ndarray
    mem_target: np.ndarray
    disk_pull: np.ndarray
    disk_target: np.ndarray
    io_wait_add: np.ndarray
    retrans_mult: np.ndarray
    net_errors_add: np.ndarray  # per second
    conn_pull: np.ndarray  # towards the connection limit
    thread_pull: np.ndarray  # towards the thread-pool limit
    gc_mult: np.ndarray

    @classmethod
    def neutral(cls, n: int) -> _Effects:
        ones = {"rps_mult", "cpu_work_mult", "latency_mult", "retrans_mult", "gc_mult"}
        return cls(**{f.name: np.ones(n) if f.name in ones else np.zeros(n)
                      for f in dataclasses.fields(cls)})


@dataclass
class _FaultContext:
    eff: _Effects
    profile: _Profile
    tl: _Timeline
    rng: np.random.Generator
    restarts: list[tuple[int, int]]  # faults that restart the process add theirs here

    def restart_steps(self) -> int:
        return self.tl.steps(self.rng.uniform(*_RESTART_MIN))


_ONSETS = ("step", "ramp", "exp")
_ONSET_SHARE = (0.1, 0.3)  # share of a fault spent reaching full strength
_ONSET_FLOOR = 0.15  # a fault shows from its first step, even on a slow onset
_EXP_SHARPNESS = (2.0, 4.0)
_RECOVERY_MIN = (1.0, 5.0)  # a fixed fault fades out over a few minutes
_WOBBLE = 0.08  # a fault's strength fluctuates around its plateau
_WOBBLE_MIN = 5.0


def _rise(length: int, kind: str, floor: float, rng: np.random.Generator) -> np.ndarray:
    """Strength from ``floor`` up to 1 over ``length`` steps: at once, linearly or accelerating."""
    x = np.arange(1, length + 1) / length
    if kind == "step":
        return np.ones(length)
    if kind == "ramp":
        curve = x
    else:
        k = rng.uniform(*_EXP_SHARPNESS)
        curve = np.expm1(k * x) / np.expm1(k)
    return floor + (1 - floor) * curve


def _plateau(ctx: _FaultContext, length: int, kinds: tuple[str, ...] = _ONSETS,
             recovers: bool = True) -> np.ndarray:
    """Strength 0..1 of a fault that rises, holds (fluctuating) and, once fixed, fades out."""
    rng = ctx.rng
    kind = str(rng.choice(kinds))
    onset = 1 if kind == "step" else max(1, int(length * rng.uniform(*_ONSET_SHARE)))
    w = np.ones(length)
    w[:onset] = _rise(onset, kind, _ONSET_FLOOR, rng)
    if recovers:
        fade = min(ctx.tl.steps(rng.uniform(*_RECOVERY_MIN)), max(1, length // 4))
        w[length - fade:] = np.minimum(w[length - fade:], np.linspace(1, 0, fade + 2)[1:-1])
    wobble = 1 + _WOBBLE * _ar_noise(rng, length, ctx.tl.steps(_WOBBLE_MIN))
    return np.clip(w * wobble, 0.0, 1.0)


# memory_leak
_OOM_PCT = (96.0, 99.5)  # memory use at which the kernel kills the process
_LEAK_FLOOR = 0.02
_LEAK_GC_GAIN = 6.0  # a nearly full heap makes collections long ...
_LEAK_CPU_GAIN = 15.0  # ... and frequent: cpu_pct spent collecting at the end
_LEAK_IO_GAIN = 4.0  # page-cache eviction near the limit


def _memory_leak(ctx: _FaultContext, s: int, e: int) -> None:
    """mem_used_pct ramps to the limit (linear or accelerating; the GC saw-tooth flattens),
    GC pauses and cpu grow near the end, then the OOM kill restarts the process."""
    eff, rng = ctx.eff, ctx.rng
    oom = ctx.restart_steps()
    grow = slice(s, e - oom)
    w = _rise(e - oom - s, str(rng.choice(("ramp", "exp"))), _LEAK_FLOOR, rng)
    eff.mem_pull[grow] = w
    eff.mem_target[grow] = rng.uniform(*_OOM_PCT)
    eff.gc_mult[grow] *= 1 + _LEAK_GC_GAIN * w**3
    eff.cpu_add[grow] += _LEAK_CPU_GAIN * w**3
    eff.io_wait_add[grow] += _LEAK_IO_GAIN * w**4
    ctx.restarts.append((e - oom, oom))


_CPU_SAT_TARGET = (90.0, 99.5)


def _cpu_saturation(ctx: _FaultContext, s: int, e: int) -> None:
    """cpu_pct pinned near 100 with unchanged traffic (runaway work, noisy neighbour); latency
    climbs steeply, in-flight requests, threads and timeouts follow."""
    w = _plateau(ctx, e - s)
    ctx.eff.cpu_pull[s:e] = w
    ctx.eff.cpu_target[s:e] = ctx.rng.uniform(*_CPU_SAT_TARGET)


_RETRANS_GAIN = (15.0, 80.0)
_NET_ERRORS_PER_S = (0.05, 1.5)
_RETRANS_LATENCY_REL = (0.5, 2.0)  # retransmit timeouts add to p95: part scales with it ...
_RETRANS_LATENCY_MS = (30.0, 200.0)  # ... part is the retransmit timer itself
_NET_ERROR_SHARE = (0.002, 0.03)
_NET_GOODPUT_LOSS = 0.1


def _network_degradation(ctx: _FaultContext, s: int, e: int) -> None:
    """net_retransmits and net_errors jump; latency up, a few errors, slightly fewer requests
    served; cpu unchanged."""
    eff, rng, p = ctx.eff, ctx.rng, ctx.profile
    w = _plateau(ctx, e - s)
    eff.retrans_mult[s:e] *= 1 + rng.uniform(*_RETRANS_GAIN) * w
    eff.net_errors_add[s:e] += rng.uniform(*_NET_ERRORS_PER_S) * w
    extra_ms = rng.uniform(*_RETRANS_LATENCY_REL) * p.latency_ms + rng.uniform(*_RETRANS_LATENCY_MS)
    eff.latency_add_ms[s:e] += extra_ms * w
    eff.error_add[s:e] += rng.uniform(*_NET_ERROR_SHARE) * w
    eff.rps_mult[s:e] *= 1 - _NET_GOODPUT_LOSS * w


_DISK_FULL_PCT = 100.0
_DISK_FLOOR = 0.03
_FULL_MIN = (5.0, 30.0)  # time spent full before someone cleans up
_FILL_IO_WAIT = (5.0, 20.0)
_FULL_ERROR_SHARE = (0.02, 0.25)  # writes fail once full
_FULL_LATENCY_MULT = (1.2, 2.0)


def _disk_full(ctx: _FaultContext, s: int, e: int) -> None:
    """disk_used_pct ramps to 100 (runaway logs or temp files) with heavy io_wait, stays full
    for a while with failing requests, then drops back when cleaned up."""
    eff, rng = ctx.eff, ctx.rng
    full = min(ctx.tl.steps(rng.uniform(*_FULL_MIN)), (e - s) // 3)
    fill_end = e - full
    fill = _rise(fill_end - s, str(rng.choice(("ramp", "exp"))), _DISK_FLOOR, rng)
    eff.disk_pull[s:fill_end] = fill
    eff.disk_pull[fill_end:e] = 1.0
    eff.disk_target[s:e] = _DISK_FULL_PCT
    eff.io_wait_add[s:fill_end] += rng.uniform(*_FILL_IO_WAIT)
    eff.error_add[fill_end:e] += rng.uniform(*_FULL_ERROR_SHARE)
    eff.latency_mult[fill_end:e] *= rng.uniform(*_FULL_LATENCY_MULT)


_POOL_SAT_POWER = 4  # effects bite only as the pool nears its limit
_POOL_LATENCY_GAIN = (2.0, 6.0)  # requests queue for a free connection
_POOL_ERROR_SHARE = (0.01, 0.15)  # pool checkout timeouts
_POOL_WORK_LOSS = (0.2, 0.4)


def _pool_exhaustion(ctx: _FaultContext, s: int, e: int) -> None:
    """connections climb to the pool limit and flatline there; then threads fill up waiting,
    latency and errors rise and cpu drops (work stalls)."""
    eff, rng = ctx.eff, ctx.rng
    w = _plateau(ctx, e - s)
    sat = w**_POOL_SAT_POWER
    eff.conn_pull[s:e] = w
    eff.thread_pull[s:e] = sat
    eff.latency_mult[s:e] *= 1 + rng.uniform(*_POOL_LATENCY_GAIN) * sat
    eff.error_add[s:e] += rng.uniform(*_POOL_ERROR_SHARE) * sat
    eff.cpu_work_mult[s:e] *= 1 - rng.uniform(*_POOL_WORK_LOSS) * sat


_BAD_DEPLOY_ERROR_SHARE = (0.04, 0.4)
_BAD_DEPLOY_CPU = (3.0, 12.0)  # exceptions and their logging
_BAD_DEPLOY_LATENCY = (-0.15, 0.6)  # fast failures can even lower p95


def _bad_deploy(ctx: _FaultContext, s: int, e: int) -> None:
    """A deploy restart (like a benign one), then an error burst with some extra cpu, until
    the rollback restart."""
    eff, rng = ctx.eff, ctx.rng
    deploy, rollback = ctx.restart_steps(), ctx.restart_steps()
    ctx.restarts += [(s, deploy), (e - rollback, rollback)]
    body = slice(s + deploy, e - rollback)
    w = _plateau(ctx, body.stop - body.start, kinds=("step", "ramp"), recovers=False)
    eff.error_add[body] += rng.uniform(*_BAD_DEPLOY_ERROR_SHARE) * w
    eff.cpu_add[body] += rng.uniform(*_BAD_DEPLOY_CPU) * w
    eff.latency_mult[body] *= 1 + rng.uniform(*_BAD_DEPLOY_LATENCY) * w


_DEPENDENCY_LATENCY_REL = (2.0, 8.0)
_DEPENDENCY_WORK_LOSS = (0.15, 0.35)
_DEPENDENCY_ERROR_SHARE = (0.001, 0.02)
_DEPENDENCY_GOODPUT_LOSS = 0.05


def _slow_dependency(ctx: _FaultContext, s: int, e: int) -> None:
    """latency up several-fold while cpu drops (threads wait instead of working); in-flight
    requests pile up, so threads and connections rise; a few timeouts."""
    eff, rng, p = ctx.eff, ctx.rng, ctx.profile
    w = _plateau(ctx, e - s)
    eff.latency_add_ms[s:e] += rng.uniform(*_DEPENDENCY_LATENCY_REL) * p.latency_ms * w
    eff.cpu_work_mult[s:e] *= 1 - rng.uniform(*_DEPENDENCY_WORK_LOSS) * w
    eff.error_add[s:e] += rng.uniform(*_DEPENDENCY_ERROR_SHARE) * w
    eff.rps_mult[s:e] *= 1 - _DEPENDENCY_GOODPUT_LOSS * w


_FAULT_EFFECTS: dict[str, Callable[[_FaultContext, int, int], None]] = {
    "memory_leak": _memory_leak,
    "cpu_saturation": _cpu_saturation,
    "network_degradation": _network_degradation,
    "disk_full": _disk_full,
    "pool_exhaustion": _pool_exhaustion,
    "bad_deploy": _bad_deploy,
    "slow_dependency": _slow_dependency,
}


# --------------------------------------------------------------------------- signal helpers


def _ar_noise(rng: np.random.Generator, n: int, tau_steps: int) -> np.ndarray:
    """Unit-variance noise correlated over about ``tau_steps`` (an AR(1) process)."""
    white = rng.standard_normal(n)
    alpha = 1.0 / max(tau_steps, 1)
    if alpha >= 1.0 or n == 0:
        return white
    stationary_sd = np.sqrt(alpha / (2 - alpha))
    white[0] *= stationary_sd  # start in the stationary state, not with a transient
    smooth = pd.Series(white).ewm(alpha=alpha, adjust=False).mean().to_numpy()
    return smooth / stationary_sd


def _last_flag(flags: np.ndarray) -> np.ndarray:
    """Index of the latest flagged step at or before each step; -1 before the first."""
    return np.maximum.accumulate(np.where(flags, np.arange(flags.size), -1))


def _reset_cumsum(increments: np.ndarray, resets: np.ndarray, initial: float) -> np.ndarray:
    """Running total that restarts from zero at each reset step (counting that step's own
    increment); ``initial`` is the total already reached before the first step."""
    total = np.cumsum(increments)
    before = total - increments
    last = _last_flag(resets)
    base = np.where(last >= 0, before[np.maximum(last, 0)], -initial)
    return total - base


def _pulses(n: int, starts: list[int], lengths: list[int], heights: list[float]) -> np.ndarray:
    """Sum of half-sine bumps (smooth rise and fall)."""
    out = np.zeros(n)
    for s, length, h in zip(starts, lengths, heights, strict=True):
        stop = min(n, s + length)
        out[s:stop] += h * np.sin(np.pi * (np.arange(stop - s) + 0.5) / length)
    return out


def _pull(x: np.ndarray, weight: np.ndarray, target: np.ndarray) -> np.ndarray:
    return x + weight * (target - x)


# --------------------------------------------------------------------------- one entity

# load
_DAILY_SHARPNESS = 1.5  # >1 makes the night trough wider than the afternoon peak
_GROWTH_PER_DAY = (0.005, 0.004)  # mean and sd of traffic growth
_WANDER_SD = 0.06  # slow multi-day wander of traffic (log scale)
_WANDER_H = 36.0
_LOAD_AR_SD, _LOAD_AR_MIN = 0.04, 5.0
_LOAD_WHITE_SD = 0.03
_MIN_LOAD_NOISE = 0.5
# restarts
_RESTART_DRAIN = 0.15  # the load balancer sends a restarting instance little traffic
_STARTUP_CPU = (60.0, 95.0)  # class loading, JIT, cache warm-up
_STARTUP_THREADS = 0.3  # share of the idle pool alive while starting
_UPTIME_DAYS = (0.5, 5.0)  # uptime before the first step
_COLD_CACHE_GAIN, _COLD_CACHE_MIN = 0.4, 8.0  # latency right after a restart, and its decay
_MEM_WARM_DEFICIT, _MEM_WARM_MIN = 8.0, 30.0  # memory a fresh process has not filled yet
_CONN_WARM_MIN = 2.0  # connections re-established after a restart
# cpu and latency
_CPU_AR_SD, _CPU_AR_MIN, _CPU_WHITE_SD = 1.5, 10.0, 1.0
_CPU_FLOOR = 0.5
_ROTATE_CPU = (3.0, 8.0)
_QUEUE_GAIN = 0.3  # latency factor 1 + g*rho/(1-rho): flat at low cpu, steep near 100 %
_RHO_MAX = 0.97
_LAT_SIGMA = 0.06  # log-scale noise of p95 ...
_LAT_SIGMA_SAMPLES = 2.0  # ... plus sampling noise, larger with few requests per step
_LAT_AR_SD, _LAT_AR_MIN = 0.05, 10.0
_LAT_SPIKE_P, _LAT_SPIKE_MULT = 0.003, (1.5, 3.0)  # lone outliers, not incidents
# errors
_ERR_SIGMA, _ERR_AR_MIN = 0.3, 30.0
# requests time out once p95 is about this many times its idle value (a soft threshold)
_TIMEOUT_RATIO, _TIMEOUT_SOFT, _TIMEOUT_MAX = 10.0, 1.0, 0.08
# threads and connections
_MEAN_OVER_P95 = 0.4  # mean latency as a share of p95, for Little's law
_THREAD_SD = 1.5
_CONN_SD_SQRT = 0.5  # connection noise grows with the square root of the count
# memory and GC
_MEM_SD = 0.2
_GC_MINOR_IDLE = 0.5  # minor pauses at zero load, as a share of those at peak
_GC_SIGMA = 0.25
# disk and io
_DISK_SD = 0.005
_MEAN_LOAD = 0.6  # typical load over a day, as a share of the peak
_IO_IDLE = 0.5
_IO_SIGMA, _IO_AR_MIN = 0.2, 10.0
_ROTATE_MIN = (3.0, 6.0)
_ROTATE_IO = (4.0, 12.0)
# network
_RETRANS_SHARE = 2e-4  # retransmitted packets on a healthy link
_RETRANS_SPIKE_P, _RETRANS_SPIKE = 0.002, (3.0, 8.0)
_NET_ERRORS_BASE = 0.005  # per second
_BYTES_SIGMA = 0.05


@dataclass(frozen=True)
class _Restarts:
    active: np.ndarray  # the process is (re)starting
    begins: np.ndarray  # a restart begins at this step
    since: np.ndarray  # steps since the process last started


def _restart_state(tl: _Timeline, restarts: list[tuple[int, int]], uptime_steps: int) -> _Restarts:
    active = np.zeros(tl.n, dtype=bool)
    begins = np.zeros(tl.n, dtype=bool)
    for s, length in restarts:
        active[s:s + length] = True
        begins[s] = True
    last = _last_flag(begins)
    since = np.arange(tl.n) - np.where(last >= 0, last, -uptime_steps)
    return _Restarts(active=active, begins=begins, since=since)


@dataclass(frozen=True)
class _Rotation:
    hour: float  # UTC hour the nightly rotation runs at
    flags: np.ndarray  # rotation runs at this step: the logs on disk are dropped
    io_wait: np.ndarray  # compressing the old logs costs io ...
    cpu: np.ndarray  # ... and a little cpu


def _log_rotation(tl: _Timeline, rng: np.random.Generator) -> _Rotation:
    hour = _ROTATE_HOUR + rng.uniform(0, _ROTATE_JITTER_H)
    day = np.floor(tl.epoch_days - hour / 24)
    flags = np.diff(day, prepend=day[0]) > 0
    at = np.flatnonzero(flags).tolist()
    lengths = [tl.steps(rng.uniform(*_ROTATE_MIN)) for _ in at]
    io_wait = _pulses(tl.n, at, lengths, rng.uniform(*_ROTATE_IO, len(at)).tolist())
    cpu = _pulses(tl.n, at, lengths, rng.uniform(*_ROTATE_CPU, len(at)).tolist())
    return _Rotation(hour=hour, flags=flags, io_wait=io_wait, cpu=cpu)


def _load(tl: _Timeline, p: _Profile, rng: np.random.Generator) -> np.ndarray:
    """Traffic as a share of the weekday peak: daily and weekly cycles, growth, wander, noise."""
    daily = (0.5 * (1 + np.cos(2 * np.pi * (tl.hour - p.peak_hour) / 24))) ** _DAILY_SHARPNESS
    daily = p.trough + (1 - p.trough) * daily
    weekly = 1 - p.weekend_dip * tl.weekend
    growth = 1 + rng.normal(*_GROWTH_PER_DAY) * tl.days
    wander = np.exp(_WANDER_SD * _ar_noise(rng, tl.n, tl.steps(_WANDER_H * 60)))
    noise = (1 + _LOAD_AR_SD * _ar_noise(rng, tl.n, tl.steps(_LOAD_AR_MIN))
             + _LOAD_WHITE_SD * rng.standard_normal(tl.n))
    return daily * weekly * growth * wander * np.maximum(noise, _MIN_LOAD_NOISE)


def _bursts(n: int, bursts: list[tuple[int, int, float]]) -> np.ndarray:
    return 1 + _pulses(n, [b[0] for b in bursts], [b[1] for b in bursts],
                       [b[2] - 1 for b in bursts])


def _poisson_rate(rng: np.random.Generator, per_s: np.ndarray, step_s: float) -> np.ndarray:
    """Observed rate of a count process over one step."""
    return rng.poisson(np.maximum(per_s, 0) * step_s) / step_s


def _entity_metrics(tl: _Timeline, p: _Profile, faults: list[_Fault],
                    deploys: list[tuple[int, int]], bursts: list[tuple[int, int, float]],
                    rng: np.random.Generator, trace: dict | None = None
                    ) -> dict[str, np.ndarray]:
    """The entity's metrics per step. ``trace``, when given, receives the fault effects and
    the restarts (what the log writer needs); it draws nothing, so the metrics stay the same."""
    n, step_s = tl.n, tl.step_s
    eff = _Effects.neutral(n)
    restarts = list(deploys)
    ctx = _FaultContext(eff, p, tl, rng, restarts)
    for f in faults:
        _FAULT_EFFECTS[f.cause](ctx, f.start, f.end)
    uptime_steps = tl.steps(rng.uniform(*_UPTIME_DAYS) * 24 * 60)
    rs = _restart_state(tl, restarts, uptime_steps)
    warm_latency = 1 + _COLD_CACHE_GAIN * np.exp(-rs.since / tl.steps(_COLD_CACHE_MIN))

    rot = _log_rotation(tl, rng)

    # requests; the balancer sends a burst only as far as the entity has cpu headroom
    cpu_per_rps = (p.peak_cpu - p.idle_cpu) / p.rps
    steady = p.rps * _load(tl, p, rng)
    headroom = (_BURST_CPU_CEILING - p.idle_cpu) / cpu_per_rps
    incoming = np.minimum(steady * _bursts(n, bursts), np.maximum(steady, headroom))
    rps = incoming * eff.rps_mult * np.where(rs.active, _RESTART_DRAIN, 1.0)
    rel_load = rps / p.rps

    # cpu: idle + work per request, unless a fault pins it or the process is starting
    cpu = p.idle_cpu + cpu_per_rps * rps * eff.cpu_work_mult + eff.cpu_add + rot.cpu
    cpu = (_pull(cpu, eff.cpu_pull, eff.cpu_target)  # noise after the pull: no flat line
           + _CPU_AR_SD * _ar_noise(rng, n, tl.steps(_CPU_AR_MIN))
           + _CPU_WHITE_SD * rng.standard_normal(n))
    cpu = np.clip(cpu, _CPU_FLOOR, 100.0)
    # latency queues on the cpu that serves requests: startup work runs before serving starts
    rho = np.minimum(cpu / 100, _RHO_MAX)
    cpu = np.where(rs.active, rng.uniform(*_STARTUP_CPU, n), cpu)

    # latency: queueing on the cpu, cold caches after a restart, fault delays
    queue = 1 + _QUEUE_GAIN * rho / (1 - rho)
    sigma = _LAT_SIGMA + _LAT_SIGMA_SAMPLES / np.sqrt(np.maximum(rps * step_s, 1.0))
    lat_noise = np.exp(sigma * rng.standard_normal(n)
                       + _LAT_AR_SD * _ar_noise(rng, n, tl.steps(_LAT_AR_MIN)))
    latency = p.latency_ms * queue * warm_latency * eff.latency_mult + eff.latency_add_ms
    latency = latency * lat_noise
    spikes = rng.random(n) < _LAT_SPIKE_P
    latency[spikes] *= rng.uniform(*_LAT_SPIKE_MULT, spikes.sum())

    # errors: a healthy trickle, timeouts when latency explodes, fault errors; counted per step
    slowdown = latency / p.latency_ms
    timeouts = _TIMEOUT_MAX / (1 + np.exp(-(slowdown - _TIMEOUT_RATIO) / _TIMEOUT_SOFT))
    err_p = np.clip(p.error_rate * np.exp(_ERR_SIGMA * _ar_noise(rng, n, tl.steps(_ERR_AR_MIN)))
                    + timeouts + eff.error_add, 0.0, 1.0)
    requests = np.maximum(rps * step_s, 1.0)
    error_rate = np.minimum(rng.poisson(err_p * requests) / requests, 1.0)

    # threads and connections follow in-flight requests (Little's law)
    inflight = rps * latency / 1000 * _MEAN_OVER_P95
    threads = p.threads_min + inflight + _THREAD_SD * rng.standard_normal(n)
    threads = _pull(threads, eff.thread_pull, p.threads_max)
    threads = np.where(rs.active, p.threads_min * _STARTUP_THREADS, threads)
    threads = np.clip(np.round(threads), 1, p.threads_max)
    conn_warm = 1 - np.exp(-(rs.since + 1) / tl.steps(_CONN_WARM_MIN))
    conns = (p.conn_idle + p.conn_per_rps * rps) * conn_warm + inflight
    conns = conns + _CONN_SD_SQRT * np.sqrt(conns) * rng.standard_normal(n)
    conns = np.clip(np.round(_pull(conns, eff.conn_pull, p.conn_max)), 0, p.conn_max)

    # memory: steady part + slow creep with uptime + GC saw-tooth of the heap
    alloc = step_s / (p.gc_period_min * _MIN_S) * rel_load  # GC cycles per step
    heap_cycles = _reset_cumsum(alloc, rs.begins, initial=rng.uniform(0, 1))
    heap_share = heap_cycles % 1
    cycle = np.floor(heap_cycles)
    collections = np.diff(cycle, prepend=cycle[0]) > 0
    uptime_days = rs.since * step_s / _DAY_S
    mem = (p.mem_base + p.mem_creep_day * uptime_days + p.heap_pct * heap_share
           - _MEM_WARM_DEFICIT * np.exp(-rs.since / tl.steps(_MEM_WARM_MIN)))
    mem = _pull(mem, eff.mem_pull, eff.mem_target) + _MEM_SD * rng.standard_normal(n)
    mem = np.clip(mem, 0.0, 100.0)
    gc = p.gc_minor_ms * (_GC_MINOR_IDLE + (1 - _GC_MINOR_IDLE) * rel_load)
    gc = gc * rng.lognormal(0, _GC_SIGMA, n)
    gc = np.where(collections, np.maximum(gc, p.gc_major_ms * rng.lognormal(0, _GC_SIGMA, n)), gc)
    gc = gc * eff.gc_mult

    # disk: base + lasting growth + logs since the last rotation
    log_growth = p.log_pct_day * step_s / _DAY_S * rel_load
    logs_before = ((tl.epoch_days[0] - rot.hour / 24) % 1) * p.log_pct_day * _MEAN_LOAD
    logs = _reset_cumsum(log_growth, rot.flags, initial=logs_before)
    disk = p.disk_base + p.data_pct_day * tl.days + logs
    disk = _pull(disk, eff.disk_pull, eff.disk_target) + _DISK_SD * rng.standard_normal(n)
    disk = np.clip(disk, 0.0, 100.0)
    io_wait = (p.io_wait * (_IO_IDLE + (1 - _IO_IDLE) * rel_load)
               * np.exp(_IO_SIGMA * _ar_noise(rng, n, tl.steps(_IO_AR_MIN)))
               + rot.io_wait + eff.io_wait_add)
    io_wait = np.clip(io_wait, 0.0, 100.0)

    # network
    packets = rps * p.packets_per_request
    spike = np.where(rng.random(n) < _RETRANS_SPIKE_P, rng.uniform(*_RETRANS_SPIKE, n), 1.0)
    retransmits = _poisson_rate(rng, packets * _RETRANS_SHARE * eff.retrans_mult * spike, step_s)
    net_errors = _poisson_rate(rng, _NET_ERRORS_BASE + eff.net_errors_add, step_s)
    sent = rps * p.kb_per_request * 1024 * step_s * rng.lognormal(0, _BYTES_SIGMA, n)
    sent_before = uptime_steps * step_s * p.rps * _MEAN_LOAD * p.kb_per_request * 1024
    bytes_total = _reset_cumsum(sent, rs.begins, initial=sent_before)

    if trace is not None:
        trace.update(eff=eff, restarts=sorted(restarts))
    return {
        "cpu_pct": cpu, "mem_used_pct": mem, "latency_p95_ms": latency, "error_rate": error_rate,
        "request_rate": rps, "disk_used_pct": disk, "io_wait_pct": io_wait,
        "net_retransmits": retransmits, "net_errors": net_errors, "threads": threads,
        "connections": conns, "gc_pause_ms": gc, "net_bytes_sent_total": bytes_total,
    }


# --------------------------------------------------------------------------- collector


_NAN_CELL_P = 0.001  # a metric missing from one scrape
_DROP_ROW_P = 0.002  # a whole scrape lost
_OUTAGES_PER_ENTITY_DAY = 0.15
_OUTAGE_MIN = (10.0, 30.0)


def _collector_masks(rng: np.random.Generator, tl: _Timeline, faults: list[list[_Fault]],
                     n_metrics: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep rows, NaN cells) shaped (steps, entities) and (steps, entities, metrics).

    Outages avoid faults so that every labelled incident keeps its data.
    """
    n_entities = len(faults)
    keep = rng.random((tl.n, n_entities)) >= _DROP_ROW_P
    nan = rng.random((tl.n, n_entities, n_metrics)) < _NAN_CELL_P
    total_days = tl.n * tl.step_s / _DAY_S
    for i, entity_faults in enumerate(faults):
        for t in rng.uniform(0, tl.n, size=rng.poisson(_OUTAGES_PER_ENTITY_DAY * total_days)):
            start, length = int(t), tl.steps(rng.uniform(*_OUTAGE_MIN))
            if _clear_of(entity_faults, start, start + length, 1):
                keep[start:start + length, i] = False
    return keep, nan


# --------------------------------------------------------------------------- public API


def _check_args(entities: int, days: float, step: str | pd.Timedelta, start: str,
                faults_per_entity_day: float) -> tuple[pd.Timedelta, pd.Timestamp, int]:
    if isinstance(entities, bool) or not isinstance(entities, (int, np.integer)) or entities < 1:
        raise ConfigError(f"entities must be a whole number >= 1, got {entities!r}")
    if not days > 0:
        raise ConfigError(f"days must be positive, got {days!r}")
    if not faults_per_entity_day >= 0:
        raise ConfigError(f"faults_per_entity_day must be >= 0, got {faults_per_entity_day!r}")
    step_td = step if isinstance(step, pd.Timedelta) else parse_duration(step, "step")
    if not _MIN_STEP <= step_td <= _MAX_STEP:
        raise ConfigError(f"step must be between 1s and 5m, got {step!r}",
                          hint="coarser steps leave short faults with too few samples")
    try:
        t0 = pd.Timestamp(start)
    except (ValueError, TypeError):
        t0 = pd.NaT
    if t0 is pd.NaT:
        raise ConfigError(f"cannot read start {start!r}", hint="write e.g. 2026-01-05T00:00:00Z")
    t0 = t0.tz_localize("UTC") if t0.tzinfo is None else t0.tz_convert("UTC")
    n = int(days * _DAY_S / step_td.total_seconds())
    if n < 2:
        raise ConfigError(f"days={days!r} holds fewer than two steps of {step!r}")
    return step_td, t0, n


def simulate_fleet(entities: int = 8, days: float = 7, step: str | pd.Timedelta = "60s",
                   seed: int = 0, start: str = "2026-01-05T00:00:00Z",
                   faults_per_entity_day: float = 0.6,
                   missing: bool = True,
                   fleet_seed: int | None = None,
                   world: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate a fleet -> (metrics, incidents).

    ``metrics`` is wide: ``timestamp`` (datetime64[ns, UTC]), ``entity`` (str), then one float
    column per metric in :data:`METRICS` order; rows sorted by timestamp then entity, like a
    collector export. With ``missing`` some cells are NaN and some rows (now and then a
    10-30 minute run) are absent.

    ``incidents`` has columns ``entity, start, end, cause``: ``start`` is the first sample
    the fault shows in and ``end`` the last (both inclusive, on the step grid, UTC), sorted
    by start then entity. The same arguments always give the same output.

    ``seed`` draws the fleet (names, roles, sizes), the fault and deploy schedule and the
    noise. ``fleet_seed``, when given, draws the fleet instead, so that another ``seed``
    gives the same entities with new faults and noise (e.g. a later period to score).

    ``world`` (0: this simulator as it is) picks one of :data:`WORLDS`, a second family of
    fleets with other noise laws, cycles and fleet dynamics (see :func:`apply_world`).
    """
    metrics, incidents, _ = _simulate(entities, days, step, seed, start,
                                      faults_per_entity_day, missing, fleet_seed, world)
    return metrics, incidents


@dataclass(frozen=True)
class _Run:
    """What a simulation drew beyond its output, for the log writer."""

    tl: _Timeline
    stamps: pd.DatetimeIndex
    names: list[str]
    profiles: list[_Profile]
    faults: list[list[_Fault]]
    deploys: list[list[tuple[int, int]]]
    series: list[dict[str, np.ndarray]]  # per entity (in ``names`` order): unrounded metrics
    traces: list[dict]  # per entity: fault effects and restarts
    seed: int


def _simulate(entities, days, step, seed, start, faults_per_entity_day, missing, fleet_seed,
              world, trace: bool = False
              ) -> tuple[pd.DataFrame, pd.DataFrame, _Run | None]:
    if world not in WORLDS:
        raise ConfigError(f"unknown world {world!r}",
                          hint=f"use one of {', '.join(map(str, sorted(WORLDS)))}")
    step_td, t0, n = _check_args(entities, days, step, start, faults_per_entity_day)
    step_s = step_td.total_seconds()
    tl = _timeline(t0, n, step_s)
    fleet_seq, schedule_seq, values_seq, collector_seq = np.random.SeedSequence(seed).spawn(4)
    if fleet_seed is not None:
        fleet_seq = np.random.SeedSequence(fleet_seed).spawn(1)[0]  # = fleet_seq of that seed
    names, profiles = _fleet(np.random.default_rng(fleet_seq), int(entities))
    schedule_rng = np.random.default_rng(schedule_seq)
    faults = _schedule_faults(schedule_rng, tl, len(names), faults_per_entity_day)
    deploys = _schedule_deploys(schedule_rng, tl, profiles, faults)
    bursts = [_schedule_bursts(schedule_rng, tl, f) for f in faults]

    entity_rngs = [np.random.default_rng(s) for s in values_seq.spawn(len(names))]
    order = np.argsort(names)  # rows within a timestamp go by entity name
    values = np.empty((n, len(names), len(METRICS)))
    all_series: list = [None] * len(names)
    traces: list = [None] * len(names)
    for col, i in enumerate(order):
        traces[i] = {} if trace else None
        series = _entity_metrics(tl, profiles[i], faults[i], deploys[i], bursts[i],
                                 entity_rngs[i], traces[i])
        if trace:
            all_series[i] = series
        for j, metric in enumerate(METRICS):
            values[:, col, j] = np.round(series[metric], _DECIMALS[metric])

    if missing:
        keep, nan = _collector_masks(np.random.default_rng(collector_seq), tl,
                                     [faults[i] for i in order], len(METRICS))
        values[nan] = np.nan
    else:
        keep = np.ones((n, len(names)), dtype=bool)
    stamps = pd.date_range(t0, periods=n, freq=step_td).as_unit("ns")
    step_of_row, entity_of_row = np.nonzero(keep)  # row-major: timestamp, then entity
    sorted_names = np.asarray(names, dtype=object)[order]
    metrics = pd.DataFrame({"timestamp": stamps[step_of_row],
                            "entity": pd.array(sorted_names[entity_of_row], dtype="str")})
    kept = values[keep]
    for j, metric in enumerate(METRICS):
        metrics[metric] = kept[:, j]
    incidents = _incident_frame(names, faults, stamps)
    if world:
        world_seq = np.random.SeedSequence([seed, 7919, world])
        metrics, incidents = apply_world(metrics, incidents, world,
                                         np.random.default_rng(world_seq), step_td)
    run = _Run(tl, stamps, names, profiles, faults, deploys, all_series, traces,
               int(seed)) if trace else None
    return metrics, incidents, run




def _incident_frame(names: list[str], faults: list[list[_Fault]],
                    stamps: pd.DatetimeIndex) -> pd.DataFrame:
    rows = [(names[i], f) for i, fs in enumerate(faults) for f in fs]
    frame = pd.DataFrame({
        "entity": pd.array([name for name, _ in rows], dtype="str"),
        "start": stamps[[f.start for _, f in rows]],
        "end": stamps[[f.end - 1 for _, f in rows]],
        "cause": pd.array([f.cause for _, f in rows], dtype="str"),
    })
    return frame.sort_values(["start", "entity"], kind="stable").reset_index(drop=True)
