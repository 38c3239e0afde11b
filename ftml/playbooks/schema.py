"""What a playbook file becomes: the action kinds (:data:`ACTION_KINDS`, one row each), the
frozen dataclasses of steps, actions, verify conditions, defaults and guards, and
:class:`PlaybookSet`, which matches events to playbooks."""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ftml.config import RECOVERY_MODES
from ftml.events import Event, iso
from ftml.playbooks.text import _quote_arg, format_seconds

#: How often a step may run: record only, wait for a human, or act.
MODES = RECOVERY_MODES

@dataclass(frozen=True)
class ActionKind:
    """One built-in action kind: one row of :data:`ACTION_KINDS`, all that the schema, the
    ladder and the docs need to know of it (the recovery engine runs it by its class)."""

    name: str
    reader: str  # the _Reader method that parses its argument
    changes: bool  # it changes the system: verified, and its success ends the ladder


ACTION_KINDS = {k.name: k for k in (
    ActionKind("exec", "read_exec", changes=True),
    ActionKind("http", "read_http", changes=True),
    ActionKind("checkpoint", "read_checkpoint", changes=False),
    ActionKind("rollback", "read_rollback", changes=True),
    ActionKind("notify", "read_notify", changes=False),
    ActionKind("escalate", "read_escalate", changes=False),
)}
#: What a playbook acts on: the alerting entity, or its incident group's top suspect.
TARGETS = ("entity", "root")
#: Built-in action kinds; templates add names that stand for ``exec``.
ACTIONS = tuple(ACTION_KINDS)


#: Causes that ftml's simulator produces; the example file covers each of them.
SIMULATOR_CAUSES = ("memory_leak", "cpu_saturation", "network_degradation", "disk_full",
                    "pool_exhaustion", "bad_deploy", "slow_dependency")

#: Metric names that ftml's simulator produces.
SIMULATOR_METRICS = ("cpu_pct", "mem_used_pct", "latency_p95_ms", "error_rate", "request_rate",
                     "disk_used_pct", "io_wait_pct", "net_retransmits", "net_errors", "threads",
                     "connections", "gc_pause_ms")


#: The verify condition that names no metric: ``recovered`` or ``recovered for N windows``.
#: It holds once the entity's anomaly score is under the model's threshold for its last N
#: windows, or its event has resolved, so one playbook serves a model of any metrics. It is
#: read as the pseudo-metric ``ftml:recovered:N`` (1 when it holds), which the metric
#: reader of ``ftml watch`` answers.
RECOVERED_PREFIX = "ftml:recovered:"
RECOVERED_WINDOWS = 3


_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "==": operator.eq, "!=": operator.ne,
}


@dataclass(frozen=True)
class SecretRef:
    """A value read from an environment variable when the action runs, never stored."""

    env: str


@dataclass(frozen=True)
class Condition:
    """``metric op threshold``, e.g. ``mem_used_pct < 70``."""

    metric: str
    op: str
    threshold: float

    def holds(self, value: float | None) -> bool:
        # A missing or NaN reading proves nothing, so it never counts as recovered.
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        return _OPS[self.op](float(value), self.threshold)

    def __str__(self) -> str:
        if self.metric.startswith(RECOVERED_PREFIX):
            n = self.metric[len(RECOVERED_PREFIX):]
            return f"recovered for {n} window{'' if n == '1' else 's'}"
        return f"{self.metric} {self.op} {self.threshold:g}"


@dataclass(frozen=True)
class Verify:
    """Conditions that must all hold at one reading before ``timeout`` seconds pass."""

    conditions: tuple[Condition, ...]
    timeout: float
    interval: float

    def __str__(self) -> str:
        return f"{' and '.join(map(str, self.conditions))} within {format_seconds(self.timeout)}"


