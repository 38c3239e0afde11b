"""Recovery playbooks: the YAML schema, its validation and matching events to playbooks.

A playbook file maps diagnosed causes to ordered ladders of recovery steps::

    version: 1
    defaults: {mode: dry_run, min_confidence: 0.6, cooldown: 10m}
    guards: {max_actions_per_hour: 20}
    templates:
      restart: [./scripts/restart.sh, "{entity}"]
    playbooks:
      - name: leak
        cause: memory_leak
        steps:
          - restart:
            verify: [mem_used_pct < 70]
          - escalate: "memory still high on {entity}"

Validation is strict and early: every mistake is reported with the file, the line and
the key path, because a playbook that fails at 3 a.m. is worse than one that fails to load.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import hashlib
import json
import math
import operator
import os
import re
import shutil
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ftml.config import RECOVERY_MODES, parse_duration, recovery_mode
from ftml.errors import ConfigError, PlaybookError
from ftml.events import Event, iso

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
#: Built-in action kinds; templates add names that stand for ``exec``.
#: What a playbook acts on: the alerting entity, or its incident group's top suspect.
TARGETS = ("entity", "root")
ACTIONS = tuple(ACTION_KINDS)

#: Event fields that ``{placeholders}`` may name. Nothing else is reachable from a template.
TEMPLATE_FIELDS = ("id", "entity", "cause", "confidence", "score", "start", "end", "playbook",
                   "cause_source", "status")

#: Causes that ftml's simulator produces; the example file covers each of them.
SIMULATOR_CAUSES = ("memory_leak", "cpu_saturation", "network_degradation", "disk_full",
                    "pool_exhaustion", "bad_deploy", "slow_dependency")

#: Metric names that ftml's simulator produces.
SIMULATOR_METRICS = ("cpu_pct", "mem_used_pct", "latency_p95_ms", "error_rate", "request_rate",
                     "disk_used_pct", "io_wait_pct", "net_retransmits", "net_errors", "threads",
                     "connections", "gc_pause_ms")

_STEP_KEYS = ("name", "timeout", "verify")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONDITION = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_.:]*)\s*(?P<op><=|>=|==|!=|<|>)\s*"
    r"(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
#: The verify condition that names no metric: ``recovered`` or ``recovered for N windows``.
#: It holds once the entity's anomaly score is under the model's threshold for its last N
#: windows, or its event has resolved, so one playbook serves a model of any metrics. It is
#: read as the pseudo-metric ``ftml:recovered:N`` (1 when it holds), which the metric
#: reader of ``ftml watch`` answers.
RECOVERED_PREFIX = "ftml:recovered:"
RECOVERED_WINDOWS = 3
_RECOVERED = re.compile(r"^\s*recovered(?:\s+for\s+(?P<n>\d+)\s+windows?)?\s*$")
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "==": operator.eq, "!=": operator.ne,
}


# --------------------------------------------------------------------------- schema


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


# --------------------------------------------------------------------------- templates


class _EventFormatter(string.Formatter):
    """``str.format`` that only knows the named event fields: no attributes, no indexing."""

    def get_field(self, field_name: str, args: Any, kwargs: Mapping[str, Any]) -> Any:
        if field_name not in kwargs:
            raise KeyError(field_name)
        return kwargs[field_name], field_name


_FORMATTER = _EventFormatter()


def template_fields(event: Event, playbook: str | None = None) -> dict[str, Any]:
    """The values a ``{placeholder}`` may take for ``event``."""
    return {
        "id": event.id, "entity": event.entity, "cause": event.cause,
        "confidence": float(event.confidence), "score": float(event.score),
        "start": iso(event.start), "end": iso(event.end),
        "playbook": playbook or event.playbook or "", "cause_source": event.cause_source,
        "status": event.status,
    }


def render(template: str, fields: Mapping[str, Any]) -> str:
    """Fill ``{placeholders}`` from ``fields``; the result is one string, never re-parsed."""
    return _FORMATTER.vformat(template, (), fields)


def placeholders(template: str) -> list[str]:
    """Field names used by ``template``; raises ValueError for malformed braces."""
    names = []
    for _, name, spec, _ in string.Formatter().parse(template):
        if name is not None:
            names.append(name)
        if spec:
            names.extend(placeholders(spec))
    return names


# --------------------------------------------------------------------------- loading


def load_playbooks(path: str | Path, known_metrics: Iterable[str] | None = None) -> PlaybookSet:
    """Read and validate a playbook file.

    Relative program paths (``./x``, ``../x``) and relative checkpoint paths are taken
    relative to the file's folder. With ``known_metrics``, verify conditions on other
    metrics are errors.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PlaybookError(f"cannot read playbooks: {exc.strerror}", source=str(path),
                            hint="check the path") from None
    return parse_playbooks(text, source=str(path), base_dir=path.resolve().parent,
                           known_metrics=known_metrics)


