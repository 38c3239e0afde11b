"""Alert sinks: the record format, stdout, JSON Lines (no duplicate after a retry), webhook
and Alertmanager payloads delivered to a real HTTP server on loopback, failures as
SinkError."""

from __future__ import annotations

import io
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from ftml.errors import ConfigError
from ftml.events import Event
from ftml.sinks import (
    ALERTNAME,
    AlertmanagerSink,
    JsonlSink,
    SinkError,
    StdoutSink,
    WebhookSink,
    alert_record,
    make_sink,
    record_key,
)

AT = pd.Timestamp("2026-02-01T10:30:00Z").timestamp()


def event(**kw) -> Event:
    d = dict(entity="web-1", start=pd.Timestamp("2026-02-01T10:00:00Z"),
             end=pd.Timestamp("2026-02-01T10:20:00Z"), score=0.81, cause="cpu_hog",
             confidence=0.93, top_causes=[("cpu_hog", 0.93), ("mem_leak", 0.07)],
             top_metrics=["cpu", "latency"], playbook="hog", cause_source="classifier",
             status="open", id="abc123")
    d.update(kw)
    return Event(**d)


def record(status="firing", **kw):
    return alert_record(event(status="open" if status == "firing" else "resolved"), status,
                        AT, cause=kw.pop("cause", "cpu_hog"),
                        severity=kw.pop("severity", "critical"),
                        revision=kw.pop("revision", 0), model_version="m1", step_s=60,
                        previous_cause=kw.pop("previous_cause", None),
                        previous_severity=kw.pop("previous_severity", None),
                        group=kw.pop("group", None))


class Receiver:
    """A real HTTP server on loopback that records what it is sent (status settable)."""

    def __init__(self):
        self.bodies: list = []
        self.headers: list = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                n = int(self.headers["Content-Length"])
                receiver.bodies.append(json.loads(self.rfile.read(n)))
                receiver.headers.append(dict(self.headers))
                self.send_response(receiver.status)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_record_has_a_stable_id_and_ends_only_when_resolved():
    fire, res = record("firing"), record("resolved")
    assert fire["id"] == res["id"] == "abc123"
    assert fire["ends_at"] is None
    # The incident ended one step after its last active window.
    assert res["ends_at"] == "2026-02-01T10:21:00Z"
    assert fire["event"]["top_metrics"] == ["cpu", "latency"]
    assert record_key(fire) != record_key(res)
    assert record_key(record(revision=1)) != record_key(fire)
    json.dumps(fire)  # plain JSON


def test_resolve_never_ends_after_it_was_decided():
    late = alert_record(event(end=pd.Timestamp("2026-02-01T10:40:00Z")), "resolved", AT,
                        cause="x", severity="warning", revision=0, model_version="m",
                        step_s=60)
    assert late["ends_at"] == "2026-02-01T10:30:00Z"


def test_stdout_writes_one_json_object_per_line():
    buf = io.StringIO()
    sink = StdoutSink(buf)
    sink.send(record())
    sink.send(record("resolved"))
    lines = buf.getvalue().splitlines()
    assert [json.loads(x)["status"] for x in lines] == ["firing", "resolved"]


def test_jsonl_does_not_write_a_record_twice_even_across_restarts(tmp_path):
    path = tmp_path / "out" / "alerts.jsonl"
    a = JsonlSink(path)
    a.send(record())
    a.send(record())
    # A crash after writing but before the queue knew: the next process retries.
    with open(path, "a") as fh:
        fh.write('{"torn": ')  # a line cut by the crash is not a record
    b = JsonlSink(path)
    b.send(record())
    b.send(record("resolved"))
    lines = path.read_text().splitlines()
    assert [json.loads(x)["status"] for x in lines if x.startswith('{"id"')] == \
        ["firing", "resolved"]


def test_jsonl_unwritable_is_a_sink_error(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(SinkError):
        JsonlSink(tmp_path / "dir").send(record())


def test_webhook_posts_the_record_with_its_id(receiver):
    sink = WebhookSink(receiver.url + "/hook")
    sink.send(record())
    assert receiver.bodies == [json.loads(json.dumps(record()))]
    assert receiver.headers[0]["X-Ftml-Alert-Id"] == "abc123"


@pytest.mark.parametrize("status", [500, 404, 302])
def test_webhook_non_2xx_is_a_sink_error(receiver, status):
    receiver.status = status
    with pytest.raises(SinkError, match=str(status)):
        WebhookSink(receiver.url).send(record())


def test_connection_refused_is_a_sink_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SinkError):
        WebhookSink(f"http://127.0.0.1:{port}/", timeout=2).send(record())


