"""A stand-in service: writes its pid to PIDFILE (atomically), then sleeps until killed."""

import os
import sys
import time

pidfile = sys.argv[1]
tmp = f"{pidfile}.{os.getpid()}.tmp"
with open(tmp, "w") as f:
    f.write(str(os.getpid()))
os.replace(tmp, pidfile)
while True:
    time.sleep(60)
