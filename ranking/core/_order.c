/*
 * ranking.core._order: the per-candidate loops of the core's validate, assemble and sort steps.
 *
 *   rank_order(scores, priority, fit, top_k, n) -> (order, ranked_scores, unscored)
 *       the ranked rows, best first, ties in the order of `scores` (a stable descending sort,
 *       NaN last, -0.0 == 0.0), cut to top_k by partial selection: a bounded heap of the best
 *       k, O(m log k), then the heap sorted. With a priority (partial scoring) the scored rows
 *       are priority[:fit] and the unscored ones follow in priority order, as many as top_k
 *       leaves room for. Identical to the numpy code it replaced (see RankingService._sort).
 *   check_ids(data, offsets) -> (first_duplicate, first_empty)
 *       the index of the first id equal to an earlier one and of the first empty id (-1: none):
 *       an open-addressing set over the ids' bytes, hashed with SipHash-1-3 under a key drawn
 *       at import (so a caller cannot choose colliding ids).
 *
 *   fill_rows(matrix, user_pos, user_found, context_pos, context_values) -> None
 *       completes an assembled matrix in one pass over its rows: with `user_found`, row 0's
 *       values at `user_pos` are copied to every other row (the user's stored row, gathered
 *       into row 0); every row gets context_values[j] at context_pos[j]. Positions are checked
 *       against the matrix's width before anything is written. What MatrixPlan.finish did
 *       with numpy fancy indexing (2 + one per context feature whole-matrix operations).
 *
 * Per-call state is on the stack or freed before returning; the GIL is held (microseconds).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <numpy/arrayobject.h>

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* ---- ranking ---------------------------------------------------------------------------- */

/* True when (sa, ia) ranks before (sb, ib): higher score first, NaN last, then lower index. */
static inline bool before(double sa, npy_intp ia, double sb, npy_intp ib) {
    if (sa > sb) {
        return true;
    }
    if (sa < sb) {
        return false;
    }
    if (sa == sb) {
        return ia < ib;
    }
    bool na = isnan(sa), nb = isnan(sb);
    if (na != nb) {
        return nb; /* exactly one is NaN: the number goes first */
    }
    return ia < ib;
}

/* Heap of indices into `s` whose root is the WORST kept element. */
static void sift_down(npy_intp *h, npy_intp len, npy_intp at, const double *s) {
    for (;;) {
        npy_intp l = 2 * at + 1, worst = at;
        if (l < len && before(s[h[worst]], h[worst], s[h[l]], h[l])) {
            worst = l;
        }
        if (l + 1 < len && before(s[h[worst]], h[worst], s[h[l + 1]], h[l + 1])) {
            worst = l + 1;
        }
        if (worst == at) {
            return;
        }
        npy_intp t = h[at];
        h[at] = h[worst];
        h[worst] = t;
        at = worst;
    }
}

/* The best k of s[0:m] into out[0:k], best first. */
static void select_best(const double *s, npy_intp m, npy_intp k, npy_intp *out) {
    if (k <= 0) {
        return;
    }
    for (npy_intp i = 0; i < k; i++) {
        out[i] = i;
    }
    for (npy_intp i = k / 2; i-- > 0;) {
        sift_down(out, k, i, s);
    }
    for (npy_intp i = k; i < m; i++) {
        if (before(s[i], i, s[out[0]], out[0])) {
            out[0] = i;
            sift_down(out, k, 0, s);
        }
    }
    /* heap sort: the worst goes to the back each time, leaving out[] best first */
    for (npy_intp len = k; len > 1; len--) {
        npy_intp t = out[0];
        out[0] = out[len - 1];
        out[len - 1] = t;
        sift_down(out, len - 1, 0, s);
    }
}

