/*
 * ranking.server._wire: RankRequest bytes -> what the core needs, and the RankResponse back to
 * bytes, each in one native call with no Python object per candidate. The wire work itself is
 * in _wire_core.h (pure C, fuzzed); this file turns its arrays into Python and numpy objects.
 * Read ranking/server/README.md.
 *
 * The GIL is held throughout: a 200-candidate request decodes in a few microseconds, less than
 * releasing and re-taking the GIL would be worth, and the results are Python objects.
 * All per-call state lives on the stack or in memory freed before returning.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <numpy/arrayobject.h>

#include "_wire_core.h"

static PyObject *WireError; /* the module's exception type (set once at import) */

static PyObject *str_of(wire_str s) {
    return PyUnicode_DecodeUTF8((const char *)s.p, (Py_ssize_t)s.n, "strict");
}

/* Caller-facing errors: plain text naming the field, never a library's exception text. */
static PyObject *malformed(int code, size_t at) {
    if (code == WIRE_ENOMEM) {
        return PyErr_NoMemory();
    }
    PyErr_Format(WireError, "request body is not a valid RankRequest: %s at byte %zu",
                 wire_error_text[code], at);
    return NULL;
}

static PyObject *decode_request(PyObject *self, PyObject *args) {
    Py_buffer body;
    Py_ssize_t max_candidates, max_names;
    if (!PyArg_ParseTuple(args, "y*nn", &body, &max_candidates, &max_names)) {
        return NULL;
    }
    wire_request r;
    int rc = wire_decode_request(body.buf, (size_t)body.len, &r);
    PyObject *out = NULL, *rid = NULL, *uid = NULL, *data = NULL, *ctx = NULL, *names = NULL;
    PyArrayObject *offsets = NULL, *values = NULL, *rows = NULL;
    if (rc != WIRE_OK) {
        malformed(rc, r.error_at);
        goto done;
    }
    size_t n = r.n, w = r.names_n;
    /* Shape checks the message alone can fail, in the order the Python converter had them. */
    bool any_values = false;
    for (size_t i = 0; i < n; i++) {
        int64_t k = r.count[i];
        if (k) {
            any_values = true;
            if (w && (size_t)k != w) {
                PyErr_Format(WireError,
                             "candidates[%zu].feature_values: %lld values for %zu feature_names "
                             "(send one per name, or none)",
                             i, (long long)k, w);
                goto done;
            }
        }
    }
    if (any_values && !w) {
        PyErr_SetString(WireError, "candidates.feature_values: sent without feature_names");
        goto done;
    }
    /* Limits that bound what this call allocates (the matrix is n x w). */
    if (max_candidates >= 0 && n > (size_t)max_candidates) {
        PyErr_Format(WireError, "candidates: %zu sent, at most %zd allowed per request", n,
                     max_candidates);
        goto done;
    }
    if (max_names >= 0 && w > (size_t)max_names) {
        PyErr_Format(WireError,
                     "feature_names: %zu sent, more than the model's %zd features", w,
                     max_names);
        goto done;
    }

    if (!(rid = str_of(r.request_id)) || !(uid = str_of(r.user_id))) {
        goto done;
    }
    data = PyBytes_FromStringAndSize((const char *)r.ids, (Py_ssize_t)r.ids_len);
    npy_intp dim = (npy_intp)n + 1;
    offsets = (PyArrayObject *)PyArray_SimpleNew(1, &dim, NPY_INT64);
    if (data == NULL || offsets == NULL) {
        goto done;
    }
    memcpy(PyArray_DATA(offsets), r.offsets, (n + 1) * sizeof(int64_t));
    if (!(ctx = PyDict_New())) {
        goto done;
    }
    for (size_t i = 0; i < r.ctx_n; i++) { /* in wire order: the last entry of a key wins */
        PyObject *k = str_of(r.ctx_keys[i]);
        PyObject *v = k ? PyFloat_FromDouble(r.ctx_vals[i]) : NULL;
        int bad = v == NULL || PyDict_SetItem(ctx, k, v) != 0;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (bad) {
            goto done;
        }
    }
    if (!(names = PyList_New((Py_ssize_t)w))) {
        goto done;
    }
    for (size_t j = 0; j < w; j++) {
        PyObject *s = str_of(r.names[j]);
        if (s == NULL) {
            goto done;
        }
        PyList_SET_ITEM(names, (Py_ssize_t)j, s);
    }
    if (w) {
        /* (n, w) float64, NaN where a candidate sent nothing; `rows` marks those that sent. */
        npy_intp dims[2] = {(npy_intp)n, (npy_intp)w};
        values = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_FLOAT64);
        npy_intp dn = (npy_intp)n;
        rows = (PyArrayObject *)PyArray_SimpleNew(1, &dn, NPY_BOOL);
        if (values == NULL || rows == NULL) {
            goto done;
        }
        double *dst = PyArray_DATA(values);
        npy_bool *sent = PyArray_DATA(rows);
        const double *src = r.values;
        bool all = true;
        for (size_t i = 0; i < n; i++) {
            if (r.count[i]) {
                memcpy(dst + i * w, src, w * sizeof(double));
                src += w;
                sent[i] = 1;
            } else {
                for (size_t j = 0; j < w; j++) {
                    dst[i * w + j] = NAN;
                }
                sent[i] = 0;
                all = false;
            }
        }
        if (all) {
            Py_CLEAR(rows);
        }
    }
    out = Py_BuildValue("(NNNNNiONOO)", rid, uid, data, (PyObject *)offsets, ctx, (int)r.top_k,
                        r.strict ? Py_True : Py_False, names,
                        values ? (PyObject *)values : Py_None, rows ? (PyObject *)rows : Py_None);
    /* "N" stole rid, uid, data, offsets, ctx and names (also on failure) */
    rid = uid = data = ctx = names = NULL;
    offsets = NULL;
