"""Named invariant checks that every ftml estimator and stage must keep (river-style).

Each check takes a factory (so that it can build fresh objects) and raises AssertionError with
a message naming the invariant it broke.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

import joblib
import numpy as np


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def check_input_not_mutated(fn: Callable[..., Any], *args: Any) -> None:
    """Calling ``fn`` leaves its array/frame arguments unchanged."""
    before = copy.deepcopy(args)
    fn(*args)
    for i, (b, a) in enumerate(zip(before, args, strict=True)):
        if hasattr(a, "equals"):
            assert a.equals(b), f"input_not_mutated: argument {i} was changed"
        else:
            assert _same(a, b), f"input_not_mutated: argument {i} was changed"


def check_same_seed_same_result(make: Callable[[], Any], fit: Callable[[Any], Any],
                                out: Callable[[Any], np.ndarray]) -> None:
    """Two objects built and fitted the same way give identical outputs."""
    a, b = fit(make()), fit(make())
    assert _same(out(a), out(b)), "same_seed_same_result: outputs differ"


def check_persistence_round_trip(fitted: Any, out: Callable[[Any], np.ndarray],
                                 tmp_path) -> None:
    """pickle and joblib round-trips keep the outputs identical."""
    expected = out(fitted)
    assert _same(out(pickle.loads(pickle.dumps(fitted))), expected), \
        "persistence_round_trip: pickle changed the outputs"
    path = tmp_path / "obj.joblib"
    joblib.dump(fitted, path)
    assert _same(out(joblib.load(path)), expected), \
        "persistence_round_trip: joblib changed the outputs"
