"""Labelled fleet simulator: metrics of a mixed fleet of services with injected, labelled faults.

Each entity runs one service role (web, api, db, cache, worker) with its own size, load and
resources. Its metrics follow daily and weekly traffic cycles, slow drift and noise, and are
coupled the way real services are: requests drive cpu, cpu drives latency (steeply near
saturation), in-flight requests (Little's law) drive threads and connections, allocation drives
the GC saw-tooth of memory, and logs fill the disk until the nightly rotation.

Benign disturbances (rolling deploys, short traffic bursts, log rotation) are not labelled.
Faults (:data:`CAUSES`) bend the same machinery through a set of per-step effects, so their
side effects follow from the couplings (a slow dependency raises latency, hence in-flight
requests, hence threads). Collector artefacts (NaN cells, dropped rows, short outages) come
last from their own random stream, so ``missing`` never changes the values that are kept.
Logs (:func:`simulate_logs`, ``ftml simulate --logs``) come from a stream of their own too: they
follow the traffic, restarts and faults of the run without changing a byte of its metrics.
"""

from __future__ import annotations

from ftml.simulate.catalog import CAUSES, COUNTERS, FORMATS, METRICS
from ftml.simulate.files import TEST_SEED_OFFSET, write_simulation, write_split_simulation
from ftml.simulate.fleet import simulate_fleet
from ftml.simulate.logs import LOG_FORMAT, simulate_logs
from ftml.simulate.worlds import WORLDS, apply_world

__all__ = [
    "CAUSES", "COUNTERS", "FORMATS", "LOG_FORMAT", "METRICS", "TEST_SEED_OFFSET", "WORLDS",
    "apply_world", "simulate_fleet", "simulate_logs", "write_simulation",
    "write_split_simulation",
]
