"""Starting, stopping and the work between ticks: the start checks, trimming and periodic
checkpoints, a stop a signal handler may ask for, and the clean shutdown."""

from __future__ import annotations

import logging
import time

from ftml.errors import ConfigError, FtmlError
from ftml.sources import SourceError

log = logging.getLogger("ftml.watch")  # one logger for the whole loop: what users filter on


class LifecycleMixin:
    """Start checks, idle-time work, stop and shutdown (a part of :class:`Watcher`)."""

    def check_sources(self) -> None:
        """Raise ConfigError naming every source that cannot be read now (a missing file,
        a Prometheus that does not answer): at start that is a setting to fix, not an
        outage to wait out. Sources without a ``check`` (stdin, local) pass."""
        failed = []
        for src in self.sources:
            check = getattr(src, "check", None)
            if check is None:
                continue
            try:
                check()
            except (SourceError, OSError, FtmlError) as exc:
                failed.append(str(exc))
        if failed:
            raise ConfigError(f"source unavailable at start: {'; '.join(failed)}",
                              hint="fix the --source, or pass --wait-for-source to retry "
                                   "until it answers")

    def maintain(self) -> float:
        """Work between ticks, in the loop's idle time: dropping raw rows too old to matter
        (a copy of the buffers, now and then) and the periodic checkpoint. Returns the seconds
        it took (0 when nothing was due)."""
        started = time.perf_counter()
        if self.state_dir is not None and \
                self.clock.now() - self._last_checkpoint >= self.config.checkpoint_every:
            self._trim(0.0)  # the checkpoint then holds only the rows a restore needs
            self.checkpoint()
            return time.perf_counter() - started
        return time.perf_counter() - started if self._trim(2.0) else 0.0

    def _trim(self, factor: float) -> bool:
        if not self._buffers.trim(factor):
            return False
        b = self._buffers
        self._snapshot = (b.ent, b.ts, b.vals)
        return True

    def stop(self, reason: str | None = None) -> None:
        """Ask the loop to finish its tick and shut down. Takes no lock and does no I/O but
        one byte to a pipe, so a signal handler may call it."""
        if reason is not None and self.stop_reason is None:
            self.stop_reason = reason
        self._stopping = True
        self._nudge.set()

    def shutdown(self, flush_seconds: float = 3.0) -> None:
        """Flush sinks (bounded), write state, stop threads and the HTTP server."""
        if self.stop_reason is not None:
            log.info("%s: tick finished, stopping", self.stop_reason)
        self.stop()
        self._wake.set()
        if self._delivery is not None:
            self._delivery.join(timeout=flush_seconds + 1)
            self._delivery = None
        if self.state_dir is None:  # held-back resolves would be lost: out with them now
            self.book.release(None)
        self.book.deliver(self.clock.now(), self.metrics,
                          (self.config.backoff_initial, self.config.backoff_max),
                          deadline=time.monotonic() + flush_seconds)
        if self._engine_thread is not None:
            self._engine_q.put(None)
            self._engine_thread.join(timeout=2.0)
            if self._engine_thread.is_alive():
                log.warning("a recovery action is still running; its state is in the "
                            "engine's database")
        self.checkpoint()
        if self.book.dirty:
            self.book.save()
        for s in self.sources:
            s.close()
        for s in self.sinks:
            s.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