static PyObject *rank_order(PyObject *self, PyObject *args) {
    PyObject *scores_obj, *priority_obj;
    Py_ssize_t fit, top_k, n;
    if (!PyArg_ParseTuple(args, "OOnnn", &scores_obj, &priority_obj, &fit, &top_k, &n)) {
        return NULL;
    }
    PyArrayObject *scores = NULL, *priority = NULL, *order = NULL, *ranked = NULL;
    PyObject *out = NULL;
    scores = (PyArrayObject *)PyArray_FROMANY(scores_obj, NPY_FLOAT64, 1, 1, NPY_ARRAY_CARRAY_RO);
    if (scores == NULL) {
        return NULL;
    }
    npy_intp m = PyArray_DIM(scores, 0), plen = 0;
    const npy_intp *prio = NULL;
    if (priority_obj != Py_None) {
        priority =
            (PyArrayObject *)PyArray_FROMANY(priority_obj, NPY_INTP, 1, 1, NPY_ARRAY_CARRAY_RO);
        if (priority == NULL) {
            goto done;
        }
        prio = PyArray_DATA(priority);
        plen = PyArray_DIM(priority, 0);
        if (fit < 0 || fit > plen || m > fit) {
            PyErr_SetString(PyExc_ValueError,
                            "rank_order: need len(scores) <= fit <= len(priority)");
            goto done;
        }
    } else if (m > n) {
        PyErr_SetString(PyExc_ValueError, "rank_order: more scores than candidates");
        goto done;
    }
    npy_intp limit = (0 < top_k && top_k < n) ? top_k : n;
    npy_intp k = limit < m ? limit : m;
    npy_intp extra = 0;
    if (prio != NULL && k < limit) {
        extra = limit - k;
        if (extra > plen - fit) {
            extra = plen - fit;
        }
    }
    npy_intp total = k + extra, dk = k;
    order = (PyArrayObject *)PyArray_SimpleNew(1, &total, NPY_INTP);
    ranked = (PyArrayObject *)PyArray_SimpleNew(1, &dk, NPY_FLOAT64);
    if (order == NULL || ranked == NULL) {
        goto done;
    }
    npy_intp *o = PyArray_DATA(order);
    double *r = PyArray_DATA(ranked);
    const double *s = PyArray_DATA(scores);
    select_best(s, m, k, o);
    for (npy_intp i = 0; i < k; i++) {
        r[i] = s[o[i]];
        if (prio != NULL) {
            o[i] = prio[o[i]];
        }
    }
    for (npy_intp i = 0; i < extra; i++) {
        o[k + i] = prio[fit + i];
    }
    out = Py_BuildValue("(OOn)", (PyObject *)order, (PyObject *)ranked, (Py_ssize_t)extra);
done:
    Py_XDECREF(scores);
    Py_XDECREF(priority);
    Py_XDECREF(order);
    Py_XDECREF(ranked);
    return out;
}

/* ---- uniqueness ------------------------------------------------------------------------- */

static uint64_t sip_k0, sip_k1; /* drawn once at import; read-only afterwards */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                               \
    do {                                                                                       \
        v0 += v1;                                                                              \
        v1 = ROTL(v1, 13);                                                                     \
        v1 ^= v0;                                                                              \
        v0 = ROTL(v0, 32);                                                                     \
        v2 += v3;                                                                              \
        v3 = ROTL(v3, 16);                                                                     \
        v3 ^= v2;                                                                              \
        v0 += v3;                                                                              \
        v3 = ROTL(v3, 21);                                                                     \
        v3 ^= v0;                                                                              \
        v2 += v1;                                                                              \
        v1 = ROTL(v1, 17);                                                                     \
        v1 ^= v2;                                                                              \
        v2 = ROTL(v2, 32);                                                                     \
    } while (0)

/* SipHash-1-3 (Aumasson and Bernstein), the variant CPython hashes bytes with. */
static uint64_t siphash13(const uint8_t *p, size_t n) {
    uint64_t v0 = sip_k0 ^ 0x736f6d6570736575ull, v1 = sip_k1 ^ 0x646f72616e646f6dull;
    uint64_t v2 = sip_k0 ^ 0x6c7967656e657261ull, v3 = sip_k1 ^ 0x7465646279746573ull;
    uint64_t b = (uint64_t)n << 56;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t m;
        memcpy(&m, p + i, 8);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t t = 0;
    for (size_t j = 0; i + j < n; j++) {
        t |= (uint64_t)p[i + j] << (8 * j);
    }
    b |= t;
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static PyObject *check_ids(PyObject *self, PyObject *args) {
    Py_buffer data;
    PyObject *offsets_obj;
    if (!PyArg_ParseTuple(args, "y*O", &data, &offsets_obj)) {
        return NULL;
    }
    PyObject *out = NULL;
    int64_t *table = NULL, stack_table[1024];
    PyArrayObject *offsets =
        (PyArrayObject *)PyArray_FROMANY(offsets_obj, NPY_INT64, 1, 1, NPY_ARRAY_CARRAY_RO);
    if (offsets == NULL) {
        goto done;
    }
    npy_intp n = PyArray_DIM(offsets, 0) - 1;
    const int64_t *off = PyArray_DATA(offsets);
    const uint8_t *buf = data.buf;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "check_ids: offsets must not be empty");
        goto done;
    }
    npy_intp empty = -1;
    for (npy_intp i = 0; i < n; i++) {
        if (off[i] < 0 || off[i + 1] < off[i] || off[i + 1] > (int64_t)data.len) {
            PyErr_SetString(PyExc_ValueError, "check_ids: offsets out of range");
            goto done;
        }
        if (off[i + 1] == off[i] && empty < 0) {
            empty = i;
        }
    }
    size_t cap = 16;
    while (cap < 2 * (size_t)n) {
        cap *= 2;
    }
    table = cap <= 1024 ? stack_table : PyMem_Malloc(cap * sizeof(int64_t));
    if (table == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (size_t j = 0; j < cap; j++) {
        table[j] = -1;
    }
    npy_intp found = -1;
    for (npy_intp i = 0; i < n && found < 0; i++) {
        const uint8_t *p = buf + off[i];
        size_t len = (size_t)(off[i + 1] - off[i]);
        size_t slot = (size_t)siphash13(p, len) & (cap - 1);
        for (;;) {
            int64_t other = table[slot];
            if (other < 0) {
                table[slot] = i;
                break;
            }
            size_t olen = (size_t)(off[other + 1] - off[other]);
            if (olen == len && memcmp(buf + off[other], p, len) == 0) {
                found = i;
                break;
            }
            slot = (slot + 1) & (cap - 1);
        }
    }
    out = Py_BuildValue("(nn)", (Py_ssize_t)found, (Py_ssize_t)empty);
done:
    if (table != NULL && table != stack_table) {
        PyMem_Free(table);
    }
    Py_XDECREF(offsets);
    PyBuffer_Release(&data);
    return out;
}