def test_alertmanager_payload_labels_annotations_and_times(receiver):
    sink = AlertmanagerSink(receiver.url + "/")
    assert sink.url == receiver.url + "/api/v2/alerts"
    sink.send(record())
    sink.send(record("resolved"))
    firing, resolved = receiver.bodies[0][0], receiver.bodies[1][0]
    assert firing["labels"] == {"alertname": ALERTNAME, "entity": "web-1",
                                "cause": "cpu_hog", "severity": "critical", "id": "abc123",
                                "group": "abc123"}  # no group: the event is its own
    assert resolved["labels"] == firing["labels"]
    ann = firing["annotations"]
    assert ann["confidence"] == "0.930" and ann["top_metrics"] == "cpu, latency"
    assert ann["playbook"] == "hog"
    assert firing["startsAt"] == resolved["startsAt"] == "2026-02-01T10:00:00Z"
    # Firing: endsAt ahead of now (refreshed by re-sends); resolved: when it ended.
    assert pd.Timestamp(firing["endsAt"]) > pd.Timestamp.now(tz="UTC")
    assert resolved["endsAt"] == "2026-02-01T10:21:00Z"


def test_alertmanager_alerts_of_one_group_share_its_label_and_name_the_suspect():
    sink = AlertmanagerSink("http://127.0.0.1:9093")
    bodies = []
    for entity, eid in (("frontend", "e1"), ("cart", "e2")):
        ev = event(entity=entity, id=eid, group="g42", suspects=[["cart", 0.9],
                                                                  ["frontend", 0.4]],
                   evidence=["cart: cpu z=8.0, moved first"])
        bodies += sink.payload(alert_record(ev, "firing", AT, cause="cpu_hog",
                                            severity="critical", revision=0,
                                            model_version="m1", step_s=60))
    assert [b["labels"]["group"] for b in bodies] == ["g42", "g42"]
    assert [b["labels"]["id"] for b in bodies] == ["e1", "e2"]
    assert {b["annotations"]["suspect"] for b in bodies} == {"cart"}
    assert bodies[0]["annotations"]["suspects"] == "cart 0.90, frontend 0.40"
    assert bodies[0]["annotations"]["evidence"] == "cart: cpu z=8.0, moved first"


def test_alertmanager_revision_resolves_the_old_label_set_and_fires_the_new():
    sink = AlertmanagerSink("http://127.0.0.1:9093/api/v2/alerts")
    body = sink.payload(record(cause="mem_leak", previous_cause="unknown", revision=1))
    assert [a["labels"]["cause"] for a in body] == ["unknown", "mem_leak"]
    assert body[0]["endsAt"] == "2026-02-01T10:30:00Z"
    assert {a["labels"]["id"] for a in body} == {"abc123"}


def test_alertmanager_revision_resolves_exactly_the_label_set_that_fired():
    # Opened as unknown (severity warning) in group g1; revised to a critical cause while the
    # event's live group id moved on: the resolve names the labels Alertmanager holds, else
    # the first alert stays active for ever (seen with a real Alertmanager).
    sink = AlertmanagerSink("http://127.0.0.1:9093/api/v2/alerts")
    first = sink.payload(record(cause="unknown", severity="warning", group="g1"))[0]["labels"]
    body = sink.payload(record(cause="mem_leak", severity="critical", revision=1,
                               previous_cause="unknown", previous_severity="warning",
                               group="g1"))
    assert body[0]["labels"] == first
    assert body[1]["labels"] == dict(first, cause="mem_leak", severity="critical")


@pytest.mark.parametrize("spec, kind", [
    ("stdout", StdoutSink), ("jsonl:/tmp/x.jsonl", JsonlSink),
    ("webhook:http://127.0.0.1:1/h", WebhookSink),
    ("alertmanager:https://am.example:9093", AlertmanagerSink),
])
def test_make_sink(spec, kind):
    assert isinstance(make_sink(spec), kind)


@pytest.mark.parametrize("spec", ["email:me", "webhook:ftp://x", "jsonl:", "alertmanager"])
def test_make_sink_refuses_bad_specs(spec):
    with pytest.raises(ConfigError):
        make_sink(spec)
