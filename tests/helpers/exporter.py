"""A small Prometheus exporter whose metrics a test controls.

    python exporter.py --port PORT --control FILE [--hosts web-1,web-2,web-3]

Serves ``demo_cpu_pct``, ``demo_mem_used_pct``, ``demo_latency_ms`` and ``demo_error_rate``,
each with a ``host`` label. Every scrape draws fresh values around each host's normal level;
the JSON file ``--control`` (re-read at each scrape) injects faults:
``{"faults": {"web-2": "cpu_saturation"}}``. :func:`sample` is also what the tests use to
write training history, so the model learns exactly what the exporter serves.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

METRICS = ("cpu_pct", "mem_used_pct", "latency_ms", "error_rate")
CAUSES = ("cpu_saturation", "memory_leak", "bad_deploy")


def levels(host: str) -> np.ndarray:
    """Each host's normal level of every metric: stable per host name."""
    k = sum(host.encode()) % 7
    return np.array([30.0 + 3 * k, 45.0 + 2 * k, 80.0 + 5 * k, 0.5 + 0.05 * k])


def sample(host: str, rng: np.random.Generator, fault: str | None = None, n: int = 1
           ) -> np.ndarray:
    """``n`` readings (n x 4) of ``host``; ``fault`` bends them as that cause does."""
    base = levels(host)
    x = base + rng.normal(0.0, 1.0, (n, 4)) * np.array([2.0, 1.0, 4.0, 0.05])
    if fault == "cpu_saturation":
        x[:, 0] = rng.uniform(94.0, 99.0, n)
        x[:, 2] *= 2.5
    elif fault == "memory_leak":
        x[:, 1] = rng.uniform(90.0, 97.0, n)
        x[:, 3] *= 3.0
    elif fault == "bad_deploy":
        x[:, 3] = rng.uniform(8.0, 15.0, n)
        x[:, 2] *= 1.3
    elif fault is not None:
        raise ValueError(f"unknown fault {fault!r}")
    return x


def main() -> None:
    from prometheus_client import start_http_server
    from prometheus_client.core import REGISTRY, GaugeMetricFamily

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--control", required=True)
    ap.add_argument("--hosts", default="web-1,web-2,web-3")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    hosts = args.hosts.split(",")
    rng = np.random.default_rng(args.seed)
    control = Path(args.control)

    class Collector:
        def collect(self):
            try:
                faults = json.loads(control.read_text()).get("faults") or {}
            except (OSError, ValueError):
                faults = {}
            families = {m: GaugeMetricFamily(f"demo_{m}", f"demo {m}", labels=["host"])
                        for m in METRICS}
            for host in hosts:
                values = sample(host, rng, faults.get(host))[0]
                for m, v in zip(METRICS, values, strict=True):
                    families[m].add_metric([host], float(v))
            yield from families.values()

    REGISTRY.register(Collector())
    start_http_server(args.port, addr="127.0.0.1")
    print(f"exporter on 127.0.0.1:{args.port}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
