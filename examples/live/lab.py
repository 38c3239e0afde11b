"""The live chaos lab: real service processes under load, their own history, a model trained
on it, ``ftml watch --mode auto`` over them, and faults injected one at a time.

Used by ``python -m examples.live.chaos`` (``make chaos``), ``bench/bench_chaos.py`` and
``tests/test_chaos.py``. Everything lives in one run folder (a temporary one unless told
otherwise)::

    RUN/services/NAME/   spec.json, config.json, metrics.jsonl, service.pid, service.log
    RUN/history/         the training history: service.csv (the services' figures the model
                         uses; raw/ has them whole), local.csv (ftml's ``local`` source),
                         incidents.csv (the labels)
    RUN/model/           the model trained on it
    RUN/state/           ftml watch's state: state.db (audit), checkpoints/ (recovery points)
    RUN/playbooks.yaml   rendered from examples/live/playbooks.yaml.in, one block per instance
    RUN/alerts.jsonl     alerts from the watcher; RUN/pages.jsonl what the pager received
    RUN/local.csv        every local-source sample of the run; RUN/results.json the figures

Time is in steps (``Settings.step`` seconds), so the same plan runs sped up in the tests and
at a slower pace in the benchmark; every reported time is wall-clock seconds.

Everything the lab starts runs in its own process group or session and is stopped by
:meth:`Lab.close`, which also sweeps any process whose command line names the run folder
(a service started by the restart script belongs to nobody else). ``Lab`` is a context
manager: the sweep runs on errors too.
"""

from __future__ import annotations

import csv
import json
import math
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from examples.live import restart as supervisor

HERE = Path(__file__).resolve().parent
PY = sys.executable
KINDS = ("memory_leak", "cpu_hog", "bad_config", "latency")
#: The playbook (name prefix in playbooks.yaml.in) that is the right answer to each fault.
EXPECTED_PLAYBOOK = {"memory_leak": "leak-restart", "cpu_hog": "hog-restart",
                     "bad_config": "config-rollback", "latency": "latency-page"}
#: Faults that ftml fixes itself; the others it pages a human for, by design.
AUTOMATIC = ("memory_leak", "cpu_hog", "bad_config")
#: Faults that end with the process (a restart).
RESTARTED = ("memory_leak", "cpu_hog")
GOOD_CONFIG = {"version": 1, "upstream": "inventory", "cache_ratio": 0.3, "upstream_ms": 4,
               "busy_ratio": 0.03}
BAD_UPSTREAM = "inventory-v2"  # the typo of the bad change: no such upstream
HOST = "live"  # entity prefix of the local source: live/NAME
#: What the model watches. The service's own figures (its metrics file) say how it serves
#: and its memory; ftml's ``local`` source (psutil) adds its CPU, seen from outside. Left out
#: on purpose: ``request_rate`` (the load generator's doing, and a dip at every restart),
#: psutil's ``threads`` (an instantaneous count of requests in flight: noise) and its
#: ``mem_used_pct`` (rss_mb again, but a young process sampled mid-start looks like a
#: collapse). Every metric the detector sees and that no fault moves only adds noise.
SERVICE_METRICS = ("latency_p50_ms", "error_rate", "rss_mb")
#: Disturbances that are not faults: a deploy (the instance restarted, as the history's
#: planned restarts) and a traffic burst (more clients for a while). Either may raise an
#: alert; neither may run a playbook.
BENIGN = ("deploy", "burst")
LOCAL_METRICS = ("cpu_pct",)


@dataclass
class Settings:
    step: float = 1.0  # seconds per metric step (and watcher tick)
    services: int = 4  # instances of the service
    rate: float = 25.0  # requests/s per instance ...
    swing: float = 0.3  # ... swinging by this fraction ...
    swing_steps: int = 40  # ... over this many steps
    window: int = 10  # steps per feature window
    kinds: tuple[str, ...] = KINDS
    train_per_kind: int = 3  # labelled faults of each kind in the history
    train_round: int = 1  # training faults at once (1: one at a time; more: quicker)
    lead_steps: int = 90  # normal history before the first training fault
    hold_steps: int = 12  # a training fault runs this long, then is fixed
    gap_steps: int = 8  # normal steps after each training fault (or round)
    tail_steps: int = 90  # normal history after the last one (calibrates the threshold)
    deadline_steps: int = 90  # live: a fault not recovered by then has failed
    operator_delay: float = 0.0  # seconds the on-call takes to act on a page
    benign: tuple[str, ...] = BENIGN  # after the faults, one of each, one at a time
    burst_factor: float = 2.0  # a burst adds this many times the usual clients ...
    burst_steps: int = 12  # ... for this long

    min_windows: int = 4  # an event opens when this many ...
    of_windows: int = 6  # ... of the last this many windows are anomalous
    engine_cooldown_steps: int = 30  # no new recovery on an instance this soon after one
    stats_window: float = 2.0  # seconds of requests behind each of the service's figures
    diagnose_windows: int = 10  # an event's most anomalous windows the diagnosis looks at
    # Niceness taken off the lab's processes (service, load, watcher; they inherit it), when
    # allowed: other work on the machine then slows the service under test less. Its
    # latency is what is watched, and a busy neighbour otherwise reads as a latency fault.
    priority_boost: int = 5
    # The cascade (issue 18): two more instances, a caller whose upstream is the other (the
    # callee), real HTTP over loopback; after the faults, `cascade_kind` is injected in the
    # callee. Both alert; ftml must act on the callee only, and the caller recover with it.
    cascade: bool = False
    cascade_kind: str = "latency"
    # Events starting this many steps apart still form one incident (diagnose.group_gap). Not
    # the library's 2: the service's figures cover its last `stats_window` (2) seconds, and a
    # window's median moves only half a window (5 steps) after its rows do, so a caller's
    # event may start a few steps after its callee's (3 seen in the first cascade run).
    group_gap: int = 5
    # watch.group_wait, the incident hold: None leaves it to the watcher's default (auto: the
    # cascade needs it to know its root before acting); else the value (steps or "auto").
    group_wait: int | str | None = None
    # diagnose.group_join (ftml.incidents.JOINS): None leaves the library's default (onset;
    # bench/PROTOCOL_rca.md round 4 kept it); "overlap_callers" lets the cascade's caller,
    # whose event opens a few steps into its callee's, join the callee's incident.
    group_join: str | None = None


    @property
    def fade(self) -> float:
        """Seconds a fault still shows in the service's figures after it ended (they are over
        the requests of the last ``stats_window`` seconds), plus a step."""
        return max(self.stats_window, self.step) + self.step

    @property
    def rules(self) -> dict[str, int]:
        """Event rules in steps: quick to open, quick to close, a short quiet time after."""
        return {"min_windows": self.min_windows, "of_windows": self.of_windows,
                "merge_gap": 5, "cooldown": 8}

    @property
    def engine_cooldown(self) -> float:
        """Seconds after a recovery before the engine acts on the instance again: longer
        than the after-effects of the recovery itself (a restarted process is not quite
        itself for a while), shorter than the time until the next fault on it."""
        return self.engine_cooldown_steps * self.step


@dataclass
class Instance:
    name: str
    entity: str
    port: int
    dir: Path

    @property
    def spec(self) -> Path:
        return self.dir / "spec.json"

    @property
    def config(self) -> Path:
        return self.dir / "config.json"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.jsonl"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def checkpoint(self) -> str:
        return f"{self.name}-config"


def detection(alerts: list[dict[str, Any]], entity: str,
              before: set[str]) -> tuple[str, str, float, str] | None:
    """The first of ``alerts`` (read after a fault's injection) that detects it on ``entity``:
    an alert that opens, or one open at injection (ids in ``before``) revised to a fault's
    cause. The second case is real: a fault injected while a wobble's alert is open joins
    that alert's event (the detector merges runs within its gap), so what the operator sees
    is the open alert revised to the fault's cause. Returns (alert id, cause, seen at, note)."""
    from ftml.diagnose import NOT_A_CAUSE

    for a in alerts:
        if a["entity"] != entity or a["status"] != "firing":
            continue
        if a["id"] not in before and a["revision"] == 0:
            return a["id"], a["cause"], a["seen_at"], ""
        if a["id"] in before and a["revision"] > 0 and a["cause"] not in NOT_A_CAUSE:
            return (a["id"], a["cause"], a["seen_at"],
                    f"joined the alert open at injection (revised to {a['cause']})")
    return None


