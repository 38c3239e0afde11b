/*
 * Tree-ensemble walk for ftml.fast: sums, per input row, the leaf values that
 * every tree of a flattened forest assigns to that row.
 *
 * Layout (built by ftml/fast.py, which checks the indices once):
 *   nodes[n]     {threshold, feature, left}, 16 bytes. A row goes left iff
 *                x[feature] <= threshold, and the right child is always left + 1,
 *                so one add picks the child, without a branch.
 *                A leaf has threshold NaN and left = its own index - 1: every
 *                comparison with NaN is false, so a leaf steps onto itself.
 *   nan_left[n]  1 where scikit-learn sends a NaN value to the left child.
 *   roots[t]     first node of tree t.
 *   levels[t]    {fixed, total}: every row of a block takes the first `fixed`
 *                levels; after that only rows still moving go on, up to `total`.
 *   values[n * n_values + k]  what leaf n adds to output column k.
 *
 * Work order: trees in groups small enough to stay in cache; each group walks
 * every block of rows (small enough to stay in L1); a tree takes one level for
 * the whole block at once, so the CPU overlaps the independent rows' loads
 * instead of waiting on one path. Per row, trees are added in order starting
 * from 0.0, as scikit-learn does, so the sums are bit for bit the same.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define FTML_INLINE static inline __attribute__((always_inline))
/* Unrolling the row loops saves ~10% of the instructions (loop overhead). */
#define FTML_UNROLL _Pragma("GCC unroll 4")
#elif defined(_MSC_VER)
#define FTML_INLINE static __forceinline
#define FTML_UNROLL
#else
#define FTML_INLINE static inline
#define FTML_UNROLL
#endif

typedef struct {
    double threshold;
    int32_t feature;
    int32_t left;
} ftml_node;

typedef struct {
    const ftml_node *nodes;
    const uint8_t *nan_left;
    const int32_t *roots;
    const int32_t *levels;
    const double *values;
    Py_ssize_t n_trees;
    Py_ssize_t n_values;
} forest;

/* One walk per input dtype. scikit-learn compares float32(x) with a float64
 * threshold; fast.py has moved each threshold so that comparing x itself gives
 * the same answer. X[i, j] is xb[i * rs + j * cs]. `has_nan` and `cs` are
 * constants where walk_tree is inlined, so the common case (no NaN, row-major
 * X) gets a lean loop. */
