"""Following logs as they are written: a file tailer that survives rotation, and journald.

:class:`FileTailer` follows one path the way ``tail -F`` does, but keeps its place so a
watch checkpoint can resume it. The file it has open is known by its inode and by a
fingerprint of its first bytes; at every read it compares them with what the path names now:

- *rename rotation* (``app.log`` -> ``app.log.1``, a new ``app.log``): the old file is read to
  its end first (through the handle still open), then the new one from its start;
- *truncation* in place (``copytruncate``, ``> app.log``): the file is shorter than what was
  read, or its first bytes changed (truncated and refilled between two reads): read again
  from the start;
- only complete lines are handed over: a last line without its newline waits for it;
- at most ``max_bytes`` are read per call (``more`` says a backlog is left), and a line longer
  than ``max_line_bytes`` is dropped and counted, so memory stays bounded whatever the file.

:class:`JournalReader` runs ``journalctl -o json --follow`` (an argument list, never a shell)
and hands over its JSON lines from a bounded queue (parsed as the ``journald`` log format); it
resumes after the last cursor it saw.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import subprocess
import threading
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ftml.errors import ConfigError

log = logging.getLogger("ftml.watch")

#: Bytes a tailer reads per call at most: a large backlog is read over several calls.
MAX_READ_BYTES = 8 << 20
#: Lines longer than this are dropped (and counted): no log record is a megabyte of text.
MAX_LINE_BYTES = 1 << 20
#: Bytes at the head of a file whose checksum tells a refilled file from the one that was read.
FINGERPRINT_BYTES = 256
#: JSON lines a journal reader buffers at most; beyond that journalctl waits (back-pressure).
MAX_JOURNAL_LINES = 100_000


class TailError(Exception):
    """A followed log cannot be read right now (a watch retries it)."""


def _fingerprint(head: bytes) -> int:
    return zlib.crc32(head)


class FileTailer:
    """Complete new lines of one log file, across rotation and truncation (see the module).

    ``start``: ``"beginning"`` reads what the file already holds, ``"end"`` only what is
    written after the first read. ``state()`` / ``restore()`` keep the place for a checkpoint.
    """

    def __init__(self, path: str | Path, *, start: str = "beginning",
                 max_bytes: int = MAX_READ_BYTES, max_line_bytes: int = MAX_LINE_BYTES):
        if start not in ("beginning", "end"):
            raise ConfigError(f"unknown start {start!r}", hint="use beginning or end")
        self.path = Path(path)
        self.start = start
        self.max_line_bytes = max(int(max_line_bytes), 1)
        # A read always has room for a whole kept line and its newline.
        self.max_bytes = max(int(max_bytes), self.max_line_bytes + 1)
        self.more = False  # data is waiting that the last read did not return
        self.long_lines = 0  # lines dropped for being longer than max_line_bytes
        self.rotations = 0
        self.truncations = 0
        self._fh: Any = None
        self._ino: int | None = None
        self._dev: int | None = None
        self._offset = 0  # bytes of the open file consumed (complete lines and dropped ones)
        self._line = 0  # lines consumed from the open file
        self._head = b""  # up to FINGERPRINT_BYTES of the file's start, as read
        self._skipping = False  # inside a too-long line: drop up to its newline
        self._first = True

    # ------------------------------------------------------------------ reading

    @property
    def line(self) -> int:
        """Lines of the open file consumed so far (the number of the next line, 0-based)."""
        return self._line

    def read(self) -> list[str]:
        """New complete lines (without their newline), oldest first."""
        lines: list[str] = []
        st = self._stat()
        if self._fh is not None and (st is None or (st.st_ino, st.st_dev) !=
                                     (self._ino, self._dev)):
            # Rotated (or removed): the rest of the old file comes first, through its handle.
            lines += self._read_chunk()
            if self.more:  # a backlog bigger than one read: finish it first
                return lines
            lines += self._rest_of_old_file()
            self._close_file()
            self.rotations += 1
            log.info("%s: rotated, reading the new file from its start", self.path)
        if st is None:
            if lines:
                return lines
            raise TailError(f"{self.path}: file not found")
        if self._fh is None:
            self._open(st, 0 if not (self._first and self.start == "end") else st.st_size)
        elif self._truncated(st):
            self.truncations += 1
            log.warning("%s: truncated (size %d, %d read): reading from the start", self.path,
                        st.st_size, self._offset)
            self._rewind()
        self._first = False
        lines += self._read_chunk()
        return lines

    def _stat(self) -> os.stat_result | None:
        try:
            return os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TailError(f"{self.path}: cannot stat: {exc.strerror}") from None

    def _truncated(self, st: os.stat_result) -> bool:
        if st.st_size < self._offset:
            return True
        if not self._head:
            return False
        # Same size or larger but other first bytes: truncated and refilled between reads.
        return os.pread(self._fh.fileno(), len(self._head), 0) != self._head

    def _open(self, st: os.stat_result, offset: int = 0, line: int = 0,
              head: bytes = b"") -> None:
        try:
            self._fh = open(self.path, "rb")  # noqa: SIM115 - held open across reads
        except FileNotFoundError:
            raise TailError(f"{self.path}: file not found") from None
        except OSError as exc:
            raise TailError(f"{self.path}: cannot open: {exc.strerror}") from None
        fst = os.fstat(self._fh.fileno())
        if (fst.st_ino, fst.st_dev) != (st.st_ino, st.st_dev):
            offset, line, head = 0, 0, b""  # replaced between stat and open: read what is open
        self._ino, self._dev = fst.st_ino, fst.st_dev
        self._offset, self._line, self._head = offset, line, head
        self._skipping = False
        if offset and not head:
            self._head = os.pread(self._fh.fileno(), min(offset, FINGERPRINT_BYTES), 0)

    def _rewind(self) -> None:
        self._offset, self._line, self._head, self._skipping = 0, 0, b"", False

    def _read_chunk(self) -> list[str]:
        fd = self._fh.fileno()
        data = os.pread(fd, self.max_bytes, self._offset)
        self.more = len(data) == self.max_bytes
        end = data.rfind(b"\n")
        if end < 0:
            if self._skipping or len(data) > self.max_line_bytes:
                # A line longer than we keep: drop it as it comes, up to its newline.
                self._offset += len(data)
                if not self._skipping:
                    self._dropped_long()
                self._skipping = True
            return []
        block = data[:end + 1]
        at = self._offset
        self._offset += len(block)
        if len(self._head) < FINGERPRINT_BYTES and self._offset > len(self._head):
            self._head = os.pread(fd, min(self._offset, FINGERPRINT_BYTES), 0)
        raw = block.split(b"\n")[:-1]
        if self._skipping:  # the end of a dropped line
            raw = raw[1:]
            self._line += 1
            self._skipping = False
        keep = [item for item in raw if len(item) <= self.max_line_bytes]
        if len(keep) < len(raw):
            for _ in range(len(raw) - len(keep)):
                self._dropped_long()
        self._line += len(raw)
        if not keep:
            return []
        text = b"\n".join(keep).decode("utf-8", errors="replace")  # one decode per block
        out = [ln.removesuffix("\r") for ln in text.split("\n")]
        if at == 0 and out[0].startswith("\ufeff"):
            out[0] = out[0][1:]
        return out

    def _dropped_long(self) -> None:
        self.long_lines += 1
        log.warning("%s: a line near line %d is longer than %d bytes: dropped (%d so far)",
                    self.path, self._line + 1, self.max_line_bytes, self.long_lines)

    def _rest_of_old_file(self) -> list[str]:
        """A last line without its newline in a file that was rotated away: it will not get
        one (the writer has moved on), so it is a line."""
        rest = os.pread(self._fh.fileno(), self.max_line_bytes + 1, self._offset)
        if not rest or self._skipping or len(rest) > self.max_line_bytes:
            return []
        self._offset += len(rest)
        self._line += 1
        return [rest.decode("utf-8", errors="replace").removesuffix("\r")]

    def _close_file(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh, self._ino, self._dev = None, None, None

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict[str, Any]:
        return {"path": str(self.path), "ino": self._ino, "dev": self._dev,
                "offset": self._offset, "line": self._line,
                "fingerprint": _fingerprint(self._head) if self._head else None,
                "head_bytes": len(self._head)}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Resume at a checkpoint's place: in the same file if the path still names it, else in
        the rotated file beside it that holds it (its rest is read first), else from the
        start of what the path names now."""
        ino, offset = state.get("ino"), int(state.get("offset") or 0)
        if ino is None:
            return
        self._first = False
        self._close_file()
        candidates = [self.path] + sorted(p for p in self.path.parent.glob(self.path.name + "*")
                                          if p != self.path)
        for cand in candidates:
            try:
                st = os.stat(cand)
            except OSError:
                continue
            if st.st_ino != ino or (state.get("dev") is not None and st.st_dev != state["dev"]):
                continue
            if st.st_size < offset or not self._same_head(cand, state):
                break
            path, self.path = self.path, cand
            try:
                self._open(st, offset, int(state.get("line") or 0))
            finally:
                self.path = path
            if cand != self.path:
                log.info("%s: rotated while stopped: reading the rest of %s first", self.path,
                         cand)
            return
        log.warning("%s: not the file of the checkpoint (rotated or truncated while stopped): "
                    "reading it from the start", self.path)

    @staticmethod
    def _same_head(path: Path, state: Mapping[str, Any]) -> bool:
        n, want = int(state.get("head_bytes") or 0), state.get("fingerprint")
        if not n or want is None:
            return True
        try:
            with open(path, "rb") as fh:
                return _fingerprint(fh.read(n)) == want
        except OSError:
            return False

    def close(self) -> None:
        self._close_file()


