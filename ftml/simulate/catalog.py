"""The simulator's vocabulary: causes, metric columns and their decimals, counters, formats
and time units.
"""

from __future__ import annotations

import pandas as pd

#: Fault kinds the simulator injects and labels, in a fixed order.
CAUSES: tuple[str, ...] = (
    "memory_leak", "cpu_saturation", "network_degradation", "disk_full", "pool_exhaustion",
    "bad_deploy", "slow_dependency",
)
#: Metric columns, in output order.
METRICS: tuple[str, ...] = (
    "cpu_pct", "mem_used_pct", "latency_p95_ms", "error_rate", "request_rate", "disk_used_pct",
    "io_wait_pct", "net_retransmits", "net_errors", "threads", "connections", "gc_pause_ms",
    "net_bytes_sent_total",
)
#: Cumulative counters among METRICS: they only grow, and drop to zero when the process restarts.
COUNTERS: tuple[str, ...] = ("net_bytes_sent_total",)
#: Formats write_simulation can write the metrics in.
FORMATS: tuple[str, ...] = ("csv", "parquet")

_MIN_S = 60.0
_HOUR_S = 3_600.0
_DAY_S = 86_400.0
_MIN_STEP = pd.Timedelta(seconds=1)
_MAX_STEP = pd.Timedelta(minutes=5)  # coarser steps leave a 15-minute fault too few samples
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)

# Decimals kept per metric, as a collector would export them (keeps files small, too).
_DECIMALS = {
    "cpu_pct": 2, "mem_used_pct": 2, "latency_p95_ms": 2, "error_rate": 6, "request_rate": 3,
    "disk_used_pct": 3, "io_wait_pct": 2, "net_retransmits": 4, "net_errors": 4, "threads": 0,
    "connections": 0, "gc_pause_ms": 2, "net_bytes_sent_total": 0,
}