@dataclass
class FaultResult:
    """What happened to one injected fault; times are epoch seconds (wall clock)."""

    index: int
    kind: str
    entity: str
    injected_at: float
    detected_at: float | None = None
    alert_id: str | None = None
    event_id: str | None = None  # the event the engine acted on
    first_cause: str | None = None  # the cause on the alert when it opened
    diagnosis: str | None = None  # the cause the engine acted on
    confidence: float | None = None
    diagnosed_at: float | None = None
    action_at: float | None = None
    playbook: str | None = None
    steps: list[str] = field(default_factory=list)
    outcome: str | None = None  # recovered | escalated | none
    verified_at: float | None = None
    verified_by: str | None = None  # "engine" (its verify step) or "lab" (after the on-call)
    paged_at: float | None = None
    operator_fixed_at: float | None = None
    skips: list[str] = field(default_factory=list)
    actions: int = 0  # act decisions attributed to this fault
    wrong_action: bool = False
    note: str = ""

    @property
    def detected(self) -> bool:
        return self.detected_at is not None

    @property
    def diagnosed_right(self) -> bool:
        return self.diagnosis == self.kind

    @property
    def recovered(self) -> bool:
        """Verified back to normal, by the path its playbook prescribes."""
        if self.verified_at is None:
            return False
        if self.kind in AUTOMATIC:
            return self.outcome == "recovered" and self.verified_by == "engine"
        return self.paged_at is not None  # pages the on-call, who fixes it

    @property
    def mttr(self) -> float | None:
        return self.verified_at - self.injected_at if self.recovered else None

    def since(self, t: float | None) -> float | None:
        return None if t is None else t - self.injected_at


@dataclass
class CascadeResult:
    """The cascade: a fault in the callee (``fault``, followed as any fault) and what became
    of the caller, which alerts with it and must not be acted on."""

    fault: FaultResult
    caller: str
    caller_alerts: list[str] = field(default_factory=list)  # ids of its alerts meanwhile
    caller_first_cause: str | None = None
    caller_actions: int = 0  # act decisions on the caller: each a wrong action
    caller_skips: list[str] = field(default_factory=list)  # "reason: detail" of its skips
    caller_recovered_at: float | None = None  # its own figures normal again
    groups: dict[str, str] = field(default_factory=dict)  # entity -> group of its first alert

    @property
    def grouped(self) -> bool:
        """The caller's and the callee's alerts carry one incident group."""
        return len(self.groups) == 2 and len(set(self.groups.values())) == 1

    @property
    def acted_on_root(self) -> bool:
        return self.fault.actions >= 1 and not self.fault.wrong_action

    def since(self, t: float | None) -> float | None:
        return self.fault.since(t)


@dataclass
class BenignResult:
    """What a disturbance that is not a fault led to: alerts are allowed, actions are not."""

    index: int
    kind: str
    entity: str
    started_at: float
    ended_at: float | None = None
    alerts: list[str] = field(default_factory=list)  # ids of alerts that opened on it
    first_cause: str | None = None  # the cause on the first of them
    actions: int = 0  # act decisions on the instance during it: each a wrong action

    def since(self, t: float | None) -> float | None:
        return None if t is None else t - self.started_at


class LabError(RuntimeError):
    pass


# --------------------------------------------------------------------------- the lab


