/*
 * ranking.flywheel._ring: the request path's copy of one logged request into the log ring.
 *
 *   put_served(mapping, head, timestamp, schema_id, matrix, rows, scores, unscored, shadow,
 *              id_data, id_offsets, request_id, user_id, degraded, shadow_version) -> int
 *       writes one served record (layout in ring.py) at the producer's `head` and publishes
 *       it (stores the new head in slot 0); returns the new head, or -1 when the ring has no
 *       room (nothing written). `mapping` is the whole shared mapping as a uint8 array (the
 *       64-byte header, then the records).
 *
 * Why native: the numpy version (a gather, a dozen slice assignments, struct packs, string
 * joins) cost ~40 us per 200 x 64 request on a worker whose caches were cold (a paced server),
 * half of it Python steps that are cheap only when warm. This is one call.
 *
 * What it writes: only the returned rows (response order), and a column whose value is the
 * same, bit for bit, in every returned row (the user's and the context's features) once, not
 * once per row: R200's 64 features have 32 such columns, so half the bytes. The bytes go out
 * through a small staging buffer with non-temporal stores on x86-64: the ring's lines were
 * last touched by the log process long ago, and ordinary stores would first read each line
 * (and evict the worker's own hot data for memory it never reads again). An sfence orders
 * them before the head store that publishes the record.
 *
 * Inputs come from the core (not from the wire), but every index and length is checked: rows
 * against the matrix, id offsets against the id buffer. The GIL is held (microseconds).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <numpy/arrayobject.h>

#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <emmintrin.h>
#define RING_NT 1
#endif

#define HEADER 64
#define KIND_PAD 0
#define KIND_SERVED 2
#define SERVED_HEAD 56 /* float64 + 12 x uint32 */
#define STAGE 4096
#define STACK_FEATURES 1024

/* ---- streaming writer: sequential bytes to a destination region -------------------------- */

typedef struct {
    uint8_t *dst; /* next destination byte (8-aligned at every flush) */
    size_t fill;  /* bytes staged */
    union {
        _Alignas(64) uint8_t b[STAGE];
        float f[STAGE / 4];
    } stage;
} writer_t;

static void stream_out(uint8_t *dst, const uint8_t *src, size_t len) {
#ifdef RING_NT
    if (((uintptr_t)dst & 15) != 0 && len >= 8) { /* 8-aligned: one plain store to 16 */
        memcpy(dst, src, 8);
        dst += 8, src += 8, len -= 8;
    }
    for (; len >= 64; dst += 64, src += 64, len -= 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)src);
        __m128i b = _mm_loadu_si128((const __m128i *)(src + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(src + 32));
        __m128i d = _mm_loadu_si128((const __m128i *)(src + 48));
        _mm_stream_si128((__m128i *)dst, a);
        _mm_stream_si128((__m128i *)(dst + 16), b);
        _mm_stream_si128((__m128i *)(dst + 32), c);
        _mm_stream_si128((__m128i *)(dst + 48), d);
    }
    for (; len >= 16; dst += 16, src += 16, len -= 16) {
        _mm_stream_si128((__m128i *)dst, _mm_loadu_si128((const __m128i *)src));
    }
#endif
    memcpy(dst, src, len);
}

static inline void w_flush(writer_t *w) {
    stream_out(w->dst, w->stage.b, w->fill);
    w->dst += w->fill;
    w->fill = 0;
}

static inline __attribute__((always_inline)) void w_put(writer_t *w, const void *src, size_t len) {
    const uint8_t *s = (const uint8_t *)src;
    while (len > 0) {
        size_t k = STAGE - w->fill;
        if (k > len) {
            k = len;
        }
        memcpy(w->stage.b + w->fill, s, k);
        w->fill += k, s += k, len -= k;
        if (w->fill == STAGE) {
            w_flush(w);
        }
    }
}

static inline void w_zeros(writer_t *w, size_t len) {
    static const uint8_t zeros[64] = {0};
    while (len > 0) {
        size_t k = len < sizeof zeros ? len : sizeof zeros;
        w_put(w, zeros, k);
        len -= k;
    }
}