@dataclass(frozen=True)
class ExecAction:
    """Run ``argv`` without a shell; placeholders are filled inside single arguments."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str | SecretRef], ...] = ()
    template: str | None = None  # the template name this step came from, if any
    kind: str = field(default="exec", init=False)

    def describe(self) -> str:
        return " ".join(_quote_arg(a) for a in self.argv)


@dataclass(frozen=True)
class HttpAction:
    """POST JSON to ``url``; header values may be secrets read from the environment."""

    url: str
    headers: tuple[tuple[str, str | SecretRef], ...] = ()
    body: Any = None  # None: the event as JSON
    kind: str = field(default="http", init=False)

    def describe(self) -> str:
        return f"POST {self.url}"


@dataclass(frozen=True)
class CheckpointAction:
    """Copy ``paths`` into the versioned recovery-point store under ``name``."""

    name: str
    paths: tuple[str, ...]
    good: bool = False  # mark the new checkpoint good at once
    kind: str = field(default="checkpoint", init=False)

    def describe(self) -> str:
        return f"checkpoint {self.name}: {', '.join(self.paths)}" + (" (good)" if self.good else "")


@dataclass(frozen=True)
class RollbackAction:
    """Restore checkpoint ``name``: ``version`` if given, else the latest one marked good."""

    name: str
    version: str | None = None
    kind: str = field(default="rollback", init=False)

    def describe(self) -> str:
        return f"rollback {self.name} to {self.version or 'latest good'}"


@dataclass(frozen=True)
class NotifyAction:
    """Tell people: through the engine's notifier and, if ``url`` is set, a JSON POST."""

    message: str
    url: str | None = None
    headers: tuple[tuple[str, str | SecretRef], ...] = ()
    escalate: bool = False  # an escalation ends the ladder
    kind: str = field(default="notify", init=False)

    def __post_init__(self):
        object.__setattr__(self, "kind", "escalate" if self.escalate else "notify")

    def describe(self) -> str:
        return f"{self.kind} {self.message!r}" + (f" via {self.url}" if self.url else "")


Action = ExecAction | HttpAction | CheckpointAction | RollbackAction | NotifyAction


@dataclass(frozen=True)
class Step:
    name: str
    action: Action
    timeout: float
    verify: Verify | None = None
    line: int = 0

    @property
    def ends_ladder_on_success(self) -> bool:
        """Whether success of this step means the incident is handled.

        Checkpoints and notifications prepare or inform; they never end a ladder.
        """
        return ACTION_KINDS[self.action.kind].changes

    def describe(self) -> str:
        head = self.action.describe()
        if self.action.kind == "exec" and self.name != "exec":
            head = f"{self.name}: {head}"
        if self.verify is not None:
            head += f"  [verify {self.verify}]"
        return head


