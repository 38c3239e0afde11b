"""Audit log: durable records, filters, the table, redaction."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from ftml.audit import (
    OUTPUT_LIMIT,
    AuditLog,
    audit_table,
    connect,
    excerpt,
    format_audit,
    read_audit,
    redact,
)
from ftml.errors import ConfigError
from ftml.events import Event

T0 = pd.Timestamp("2024-05-01T10:00:00Z").timestamp()


def event(entity="web-1") -> Event:
    t = pd.Timestamp(T0, unit="s")
    return Event(entity=entity, start=t, end=t, score=0.5, cause="memory_leak",
                 confidence=0.87, id=f"ev-{entity}", status="open")


def test_state_db_is_wal_with_full_sync(tmp_path):
    log = AuditLog(tmp_path)
    assert log.path == str(tmp_path / "state.db")
    assert log.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert log.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    log.close()


def test_record_and_read_back_every_field(tmp_path):
    with AuditLog(tmp_path) as log:
        rid = log.record(kind="step", decision="ok", at=T0, event=event(), model_version="m1",
                         playbook="leak", step=1, action="restart",
                         arguments={"argv": ["/bin/restart", "web-1"]}, exit_code=0,
                         output="done", duration_s=0.25, verified=1,
                         verification={"readings": {"mem_used_pct": 50.0}})
    rows = read_audit(tmp_path)
    assert len(rows) == 1
    row = rows[0]
    assert row["id"] == rid
    assert row["ts"] == "2024-05-01T10:00:00Z"
    assert (row["event_id"], row["entity"], row["cause"], row["confidence"]) == (
        "ev-web-1", "web-1", "memory_leak", 0.87)
    assert (row["model_version"], row["playbook"], row["step"], row["action"]) == (
        "m1", "leak", 1, "restart")
    assert json.loads(row["arguments"]) == {"argv": ["/bin/restart", "web-1"]}
    assert (row["exit_code"], row["output"], row["duration_s"], row["verified"]) == (
        0, "done", 0.25, 1)
    assert json.loads(row["verification"])["readings"]["mem_used_pct"] == 50.0


def test_filters_by_since_and_entity(tmp_path):
    with AuditLog(tmp_path) as log:
        for i, entity in enumerate(["a", "b", "a", "b"]):
            log.record(kind="decision", decision="skip", reason="cooldown",
                       at=T0 + i * 3600, event=event(entity))
    assert len(read_audit(tmp_path)) == 4
    assert [r["entity"] for r in read_audit(tmp_path, entity="a")] == ["a", "a"]
    assert len(read_audit(tmp_path, since="2024-05-01T11:30:00Z")) == 2
    assert len(read_audit(tmp_path, since=pd.Timestamp("2024-05-01T12:00Z"))) == 2
    # A duration means that long before now.
    assert len(read_audit(tmp_path, since="90m", now=T0 + 3 * 3600)) == 2
    assert len(read_audit(tmp_path, since="1h", entity="b", now=T0 + 3 * 3600)) == 1
    rows, text = audit_table(tmp_path, entity="b")
    assert len(rows) == 2 and len(text.splitlines()) == 3
    with pytest.raises(ConfigError, match="cannot read since"):
        read_audit(tmp_path, since="yesterday-ish")


def test_read_audit_without_a_db_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no audit log here"):
        read_audit(tmp_path / "nowhere")


def test_unknown_columns_are_refused():
    with AuditLog() as log, pytest.raises(ValueError, match="unknown audit columns"):
        log.record(kind="decision", decision="skip", secret_sauce=1)


def test_secrets_are_scrubbed_from_every_text():
    with AuditLog() as log:
        log.record(kind="step", decision="failed", arguments={"headers": {"A": "Bearer s3cr3t"}},
                   output="echo: s3cr3t", detail="bad token s3cr3t", secrets=["s3cr3t", ""])
        row = log.read()[0]
    assert "s3cr3t" not in json.dumps(row)
    assert row["output"] == "echo: ***"


def test_redact_nested_and_longest_first():
    value = {"a": ["token-abc", {"b": "abc"}], "n": 3}
    assert redact(value, ["abc", "token-abc"]) == {"a": ["***", {"b": "***"}], "n": 3}
    assert redact("x", []) == "x"


def test_output_excerpt_is_bounded_and_keeps_the_tail():
    big = "x" * 10_000 + "the error at the end"
    short = excerpt(big)
    assert len(short.encode()) <= OUTPUT_LIMIT
    assert short.endswith("the error at the end") and short.startswith("[...] ")
    with AuditLog() as log:
        log.record(kind="step", decision="failed", output=big)
        assert len(log.read()[0]["output"].encode()) <= OUTPUT_LIMIT
    assert excerpt(b"\xff ok") == "\ufffd ok"


def test_format_audit_prints_a_table():
    with AuditLog() as log:
        log.record(kind="decision", decision="skip", reason="cooldown", at=T0, event=event(),
                   playbook="leak", detail="cooldown: 10m after the last recovery " + "x" * 80)
        log.record(kind="step", decision="ok", at=T0 + 60, event=event(), playbook="leak",
                   step=1, action="restart", exit_code=0, duration_s=1.23456, verified=1)
        text = format_audit(log.read())
    header, first, second = text.splitlines()
    assert header.split() == ["ts", "entity", "cause", "playbook", "kind", "decision", "reason",
                              "action", "exit_code", "duration_s", "verified", "detail"]
    assert "2024-05-01T10:00:00Z" in first and "cooldown" in first and first.endswith("...")
    assert "restart" in second and "1.23" in second
    assert format_audit([]) == "(no audit records)"


def test_nothing_is_lost_when_the_process_is_killed(tmp_path):
    # The child records, reports each committed id, then SIGKILLs itself mid-stream.
    code = textwrap.dedent(f"""
        import os, signal, sys
        from ftml.audit import AuditLog
        log = AuditLog({str(tmp_path)!r})
        for i in range(50):
            log.record(kind="decision", decision="skip", reason="cooldown", at=float(i))
            print(i, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -9
    committed = len(proc.stdout.split())
    assert committed == 50
    assert len(read_audit(tmp_path)) == committed


def test_connect_creates_parent_folders(tmp_path):
    conn = connect(tmp_path / "a" / "b" / "state.db")
    assert (tmp_path / "a" / "b" / "state.db").exists()
    conn.close()