#define DEFINE_WALK(SUFFIX, XTYPE)                                                         \
    FTML_INLINE int32_t step_##SUFFIX(const forest *f, const XTYPE *row, Py_ssize_t cs,    \
                                      int32_t n, int has_nan)                              \
    {                                                                                      \
        const ftml_node *node = f->nodes + n;                                              \
        double x = (double)row[(Py_ssize_t)node->feature * cs];                            \
        int32_t right = !(x <= node->threshold);                                           \
        if (has_nan)                                                                       \
            right &= !((x != x) & f->nan_left[n]);                                         \
        return node->left + right;                                                         \
    }                                                                                      \
                                                                                           \
    /* Leaves reached by rows xb[0..nb) in tree t, into leaf[]. */                         \
    FTML_INLINE void walk_tree_##SUFFIX(const forest *f, Py_ssize_t t, const XTYPE *xb,    \
                                        Py_ssize_t rs, Py_ssize_t cs, Py_ssize_t nb,       \
                                        int32_t *leaf, int32_t *moving, int32_t *spare,    \
                                        int has_nan)                                       \
    {                                                                                      \
        int32_t fixed = f->levels[2 * t], total = f->levels[2 * t + 1], d = 0;             \
        for (Py_ssize_t i = 0; i < nb; ++i)                                                \
            leaf[i] = f->roots[t];                                                         \
        /* two levels per pass: half the loads and stores of leaf[] */                    \
        for (; d + 2 <= fixed; d += 2) {                                                   \
            FTML_UNROLL                                                                    \
            for (Py_ssize_t i = 0; i < nb; ++i) {                                          \
                int32_t n = step_##SUFFIX(f, xb + i * rs, cs, leaf[i], has_nan);           \
                leaf[i] = step_##SUFFIX(f, xb + i * rs, cs, n, has_nan);                   \
            }                                                                              \
        }                                                                                  \
        if (d < fixed)                                                                     \
            for (Py_ssize_t i = 0; i < nb; ++i)                                            \
                leaf[i] = step_##SUFFIX(f, xb + i * rs, cs, leaf[i], has_nan);             \
        if (fixed >= total)                                                                \
            return;                                                                        \
        /* Deep, uneven trees: only the rows still moving take the next level, listed  \
         * afresh after each one, so short paths cost no wasted steps and no loop exit  \
         * per row for the branch predictor to miss. */                                   \
        Py_ssize_t n_moving = 0;                                                           \
        for (Py_ssize_t i = 0; i < nb; ++i) {                                              \
            moving[n_moving] = (int32_t)i;                                                 \
            n_moving += f->nodes[leaf[i]].threshold == f->nodes[leaf[i]].threshold;        \
        }                                                                                  \
        while (n_moving) {                                                                 \
            Py_ssize_t kept = 0;                                                           \
            FTML_UNROLL                                                                    \
            for (Py_ssize_t j = 0; j < n_moving; ++j) {                                    \
                int32_t i = moving[j], n = leaf[i];                                        \
                int32_t next = step_##SUFFIX(f, xb + i * rs, cs, n, has_nan);              \
                leaf[i] = next;                                                            \
                spare[kept] = i;                                                           \
                kept += next != n;                                                         \
            }                                                                              \
            int32_t *swap = moving;                                                        \
            moving = spare;                                                                \
            spare = swap;                                                                  \
            n_moving = kept;                                                               \
        }                                                                                  \
    }                                                                                      \
                                                                                           \
    static void walk_rows_##SUFFIX(const forest *f, const XTYPE *X, Py_ssize_t rs,         \
                                   Py_ssize_t cs, Py_ssize_t n_features, Py_ssize_t start, \
                                   Py_ssize_t stop, Py_ssize_t block, Py_ssize_t group,    \
                                   int32_t *work, double *out)                             \
    {                                                                                      \
        int32_t *leaf = work, *moving = work + block, *spare = work + 2 * block;           \
        const Py_ssize_t nv = f->n_values;                                                 \
        for (Py_ssize_t t0 = 0; t0 < f->n_trees; t0 += group) {                            \
            Py_ssize_t t1 = f->n_trees - t0 < group ? f->n_trees : t0 + group;             \
            for (Py_ssize_t b0 = start; b0 < stop; b0 += block) {                          \
                Py_ssize_t nb = stop - b0 < block ? stop - b0 : block;                     \
                const XTYPE *xb = X + b0 * rs;                                             \
                double *ob = out + b0 * nv;                                                \
                int has_nan = 0;                                                           \
                for (Py_ssize_t i = 0; i < nb; ++i)                                        \
                    for (Py_ssize_t j = 0; j < n_features; ++j) {                          \
                        XTYPE x = xb[i * rs + j * cs];                                     \
                        has_nan |= x != x;                                                 \
                    }                                                                      \
                if (t0 == 0)                                                               \
                    memset(ob, 0, (size_t)(nb * nv) * sizeof(double));                     \
                for (Py_ssize_t t = t0; t < t1; ++t) {                                     \
                    if (has_nan)                                                           \
                        walk_tree_##SUFFIX(f, t, xb, rs, cs, nb, leaf, moving, spare, 1);  \
                    else if (cs == 1)                                                      \
                        walk_tree_##SUFFIX(f, t, xb, rs, 1, nb, leaf, moving, spare, 0);   \
                    else                                                                   \
                        walk_tree_##SUFFIX(f, t, xb, rs, cs, nb, leaf, moving, spare, 0);  \
                    if (nv == 1) {                                                         \
                        for (Py_ssize_t i = 0; i < nb; ++i)                                \
                            ob[i] += f->values[leaf[i]];                                   \
                    } else {                                                               \
                        for (Py_ssize_t i = 0; i < nb; ++i) {                              \
                            const double *v = f->values + (Py_ssize_t)leaf[i] * nv;        \
                            double *o = ob + i * nv;                                       \
                            for (Py_ssize_t k = 0; k < nv; ++k)                            \
                                o[k] += v[k];                                              \
                        }                                                                  \
                    }                                                                      \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
    }

DEFINE_WALK(f64, double)
DEFINE_WALK(f32, float)

static int
check_len(const Py_buffer *buf, Py_ssize_t expected, const char *name)
{
    if (buf->len != expected) {
        PyErr_Format(PyExc_ValueError, "%s has %zd bytes, expected %zd", name, buf->len,
                     expected);
        return -1;
    }
    return 0;
}

/* Format of a native-order buffer without its prefix: "d", "f", ... */
static const char *
native_format(const Py_buffer *buf)
{
    const char *fmt = buf->format ? buf->format : "B";
    if (*fmt == '@' || *fmt == '=')
        ++fmt;
    return fmt;
}

PyDoc_STRVAR(sum_leaf_values_doc,
"sum_leaf_values(X, out, nodes, nan_left, roots, levels, values, start, stop,\n"
"                block_rows, group_trees)\n"
"\n"
"For rows start..stop of X (2-D, native float32 or float64, any strides), set\n"
"out[row] to the sum over trees of values[leaf the row reaches]. out is\n"
"C-contiguous float64 of shape (n_rows, n_values). The GIL is released while\n"
"walking, so threads may fill disjoint row ranges of one out at once. The node\n"
"arrays must come from ftml.fast, which checks their indices.");

static PyObject *
sum_leaf_values(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *X_obj, *out_obj, *result = NULL;
    Py_buffer X = {0}, out = {0}, nodes = {0}, nan_left = {0}, roots = {0}, levels = {0},
              values = {0};
    Py_ssize_t start, stop, block, group;
    int32_t *work = NULL;

    if (!PyArg_ParseTuple(args, "OOy*y*y*y*y*nnnn", &X_obj, &out_obj, &nodes, &nan_left,
                          &roots, &levels, &values, &start, &stop, &block, &group))
        return NULL;
    if (PyObject_GetBuffer(X_obj, &X, PyBUF_RECORDS_RO) < 0 ||
        PyObject_GetBuffer(out_obj, &out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        goto done;

    int is_f64 = strcmp(native_format(&X), "d") == 0;
    int is_f32 = strcmp(native_format(&X), "f") == 0;
    if (X.ndim != 2 || !(is_f64 || is_f32)) {
        PyErr_SetString(PyExc_TypeError, "X must be a 2-D native float32 or float64 array");
        goto done;
    }
    if (strcmp(native_format(&out), "d") != 0) {
        PyErr_SetString(PyExc_TypeError, "out must be float64");
        goto done;
    }
    if (X.strides[0] % X.itemsize || X.strides[1] % X.itemsize) {
        PyErr_SetString(PyExc_ValueError, "X strides must be multiples of its item size");
        goto done;
    }
    Py_ssize_t n_rows = X.shape[0], n_features = X.shape[1];
    Py_ssize_t n_nodes = nodes.len / (Py_ssize_t)sizeof(ftml_node);
    Py_ssize_t n_trees = roots.len / (Py_ssize_t)sizeof(int32_t);
    if (n_nodes == 0 || values.len == 0 || values.len % (n_nodes * (Py_ssize_t)sizeof(double))) {
        PyErr_SetString(PyExc_ValueError, "values must hold one whole row per node");
        goto done;
    }
    Py_ssize_t n_values = values.len / (n_nodes * (Py_ssize_t)sizeof(double));
    if (check_len(&nodes, n_nodes * (Py_ssize_t)sizeof(ftml_node), "nodes") ||
        check_len(&nan_left, n_nodes, "nan_left") ||
        check_len(&roots, n_trees * (Py_ssize_t)sizeof(int32_t), "roots") ||
        check_len(&levels, 2 * n_trees * (Py_ssize_t)sizeof(int32_t), "levels") ||
        check_len(&out, n_rows * n_values * (Py_ssize_t)sizeof(double), "out"))
        goto done;
    if (start < 0 || stop > n_rows || start > stop || block < 1 || block > (1 << 24) ||
        group < 1) {
        PyErr_SetString(PyExc_ValueError, "row range, block or group out of bounds");
        goto done;
    }
    work = PyMem_Malloc(3 * (size_t)block * sizeof(int32_t));
    if (!work) {
        PyErr_NoMemory();
        goto done;
    }

    forest f = {nodes.buf, nan_left.buf, roots.buf, levels.buf, values.buf, n_trees, n_values};
    Py_ssize_t rs = X.strides[0] / X.itemsize, cs = X.strides[1] / X.itemsize;
    Py_BEGIN_ALLOW_THREADS
    if (is_f64)
        walk_rows_f64(&f, (const double *)X.buf, rs, cs, n_features, start, stop, block, group,
                      work, (double *)out.buf);
    else
        walk_rows_f32(&f, (const float *)X.buf, rs, cs, n_features, start, stop, block, group,
                      work, (double *)out.buf);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);

done:
    PyMem_Free(work);
    if (X.obj)
        PyBuffer_Release(&X);
    if (out.obj)
        PyBuffer_Release(&out);
    PyBuffer_Release(&nodes);
    PyBuffer_Release(&nan_left);
    PyBuffer_Release(&roots);
    PyBuffer_Release(&levels);
    PyBuffer_Release(&values);
    return result;
}

static PyMethodDef methods[] = {
    {"sum_leaf_values", sum_leaf_values, METH_VARARGS, sum_leaf_values_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_forest_kernel", "Compiled tree-ensemble walk for ftml.fast.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__forest_kernel(void)
{
    return PyModule_Create(&module);
}
