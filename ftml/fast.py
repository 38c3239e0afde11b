"""Fast, exact inference for fitted scikit-learn tree ensembles.

``compile_forest(est)`` turns a fitted ``IsolationForest``, ``DecisionTreeClassifier`` or
``RandomForestClassifier`` (``ExtraTreeClassifier`` and ``ExtraTreesClassifier`` too) into a
``FastForest``: every tree flattened into one node array and walked by a small C kernel
(``ftml._forest_kernel``) that takes blocks of rows through the trees with the GIL released, so
large inputs are also split over threads.

The answers are scikit-learn's own, not approximations:

- scikit-learn casts X to float32 and compares that with float64 thresholds. Each threshold is
  replaced here by the float64 bound that decides every input the same way
  (``_float32_split_bounds``), so float64 input is neither cast nor copied and ties at a
  threshold fall on the same side.
- A NaN goes where scikit-learn sends it (``missing_go_to_left`` of each node).
- Leaves hold what scikit-learn adds per tree (the isolation path length with its
  ``n_node_samples`` correction, or the class fractions), and the kernel adds a row's trees in
  scikit-learn's order starting from 0.0, so the sums match bit for bit; the final formulas are
  the same numpy expressions.

Without the compiled kernel (a source tree that was never ``pip install``-ed) the same arrays
are walked with numpy: same results, many times slower, and a warning says so.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:
    from ftml import _forest_kernel
except ImportError:  # not built: fall back to numpy, see module docstring
    _forest_kernel = None

__all__ = ["KERNEL_AVAILABLE", "FastForest", "compile_forest"]

KERNEL_AVAILABLE = _forest_kernel is not None

# Must match ftml_node in _forest_kernel.c. A row goes left iff x[feature] <= threshold; the right
# child is left + 1. A leaf has threshold NaN and left = its own index - 1, so it steps onto itself.
_NODE_DTYPE = np.dtype([("threshold", "f8"), ("feature", "i4"), ("left", "i4")])

# Below this many rows per thread, starting threads costs more than it saves.
_MIN_ROWS_PER_THREAD = 16_384
# A block of rows stays in L1 (32 KiB) beside the nodes it visits while trees walk it...
_BLOCK_BYTES = 20 * 1024
# ...and a group of trees, which walks every block before the next group starts, mostly stays
# in L2 (512 KiB here): bigger groups miss the cache on deep nodes, smaller ones read X more
# often. Measured on 100-tree isolation and random forests.
_GROUP_BYTES = 1024 * 1024
# Cost of a step over only the still-moving rows, relative to a step of a fixed level (measured).
_PACKED_STEP_COST = 2.0

# Bumped whenever the arrays change meaning, so that an old pickle is refused, not misread.
_LAYOUT = 1

_ISOLATION = "isolation_forest"
_CLASSIFIER = "classifier"


def _float32_split_bounds(thresholds: np.ndarray) -> np.ndarray:
    """For each float64 threshold t, the bound b with ``float32(x) <= t  <=>  x <= b`` for all x.

    scikit-learn casts inputs to float32 before comparing them with float64 thresholds. Casting is
    monotonic, so the inputs that go left are exactly those up to some bound: the midpoint between
    the largest float32 <= t and the next float32, or just below it when the tie at the midpoint
    rounds up (to even). Float32 inputs compare the same way, as each is exact in float64.
    """
    t = np.asarray(thresholds, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        low = t.astype(np.float32)
        low = np.where(low.astype(np.float64) > t, np.nextafter(low, np.float32(-np.inf)), low)
        high = np.nextafter(low, np.float32(np.inf))
        low64, high64 = low.astype(np.float64), high.astype(np.float64)
        # Above float32's largest value the next "float32" is inf; the rounding midpoint is still
        # half a unit (2**103) up, as float64 has the range to hold it.
        mid = np.where(np.isinf(high), low64 + 2.0**103, (low64 + high64) / 2)
        bound = np.where(mid.astype(np.float32) <= low, mid, np.nextafter(mid, -np.inf))
    return bound


def _average_path_length(n_samples: np.ndarray) -> np.ndarray:
    """Expected isolation depth of n samples, with scikit-learn's exact float64 operations."""
    n = np.asarray(n_samples, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    many = n > 2
    out[many] = 2.0 * (np.log(n[many] - 1.0) + np.euler_gamma) - 2.0 * (n[many] - 1.0) / n[many]
    return out


def _flatten_tree(tree, feature_map: np.ndarray | None):
    """Renumber a fitted ``tree_`` breadth first so that siblings are adjacent.

    Returns the nodes (child indices relative to the tree's first node), the NaN-goes-left flags,
    ``order`` (new index -> scikit-learn node id), the depth of each node (root = 1, as
    ``Tree.compute_node_depths``) and whether each node is a leaf.
    """
    left_of, right_of = tree.children_left, tree.children_right
    levels = [np.zeros(1, dtype=np.intp)]
    while True:
        inner = levels[-1][left_of[levels[-1]] != -1]
        if inner.size == 0:
            break
        children = np.empty(2 * inner.size, dtype=np.intp)
        children[0::2], children[1::2] = left_of[inner], right_of[inner]
        levels.append(children)
    order = np.concatenate(levels)
    node_depth = np.repeat(np.arange(1, len(levels) + 1), [level.size for level in levels])

    n_nodes = order.size
    new_id = np.empty(n_nodes, dtype=np.intp)
    new_id[order] = np.arange(n_nodes)
    is_leaf = left_of[order] == -1

    nodes = np.zeros(n_nodes, dtype=_NODE_DTYPE)
    feature = np.where(is_leaf, 0, tree.feature[order])
    nodes["feature"] = feature if feature_map is None else feature_map[feature]
    nodes["threshold"] = np.where(is_leaf, np.nan, _float32_split_bounds(tree.threshold[order]))
    left_child = new_id[np.where(is_leaf, 0, left_of[order])]
    nodes["left"] = np.where(is_leaf, np.arange(n_nodes) - 1, left_child)

    # Only in the pickled state; where it is missing (older scikit-learn) NaN goes right, as there.
    state_nodes = tree.__getstate__()["nodes"]
    if "missing_go_to_left" in (state_nodes.dtype.names or ()):
        nan_left = state_nodes["missing_go_to_left"][order].astype(np.uint8)
    else:
        nan_left = np.zeros(n_nodes, dtype=np.uint8)
    nan_left[is_leaf] = 0
    return nodes, nan_left, order, node_depth, is_leaf


def _fixed_levels(leaf_depth: np.ndarray, leaf_weight: np.ndarray, n_levels: int) -> int:
    """How many levels every row of a block takes before only the still-moving rows go on.

    A fixed level costs a step per row, even for rows already at a leaf; a packed level costs
    about twice that, but only for moving rows, plus one step to notice each leaf. This picks the
    cheapest split for rows that reach leaves like the training samples did: every level fixed
    for isolation trees (nearly all leaves at the depth limit), about the usual leaf depth for
    deep, uneven classifier trees.
    """
    share = leaf_weight / leaf_weight.sum()
    best_fixed, best_cost = n_levels, float(n_levels)
    for fixed in range(n_levels):
        moving = leaf_depth > fixed
        steps_left = share @ np.where(moving, leaf_depth - fixed, 0) + share @ moving
        cost = fixed + _PACKED_STEP_COST * steps_left
        if cost < best_cost:
            best_fixed, best_cost = fixed, cost
    return best_fixed


def _trees_of(est) -> tuple[list, list]:
    """The fitted ``tree_`` objects and, per tree, the map from its feature ids to X's columns."""
    # scikit-learn only to compile: scoring with the compiled arrays never imports it.
    from sklearn.ensemble import ExtraTreesClassifier, IsolationForest, RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier
    from sklearn.utils.validation import check_is_fitted

    if isinstance(est, IsolationForest):
        check_is_fitted(est)
        # scikit-learn only subsets columns when a tree saw fewer than all of them.
        maps = [None if len(features) == est.n_features_in_ else np.asarray(features)
                for features in est.estimators_features_]
        return [e.tree_ for e in est.estimators_], maps
    if isinstance(est, (DecisionTreeClassifier, RandomForestClassifier, ExtraTreesClassifier)):
        check_is_fitted(est)
        if est.n_outputs_ != 1:
            raise ValueError("multi-output classifiers are not supported")
        trees = [est.tree_] if isinstance(est, DecisionTreeClassifier) else [
            e.tree_ for e in est.estimators_]
        return trees, [None] * len(trees)
    raise TypeError("expected a fitted IsolationForest, DecisionTreeClassifier or "
                    f"RandomForestClassifier, got {type(est).__name__}")


class FastForest:
    """A fitted tree ensemble compiled for fast, exact predictions.

    Build one with :meth:`from_estimator` (or :func:`compile_forest`). It keeps flat arrays, not
    the estimator, and pickles with joblib.

    Parameters
    ----------
    n_jobs : int or None, default=-1
        Threads for large inputs: -1 uses every CPU this process may run on, None or 1 a single
        thread (joblib's convention). Inputs under ~16k rows per thread always use one.

    Attributes
    ----------
    kind_ : {"isolation_forest", "classifier"}
    n_features_in_ : int
    feature_names_in_ : ndarray of str, only if the estimator has it
    n_trees_ : int
    classes_ : ndarray, classifiers only
    offset_ : float, isolation forests only
    """

    def __init__(self, n_jobs: int | None = -1):
        self.n_jobs = n_jobs

    @classmethod
    def from_estimator(cls, est, n_jobs: int | None = -1) -> FastForest:
        """Compile a fitted ``IsolationForest``, ``DecisionTreeClassifier`` or forest classifier."""
        from sklearn.ensemble import IsolationForest

        trees, feature_maps = _trees_of(est)
        is_isolation = isinstance(est, IsolationForest)
        if not is_isolation and any(t.value.shape[2] != len(est.classes_) for t in trees):
            raise ValueError("a tree has a different number of classes than the forest")

        all_nodes, all_nan_left, all_values, roots, levels = [], [], [], [], []
        n_nodes = 0
        for tree, feature_map in zip(trees, feature_maps, strict=True):
            nodes, nan_left, order, node_depth, is_leaf = _flatten_tree(tree, feature_map)
            nodes["left"] += n_nodes
            if is_isolation:
                # What scikit-learn adds per tree: depth + average path length of the leaf's
                # training samples - 1, in that order of operations.
                values = (node_depth + _average_path_length(tree.n_node_samples[order]) - 1.0)
                values = values[:, None]
            else:
                values = tree.value[order, 0, :]  # class fractions, as predict_proba returns
            n_levels = int(node_depth.max()) - 1
            leaf_samples = tree.n_node_samples[order][is_leaf]
            fixed = _fixed_levels(node_depth[is_leaf] - 1, leaf_samples, n_levels)
            all_nodes.append(nodes)
            all_nan_left.append(nan_left)
            all_values.append(values)
            roots.append(n_nodes)
            levels.append((fixed, n_levels))
            n_nodes += nodes.size
            if n_nodes >= np.iinfo(np.int32).max:
                raise ValueError("forest too large: 2**31 nodes or more")

        self = cls(n_jobs=n_jobs)
        self.n_features_in_ = int(est.n_features_in_)
        if hasattr(est, "feature_names_in_"):
            self.feature_names_in_ = np.asarray(est.feature_names_in_).copy()
        self.n_trees_ = len(trees)
        self._nodes = np.concatenate(all_nodes)
        self._nan_left = np.concatenate(all_nan_left)
        self._leaf_values = np.ascontiguousarray(np.concatenate(all_values), dtype=np.float64)
        self._roots = np.asarray(roots, dtype=np.int32)
        self._levels = np.asarray(levels, dtype=np.int32).reshape(-1, 2)
        # Cache-sized work units for the kernel (see _BLOCK_BYTES and _GROUP_BYTES).
        self._block_rows = int(np.clip(_BLOCK_BYTES // (8 * self.n_features_in_), 16, 1024))
        forest_bytes = self._nodes.nbytes + self._nan_left.nbytes + self._leaf_values.nbytes
        self._group_trees = max(1, int(_GROUP_BYTES * len(trees) // forest_bytes))

        if is_isolation:
            self.kind_ = _ISOLATION
            self.offset_ = float(est.offset_)
            # scikit-learn's normaliser: number of trees x average path length of max_samples.
            apl = _average_path_length(np.array([est.max_samples_]))[0]
            self._path_normaliser = float(len(trees) * apl)
        else:
            self.kind_ = _CLASSIFIER
            self.classes_ = np.asarray(est.classes_).copy()
        self._layout = _LAYOUT
        self._check_arrays()
        if not KERNEL_AVAILABLE:
            warnings.warn("ftml._forest_kernel is not built, so FastForest walks trees with "
                          "numpy, many times slower; run `pip install -e .` to build it",
                          RuntimeWarning, stacklevel=2)
        return self

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if "kind_" in state:
            if state.get("_layout") != _LAYOUT:
                raise ValueError("this FastForest was pickled by another version of ftml.fast; "
                                 "compile it again from the estimator")
            self._check_arrays()

    def _check_arrays(self) -> None:
        """Indices the C kernel follows without checking: all in range, and every step from an
        inner node goes to a later node, so every walk ends at a leaf."""
        nodes, n_nodes = self._nodes, self._nodes.size
        position = np.arange(n_nodes)
        is_leaf = np.isnan(nodes["threshold"])
        ok = (
            nodes.dtype == _NODE_DTYPE and self._nan_left.shape == (n_nodes,)
            and self._leaf_values.ndim == 2 and self._leaf_values.shape[0] == n_nodes
            and ((nodes["feature"] >= 0) & (nodes["feature"] < self.n_features_in_)).all()
            and (nodes["left"][is_leaf] == position[is_leaf] - 1).all()
            and (nodes["left"][~is_leaf] > position[~is_leaf]).all()
            and (nodes["left"][~is_leaf] + 1 < n_nodes).all()
            and ((self._roots >= 0) & (self._roots < n_nodes)).all()
            and self._levels.shape == (self._roots.size, 2) and (self._levels >= 0).all()
        )
        if not ok:
            raise ValueError("FastForest arrays are inconsistent; compile it again")

    def __repr__(self) -> str:
        if not hasattr(self, "kind_"):
            return f"FastForest(n_jobs={self.n_jobs})"
        return (f"FastForest(kind={self.kind_!r}, n_trees={self.n_trees_}, "
                f"n_nodes={self._nodes.size}, n_jobs={self.n_jobs})")

    # --- isolation forests -------------------------------------------------------------------

    def score_samples(self, X) -> np.ndarray:
        """Same as ``IsolationForest.score_samples``: lower is more abnormal."""
        self._require(_ISOLATION, "score_samples")
        depths = self._sum_leaf_values(X)[:, 0]
        normaliser = self._path_normaliser
        # scikit-learn's expression; a forest fitted on one sample has normaliser 0.
        scores = 2 ** (-np.divide(depths, normaliser, out=np.ones_like(depths),
                                  where=normaliser != 0))
        return -scores

    def decision_function(self, X) -> np.ndarray:
        """Same as ``IsolationForest.decision_function``: negative means outlier."""
        self._require(_ISOLATION, "decision_function")
        return self.score_samples(X) - self.offset_

    # --- classifiers -------------------------------------------------------------------------

    def predict_proba(self, X) -> np.ndarray:
        """Same as the classifier's ``predict_proba``, columns in ``classes_`` order."""
        self._require(_CLASSIFIER, "predict_proba")
        proba = self._sum_leaf_values(X)
        if self.n_trees_ > 1:
            proba /= self.n_trees_  # a forest averages its trees, in scikit-learn's order
        return proba

    def predict(self, X) -> np.ndarray:
        """Class labels for classifiers; +1 inlier / -1 outlier for isolation forests."""
        if getattr(self, "kind_", None) == _ISOLATION:
            decision = self.decision_function(X)
            is_inlier = np.ones_like(decision, dtype=int)
            is_inlier[decision < 0] = -1
            return is_inlier
        return self.classes_.take(np.argmax(self.predict_proba(X), axis=1), axis=0)

    # --- internals ---------------------------------------------------------------------------

    def _require(self, kind: str, method: str) -> None:
        if getattr(self, "kind_", None) != kind:
            raise AttributeError(f"{method} needs a FastForest compiled from an {kind}; this "
                                 f"one is {getattr(self, 'kind_', 'not compiled')}")

    def _check_X(self, X) -> np.ndarray:
        names = getattr(self, "feature_names_in_", None)
        columns = getattr(X, "columns", None)
        if names is not None and columns is not None and list(columns) != list(names):
            raise ValueError("X has different feature names than the estimator was fitted with")
        if hasattr(X, "tocsr"):
            raise TypeError("sparse input is not supported; pass a dense array")
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"expected a 2-D array, got {X.ndim}-D; reshape a single row with "
                             "X.reshape(1, -1)")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but the forest expects "
                             f"{self.n_features_in_}")
        if X.dtype.kind == "f" and X.dtype.itemsize in (4, 8):
            if not X.dtype.isnative:
                X = X.astype(X.dtype.newbyteorder("="))
        else:
            # scikit-learn casts anything else straight to float32; going through float64 could
            # round twice (large integers), so do exactly what it does.
            X = X.astype(np.float32)
        return X

    def _sum_leaf_values(self, X) -> np.ndarray:
        """Per row, the sum over trees (in order, from 0.0) of the leaf values it reaches."""
        X = self._check_X(X)
        n_rows = X.shape[0]
        if _forest_kernel is None:
            return _sum_leaf_values_numpy(X, self._nodes, self._nan_left, self._roots,
                                          self._levels, self._leaf_values)
        out = np.empty((n_rows, self._leaf_values.shape[1]), dtype=np.float64)

        def walk(start: int, stop: int) -> None:
            _forest_kernel.sum_leaf_values(X, out, self._nodes, self._nan_left, self._roots,
                                           self._levels, self._leaf_values, start, stop,
                                           self._block_rows, self._group_trees)

        n_threads = min(_resolve_n_jobs(self.n_jobs), n_rows // _MIN_ROWS_PER_THREAD)
        if n_threads <= 1:
            walk(0, n_rows)
            return out
        # A few chunks per thread, so that a thread slowed down by other processes does not hold
        # up the rest.
        edges = np.linspace(0, n_rows, 4 * n_threads + 1).astype(np.int64)
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            chunks = [pool.submit(walk, a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]
            for chunk in chunks:
                chunk.result()
        return out


def _resolve_n_jobs(n_jobs: int | None) -> int:
    """joblib's convention: None -> 1, -1 -> all usable CPUs, -2 -> all but one, ..."""
    if n_jobs is None:
        return 1
    if n_jobs < 0:
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cpus = os.cpu_count() or 1
        return max(1, cpus + 1 + n_jobs)
    return max(1, n_jobs)


def _sum_leaf_values_numpy(X, nodes, nan_left, roots, levels, leaf_values) -> np.ndarray:
    """The kernel's walk in numpy: same node arrays, same comparisons, same order of sums."""
    rows = np.arange(X.shape[0])
    out = np.zeros((X.shape[0], leaf_values.shape[1]))
    threshold, feature, left = nodes["threshold"], nodes["feature"], nodes["left"]
    nan_goes_left = nan_left.astype(bool)
    for root, (_, n_levels) in zip(roots, levels, strict=True):
        idx = np.full(X.shape[0], root, dtype=np.intp)
        for _ in range(n_levels):
            x = X[rows, feature[idx]]  # float32 x is widened exactly, as in the kernel
            right = ~(x <= threshold[idx]) & ~(np.isnan(x) & nan_goes_left[idx])
            idx = left[idx] + right
        out += leaf_values[idx]
    return out


def compile_forest(est, n_jobs: int | None = -1) -> FastForest:
    """Compile a fitted estimator; shorthand for :meth:`FastForest.from_estimator`."""
    return FastForest.from_estimator(est, n_jobs=n_jobs)