def playbook_matcher(path: str | Path | None):
    """Event -> the name of the playbook it would run (None: none), from a playbook file (none
    given: no playbook for any event). Scoring uses it to recommend."""
    if path is None:
        return lambda event: None
    book = load_playbooks(path)

    def match(event: Event) -> str | None:
        pb = book.match(event)
        return None if pb is None else pb.name

    return match


def validate(path: str | Path,
             known_metrics: Iterable[str] | None = None) -> tuple[PlaybookSet, str]:
    """Validate a playbook file (``ftml playbook check``): the set and its description.

    Raises PlaybookError naming the file, line and key of the first mistake.
    """
    playbooks = load_playbooks(path, known_metrics)
    return playbooks, playbooks.describe()


# Causes every model may name: its abstention, and a playbook's wildcard.
ALWAYS_NAMED = ("unknown", "*")


def check_causes(playbooks: PlaybookSet, causes: Iterable[str]) -> list[str]:
    """Playbooks against the causes a model names: a playbook for a cause the model never
    names would never run (a typo such as 'memory_leek' leaves the real cause without a
    playbook), so it is an error; a cause of the model without a playbook is a warning.
    Returns the warnings."""
    causes = sorted(set(causes))
    for p in playbooks.playbooks:
        if p.cause not in ALWAYS_NAMED and p.cause not in causes:
            close = difflib.get_close_matches(p.cause, causes, n=1)
            hint = (f"did you mean '{close[0]}'? " if close else "") + (
                f"the model names {', '.join(causes)}" if causes else
                "the model names no causes (detection only): use cause 'unknown'")
            raise PlaybookError(f"cause '{p.cause}' of playbook '{p.name}' is not one the "
                                "model names: it would never run", source=playbooks.source,
                                where=f"line {p.line}", hint=hint)
    covered = {p.cause for p in playbooks.playbooks}
    if "*" in covered:
        return []
    bare = [c for c in causes if c not in covered]
    return [f"{playbooks.source}: no playbook for the model's cause(s) {', '.join(bare)}"
            ] if bare else []


def check_programs(playbooks: PlaybookSet) -> list[str]:
    """Warnings for exec steps whose program does not exist or may not be run here (the
    machine that checks may not be the one that runs them: not an error)."""
    out: list[str] = []
    seen: set[str] = set()
    for p in playbooks.playbooks:
        for step in p.steps:
            if not isinstance(step.action, ExecAction):
                continue
            program = step.action.argv[0]
            if program in seen:
                continue
            seen.add(program)
            problem = _program_problem(program)
            if problem:
                out.append(f"{playbooks.source}: line {step.line}: program '{program}' "
                           f"{problem}")
    return out


def _program_problem(program: str) -> str | None:
    if os.sep not in program:
        return None if shutil.which(program) else "is not on the PATH"
    if not os.path.exists(program):
        return "does not exist"
    if os.path.isdir(program) or not os.access(program, os.X_OK):
        return "is not executable"
    return None


def parse_playbooks(text: str, source: str = "<playbooks>", base_dir: str | Path | None = None,
                    known_metrics: Iterable[str] | None = None) -> PlaybookSet:
    """Validate playbook YAML given as text (see ``load_playbooks``)."""
    data, lines = _compose(text, source)
    reader = _Reader(source, lines, Path(base_dir) if base_dir is not None else None,
                     set(known_metrics) if known_metrics is not None else None)
    return reader.playbook_set(data)


