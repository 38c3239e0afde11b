/*
 * Sliding-window statistics for ftml.features: for each requested window (its
 * last row), per metric, the mean, std (ddof 0), min, max, last value,
 * least-squares slope and median of the window's rows.
 *
 * Every figure of a window is a function of that window's rows alone, computed
 * in a fixed order (sums from the first row to the last, then divided), so a
 * window gives the same bits whatever rows come before it or how the caller
 * chunks the data: chunked and one-piece scoring agree exactly. ftml/features.py
 * has the same arithmetic in numpy (the fallback when this module is not built)
 * and checks the two against each other and against pandas in its tests.
 *
 *   z[n * m]      standardised values, row-major, no NaN in any requested window
 *   ends[k]       last row of each window (ascending gives the fast path)
 *   out[k, width] stat-major: out[i, col[s] + j] is stat s of metric j
 *   col[7]        first column of each stat (order of STATS), -1 = not wanted
 *
 * Order statistics come from one sorted copy of the window per metric, kept
 * rank-major so that each step is a fixed run of compares and selects over all
 * metrics at once (vectorised, no data-dependent branch: see slide_sorted).
 * When a window ends a few rows after the previous one, that copy is updated
 * row by row (the leaving value replaced by the entering one, O(w)) rather
 * than sorted again. Order statistics are returned + 0.0, so that -0.0 and 0.0
 * (equal, but sorted either way) always give the same bits.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* The hot loop is also compiled for AVX2, picked at load time where the CPU has it: the same
 * operations in wider registers (no FMA: -ffp-contract=off), so the same bits. */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define FTML_CLONES __attribute__((target_clones("avx2", "default")))
#define FTML_INLINE static inline __attribute__((always_inline))
#else
#define FTML_CLONES
#define FTML_INLINE static inline
#endif

enum { S_MEAN = 0, S_STD, S_MIN, S_MAX, S_LAST, S_SLOPE, S_MEDIAN, N_STATS };

static const char *
native_format(const Py_buffer *b)
{
    const char *f = b->format ? b->format : "B";
    if (f[0] == '@' || f[0] == '=' || f[0] == '<')
        f++;
    return f;
}

/* The epilogue of both entry points: release the buffers that were obtained (a view never
 * obtained has obj NULL). */
static void
release_views(Py_buffer *a, Py_buffer *b, Py_buffer *c)
{
    Py_buffer *views[3] = {a, b, c};
    for (int i = 0; i < 3; i++)
        if (views[i]->obj)
            PyBuffer_Release(views[i]);
}

/* Sorted copy of a window, rank-major: sorted[r * m + j] is the r-th smallest value of metric
 * j, for r < w; row w is +inf (a sentinel the updates read). Every update below is a fixed
 * sequence of compares and selects over all metrics at once: no branch depends on the data,
 * and the compiler vectorises the loops over metrics. */

/* Replace the value leaving[j] of each metric's sorted window by entering[j]. Removing the
 * value leaves R, with R[i] = S[i] while S[i] < old and S[i + 1] from there (the first copy
 * of `old` goes); inserting `new` into R gives max(R[i - 1], min(R[i], new)) at rank i. Both
 * read only ranks i and i + 1, so S is overwritten in place, rank by rank. */
FTML_INLINE void
slide_sorted(double *restrict sorted, Py_ssize_t m, Py_ssize_t w, const double *restrict leaving,
             const double *restrict entering, double *restrict prev)
{
    for (Py_ssize_t j = 0; j < m; j++)
        prev[j] = -INFINITY;
    for (Py_ssize_t i = 0; i < w; i++) {
        double *restrict s = sorted + i * m;
        const double *restrict s1 = sorted + (i + 1) * m;
        for (Py_ssize_t j = 0; j < m; j++) {
            const double a = s[j], b = s1[j], x = entering[j], p = prev[j];
            const double r = a < leaving[j] ? a : b;
            const double lo = r < x ? r : x;
            s[j] = p > lo ? p : lo;
            prev[j] = r;
        }
    }
}

/* Sort rows first[0 .. w) (row stride m) into sorted: insert them one by one, as above
 * (O(w^2), for a window that does not follow the one before closely). */
