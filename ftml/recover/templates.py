"""Filling an action's placeholders from an event's fields, safely per argument, url segment
and body."""

from __future__ import annotations

import string
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from ftml.errors import ActionError
from ftml.playbooks import render

#: Fields whose text comes from outside (metric labels, model output); numbers are ours.
_TEXT_FIELDS = ("id", "entity", "cause", "playbook", "cause_source", "status")


def render_argv(argv: Sequence[str], fields: Mapping[str, Any]) -> list[str]:
    """Fill placeholders argument by argument; each stays exactly one argv entry.

    An argument that starts with a text placeholder (entity, cause, ...) may not start
    with '-' once filled: an entity named ``--delete-all`` must not become an option.
    """
    out = [argv[0]]
    for template in argv[1:]:
        value = render(template, fields)
        first = next(iter(string.Formatter().parse(template)), ("", None, "", None))
        starts_with_text_field = first[0] == "" and first[1] in _TEXT_FIELDS
        if starts_with_text_field and value.startswith("-"):
            raise ActionError(f"refusing argument {value!r}: it would read as an option",
                              hint="put the placeholder after a prefix or after '--'")
        out.append(value)
    return out


def render_url(template: str, fields: Mapping[str, Any]) -> str:
    """Fill placeholders in a url, percent-encoding each value so it stays in its segment."""
    parts = []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        parts.append(literal)
        if name is not None:
            value = render("{" + name + ("!" + conversion if conversion else "")
                           + (":" + spec if spec else "") + "}", fields)
            parts.append(urllib.parse.quote(value, safe=""))
    return "".join(parts)


def render_body(body: Any, fields: Mapping[str, Any]) -> Any:
    if isinstance(body, dict):
        return {k: render_body(v, fields) for k, v in body.items()}
    if isinstance(body, list):
        return [render_body(v, fields) for v in body]
    if isinstance(body, str):
        return render(body, fields)
    return body
