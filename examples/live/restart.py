"""Supervisor-style restart of one service instance: stop it by its pidfile, start it again,
wait until it answers ``/healthz``.

    python restart.py SPEC.json        # restart (start if it is not running)
    python restart.py --stop SPEC.json # stop only

Exit code 0 once the new process serves (its pid in ``/healthz``), 1 if it does not within
``--wait`` seconds. The pid in the pidfile is only signalled if that process really runs this
instance (its command line names SPEC.json): a stale pidfile never kills a stranger.
The new process gets its own session, so it outlives this script and whoever ran it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def load(spec_path: str | Path) -> dict:
    return json.loads(Path(spec_path).read_text())


def owned_pid(spec_path: str | Path) -> int | None:
    """The pid in the instance's pidfile, if that process is alive and is this instance."""
    spec = load(spec_path)
    try:
        pid = int(Path(spec["pidfile"]).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _runs(pid, str(Path(spec_path).resolve())) else None


def _runs(pid: int, marker: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    # A zombie has stopped already: only its parent's wait is missing.
    return state not in ("Z", "X") and marker.encode() in cmdline


def stop(spec_path: str | Path, grace: float = 5.0) -> int | None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns the pid stopped, if any."""
    pid = owned_pid(spec_path)
    if pid is None:
        return None
    marker = str(Path(spec_path).resolve())
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return pid
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _runs(pid, marker):
                return pid
            time.sleep(0.02)
    raise RuntimeError(f"pid {pid} did not stop")


def start(spec_path: str | Path) -> subprocess.Popen:
    """Start the instance in its own session, output appended to its log."""
    spec = load(spec_path)
    with open(spec["log"], "ab") as logf:
        return subprocess.Popen(spec["argv"], stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, close_fds=True,
                                start_new_session=True, cwd=spec.get("cwd"))


def wait_healthy(spec_path: str | Path, pid: int, timeout: float) -> bool:
    spec = load(spec_path)
    url = f"http://127.0.0.1:{spec['port']}/healthz"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if json.loads(resp.read()).get("pid") == pid:
                    return True
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return False


def restart(spec_path: str | Path, wait: float = 10.0) -> tuple[int | None, int, float]:
    """Stop (if running), start, wait healthy; returns (old pid, new pid, seconds)."""
    started = time.monotonic()
    old = stop(spec_path)
    proc = start(spec_path)
    if not wait_healthy(spec_path, proc.pid, wait):
        raise RuntimeError(f"pid {proc.pid} is not healthy after {wait:g}s")
    return old, proc.pid, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("spec")
    p.add_argument("--stop", action="store_true", help="stop only")
    p.add_argument("--wait", type=float, default=10.0, help="seconds to wait for health")
    args = p.parse_args(argv)
    name = load(args.spec)["name"]
    try:
        if args.stop:
            pid = stop(args.spec)
            print(f"{name}: " + (f"stopped pid {pid}" if pid else "was not running"))
            return 0
        old, new, seconds = restart(args.spec, args.wait)
    except RuntimeError as exc:
        print(f"{name}: restart failed: {exc}", file=sys.stderr)
        return 1
    print(f"{name}: restarted {old or '(not running)'} -> {new}, healthy after {seconds:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