FTML_INLINE void
fill_sorted(double *restrict sorted, Py_ssize_t m, Py_ssize_t w, const double *first,
            double *restrict prev)
{
    for (Py_ssize_t i = 0; i <= w; i++)
        for (Py_ssize_t j = 0; j < m; j++)
            sorted[i * m + j] = INFINITY;
    for (Py_ssize_t r = 0; r < w; r++) {
        const double *restrict x = first + r * m;
        for (Py_ssize_t j = 0; j < m; j++)
            prev[j] = -INFINITY;
        for (Py_ssize_t i = 0; i <= r; i++) {
            double *restrict s = sorted + i * m;
            for (Py_ssize_t j = 0; j < m; j++) {
                const double v = s[j], y = x[j], p = prev[j];
                const double lo = v < y ? v : y;
                s[j] = p > lo ? p : lo;
                prev[j] = v;
            }
        }
    }
}

FTML_CLONES static void
window_rows(const double *restrict z, Py_ssize_t m, const int64_t *restrict ends, Py_ssize_t k,
            Py_ssize_t w, const int64_t *col, Py_ssize_t width, double *restrict out,
            double *restrict sorted, double *restrict acc, double *restrict acc2,
            double *restrict acc3)
{
    const int order = col[S_MIN] >= 0 || col[S_MAX] >= 0 || col[S_MEDIAN] >= 0;
    const int sums = col[S_MEAN] >= 0 || col[S_STD] >= 0;
    const double half = (double)(w - 1) / 2.0;
    const double denom = (double)w * ((double)w * (double)w - 1.0) / 12.0;
    int64_t prev = -1; /* no window yet */
    for (Py_ssize_t i = 0; i < k; i++) {
        const int64_t e = ends[i];
        const double *first = z + (e - w + 1) * m, *lastrow = z + e * m;
        double *o = out + i * width;
        if (order) {
            /* Sliding costs w steps a row, sorting afresh about w^2 / 2: slide when the
             * window follows the last one by at most (w + 1) / 2 rows. Every row slid in or
             * out belongs to one of the two windows, so none is NaN. */
            if (prev >= 0 && e > prev && e - prev <= (w + 1) / 2)
                for (int64_t x = prev + 1; x <= e; x++)
                    slide_sorted(sorted, m, w, z + (x - w) * m, z + x * m, acc);
            else
                fill_sorted(sorted, m, w, first, acc);
            const double *lo = sorted, *hi = sorted + (w - 1) * m, *mid = sorted + (w / 2) * m;
            for (Py_ssize_t j = 0; j < m; j++) {
                if (col[S_MIN] >= 0)
                    o[col[S_MIN] + j] = lo[j] + 0.0;
                if (col[S_MAX] >= 0)
                    o[col[S_MAX] + j] = hi[j] + 0.0;
                if (col[S_MEDIAN] >= 0)
                    o[col[S_MEDIAN] + j] = (w % 2 ? mid[j] : (mid[j - m] + mid[j]) / 2.0) + 0.0;
            }
        }
        prev = e;
        if (col[S_LAST] >= 0)
            for (Py_ssize_t j = 0; j < m; j++)
                o[col[S_LAST] + j] = lastrow[j];
        if (sums || col[S_SLOPE] >= 0) {
            /* One pass over the window, shifted by its first row (d = x - x0): the sums of d
             * and d^2 give the mean and variance without the cancellation of raw sums (the
             * relative error stays within ~w^2 eps of the variance), and sum(t * d) with t
             * centred gives the slope. */
            /* Four metrics at a time, accumulators in registers (12 independent chains);
             * per metric the operations are the same, in the same order. */
            Py_ssize_t j = 0;
            for (; j + 4 <= m; j += 4) {
                double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
                double q0 = 0.0, q1 = 0.0, q2 = 0.0, q3 = 0.0;
                double u0 = 0.0, u1 = 0.0, u2 = 0.0, u3 = 0.0;
                const double f0 = first[j], f1 = first[j + 1], f2 = first[j + 2],
                             f3 = first[j + 3];
                for (Py_ssize_t r = 1; r < w; r++) {
                    const double t = (double)r - half;
                    const double *x = first + r * m + j;
                    double d0 = x[0] - f0, d1 = x[1] - f1, d2 = x[2] - f2, d3 = x[3] - f3;
                    double e0 = d0 * d0, e1 = d1 * d1, e2 = d2 * d2, e3 = d3 * d3;
                    double g0 = t * d0, g1 = t * d1, g2 = t * d2, g3 = t * d3;
                    s0 += d0; s1 += d1; s2 += d2; s3 += d3;
                    q0 += e0; q1 += e1; q2 += e2; q3 += e3;
                    u0 += g0; u1 += g1; u2 += g2; u3 += g3;
                }
                acc[j] = s0; acc[j + 1] = s1; acc[j + 2] = s2; acc[j + 3] = s3;
                acc2[j] = q0; acc2[j + 1] = q1; acc2[j + 2] = q2; acc2[j + 3] = q3;
                acc3[j] = u0; acc3[j + 1] = u1; acc3[j + 2] = u2; acc3[j + 3] = u3;
            }
            for (; j < m; j++) {
                double s0 = 0.0, q0 = 0.0, u0 = 0.0;
                const double f0 = first[j];
                for (Py_ssize_t r = 1; r < w; r++) {
                    const double t = (double)r - half;
                    double d0 = first[r * m + j] - f0;
                    double e0 = d0 * d0, g0 = t * d0;
                    s0 += d0;
                    q0 += e0;
                    u0 += g0;
                }
                acc[j] = s0;
                acc2[j] = q0;
                acc3[j] = u0;
            }
            /* A loop per stat, each vectorised over the metrics. */
            if (col[S_MEAN] >= 0)
                for (Py_ssize_t j = 0; j < m; j++)
                    o[col[S_MEAN] + j] = first[j] + acc[j] / (double)w;
            if (col[S_STD] >= 0)
                for (Py_ssize_t j = 0; j < m; j++) {
                    const double md = acc[j] / (double)w;
                    const double var = acc2[j] / (double)w - md * md;
                    o[col[S_STD] + j] = sqrt(var > 0.0 ? var : 0.0);
                }
            if (col[S_SLOPE] >= 0)
                for (Py_ssize_t j = 0; j < m; j++)
                    o[col[S_SLOPE] + j] = w > 1 ? acc3[j] / denom : 0.0;
        }
    }
}

