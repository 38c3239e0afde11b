"""ftml.fast gives scikit-learn's own scores and probabilities, only faster.

Every comparison is against the fitted scikit-learn estimator at <= 1e-9 (in practice the
results are bit-identical, which one test pins down).
"""

import functools
import io
import pickle

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import ExtraTreesClassifier, IsolationForest, RandomForestClassifier
from sklearn.exceptions import NotFittedError
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

import ftml.fast as fast
from ftml.fast import FastForest, compile_forest

ATOL = 1e-9
SEEDS = [0, 1, 2]


def _data(seed, n_rows=400, n_features=6, integer=False):
    """Features with a few informative columns; integer=True puts many rows on split points."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, n_features)) * [1, 10, 0.01, 1e4, 1, 1][:n_features]
    if integer:
        X = np.round(X)
    y = (X[:, 0] + rng.normal(scale=0.5, size=n_rows) > 0).astype(int) + (X[:, 1] > 5)
    return X, y


# (name, estimator factory, fit needs y)
ESTIMATORS = [
    ("iforest", lambda s: IsolationForest(n_estimators=15, random_state=s), False),
    ("iforest-max_samples-64", lambda s: IsolationForest(n_estimators=15, max_samples=64,
                                                         random_state=s), False),
    ("iforest-max_samples-0.9", lambda s: IsolationForest(n_estimators=10, max_samples=0.9,
                                                          random_state=s), False),
    ("iforest-max_features-0.5", lambda s: IsolationForest(n_estimators=15, max_features=0.5,
                                                           random_state=s), False),
    ("iforest-max_features-1", lambda s: IsolationForest(n_estimators=15, max_features=1,
                                                         random_state=s), False),
    ("iforest-bootstrap-contamination", lambda s: IsolationForest(
        n_estimators=15, bootstrap=True, contamination=0.1, random_state=s), False),
    ("iforest-1-tree", lambda s: IsolationForest(n_estimators=1, random_state=s), False),
    ("tree", lambda s: DecisionTreeClassifier(random_state=s), True),
    ("tree-shallow-balanced", lambda s: DecisionTreeClassifier(
        max_depth=3, class_weight="balanced", random_state=s), True),
    ("tree-min_samples_leaf", lambda s: DecisionTreeClassifier(min_samples_leaf=7,
                                                               random_state=s), True),
    ("forest", lambda s: RandomForestClassifier(n_estimators=10, random_state=s), True),
    ("forest-max_features-max_samples", lambda s: RandomForestClassifier(
        n_estimators=8, max_features=0.5, max_samples=0.5, min_samples_leaf=2,
        random_state=s), True),
    ("forest-1-tree", lambda s: RandomForestClassifier(n_estimators=1, random_state=s), True),
    ("extra-trees", lambda s: ExtraTreesClassifier(n_estimators=6, random_state=s), True),
]


@functools.cache  # tests only read the estimators; fit each once
def _fitted(name, seed, integer=False):
    factory, needs_y = {n: (f, y) for n, f, y in ESTIMATORS}[name]
    X, y = _data(seed, integer=integer)
    est = factory(seed)
    return (est.fit(X, y) if needs_y else est.fit(X)), X


def _method(est):
    return "score_samples" if isinstance(est, IsolationForest) else "predict_proba"


def _assert_same(ff, est, X):
    method = _method(est)
    expected = getattr(est, method)(X)
    got = getattr(ff, method)(X)
    assert got.shape == expected.shape and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", [e[0] for e in ESTIMATORS])
def test_matches_sklearn_on_new_data(name, seed):
    est, _ = _fitted(name, seed)
    X_new, _ = _data(seed + 100, n_rows=300)
    ff = compile_forest(est)
    _assert_same(ff, est, X_new)
    _assert_same(ff, est, X_new.astype(np.float32))
    if isinstance(est, IsolationForest):
        np.testing.assert_allclose(ff.decision_function(X_new), est.decision_function(X_new),
                                   rtol=0, atol=ATOL)
    np.testing.assert_array_equal(ff.predict(X_new), est.predict(X_new))


@pytest.mark.parametrize("name", ["iforest", "tree", "forest"])
def test_results_are_bit_identical(name):
    est, X = _fitted(name, 0)
    method = _method(est)
    np.testing.assert_array_equal(getattr(compile_forest(est), method)(X),
                                  getattr(est, method)(X))


@pytest.mark.parametrize("name", ["iforest", "iforest-max_features-0.5", "tree", "forest",
                                  "extra-trees"])
def test_ties_at_thresholds_fall_on_sklearns_side(name):
    """Inputs exactly at, and one float32/float64 step around, every threshold of the forest."""
    est, X = _fitted(name, 3, integer=True)
    trees = [est.tree_] if hasattr(est, "tree_") else [e.tree_ for e in est.estimators_]
    maps = getattr(est, "estimators_features_", [None] * len(trees))
    rows = []
    for tree, features in zip(trees, maps, strict=True):
        inner = tree.children_left != -1
        for feature, threshold in zip(tree.feature[inner], tree.threshold[inner], strict=True):
            column = feature if features is None or len(features) == X.shape[1] \
                else features[feature]
            t32 = np.float32(threshold)
            up, down = np.nextafter(t32, np.float32(np.inf)), np.nextafter(t32, np.float32(-np.inf))
            for value in [threshold, np.nextafter(threshold, np.inf), t32, up, down,
                          (np.float64(t32) + np.float64(up)) / 2,
                          (np.float64(t32) + np.float64(down)) / 2,
                          np.nextafter((np.float64(t32) + np.float64(up)) / 2, np.inf)]:
                row = X[len(rows) % len(X)].copy()
                row[column] = value
                rows.append(row)
    X_ties = np.array(rows)
    ff = compile_forest(est)
    _assert_same(ff, est, X_ties)
    _assert_same(ff, est, X_ties.astype(np.float32))
    _assert_same(ff, est, X)  # integer training data: many values equal to split midpoints' ends


def test_split_bounds_decide_like_a_float32_cast():
    rng = np.random.default_rng(0)
    f32 = np.finfo(np.float32)
    thresholds = np.concatenate([
        rng.normal(size=2000) * 10.0 ** rng.integers(-40, 38, size=2000),
        rng.normal(size=200).astype(np.float32),  # exactly representable in float32
        [0.0, -0.0, 1.5, -1.5, f32.max, -f32.max, f32.max * 0.999999, f32.smallest_subnormal,
         -f32.smallest_subnormal, f32.smallest_normal, 1e-45, 3e38],
    ])
    bounds = fast._float32_split_bounds(thresholds)
    with np.errstate(over="ignore"):
        assert (bounds.astype(np.float32) <= thresholds).all()
        assert not (np.nextafter(bounds, np.inf).astype(np.float32) <= thresholds).any()


@pytest.mark.parametrize("name", ["iforest", "tree", "forest", "extra-trees"])
def test_nan_goes_where_sklearn_sends_it(name):
    est, X = _fitted(name, 4)
    X_nan = X.copy()
    X_nan[np.random.default_rng(4).random(X.shape) < 0.2] = np.nan
    _assert_same(compile_forest(est), est, X_nan)


def _layouts(X):
    wide = np.hstack([X, X])
    return {
        "C": X,
        "F": np.asfortranarray(X),
        "strided-rows": np.repeat(X, 2, axis=0)[::2],
        "strided-columns": np.ascontiguousarray(wide[:, ::2])[:, :] * 0 + wide[:, ::2],
        "view-of-wider": wide[:, : X.shape[1]],
        "reversed-rows": X[::-1],
        "big-endian": X.astype(">f8"),
        "int": np.round(X * 100).astype(np.int64),
        "dataframe": pd.DataFrame(X),
    }


@pytest.mark.parametrize("layout", list(_layouts(np.zeros((2, 2)))))
@pytest.mark.parametrize("name", ["iforest", "forest"])
def test_any_memory_layout_and_dtype(name, layout):
    est, X = _fitted(name, 5)
    _assert_same(compile_forest(est), est, _layouts(X)[layout])


@pytest.mark.parametrize("name", ["iforest", "tree", "forest"])
def test_single_row_and_empty_input(name):
    est, X = _fitted(name, 6)
    ff = compile_forest(est)
    _assert_same(ff, est, X[:1])
    _assert_same(ff, est, X[7:8].astype(np.float32))
    # scikit-learn refuses 0 rows; an empty batch gets an empty answer here.
    empty = getattr(ff, _method(est))(X[:0])
    width = () if isinstance(est, IsolationForest) else (len(est.classes_),)
    assert empty.shape == (0, *width) and empty.dtype == np.float64
    assert ff.predict(X[:0]).shape == (0,)


@pytest.mark.parametrize("name", ["iforest", "tree", "forest"])
def test_pickle_round_trip_gives_identical_results(name, tmp_path):
    est, X = _fitted(name, 7)
    ff = FastForest.from_estimator(est)
    method = _method(est)
    before = getattr(ff, method)(X)
    joblib.dump(ff, tmp_path / "ff.joblib")
    buffer = io.BytesIO()
    joblib.dump(ff, buffer)
    buffer.seek(0)
    for loaded in [joblib.load(tmp_path / "ff.joblib"), joblib.load(buffer),
                   pickle.loads(pickle.dumps(ff))]:
        np.testing.assert_array_equal(getattr(loaded, method)(X), before)
    # Keeps arrays, not the estimator: nothing in it refers to a scikit-learn object.
    assert not any("sklearn" in type(v).__module__ for v in vars(ff).values())


def test_pickles_from_another_layout_or_with_bad_indices_are_refused():
    est, _ = _fitted("forest", 13)
    old = compile_forest(est)
    old._layout = 0
    with pytest.raises(ValueError, match="another version"):
        pickle.loads(pickle.dumps(old))
    broken = compile_forest(est)
    broken._nodes = broken._nodes.copy()
    broken._nodes["left"][0] = 10**9  # would send the kernel outside the node array
    with pytest.raises(ValueError, match="inconsistent"):
        pickle.loads(pickle.dumps(broken))


@pytest.mark.parametrize("name", ["iforest", "forest"])
def test_input_is_not_mutated(name):
    est, X = _fitted(name, 8)
    for X_in in (X.copy(), np.asfortranarray(X), X.astype(np.float32)):
        before, dtype, f_order = X_in.copy(), X_in.dtype, X_in.flags.f_contiguous
        getattr(compile_forest(est), _method(est))(X_in)
        np.testing.assert_array_equal(X_in, before)
        assert X_in.dtype == dtype and X_in.flags.f_contiguous == f_order


@pytest.mark.parametrize("n_jobs", [None, 1, 2, -1])
@pytest.mark.parametrize("name", ["iforest", "forest"])
def test_threads_and_work_units_do_not_change_results(name, n_jobs, monkeypatch):
    est, _ = _fitted(name, 9)
    X, _ = _data(19, n_rows=3000)
    expected = getattr(est, _method(est))(X)
    monkeypatch.setattr(fast, "_MIN_ROWS_PER_THREAD", 100)  # split even this small input
    ff = compile_forest(est, n_jobs=n_jobs)
    ff._block_rows, ff._group_trees = 16, 3  # several blocks and tree groups
    np.testing.assert_allclose(getattr(ff, _method(est))(X), expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", ["iforest", "tree", "forest"])
def test_numpy_fallback_matches_sklearn(name, monkeypatch):
    est, X = _fitted(name, 10)
    X_nan = X.copy()
    X_nan[::7, 0] = np.nan
    monkeypatch.setattr(fast, "_forest_kernel", None)
    monkeypatch.setattr(fast, "KERNEL_AVAILABLE", False)
    with pytest.warns(RuntimeWarning, match="not built"):
        ff = compile_forest(est)
    _assert_same(ff, est, X_nan)
    _assert_same(ff, est, X.astype(np.float32))


def test_kernel_is_built():
    # `pip install -e .` builds it; without it everything still works, only slower.
    assert fast.KERNEL_AVAILABLE


def test_feature_names_are_kept_and_checked():
    X, y = _data(11)
    frame = pd.DataFrame(X, columns=[f"m{i}" for i in range(X.shape[1])])
    est = RandomForestClassifier(n_estimators=5, random_state=0).fit(frame, y)
    ff = compile_forest(est)
    np.testing.assert_array_equal(ff.feature_names_in_, est.feature_names_in_)
    _assert_same(ff, est, frame)
    with pytest.raises(ValueError, match="feature names"):
        ff.predict_proba(frame[frame.columns[::-1]])


@pytest.mark.parametrize(("make", "error"), [
    (lambda: IsolationForest(), NotFittedError),
    (lambda: DecisionTreeClassifier(), NotFittedError),
    (lambda: DecisionTreeRegressor().fit(*_data(0)), TypeError),
    (lambda: DummyClassifier().fit(*_data(0)), TypeError),
    (lambda: RandomForestClassifier(n_estimators=2).fit(_data(0)[0], np.c_[_data(0)[1],
                                                                           _data(0)[1]]),
     ValueError),
])
def test_unsupported_or_unfitted_estimators_are_refused(make, error):
    with pytest.raises(error):
        compile_forest(make())


def test_bad_inputs_and_wrong_methods_are_refused():
    iforest, X = _fitted("iforest", 12)
    ff = compile_forest(iforest)
    with pytest.raises(ValueError, match="features"):
        ff.score_samples(X[:, :3])
    with pytest.raises(ValueError, match="2-D"):
        ff.score_samples(X[0])
    with pytest.raises(AttributeError, match="classifier"):
        ff.predict_proba(X)
    tree_ff = compile_forest(_fitted("tree", 12)[0])
    with pytest.raises(AttributeError, match="isolation_forest"):
        tree_ff.score_samples(X)
    assert "FastForest(kind='classifier', n_trees=1" in repr(tree_ff)
