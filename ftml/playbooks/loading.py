"""Playbook files: read and validated (``load_playbooks``), and the matcher scoring uses to
recommend a playbook (``playbook_matcher``)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ftml.errors import PlaybookError
from ftml.events import Event
from ftml.playbooks.reader import parse_playbooks
from ftml.playbooks.schema import PlaybookSet


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