PyDoc_STRVAR(window_stats_doc,
"window_stats(z, ends, out, window, columns)\n--\n\n"
"Fill out[i, columns[s] + j] with stat s of metric j over rows\n"
"ends[i] - window + 1 .. ends[i] of z (float64, C order, n x m); a stat whose\n"
"column is -1 is skipped. ends: int64, each in [window - 1, n). out: float64,\n"
"C order, one row per end. The GIL is released while it runs.");

static PyObject *
window_stats(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *z_obj, *ends_obj, *out_obj, *result = NULL;
    Py_buffer z = {0}, ends = {0}, out = {0};
    Py_ssize_t w;
    int64_t col[N_STATS];
    double *work = NULL;

    if (!PyArg_ParseTuple(args, "OOOn(LLLLLLL)", &z_obj, &ends_obj, &out_obj, &w, &col[0],
                          &col[1], &col[2], &col[3], &col[4], &col[5], &col[6]))
        return NULL;
    if (PyObject_GetBuffer(z_obj, &z, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0 ||
        PyObject_GetBuffer(ends_obj, &ends, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0 ||
        PyObject_GetBuffer(out_obj, &out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        goto done;
    if (z.ndim != 2 || strcmp(native_format(&z), "d") != 0) {
        PyErr_SetString(PyExc_TypeError, "z must be a 2-D C-contiguous float64 array");
        goto done;
    }
    if (ends.ndim != 1 || ends.itemsize != 8 ||
        (strcmp(native_format(&ends), "q") != 0 && strcmp(native_format(&ends), "l") != 0)) {
        PyErr_SetString(PyExc_TypeError, "ends must be a 1-D int64 array");
        goto done;
    }
    Py_ssize_t n = z.shape[0], m = z.shape[1], k = ends.shape[0];
    if (out.ndim != 2 || strcmp(native_format(&out), "d") != 0 || out.shape[0] != k) {
        PyErr_SetString(PyExc_ValueError, "out must be 2-D float64 with a row per window end");
        goto done;
    }
    Py_ssize_t width = out.shape[1];
    for (int s = 0; s < N_STATS; s++)
        if (col[s] < -1 || col[s] + m > width) {
            PyErr_SetString(PyExc_ValueError, "stat column offset out of range");
            goto done;
        }
    if (w < 1 || w > n) {
        PyErr_SetString(PyExc_ValueError, "window out of range");
        goto done;
    }
    const int64_t *e = ends.buf;
    for (Py_ssize_t i = 0; i < k; i++)
        if (e[i] < w - 1 || e[i] >= n) {
            PyErr_SetString(PyExc_ValueError, "window end out of range");
            goto done;
        }
    work = PyMem_Malloc(((size_t)m * ((size_t)w + 1) + 3 * (size_t)m + 1) * sizeof(double));
    if (!work) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    window_rows(z.buf, m, e, k, w, col, width, out.buf, work, work + m * (w + 1),
                work + m * (w + 2), work + m * (w + 3));
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);

done:
    PyMem_Free(work);
    release_views(&z, &ends, &out);
    return result;
}

/* Trailing level (ftml.features.trailing_level): per row i and metric j, the mean of z clipped
 * to +-clip over the rows [max(first, i - span), i) of i's segment, NaN skipped, divided by
 * max(count, shrink). Values are summed in fixed point (rint(clipped * 2^20) as int64), so a
 * running sum (add the row entering, subtract the row leaving) gives exactly the integers of
 * numpy's cumulative-sum differences, and then the same two float operations. */
FTML_INLINE int64_t
level_units(double x, double clip)
{
    const double c = x < -clip ? -clip : (x > clip ? clip : x);
    return (int64_t)rint(c * 1048576.0); /* 2^20: features._LEVEL_BITS */
}

/* One run of rows [first, stop) of a segment: each row's level from the sums of the rows before
 * it, then its own units in and the leaving row's out. With `prime`, the run continues from the
 * `span` rows prime[((turn + q) % span) * m], q = 0 .. span - 1, as if they came before it in
 * its segment: their units are summed first, and the p-th of them leaves row first + p's span. */
FTML_INLINE void
level_run(const double *restrict z, Py_ssize_t first, Py_ssize_t stop, Py_ssize_t m,
          const double *restrict prime, Py_ssize_t turn, Py_ssize_t span, double clip,
          int64_t shrink, double *restrict out, int64_t *restrict sum, int64_t *restrict count)
{
    for (Py_ssize_t j = 0; j < m; j++)
        sum[j] = count[j] = 0;
    if (prime)
        for (Py_ssize_t q = 0; q < span; q++) {
            const double *row = prime + ((turn + q) % span) * m;
            for (Py_ssize_t j = 0; j < m; j++)
                if (row[j] == row[j]) { /* not NaN */
                    sum[j] += level_units(row[j], clip);
                    count[j]++;
                }
        }
    for (Py_ssize_t i = first; i < stop; i++) {
        const double *row = z + i * m;
        double *o = out + i * m;
        for (Py_ssize_t j = 0; j < m; j++) {
            double total = (double)sum[j];
            total *= 1.0 / 1048576.0;
            o[j] = total / (double)(count[j] > shrink ? count[j] : shrink);
        }
        for (Py_ssize_t j = 0; j < m; j++)
            if (row[j] == row[j]) {
                sum[j] += level_units(row[j], clip);
                count[j]++;
            }
        /* The row leaving the next row's span: the prime's p-th while p < span. */
        const Py_ssize_t p = i - first;
        const double *old = NULL;
        if (prime)
            old = p < span ? prime + ((turn + p) % span) * m : z + (i - span) * m;
        else if (p >= span)
            old = z + (i - span) * m;
        if (old)
            for (Py_ssize_t j = 0; j < m; j++)
                if (old[j] == old[j]) {
                    sum[j] -= level_units(old[j], clip);
                    count[j]--;
                }
    }
}

FTML_CLONES static void
level_rows(const double *restrict z, const int64_t *restrict seg, Py_ssize_t n, Py_ssize_t m,
           Py_ssize_t span, double clip, int64_t shrink, double *restrict out,
           int64_t *restrict sum, int64_t *restrict count)
{
    for (Py_ssize_t first = 0, i = 1; first < n; i++)
        if (i == n || seg[i] != seg[i - 1]) {
            level_run(z, first, i, m, NULL, 0, span, clip, shrink, out, sum, count);
            first = i;
        }
}

/* The level entry points' common checks: out is float64 of z's shape (n x m); span >= 1 and
 * 0 <= clip <= 2^31. Within these bounds every clipped value times 2^20 is below 2^51: rint is
 * exact and no sum of a realistic frame can overflow. 0 with the exception set if not. */
static int
level_out_ok(const Py_buffer *out, Py_ssize_t n, Py_ssize_t m, Py_ssize_t span, double clip)
{
    if (out->ndim != 2 || strcmp(native_format(out), "d") != 0 || out->shape[0] != n ||
        out->shape[1] != m) {
        PyErr_SetString(PyExc_ValueError, "out must be float64 of z's shape");
        return 0;
    }
    if (span < 1 || !(clip >= 0.0 && clip <= 2147483648.0)) {
        PyErr_SetString(PyExc_ValueError, "span must be >= 1 and clip in [0, 2^31]");
        return 0;
    }
    return 1;
}

PyDoc_STRVAR(trailing_level_doc,
"trailing_level(z, segments, span, clip, out)\n--\n\n"
"Fill out (float64, C order, n x m) with ftml.features.trailing_level(z, segments, span,\n"
"clip): the same bits. z: float64, C order, n x m; segments: int64, n; span >= 1;\n"
"0 <= clip <= 2^31. The GIL is released while it runs.");

static PyObject *
trailing_level(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *z_obj, *seg_obj, *out_obj, *result = NULL;
    Py_buffer z = {0}, seg = {0}, out = {0};
    Py_ssize_t span;
    double clip;
    int64_t *work = NULL;

    if (!PyArg_ParseTuple(args, "OOndO", &z_obj, &seg_obj, &span, &clip, &out_obj))
        return NULL;
    if (PyObject_GetBuffer(z_obj, &z, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0 ||
        PyObject_GetBuffer(seg_obj, &seg, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0 ||
        PyObject_GetBuffer(out_obj, &out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        goto done;
    if (z.ndim != 2 || strcmp(native_format(&z), "d") != 0) {
        PyErr_SetString(PyExc_TypeError, "z must be a 2-D C-contiguous float64 array");
        goto done;
    }
    Py_ssize_t n = z.shape[0], m = z.shape[1];
    if (seg.ndim != 1 || seg.itemsize != 8 || seg.shape[0] != n ||
        (strcmp(native_format(&seg), "q") != 0 && strcmp(native_format(&seg), "l") != 0)) {
        PyErr_SetString(PyExc_TypeError, "segments must be a 1-D int64 array, one per row");
        goto done;
    }
    if (!level_out_ok(&out, n, m, span, clip))
        goto done;
    work = PyMem_Malloc(2 * ((size_t)m + 1) * sizeof(int64_t));
    if (!work) {
        PyErr_NoMemory();
        goto done;
    }
    const int64_t shrink = span / 2 > 1 ? span / 2 : 1;
    Py_BEGIN_ALLOW_THREADS
    level_rows(z.buf, seg.buf, n, m, span, clip, shrink, out.buf, work, work + m + 1);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);

done:
    PyMem_Free(work);
    release_views(&z, &seg, &out);
    return result;
}

/* The trailing level of rows that continue from a carried ring (ftml.features.LevelCarry):
 * the rows come in runs (runs[r] is the first row of run r; a run ends where the next begins);
 * a run with base[r] >= 0 is preceded, as if they were rows of its segment, by the `span` rows
 * ring[base[r] + (turn[r] + q) % span] for q = 0 .. span - 1 (the ring in slot order). Gives the
 * bits level_rows gives on the ring's rows followed by the run's, without copying the ring or
 * computing its rows' levels: the ring's units are summed once, and each of its rows is read
 * again only when it leaves a run row's span. */
FTML_CLONES static void
level_rows_ring(const double *restrict z, Py_ssize_t n, Py_ssize_t m,
                const int64_t *restrict runs, const int64_t *restrict base,
                const int64_t *restrict turn, Py_ssize_t k, const double *restrict ring,
                Py_ssize_t span, double clip, int64_t shrink, double *restrict out,
                int64_t *restrict sum, int64_t *restrict count)
{
    for (Py_ssize_t r = 0; r < k; r++)
        level_run(z, runs[r], r + 1 < k ? runs[r + 1] : n, m,
                  base[r] >= 0 ? ring + base[r] * m : NULL, base[r] >= 0 ? turn[r] : 0, span,
                  clip, shrink, out, sum, count);
}

PyDoc_STRVAR(trailing_level_ring_doc,
"trailing_level_ring(z, runs, base, turn, ring, span, clip, out)\n--\n\n"
"Fill out (float64, n x m) with the trailing level of z's rows (float64, C order, n x m), in\n"
"runs starting at the rows runs (int64, ascending, runs[0] == 0); run r with base[r] >= 0\n"
"continues from the span rows ring[base[r] + (turn[r] + q) % span], q = 0 .. span - 1 (ring:\n"
"float64, C order, R x m). The bits of trailing_level on the ring's rows followed by the\n"
"run's. The GIL is released while it runs.");

static int
int64_vector(const Py_buffer *b, Py_ssize_t k)
{
    return b->ndim == 1 && b->itemsize == 8 && b->shape[0] == k &&
           (strcmp(native_format(b), "q") == 0 || strcmp(native_format(b), "l") == 0);
}

static PyObject *
trailing_level_ring(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *z_obj, *runs_obj, *base_obj, *turn_obj, *ring_obj, *out_obj, *result = NULL;
    Py_buffer z = {0}, runs = {0}, base = {0}, turn = {0}, ring = {0}, out = {0};
    Py_ssize_t span;
    double clip;
    int64_t *work = NULL;

    if (!PyArg_ParseTuple(args, "OOOOOndO", &z_obj, &runs_obj, &base_obj, &turn_obj, &ring_obj,
                          &span, &clip, &out_obj))
        return NULL;
    if (PyObject_GetBuffer(z_obj, &z, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0 ||
        PyObject_GetBuffer(runs_obj, &runs, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0 ||
        PyObject_GetBuffer(base_obj, &base, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0 ||
        PyObject_GetBuffer(turn_obj, &turn, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0 ||
        PyObject_GetBuffer(ring_obj, &ring, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0 ||
        PyObject_GetBuffer(out_obj, &out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        goto done;
    if (z.ndim != 2 || strcmp(native_format(&z), "d") != 0 || ring.ndim != 2 ||
        strcmp(native_format(&ring), "d") != 0 || ring.shape[1] != z.shape[1]) {
        PyErr_SetString(PyExc_TypeError, "z and ring must be 2-D C-contiguous float64 arrays "
                        "with as many columns");
        goto done;
    }
    Py_ssize_t n = z.shape[0], m = z.shape[1], k = runs.ndim == 1 ? runs.shape[0] : -1;
    if (!int64_vector(&runs, k) || !int64_vector(&base, k) || !int64_vector(&turn, k)) {
        PyErr_SetString(PyExc_TypeError, "runs, base and turn must be 1-D int64 arrays of one "
                        "length");
        goto done;
    }
    if (!level_out_ok(&out, n, m, span, clip))
        goto done;
    const int64_t *rs = runs.buf, *bs = base.buf, *ts = turn.buf;
    if (n > 0 && (k < 1 || rs[0] != 0)) {
        PyErr_SetString(PyExc_ValueError, "runs must start at row 0");
        goto done;
    }
    for (Py_ssize_t r = 0; r < k; r++)
        if (rs[r] < 0 || rs[r] > n || (r && rs[r] < rs[r - 1]) ||
            bs[r] < -1 || (bs[r] >= 0 && bs[r] + span > ring.shape[0]) ||
            (bs[r] >= 0 && (ts[r] < 0 || ts[r] >= span))) {
            PyErr_SetString(PyExc_ValueError, "a run, ring base or turn is out of range");
            goto done;
        }
    work = PyMem_Malloc(2 * ((size_t)m + 1) * sizeof(int64_t));
    if (!work) {
        PyErr_NoMemory();
        goto done;
    }
    const int64_t shrink = span / 2 > 1 ? span / 2 : 1;
    Py_BEGIN_ALLOW_THREADS
    level_rows_ring(z.buf, n, m, rs, bs, ts, k, ring.buf, span, clip, shrink, out.buf, work,
                    work + m + 1);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);

done:
    PyMem_Free(work);
    release_views(&z, &runs, &base);
    release_views(&turn, &ring, &out);
    return result;
}

static PyMethodDef methods[] = {
    {"window_stats", window_stats, METH_VARARGS, window_stats_doc},
    {"trailing_level", trailing_level, METH_VARARGS, trailing_level_doc},
    {"trailing_level_ring", trailing_level_ring, METH_VARARGS, trailing_level_ring_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_window_kernel", "Compiled sliding-window statistics for ftml.features.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__window_kernel(void)
{
    return PyModule_Create(&module);
}