done:
    Py_XDECREF(rid);
    Py_XDECREF(uid);
    Py_XDECREF(data);
    Py_XDECREF(ctx);
    Py_XDECREF(names);
    Py_XDECREF(offsets);
    Py_XDECREF(values);
    Py_XDECREF(rows);
    wire_request_free(&r);
    PyBuffer_Release(&body);
    return out;
}

static int utf8_view(PyObject *s, wire_str *out) {
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(s, &n);
    if (p == NULL) {
        return -1;
    }
    out->p = (const uint8_t *)p;
    out->n = (size_t)n;
    return 0;
}

static PyObject *encode_response(PyObject *self, PyObject *args) {
    Py_buffer ids;
    PyObject *offsets_obj, *order_obj, *scores_obj, *version, *degraded, *request_id;
    Py_ssize_t unscored;
    Py_buffer extra = {0};
    if (!PyArg_ParseTuple(args, "y*OOOnUOU|y*", &ids, &offsets_obj, &order_obj, &scores_obj,
                          &unscored, &version, &degraded, &request_id, &extra)) {
        return NULL;
    }
    PyObject *out = NULL, *seq = NULL;
    PyArrayObject *offsets = NULL, *order = NULL, *scores = NULL;
    wire_str *reasons = NULL;
    offsets = (PyArrayObject *)PyArray_FROMANY(offsets_obj, NPY_INT64, 1, 1, NPY_ARRAY_CARRAY_RO);
    order = (PyArrayObject *)PyArray_FROMANY(order_obj, NPY_INTP, 1, 1, NPY_ARRAY_CARRAY_RO);
    scores = (PyArrayObject *)PyArray_FROMANY(scores_obj, NPY_FLOAT64, 1, 1, NPY_ARRAY_CARRAY_RO);
    if (offsets == NULL || order == NULL || scores == NULL) {
        goto done;
    }
    npy_intp n_off = PyArray_DIM(offsets, 0), count = PyArray_DIM(order, 0);
    npy_intp scored = count - unscored;
    if (n_off < 1 || unscored < 0 || scored < 0 || PyArray_DIM(scores, 0) != scored) {
        PyErr_SetString(PyExc_ValueError,
                        "encode_response: need len(offsets) >= 1, 0 <= unscored <= len(order) "
                        "and len(scores) == len(order) - unscored");
        goto done;
    }
    const int64_t *off = PyArray_DATA(offsets);
    if (off[n_off - 1] > (int64_t)ids.len) {
        PyErr_SetString(PyExc_ValueError, "encode_response: offsets run past the id buffer");
        goto done;
    }
    if (!(seq = PySequence_Fast(degraded, "encode_response: degraded must be a sequence"))) {
        goto done;
    }
    Py_ssize_t nd = PySequence_Fast_GET_SIZE(seq);
    reasons = PyMem_Malloc((size_t)(nd ? nd : 1) * sizeof(wire_str));
    if (reasons == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < nd; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyUnicode_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "encode_response: degraded reasons must be str");
            goto done;
        }
        if (utf8_view(item, &reasons[i]) != 0) {
            goto done;
        }
    }
    wire_response w = {
        .ids = ids.buf,
        .offsets = off,
        .n = (size_t)(n_off - 1),
        .order = PyArray_DATA(order),
        .count = (size_t)count,
        .scores = PyArray_DATA(scores),
        .scored = (size_t)scored,
        .degraded = reasons,
        .n_degraded = (size_t)nd,
        .extra = {extra.buf, extra.buf ? (size_t)extra.len : 0},
    };
    if (utf8_view(version, &w.model_version) != 0 || utf8_view(request_id, &w.request_id) != 0) {
        goto done;
    }
    for (npy_intp i = 0; i < n_off - 1; i++) {
        if (off[i] < 0 || off[i + 1] < off[i]) {
            PyErr_SetString(PyExc_ValueError, "encode_response: offsets must be non-decreasing");
            goto done;
        }
    }
    size_t size = wire_response_size(&w);
    if (size == (size_t)-1) {
        PyErr_SetString(PyExc_IndexError, "encode_response: an order entry is out of range");
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (out != NULL) {
        wire_encode_response(&w, (uint8_t *)PyBytes_AS_STRING(out));
    }
done:
    PyMem_Free(reasons);
    Py_XDECREF(seq);
    Py_XDECREF(offsets);
    Py_XDECREF(order);
    Py_XDECREF(scores);
    PyBuffer_Release(&ids);
    if (extra.obj != NULL) {
        PyBuffer_Release(&extra);
    }
    return out;
}

