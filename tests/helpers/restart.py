"""Restart the sleeper whose pid is in PIDFILE: stop it, start a new one, wait for its pid.

Usage: restart.py ENTITY PIDFILE. Exits 0 once the new process has written its pid.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

entity, pidfile = sys.argv[1], Path(sys.argv[2])
old = int(pidfile.read_text())


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has stopped; only its parent's wait is missing


try:
    os.kill(old, signal.SIGTERM)
except ProcessLookupError:
    pass
deadline = time.monotonic() + 10
while alive(old) and time.monotonic() < deadline:
    time.sleep(0.02)
if alive(old):
    sys.exit(f"{entity}: pid {old} did not stop")
subprocess.Popen([sys.executable, str(Path(__file__).with_name("sleeper.py")), str(pidfile)],
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL, start_new_session=True)
while time.monotonic() < deadline:
    if pidfile.exists() and pidfile.read_text() and int(pidfile.read_text()) != old:
        print(f"restarted {entity}: {old} -> {pidfile.read_text()}")
        sys.exit(0)
    time.sleep(0.02)
sys.exit(f"{entity}: the new process did not start")
