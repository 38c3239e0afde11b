"""``/metrics`` and ``/healthz`` over HTTP, and the ``--listen`` address."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pandas as pd

from ftml.errors import ConfigError

log = logging.getLogger("ftml.watch")  # one logger for the whole loop: what users filter on


class ServerMixin:
    """The HTTP endpoints (a part of :class:`Watcher`)."""

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Start ``/metrics`` and ``/healthz`` on host:port (port 0: any free one)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        watcher = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, ctype, code = generate_latest(watcher.registry), CONTENT_TYPE_LATEST, 200
                elif path == "/healthz":
                    code, info = watcher.health()
                    body, ctype = (json.dumps(info) + "\n").encode(), "application/json"
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # scrapes are not news
                pass

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:  # in use, no such address, a port under 1024 without root
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                              where="--listen", hint="choose a free HOST:PORT") from None
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="ftml-http",
                         daemon=True).start()
        bound = self._server.server_address[:2]
        log.info("serving /metrics and /healthz on http://%s:%d", bound[0], bound[1])
        return bound[0], bound[1]

    def health(self) -> tuple[int, dict[str, Any]]:
        now = self.clock.now()
        since = now - (self.last_tick_at if self.last_tick_at is not None else self.started_at)
        ok = since <= 3 * self.interval + 5
        reasons = dict(self._health.reasons)
        status = "stalled" if not ok else "degraded" if reasons else "ok"
        return (200 if ok else 503), {
            "status": status, "reasons": list(reasons.values()),
            # Of this process, as the counters of /metrics; the runs before apart.
            "ticks": self.ticks, "started_at": _iso(self.started_at),
            "resumed": None if self.resumed_from is None else {
                "checkpoint_at": _iso(self.resumed_from), "ticks_before": self.ticks_before},
            "seconds_since_tick": round(since, 3), "open_events": len(self.book.firing),
            "queued_alerts": self.book.pending(),
            "sources": {s.name: ("up" if self._src_failures[s.name] == 0 else "failing")
                        for s in self.sources}}


def _iso(seconds: float) -> str:
    return pd.Timestamp(seconds, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"cannot read --listen {text!r}", hint="write HOST:PORT, e.g. "
                          "127.0.0.1:9109")
    return host or "127.0.0.1", int(port)
