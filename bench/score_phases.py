"""CPU seconds per phase of ``api.score`` (a fresh process; prints one JSON line).

``python -m bench.score_phases MODEL CSV [--read-ahead]``: imports and model load are timed
first, then ``api.score`` runs with each phase's function wrapped in a CPU-time counter. CPU
time (``time.process_time``: all threads) is what a loaded, shared machine does not inflate
much, unlike wall time. Without ``--read-ahead`` the phases run one after another, so the
process CPU time spent inside a phase is that phase's alone (the forest kernel's worker
threads included); nested phases are subtracted from the phase around them.

A function is wrapped where its callers look it up (e.g. ``trailing_level`` in the featurizer's
module), in every module of ``WHERE`` that has it, so one script times any tree whose modules
have moved (``ftml/features.py`` before the split of issue 13, ``ftml/features/`` after).
"""

from __future__ import annotations

import importlib
import json
import sys
import time

_t0 = time.perf_counter()
_c0 = time.process_time()

_spent: dict[str, float] = {}
_stack: list[list] = []  # [name, cpu at start, cpu of nested phases]


def _timed_call(inner, name: str):
    def timed(*args, **kwargs):
        _stack.append([name, time.process_time(), 0.0])
        try:
            return inner(*args, **kwargs)
        finally:
            _close()

    return timed


def _close() -> None:
    name, start, nested = _stack.pop()
    took = time.process_time() - start
    _spent[name] = _spent.get(name, 0.0) + took - nested
    if _stack:
        _stack[-1][2] += took


def _timed_iter(inner, name: str):
    """A generator function: time each step of the iteration (the reading happens there)."""

    def timed(*args, **kwargs):
        it = inner(*args, **kwargs)
        while True:
            _stack.append([name, time.process_time(), 0.0])
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                _close()
            yield item

    return timed


#: phase -> (attribute, modules or classes where callers look it up, a generator?)
WHERE = {
    "parse": ("iter_metric_rows", ["ftml.api"], True),
    "normalise": ("normalise", ["ftml.api"], False),
    "standardise": ("standardise_arrays", ["Featurizer"], False),
    "trailing level": ("trailing_level", ["ftml.features.featurizer", "ftml.features",
                                          "ftml.features.level"], False),
    # Chunked scoring's level from the carried ring (its trailing_level call is counted above).
    "carried level": ("remove_level", ["LevelCarry"], False),
    "complete windows": ("complete_windows", ["ftml.features.featurizer", "ftml.features"],
                         False),
    "forest view": ("window_view", ["ftml.pipeline.scoring"], False),
    "gate": ("select", ["FlagGate"], False),
    "event features": ("window_stats", ["ftml.pipeline.scoring"], False),
    "diagnose": ("to_event", ["Model"], False),
    "events file": ("write_events", ["ftml.pipeline.scoring"], False),
}


def _owners(spec: str, classes: dict) -> list:
    if spec in classes:
        return [classes[spec]]
    try:
        return [importlib.import_module(spec)]
    except ImportError:
        return []


def main(argv: list[str]) -> dict:
    model_path, csv = argv[0], argv[1]
    read_ahead = "--read-ahead" in argv
    # What `ftml score` imports (cli), and the modules whose functions are timed.
    from ftml import api, cli, pipeline  # noqa: F401
    from ftml.detect import FlagGate
    from ftml.features import Featurizer

    try:
        from ftml.features import LevelCarry
    except ImportError:  # a tree from before the carried level
        LevelCarry = None

    imports_cpu = time.process_time() - _c0
    loaded = sorted(m for m in ("sklearn", "scipy") if m in sys.modules)
    c = time.process_time()
    model = api.load_model(model_path)
    load_cpu = time.process_time() - c
    if not read_ahead:
        api._read_ahead = lambda items: items  # noqa: SLF001 - phases one after another
    classes = {"Featurizer": Featurizer, "FlagGate": FlagGate, "Model": type(model),
               **({"LevelCarry": LevelCarry} if LevelCarry is not None else {})}
    for name, (attr, where, is_iter) in WHERE.items():
        for owner in (o for spec in where for o in _owners(spec, classes)):
            if attr in vars(owner):
                wrap = _timed_iter if is_iter else _timed_call
                setattr(owner, attr, wrap(getattr(owner, attr), name))
    detector = type(model.detector)
    score = "anomaly_score" if hasattr(detector, "anomaly_score") else "score_samples"
    setattr(detector, score, _timed_call(getattr(detector, score), "forest"))
    builder = type(model.event_builder())
    builder.push = _timed_call(builder.push, "event builder")
    c, t = time.process_time(), time.perf_counter()
    result = api.score(model, [csv], out=argv[2] if len(argv) > 2 and not
                       argv[2].startswith("--") else None)
    score_cpu, score_wall = time.process_time() - c, time.perf_counter() - t
    phases = {"imports": imports_cpu, "model load": load_cpu, **_spent}
    phases["other (score)"] = score_cpu - sum(_spent.values())
    return {"phases": {k: round(v, 3) for k, v in phases.items()},
            "score_cpu": round(score_cpu, 3), "score_wall": round(score_wall, 3),
            "total_cpu": round(time.process_time() - _c0, 3),
            "total_wall": round(time.perf_counter() - _t0, 3),
            "loaded_at_import": loaded,
            "loaded_after_score": sorted(m for m in ("sklearn", "scipy") if m in sys.modules),
            "events": len(result.events), "windows": result.windows}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