@dataclass(frozen=True)
class Playbook:
    name: str
    cause: str
    steps: tuple[Step, ...]
    entity: str = "*"
    min_confidence: float | None = None  # None: the file's default
    mode: str | None = None  # None: the file's default
    escalate: NotifyAction | None = None  # run when the ladder is exhausted
    line: int = 0
    # "entity": act on the alerting entity; "root": on its incident group's top suspect
    target: str = "entity"

    @property
    def digest(self) -> str:
        """Fingerprint of what this playbook does, so an approval runs exactly what was approved."""
        data = dataclasses.asdict(self)
        data.pop("line")
        if data["target"] == "entity":  # the default: digests of older playbooks stay
            data.pop("target")
        for step in data["steps"]:
            step.pop("line")
        text = json.dumps(data, sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def matches(self, event: Event) -> bool:
        """Cause and entity match; confidence is checked separately (see ``PlaybookSet.match``)."""
        cause_ok = self.cause == "*" or self.cause == event.cause
        return cause_ok and fnmatch.fnmatchcase(event.entity, self.entity)


@dataclass(frozen=True)
class Backoff:
    initial: float = 60.0
    factor: float = 2.0
    max: float = 1800.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failed attempts in a row."""
        if failures <= 0:
            return 0.0
        return min(self.initial * self.factor ** (failures - 1), self.max)


@dataclass(frozen=True)
class VerifyDefaults:
    timeout: float = 300.0
    interval: float = 15.0


@dataclass(frozen=True)
class Defaults:
    mode: str = "dry_run"
    min_confidence: float = 0.5
    cooldown: float = 600.0  # seconds after a recovery on an entity before the next may start
    max_attempts: int = 3  # recoveries per entity and playbook within `window`
    window: float = 3600.0
    backoff: Backoff = field(default_factory=Backoff)
    step_timeout: float = 60.0
    verify: VerifyDefaults = field(default_factory=VerifyDefaults)
    approval_timeout: float = 3600.0  # a pending approval expires after this


@dataclass(frozen=True)
class TimeWindow:
    """A maintenance window or silence: nothing runs for matching entities and causes."""

    start: float  # seconds since the epoch, UTC
    end: float
    entity: str = "*"
    cause: str = "*"
    reason: str = ""
    line: int = 0

    def covers(self, entity: str, cause: str, at: float) -> bool:
        return (self.start <= at < self.end and fnmatch.fnmatchcase(entity, self.entity)
                and fnmatch.fnmatchcase(cause, self.cause))

    def describe(self) -> str:
        start = iso(pd.Timestamp(self.start, unit="s"))
        end = iso(pd.Timestamp(self.end, unit="s"))
        text = f"{self.entity} {start} .. {end}"
        if self.cause != "*":
            text += f" cause {self.cause}"
        return text + (f" ({self.reason})" if self.reason else "")


@dataclass(frozen=True)
class Guards:
    max_actions_per_hour: int = 20
    one_action_per_entity: bool = True
    maintenance: tuple[TimeWindow, ...] = ()
    silences: tuple[TimeWindow, ...] = ()


@dataclass(frozen=True)
class PlaybookSet:
    playbooks: tuple[Playbook, ...]
    defaults: Defaults = field(default_factory=Defaults)
    guards: Guards = field(default_factory=Guards)
    templates: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    source: str = "<playbooks>"
    version: int = 1

    def candidates(self, event: Event) -> list[Playbook]:
        """Playbooks whose cause and entity match, in file order, regardless of confidence."""
        return [p for p in self.playbooks if p.matches(event)]

    def min_confidence(self, playbook: Playbook) -> float:
        if playbook.min_confidence is not None:
            return playbook.min_confidence
        return self.defaults.min_confidence

    def mode(self, playbook: Playbook) -> str:
        return playbook.mode or self.defaults.mode

    def match(self, event: Event) -> Playbook | None:
        """The first playbook (in file order) whose cause, entity and confidence match."""
        for playbook in self.candidates(event):
            if event.confidence >= self.min_confidence(playbook):
                return playbook
        return None

    def get(self, name: str) -> Playbook | None:
        return next((p for p in self.playbooks if p.name == name), None)

    @property
    def causes(self) -> list[str]:
        return sorted({p.cause for p in self.playbooks})

    def describe(self) -> str:
        """A readable summary: cause -> steps, for ``ftml playbook check FILE``."""
        d, g = self.defaults, self.guards
        lines = [
            f"{self.source}: {len(self.playbooks)} playbook(s), mode {d.mode}, "
            f"min_confidence {d.min_confidence:g}, cooldown {format_seconds(d.cooldown)}, "
            f"{d.max_attempts} attempt(s) per {format_seconds(d.window)}, "
            f"at most {g.max_actions_per_hour} action(s) per hour",
        ]
        for window in g.maintenance:
            lines.append(f"maintenance: {window.describe()}")
        for window in g.silences:
            lines.append(f"silence: {window.describe()}")
        for p in self.playbooks:
            extras = []
            if p.entity != "*":
                extras.append(f"entity {p.entity}")
            if p.min_confidence is not None:
                extras.append(f"min_confidence {p.min_confidence:g}")
            if p.mode is not None:
                extras.append(f"mode {p.mode}")
            tail = f" ({', '.join(extras)})" if extras else ""
            lines.append(f"{p.cause} -> {p.name}{tail}")
            for i, step in enumerate(p.steps, 1):
                lines.append(f"  {i}. {step.describe()}")
            last = p.steps[-1].action if p.steps else None
            if not (isinstance(last, NotifyAction) and last.escalate):
                final = p.escalate.describe() if p.escalate else "escalate (default message)"
                lines.append(f"  then: {final}")
        return "\n".join(lines)
