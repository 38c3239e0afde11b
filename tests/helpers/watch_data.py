"""Metric data for the ``ftml watch`` tests: a small fleet with labelled faults, optionally
with the irregularities real collectors produce (gaps short and long, missing cells,
duplicate readings in a step, a counter reset)."""

from __future__ import annotations

import numpy as np
import pandas as pd

ENTITIES = ("web-1", "web-2", "db-1")
METRICS = ("cpu", "mem", "bytes_total")


def fleet(n: int, seed: int = 0, faults=(), start: str = "2026-01-01", irregular: bool = False
          ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``n`` one-minute steps of every entity -> (rows: timestamp, entity, cpu, mem,
    bytes_total; incidents: entity, start, end, cause). ``faults``: (entity, step, length,
    cause) with cause ``cpu_hog`` or ``mem_leak``."""
    rng = np.random.default_rng(seed)
    t = pd.date_range(start, periods=n, freq="60s", tz="UTC")
    parts, incidents = [], []
    for i, e in enumerate(ENTITIES):
        cpu = 40 + 10 * np.sin(np.arange(n) / 1440 * 2 * np.pi + i) + rng.normal(0, 1, n)
        mem = 50 + 3 * i + rng.normal(0, 0.5, n)
        sent = np.cumsum(rng.integers(10, 20, n)).astype(float)
        for ent, s, length, cause in faults:
            if ent != e:
                continue
            if cause == "cpu_hog":
                cpu[s:s + length] += 40
            else:
                mem[s:s + length] += np.linspace(5, 40, length)
            incidents.append((e, t[s], t[s + length - 1], cause))
        part = pd.DataFrame({"timestamp": t, "entity": e, "cpu": cpu, "mem": mem,
                             "bytes_total": sent})
        if irregular:
            part = _irregular(part, i, rng)
        parts.append(part)
    rows = pd.concat(parts, ignore_index=True).sort_values(["timestamp", "entity"],
                                                           kind="stable")
    inc = pd.DataFrame(incidents, columns=["entity", "start", "end", "cause"])
    return rows.reset_index(drop=True), inc


def _irregular(part: pd.DataFrame, i: int, rng: np.random.Generator) -> pd.DataFrame:
    n = len(part)
    part = part.copy()
    if i == 0:
        part = part.drop(index=[100, 101])  # a 2-step gap: forward-filled
        dup = part.loc[300:305].copy()
        dup["timestamp"] += pd.Timedelta(seconds=20)  # same step: averaged
        dup["cpu"] += 0.5
        part = pd.concat([part, dup])
    elif i == 1:
        part.loc[150:151, "cpu"] = np.nan  # short: filled
        part.loc[250:254, "mem"] = np.nan  # long: stays missing
        if n > 400:
            part.loc[400:, "bytes_total"] -= part.loc[400, "bytes_total"]  # counter reset
    else:
        part = part.drop(index=range(200, min(206, n)))  # a 6-step gap: not filled
    return part.sort_values("timestamp", kind="stable")


def training(days: float = 3.0, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Clean history with faults of both causes on every entity."""
    n = int(days * 1440)
    faults = []
    for i, e in enumerate(ENTITIES):
        for k, s in enumerate(range(600 + 100 * i, n - 200, 1100)):
            faults.append((e, s, 60, ("cpu_hog", "mem_leak")[(k + i) % 2]))
    return fleet(n, seed, faults)


#: Faults of the scoring data (steps), one per entity, spread over 800 steps.
LIVE_FAULTS = (("web-1", 330, 60, "cpu_hog"), ("web-2", 460, 60, "mem_leak"),
               ("db-1", 600, 60, "cpu_hog"))


def live(n: int = 800, seed: int = 5, irregular: bool = True):
    return fleet(n, seed, LIVE_FAULTS, start="2026-02-01", irregular=irregular)


class Feed:
    """A source handing over ``per`` steps of rows per poll (all readings of a step
    together), then ending."""

    def __init__(self, rows: pd.DataFrame, per: int, name: str = "feed"):
        slot = rows["timestamp"].dt.round("60s")
        self.groups = [g for _, g in rows.groupby(slot, sort=True)]
        self.per = per
        self.i = 0
        self.name = name
        self.skipped = 0
        self.more = False
        self.exhausted = False
        self.polls = 0

    def bind(self, step, keep_steps):
        pass

    def poll(self, now):
        self.polls += 1
        if self.i >= len(self.groups):
            self.exhausted = True
            return None
        part = pd.concat(self.groups[self.i:self.i + self.per])
        self.i += self.per
        self.exhausted = self.i >= len(self.groups)
        return part

    def state(self):
        return {"i": self.i}

    def restore(self, state):
        self.i = int(state["i"])

    def close(self):
        pass
