"""What the engine decides and what came of it: decisions, reasons, step and run results."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ftml.events import iso


class DecisionKind:
    """The values of ``Decision.decision``."""

    ACT = "act"
    DRY_RUN = "dry_run"
    PENDING = "pending"
    SKIP = "skip"


class Reason:
    """Why the engine decided what it did; the skip reasons come first."""

    RESOLVED = "resolved"  # the event has ended
    NO_PLAYBOOK = "no_playbook"
    NOT_DIAGNOSED = "not_diagnosed"  # cause unknown or no_fault: nothing to recover from
    LOW_CONFIDENCE = "low_confidence"
    MAINTENANCE = "maintenance"
    SILENCED = "silenced"
    PENDING_APPROVAL = "pending_approval"  # an approval for this entity is waiting
    BUSY = "busy"  # another action is running on the entity
    CIRCUIT_OPEN = "circuit_open"  # max_attempts within window used up
    COOLDOWN = "cooldown"  # too soon after the last recovery (cooldown or backoff)
    AFTERMATH = "aftermath"  # the event began during a recovery or within the cooldown after
    SYMPTOM = "symptom"  # its incident group's top suspect (the root) is another entity
    RATE_LIMITED = "rate_limited"  # max_actions_per_hour reached
    PLAYBOOK_CHANGED = "playbook_changed"  # an approved playbook no longer exists as approved
    AUTO = "auto"
    APPROVED = "approved"
    DRY_RUN = "dry_run"
    APPROVAL_REQUIRED = "approval_required"


SKIP_REASONS = (Reason.RESOLVED, Reason.NOT_DIAGNOSED, Reason.NO_PLAYBOOK, Reason.LOW_CONFIDENCE, Reason.MAINTENANCE,
                Reason.SILENCED, Reason.PENDING_APPROVAL, Reason.BUSY, Reason.CIRCUIT_OPEN,
                Reason.COOLDOWN, Reason.AFTERMATH, Reason.SYMPTOM, Reason.RATE_LIMITED,
                Reason.PLAYBOOK_CHANGED)


@dataclass
class ActionResult:
    """What one action did. Texts are already scrubbed of secrets."""

    ok: bool
    exit_code: int | None = None  # process exit code, or HTTP status for http actions
    output: str = ""  # at most OUTPUT_LIMIT bytes, the tail
    duration_s: float = 0.0  # wall time of the action itself
    timed_out: bool = False
    error: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)  # what ran, secrets as <env:NAME>


@dataclass
class StepResult:
    index: int  # 1-based position in the ladder; escalations after the ladder come last
    name: str
    kind: str
    started: float
    ended: float
    result: ActionResult
    verified: bool | None = None  # None: the step has no verify (or its action failed)
    verification: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.result.ok and self.verified is not False

    @property
    def status(self) -> str:
        if self.ok:
            return "ok"
        if self.result.timed_out:
            return "timeout"
        return "verify_failed" if self.result.ok else "failed"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"ok": self.ok, "status": self.status}


@dataclass
class RunResult:
    """One run of a playbook's ladder."""

    playbook: str
    started: float
    ended: float
    outcome: str  # "recovered" | "escalated"
    steps: list[StepResult] = field(default_factory=list)
    recovered_at: float | None = None  # when verification passed (or the action ended)
    recovered_by: str | None = None  # the step that recovered

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["steps"] = [s.to_dict() for s in self.steps]
        return d


@dataclass
class Decision:
    """What the engine decided for one event, and what came of it."""

    event_id: str
    entity: str
    cause: str
    confidence: float
    at: float
    decision: str  # act | dry_run | pending | skip
    reason: str
    detail: str = ""
    playbook: str | None = None
    mode: str | None = None
    approval_id: str | None = None
    plan: list[dict[str, Any]] = field(default_factory=list)  # the steps, rendered
    run: RunResult | None = None

    @property
    def acted(self) -> bool:
        return self.decision == DecisionKind.ACT

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["time"] = iso(pd.Timestamp(self.at, unit="s"))
        d["run"] = self.run.to_dict() if self.run else None
        return d

    def __str__(self) -> str:
        head = f"{iso(pd.Timestamp(self.at, unit='s'))} {self.entity} {self.cause}: "
        head += f"{self.decision} ({self.reason})"
        if self.playbook:
            head += f" playbook {self.playbook}"
        if self.approval_id:
            head += f" approval {self.approval_id}"
        if self.detail:
            head += f" - {self.detail}"
        if self.run:
            head += f" -> {self.run.outcome}"
        return head
