"""Errors ftml raises on purpose. The CLI prints each as one line and exits 2.

Each error names the file, the place in it and what to do, so that the one line on
stderr is enough to fix the input. They subclass builtins so that library callers can
catch them as the usual kinds too.
"""

from __future__ import annotations


class FtmlError(Exception):
    """Base of all deliberate ftml errors.

    ``source`` is the file (or other origin) at fault, ``where`` the place in it
    (row, column, key, line) and ``hint`` what the user should do.
    """

    def __init__(self, problem: str, *, source: str | None = None, where: str | None = None,
                 hint: str | None = None):
        self.problem = problem
        self.source = source
        self.where = where
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = [p for p in (self.source, self.where) if p]
        head = ": ".join(parts)
        text = f"{head}: {self.problem}" if head else self.problem
        if self.hint:
            text += f" ({self.hint})"
        return " ".join(text.split())


class InputError(FtmlError, ValueError):
    """Metric, incident or config input that does not meet the contract."""


class ModelError(FtmlError, ValueError):
    """A model bundle that is missing, changed, of an unknown format or does not fit the data."""


class PlaybookError(FtmlError, ValueError):
    """A playbook file that does not validate."""


class ConfigError(FtmlError, ValueError):
    """A configuration file or option that does not validate."""


class ActionError(FtmlError, RuntimeError):
    """A recovery action that could not be carried out."""
