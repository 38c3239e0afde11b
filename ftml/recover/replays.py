"""Replay: past events through the engine with simulated actions, scored against known incidents."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ftml.audit import format_audit
from ftml.clock import Clock, FakeClock
from ftml.errors import ConfigError
from ftml.events import Event, iso
from ftml.playbooks import RECOVERED_PREFIX, PlaybookSet, epoch_seconds, format_seconds
from ftml.recover.actions import SimulatedActions
from ftml.recover.engine import RecoveryEngine
from ftml.recover.metrics import FrameMetricReader, MetricReader
from ftml.recover.results import Decision, DecisionKind


@dataclass
class ReplayResult:
    """What the engine would have done over past events, and how fast it would have helped."""

    decisions: list[Decision]
    incidents: list[dict[str, Any]]
    summary: dict[str, Any]

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for d in self.decisions:
            run = d.run
            out.append({
                "time": iso(pd.Timestamp(d.at, unit="s")), "entity": d.entity, "cause": d.cause,
                "confidence": _number(d.confidence), "decision": d.decision, "reason": d.reason,
                "playbook": d.playbook,
                "steps": " > ".join(s.name for s in run.steps) if run else "",
                "outcome": run.outcome if run else "",
                "recovered_after_s": (run.recovered_at - d.at)
                if run and run.recovered_at is not None else None,
            })
        return out

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows())

    def format(self) -> str:
        rows = self.rows()
        parts = [format_audit(rows, columns=list(rows[0])) if rows else "(no events)"]
        if self.incidents:
            cols = ["entity", "start", "cause", "event_id", "playbook", "acted_at", "outcome",
                    "time_to_recovery_s"]
            parts.append(format_audit(self.incidents, columns=cols))
        s = self.summary
        kinds = s["decisions"]
        line = (f"{s['events']} event(s): {s['acted']} would run ({kinds['act']} act, "
                f"{kinds['dry_run']} dry_run, {kinds['pending']} pending approval), "
                f"{s['skipped']} skipped "
                f"({', '.join(f'{k} {v}' for k, v in s['skip_reasons'].items()) or 'none'}); "
                f"simulated: {s['recovered']} recovered, {s['escalated']} escalated")
        parts.append(line)
        if s.get("incidents"):
            rate = s["success_rate"]
            ttr = s["median_time_to_recovery_s"]
            parts.append(
                f"{s['incidents']} incident(s): {s['incidents_recovered']} recovered by the "
                f"playbook of their cause (success rate {rate:.0%}), median time to recovery "
                + (format_seconds(round(ttr)) if ttr is not None else "-")
                + f"; wrong actions: {s['wrong_playbook']} incident(s) got another cause's "
                f"playbook, {s['actions_without_incident']} run(s) on events of no incident")
        return "\n\n".join(parts)

    def __str__(self) -> str:
        return self.format()


class EventsRecoveredReader:
    """A :class:`MetricReader` for replay that also answers the verify condition that names no
    metric, ``recovered [for N windows]`` (read as ``ftml:recovered:N``): 1.0 once no replayed
    event of the entity is open at clock time, i.e. its last active window has passed, as
    ``watch`` answers it once the entity's alert has resolved; other metrics from ``inner``."""

    def __init__(self, inner: MetricReader, events: Sequence[Event], clock: Clock):
        self.inner = inner
        self.clock = clock
        spans: dict[str, list[tuple[float, float]]] = {}
        for ev in events:
            spans.setdefault(ev.entity, []).append((epoch_seconds(ev.start),
                                                    epoch_seconds(ev.end)))
        self._spans = {e: np.array(v, dtype=np.float64) for e, v in spans.items()}

    def latest(self, entity: str, metric: str) -> float | None:
        if not metric.startswith(RECOVERED_PREFIX):
            return self.inner.latest(entity, metric)
        spans = self._spans.get(entity)
        now = self.clock.now()
        open_now = spans is not None and bool(((spans[:, 0] <= now) & (now <= spans[:, 1])).any())
        return 0.0 if open_now else 1.0


def replay(events: Sequence[Event], metric_reader: MetricReader | pd.DataFrame,
           playbooks: PlaybookSet, incidents: pd.DataFrame | Iterable[Mapping[str, Any]] | None
           = None, clock: FakeClock | None = None, model_version: str = "",
           mode: str | None = None) -> ReplayResult:
    """Replay past events through the engine with simulated actions.

    Each event is handled at its ``start`` as if it were open, in time order. The engine
    decides as it would live (``mode`` overrides the playbook file's modes, as ``watch
    --mode`` does): decision and reason are its own. Every ladder that the decision stands
    for (act, dry_run, or pending approval) is run with actions that succeed at once, and
    verification reads the metrics that followed (pass a metric frame, or a reader that
    reads at ``clock``'s time); a dry run's or an approval's ladder is rehearsed, out of the
    engine's runs, as in that mode no run would hold the entity. With ``incidents`` (entity,
    start, end[, cause]) it reports, per incident, whether the playbook of its cause would
    have recovered it, and how long after the incident start.
    """
    clock = clock or FakeClock()
    if isinstance(metric_reader, pd.DataFrame):
        metric_reader = FrameMetricReader(metric_reader, clock)
    metric_reader = EventsRecoveredReader(metric_reader, events, clock)
    engine = RecoveryEngine(playbooks, clock=clock, metrics=metric_reader,
                            actions=SimulatedActions(), notifier=_SilentNotifier(), mode=mode,
                            model_version=model_version)
    decisions = []
    ordered = sorted(events, key=lambda e: epoch_seconds(e.start))
    try:
        for event in ordered:
            clock.set(epoch_seconds(event.start))
            opened = dataclasses.replace(event, status="open")
            decision = engine.handle(opened)
            if decision.run is None:
                decision.run = engine.rehearse(opened, decision)
            decisions.append(decision)
    finally:
        engine.close()
    incident_rows, unmatched_runs = _score_incidents(decisions, ordered, incidents, playbooks) \
        if incidents is not None else ([], 0)
    return ReplayResult(decisions=decisions, incidents=incident_rows,
                        summary=_summary(decisions, incident_rows, unmatched_runs))