class Lab:
    def __init__(self, root: str | Path, settings: Settings | None = None,
                 log=None):
        self.root = Path(root).resolve()
        self.s = settings or Settings()
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.token = secrets.token_hex(2)
        self.instances: list[Instance] = []
        self.loadgen: subprocess.Popen | None = None
        self.watcher: subprocess.Popen | None = None
        self.watch_port: int | None = None
        self.pager: ThreadingHTTPServer | None = None
        self.pages: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []  # every alert record, with "seen_at"
        self._alerts_offset = 0
        self.lock = threading.Lock()
        self.active: dict[str, FaultResult] = {}  # entity -> the fault on it now
        self.thresholds: dict[str, float] = {}
        self.model_dir = self.root / "model"
        self.state_dir = self.root / "state"
        self.history_dir = self.root / "history"
        self.points = None
        self._fixers: list[threading.Thread] = []
        self.samples: list[dict[str, Any]] = []  # the local source, every step
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self.stray_actions: list[dict[str, Any]] = []
        self.benign: list[BenignResult] = []
        self.cascade: CascadeResult | None = None
        self.shops: list[Instance] = []  # the instances faults rotate over (not the cascade's)
        self.callee: Instance | None = None
        self.caller: Instance | None = None
        self.calibration_fraction = 0.25
        self.alarm_threshold = 1.0  # the model's, once trained
        self._logs: list[Any] = []  # log files handed to children
        self._niceness: int | None = None  # this thread's, before the boost

    # -- start and stop -----------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        from ftml.recover import RecoveryPoints

        self.root.mkdir(parents=True, exist_ok=True)
        self._boost_priority()
        self.points = RecoveryPoints(self.state_dir / "checkpoints")
        names = [f"shop{i + 1}-{self.token}" for i in range(self.s.services)]
        if self.s.cascade:
            names += [f"api-{self.token}", f"front-{self.token}"]  # callee, caller
        for name in names:
            inst = Instance(name, f"{HOST}/{name}", free_port(), self.root / "services" / name)
            inst.dir.mkdir(parents=True, exist_ok=True)
            # The local source finds processes by name: the service runs as a link named
            # after the instance, so that ps (and psutil) tell the instances apart.
            link = inst.dir / name
            if not link.exists():
                link.symlink_to(HERE / "service.py")
            write_json(inst.spec, {
                "name": name, "entity": inst.entity, "port": inst.port, "step": self.s.step,
                "config": str(inst.config), "metrics": str(inst.metrics),
                "pidfile": str(inst.dir / "service.pid"), "log": str(inst.dir / "service.log"),
                "argv": [PY, str(link), str(inst.spec)],
                "leak_records_per_s": 40_000, "leak_cap_records": 1_500_000,
                "stats_window": self.s.stats_window,
            })
            self.instances.append(inst)
        self.shops = self.instances[:self.s.services]
        if self.s.cascade:
            self.callee, self.caller = self.instances[-2:]
            # Every request of the caller calls the callee, over loopback (no cache of its own:
            # with one, its median would sit between its cache hits and the callee's answers
            # and flip between them), so its figures are the callee's answers'.
            self.caller_config = {**GOOD_CONFIG, "cache_ratio": 0.0,
                                  "upstream_url": f"{self.callee.url}/api/item"}
        for inst in self.instances:
            write_json(inst.config, self.good_config(inst))
            # The deployed config is the known good recovery point rollbacks return to.
            self.points.create(inst.checkpoint, [inst.config], good=True)
        self.restart(*self.instances)
        self.loadgen = subprocess.Popen(
            [PY, str(HERE / "loadgen.py"), "--rate", str(self.s.rate), "--threads", "4",
             "--swing", str(self.s.swing), "--period", f"{self.s.swing_steps * self.s.step:g}",
             "--out", str(self.root / "services" / "loadgen.jsonl"),
             # The callee's load is the caller's requests: as much as any instance gets, so
             # that it looks like the instances the model learnt faults on.
             *[i.url for i in self.instances if i is not self.callee]],
            stdin=subprocess.DEVNULL, stdout=self._log_file("loadgen.log"),
            stderr=subprocess.STDOUT, start_new_session=True)
        self._start_pager()
        self.log(f"lab {self.root}: {len(self.instances)} instances "
                 f"({', '.join(i.name for i in self.instances)}), load {self.s.rate:g} req/s "
                 f"each, step {self.s.step:g}s")

    def close(self) -> None:
        """Stop everything started, whatever state things are in."""
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(timeout=5)
            try:
                self.save_samples()
            except OSError:
                pass
        for proc in (self.watcher, self.loadgen):
            if proc is not None:
                stop_group(proc)
        self.watcher = self.loadgen = None
        for t in self._fixers:
            t.join(timeout=15)

        def stop(inst: Instance) -> None:
            try:
                supervisor.stop(inst.spec)
            except (RuntimeError, OSError, ValueError):
                pass

        stoppers = [threading.Thread(target=stop, args=(i,)) for i in self.instances]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join(timeout=20)
        sweep(self.marker)
        if self.pager is not None:
            self.pager.shutdown()
            self.pager.server_close()
            self.pager = None
        for f in self._logs:
            f.close()
        self._logs = []
        if self._niceness is not None:  # raising niceness back is always allowed
            os.setpriority(os.PRIO_PROCESS, 0, self._niceness)
            self._niceness = None

    def _boost_priority(self) -> None:
        """Children started from this thread inherit its niceness (Linux: per thread)."""
        if self.s.priority_boost <= 0 or self._niceness is not None:
            return
        before = os.getpriority(os.PRIO_PROCESS, 0)
        try:
            os.setpriority(os.PRIO_PROCESS, 0, before - self.s.priority_boost)
        except PermissionError:
            self.log(f"  (running at niceness {before}: not allowed to raise the priority)")
            return
        self._niceness = before

    def _log_file(self, name: str):
        f = open(self.root / name, "ab")  # noqa: SIM115 - the child writes it; closed in close()
        self._logs.append(f)
        return f

    def processes(self) -> list[int]:
        """Pids of processes that still name the run folder (none after close)."""
        return find_processes(self.marker)

    @property
    def marker(self) -> str:
        """In the command line of every process the lab and its playbooks start (services,
        restart scripts, load generator, watcher) and of nothing else."""
        return str(self.root / "services") + os.sep

    # -- the service: restart, faults, figures --------------------------------------------

    def restart(self, *instances: Instance) -> None:
        """Through the same restart script the playbooks run, so that no service is a child
        of the lab; several instances at once."""
        procs = [(inst, subprocess.Popen([PY, str(HERE / "restart.py"), str(inst.spec)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True))
                 for inst in instances]
        failed = []
        for inst, proc in procs:
            try:
                out, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            if proc.returncode != 0:
                failed.append(f"{inst.name}: {out.strip()}")
        if failed:
            raise LabError("restart failed: " + "; ".join(failed))

    def good_config(self, inst: Instance) -> dict[str, Any]:
        return self.caller_config if inst is self.caller else GOOD_CONFIG

    def switch(self, inst: Instance, kind: str) -> None:
        post_json(f"{inst.url}/fault", {"kind": kind})

    def inject(self, inst: Instance, kind: str) -> None:
        if kind == "bad_config":
            # A deploy: the new config goes out and is checkpointed (not marked good: it
            # has not proven itself). The service notices the file and loads it.
            cfg = json.loads(inst.config.read_text())
            cfg.update(version=int(cfg.get("version", 1)) + 1, upstream=BAD_UPSTREAM)
            write_json(inst.config, cfg)
            self.points.create(inst.checkpoint, [inst.config])
        elif kind in ("memory_leak", "cpu_hog", "latency"):
            self.switch(inst, kind)
        else:
            raise LabError(f"unknown fault {kind!r}")

    def fix(self, inst: Instance, kind: str) -> None:
        """What a human (or the training script) does to end a fault."""
        if kind in ("memory_leak", "cpu_hog"):
            self.restart(inst)
        elif kind == "bad_config":
            cfg = json.loads(inst.config.read_text())
            write_json(inst.config, {**self.good_config(inst),
                                     "version": int(cfg.get("version", 1)) + 1})
            self.points.create(inst.checkpoint, [inst.config], good=True)
        else:
            self.switch(inst, "none")

    def disturb(self, inst: Instance, kind: str) -> None:
        """A benign disturbance, returning when it is over: a deploy restarts the instance
        through the restart script (as a release would); a burst sends ``burst_factor`` times
        the usual load for ``burst_steps`` steps from a second load generator."""
        if kind == "deploy":
            self.restart(inst)
        elif kind == "burst":
            s = self.s
            burst = subprocess.Popen(
                [PY, str(HERE / "loadgen.py"), "--rate", f"{s.rate * s.burst_factor:g}",
                 "--threads", "4", "--swing", "0", "--out",
                 str(self.root / "services" / "burst.jsonl"), inst.url],
                stdin=subprocess.DEVNULL, stdout=self._log_file("burst.log"),
                stderr=subprocess.STDOUT, start_new_session=True)
            try:
                sleep(s.burst_steps * s.step)
            finally:
                stop_group(burst)
        else:
            raise LabError(f"unknown disturbance {kind!r}")

    def stats(self, inst: Instance) -> dict[str, Any]:
        with urllib.request.urlopen(f"{inst.url}/stats", timeout=2.0) as resp:
            return json.loads(resp.read())

    def healthy(self, inst: Instance) -> bool:
        """The service's own figures of its last step are normal (see ``thresholds``)."""
        try:
            st = self.stats(inst)
        except (OSError, ValueError):
            return False
        t = self.thresholds
        lat, err = st.get("latency_p95_ms"), st.get("error_rate")
        return (st.get("fault") == "none" and st.get("config", {}).get("upstream") != BAD_UPSTREAM
                and lat is not None and lat < t.get("latency_p95_ms", 1e9)
                and err is not None and err < t.get("error_rate", 0.1)
                and (st.get("request_rate") or 0.0) > t.get("request_rate", 0.0)
                and (st.get("rss_mb") or 1e9) < t.get("rss_mb", 1e9))

    # -- training history ---------------------------------------------------------------

    def training_plan(self) -> list[list[tuple[Instance, str]]]:
        """Rounds of (instance, fault): each kind ``train_per_kind`` times, spread over the
        instances, ``train_round`` faults at a time but never on every instance: the others
        stay normal beside a faulty neighbour, so that the model learns what a neighbour's
        fault does to them (a CPU hog slows them, a stalled neighbour frees the host and
        makes them faster)."""
        faults = [k for _ in range(self.s.train_per_kind) for k in self.s.kinds]
        # The cascade's callee has faults in the history too, as any instance of a fleet
        # would (its caller is left as it is: what a callee's fault does to a caller is not
        # a fault of the caller). Without its own, a live fault of the callee lay just
        # beyond the open-set cut of the 3 incidents per cause the lab learns from (0.22-0.56
        # against a cut of 0.2 in the first cascade runs): answered unknown, acted on by
        # nobody.
        where_to = self.shops + ([self.callee] if self.callee is not None else [])
        n = len(where_to)
        per = max(1, min(self.s.train_round, n - 1))
        kinds = len(self.s.kinds)

        def where(p: int) -> Instance:  # the p-th fault: each repeat of a kind moves on by one
            return where_to[(p % kinds + p // kinds) % n]

        return [[(where(p), faults[p]) for p in range(r, min(r + per, len(faults)))]
                for r in range(0, len(faults), per)]

    def collect_history(self) -> dict[str, Any]:
        """Run the instances under load with labelled faults; sample ftml's ``local`` source
        meanwhile. Planned restarts (deploys) are part of normal life and not labelled."""
        s = self.s
        self.history_dir.mkdir(parents=True, exist_ok=True)
        incidents: list[dict[str, Any]] = []
        started = time.time()
        self._start_sampler()
        self._wait_history_start()
        self._planned_restarts(s.lead_steps)
        labelled_until: dict[str, float] = {}
        for rnd in self.training_plan():
            # Never two labels at once on an instance: its last fault's windows first end.
            sleep(max((labelled_until.get(i.entity, 0.0) for i, _ in rnd), default=0.0)
                  + s.step - time.time())
            t0 = time.time()
            for inst, kind in rnd:
                self.inject(inst, kind)
            self.log("  training: " + ", ".join(f"{k} on {i.name}" for i, k in rnd))
            sleep(s.hold_steps * s.step)
            for inst, kind in rnd:
                self.fix(inst, kind)
                # Labelled from the injection until the service's own figures no longer hold
                # the fault: they cover its last seconds of requests, so a fixed config or
                # upstream still shows for a while (those rows are not normal); a restarted
                # process reports afresh (its old self reported until it stopped). Windows
                # after that still hold some of it; the next fault on the instance waits
                # until they are gone.
                end = time.time() + (s.step if kind in RESTARTED else s.fade)
                incidents.append({"entity": inst.entity, "start": t0, "end": end,
                                  "cause": kind})
                labelled_until[inst.entity] = end + s.window * s.step
            sleep(s.gap_steps * s.step)
        # The windows of the last faults must be over before calibration starts.
        sleep(max(labelled_until.values(), default=0.0) - time.time())
        tail = time.time()
        self._planned_restarts(s.tail_steps)
        ended = time.time()
        # The alarm threshold is calibrated on the normal tail (restarts included): the
        # lowest score that raises no false alarm there. Faults in that slice would only
        # lift the quantiles it chooses from.
        self.calibration_fraction = round(0.95 * (ended - tail) / (ended - started), 3)
        with self.lock:
            rows = [r for r in self.samples if started <= r["timestamp"] <= ended]
        # The service files go into the history (each service starts a new one at once),
        # whole as raw/NAME.jsonl and with the model's metrics in service.csv.
        (self.history_dir / "raw").mkdir(exist_ok=True)
        raw = []
        for inst in self.instances:
            if inst.metrics.exists():
                os.replace(inst.metrics, self.history_dir / "raw" / f"{inst.name}.jsonl")
                raw.append(pd.read_json(self.history_dir / "raw" / f"{inst.name}.jsonl",
                                        lines=True, dtype=False))
        pd.concat(raw, ignore_index=True)[["entity", "timestamp", *SERVICE_METRICS]].to_csv(
            self.history_dir / "service.csv", index=False)
        with open(self.history_dir / "local.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["entity", "timestamp", *LOCAL_METRICS])
            w.writeheader()
            w.writerows(rows)
        with open(self.history_dir / "incidents.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["entity", "start", "end", "cause"])
            w.writeheader()
            for inc in incidents:
                w.writerow({**inc, "start": f"{inc['start']:.3f}", "end": f"{inc['end']:.3f}"})
        info = {"seconds": time.time() - started, "incidents": len(incidents),
                "local_rows": len(rows)}
        self.log(f"history: {info['seconds']:.0f}s, {len(incidents)} labelled faults, "
                 f"{len(rows)} local samples")
        return info

    def _start_sampler(self) -> None:
        """ftml's ``local`` source, sampled once per step for as long as the lab runs: the
        history's share of it trains the model, the rest is kept (RUN/local.csv) so that a
        run can be scored again offline."""
        if self._sampler is not None:
            return
        from ftml.sources import LocalConfig, LocalSource

        step = self.s.step
        src = LocalSource(LocalConfig(processes=[i.name for i in self.instances], host=HOST))
        src.bind(pd.Timedelta(seconds=step), 0)

        def sample() -> None:
            while True:
                # A little after each step starts, as the watcher's ticks will be.
                now = time.time()
                nxt = (math.floor(now / step) + 1.25) * step
                if self._stop.wait(nxt - now):
                    return
                frame = src.poll(time.time())
                if frame is None:
                    continue
                frame = frame[frame["entity"] != src.host]
                recs = frame[["entity", "timestamp", *LOCAL_METRICS]].to_dict("records")
                for rec in recs:
                    rec["timestamp"] = rec["timestamp"].timestamp()
                with self.lock:
                    self.samples.extend(recs)

        self._sampler = threading.Thread(target=sample, name="lab-sampler", daemon=True)
        self._sampler.start()

    def save_samples(self) -> Path:
        path = self.root / "local.csv"
        with self.lock:
            rows = list(self.samples)
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["entity", "timestamp", *LOCAL_METRICS])
            w.writeheader()
            w.writerows(rows)
        return path

    def _wait_history_start(self) -> None:
        deadline = time.monotonic() + 10 * self.s.step + 10
        while not all(i.metrics.exists() for i in self.instances):
            if time.monotonic() > deadline:
                raise LabError("the services write no metrics")
            time.sleep(0.05)

    def _planned_restarts(self, steps: int) -> None:
        """Normal time with one restart of each instance, staggered, in the middle third."""
        n = len(self.instances)
        per = steps * self.s.step / (3 * n)
        sleep(steps * self.s.step / 3)
        for inst in self.instances:
            self.restart(inst)
            sleep(per)
        sleep(steps * self.s.step / 3)

    # -- model, thresholds, playbooks ---------------------------------------------------

    def train(self) -> dict[str, Any]:
        from ftml import api
        from ftml.config import Config

        s = self.s
        cfg = Config()
        cfg.read.step = f"{round(s.step * 1000)}ms"
        cfg.features.window = s.window
        cfg.features.hour_of_day = False  # minutes of history, not days
        if hasattr(cfg.features, "level_window"):
            cfg.features.level_window = 0  # minutes of history: no slow drift to take off
        for k, v in s.rules.items():
            setattr(cfg.detect, k, v)
        cfg.detect.calibration_fraction = self.calibration_fraction
        # A forest's probabilities are averages over trees: with a dozen labelled faults its
        # confidence means more than a single tree's pure leaves (always 0 or 1).
        cfg.diagnose.classifier = "forest"
        # Each event is diagnosed on its most anomalous windows, and trained on each labelled
        # fault's most anomalous ones: the first windows of a fault hold hardly any of it
        # (a slow upstream shows in a median of 2 s of requests only after a second or two),
        # and learnt under its name they would teach that "nearly normal" means that fault.
        cfg.diagnose.max_event_windows = s.diagnose_windows
        # Four labelled faults of a kind lie close together (a lab repeats itself), so the
        # open-set cut learnt from them (1.25 x their largest nearest-sibling distance) is
        # tighter than where the next live one falls: batch replays of four lab runs put
        # live faults 1.1-2.8x beyond their cause's cut and answered them unknown, though
        # they lay 0.37-0.59 of the way to anything else the model knew (another cause's
        # faults, flagged-but-healthy runs), and a traffic burst 0.95. The distance ratio
        # (bench/PROTOCOL_diagnosis.md, amendment 4: 2/3, one of its two a-priori values;
        # not a default, it changed nothing on the benchmark's sets) keeps such faults named
        # and leaves what lies between causes unknown.
        cfg.diagnose.open_set_ratio = 2 / 3
        cfg.diagnose.group_gap = s.group_gap
        if s.group_join is not None:
            cfg.diagnose.group_join = s.group_join
        paths = [self.history_dir / "service.csv", self.history_dir / "local.csv"]
        started = time.perf_counter()
        result = api.train(paths, self.model_dir, incidents=self.history_dir / "incidents.csv",
                           config=cfg)
        self.thresholds = self._thresholds()
        m = result.manifest
        self.alarm_threshold = float(m["threshold"])
        info = {"seconds": time.perf_counter() - started, "threshold": m["threshold"],
                "causes": m["causes"], "min_confidence": m["min_confidence"],
                "metrics": m["metrics"], "fit_windows": m["training"]["fit_windows"],
                "thresholds": self.thresholds}
        self.log(f"model: {', '.join(m['metrics'])}; causes {', '.join(m['causes'])}; "
                 f"trained in {info['seconds']:.1f}s")
        return info

    def _thresholds(self) -> dict[str, float]:
        """"Back to normal", per figure, from the normal part of the history: what an
        operator reads off a dashboard. Rows in or just after a labelled fault (or the
        restart that ended it) do not count."""
        from ftml.io import label_times, read_incidents, to_ns

        raw = [pd.read_json(p, lines=True, dtype=False)
               for p in sorted((self.history_dir / "raw").glob("*.jsonl"))]
        local = pd.read_csv(self.history_dir / "local.csv")
        inc = read_incidents(self.history_dir / "incidents.csv")
        inc = inc.assign(end=inc["end"] + pd.Timedelta(seconds=self.s.window * self.s.step))

        def normal(frame: pd.DataFrame) -> pd.DataFrame:
            ts = to_ns(pd.to_datetime(frame["timestamp"], unit="s", utc=True))
            return frame[label_times(frame["entity"].to_numpy(dtype=object), ts, inc) < 0]

        svc, loc = normal(pd.concat(raw, ignore_index=True)), normal(local)

        def q(frame: pd.DataFrame, metric: str, p: float) -> float:
            return float(np.nanpercentile(frame[metric].to_numpy(dtype=float), p))

        return {
            "rss_mb": round(q(svc, "rss_mb", 99) * 1.3 + 5, 1),
            "cpu_pct": round(max(3 * q(loc, "cpu_pct", 95), 20.0), 1),
            "error_rate": round(max(0.1, 2 * q(svc, "error_rate", 99)), 3),
            "latency_p95_ms": round(max(3 * q(svc, "latency_p95_ms", 95), 50.0), 1),
            "latency_p50_ms": round(max(3 * q(svc, "latency_p50_ms", 95), 30.0), 1),
            "request_rate": round(0.5 * q(svc, "request_rate", 50), 1),
        }

    def write_playbooks(self) -> Path:
        """examples/live/playbooks.yaml.in (a template), rendered per instance into one file."""
        s = self.s
        text = (HERE / "playbooks.yaml.in").read_text()
        t = self.thresholds
        common = {
            "@PYTHON@": PY, "@RESTART@": str(HERE / "restart.py"),
            "@PAGER@": f"http://127.0.0.1:{self.pager.server_address[1]}/page",
            "@COOLDOWN@": f"{s.engine_cooldown:g}s", "@STEP@": f"{s.step:g}s",
            "@VERIFY_TIMEOUT@": f"{20 * s.step:g}s",
            "@RSS_OK@": f"{t['rss_mb']:g}", "@CPU_OK@": f"{t['cpu_pct']:g}",
            "@ERR_OK@": f"{t['error_rate']:g}", "@LAT_OK@": f"{t['latency_p50_ms']:g}",
        }
        merged: dict[str, Any] | None = None
        for inst in self.instances:
            subs = {**common, "@NAME@": inst.name, "@ENTITY@": inst.entity,
                    "@SPEC@": str(inst.spec), "@CONFIG@": str(inst.config),
                    "@CHECKPOINT@": inst.checkpoint}
            doc = text
            for k, v in subs.items():
                doc = doc.replace(k, v)
            data = yaml.safe_load(doc)
            if merged is None:
                merged = data
            else:
                merged["playbooks"].extend(data["playbooks"])
        path = self.root / "playbooks.yaml"
        path.write_text("# Rendered by examples/live/lab.py from examples/live/playbooks.yaml.in\n"
                        + yaml.safe_dump(merged, sort_keys=False, width=100))
        from ftml.bundle import load_model
        from ftml.playbooks import load_playbooks

        load_playbooks(path, known_metrics=load_model(self.model_dir).metrics)  # fail early
        return path

    # -- the watcher ----------------------------------------------------------------------

    def start_watch(self, timeout: float | None = None) -> None:
        """``ftml watch --mode auto`` as its own process, over the services' metric files and
        the local source; returns once it has scored every instance."""
        playbooks = self.write_playbooks()
        config = self.root / "ftml.yaml"
        config.write_text(yaml.safe_dump({"watch": {
            "local": {"host": HOST, "processes": [i.name for i in self.instances]},
            "backoff_max": f"{max(2.0, 2 * self.s.step):g}s",
            "checkpoint_every": "60s",
            **({} if self.s.group_wait is None else {"group_wait": self.s.group_wait}),
        }}))
        # What the services wrote while the model trained is not the watcher's business (and
        # the training burst of CPU would show in its first windows): new files from here.
        for inst in self.instances:
            if inst.metrics.exists():
                os.replace(inst.metrics, self.history_dir / "raw" / f"{inst.name}.training.txt")
        self._wait_history_start()
        self.watch_port = free_port()
        topology = []
        if self.s.cascade:  # the call graph, as a service mesh or tracing would give it
            (self.root / "topology.csv").write_text(
                f"source,target\n{self.caller.entity},{self.callee.entity}\n")
            topology = ["--topology", str(self.root / "topology.csv")]
        argv = [PY, "-m", "ftml", "watch", "--model", str(self.model_dir), *topology,
                *[a for i in self.instances for a in ("--source", f"file:{i.metrics}")],
                "--source", "local", "--playbooks", str(playbooks), "--mode", "auto",
                "--state", str(self.state_dir), "--sink", f"jsonl:{self.root / 'alerts.jsonl'}",
                "--config", str(config), "--listen", f"127.0.0.1:{self.watch_port}"]
        self.log("watch: " + " ".join(argv[1:]))
        self.watcher = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                        stdout=self._log_file("watch.log"),
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        cwd=str(HERE.parent.parent))
        timeout = timeout or (3 * self.s.window * self.s.step + 30)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.watcher.poll() is not None:
                raise LabError(f"ftml watch exited ({self.watcher.returncode}); see "
                               f"{self.root / 'watch.log'}")
            scored = self._scored_entities()
            if all(i.entity in scored for i in self.instances):
                return
            time.sleep(0.2)
        raise LabError(f"ftml watch scored no windows within {timeout:.0f}s; see "
                       f"{self.root / 'watch.log'}")

    def _scored_entities(self) -> set[str]:
        return set(self._scores())

    def _scores(self) -> dict[str, float]:
        """The watcher's latest window score per entity (its ``/metrics``)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.watch_port}/metrics",
                                        timeout=2.0) as resp:
                text = resp.read().decode()
        except OSError:
            return {}
        out = {}
        for line in text.splitlines():
            if line.startswith("ftml_watch_score{"):
                entity = line.split('entity="', 1)[1].split('"', 1)[0]
                try:
                    out[entity] = float(line.rsplit(" ", 1)[1])
                except (IndexError, ValueError):
                    continue
        return out

    def read_alerts(self) -> list[dict[str, Any]]:
        """New alert records since the last call (each stamped with when the lab saw it)."""
        path = self.root / "alerts.jsonl"
        if not path.exists():
            return []
        with open(path, "rb") as f:
            f.seek(self._alerts_offset)
            data = f.read()
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self._alerts_offset += end + 1
        now = time.time()
        new = [dict(json.loads(line), seen_at=now) for line in data[:end + 1].splitlines()
               if line.strip()]
        self.alerts.extend(new)
        return new

    def audit(self, since: float | None = None) -> list[dict[str, Any]]:
        from ftml.audit import db_path, read_audit

        if not db_path(self.state_dir).exists():
            return []
        return read_audit(self.state_dir, since=since)

    # -- the pager and the on-call ------------------------------------------------------

    def _start_pager(self) -> None:
        lab = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(n) or b"{}")
                except ValueError:
                    body = {}
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                lab._page(body)

            def log_message(self, *args):
                pass

        self.pager = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.pager.daemon_threads = True
        threading.Thread(target=self.pager.serve_forever, name="lab-pager", daemon=True).start()

    def _page(self, body: dict[str, Any]) -> None:
        event = body.get("event") or {}
        rec = {"at": time.time(), "kind": body.get("kind"), "message": body.get("message"),
               "entity": event.get("entity"), "cause": event.get("cause"),
               "event_id": event.get("id")}
        with self.lock:
            self.pages.append(rec)
            with open(self.root / "pages.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            fault = self.active.get(rec["entity"])
            if fault is None or fault.paged_at is not None or rec["kind"] != "escalate":
                return
            fault.paged_at = rec["at"]
        # The on-call acts on the page: whatever the fault really is, they end it.
        inst = self.instance(rec["entity"])

        def respond() -> None:
            time.sleep(self.s.operator_delay)
            try:
                self.fix(inst, fault.kind)
                fault.operator_fixed_at = time.time()
            except (LabError, OSError, subprocess.SubprocessError) as exc:
                fault.note = f"on-call fix failed: {exc}"

        t = threading.Thread(target=respond, name="lab-oncall", daemon=True)
        self._fixers.append(t)
        t.start()

    def instance(self, entity: str) -> Instance:
        return next(i for i in self.instances if i.entity == entity)

    # -- chaos --------------------------------------------------------------------------

    def chaos_plan(self, n: int) -> list[tuple[Instance, str]]:
        """Fault i has kind i mod K, on instance (i + i // K) mod N: never twice in a row on
        one instance, and with 3 instances and 3 or 4 kinds every instance gets every kind
        once before any pair repeats."""
        k, m = self.s.kinds, len(self.shops)
        return [(self.shops[(i + i // len(k)) % m], k[i % len(k)]) for i in range(n)]

    def run_chaos(self, n: int) -> list[FaultResult]:
        results = []
        for i, (inst, kind) in enumerate(self.chaos_plan(n)):
            self.wait_ready(inst)
            r = FaultResult(index=i + 1, kind=kind, entity=inst.entity, injected_at=time.time())
            with self.lock:
                self.active[inst.entity] = r
            self.inject(inst, kind)
            self.log(f"fault {i + 1}/{n}: {kind} on {inst.name}")
            try:
                self.follow(r, inst)
            finally:
                with self.lock:
                    self.active.pop(inst.entity, None)
            self.log("  " + describe(r))
            results.append(r)
        if self.s.cascade:
            self.cascade = self.run_cascade()
        self.benign = self.run_benign()
        self.settle()
        self.attribute(results)
        return results

    def run_cascade(self) -> CascadeResult:
        """The callee goes wrong (``cascade_kind``) while the caller calls it: both alert.
        The callee is followed as any fault; the caller must recover with it, untouched."""
        s = self.s
        callee, caller = self.callee, self.caller
        self.wait_ready(callee)
        self.wait_ready(caller)
        kind = s.cascade_kind
        r = FaultResult(index=0, kind=kind, entity=callee.entity, injected_at=time.time())
        c = CascadeResult(fault=r, caller=caller.entity)
        self.read_alerts()
        before = self._alert_state(caller.entity)[0]
        with self.lock:
            self.active[callee.entity] = r
        self.inject(callee, kind)
        self.log(f"cascade: {kind} on {callee.name}, which {caller.name} calls")
        try:
            self.follow(r, callee)
        finally:
            with self.lock:
                self.active.pop(callee.entity, None)
        deadline = r.injected_at + s.deadline_steps * s.step
        while time.time() < deadline:
            if self.healthy(caller):
                c.caller_recovered_at = time.time()
                break
            time.sleep(0.1)
        # The caller's alert resolves, and every decision on it is in the audit.
        settle = time.monotonic() + (s.window + 2 * s.rules["merge_gap"]) * s.step + 2
        while time.monotonic() < settle:
            self.read_alerts()
            if not self._alert_state(caller.entity)[0] - before:
                break
            time.sleep(0.25)
        for a in self.alerts:
            if a["status"] != "firing" or a["id"] in before or a["seen_at"] < r.injected_at:
                continue
            if a["entity"] == caller.entity and a["id"] not in c.caller_alerts:
                c.caller_alerts.append(a["id"])
                c.caller_first_cause = c.caller_first_cause or a["cause"]
            if a["entity"] in (caller.entity, callee.entity) and a["revision"] == 0:
                c.groups.setdefault(a["entity"], a.get("group"))
        for x in self.audit(since=r.injected_at - 1):
            if x["entity"] == caller.entity and x["kind"] == "decision" and \
                    x["at"] >= r.injected_at and x["decision"] == "skip":
                text = f"{x['reason']}: {x['detail']}"
                if text not in c.caller_skips:
                    c.caller_skips.append(text)
        self.log("  " + describe_cascade(c))
        return c

    def run_benign(self) -> list[BenignResult]:
        """Each of ``Settings.benign`` once, on the instances in turn, each after the instance
        is quiet; then as long as a fault's windows would take to open an event, be diagnosed
        and be acted on. What the watcher did meanwhile is collected by :meth:`attribute`."""
        s = self.s
        out = []
        for i, kind in enumerate(s.benign):
            inst = self.shops[i % len(self.shops)]
            self.wait_ready(inst)
            b = BenignResult(index=i + 1, kind=kind, entity=inst.entity, started_at=time.time())
            self.log(f"benign {i + 1}/{len(s.benign)}: {kind} on {inst.name}")
            self.disturb(inst, kind)
            sleep(s.fade + (s.window + s.of_windows + 2 * s.rules["merge_gap"]) * s.step)
            b.ended_at = time.time()
            self.read_alerts()
            seen = self._benign_alerts(b)
            self.log("  " + (f"alerted as {', '.join(a['cause'] for a in seen)}" if seen
                             else "no alert"))
            out.append(b)
        return out

    def _benign_alerts(self, b: BenignResult) -> list[dict[str, Any]]:
        """Alert records of the instance that opened while the disturbance showed."""
        lo = b.started_at - self.s.window * self.s.step
        return [a for a in self.alerts if a["entity"] == b.entity and a["status"] == "firing"
                and lo <= pd.Timestamp(a["starts_at"]).timestamp() <= self.benign_end(b)]

    def wait_ready(self, inst: Instance) -> None:
        """Before a fault: the instance is back to normal, its last alert resolved a detector
        cooldown ago, the engine's cooldown after its last recovery has passed, and the
        watcher's latest score of it has stayed under the alarm threshold for longer than
        the detector's merge gap: a fault injected while a wobble's windows are flagged
        joins the wobble's run of windows, and that run may be one the detector's cooldown
        suppresses, or whose alert was decided on before the fault."""
        s = self.s
        deadline = time.monotonic() + s.deadline_steps * s.step
        quiet_since = None
        while time.monotonic() < deadline:
            self.read_alerts()
            now = time.time()
            firing, last_resolved = self._alert_state(inst.entity)
            results = [r for r in self.audit(since=now - 3600)
                       if r["entity"] == inst.entity and r["kind"] == "result"]
            last_run = max((r["at"] for r in results), default=0.0)
            score = self._scores().get(inst.entity)
            if (not firing and now - last_resolved > (s.rules["cooldown"] + 2) * s.step
                    and now - last_run > s.engine_cooldown + s.step
                    and score is not None and score < self.alarm_threshold
                    and self.healthy(inst)):
                quiet_since = quiet_since or now
                if now - quiet_since >= (s.rules["merge_gap"] + 2) * s.step:
                    return
            else:
                quiet_since = None
            time.sleep(0.25)
        self.log(f"  {inst.name} not quiet after {s.deadline_steps} steps; injecting anyway")

    def _alert_state(self, entity: str) -> tuple[set[str], float]:
        firing: set[str] = set()
        last_resolved = 0.0
        for a in self.alerts:
            if a["entity"] != entity:
                continue
            if a["status"] == "firing":
                firing.add(a["id"])
            else:
                firing.discard(a["id"])
                last_resolved = max(last_resolved, a["seen_at"])
        return firing, last_resolved

    def follow(self, r: FaultResult, inst: Instance) -> None:
        """Watch alerts, the audit and the pager until the fault is verified recovered,
        escalated and fixed by the on-call, or its deadline passes."""
        s = self.s
        deadline = r.injected_at + s.deadline_steps * s.step
        before = self._alert_state(r.entity)[0]  # alerts of the instance open already
        while time.time() < deadline:
            new = self.read_alerts()
            found = detection(new, r.entity, before) if r.alert_id is None else None
            if found is not None:
                r.alert_id, r.first_cause, r.detected_at, note = found
                r.note = r.note or note
            self._from_audit(r)
            if r.outcome == "recovered" and r.verified_at is not None:
                return
            if r.kind not in AUTOMATIC and r.operator_fixed_at is not None:
                if self._verify_by_lab(r, inst, deadline):
                    return
            if r.outcome == "escalated" and r.kind in AUTOMATIC and r.operator_fixed_at:
                self._verify_by_lab(r, inst, deadline)
                r.note = r.note or "escalated: fixed by the on-call"
                return
            time.sleep(0.1)
        r.note = r.note or f"no recovery within {s.deadline_steps * s.step:g}s"
        self.log(f"  {r.note}: the on-call cleans up")
        if r.operator_fixed_at is None:
            self.fix(inst, r.kind)
            r.operator_fixed_at = time.time()

    def _verify_by_lab(self, r: FaultResult, inst: Instance, deadline: float) -> bool:
        while time.time() < deadline:
            if self.healthy(inst):
                if r.verified_at is None:
                    r.verified_at, r.verified_by = time.time(), "lab"
                return True
            time.sleep(0.1)
        return False

    def _from_audit(self, r: FaultResult) -> None:
        recs = [x for x in self.audit(since=r.injected_at - 1) if x["entity"] == r.entity
                and x["at"] >= r.injected_at]
        for x in recs:
            if x["kind"] == "decision":
                if x["decision"] == "act" and r.action_at is None:
                    r.action_at, r.playbook = x["at"], x["playbook"]
                    r.diagnosis, r.confidence, r.diagnosed_at = x["cause"], x["confidence"], x["at"]
                    r.event_id = x["event_id"]
                elif x["decision"] == "skip":
                    text = f"{x['reason']}: {x['detail']}"
                    if text not in r.skips:
                        r.skips.append(text)
                    if r.diagnosis is None:
                        r.diagnosis, r.confidence = x["cause"], x["confidence"]
                        r.diagnosed_at = x["at"]
            elif x["kind"] == "step" and r.event_id == x["event_id"]:
                label = f"{x['action']}:{x['decision']}"
                if label not in r.steps and len(r.steps) < 8:
                    r.steps.append(label)
                if x["verified"] == 1 and r.verified_at is None:
                    ver = json.loads(x["verification"] or "{}")
                    r.verified_at, r.verified_by = float(ver.get("at", x["at"])), "engine"
            elif x["kind"] == "result" and r.event_id == x["event_id"]:
                r.outcome = x["decision"]

    def settle(self) -> None:
        """After the last fault: wait (bounded) until every alert has resolved."""
        s = self.s
        deadline = time.monotonic() + (s.window + 2 * s.rules["merge_gap"]) * s.step + 2
        while time.monotonic() < deadline:
            self.read_alerts()
            if not any(self._alert_state(i.entity)[0] for i in self.instances):
                return
            time.sleep(0.25)

    def attribute(self, results: list[FaultResult]) -> None:
        """Every act decision belongs to the fault on its instance at the time; the first is
        the fault's action, more are repeats, and one outside any fault (or with another
        fault's playbook) is a wrong action."""
        acts = [x for x in self.audit() if x["kind"] == "decision" and x["decision"] == "act"]
        self.stray_actions = []
        for b in self.benign:
            b.actions, b.alerts, b.first_cause = 0, [], None
            for a in self._benign_alerts(b):
                if a["id"] not in b.alerts:
                    b.alerts.append(a["id"])
                    b.first_cause = b.first_cause or a["cause"]
        c = self.cascade
        if c is not None:
            c.fault.actions, c.fault.wrong_action, c.caller_actions = 0, False, 0
        for x in acts:
            owner = None
            for r in [*results, *([c.fault] if c is not None else [])]:
                lo, hi = self.fault_span(r)
                if x["entity"] == r.entity and lo <= x["at"] <= hi:
                    owner = r
            if owner is None and c is not None and x["entity"] == c.caller:
                lo, hi = self.fault_span(c.fault)
                if lo <= x["at"] <= hi:
                    c.caller_actions += 1  # a symptom acted on: wrong, counted with the cascade
                    continue
            if owner is None:
                self.stray_actions.append(x)
                for b in self.benign:
                    if x["entity"] == b.entity and b.started_at <= x["at"] <= self.benign_end(b):
                        b.actions += 1
                continue
            owner.actions += 1
            expected = EXPECTED_PLAYBOOK[owner.kind]
            if not str(x["playbook"]).startswith(expected + "."):
                owner.wrong_action = True

    def fault_span(self, r: FaultResult) -> tuple[float, float]:
        """From the injection until the windows no longer see the fault (its end plus a
        window and a merge gap): alerts and actions on the instance then are the fault's."""
        end = max(t for t in (r.verified_at, r.operator_fixed_at, r.action_at, r.injected_at)
                  if t is not None)
        return r.injected_at, end + (self.s.window + 2 * self.s.rules["merge_gap"]) * self.s.step

    def benign_end(self, b: BenignResult) -> float:
        """Until the windows no longer see the disturbance: alerts and actions then are its."""
        return (b.ended_at or b.started_at) + (self.s.window + 2 * self.s.rules["merge_gap"]) \
            * self.s.step

    def false_alarms(self, results: list[FaultResult]) -> list[dict[str, Any]]:
        """Alerts that opened on an instance with no fault and no benign disturbance on it at
        the time (those are counted with the disturbance)."""
        out, seen = [], set()
        for a in self.alerts:
            if a["status"] != "firing" or a["id"] in seen:
                continue
            seen.add(a["id"])
            start = pd.Timestamp(a["starts_at"]).timestamp()
            if any(a["entity"] == r.entity and lo - self.s.window * self.s.step <= start <= hi
                   for r in results for lo, hi in [self.fault_span(r)]):
                continue
            c = self.cascade
            if c is not None and a["entity"] in (c.fault.entity, c.caller):
                lo, hi = self.fault_span(c.fault)
                if lo - self.s.window * self.s.step <= start <= hi:
                    continue  # the cascade's: its root's alert, or its caller's symptom
            if any(a in self._benign_alerts(b) for b in self.benign):
                continue
            out.append(a)
        return out


# --------------------------------------------------------------------------- summary


def summarize(lab: Lab, results: list[FaultResult]) -> dict[str, Any]:
    n = len(results)
    detected = [r for r in results if r.detected]
    right = [r for r in detected if r.diagnosed_right]
    recovered = [r for r in results if r.recovered]
    mttr = [r.mttr for r in recovered]
    ttd = [r.detected_at - r.injected_at for r in detected]
    stray = getattr(lab, "stray_actions", [])
    wrong = sum(r.wrong_action for r in results) + len(stray)
    repeated = sum(max(0, r.actions - 1) for r in results)
    c = getattr(lab, "cascade", None)
    cascade = None
    if c is not None:
        # Counted apart from the faults' figures; its wrong and repeated actions count too.
        wrong += c.caller_actions + int(c.fault.wrong_action)
        repeated += max(0, c.fault.actions - 1)
        cascade = {
            "kind": c.fault.kind, "root": c.fault.entity, "caller": c.caller,
            "root_detected": c.fault.detected, "root_diagnosis": c.fault.diagnosis,
            "root_actions": c.fault.actions, "root_playbook": c.fault.playbook,
            "acted_on_root": c.acted_on_root, "root_recovered": c.fault.recovered,
            "root_mttr_s": c.fault.mttr, "caller_alerted": bool(c.caller_alerts),
            "caller_first_cause": c.caller_first_cause, "caller_actions": c.caller_actions,
            "caller_skips": c.caller_skips, "grouped": c.grouped,
            "caller_recovered_after_s": c.since(c.caller_recovered_at)}
    out = {
        "faults": n,
        "detected": len(detected),
        "detection_rate": len(detected) / n if n else None,
        "diagnosed_right": len(right),
        "diagnosis_accuracy": len(right) / len(detected) if detected else None,
        "recovered": len(recovered),
        "recovery_rate": len(recovered) / n if n else None,
        "recovered_without_human": sum(r.recovered and r.kind in AUTOMATIC for r in results),
        "mttr_median_s": statistics.median(mttr) if mttr else None,
        "mttr_max_s": max(mttr) if mttr else None,
        "ttd_median_s": statistics.median(ttd) if ttd else None,
        "ttd_max_s": max(ttd) if ttd else None,
        "wrong_actions": wrong,
        "repeated_actions": repeated,
        "false_alarms": len(lab.false_alarms(results)),
        "benign": len(lab.benign),
        "benign_alerted": sum(bool(b.alerts) for b in lab.benign),
        "benign_actions": sum(b.actions for b in lab.benign),
        "step_s": lab.s.step,
    }
    if cascade is not None:
        out["cascade"] = cascade
    return out


GOALS = (
    ("detection_rate", ">=", 1.0, "all faults detected"),
    ("diagnosis_accuracy", ">=", 0.9, ">= 90 % diagnosed right"),
    ("recovery_rate", ">=", 0.95, ">= 95 % recovered and verified"),
    ("mttr_median_s", "<=", 180.0, "median MTTR <= 3 min"),
    ("wrong_actions", "<=", 0, "no wrong actions"),
    ("benign_actions", "<=", 0, "no action on a benign disturbance"),
    ("repeated_actions", "<=", 0, "no repeated actions"),
)
#: Goals of the cascade, when it ran (keys of summary["cascade"]).
CASCADE_GOALS = (
    ("acted_on_root", "is", True, "cascade: acted on the root"),
    ("caller_actions", "<=", 0, "cascade: 0 actions on the caller"),
    ("caller_recovered_after_s", "<=", None, "cascade: the caller recovered with the root"),
    ("grouped", "is", True, "cascade: one incident group"),
)


def goals_met(summary: dict[str, Any]) -> list[tuple[str, bool]]:
    out = []
    for key, op, target, text in GOALS:
        v = summary.get(key)
        if v is None and not summary.get("faults"):
            continue  # no fault injected (the cascade alone): nothing to rate
        ok = v is not None and (v >= target if op == ">=" else v <= target)
        out.append((text, ok))
    cascade = summary.get("cascade")
    if cascade is not None:
        for key, op, target, text in CASCADE_GOALS:
            v = cascade.get(key)
            ok = (v is target if op == "is" else
                  v is not None and (target is None or v <= target))
            out.append((text, ok))
    return out


def describe(r: FaultResult) -> str:
    def t(x: float | None) -> str:
        return "-" if x is None else f"+{x:.1f}s"

    parts = [f"detected {t(r.since(r.detected_at))}",
             f"diagnosed {r.diagnosis or r.first_cause or '-'}"
             + (f" ({r.confidence:.2f})" if r.confidence is not None else ""),
             f"acted {t(r.since(r.action_at))} {r.playbook or ''}".rstrip()]
    if r.paged_at:
        parts.append(f"paged {t(r.since(r.paged_at))}")
    parts.append(f"verified {t(r.since(r.verified_at))}"
                 + (f" by {r.verified_by}" if r.verified_by else ""))
    if r.note:
        parts.append(r.note)
    return ", ".join(parts)


def describe_cascade(c: CascadeResult) -> str:
    def t(x: float | None) -> str:
        return "-" if x is None else f"+{x:.1f}s"

    r = c.fault
    caller = c.caller.split("/")[-1]
    said = (f"alerted as {c.caller_first_cause}" if c.caller_alerts else "no alert")
    skips = "; ".join(x.split(":", 1)[0] for x in c.caller_skips) or "none"
    return (f"root {r.entity.split('/')[-1]}: {describe(r)}, {r.actions} action(s); caller "
            f"{caller}: {said}, {c.caller_actions} action(s) (skips: {skips}), recovered "
            f"{t(c.since(c.caller_recovered_at))}; "
            f"{'one incident group' if c.grouped else 'NOT one group: ' + str(c.groups)}")


def describe_benign(b: BenignResult) -> str:
    said = f"alerted ({len(b.alerts)}, first as {b.first_cause})" if b.alerts else "no alert"
    return f"{said}, {b.actions} action(s)"


def report(lab: Lab, results: list[FaultResult], summary: dict[str, Any],
           trail: bool = True) -> str:
    from ftml.audit import format_audit

    lines = ["", "Faults (times from injection, wall clock):", ""]
    head = f"{'#':>3}  {'fault':<12} {'instance':<16} {'detect':>7} {'diagnosis':<12} " \
           f"{'right':<5} {'action':>7} {'playbook':<22} {'verified':>8} {'by':<6} " \
           f"{'acts':>4}  note"
    lines.append(head)
    lines.append("-" * len(head))

    def t(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}s"

    for r in results:
        lines.append(
            f"{r.index:>3}  {r.kind:<12} {r.entity.split('/')[-1]:<16} "
            f"{t(r.since(r.detected_at)):>7} {(r.diagnosis or r.first_cause or '-'):<12} "
            f"{'yes' if r.diagnosed_right else 'no':<5} {t(r.since(r.action_at)):>7} "
            f"{(r.playbook or '-').split('.')[0]:<22} {t(r.since(r.verified_at)):>8} "
            f"{r.verified_by or '-':<6} {r.actions:>4}  {r.note}")
    s = summary

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.0f} %"

    lines += [
        "",
        f"detection rate      {pct(s['detection_rate'])} ({s['detected']}/{s['faults']}), "
        f"time to detect median {t(s['ttd_median_s'])}, max {t(s['ttd_max_s'])}",
        f"diagnosis accuracy  {pct(s['diagnosis_accuracy'])} "
        f"({s['diagnosed_right']}/{s['detected']} detected)",
        f"recovery success    {pct(s['recovery_rate'])} ({s['recovered']}/{s['faults']} "
        f"verified; {s['recovered_without_human']} by ftml alone, the rest paged by design)",
        f"MTTR                median {t(s['mttr_median_s'])}, max {t(s['mttr_max_s'])} "
        f"(injection -> verified recovery, wall clock, step {s['step_s']:g}s)",
        f"wrong actions       {s['wrong_actions']}",
        f"repeated actions    {s['repeated_actions']}",
        f"false alarms        {s['false_alarms']} (alerts with no fault on their instance)",
        f"benign disturbances {s['benign']} ({', '.join(b.kind for b in lab.benign) or '-'}): "
        f"{s['benign_alerted']} alerted, {s['benign_actions']} acted on",
        "",
        "Goals: " + "; ".join(f"{text}: {'met' if ok else 'MISSED'}"
                              for text, ok in goals_met(s)),
    ]
    c = getattr(lab, "cascade", None)
    if c is not None:
        cs = s["cascade"]
        lines += ["", "Cascade (counted apart from the faults above):",
                  f"  {c.fault.kind} in {cs['root'].split('/')[-1]}, called by "
                  f"{cs['caller'].split('/')[-1]}: "
                  + (f"acted on root ({str(cs['root_playbook']).split('.')[0]}), "
                     if cs["acted_on_root"] else "NOT acted on the root, ")
                  + f"{cs['caller_actions']} action(s) on the caller",
                  "  " + describe_cascade(c)]
        lines += [f"  caller skipped: {x}" for x in c.caller_skips]
    if lab.benign:
        lines += ["", "Benign disturbances (an alert is allowed, an action is not):"]
        lines += [f"  {b.index}. {b.kind} on {b.entity.split('/')[-1]}: {describe_benign(b)}"
                  for b in lab.benign]
    fa = lab.false_alarms(results)
    if fa:
        lines += ["", "False alarms:"]
        lines += [f"  {a['at']} {a['entity']} {a['cause']} (score {a['event']['score']:.2f})"
                  for a in fa]
    if trail:
        cols = ("ts", "entity", "cause", "playbook", "kind", "decision", "reason", "action",
                "exit_code", "duration_s", "verified", "detail")
        recs = lab.audit()
        for rec in recs:
            rec["entity"] = str(rec["entity"]).split("/")[-1]
            rec["playbook"] = str(rec["playbook"] or "-").split(".")[0]
        lines += ["", f"Audit trail ({len(recs)} records, {lab.state_dir / 'state.db'}):", "",
                  format_audit(recs, columns=cols, max_width=60)]
    return "\n".join(lines)


def results_table(results: list[FaultResult]) -> list[dict[str, Any]]:
    return [{**asdict(r), "mttr": r.mttr, "recovered": r.recovered} for r in results]


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_json(path: Path, data: Any) -> None:
    """Atomically, as a deploy tool would: readers see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def post_json(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5.0) as resp:
        return json.loads(resp.read() or b"{}")


def sleep(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM to the process group, SIGKILL after ``grace``; reaps the leader."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # the rest of the group, if the leader left children behind
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.poll()


def find_processes(marker: str) -> list[int]:
    """Pids whose command line contains ``marker`` (a path in the run folder: unique); never
    this process or its ancestors (whose arguments may name the run folder too)."""
    mine = ancestors()
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            cmd = Path(entry.path, "cmdline").read_bytes()
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X") and marker.encode() in cmd:
            out.append(int(entry.name))
    return out


def ancestors() -> set[int]:
    out, pid = set(), os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return out


def sweep(marker: str, timeout: float = 10.0) -> list[int]:
    """SIGTERM, then SIGKILL, every process naming ``marker``; returns those found."""
    found = find_processes(marker)
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, timeout)):
        pids = find_processes(marker)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and find_processes(marker):
            time.sleep(0.05)
    return found
