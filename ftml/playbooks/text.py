"""How values read in descriptions and messages: durations, quoted arguments, a url's host,
what a value is, the option a typo meant."""

from __future__ import annotations

import difflib
import json
import re
from typing import Any


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
