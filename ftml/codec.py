"""Fitted objects <-> plain data: a JSON tree plus numpy arrays (what a model bundle holds
instead of a pickle).

Decoding builds only the classes it was given by name, sets their attributes from the data and
calls nothing of theirs: no pickle, no eval, no import by name. Every JSON object of the tree is
one tag:

- ``{"__dict__": {...}}`` (str keys) or ``{"__dict__": [[k, v], ...]}``, ``{"__tuple__": [...]}``;
  a JSON list is a Python list; null, bools, numbers and strings are themselves;
- ``{"__array__": key}`` / ``{"__scalar__": key}``: a numpy array / scalar, ``arrays[key]``;
- ``{"__strarray__": [...]}``: a numpy object array of str (``.npz`` cannot hold those without
  pickle);
- ``{"__timedelta_ns__": n}``: a ``pandas.Timedelta``;
- ``{"__tree__": {...}}``: a scikit-learn ``Tree`` from its node arrays;
- ``{"__object__": name, "state": {...}}``: an instance of the class listed under ``name``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd


class CodecError(ValueError):
    """Data that does not decode: an unknown tag or class, or arrays that do not fit."""


class Codec:
    """``classes``: name -> class, the only classes decoding creates. ``state_of``: class ->
    function giving the attributes to store for an instance (default: ``__getstate__`` without
    scikit-learn's version tag, which the bundle's manifest records). ``check``: class ->
    function called on each decoded instance, raising ValueError when its attributes are
    inconsistent (e.g. tree indices a compiled kernel would follow unchecked)."""

    def __init__(self, classes: Mapping[str, type],
                 state_of: Mapping[type, Callable[[Any], dict]] | None = None,
                 check: Mapping[type, Callable[[Any], None]] | None = None,
                 tree_type: type | None = None):
        self.classes = dict(classes)
        self.names = {cls: name for name, cls in self.classes.items()}
        self.state_of = dict(state_of or {})
        self.check = dict(check or {})
        self.tree_type = tree_type

    # -- encoding ------------------------------------------------------------------------

    def encode(self, obj: Any) -> tuple[Any, dict[str, np.ndarray]]:
        arrays: dict[str, np.ndarray] = {}
        return self._enc(obj, "root", arrays), arrays

    def _enc(self, obj: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, np.generic):  # before int/float: np.float64 is a float
            arrays[path] = np.asarray(obj)
            return {"__scalar__": path}
        if isinstance(obj, (int, float)):
            return obj
        if isinstance(obj, np.ndarray):
            if obj.dtype.kind == "O":
                if not all(isinstance(v, str) for v in obj.ravel()):
                    raise TypeError(f"{path}: an object array of other than str")
                return {"__strarray__": obj.tolist(), "shape": list(obj.shape)}
            arrays[path] = obj
            return {"__array__": path}
        if isinstance(obj, list):
            return [self._enc(v, f"{path}.{i}", arrays) for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            return {"__tuple__": [self._enc(v, f"{path}.{i}", arrays)
                                  for i, v in enumerate(obj)]}
        if isinstance(obj, dict):
            if all(isinstance(k, str) for k in obj):
                return {"__dict__": {k: self._enc(v, f"{path}.{k}", arrays)
                                     for k, v in obj.items()}}
            return {"__dict__": [[self._enc(k, f"{path}.k{i}", arrays),
                                  self._enc(v, f"{path}.{i}", arrays)]
                                 for i, (k, v) in enumerate(obj.items())]}
        if isinstance(obj, pd.Timedelta):
            return {"__timedelta_ns__": int(obj.value)}
        if self.tree_type is not None and type(obj) is self.tree_type:
            return {"__tree__": self._enc_tree(obj, path, arrays)}
        name = self.names.get(type(obj))
        if name is None:
            raise TypeError(f"{path}: {type(obj).__module__}.{type(obj).__qualname__} is not "
                            "a class a bundle may hold")
        state = self.state_of.get(type(obj), _plain_state)(obj)
        return {"__object__": name,
                "state": {k: self._enc(v, f"{path}.{k}", arrays) for k, v in state.items()}}

    def _enc_tree(self, tree, path: str, arrays: dict[str, np.ndarray]) -> dict:
        cls, (n_features, n_classes, n_outputs), state = tree.__reduce__()
        nodes = state["nodes"]
        fields = {}
        for name in nodes.dtype.names:
            key = f"{path}.{name}"
            arrays[key] = np.ascontiguousarray(nodes[name])
            fields[name] = key
        arrays[f"{path}.values"] = state["values"]
        arrays[f"{path}.n_classes"] = np.asarray(n_classes)
        return {"n_features": int(n_features), "n_outputs": int(n_outputs),
                "n_classes": f"{path}.n_classes", "max_depth": int(state["max_depth"]),
                "node_count": int(state["node_count"]), "fields": fields,
                "values": f"{path}.values"}

    # -- decoding ------------------------------------------------------------------------

    def decode(self, data: Any, arrays: Mapping[str, np.ndarray]) -> Any:
        return self._dec(data, arrays)

    def _dec(self, data: Any, arrays: Mapping[str, np.ndarray]) -> Any:
        if data is None or isinstance(data, (bool, str, int, float)):
            return data
        if isinstance(data, list):
            return [self._dec(v, arrays) for v in data]
        if not isinstance(data, dict) or not data:
            raise CodecError(f"unexpected {type(data).__name__} in the model data")
        tag = next(iter(data))
        value = data[tag]
        if tag == "__dict__":
            if isinstance(value, dict):
                return {k: self._dec(v, arrays) for k, v in value.items()}
            return {self._dec(k, arrays): self._dec(v, arrays) for k, v in value}
        if tag == "__tuple__":
            return tuple(self._dec(v, arrays) for v in value)
        if tag == "__array__":
            return _array(arrays, value)
        if tag == "__scalar__":
            arr = _array(arrays, value)
            if arr.ndim != 0:
                raise CodecError(f"array {value!r} should be a scalar")
            return arr[()]
        if tag == "__strarray__":
            if not all(isinstance(v, str) for v in np.ravel(np.asarray(value, dtype=object))):
                raise CodecError("a string array holds other than strings")
            out = np.empty(len(value), dtype=object)
            out[:] = value
            return out.reshape(data.get("shape", [len(value)]))
        if tag == "__timedelta_ns__":
            return pd.Timedelta(int(value), unit="ns")
        if tag == "__tree__":
            return self._dec_tree(value, arrays)
        if tag == "__object__":
            cls = self.classes.get(value) if isinstance(value, str) else None
            if cls is None:
                raise CodecError(f"class {value!r} is not one a bundle may hold")
            raw = data.get("state")
            if not isinstance(raw, dict):
                raise CodecError(f"the state of a {value} is not a mapping of attributes")
            state = {k: self._dec(v, arrays) for k, v in raw.items()}
            obj = cls.__new__(cls)
            obj.__dict__.update(state)  # attributes only: no method of the class runs
            check = self.check.get(cls)
            if check is not None:
                try:
                    check(obj)
                except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
                    raise CodecError(f"a {value} is inconsistent: {exc}") from None
            return obj
        raise CodecError(f"unknown tag {tag!r} in the model data")

    def _dec_tree(self, spec: dict, arrays: Mapping[str, np.ndarray]):
        from sklearn.tree._tree import NODE_DTYPE

        try:
            n_classes = _array(arrays, spec["n_classes"]).astype(np.intp)
            node_count = int(spec["node_count"])
            n_features, n_outputs = int(spec["n_features"]), int(spec["n_outputs"])
            nodes = np.zeros(node_count, dtype=NODE_DTYPE)
            fields = spec["fields"]
            for name in NODE_DTYPE.names:
                if name in fields:
                    column = _array(arrays, fields[name])
                    if column.shape != (node_count,):
                        raise CodecError(f"tree field {name} has shape {column.shape}")
                    nodes[name] = column
                elif name != "missing_go_to_left":  # older scikit-learn: NaN goes right
                    raise CodecError(f"tree lacks field {name}")
            values = np.ascontiguousarray(_array(arrays, spec["values"]), dtype=np.float64)
            _check_tree_arrays(nodes, values, node_count, n_features, n_outputs, n_classes)
            tree = self.tree_type(n_features, n_classes, n_outputs)
            tree.__setstate__({"max_depth": int(spec["max_depth"]), "node_count": node_count,
                               "nodes": nodes, "values": values})
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, CodecError):
                raise
            raise CodecError(f"a tree does not rebuild: {exc}") from None
        return tree


def _plain_state(obj: Any) -> dict:
    state = dict(obj.__getstate__())
    state.pop("_sklearn_version", None)
    return state


def _array(arrays: Mapping[str, np.ndarray], key: Any) -> np.ndarray:
    if not isinstance(key, str) or key not in arrays:
        raise CodecError(f"array {key!r} is missing")
    return arrays[key]


def _check_tree_arrays(nodes: np.ndarray, values: np.ndarray, node_count: int,
                       n_features: int, n_outputs: int, n_classes: np.ndarray) -> None:
    """scikit-learn walks a tree's child indices unchecked: each inner node's children must
    be later nodes of the tree, its feature one of X's columns; leaves have none."""
    if node_count < 1 or n_outputs != 1 or n_classes.shape != (1,) or n_features < 1:
        raise CodecError("a tree has no nodes or is not single-output")
    if values.shape != (node_count, 1, int(n_classes[0])):
        raise CodecError(f"tree values have shape {values.shape}")
    left, right, feature = nodes["left_child"], nodes["right_child"], nodes["feature"]
    position = np.arange(node_count)
    leaf = left == -1
    inner = ~leaf
    ok = ((right[leaf] == -1).all()
          and (left[inner] > position[inner]).all() and (left[inner] < node_count).all()
          and (right[inner] > position[inner]).all() and (right[inner] < node_count).all()
          and (feature[inner] >= 0).all() and (feature[inner] < n_features).all())
    if not ok:
        raise CodecError("a tree's child or feature indices are out of range")