static writer_t the_writer;

static inline size_t align8(size_t n) { return (n + 7) & ~(size_t)7; }

/* float64 values -> float32 (each exact: the column was classified so), converted straight
 * into the stage (its fill is a multiple of 4 here: everything before is 8-aligned). */
static inline void w_put_single(writer_t *w, const double *src, npy_intp len) {
    while (len > 0) {
        if (w->fill + 4 > STAGE) {
            w_flush(w);
        }
        npy_intp k = (npy_intp)((STAGE - w->fill) / 4);
        if (k > len) {
            k = len;
        }
        float *restrict dst = w->stage.f + w->fill / 4;
        for (npy_intp i = 0; i < k; i++) {
            dst[i] = (float)src[i];
        }
        w->fill += 4 * (size_t)k, src += k, len -= k;
    }
}

enum { COL_DOUBLE = 0, COL_CONST = 1, COL_SINGLE = 2 };

/* diff[j]: OR over the rows of (bits ^ the first row's bits), 0 when the column is constant;
 * wide[j]: nonzero when some value is not exactly a float32: its round trip through float32
 * changes its bits (more precision or range, a signalling NaN), or it is below FLT_MIN and
 * not 0 (a float32 subnormal: a reader that flushes subnormals would lose it). Vectorized
 * (one pass over the returned rows, ~6 us for 200 x 64 from L2). */
#if defined(RING_NT) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
static void classify(const double *m, const npy_intp *r, npy_intp n, npy_intp nf,
                     uint64_t *restrict diff, uint64_t *restrict wide) {
    const double *row0 = m + r[0] * nf;
    memset(diff, 0, (size_t)nf * sizeof *diff);
    memset(wide, 0, (size_t)nf * sizeof *wide);
    for (npy_intp k = 0; k < n; k++) {
        const double *restrict row = m + r[k] * nf;
        for (npy_intp j = 0; j < nf; j++) {
            double x = row[j], x0 = row0[j];
            double back = (double)(float)x;
            uint64_t xb, x0b, bb;
            memcpy(&xb, &x, 8);
            memcpy(&x0b, &x0, 8);
            memcpy(&bb, &back, 8);
            /* 0 < |x| < 2^-126 (0x3810...: FLT_MIN as a double); NaNs are above */
            uint64_t below = ((xb & 0x7FFFFFFFFFFFFFFFull) - 1) < 0x380FFFFFFFFFFFFFull;
            diff[j] |= xb ^ x0b;
            wide[j] |= (bb ^ xb) | below;
        }
    }
}

/* ---- argument helpers --------------------------------------------------------------------- */

static int is_array(PyObject *o, int type, int ndim) {
    return PyArray_Check(o) && PyArray_TYPE((PyArrayObject *)o) == type &&
           PyArray_NDIM((PyArrayObject *)o) == ndim &&
           PyArray_IS_C_CONTIGUOUS((PyArrayObject *)o);
}

/* A C-contiguous array of `type`: the object itself (a new reference) or a converted copy. */
static PyArrayObject *as_array(PyObject *o, int type, int ndim, const char *what) {
    if (is_array(o, type, ndim)) {
        Py_INCREF(o);
        return (PyArrayObject *)o;
    }
    PyArrayObject *a = (PyArrayObject *)PyArray_FROMANY(o, type, ndim, ndim, NPY_ARRAY_CARRAY_RO);
    if (a == NULL) {
        PyErr_Format(PyExc_TypeError, "put_served: %s must be a %d-d numeric array", what, ndim);
    }
    return a;
}

static const char *utf8(PyObject *o, Py_ssize_t *len, const char *what) {
    if (!PyUnicode_Check(o)) {
        PyErr_Format(PyExc_TypeError, "put_served: %s must be str", what);
        return NULL;
    }
    return PyUnicode_AsUTF8AndSize(o, len);
}

/* ---- put_served --------------------------------------------------------------------------- */