static PyMethodDef wire_methods[] = {
    {"decode_request", decode_request, METH_VARARGS,
     "decode_request(body, max_candidates, max_names) -> (request_id, user_id, id_data, "
     "offsets, context, top_k, strict, feature_names, values, rows); raises WireError"},
    {"encode_response", encode_response, METH_VARARGS,
     "encode_response(id_data, offsets, order, scores, unscored, model_version, degraded, "
     "request_id, extra=b'') -> bytes"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef wire_module = {
    PyModuleDef_HEAD_INIT, "_wire",
    "RankRequest decoder and RankResponse encoder (see ranking/server/README.md).", -1,
    wire_methods,
};

PyMODINIT_FUNC PyInit__wire(void) {
    import_array();
    const uint16_t probe = 1;
    if (*(const uint8_t *)&probe != 1) {
        PyErr_SetString(PyExc_ImportError, "ranking.server._wire needs a little-endian host");
        return NULL;
    }
    PyObject *m = PyModule_Create(&wire_module);
    if (m == NULL) {
        return NULL;
    }
    WireError = PyErr_NewExceptionWithDoc(
        "ranking.server._wire.WireError",
        "The request is malformed or does not fit the limits; str() is the caller-facing text.",
        PyExc_ValueError, NULL);
    if (WireError == NULL || PyModule_AddObjectRef(m, "WireError", WireError) != 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
