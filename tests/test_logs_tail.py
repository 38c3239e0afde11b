"""Following log files across rotation and truncation, and the journald reader, on real files
and real processes."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import time

import numpy as np
import pytest

from ftml.errors import ConfigError
from ftml.logs.tail import FileTailer, JournalReader, TailError


def append(path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)


def drain(tailer: FileTailer) -> list[str]:
    out = tailer.read()
    while tailer.more:
        out += tailer.read()
    return out


def test_only_complete_lines_and_the_partial_one_when_its_newline_comes(tmp_path):
    path = tmp_path / "app.log"
    path.write_text("one\ntwo\nthr")
    t = FileTailer(path)
    assert t.read() == ["one", "two"]
    assert t.read() == []
    append(path, "ee\r\nfour\n")
    assert t.read() == ["three", "four"]
    assert t.line == 4


def test_many_small_appends_give_every_line_once_in_order(tmp_path):
    path = tmp_path / "app.log"
    path.write_text("")
    rng = np.random.default_rng(0)
    want = [f"2026-01-05 00:00:{i % 60:02d},000 INFO app: request {i} é" for i in range(2000)]
    text = "".join(line + "\n" for line in want)
    t = FileTailer(path)
    got: list[str] = []
    at = 0
    while at < len(text):
        size = int(rng.integers(1, 120))
        append(path, text[at:at + size])
        at += size
        got += t.read()
    got += t.read()
    assert got == want


def test_rename_rotation_reads_the_old_file_to_its_end_then_the_new_one(tmp_path):
    path = tmp_path / "app.log"
    path.write_text("a1\na2\n")
    t = FileTailer(path)
    assert t.read() == ["a1", "a2"]
    append(path, "a3\na4 without newline")  # written just before the rename
    os.rename(path, tmp_path / "app.log.1")
    path.write_text("b1\nb2\n")
    assert t.read() == ["a3", "a4 without newline", "b1", "b2"]
    assert t.rotations == 1
    append(path, "b3\n")
    assert t.read() == ["b3"]


def test_rotation_with_a_backlog_bigger_than_one_read(tmp_path):
    path = tmp_path / "app.log"
    path.write_text("")
    t = FileTailer(path, max_bytes=64, max_line_bytes=20)
    assert t.read() == []
    old = [f"old line {i:04d}" for i in range(50)]
    append(path, "".join(x + "\n" for x in old))
    os.rename(path, tmp_path / "app.log.1")
    path.write_text("new 1\n")
    got = drain(t)
    got += t.read()
    assert got == old + ["new 1"]


def test_truncate_in_place_reads_again_from_the_start(tmp_path):
    path = tmp_path / "app.log"
    path.write_text("x1\nx2\nx3\n")
    t = FileTailer(path)
    assert t.read() == ["x1", "x2", "x3"]
    with open(path, "r+") as fh:  # copytruncate
        fh.truncate(0)
    append(path, "y1\n")
    assert t.read() == ["y1"]
    assert t.truncations == 1


def test_truncated_and_refilled_past_the_old_size_is_noticed(tmp_path):
    path = tmp_path / "app.log"
    path.write_text("first 1\nfirst 2\n")
    t = FileTailer(path)
    assert t.read() == ["first 1", "first 2"]
    ino = path.stat().st_ino
    with open(path, "r+") as fh:
        fh.truncate(0)
    append(path, "second 1\nsecond 2\nsecond 3\n")  # larger than what was read
    assert path.stat().st_ino == ino
    assert t.read() == ["second 1", "second 2", "second 3"]


def test_a_line_longer_than_the_limit_is_dropped_and_counted_not_kept(tmp_path):
    path = tmp_path / "app.log"
    path.write_text("ok 1\n" + "x" * 5000)
    t = FileTailer(path, max_bytes=300, max_line_bytes=200)
    got = drain(t)
    assert got == ["ok 1"]
    append(path, "y" * 3000 + "\nok 2\n")
    got = drain(t)
    got += drain(t)
    assert got == ["ok 2"]
    assert t.long_lines == 1
    append(path, "z" * 250 + "\nok 3\n")  # a long line inside one read
    assert drain(t) == ["ok 3"]
    assert t.long_lines == 2


def test_a_backlog_is_read_in_bounded_steps(tmp_path):
    path = tmp_path / "app.log"
    path.write_text("".join(f"line {i:05d}\n" for i in range(10_000)))
    t = FileTailer(path, max_bytes=4096, max_line_bytes=100)
    first = t.read()
    assert t.more and 0 < len(first) <= 4096 // 11
    rest = drain(t)
    assert first + rest == [f"line {i:05d}" for i in range(10_000)]
    assert not t.more


def test_start_at_end_skips_what_the_file_held(tmp_path):
    path = tmp_path / "app.log"
    path.write_text("old\n")
    t = FileTailer(path, start="end")
    assert t.read() == []
    append(path, "new\n")
    assert t.read() == ["new"]
    with pytest.raises(ConfigError):
        FileTailer(path, start="middle")


def test_a_missing_file_is_a_tail_error_until_it_appears(tmp_path):
    path = tmp_path / "later.log"
    t = FileTailer(path)
    with pytest.raises(TailError, match="not found"):
        t.read()
    path.write_text("here\n")
    assert t.read() == ["here"]


def test_checkpoint_resumes_where_it_stopped(tmp_path):
    path = tmp_path / "app.log"
    path.write_text("a\nb\n")
    t = FileTailer(path)
    assert t.read() == ["a", "b"]
    state = t.state()
    t.close()
    append(path, "c\n")
    again = FileTailer(path)
    again.restore(state)
    assert again.read() == ["c"]
    assert again.line == 3


def test_checkpoint_after_a_rotation_while_stopped_reads_the_rest_of_the_rotated_file(tmp_path):
    path = tmp_path / "app.log"
    path.write_text("a\nb\n")
    t = FileTailer(path)
    assert t.read() == ["a", "b"]
    state = t.state()
    t.close()
    append(path, "c\n")
    os.rename(path, tmp_path / "app.log.1")
    path.write_text("d\n")
    again = FileTailer(path)
    again.restore(state)
    assert drain(again) + again.read() == ["c", "d"]


def test_checkpoint_of_a_file_truncated_while_stopped_reads_from_the_start(tmp_path):
    path = tmp_path / "app.log"
    path.write_text("a\nb\n")
    t = FileTailer(path)
    t.read()
    state = t.state()
    t.close()
    with open(path, "r+") as fh:
        fh.truncate(0)
    append(path, "new a\nnew b\nnew c\n")  # same inode, other content, larger
    again = FileTailer(path)
    again.restore(state)
    assert again.read() == ["new a", "new b", "new c"]


def test_invalid_utf8_is_replaced_not_fatal(tmp_path):
    path = tmp_path / "app.log"
    path.write_bytes(b"\xef\xbb\xbfgood\nbad \xff\xfe byte\n")
    assert FileTailer(path).read() == ["good", "bad \ufffd\ufffd byte"]


# --------------------------------------------------------------------------- journald


FAKE_JOURNALCTL = """#!{python}
import json, sys, time
args = sys.argv[1:]
after = args[args.index("--after-cursor") + 1] if "--after-cursor" in args else None
start = int(after.split("=")[1]) + 1 if after else 0
for i in range(start, start + 3):
    print(json.dumps({{"__CURSOR": f"s=%d" % i, "__REALTIME_TIMESTAMP": str(1767571200000000 + i),
                       "_SYSTEMD_UNIT": "app.service", "PRIORITY": "3" if i % 2 else "6",
                       "MESSAGE": f"message {{i}}", "ARGS": " ".join(args)}}), flush=True)