static PyObject *put_served(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 15) {
        PyErr_SetString(PyExc_TypeError, "put_served takes 15 arguments");
        return NULL;
    }
    PyObject *result = NULL;
    PyArrayObject *matrix = NULL, *rows = NULL, *scores = NULL, *shadow = NULL, *offsets = NULL;
    Py_buffer ids = {0};
    uint8_t stack_kind[STACK_FEATURES];
    uint64_t stack_diff[2 * STACK_FEATURES];
    npy_intp stack_runs[3 * STACK_FEATURES];
    uint8_t *kind = stack_kind;
    uint64_t *diff = stack_diff;
    npy_intp *runs = stack_runs;

    PyObject *mapping = args[0];
    if (!is_array(mapping, NPY_UINT8, 1) || !PyArray_ISWRITEABLE((PyArrayObject *)mapping) ||
        PyArray_DIM((PyArrayObject *)mapping, 0) < HEADER + 4096 ||
        (PyArray_DIM((PyArrayObject *)mapping, 0) - HEADER) % 8 != 0) {
        PyErr_SetString(PyExc_TypeError, "put_served: mapping must be the ring's uint8 array");
        return NULL;
    }
    uint8_t *base = (uint8_t *)PyArray_DATA((PyArrayObject *)mapping);
    int64_t cap = (int64_t)PyArray_DIM((PyArrayObject *)mapping, 0) - HEADER;
    long long head = PyLong_AsLongLong(args[1]);
    double timestamp = PyFloat_AsDouble(args[2]);
    long schema_id = PyLong_AsLong(args[3]);
    long unscored = PyLong_AsLong(args[7]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (head < 0 || schema_id < 0 || schema_id > UINT32_MAX || unscored < 0) {
        PyErr_SetString(PyExc_ValueError, "put_served: head, schema_id, unscored must be >= 0");
        return NULL;
    }
    matrix = as_array(args[4], NPY_FLOAT64, 2, "matrix");
    rows = matrix ? as_array(args[5], NPY_INTP, 1, "rows") : NULL;
    scores = rows ? as_array(args[6], NPY_FLOAT64, 1, "scores") : NULL;
    if (scores == NULL) {
        goto done;
    }
    if (args[8] != Py_None && (shadow = as_array(args[8], NPY_FLOAT64, 1, "shadow")) == NULL) {
        goto done;
    }
    if (PyObject_GetBuffer(args[9], &ids, PyBUF_SIMPLE) < 0) {
        goto done;
    }
    if ((offsets = as_array(args[10], NPY_INT64, 1, "id_offsets")) == NULL) {
        goto done;
    }
    Py_ssize_t rid_len, uid_len, sv_len;
    const char *rid = utf8(args[11], &rid_len, "request_id");
    const char *uid = rid ? utf8(args[12], &uid_len, "user_id") : NULL;
    const char *sv = uid ? utf8(args[14], &sv_len, "shadow_version") : NULL;
    if (sv == NULL) {
        goto done;
    }
    PyObject *degraded = args[13];
    if (!PyList_Check(degraded)) {
        PyErr_SetString(PyExc_TypeError, "put_served: degraded must be a list of str");
        goto done;
    }
    Py_ssize_t n_deg = PyList_GET_SIZE(degraded), deg_len = n_deg > 0 ? n_deg - 1 : 0;
    for (Py_ssize_t i = 0; i < n_deg; i++) {
        Py_ssize_t len;
        if (utf8(PyList_GET_ITEM(degraded, i), &len, "degraded[i]") == NULL) {
            goto done;
        }
        deg_len += len;
    }

    npy_intp n_cand = PyArray_DIM(matrix, 0), nf = PyArray_DIM(matrix, 1);
    npy_intp n = PyArray_DIM(rows, 0);
    npy_intp n_scored = PyArray_DIM(scores, 0);
    const double *m = (const double *)PyArray_DATA(matrix);
    const npy_intp *r = (const npy_intp *)PyArray_DATA(rows);
    const int64_t *off = (const int64_t *)PyArray_DATA(offsets);
    if (n < 1 || (npy_intp)unscored > n || n_scored < n - unscored ||
        (shadow != NULL && PyArray_DIM(shadow, 0) != n)) {
        PyErr_SetString(PyExc_ValueError,
                        "put_served: needs 1+ rows, unscored <= rows, a score per scored row "
                        "and a shadow score per row");
        goto done;
    }
    if (PyArray_DIM(offsets, 0) != n_cand + 1 || off[0] < 0 || off[n_cand] > ids.len) {
        PyErr_SetString(PyExc_ValueError,
                        "put_served: id_offsets must hold matrix rows + 1 offsets into id_data");
        goto done;
    }
    if (nf < 1 || nf > UINT32_MAX || n > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "put_served: matrix shape out of range");
        goto done;
    }
    size_t id_bytes = 0;
    for (npy_intp k = 0; k < n; k++) {
        npy_intp i = r[k];
        if (i < 0 || i >= n_cand || off[i] < 0 || off[i] > off[i + 1] || off[i + 1] > ids.len) {
            PyErr_SetString(PyExc_ValueError,
                            "put_served: a row is outside the matrix or its id is outside "
                            "id_data");
            goto done;
        }
        id_bytes += (size_t)(off[i + 1] - off[i]);
    }
    if (nf > STACK_FEATURES) {
        kind = PyMem_Malloc((size_t)nf);
        diff = PyMem_Malloc(2 * (size_t)nf * sizeof *diff);
        runs = PyMem_Malloc(3 * (size_t)nf * sizeof *runs);
        if (kind == NULL || diff == NULL || runs == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    uint64_t *wide = diff + nf;

    /* Each column, over the returned rows: the same bits in every row (written once), or
     * every value exactly a float32 (written as one: the stores hold float32, so item
     * features are), or neither (float64 per row). Written as runs of adjacent columns. */
    const double *row0 = m + r[0] * nf;
    classify(m, r, n, nf, diff, wide);
    npy_intp n_const = 0, n_double = 0, n_single = 0, n_runs = 0;
    for (npy_intp j = 0; j < nf; j++) {
        kind[j] = diff[j] == 0 ? COL_CONST : wide[j] == 0 ? COL_SINGLE : COL_DOUBLE;
        n_const += kind[j] == COL_CONST;
        n_double += kind[j] == COL_DOUBLE;
        n_single += kind[j] == COL_SINGLE;
        if (kind[j] != COL_CONST) {
            if (j == 0 || kind[j - 1] != kind[j]) {
                runs[3 * n_runs] = j;
                runs[3 * n_runs + 1] = 0;
                runs[3 * n_runs + 2] = kind[j];
                n_runs++;
            }
            runs[3 * n_runs - 2]++;
        }
    }

    size_t strings = id_bytes + (size_t)rid_len + (size_t)uid_len + (size_t)deg_len + (size_t)sv_len;
    size_t narrow = align8(4 * (size_t)n * (size_t)n_single);
    size_t body = SERVED_HEAD + align8((size_t)nf) + narrow +
                  8 * ((size_t)n_const + (size_t)n * (size_t)n_double + (size_t)n +
                       (shadow ? (size_t)n : 0) + (size_t)n + 1) +
                  strings;
    size_t size = align8(body + 16);

    /* Reserve: the record never wraps; the end is padded when it does not fit before it. */
    volatile int64_t *slots = (volatile int64_t *)base;
    int64_t tail = slots[1];
    int64_t free_bytes = cap - ((int64_t)head - tail);
    int64_t pos = (int64_t)head % cap;
    int64_t pad = pos + (int64_t)size > cap ? cap - pos : 0;
    if (size > (size_t)cap || pad + (int64_t)size > free_bytes) {
        result = PyLong_FromLong(-1);
        goto done;
    }
    uint8_t *ring = base + HEADER;
    if (pad > 0) {
        if (pad >= 16) {
            int64_t prefix[2] = {pad, KIND_PAD};
            memcpy(ring + pos, prefix, 16);
        }
        head += pad;
        pos = 0;
    }

    /* One writer for the process: the GIL is held from here to the end. */
    writer_t *wa = &the_writer;
    wa->dst = ring + pos;
    wa->fill = 0;

    int64_t prefix[2] = {(int64_t)size, KIND_SERVED};
    w_put(wa, prefix, 16);
    uint32_t fields[12] = {
        (uint32_t)n,       (uint32_t)nf,      (uint32_t)schema_id, (uint32_t)unscored,
        (uint32_t)n_const, (uint32_t)id_bytes, shadow ? 1u : 0u,   (uint32_t)rid_len,
        (uint32_t)uid_len, (uint32_t)deg_len, (uint32_t)sv_len,   (uint32_t)n_single,
    };
    w_put(wa, &timestamp, 8);
    w_put(wa, fields, sizeof fields);
    w_put(wa, kind, (size_t)nf);
    w_zeros(wa, align8((size_t)nf) - (size_t)nf);
    for (npy_intp j = 0; j < nf; j++) {
        if (kind[j] == COL_CONST) {
            w_put(wa, row0 + j, 8);
        }
    }
    for (int pass = COL_DOUBLE; n_double + n_single > 0 && pass <= COL_SINGLE; pass++) {
        for (npy_intp k = 0; k < n; k++) {
            const double *row = m + r[k] * nf;
            for (npy_intp u = 0; u < n_runs; u++) {
                if (runs[3 * u + 2] != pass) {
                    continue;
                }
                if (pass == COL_DOUBLE) {
                    w_put(wa, row + runs[3 * u], (size_t)runs[3 * u + 1] * 8);
                } else {
                    w_put_single(wa, row + runs[3 * u], runs[3 * u + 1]);
                }
            }
        }
    }
    w_zeros(wa, narrow - 4 * (size_t)n * (size_t)n_single);
    w_put(wa, PyArray_DATA(scores), (size_t)(n - unscored) * 8);
    w_zeros(wa, (size_t)unscored * 8);
    if (shadow != NULL) {
        w_put(wa, PyArray_DATA(shadow), (size_t)n * 8);
    }
    int64_t at = 0;
    w_put(wa, &at, 8);
    for (npy_intp k = 0; k < n; k++) {
        at += off[r[k] + 1] - off[r[k]];
        w_put(wa, &at, 8);
    }
    const uint8_t *id_data = (const uint8_t *)ids.buf;
    for (npy_intp k = 0; k < n; k++) {
        w_put(wa, id_data + off[r[k]], (size_t)(off[r[k] + 1] - off[r[k]]));
    }
    w_put(wa, rid, (size_t)rid_len);
    w_put(wa, uid, (size_t)uid_len);
    for (Py_ssize_t i = 0; i < n_deg; i++) {
        Py_ssize_t len;
        const char *s = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(degraded, i), &len);
        if (i > 0) {
            w_put(wa, "\n", 1);
        }
        w_put(wa, s, (size_t)len);
    }
    w_put(wa, sv, (size_t)sv_len);
    w_zeros(wa, size - 16 - body);
    w_flush(wa);
#ifdef RING_NT
    _mm_sfence(); /* the streamed record before the head that publishes it */
#endif
    head += (long long)size;
    slots[0] = head;
    result = PyLong_FromLongLong(head);
done:
    if (kind != stack_kind) {
        PyMem_Free(kind);
    }
    if (diff != stack_diff) {
        PyMem_Free(diff);
    }
    if (runs != stack_runs) {
        PyMem_Free(runs);
    }
    if (ids.obj != NULL) {
        PyBuffer_Release(&ids);
    }
    Py_XDECREF(matrix);
    Py_XDECREF(rows);
    Py_XDECREF(scores);
    Py_XDECREF(shadow);
    Py_XDECREF(offsets);
    return result;
}

static PyMethodDef ring_methods[] = {
    {"put_served", (PyCFunction)(void (*)(void))put_served, METH_FASTCALL,
     "put_served(mapping, head, timestamp, schema_id, matrix, rows, scores, unscored, shadow, "
     "id_data, id_offsets, request_id, user_id, degraded, shadow_version) -> new head or -1"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef ring_module = {
    PyModuleDef_HEAD_INIT, "_ring", "The log ring's request-path copy (ranking/flywheel/ring.py).",
    -1, ring_methods,
};

PyMODINIT_FUNC PyInit__ring(void) {
    import_array();
    return PyModule_Create(&ring_module);
}
