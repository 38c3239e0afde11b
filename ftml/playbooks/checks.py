"""``ftml playbook check``: a file validated and described, its causes against a model's, its
programs against this machine."""

from __future__ import annotations

import difflib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from ftml.errors import PlaybookError
from ftml.playbooks.loading import load_playbooks
from ftml.playbooks.schema import ExecAction, PlaybookSet


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
