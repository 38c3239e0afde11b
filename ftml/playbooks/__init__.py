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

One module per seam; each imports only the ones above it:

* ``text``: how durations, arguments and suggestions read in descriptions and messages;
* ``templates``: ``{placeholders}`` and the event fields they may name;
* ``schema``: the action kinds (``ACTION_KINDS``, one row each) and the frozen dataclasses a
  file becomes, up to ``PlaybookSet``, which matches events to playbooks;
* ``reader``: YAML text -> a validated ``PlaybookSet`` (``parse_playbooks``);
* ``loading``: files (``load_playbooks``) and the matcher scoring recommends with;
* ``checks``: ``ftml playbook check``: a file described, its causes against a model's, its
  programs against this machine.

Every public name is importable from ``ftml.playbooks`` itself (and ``epoch_seconds``, which
is :func:`ftml.clock.epoch_seconds`).
"""

from __future__ import annotations

from ftml.clock import epoch_seconds
from ftml.playbooks.checks import ALWAYS_NAMED, check_causes, check_programs, validate
from ftml.playbooks.loading import load_playbooks, playbook_matcher
from ftml.playbooks.reader import parse_playbooks
from ftml.playbooks.schema import (
    ACTION_KINDS,
    ACTIONS,
    MODES,
    RECOVERED_PREFIX,
    RECOVERED_WINDOWS,
    SIMULATOR_CAUSES,
    SIMULATOR_METRICS,
    TARGETS,
    Action,
    ActionKind,
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
from ftml.playbooks.templates import TEMPLATE_FIELDS, placeholders, render, template_fields
from ftml.playbooks.text import format_seconds

__all__ = [
    "ACTIONS", "ACTION_KINDS", "ALWAYS_NAMED", "MODES", "RECOVERED_PREFIX", "RECOVERED_WINDOWS",
    "SIMULATOR_CAUSES", "SIMULATOR_METRICS", "TARGETS", "TEMPLATE_FIELDS", "Action",
    "ActionKind", "Backoff", "CheckpointAction", "Condition", "Defaults", "ExecAction", "Guards",
    "HttpAction", "NotifyAction", "Playbook", "PlaybookSet", "RollbackAction", "SecretRef",
    "Step", "TimeWindow", "Verify", "VerifyDefaults", "check_causes", "check_programs",
    "epoch_seconds", "format_seconds", "load_playbooks", "parse_playbooks", "placeholders",
    "playbook_matcher", "render", "template_fields", "validate",
]
