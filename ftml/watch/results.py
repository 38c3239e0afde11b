"""What one tick did."""

from __future__ import annotations

from dataclasses import dataclass, field

from ftml.events import Event


@dataclass
class TickResult:
    rows: int = 0
    windows: int = 0
    opened: list[Event] = field(default_factory=list)
    resolved: list[Event] = field(default_factory=list)
    # Events of the warm-up history (read at start) that had ended before it: not alerts.
    warmup: list[Event] = field(default_factory=list)
    seconds: float = 0.0
