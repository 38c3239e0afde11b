"""Where ``ftml watch`` sends alerts: stdout, a JSON Lines file, a webhook, Alertmanager.

An alert is one plain record (see :func:`alert_record`) with a stable ``id`` (the event id:
entity + start + model version), a ``status`` (``firing`` or ``resolved``) and a
``revision`` that grows when the diagnosis of a firing alert changes. The same id goes out
when the event opens and when it resolves, so receivers can de-duplicate.

A sink's ``send(record)`` either delivers the record or raises :class:`SinkError`; the loop
keeps undelivered records in a file-backed queue and retries them in order.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

import pandas as pd

from ftml.errors import ConfigError
from ftml.events import Event, iso

log = logging.getLogger("ftml.watch")

ALERTNAME = "FtmlIncident"
#: How often a firing alert is re-sent to Alertmanager, and how far its endsAt looks ahead:
#: Alertmanager resolves an alert on its own when endsAt passes without a refresh.
ALERTMANAGER_RESEND_S = 60.0
ALERTMANAGER_EXPIRE_S = 300.0
HTTP_TIMEOUT_S = 5.0


class SinkError(Exception):
    """A delivery that failed; the record stays queued."""


@runtime_checkable
class Sink(Protocol):
    name: str
    #: Seconds between re-sends of firing alerts (None: sent once).
    resend_every: float | None

    def send(self, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def alert_record(event: Event, status: str, at: float, *, cause: str, severity: str,
                 revision: int, model_version: str, step_s: float,
                 previous_cause: str | None = None, previous_severity: str | None = None,
                 group: str | None = None) -> dict[str, Any]:
    """The one alert format every sink receives. ``cause``, ``severity`` and ``group`` are the
    alert's identity (fixed at open, cause and severity changed only by a revision, whose
    ``previous_*`` name the label set it replaces); ``event`` is the current event."""
    end = None
    if status == "resolved":
        # The incident ended after its last active window; never later than now.
        end_ts = min(pd.Timestamp(event.end) + pd.Timedelta(seconds=step_s),
                     pd.Timestamp(at, unit="s", tz="UTC"))
        end = iso(end_ts)
    return {
        "id": event.id,
        "status": status,
        "revision": int(revision),
        "entity": event.entity,
        "cause": cause,
        "severity": severity,
        "previous_cause": previous_cause,
        "previous_severity": previous_severity,
        "group": group if group is not None else (event.group or event.id),
        "starts_at": iso(event.start),
        "ends_at": end,
        "at": iso(pd.Timestamp(at, unit="s", tz="UTC")),
        "model_version": model_version,
        "event": event.to_dict(),
    }


def record_key(record: Mapping[str, Any]) -> str:
    """What a receiver de-duplicates on: the same id, status and revision is the same alert."""
    return f"{record['id']}:{record['status']}:{record.get('revision', 0)}"


# --------------------------------------------------------------------------- sinks


class StdoutSink:
    """One JSON object per line on standard output."""

    name = "stdout"
    resend_every = None

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream

    def send(self, record: Mapping[str, Any]) -> None:
        out = self.stream or sys.stdout
        try:
            out.write(json.dumps(record, default=str) + "\n")
            out.flush()
        except (OSError, ValueError) as exc:  # closed pipe or file
            raise SinkError(f"stdout: {exc}") from None

    def close(self) -> None:
        pass


class JsonlSink:
    """Appends records to a JSON Lines file, each line flushed to disk before it counts as
    delivered. A record already in the file's tail (same id, status and revision) is not
    written again, so a retry after a crash does not duplicate it."""

    resend_every = None

    def __init__(self, path: str | Path, remember: int = 10_000):
        self.path = Path(path)
        self.name = f"jsonl:{path}"
        self._seen: deque[str] = deque(maxlen=remember)
        self._seen_set: set[str] = set()
        self._torn = False
        self._load_tail(remember)

    def _load_tail(self, n: int) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - (4 << 20)))
                tail = fh.read()
        except OSError:  # none yet (or unreadable: send says so)
            return
        # A line torn by a crash is ended before the next record, which starts afresh.
        self._torn = bool(tail) and not tail.endswith(b"\n")
        lines = tail.splitlines()[-n:]
        for line in lines:
            try:
                self._remember(record_key(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from a crash: not a delivered record

    def _remember(self, key: str) -> None:
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(key)
        self._seen_set.add(key)

    def send(self, record: Mapping[str, Any]) -> None:
        key = record_key(record)
        if key in self._seen_set:
            return
        line = ("\n" if self._torn else "") + json.dumps(record, default=str) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise SinkError(f"{self.path}: {exc.strerror or exc}") from None
        self._torn = False
        self._remember(key)

    def close(self) -> None:
        pass


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        return None  # a redirect is a failure to deliver: it is reported, not followed


_opener = urllib.request.build_opener(_NoRedirect)


def post_json(url: str, body: Any, timeout: float = HTTP_TIMEOUT_S,
              headers: Mapping[str, str] | None = None) -> int:
    data = json.dumps(body, default=str).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "ftml-watch", **(headers or {})})
    try:
        with _opener.open(req, timeout=timeout) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        text = ""
        try:
            text = exc.read().decode(errors="replace")[:200]
        except OSError:
            pass
        raise SinkError(f"{url}: HTTP {exc.code} {text}".strip()) from None
    except (urllib.error.URLError, OSError) as exc:
        raise SinkError(f"{url}: {getattr(exc, 'reason', exc)}") from None


class WebhookSink:
    """POSTs each record as JSON; any 2xx is delivered. The header ``X-Ftml-Alert-Id``
    carries the id for receivers that de-duplicate on headers."""

    resend_every = None

    def __init__(self, url: str, timeout: float = HTTP_TIMEOUT_S):
        self.url = url
        self.name = f"webhook:{url}"
        self.timeout = timeout

    def send(self, record: Mapping[str, Any]) -> None:
        post_json(self.url, record, self.timeout,
                  {"X-Ftml-Alert-Id": str(record["id"]),
                   "X-Ftml-Alert-Key": record_key(record)})

    def close(self) -> None:
        pass


class AlertmanagerSink:
    """POSTs to Alertmanager's ``/api/v2/alerts``.

    Labels ``alertname``, ``entity``, ``cause``, ``severity`` and ``id`` identify the alert;
    annotations carry confidence, top metrics, playbook, score and a summary. A firing
    alert's ``endsAt`` looks :data:`ALERTMANAGER_EXPIRE_S` ahead and the loop re-sends it
    every :data:`ALERTMANAGER_RESEND_S`, as Prometheus does; the resolve sets ``endsAt`` to
    when the event ended. A revision that changes the cause resolves the old label set and
    fires the new one, in one request.
    """

    resend_every = ALERTMANAGER_RESEND_S

    def __init__(self, url: str, timeout: float = HTTP_TIMEOUT_S,
                 expire_s: float = ALERTMANAGER_EXPIRE_S):
        base = url.rstrip("/")
        if base.endswith("/api/v2/alerts"):
            base = base[: -len("/api/v2/alerts")]
        self.url = base + "/api/v2/alerts"
        self.name = f"alertmanager:{base}"
        self.timeout = timeout
        self.expire_s = expire_s

    def payload(self, record: Mapping[str, Any]) -> list[dict[str, Any]]:
        ev = record["event"]
        at = pd.Timestamp(record["at"])
        labels = {"alertname": ALERTNAME, "entity": str(record["entity"]),
                  "cause": str(record["cause"]), "severity": str(record["severity"]),
                  "id": str(record["id"]),
                  # An Alertmanager route with group_by: [group] notifies once per incident;
                  # an event outside any group is its own incident.
                  "group": str(record.get("group") or ev.get("group") or record["id"])}
        top = ", ".join(ev.get("top_metrics") or [])
        suspects = ev.get("suspects") or []
        annotations = {
            "summary": f"{record['cause']} on {record['entity']} (score {ev['score']:.3f})",
            "confidence": f"{float(ev.get('confidence') or 0.0):.3f}",
            "top_metrics": top,
            "playbook": str(ev.get("playbook") or ""),
            "score": f"{float(ev['score']):.4f}",
            "diagnosed_cause": str(ev.get("cause")),
            "model_version": str(record.get("model_version") or ""),
            "suspect": str(suspects[0][0]) if suspects else str(record["entity"]),
            "suspects": ", ".join(f"{e} {float(x):.2f}" for e, x in suspects),
            "evidence": "; ".join(ev.get("evidence") or []),
        }
        if record["status"] == "resolved":
            ends = record["ends_at"]
        else:
            ends = iso(pd.Timestamp.now(tz="UTC") + pd.Timedelta(seconds=self.expire_s))
        alerts = [{"labels": labels, "annotations": annotations,
                   "startsAt": record["starts_at"], "endsAt": ends}]
        prev = record.get("previous_cause")
        if prev and prev != record["cause"]:
            # The label set it replaces, exactly: else Alertmanager keeps that one firing.
            old = dict(labels, cause=str(prev),
                       severity=str(record.get("previous_severity") or labels["severity"]))
            alerts.insert(0, {"labels": old, "annotations": annotations,
                              "startsAt": record["starts_at"], "endsAt": iso(at)})
        return alerts

    def send(self, record: Mapping[str, Any]) -> None:
        post_json(self.url, self.payload(record), self.timeout)

    def close(self) -> None:
        pass


def make_sink(spec: str) -> Sink:
    """``stdout`` | ``jsonl:PATH`` | ``webhook:URL`` | ``alertmanager:URL`` -> a sink."""
    kind, _, arg = spec.partition(":")
    if spec == "stdout":
        return StdoutSink()
    if kind == "jsonl" and arg:
        return JsonlSink(arg)
    if kind in ("webhook", "alertmanager") and arg:
        if not arg.startswith(("http://", "https://")):
            raise ConfigError(f"not an http(s) URL: {arg!r}", where=f"--sink {spec}")
        return WebhookSink(arg) if kind == "webhook" else AlertmanagerSink(arg)
    raise ConfigError(f"unknown sink {spec!r}", where="--sink",
                      hint="use stdout, jsonl:PATH, webhook:URL or alertmanager:URL")