def _compose(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    """Parse YAML keeping the line of every key and item: ``{path: line}``."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or "syntax error"
        raise PlaybookError(f"not valid YAML: {problem}", source=source,
                            where=f"line {mark.line + 1}" if mark else None,
                            hint="check indentation and quoting") from None
    if root is None:
        loader.dispose()
        raise PlaybookError("the file is empty", source=source,
                            hint="start with 'version: 1' and a 'playbooks:' list")
    lines: dict[tuple, int] = {}

    def build(node: yaml.Node, path: tuple) -> Any:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            own = sum(k.tag != "tag:yaml.org,2002:merge" for k, _ in node.value)
            loader.flatten_mapping(node)  # resolve '<<' merge keys like safe_load does
            merged = len(node.value) - own  # these come first; own keys may override them
            out: dict[str, Any] = {}
            for n, (key_node, value_node) in enumerate(node.value):
                key = loader.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                where = f"line {line}: {_path_text(path + (key,))}"
                if not isinstance(key, str):
                    raise PlaybookError(f"key {key!r} is not text", source=source, where=where,
                                        hint="quote the key")
                if key in out and n >= merged and _own_key(node.value[merged:n], key, loader):
                    raise PlaybookError(f"duplicate key '{key}'", source=source, where=where,
                                        hint="each key may appear once per mapping")
                out[key] = build(value_node, path + (key,))
                lines[path + (key,)] = line  # a bad key is reported where the key is written
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(item, path + (i,)) for i, item in enumerate(node.value)]
        return loader.construct_object(node, deep=True)

    try:
        return build(root, ()), lines
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise PlaybookError(f"not valid YAML: {getattr(exc, 'problem', exc)}", source=source,
                            where=f"line {mark.line + 1}" if mark else None) from None
    finally:
        loader.dispose()


def _own_key(pairs: list, key: str, loader: yaml.SafeLoader) -> bool:
    """Whether ``key`` was written before among a mapping's own (not merged) pairs."""
    return any(loader.construct_object(k) == key for k, _ in pairs)


def _path_text(path: tuple) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class _Reader:
    """Validates the composed data; every error names the line and key path."""

    def __init__(self, source: str, lines: dict[tuple, int], base_dir: Path | None,
                 known_metrics: set[str] | None):
        self.source = source
        self.lines = lines
        self.base_dir = base_dir
        self.known_metrics = known_metrics
        self.templates: dict[str, tuple[str, ...]] = {}
        self.defaults = Defaults()

    # -- helpers -------------------------------------------------------------------

    def line(self, path: tuple) -> int:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path, 1)

    def fail(self, path: tuple, problem: str, hint: str | None = None) -> PlaybookError:
        where = f"line {self.line(path)}"
        if path:
            where += f": {_path_text(path)}"
        return PlaybookError(problem, source=self.source, where=where, hint=hint)

    def mapping(self, value: Any, path: tuple, known: Iterable[str],
                required: Iterable[str] = ()) -> dict[str, Any]:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a mapping, got {_kind(value)}",
                            hint=f"keys: {', '.join(known)}")
        known = list(known)
        for key in value:
            if key not in known:
                raise self.fail(path + (key,), f"unknown key '{key}'", hint=_choices(key, known))
        for key in required:
            if key not in value:
                raise self.fail(path, f"missing '{key}'", hint=f"add '{key}:'")
        return value

    def listing(self, value: Any, path: tuple, what: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(path, f"must be a list of {what}, got {_kind(value)}")
        return value

    def text(self, value: Any, path: tuple, what: str = "text") -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"must be non-empty {what}, got {value!r}")
        return value

    def number(self, value: Any, path: tuple, lo: float | None = None,
               hi: float | None = None) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise self.fail(path, f"must be a number, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"between {lo:g} and {hi:g}" if hi is not None else f"at least {lo:g}"
            raise self.fail(path, f"must be {bounds}, got {value!r}")
        return float(value)

    def integer(self, value: Any, path: tuple, lo: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise self.fail(path, f"must be a whole number >= {lo}, got {value!r}")
        return value

    def boolean(self, value: Any, path: tuple) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"must be true or false, got {value!r}")
        return value

    def duration(self, value: Any, path: tuple) -> float:
        try:
            return parse_duration(value, what=_path_text(path)).total_seconds()
        except ConfigError as exc:
            raise self.fail(path, exc.problem, hint=exc.hint) from None

    def moment(self, value: Any, path: tuple) -> float:
        """A time: ISO text or YAML timestamp (naive means UTC), or seconds since the epoch."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            ts = pd.Timestamp(value)
        except (TypeError, ValueError):
            ts = None
        if ts is None or ts is pd.NaT or isinstance(value, bool):
            raise self.fail(path, f"cannot read time {value!r}",
                            hint="write e.g. 2024-05-01T02:00:00Z")
        return epoch_seconds(ts)

    def mode(self, value: Any, path: tuple) -> str:
        mode = recovery_mode(value)
        if mode is None:
            raise self.fail(path, f"unknown mode {value!r}", hint=f"use one of {', '.join(MODES)}")
        return mode

    def glob(self, value: Any, path: tuple) -> str:
        return self.text(value, path, "glob text")

    def template(self, value: Any, path: tuple, url: bool = False) -> str:
        """Text that may hold ``{placeholders}`` naming event fields only."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # argv entries like `3` are fine as text
        if not isinstance(value, str):
            raise self.fail(path, f"must be text, got {_kind(value)}")
        try:
            names = placeholders(value)
        except ValueError as exc:
            raise self.fail(path, f"bad placeholder in {value!r}: {exc}",
                            hint="write '{{' and '}}' for literal braces") from None
        for name in names:
            if name not in TEMPLATE_FIELDS:
                raise self.fail(path, f"unknown placeholder '{{{name}}}' in {value!r}",
                                hint=f"placeholders name event fields: {', '.join(TEMPLATE_FIELDS)}")
        if url and names and "{" in _url_head(value):
            raise self.fail(path, "placeholders may not choose the scheme or host of a url",
                            hint="put them in the path, e.g. https://ops/api/hosts/{entity}")
        return value

    def secret_values(self, value: Any, path: tuple) -> tuple[tuple[str, str | SecretRef], ...]:
        """Header or env mapping: plain text (may use placeholders) or ``{env: NAME}``."""
        value = self.mapping(value, path, known=value.keys() if isinstance(value, dict) else ())
        out = []
        for key, item in value.items():
            if isinstance(item, dict):
                ref = self.mapping(item, path + (key,), known=("env",), required=("env",))
                name = self.text(ref["env"], path + (key, "env"), "variable name")
                if not _ENV_NAME.match(name):
                    raise self.fail(path + (key, "env"), f"{name!r} is not an environment "
                                    "variable name", hint="letters, digits and _")
                out.append((key, SecretRef(name)))
            else:
                out.append((key, self.template(item, path + (key,))))
        return tuple(out)

    def local_path(self, value: str) -> str:
        p = Path(value).expanduser()
        if not p.is_absolute() and self.base_dir is not None:
            p = self.base_dir / p
        return str(p)

    # -- sections ------------------------------------------------------------------

    def playbook_set(self, data: Any) -> PlaybookSet:
        top = self.mapping(data, (), ("version", "defaults", "guards", "templates", "playbooks"),
                           required=("version",))
        if top["version"] != 1:
            raise self.fail(("version",), f"unsupported version {top['version']!r}",
                            hint="this ftml reads 'version: 1'")
        self.defaults = self.read_defaults(top.get("defaults"), ("defaults",))
        guards = self.read_guards(top.get("guards"), ("guards",))
        self.templates = self.read_templates(top.get("templates"), ("templates",))
        if "playbooks" not in top:
            raise self.fail((), "missing 'playbooks'", hint="add a 'playbooks:' list")
        items = self.listing(top["playbooks"], ("playbooks",), "playbooks")
        playbooks = [self.read_playbook(item, ("playbooks", i)) for i, item in enumerate(items)]
        self.check_reachable(playbooks)
        return PlaybookSet(playbooks=tuple(playbooks), defaults=self.defaults, guards=guards,
                           templates=self.templates, source=self.source, version=1)

    def read_defaults(self, value: Any, path: tuple) -> Defaults:
        keys = [f.name for f in dataclasses.fields(Defaults)]
        d = self.mapping(value, path, keys)
        base = Defaults()
        kw: dict[str, Any] = {}
        if "mode" in d:
            kw["mode"] = self.mode(d["mode"], path + ("mode",))
        if "min_confidence" in d:
            kw["min_confidence"] = self.number(d["min_confidence"], path + ("min_confidence",), 0, 1)
        for key in ("cooldown", "window", "step_timeout", "approval_timeout"):
            if key in d:
                kw[key] = self.duration(d[key], path + (key,))
        if "max_attempts" in d:
            kw["max_attempts"] = self.integer(d["max_attempts"], path + ("max_attempts",))
        if "backoff" in d:
            b = self.mapping(d["backoff"], path + ("backoff",), ("initial", "factor", "max"))
            bp = path + ("backoff",)
            initial = self.duration(b["initial"], bp + ("initial",)) if "initial" in b \
                else base.backoff.initial
            factor = self.number(b["factor"], bp + ("factor",), 1) if "factor" in b \
                else base.backoff.factor
            most = self.duration(b["max"], bp + ("max",)) if "max" in b else max(
                base.backoff.max, initial)
            if most < initial:
                raise self.fail(bp + ("max",), "backoff max is shorter than initial")
            kw["backoff"] = Backoff(initial, factor, most)
        if "verify" in d:
            v = self.mapping(d["verify"], path + ("verify",), ("timeout", "interval"))
            vp = path + ("verify",)
            kw["verify"] = VerifyDefaults(
                timeout=self.duration(v["timeout"], vp + ("timeout",)) if "timeout" in v
                else base.verify.timeout,
                interval=self.duration(v["interval"], vp + ("interval",)) if "interval" in v
                else base.verify.interval)
        return Defaults(**kw)

    def read_guards(self, value: Any, path: tuple) -> Guards:
        g = self.mapping(value, path, ("max_actions_per_hour", "one_action_per_entity",
                                       "maintenance", "silences"))
        kw: dict[str, Any] = {}
        if "max_actions_per_hour" in g:
            kw["max_actions_per_hour"] = self.integer(g["max_actions_per_hour"],
                                                      path + ("max_actions_per_hour",), lo=0)
        if "one_action_per_entity" in g:
            kw["one_action_per_entity"] = self.boolean(g["one_action_per_entity"],
                                                       path + ("one_action_per_entity",))
        for key in ("maintenance", "silences"):
            if key in g:
                items = self.listing(g[key], path + (key,), "windows")
                kw[key] = tuple(self.read_window(w, path + (key, i)) for i, w in enumerate(items))
        return Guards(**kw)

    def read_window(self, value: Any, path: tuple) -> TimeWindow:
        w = self.mapping(value, path, ("entity", "cause", "start", "end", "reason"),
                         required=("start", "end"))
        start = self.moment(w["start"], path + ("start",))
        end = self.moment(w["end"], path + ("end",))
        if end <= start:
            raise self.fail(path + ("end",), "end is not after start")
        return TimeWindow(start=start, end=end,
                          entity=self.glob(w.get("entity", "*"), path + ("entity",)),
                          cause=self.glob(w.get("cause", "*"), path + ("cause",)),
                          reason=str(w.get("reason", "")), line=self.line(path))

    def read_templates(self, value: Any, path: tuple) -> dict[str, tuple[str, ...]]:
        t = self.mapping(value, path, known=value.keys() if isinstance(value, dict) else ())
        out = {}
        for name, argv in t.items():
            if name in ACTIONS or name in _STEP_KEYS:
                raise self.fail(path + (name,), f"template name '{name}' is taken",
                                hint="choose a name that is not an action or step key")
            if not _NAME.match(name):
                raise self.fail(path + (name,), f"bad template name {name!r}",
                                hint="letters, digits, _ . -")
            out[name] = self.argv(argv, path + (name,))
        return out

    def argv(self, value: Any, path: tuple) -> tuple[str, ...]:
        if isinstance(value, str):
            raise self.fail(path, "must be a list of arguments, not one string",
                            hint='write e.g. [systemctl, restart, "app@{entity}"]; '
                                 "no shell is used")
        items = self.listing(value, path, "arguments")
        if not items:
            raise self.fail(path, "needs at least the program to run")
        args = [self.template(a, path + (i,)) for i, a in enumerate(items)]
        if placeholders(args[0]):
            raise self.fail(path + (0,), "the program may not come from a placeholder",
                            hint="event fields may only fill arguments")
        if args[0].startswith(("./", "../")):
            args[0] = self.local_path(args[0])
        return tuple(args)

    def read_playbook(self, value: Any, path: tuple) -> Playbook:
        p = self.mapping(value, path, ("name", "cause", "entity", "min_confidence", "mode",
                                       "verify", "escalate", "steps", "target"),
                         required=("name", "cause", "steps"))
        name = self.text(p["name"], path + ("name",), "name")
        cause = self.text(p["cause"], path + ("cause",), "cause")
        entity = self.glob(p.get("entity", "*"), path + ("entity",))
        min_conf = self.number(p["min_confidence"], path + ("min_confidence",), 0, 1) \
            if "min_confidence" in p else None
        mode = self.mode(p["mode"], path + ("mode",)) if "mode" in p else None
        verify = self.read_verify(p["verify"], path + ("verify",)) if "verify" in p else None
        target = p.get("target", "entity")
        if target not in TARGETS:
            raise self.fail(path + ("target",), f"target must be one of {', '.join(TARGETS)}, "
                            f"got {target!r}",
                            hint="'root' acts on the incident group's top suspect")
        escalate = None
        if "escalate" in p:
            escalate = self.read_notify(p["escalate"], path + ("escalate",), escalate=True)
        items = self.listing(p["steps"], path + ("steps",), "steps")
        if not items:
            raise self.fail(path + ("steps",), "needs at least one step")
        steps = [self.read_step(s, path + ("steps", i), verify) for i, s in enumerate(items)]
        for i, step in enumerate(steps[:-1]):
            if isinstance(step.action, NotifyAction) and step.action.escalate:
                raise self.fail(path + ("steps", i + 1), "step after 'escalate' never runs",
                                hint="escalate ends the ladder; make it the last step")
        return Playbook(name=name, cause=cause, steps=tuple(steps), entity=entity,
                        min_confidence=min_conf, mode=mode, escalate=escalate,
                        line=self.line(path), target=target)

    def read_step(self, value: Any, path: tuple, playbook_verify: Verify | None) -> Step:
        known = list(ACTIONS) + list(self.templates)
        if isinstance(value, str):
            value = {value: None}  # `- restart` is short for `- restart:`
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a mapping with one action, got {_kind(value)}",
                            hint=f"use one of {', '.join(known)}")
        kinds = [k for k in value if k not in _STEP_KEYS]
        if not kinds:
            raise self.fail(path, "no action", hint=f"use one of {', '.join(known)}")
        if len(kinds) > 1:
            raise self.fail(path + (kinds[1],), f"more than one action: {', '.join(kinds)}",
                            hint="one action per step; add another step for the next")
        kind = kinds[0]
        if kind not in known:
            raise self.fail(path, f"unknown action '{kind}'", hint=_choices(kind, known))
        ap = path + (kind,)
        arg = value[kind]
        action: Action
        if kind in self.templates:
            if arg is not None:
                raise self.fail(ap, f"template '{kind}' takes no arguments",
                                hint=f"write '- {kind}:' and put name/timeout/verify beside it")
            action = ExecAction(argv=self.templates[kind], template=kind)
        else:
            action = getattr(self, ACTION_KINDS[kind].reader)(arg, ap)
        name = self.text(value["name"], path + ("name",), "name") if "name" in value else kind
        timeout = self.duration(value["timeout"], path + ("timeout",)) if "timeout" in value \
            else self.defaults.step_timeout
        if "verify" in value:
            if not ACTION_KINDS[action.kind].changes:
                raise self.fail(path + ("verify",), f"a {action.kind} step is not verified",
                                hint="verify the step that changes something")
            verify = self.read_verify(value["verify"], path + ("verify",))
        else:
            verify = playbook_verify if ACTION_KINDS[action.kind].changes else None
        return Step(name=name, action=action, timeout=timeout, verify=verify,
                    line=self.line(path))

    def read_exec(self, value: Any, path: tuple) -> ExecAction:
        if isinstance(value, dict):
            e = self.mapping(value, path, ("argv", "env"), required=("argv",))
            env = self.secret_values(e["env"], path + ("env",)) if "env" in e else ()
            return ExecAction(argv=self.argv(e["argv"], path + ("argv",)), env=env)
        return ExecAction(argv=self.argv(value, path))

    def read_http(self, value: Any, path: tuple) -> HttpAction:
        if isinstance(value, str):
            value = {"url": value}
        h = self.mapping(value, path, ("url", "headers", "json"), required=("url",))
        url = self.url(h["url"], path + ("url",))
        headers = self.secret_values(h["headers"], path + ("headers",)) if "headers" in h else ()
        body = self.body(h["json"], path + ("json",)) if "json" in h else None
        return HttpAction(url=url, headers=headers, body=body)

    def url(self, value: Any, path: tuple) -> str:
        url = self.template(value, path, url=True)
        if not url.startswith(("http://", "https://")):
            raise self.fail(path, f"url {url!r} is not http(s)", hint="write http://... or https://...")
        return url

    def body(self, value: Any, path: tuple) -> Any:
        """A JSON body: text anywhere inside may use placeholders."""
        if isinstance(value, dict):
            return {k: self.body(v, path + (k,)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.body(v, path + (i,)) for i, v in enumerate(value)]
        if isinstance(value, str):
            return self.template(value, path)
        if value is None or isinstance(value, (bool, int, float)):
            return value
        raise self.fail(path, f"cannot send {_kind(value)} as JSON", hint="quote it")

    def read_checkpoint(self, value: Any, path: tuple) -> CheckpointAction:
        c = self.mapping(value, path, ("name", "paths", "good"), required=("name", "paths"))
        name = self.store_name(c["name"], path + ("name",))
        raw = c["paths"]
        raw = [raw] if isinstance(raw, str) else self.listing(raw, path + ("paths",), "paths")
        if not raw:
            raise self.fail(path + ("paths",), "needs at least one path")
        paths = []
        for i, item in enumerate(raw):
            text = self.text(item, path + ("paths", i), "path")
            if "{" in text:
                raise self.fail(path + ("paths", i), "paths may not use placeholders",
                                hint="event fields must not choose which files are touched")
            paths.append(self.local_path(text))
        good = self.boolean(c["good"], path + ("good",)) if "good" in c else False
        return CheckpointAction(name=name, paths=tuple(paths), good=good)

    def read_rollback(self, value: Any, path: tuple) -> RollbackAction:
        if isinstance(value, str):
            value = {"name": value}
        r = self.mapping(value, path, ("name", "version"), required=("name",))
        version = None
        if "version" in r:
            version = self.text(str(r["version"]), path + ("version",), "version")
        return RollbackAction(name=self.store_name(r["name"], path + ("name",)), version=version)

    def store_name(self, value: Any, path: tuple) -> str:
        name = self.text(value, path, "name")
        if not _NAME.match(name):
            raise self.fail(path, f"bad checkpoint name {name!r}",
                            hint="letters, digits, _ . - (it names a folder)")
        return name

    def read_escalate(self, value: Any, path: tuple) -> NotifyAction:
        return self.read_notify(value, path, escalate=True)

    def read_notify(self, value: Any, path: tuple, escalate: bool = False) -> NotifyAction:
        if value is None:
            value = {}
        if isinstance(value, str):
            value = {"message": value}
        n = self.mapping(value, path, ("message", "url", "headers"))
        default = ("no step recovered {entity} ({cause}); a human is needed" if escalate
                   else "ftml: {cause} on {entity}")
        message = self.template(n.get("message", default), path + ("message",))
        url = self.url(n["url"], path + ("url",)) if "url" in n else None
        headers = self.secret_values(n["headers"], path + ("headers",)) if "headers" in n else ()
        if headers and url is None:
            raise self.fail(path + ("headers",), "headers without a url")
        return NotifyAction(message=message, url=url, headers=headers, escalate=escalate)

    def read_verify(self, value: Any, path: tuple) -> Verify:
        timeout, interval = self.defaults.verify.timeout, self.defaults.verify.interval
        if isinstance(value, dict):
            v = self.mapping(value, path, ("all", "timeout", "interval"), required=("all",))
            if "timeout" in v:
                timeout = self.duration(v["timeout"], path + ("timeout",))
            if "interval" in v:
                interval = self.duration(v["interval"], path + ("interval",))
            value, path = v["all"], path + ("all",)
        if isinstance(value, str):
            items, paths = [value], [path]
        else:
            items = self.listing(value, path, "conditions")
            paths = [path + (i,) for i in range(len(items))]
        if not items:
            raise self.fail(path, "needs at least one condition", hint="e.g. mem_used_pct < 70")
        conditions = tuple(self.condition(c, p) for c, p in zip(items, paths, strict=True))
        return Verify(conditions=conditions, timeout=timeout, interval=min(interval, timeout))

    def condition(self, value: Any, path: tuple) -> Condition:
        r = _RECOVERED.match(value) if isinstance(value, str) else None
        if r is not None:
            n = int(r["n"]) if r["n"] else RECOVERED_WINDOWS
            if n < 1:
                raise self.fail(path, "recovered needs at least 1 window")
            return Condition(metric=f"{RECOVERED_PREFIX}{n}", op=">=", threshold=1.0)
        m = _CONDITION.match(value) if isinstance(value, str) else None
        if m is None:
            raise self.fail(path, f"cannot read condition {value!r}",
                            hint="write 'metric op number', e.g. error_rate < 0.01 (op one of "
                                 "< <= > >= == !=), or 'recovered [for N windows]'")
        metric = m["metric"]
        if self.known_metrics is not None and metric not in self.known_metrics:
            raise self.fail(path, f"unknown metric '{metric}'",
                            hint=_choices(metric, sorted(self.known_metrics)))
        return Condition(metric=metric, op=m["op"], threshold=float(m["value"]))

    def check_reachable(self, playbooks: list[Playbook]) -> None:
        """Refuse names used twice and playbooks that an earlier one always shadows."""
        seen: dict[str, int] = {}
        for i, p in enumerate(playbooks):
            if p.name in seen:
                raise self.fail(("playbooks", i, "name"), f"name '{p.name}' is used twice",
                                hint=f"playbooks[{seen[p.name]}] has it too")
            seen[p.name] = i
        for i, later in enumerate(playbooks):
            for j, earlier in enumerate(playbooks[:i]):
                same_cause = earlier.cause in ("*", later.cause)
                covers = earlier.entity == "*" or earlier.entity == later.entity
                lo_e = earlier.min_confidence if earlier.min_confidence is not None \
                    else self.defaults.min_confidence
                lo_l = later.min_confidence if later.min_confidence is not None \
                    else self.defaults.min_confidence
                if same_cause and covers and lo_e <= lo_l:
                    raise self.fail(("playbooks", i), f"playbook '{later.name}' never runs",
                                    hint=f"playbooks[{j}] '{earlier.name}' matches the same "
                                         "events first; put the narrower one first")


# --------------------------------------------------------------------------- small helpers


def epoch_seconds(ts: Any) -> float:
    """A time as seconds since the epoch; naive times are taken as UTC."""
    if isinstance(ts, (int, float)) and not isinstance(ts, bool):
        return float(ts)
    ts = pd.Timestamp(ts)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return (ts - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)


def format_seconds(seconds: float) -> str:
    """300 -> '5m', 5400 -> '90m', 7200 -> '2h', 1.5 -> '1.5s'."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "text", type(None): "nothing"}.get(
        type(value), type(value).__name__)


def _choices(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(str(word), options, n=1)
    head = f"did you mean '{close[0]}'? " if close else ""
    return f"{head}use one of {', '.join(options)}"


def _url_head(url: str) -> str:
    """Scheme and host part of a url: everything before the path."""
    scheme, sep, rest = url.partition("://")
    return scheme + sep + rest.split("/", 1)[0] if sep else url


def _quote_arg(arg: str) -> str:
    return arg if arg and not re.search(r"\s|['\"]", arg) else json.dumps(arg)
