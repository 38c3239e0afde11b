"""Recovery: decide whether to act on an event, run the playbook's ladder, verify, audit.

The engine (:mod:`ftml.recover.engine`, whose docstring tells how it decides and acts) and
what it is made of, one module per seam; each imports only the ones above it:

* ``results``: what the engine decides and what came of it (``Decision``, ``Reason``, ...);
* ``guards``: the checks between a matched playbook and its action, in order (``GUARDS``);
* ``templates``: an action's placeholders filled from the event;
* ``points``: recovery points, the transactional file store behind checkpoint and rollback;
* ``actions``: the runners that carry out a step's action (real or simulated), and
  how an action reads once filled in (``describe_action``): a new action kind is a
  branch of each;
* ``metrics``: where verification reads metrics;
* ``state``: the engine's memory (runs, approvals) in the SQLite state database;
* ``approvals``: pending actions that wait for a human;
* ``engine``: ``RecoveryEngine``;
* ``replays``: past events through the engine, scored against known incidents.

The clock every timing reads is :mod:`ftml.clock`. Every public name is importable from
``ftml.recover`` itself.
"""

from __future__ import annotations

from ftml.clock import Clock, FakeClock, SystemClock
from ftml.recover.actions import (
    ActionRunner,
    LocalActions,
    LogNotifier,
    Notifier,
    SimulatedActions,
    describe_action,
)
from ftml.recover.approvals import (
    Approval,
    approve,
    list_approvals,
    pending_approvals,
    reject,
    settle_approval,
)
from ftml.recover.engine import RecoveryEngine
from ftml.recover.guards import (
    GUARDS,
    Guard,
    GuardContext,
    aftermath,
    busy,
    circuit_open,
    cooling_down,
    pending_approval,
    rate_limited,
)
from ftml.recover.metrics import FrameMetricReader, MetricReader
from ftml.recover.points import Checkpoint, RecoveryPoints
from ftml.recover.replays import EventsRecoveredReader, ReplayResult, replay
from ftml.recover.results import (
    SKIP_REASONS,
    ActionResult,
    Decision,
    DecisionKind,
    Reason,
    RunResult,
    StepResult,
)
from ftml.recover.templates import render_argv, render_body, render_url

__all__ = [
    "GUARDS", "SKIP_REASONS", "ActionResult", "ActionRunner", "Approval", "Checkpoint", "Clock",
    "Decision", "DecisionKind", "EventsRecoveredReader", "FakeClock", "FrameMetricReader",
    "Guard", "GuardContext", "LocalActions", "LogNotifier", "MetricReader", "Notifier",
    "Reason", "RecoveryEngine", "RecoveryPoints", "ReplayResult", "RunResult",
    "SimulatedActions", "StepResult", "SystemClock", "aftermath", "approve", "busy",
    "circuit_open", "cooling_down", "describe_action", "list_approvals", "pending_approval",
    "pending_approvals", "rate_limited", "reject", "render_argv", "render_body", "render_url",
    "replay", "settle_approval",
]