# --------------------------------------------------------------------------- journald


class JournalReader:
    """JSON lines from ``journalctl -o json --follow``, read by a thread into a bounded
    queue so that reads never block.

    ``units`` limit it to some systemd units (``-u``); ``since`` (journalctl's syntax) sets
    where a first start begins (default: only new records); a restored cursor wins over both.
    ``directory`` reads the journal files of a directory (``-D``) instead of the system's.
    """

    def __init__(self, *, units: Sequence[str] = (), since: str | None = None,
                 directory: str | None = None, journalctl: str = "journalctl",
                 max_lines: int = MAX_JOURNAL_LINES):
        self.units = list(units)
        self.since = since
        self.directory = directory
        self.journalctl = journalctl
        self.max_lines = max_lines
        self.cursor: str | None = None
        self.more = False
        self._proc: subprocess.Popen | None = None
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=max_lines)
        self._thread: threading.Thread | None = None
        self._ended = False
        self._stderr = b""

    def command(self) -> list[str]:
        exe = shutil.which(self.journalctl)
        if exe is None:
            raise ConfigError(f"{self.journalctl} not found: cannot read the systemd journal",
                              where="--logs journald",
                              hint="run where systemd's journalctl is installed, or tail the "
                                   "log files instead (--logs PATH)")
        cmd = [exe, "-o", "json", "--follow", "--no-pager", "--quiet"]
        if self.directory:
            cmd += ["-D", self.directory]
        for unit in self.units:
            cmd += ["-u", unit]
        if self.cursor:
            cmd += ["--after-cursor", self.cursor]
        elif self.since:
            cmd += ["--since", self.since]
        else:
            cmd += ["--lines", "0"]
        return cmd

    def start(self) -> None:
        if self._proc is not None:
            return
        cmd = self.command()
        try:
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise TailError(f"cannot run {cmd[0]}: {exc.strerror}") from None
        self._ended = False
        self._thread = threading.Thread(target=self._pump, name="ftml-journal", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        for raw in proc.stdout:
            self._queue.put(raw)  # blocks when full: journalctl waits, nothing is dropped
        self._stderr = proc.stderr.read() if proc.stderr is not None else b""
        self._queue.put(None)

    def read(self, limit: int | None = None) -> list[str]:
        """JSON lines that arrived since the last read (at most ``limit``), oldest first, for
        the ``journald`` log format to parse. Raises TailError once journalctl has exited
        (the watch retries: a new one starts after the last cursor)."""
        self.start()
        limit = self.max_lines if limit is None else limit
        out: list[str] = []
        while len(out) < limit:
            try:
                raw = self._queue.get_nowait()
            except queue.Empty:
                break
            if raw is None:
                self._ended = True
                break
            out.append(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
        self._note_cursor(out)
        self.more = not self._queue.empty()
        if self._ended and not out:
            code = self._proc.wait() if self._proc is not None else None
            why = self._stderr.decode("utf-8", errors="replace").strip().splitlines()
            self._reap()
            raise TailError(f"journalctl exited (status {code})" +
                            (f": {why[-1]}" if why else ""))
        return out

    def _note_cursor(self, lines: list[str]) -> None:
        """The cursor of the newest record (only the last lines are decoded here)."""
        for line in reversed(lines):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("__CURSOR"), str):
                self.cursor = rec["__CURSOR"]
                return

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._queue = queue.Queue(maxsize=self.max_lines)
        self._ended = False

    def state(self) -> dict[str, Any]:
        return {"cursor": self.cursor}

    def restore(self, state: Mapping[str, Any]) -> None:
        cursor = state.get("cursor")
        if isinstance(cursor, str) and cursor:
            self.cursor = cursor

    def close(self) -> None:
        self._reap()
