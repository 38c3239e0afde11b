"""Playbook YAML -> a validated :class:`~ftml.playbooks.schema.PlaybookSet`: the YAML composed
keeping each key's line, then read strictly; every error names the line and the key path."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ftml.clock import epoch_seconds
from ftml.config import parse_duration, recovery_mode
from ftml.errors import ConfigError, PlaybookError
from ftml.playbooks.schema import (
    ACTION_KINDS,
    ACTIONS,
    MODES,
    RECOVERED_PREFIX,
    RECOVERED_WINDOWS,
    TARGETS,
    Action,
    Backoff,
    CheckpointAction,
    Condition,
    Defaults,
    ExecAction,
    Guards,
    HttpAction,
    NotifyAction,
    Playbook,
    PlaybookSet,
    RollbackAction,
    SecretRef,
    Step,
    TimeWindow,
    Verify,
    VerifyDefaults,
)
from ftml.playbooks.templates import TEMPLATE_FIELDS, placeholders
from ftml.playbooks.text import _choices, _kind, _url_head

_STEP_KEYS = ("name", "timeout", "verify")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONDITION = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_.:]*)\s*(?P<op><=|>=|==|!=|<|>)\s*"
    r"(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


_RECOVERED = re.compile(r"^\s*recovered(?:\s+for\s+(?P<n>\d+)\s+windows?)?\s*$")


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