/* ---- assembling ------------------------------------------------------------------------- */

static PyObject *fill_rows(PyObject *self, PyObject *args) {
    PyObject *matrix_obj, *user_obj, *cpos_obj, *cval_obj;
    int user_found;
    if (!PyArg_ParseTuple(args, "OOpOO", &matrix_obj, &user_obj, &user_found, &cpos_obj,
                          &cval_obj)) {
        return NULL;
    }
    if (!PyArray_Check(matrix_obj) || PyArray_TYPE((PyArrayObject *)matrix_obj) != NPY_FLOAT64 ||
        PyArray_NDIM((PyArrayObject *)matrix_obj) != 2 ||
        !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)matrix_obj) ||
        !PyArray_ISWRITEABLE((PyArrayObject *)matrix_obj)) {
        PyErr_SetString(PyExc_ValueError,
                        "fill_rows: matrix must be a writable C-contiguous 2-D float64 array");
        return NULL;
    }
    PyArrayObject *matrix = (PyArrayObject *)matrix_obj;
    PyObject *out = NULL;
    PyArrayObject *user = NULL, *cpos = NULL, *cval = NULL;
    user = (PyArrayObject *)PyArray_FROMANY(user_obj, NPY_INT64, 1, 1, NPY_ARRAY_CARRAY_RO);
    cpos = user ? (PyArrayObject *)PyArray_FROMANY(cpos_obj, NPY_INT64, 1, 1, NPY_ARRAY_CARRAY_RO)
                : NULL;
    cval = cpos ? (PyArrayObject *)PyArray_FROMANY(cval_obj, NPY_FLOAT64, 1, 1,
                                                    NPY_ARRAY_CARRAY_RO)
                : NULL;
    if (cval == NULL) {
        goto done;
    }
    const npy_intp n = PyArray_DIM(matrix, 0), width = PyArray_DIM(matrix, 1);
    const npy_intp nu = PyArray_DIM(user, 0), nc = PyArray_DIM(cpos, 0);
    const int64_t *up = PyArray_DATA(user), *cp = PyArray_DATA(cpos);
    const double *cv = PyArray_DATA(cval);
    if (PyArray_DIM(cval, 0) != nc) {
        PyErr_SetString(PyExc_ValueError, "fill_rows: one context value per position");
        goto done;
    }
    for (npy_intp j = 0; j < nu; j++) {
        if (up[j] < 0 || up[j] >= width) {
            PyErr_SetString(PyExc_ValueError, "fill_rows: user position outside the matrix");
            goto done;
        }
    }
    for (npy_intp j = 0; j < nc; j++) {
        if (cp[j] < 0 || cp[j] >= width) {
            PyErr_SetString(PyExc_ValueError, "fill_rows: context position outside the matrix");
            goto done;
        }
    }
    double *m = PyArray_DATA(matrix);
    const double *first = m;
    for (npy_intp r = 0; r < n; r++) {
        double *row = m + r * width;
        if (user_found && r > 0) {
            for (npy_intp j = 0; j < nu; j++) {
                row[up[j]] = first[up[j]];
            }
        }
        for (npy_intp j = 0; j < nc; j++) {
            row[cp[j]] = cv[j];
        }
    }
    out = Py_None;
    Py_INCREF(out);
done:
    Py_XDECREF(user);
    Py_XDECREF(cpos);
    Py_XDECREF(cval);
    return out;
}

static PyMethodDef order_methods[] = {
    {"rank_order", rank_order, METH_VARARGS,
     "rank_order(scores, priority, fit, top_k, n) -> (order, ranked_scores, unscored)"},
    {"fill_rows", fill_rows, METH_VARARGS,
     "fill_rows(matrix, user_pos, user_found, context_pos, context_values): see the module."},
    {"check_ids", check_ids, METH_VARARGS,
     "check_ids(data, offsets) -> (first repeated id, first empty id), -1 for none"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef order_module = {
    PyModuleDef_HEAD_INIT, "_order", "Top-k ranking and id uniqueness for the core.", -1,
    order_methods,
};

PyMODINIT_FUNC PyInit__order(void) {
    import_array();
    PyObject *os = PyImport_ImportModule("os");
    PyObject *key = os ? PyObject_CallMethod(os, "urandom", "i", 16) : NULL;
    Py_XDECREF(os);
    if (key == NULL || PyBytes_Size(key) != 16) {
        Py_XDECREF(key);
        return NULL;
    }
    memcpy(&sip_k0, PyBytes_AS_STRING(key), 8);
    memcpy(&sip_k1, PyBytes_AS_STRING(key) + 8, 8);
    Py_DECREF(key);
    return PyModule_Create(&order_module);
}
