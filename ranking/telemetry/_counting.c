/*
 * Counting one finished call into its worker's stats row (see call.py, stats.py).
 *
 * The same work in Python measured ~10 us of CPU per call in the request path (its bytecode
 * runs with caches cold from the native stages around it), against ~1.5 us in a tight loop;
 * here it is a few hundred nanoseconds. `call.py` keeps the Python version as the reference
 * the tests compare this against, and as the fallback when the extension is not built.
 *
 * count_call(row, layout, marks, start, now, outcome, candidates, scored)
 *   row      writable buffer of float64 (the worker's row)
 *   layout   buffer of int64 (stats.COUNT_LAYOUT):
 *              [n_stages, i_candidates, i_scored, i_unscored,
 *               then per stage (the last is the whole call): wall, bucket, n_bounds, bounds...]
 *   marks    list of n_stages - 1 ints: perf_counter_ns at each stage's end, 0 if it did not run
 *   start    perf_counter_ns at the call's start; now: at its end
 *   outcome  row index of the outcome counter
 *   candidates, scored: what the answer carried; candidates < 0 when nothing was ranked
 *
 * Every index is checked against the row's length before it is written; a bad layout raises
 * ValueError and writes nothing past the row.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static int add(double *row, Py_ssize_t n, int64_t i, double v) {
    if (i < 0 || i >= n) {
        PyErr_SetString(PyExc_ValueError, "count_call: index outside the stats row");
        return -1;
    }
    row[i] += v;
    return 0;
}

/* Index of the first bound >= v (Prometheus buckets are "less than or equal"); n if none. */
static int64_t bucket_of(const int64_t *bounds, int64_t n, int64_t v) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (bounds[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* One stage of `dt` ns at layout[*pos...]; advances *pos past the stage's entry. */
static int count_stage(double *row, Py_ssize_t n, const int64_t *layout, Py_ssize_t len,
                       Py_ssize_t *pos, int64_t dt, int record) {
    if (*pos + 3 > len) goto bad;
    int64_t wall = layout[*pos], bucket = layout[*pos + 1], nb = layout[*pos + 2];
    if (nb < 0 || nb > len - *pos - 3) goto bad;
    const int64_t *bounds = layout + *pos + 3;
    *pos += 3 + nb;
    if (!record) return 0;
    if (add(row, n, wall, (double)dt) < 0) return -1;
    return add(row, n, bucket + bucket_of(bounds, nb, dt), 1.0);
bad:
    PyErr_SetString(PyExc_ValueError, "count_call: layout truncated");
    return -1;
}

static PyObject *count_call(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer rowbuf, laybuf;
    PyObject *marks;
    long long start, now, outcome, candidates, scored;
    if (!PyArg_ParseTuple(args, "w*y*O!LLLLL", &rowbuf, &laybuf, &PyList_Type, &marks, &start,
                          &now, &outcome, &candidates, &scored))
        return NULL;
    PyObject *result = NULL;
    if (rowbuf.itemsize != 1 && rowbuf.itemsize != 8) goto badbuf;
    if (rowbuf.len % 8 != 0 || laybuf.len % 8 != 0) goto badbuf;
    double *row = (double *)rowbuf.buf;
    Py_ssize_t n = rowbuf.len / 8;
    const int64_t *layout = (const int64_t *)laybuf.buf;
    Py_ssize_t len = laybuf.len / 8;
    if (len < 4 || layout[0] < 1) {
        PyErr_SetString(PyExc_ValueError, "count_call: layout too short");
        goto done;
    }
    int64_t stages = layout[0];
    if (PyList_GET_SIZE(marks) != stages - 1) {
        PyErr_SetString(PyExc_ValueError, "count_call: one mark per stage expected");
        goto done;
    }
    if (add(row, n, outcome, 1.0) < 0) goto done;
    if (candidates >= 0) {
        if (add(row, n, layout[1], (double)candidates) < 0 ||
            add(row, n, layout[2], (double)scored) < 0 ||
            add(row, n, layout[3], (double)(candidates - scored)) < 0)
            goto done;
    }
    Py_ssize_t pos = 4;
    int64_t prev = start;
    for (int64_t s = 0; s < stages - 1; s++) {
        long long mark = PyLong_AsLongLong(PyList_GET_ITEM(marks, s));
        if (mark == -1 && PyErr_Occurred()) goto done;
        if (count_stage(row, n, layout, len, &pos, mark - prev, mark != 0) < 0) goto done;
        if (mark != 0) prev = mark;
    }
    if (count_stage(row, n, layout, len, &pos, now - start, 1) < 0) goto done;
    result = Py_NewRef(Py_None);
    goto done;
badbuf:
    PyErr_SetString(PyExc_ValueError, "count_call: row and layout must be 8-byte items");
done:
    PyBuffer_Release(&rowbuf);
    PyBuffer_Release(&laybuf);
    return result;
}

static PyMethodDef methods[] = {
    {"count_call", count_call, METH_VARARGS, "Count one finished call into a stats row."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_counting",
    .m_doc = "Counting a finished call into a stats row.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__counting(void) { return PyModule_Create(&module); }
