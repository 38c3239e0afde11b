"""Waking the loop before its interval is up: from a signal handler (``stop``) or a
source's reader thread (new input)."""

from __future__ import annotations

import contextlib
import os
import select
import weakref


class Waker:
    """Wakes the loop early: an Event whose ``set`` takes no lock, so a signal handler may
    call it. (``threading.Event.set`` takes a lock the interrupted main thread may already
    hold -- a deadlock, and the stop request lost.) A byte in a non-blocking pipe."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        # Closed only when unreachable: a source's reader thread may still set it after
        # shutdown, and a closed descriptor's number may by then belong to another file.
        weakref.finalize(self, _close_fds, self._r, self._w)

    def set(self) -> None:
        with contextlib.suppress(OSError):  # full (already set) or closed
            os.write(self._w, b"x")

    def wait(self, timeout: float | None) -> bool:
        """True when set (now or within ``timeout`` seconds); does not clear."""
        try:
            ready, _, _ = select.select([self._r], [], [], None if timeout is None
                                        else max(0.0, timeout))
        except (OSError, ValueError):
            return False
        return bool(ready)

    def clear(self) -> None:
        with contextlib.suppress(OSError):  # BlockingIOError: drained
            while os.read(self._r, 4096):
                continue


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
