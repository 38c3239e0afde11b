"""``{placeholders}``: the event fields a template may name, filled in one pass and never
re-parsed."""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from ftml.events import Event, iso

#: Event fields that ``{placeholders}`` may name. Nothing else is reachable from a template.
TEMPLATE_FIELDS = ("id", "entity", "cause", "confidence", "score", "start", "end", "playbook",
                   "cause_source", "status")


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