print("not json", flush=True)
if "--exit" in " ".join(args) or start > 0:
    sys.exit(0)
time.sleep(60)
"""


@pytest.fixture
def fake_journalctl(tmp_path):
    exe = tmp_path / "bin" / "journalctl"
    exe.parent.mkdir()
    exe.write_text(FAKE_JOURNALCTL.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return str(exe)


def read_until(reader: JournalReader, n: int, timeout: float = 10.0) -> list[str]:
    out: list[str] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out += reader.read()
        time.sleep(0.02)
    return out


def test_journal_reader_hands_over_records_and_resumes_after_its_cursor(fake_journalctl):
    reader = JournalReader(units=["app.service"], journalctl=fake_journalctl)
    try:
        lines = read_until(reader, 4)
        assert lines[3] == "not json"  # handed over as it is: the parser counts it as bad
        got = [json.loads(x) for x in lines[:3]]
        assert [r["MESSAGE"] for r in got] == ["message 0", "message 1", "message 2"]
        args = got[0]["ARGS"].split()
        assert args[:3] == ["-o", "json", "--follow"] and ["-u", "app.service"] == args[5:7]
        assert "--lines" in args  # a first start reads only new records
        assert reader.cursor == "s=2"
        state = reader.state()
    finally:
        reader.close()
    again = JournalReader(journalctl=fake_journalctl)
    again.restore(state)
    try:
        got = [json.loads(x) for x in read_until(again, 3)[:3]]
        assert [r["MESSAGE"] for r in got] == ["message 3", "message 4", "message 5"]
        assert "--after-cursor s=2" in got[0]["ARGS"]
        with pytest.raises(TailError, match="exited"):  # this one exits after its records
            for _ in range(200):
                again.read()
                time.sleep(0.02)
    finally:
        again.close()


def test_journal_reader_without_journalctl_is_one_clear_error():
    reader = JournalReader(journalctl="no-such-journalctl-here")
    with pytest.raises(ConfigError, match="not found") as exc:
        reader.read()
    assert "--logs PATH" in exc.value.hint


@pytest.mark.skipif(shutil.which("journalctl") is None, reason="no journalctl here")
def test_real_journalctl_follows_and_closes():
    reader = JournalReader(since="now")
    try:
        out = reader.read()
        assert isinstance(out, list)
        assert reader._proc is not None and reader._proc.poll() is None
    finally:
        reader.close()
    assert reader._proc is None
