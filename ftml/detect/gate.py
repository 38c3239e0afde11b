"""The one gate: which scored windows go on to the event builder (:class:`FlagGate`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ftml.detect.builder import EventRules
from ftml.errors import InputError

#: Version of :meth:`FlagGate.state_dict`.
GATE_STATE_VERSION = 1


@dataclass
class FlagGate:
    """Which scored windows go on to the :class:`EventBuilder`: those at most
    :attr:`EventRules.reach` steps after a flagged window of their entity (this push's or an
    earlier one's). The builder counts k-of-n by time, not by windows seen, so it gives the
    same events from these as from every window, for a fraction of the features and of its
    work; and an event closes at the same window as with every window.

    The one gate of batch, chunked, Dask and online scoring. It keeps one number per entity
    (the step of its last flag); :meth:`state_dict` / :meth:`load_state` carry it across
    chunks, tasks and restarts."""

    rules: EventRules
    threshold: float
    step_ns: int
    _last_flag: dict[str, int] = field(default_factory=dict)

    def select(self, entity: np.ndarray, end_ns: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Mask of the windows to push; windows sorted by entity, then time. Remembers the
        flags."""
        n = len(end_ns)
        if n == 0:
            return np.zeros(0, dtype=bool)
        t = end_ns // self.step_ns
        flags = scores >= self.threshold
        codes, names = pd.factorize(entity, sort=False)
        names = [str(x) for x in names]
        before = np.array([self._last_flag.get(x, _NO_FLAG) for x in names], dtype=np.int64)
        # The last flag at or before each window in this push, of the same entity...
        idx = np.where(flags, np.arange(n), -1)
        np.maximum.accumulate(idx, out=idx)
        j = np.maximum(idx, 0)
        same = (idx >= 0) & (codes[j] == codes)
        # ... else the entity's last flag from before.
        prev = np.where(same, t[j], before[codes])
        near = (prev != _NO_FLAG) & (t - prev <= self.rules.reach)
        if flags.any():
            newest = np.full(len(names), _NO_FLAG, dtype=np.int64)
            np.maximum.at(newest, codes[flags], t[flags])
            for name, v in zip(names, newest.tolist(), strict=True):
                if v != _NO_FLAG and v > self._last_flag.get(name, _NO_FLAG):
                    self._last_flag[name] = v
        return near

    def forget(self, entities) -> None:
        for name in entities:
            self._last_flag.pop(str(name), None)

    def state_dict(self) -> dict[str, Any]:
        names = list(self._last_flag)
        return {"version": GATE_STATE_VERSION, "entities": names,
                "last_flag": np.array([self._last_flag[n] for n in names], dtype=np.int64)}

    def load_state(self, state: Mapping[str, Any]) -> FlagGate:
        if not isinstance(state, Mapping) or state.get("version") != GATE_STATE_VERSION:
            raise InputError("gate state of another version", source="gate state",
                             hint="start afresh (e.g. without the old checkpoint)")
        self._last_flag = {str(n): int(v) for n, v in
                           zip(state["entities"], np.asarray(state["last_flag"]), strict=True)}
        return self


_NO_FLAG = np.iinfo(np.int64).min