class _SilentNotifier:
    def send(self, kind: str, message: str, event: Event) -> None:
        pass


def _incident_records(incidents: pd.DataFrame | Iterable[Mapping[str, Any]]) -> list[dict]:
    records = incidents.to_dict("records") if isinstance(incidents, pd.DataFrame) \
        else [dict(r) for r in incidents]
    for i, r in enumerate(records):
        for key in ("entity", "start", "end"):
            if key not in r:
                raise ConfigError(f"incident has no '{key}'", source="incidents",
                                  where=f"row {i + 1}", hint="incidents need entity, start, end")
    return records


def _score_incidents(decisions: list[Decision], ordered: list[Event],
                     incidents: pd.DataFrame | Iterable[Mapping[str, Any]],
                     playbooks: PlaybookSet) -> tuple[list[dict], int]:
    """Per incident, its outcome: ``missed`` (no event), ``not_acted`` (events, no run),
    ``acted_before`` (every run was over before the incident began), ``wrong_playbook`` (the
    run was another cause's playbook), ``escalated`` (the right playbook did not recover
    it) or ``recovered`` (the right playbook's verify passed, at or after the incident
    start: the time to recovery is never negative). An incident without a cause cannot
    tell a wrong playbook: any verified run counts. Also returns the runs on events that
    overlap no incident (actions on false alarms)."""
    by_entity: dict[str, list[tuple[Event, Decision]]] = {}
    for event, decision in zip(ordered, decisions, strict=True):
        by_entity.setdefault(event.entity, []).append((event, decision))
    used: set[int] = set()
    rows = []
    for inc in _incident_records(incidents):
        start, end = epoch_seconds(inc["start"]), epoch_seconds(inc["end"])
        cause = inc.get("cause")
        cause = None if cause is None or (isinstance(cause, float) and math.isnan(cause)) \
            else str(cause)
        row = {"entity": str(inc["entity"]), "start": iso(pd.Timestamp(start, unit="s")),
               "end": iso(pd.Timestamp(end, unit="s")), "cause": cause,
               "event_id": None, "detected_at": None, "playbook": None, "acted_at": None,
               "outcome": "missed", "recovered": False, "time_to_recovery_s": None}
        overlapping = [(e, d) for e, d in by_entity.get(row["entity"], [])
                       if epoch_seconds(e.start) <= end and epoch_seconds(e.end) >= start]
        used.update(id(d) for _, d in overlapping)
        if overlapping:
            first_event = overlapping[0][0]
            row.update(event_id=first_event.id,
                       detected_at=iso(pd.Timestamp(epoch_seconds(first_event.start), unit="s")),
                       outcome="not_acted")
            runs = [d.run for _, d in overlapping if d.run is not None]
            if runs:
                row["outcome"] = "acted_before"
            # A run over before the incident began (its verify passed on the normal metrics
            # before it) did nothing for it.
            runs = [r for r in runs if max(r.ended, r.recovered_at or r.ended) >= start]
            if runs:
                run = runs[0]
                playbook = playbooks.get(run.playbook)
                right = cause is None or (playbook is not None
                                          and playbook.cause in (cause, "*"))
                row.update(playbook=run.playbook,
                           acted_at=iso(pd.Timestamp(run.started, unit="s")))
                if not right:
                    row["outcome"] = "wrong_playbook"
                elif run.recovered_at is not None and run.recovered_at >= start:
                    row.update(outcome="recovered", recovered=True,
                               time_to_recovery_s=run.recovered_at - start)
                else:
                    row["outcome"] = "escalated"
        rows.append(row)
    unmatched = sum(1 for d in decisions if d.run is not None and id(d) not in used)
    return rows, unmatched


def _summary(decisions: list[Decision], incidents: list[dict],
             unmatched_runs: int = 0) -> dict[str, Any]:
    reasons: dict[str, int] = {}
    kinds = dict.fromkeys((DecisionKind.ACT, DecisionKind.DRY_RUN, DecisionKind.PENDING), 0)
    for d in decisions:
        if d.decision == DecisionKind.SKIP:
            reasons[d.reason] = reasons.get(d.reason, 0) + 1
        else:
            kinds[d.decision] += 1
    runs = [d.run for d in decisions if d.run is not None]
    summary: dict[str, Any] = {
        "events": len(decisions), "acted": len(runs), "skipped": sum(reasons.values()),
        "decisions": kinds, "skip_reasons": dict(sorted(reasons.items())),
        "recovered": sum(r.outcome == "recovered" for r in runs),
        "escalated": sum(r.outcome == "escalated" for r in runs),
    }
    if incidents:
        ttr = [r["time_to_recovery_s"] for r in incidents if r["recovered"]]
        summary.update(incidents=len(incidents), incidents_recovered=len(ttr),
                       success_rate=len(ttr) / len(incidents),
                       median_time_to_recovery_s=float(np.median(ttr)) if ttr else None,
                       mean_time_to_recovery_s=float(np.mean(ttr)) if ttr else None,
                       wrong_playbook=sum(r["outcome"] == "wrong_playbook" for r in incidents),
                       actions_without_incident=unmatched_runs)
    return summary


def _number(value: float | None) -> float | None:
    """A float for a table cell; NaN (no value) as None, shown as '-'."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value
