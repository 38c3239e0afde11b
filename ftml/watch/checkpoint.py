"""The checkpoint: buffers, event builder, gate, progress and source positions, written
atomically to ``STATE/watch.npz``; and the restore after a restart."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from ftml.errors import FtmlError
from ftml.io import atomic_path
from ftml.pipeline import gate_of

log = logging.getLogger("ftml.watch")  # one logger for the whole loop: what users filter on


CHECKPOINT_FILE = "watch.npz"
# 2: the gate is batch's FlagGate (its state: each entity's last flag), not a ring of recent
# windows per entity.
CHECKPOINT_FORMAT = 2


class CheckpointMixin:
    """Saving and restoring the loop's state (a part of :class:`Watcher`)."""

    def checkpoint(self) -> None:
        """Write buffers, event builder, progress and source positions atomically."""
        if self.state_dir is None:
            return
        try:
            with atomic_path(self.state_dir / CHECKPOINT_FILE) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, **self._checkpoint_arrays())  # straight to disk: no copy in memory
        except (OSError, FtmlError) as exc:  # a full disk must not stop the loop: retried
            log.error("checkpoint failed: %s", exc)
            self.metrics.errors.labels("loop", "checkpoint").inc()
        self._last_checkpoint = self.clock.now()

    def _checkpoint_arrays(self) -> dict[str, np.ndarray]:
        b = self._buffers
        # The builder's state (EventBuilder.state_dict): its arrays as "b_*", the rest in meta.
        builder = self.builder.state_dict()
        gate = self.gate.state_dict()
        meta = {"format": CHECKPOINT_FORMAT, "model_version": self.model.version,
                "metrics": b.metrics, "step_ns": self.step_ns, "entities": b.names,
                "gate": {"version": gate["version"], "entities": gate["entities"]},
                "builder": {k: v for k, v in builder.items() if not isinstance(v, np.ndarray)},
                "sources": {s.name: s.state() for s in self.sources},
                "ticks": self.ticks_before + self.ticks, "saved_at": self.clock.now()}
        return {
            "meta": np.frombuffer(json.dumps(meta, default=str).encode(), dtype=np.uint8),
            "ent": b.ent, "ts": b.ts, "vals": b.vals,
            **{f"e_{k}": getattr(b, k) for k in b.ARRAYS},
            **{f"b_{k}": v for k, v in builder.items() if isinstance(v, np.ndarray)},
            "g_last_flag": gate["last_flag"],
        }

    def _restore(self) -> None:
        path = self.state_dir / CHECKPOINT_FILE
        if not path.exists():
            return
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            meta = json.loads(arrays["meta"].tobytes().decode())
        except (OSError, ValueError, KeyError) as exc:
            log.error("%s: unreadable checkpoint (%s): starting fresh", path, exc)
            return
        for s in self.sources:
            st = (meta.get("sources") or {}).get(s.name)
            if st:
                s.restore(st)
        if meta.get("format") != CHECKPOINT_FORMAT:
            log.warning("checkpoint is of another ftml (format %s, this one writes %s): buffers "
                        "and events start afresh; firing alerts resolve as their entities "
                        "move on", meta.get("format"), CHECKPOINT_FORMAT)
            return
        if meta.get("model_version") != self.model.version or \
                meta.get("metrics") != self._buffers.metrics or \
                meta.get("step_ns") != self.step_ns:
            log.warning("checkpoint is of another model (%s): buffers and events start "
                        "afresh", meta.get("model_version"))
            return
        builder = {**(meta.get("builder") or {}),
                   **{k[2:]: v for k, v in arrays.items() if k.startswith("b_")}}
        try:
            self.builder.load_state(builder)
            self.gate.load_state({**(meta.get("gate") or {}),
                                  "last_flag": arrays.get("g_last_flag", np.empty(0))})
        except (FtmlError, KeyError, ValueError, TypeError) as exc:  # damaged or foreign
            log.warning("checkpoint's event state is unusable (%s): buffers and events start "
                        "afresh", exc)
            self.builder = self.model.event_builder()
            self.gate = gate_of(self.model)
            return
        b = self._buffers
        b.codes(meta["entities"])
        b._rebuild(arrays["ent"], arrays["ts"], arrays["vals"])
        for key in b.ARRAYS:
            setattr(b, key, arrays[f"e_{key}"].copy())
        b.ring_ok[:] = False
        # Counted on, not restored: this process's counters start at 0 (as Prometheus
        # expects of a counter); /healthz shows what came before apart.
        self.ticks_before = int(meta.get("ticks") or 0)
        self.resumed_from = meta.get("saved_at")
        self._snapshot = (b.ent, b.ts, b.vals)
        self._score_snapshot = (list(b.names), b.last_score.copy())
        log.info("resumed from checkpoint of %s: %d entities, %d open alert(s)",
                 pd.Timestamp(meta.get("saved_at", 0), unit="s", tz="UTC"), len(b.names),
                 len(self.book.firing))
