/*
 * ranking.flywheel._ring: the served-feature log's copy of logged requests into its ring.
 *
 *   Copier(mapping)   the producer side of one log ring (`mapping`: the whole shared mapping
 *                     as a uint8 array, the 64-byte header then the records; layout in
 *                     ring.py). It owns the ring's head.
 *   .put_served(timestamp, schema_id, schema_json, matrix, rows, scores, unscored, shadow,
 *               id_data, id_offsets, request_id, user_id, degraded, shadow_version) -> bool
 *                     checks the request (every index and length) and queues it, keeping
 *                     references to its arrays; True when queued, False when the queue
 *                     (256) was full and the caller copied it itself (a burst).
 *   .sync(timeout_s) -> bool   wait (GIL released) until everything queued is in the ring
 *   .reap()           drop the references of copied requests (also done by put_served)
 *   .close()          copy what is queued, stop the thread
 *   .head, .written, .refused (the ring was full), .pending, .cpu_s (the thread's CPU)
 *
 * Why a thread: the copy reads the ~100 KB matrix (often in the scoring thread's core's
 * cache) and writes into memory the log process read long ago; on the running R200 server
 * that cost 40-60 us of the event loop per request even as one native call writing a quarter
 * of the bytes, above the 30 us. The request path now pays the checks and a queue
 * slot; a native thread without the GIL does the copy, woken by nothing (the request path
 * makes no system call, unless the queue is half full): it polls every 2 ms while there is
 * work, backing off to 32 ms when idle; a half-full queue and `sync` wake it. It runs as
 * SCHED_IDLE (Linux): woken, it never preempts the event loop; it uses CPU nobody else wants. The arrays are the core's, not touched after the hook (the seam
 * in ranking/flywheel/README.md); the degraded reasons are copied at once (the core may add
 * one after the hook). A full queue (a burst the thread has not caught up with) is not a
 * drop: the caller copies that request itself, as it did before the thread (counted: `inline`);
 * a full ring drops and counts (`refused`): a request never waits for the log process.
 *
 * What it writes: only the returned rows (response order); a column whose value is the same,
 * bit for bit, in every returned row (the user's and the context's features) once; a column
 * whose every value is exactly a float32 (the stores hold float32) as float32. R200's
 * 200 x 64 request: ~26 KB of features instead of 100 KB. Non-temporal stores on x86-64 (an
 * sfence orders them before the head store that publishes the record).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <numpy/arrayobject.h>

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <emmintrin.h>
#define RING_NT 1
#endif

#define HEADER 64
#define KIND_PAD 0
#define KIND_SCHEMA 1
#define KIND_SERVED 2
#define SERVED_HEAD 56 /* float64 + 12 x uint32 */
#define STAGE 4096
#define STACK_FEATURES 1024
#define QUEUE 256
#define SCHEMA_BITS 65536

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
 * (one pass over the returned rows, ~6 us for 200 x 64 from L2). With `in_order`, row k is
 * matrix row k (the returned rows are all of them: the result does not depend on order). */
#if defined(RING_NT) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
static void classify(const double *m, const npy_intp *r, npy_intp n, npy_intp nf,
                     int in_order, uint64_t *restrict diff, uint64_t *restrict wide) {
    const double *row0 = m + r[0] * nf;
    memset(diff, 0, (size_t)nf * sizeof *diff);
    memset(wide, 0, (size_t)nf * sizeof *wide);
    for (npy_intp k = 0; k < n; k++) {
        const double *restrict row = m + (in_order ? k : r[k]) * nf;
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

/* ---- a queued request ----------------------------------------------------------------------- */

typedef struct {
    /* References (released by the producer, under the GIL, once copied). */
    PyArrayObject *matrix, *rows, *scores, *shadow, *offsets;
    Py_buffer ids;
    PyObject *strs[3]; /* request_id, user_id, shadow_version: their UTF-8 is read */
    PyObject *schema;  /* the schema record's JSON (bytes) */
    char *degraded;    /* a copy, "\n"-joined */
    /* What the thread reads (plain data; no Python call). */
    double timestamp;
    uint32_t schema_id, unscored;
    const double *m;
    const npy_intp *r;
    const double *sc, *sh;
    const int64_t *off;
    const uint8_t *id_data;
    npy_intp n, n_cand, nf;
    size_t id_bytes, deg_len, schema_len;
    const char *rid, *uid, *sv, *schema_text;
    size_t rid_len, uid_len, sv_len;
} job_t;

static void job_release(job_t *j) {
    Py_CLEAR(j->matrix);
    Py_CLEAR(j->rows);
    Py_CLEAR(j->scores);
    Py_CLEAR(j->shadow);
    Py_CLEAR(j->offsets);
    if (j->ids.obj != NULL) {
        PyBuffer_Release(&j->ids);
    }
    for (int i = 0; i < 3; i++) {
        Py_CLEAR(j->strs[i]);
    }
    Py_CLEAR(j->schema);
    free(j->degraded);
    j->degraded = NULL;
}

/* ---- the copier ------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD PyObject *mapping;
    uint8_t *base;
    int64_t cap;
    writer_t *writer; /* the thread's (64-aligned) */
    job_t *jobs;      /* QUEUE slots */
    _Atomic uint64_t submitted, done;
    uint64_t reaped;
    _Atomic int64_t head;
    _Atomic uint64_t written, refused, cpu_ns, inline_ns, inline_count;
    _Atomic int stop;
    int wake, started, closed;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_mutex_t wlock; /* held while a record is written (the thread, or a full queue's caller) */
    uint8_t announced[SCHEMA_BITS / 8]; /* the thread's: schema ids written into the ring */
} Copier;

/* Reserve `size` bytes at the head (padding the end when it does not fit before it): the
 * record's position, or -1 when the ring has no room. */
static int64_t reserve(Copier *c, int64_t size) {
    volatile int64_t *slots = (volatile int64_t *)c->base;
    int64_t head = atomic_load_explicit(&c->head, memory_order_relaxed);
    int64_t free_bytes = c->cap - (head - slots[1]);
    int64_t pos = head % c->cap;
    int64_t pad = pos + size > c->cap ? c->cap - pos : 0;
    if (size > c->cap || pad + size > free_bytes) {
        return -1;
    }
    if (pad > 0) {
        if (pad >= 16) {
            int64_t prefix[2] = {pad, KIND_PAD};
            memcpy(c->base + HEADER + pos, prefix, 16);
        }
        atomic_store_explicit(&c->head, head + pad, memory_order_relaxed);
        pos = 0;
    }
    return pos;
}

static void publish(Copier *c, int64_t size) {
#ifdef RING_NT
    _mm_sfence(); /* the streamed record before the head that publishes it */
#endif
    int64_t head = atomic_load_explicit(&c->head, memory_order_relaxed) + size;
    atomic_store_explicit(&c->head, head, memory_order_relaxed);
    ((volatile int64_t *)c->base)[0] = head; /* an aligned store; x86-64 keeps store order */
}

static int write_schema(Copier *c, const job_t *j) {
    int64_t size = (int64_t)align8(16 + 8 + j->schema_len);
    int64_t pos = reserve(c, size);
    if (pos < 0) {
        return 0;
    }
    uint8_t *at = c->base + HEADER + pos;
    int64_t prefix[2] = {size, KIND_SCHEMA};
    uint64_t sid = j->schema_id;
    memcpy(at, prefix, 16);
    memcpy(at + 16, &sid, 8);
    memcpy(at + 24, j->schema_text, j->schema_len);
    memset(at + 24 + j->schema_len, 0, (size_t)size - 24 - j->schema_len);
    publish(c, size);
    return 1;
}

/* One served record (layout in ring.py); 0 when the ring has no room (or memory ran out). */
static int write_served(Copier *c, const job_t *j) {
    if (j->schema_id >= SCHEMA_BITS || !(c->announced[j->schema_id / 8] & (1u << (j->schema_id % 8)))) {
        if (!write_schema(c, j)) {
            return 0;
        }
        if (j->schema_id < SCHEMA_BITS) {
            c->announced[j->schema_id / 8] |= (uint8_t)(1u << (j->schema_id % 8));
        }
    }
    npy_intp n = j->n, nf = j->nf;
    const double *m = j->m;
    const npy_intp *r = j->r;
    uint8_t stack_kind[STACK_FEATURES];
    uint64_t stack_diff[2 * STACK_FEATURES];
    npy_intp stack_runs[3 * STACK_FEATURES];
    uint8_t *kind = stack_kind;
    uint64_t *diff = stack_diff;
    npy_intp *runs = stack_runs;
    int ok = 0;
    if (nf > STACK_FEATURES) {
        kind = malloc((size_t)nf);
        diff = malloc(2 * (size_t)nf * sizeof *diff);
        runs = malloc(3 * (size_t)nf * sizeof *runs);
        if (kind == NULL || diff == NULL || runs == NULL) {
            goto done;
        }
    }
    uint64_t *wide = diff + nf;

    /* Each column, over the returned rows: the same bits in every row (written once), or
     * every value exactly a float32 (written as one), or neither (float64 per row). Written
     * as runs of adjacent columns. Every candidate returned (top_k 0): classified in memory
     * order, which the hardware prefetches. */
    const double *row0 = m + r[0] * nf;
    classify(m, r, n, nf, n == j->n_cand, diff, wide);
    npy_intp n_const = 0, n_double = 0, n_single = 0, n_runs = 0;
    for (npy_intp col = 0; col < nf; col++) {
        kind[col] = diff[col] == 0 ? COL_CONST : wide[col] == 0 ? COL_SINGLE : COL_DOUBLE;
        n_const += kind[col] == COL_CONST;
        n_double += kind[col] == COL_DOUBLE;
        n_single += kind[col] == COL_SINGLE;
        if (kind[col] != COL_CONST) {
            if (col == 0 || kind[col - 1] != kind[col]) {
                runs[3 * n_runs] = col;
                runs[3 * n_runs + 1] = 0;
                runs[3 * n_runs + 2] = kind[col];
                n_runs++;
            }
            runs[3 * n_runs - 2]++;
        }
    }

    size_t strings = j->id_bytes + j->rid_len + j->uid_len + j->deg_len + j->sv_len;
    size_t narrow = align8(4 * (size_t)n * (size_t)n_single);
    size_t body = SERVED_HEAD + align8((size_t)nf) + narrow +
                  8 * ((size_t)n_const + (size_t)n * (size_t)n_double + (size_t)n +
                       (j->sh ? (size_t)n : 0) + (size_t)n + 1) +
                  strings;
    size_t size = align8(body + 16);
    int64_t pos = reserve(c, (int64_t)size);
    if (pos < 0) {
        goto done;
    }
    writer_t *w = c->writer;
    w->dst = c->base + HEADER + pos;
    w->fill = 0;
    int64_t prefix[2] = {(int64_t)size, KIND_SERVED};
    w_put(w, prefix, 16);
    uint32_t fields[12] = {
        (uint32_t)n,          (uint32_t)nf,         j->schema_id,          j->unscored,
        (uint32_t)n_const,    (uint32_t)j->id_bytes, j->sh ? 1u : 0u,      (uint32_t)j->rid_len,
        (uint32_t)j->uid_len, (uint32_t)j->deg_len, (uint32_t)j->sv_len,  (uint32_t)n_single,
    };
    w_put(w, &j->timestamp, 8);
    w_put(w, fields, sizeof fields);
    w_put(w, kind, (size_t)nf);
    w_zeros(w, align8((size_t)nf) - (size_t)nf);
    for (npy_intp col = 0; col < nf; col++) {
        if (kind[col] == COL_CONST) {
            w_put(w, row0 + col, 8);
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
                    w_put(w, row + runs[3 * u], (size_t)runs[3 * u + 1] * 8);
                } else {
                    w_put_single(w, row + runs[3 * u], runs[3 * u + 1]);
                }
            }
        }
    }
    w_zeros(w, narrow - 4 * (size_t)n * (size_t)n_single);
    w_put(w, j->sc, (size_t)(n - j->unscored) * 8);
    w_zeros(w, (size_t)j->unscored * 8);
    if (j->sh != NULL) {
        w_put(w, j->sh, (size_t)n * 8);
    }
    int64_t at = 0;
    w_put(w, &at, 8);
    for (npy_intp k = 0; k < n; k++) {
        at += j->off[r[k] + 1] - j->off[r[k]];
        w_put(w, &at, 8);
    }
    for (npy_intp k = 0; k < n; k++) {
        w_put(w, j->id_data + j->off[r[k]], (size_t)(j->off[r[k] + 1] - j->off[r[k]]));
    }
    w_put(w, j->rid, j->rid_len);
    w_put(w, j->uid, j->uid_len);
    w_put(w, j->degraded, j->deg_len);
    w_put(w, j->sv, j->sv_len);
    w_zeros(w, size - 16 - body);
    w_flush(w);
    publish(c, (int64_t)size);
    ok = 1;
done:
    if (kind != stack_kind) {
        free(kind);
        free(diff);
        free(runs);
    }
    return ok;
}

static void write_counted(Copier *c, const job_t *j) {
    pthread_mutex_lock(&c->wlock);
    int ok = write_served(c, j);
    pthread_mutex_unlock(&c->wlock);
    atomic_fetch_add_explicit(ok ? &c->written : &c->refused, 1, memory_order_relaxed);
}

static uint64_t thread_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void *copier_main(void *arg) {
    Copier *c = arg;
#ifdef SCHED_IDLE
    /* Background work: never preempt the event loop when woken; runs on idle CPU (a starved
     * thread fills its queue, and the caller then copies: `inline`). */
    struct sched_param idle = {0};
    pthread_setschedparam(pthread_self(), SCHED_IDLE, &idle);
#endif
    long idle_ms = 2;
    for (;;) {
        uint64_t d = atomic_load_explicit(&c->done, memory_order_relaxed);
        uint64_t s = atomic_load_explicit(&c->submitted, memory_order_acquire);
        if (d < s) {
            uint64_t t0 = thread_ns();
            write_counted(c, &c->jobs[d % QUEUE]);
            atomic_fetch_add_explicit(&c->cpu_ns, thread_ns() - t0, memory_order_relaxed);
            atomic_store_explicit(&c->done, d + 1, memory_order_release);
            idle_ms = 2;
            if (d + 1 == s) { /* caught up: tell a waiting sync */
                pthread_mutex_lock(&c->lock);
                pthread_cond_broadcast(&c->cond);
                pthread_mutex_unlock(&c->lock);
            }
            continue;
        }
        if (atomic_load(&c->stop)) {
            break;
        }
        pthread_mutex_lock(&c->lock);
        if (!c->wake && !atomic_load(&c->stop) &&
            atomic_load(&c->submitted) == atomic_load(&c->done)) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += idle_ms * 1000000L;
            until.tv_sec += until.tv_nsec / 1000000000L;
            until.tv_nsec %= 1000000000L;
            pthread_cond_timedwait(&c->cond, &c->lock, &until);
            if (idle_ms < 32) {
                idle_ms *= 2;
            }
        }
        c->wake = 0;
        pthread_mutex_unlock(&c->lock);
    }
    return NULL;
}

static void reap(Copier *c) {
    uint64_t d = atomic_load_explicit(&c->done, memory_order_acquire);
    while (c->reaped < d) {
        job_release(&c->jobs[c->reaped % QUEUE]);
        c->reaped++;
    }
}

static void stop_thread(Copier *c) {
    if (!c->started) {
        return;
    }
    pthread_mutex_lock(&c->lock);
    atomic_store(&c->stop, 1);
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
    Py_BEGIN_ALLOW_THREADS pthread_join(c->thread, NULL);
    Py_END_ALLOW_THREADS c->started = 0;
}

static int Copier_init(Copier *c, PyObject *args, PyObject *kwds) {
    PyObject *mapping;
    if (kwds != NULL && PyDict_Size(kwds) > 0) {
        PyErr_SetString(PyExc_TypeError, "Copier(mapping) takes no keywords");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "O", &mapping)) {
        return -1;
    }
    if (c->mapping != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Copier already initialized");
        return -1;
    }
    if (!is_array(mapping, NPY_UINT8, 1) || !PyArray_ISWRITEABLE((PyArrayObject *)mapping) ||
        PyArray_DIM((PyArrayObject *)mapping, 0) < HEADER + 4096 ||
        (PyArray_DIM((PyArrayObject *)mapping, 0) - HEADER) % 8 != 0) {
        PyErr_SetString(PyExc_TypeError, "Copier: mapping must be the ring's uint8 array");
        return -1;
    }
    c->writer = aligned_alloc(64, (sizeof(writer_t) + 63) & ~(size_t)63);
    c->jobs = calloc(QUEUE, sizeof(job_t));
    if (c->writer == NULL || c->jobs == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_INCREF(mapping);
    c->mapping = mapping;
    c->base = (uint8_t *)PyArray_DATA((PyArrayObject *)mapping);
    c->cap = (int64_t)PyArray_DIM((PyArrayObject *)mapping, 0) - HEADER;
    atomic_store(&c->head, ((volatile int64_t *)c->base)[0]);
    pthread_mutex_init(&c->lock, NULL);
    pthread_mutex_init(&c->wlock, NULL);
    pthread_cond_init(&c->cond, NULL);
    return 0;
}

static void Copier_dealloc(Copier *c) {
    stop_thread(c);
    if (c->jobs != NULL) {
        reap(c);
        free(c->jobs);
    }
    free(c->writer);
    if (c->mapping != NULL) {
        pthread_mutex_destroy(&c->lock);
        pthread_mutex_destroy(&c->wlock);
        pthread_cond_destroy(&c->cond);
    }
    Py_XDECREF(c->mapping);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyObject *Copier_put_served(Copier *c, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 14) {
        PyErr_SetString(PyExc_TypeError, "put_served takes 14 arguments");
        return NULL;
    }
    if (c->closed || c->jobs == NULL) {
        PyErr_SetString(PyExc_ValueError, "put_served: the copier is closed");
        return NULL;
    }
    reap(c);
    uint64_t s = atomic_load_explicit(&c->submitted, memory_order_relaxed);
    /* A full queue (a burst the thread has not caught up with): copied here and now. */
    job_t here;
    int queued = s - c->reaped < QUEUE;
    job_t *j = queued ? &c->jobs[s % QUEUE] : &here;
    memset(j, 0, sizeof *j);
    j->timestamp = PyFloat_AsDouble(args[0]);
    long sid = PyLong_AsLong(args[1]);
    long unscored = PyLong_AsLong(args[6]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (sid < 0 || sid > UINT32_MAX || unscored < 0) {
        PyErr_SetString(PyExc_ValueError, "put_served: schema_id and unscored must be >= 0");
        return NULL;
    }
    j->schema_id = (uint32_t)sid;
    if (!PyBytes_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "put_served: schema_json must be bytes");
        return NULL;
    }
    Py_INCREF(args[2]);
    j->schema = args[2];
    j->schema_text = PyBytes_AS_STRING(args[2]);
    j->schema_len = (size_t)PyBytes_GET_SIZE(args[2]);
    if ((j->matrix = as_array(args[3], NPY_FLOAT64, 2, "matrix")) == NULL ||
        (j->rows = as_array(args[4], NPY_INTP, 1, "rows")) == NULL ||
        (j->scores = as_array(args[5], NPY_FLOAT64, 1, "scores")) == NULL) {
        goto fail;
    }
    if (args[7] != Py_None && (j->shadow = as_array(args[7], NPY_FLOAT64, 1, "shadow")) == NULL) {
        goto fail;
    }
    if (PyObject_GetBuffer(args[8], &j->ids, PyBUF_SIMPLE) < 0) {
        goto fail;
    }
    if ((j->offsets = as_array(args[9], NPY_INT64, 1, "id_offsets")) == NULL) {
        goto fail;
    }
    Py_ssize_t len;
    const int str_args[3] = {10, 11, 13};
    const char *names[3] = {"request_id", "user_id", "shadow_version"};
    const char **ptrs[3] = {&j->rid, &j->uid, &j->sv};
    size_t *lens[3] = {&j->rid_len, &j->uid_len, &j->sv_len};
    for (int i = 0; i < 3; i++) {
        if ((*ptrs[i] = utf8(args[str_args[i]], &len, names[i])) == NULL) {
            goto fail;
        }
        *lens[i] = (size_t)len;
        Py_INCREF(args[str_args[i]]);
        j->strs[i] = args[str_args[i]];
    }
    PyObject *degraded = args[12];
    if (!PyList_Check(degraded)) {
        PyErr_SetString(PyExc_TypeError, "put_served: degraded must be a list of str");
        goto fail;
    }
    Py_ssize_t n_deg = PyList_GET_SIZE(degraded);
    size_t deg_len = n_deg > 0 ? (size_t)n_deg - 1 : 0;
    for (Py_ssize_t i = 0; i < n_deg; i++) {
        if (utf8(PyList_GET_ITEM(degraded, i), &len, "degraded[i]") == NULL) {
            goto fail;
        }
        deg_len += (size_t)len;
    }
    j->degraded = malloc(deg_len + 1);
    if (j->degraded == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    j->deg_len = 0;
    for (Py_ssize_t i = 0; i < n_deg; i++) {
        const char *text = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(degraded, i), &len);
        if (i > 0) {
            j->degraded[j->deg_len++] = '\n';
        }
        memcpy(j->degraded + j->deg_len, text, (size_t)len);
        j->deg_len += (size_t)len;
    }

    j->n_cand = PyArray_DIM(j->matrix, 0);
    j->nf = PyArray_DIM(j->matrix, 1);
    j->n = PyArray_DIM(j->rows, 0);
    j->m = (const double *)PyArray_DATA(j->matrix);
    j->r = (const npy_intp *)PyArray_DATA(j->rows);
    j->sc = (const double *)PyArray_DATA(j->scores);
    j->sh = j->shadow ? (const double *)PyArray_DATA(j->shadow) : NULL;
    j->off = (const int64_t *)PyArray_DATA(j->offsets);
    j->id_data = (const uint8_t *)j->ids.buf;
    j->unscored = (uint32_t)unscored;
    npy_intp n = j->n, n_cand = j->n_cand;
    if (n < 1 || (npy_intp)unscored > n || PyArray_DIM(j->scores, 0) < n - unscored ||
        (j->shadow != NULL && PyArray_DIM(j->shadow, 0) != n)) {
        PyErr_SetString(PyExc_ValueError,
                        "put_served: needs 1+ rows, unscored <= rows, a score per scored row "
                        "and a shadow score per row");
        goto fail;
    }
    if (PyArray_DIM(j->offsets, 0) != n_cand + 1 || j->off[0] < 0 ||
        j->off[n_cand] > j->ids.len) {
        PyErr_SetString(PyExc_ValueError,
                        "put_served: id_offsets must hold matrix rows + 1 offsets into id_data");
        goto fail;
    }
    if (j->nf < 1 || j->nf > UINT32_MAX || n > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "put_served: matrix shape out of range");
        goto fail;
    }
    for (npy_intp k = 0; k < n; k++) {
        npy_intp i = j->r[k];
        if (i < 0 || i >= n_cand || j->off[i] < 0 || j->off[i] > j->off[i + 1] ||
            j->off[i + 1] > j->ids.len) {
            PyErr_SetString(PyExc_ValueError,
                            "put_served: a row is outside the matrix or its id is outside "
                            "id_data");
            goto fail;
        }
        j->id_bytes += (size_t)(j->off[i + 1] - j->off[i]);
    }
    if (j->id_bytes + j->rid_len + j->uid_len + j->deg_len + j->sv_len > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "put_served: strings too long");
        goto fail;
    }
    if (!queued) {
        uint64_t t0 = thread_ns();
        write_counted(c, j);
        atomic_fetch_add_explicit(&c->inline_ns, thread_ns() - t0, memory_order_relaxed);
        atomic_fetch_add_explicit(&c->inline_count, 1, memory_order_relaxed);
        job_release(j);
        Py_RETURN_FALSE;
    }
    if (!c->started) {
        if (pthread_create(&c->thread, NULL, copier_main, c) != 0) {
            PyErr_SetString(PyExc_OSError, "put_served: cannot start the copy thread");
            goto fail;
        }
        c->started = 1;
    }
    atomic_store_explicit(&c->submitted, s + 1, memory_order_release);
    if (s + 1 - atomic_load_explicit(&c->done, memory_order_acquire) == QUEUE / 2) {
        /* A burst while the thread sleeps: wake it (the only system call on this path). */
        pthread_mutex_lock(&c->lock);
        c->wake = 1;
        pthread_cond_broadcast(&c->cond);
        pthread_mutex_unlock(&c->lock);
    }
    Py_RETURN_TRUE;
fail:
    job_release(j);
    return NULL;
}

static PyObject *Copier_sync(Copier *c, PyObject *arg) {
    double timeout = PyFloat_AsDouble(arg);
    if (timeout == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    uint64_t target = atomic_load(&c->submitted);
    int ok = 1;
    if (c->started && atomic_load(&c->done) < target) {
        Py_BEGIN_ALLOW_THREADS struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        long long ns = (long long)(timeout * 1e9);
        until.tv_sec += (time_t)(ns / 1000000000LL);
        until.tv_nsec += (long)(ns % 1000000000LL);
        until.tv_sec += until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        pthread_mutex_lock(&c->lock);
        c->wake = 1;
        pthread_cond_broadcast(&c->cond);
        while (atomic_load(&c->done) < target) {
            if (pthread_cond_timedwait(&c->cond, &c->lock, &until) == ETIMEDOUT) {
                break;
            }
        }
        ok = atomic_load(&c->done) >= target;
        pthread_mutex_unlock(&c->lock);
        Py_END_ALLOW_THREADS
    }
    reap(c);
    return PyBool_FromLong(ok);
}

static PyObject *Copier_reap(Copier *c, PyObject *unused) {
    (void)unused;
    if (c->jobs != NULL) {
        reap(c);
    }
    Py_RETURN_NONE;
}

static PyObject *Copier_close(Copier *c, PyObject *unused) {
    (void)unused;
    stop_thread(c); /* the thread copies everything queued before it stops */
    if (c->jobs != NULL) {
        reap(c);
    }
    c->closed = 1;
    Py_RETURN_NONE;
}

static PyObject *Copier_get(Copier *c, void *what) {
    switch ((intptr_t)what) {
    case 0:
        return PyLong_FromLongLong((long long)atomic_load(&c->head));
    case 1:
        return PyLong_FromUnsignedLongLong(atomic_load(&c->written));
    case 2:
        return PyLong_FromUnsignedLongLong(atomic_load(&c->refused));
    case 3:
        return PyLong_FromUnsignedLongLong(atomic_load(&c->submitted) - atomic_load(&c->done));
    case 5:
        return PyLong_FromUnsignedLongLong(atomic_load(&c->inline_count));
    case 6:
        return PyFloat_FromDouble((double)atomic_load(&c->inline_ns) / 1e9);
    default:
        return PyFloat_FromDouble((double)atomic_load(&c->cpu_ns) / 1e9);
    }
}

static PyGetSetDef Copier_getset[] = {
    {"head", (getter)Copier_get, NULL, "bytes ever written into the ring", (void *)0},
    {"written", (getter)Copier_get, NULL, "served records written", (void *)1},
    {"refused", (getter)Copier_get, NULL, "served records dropped: the ring was full", (void *)2},
    {"pending", (getter)Copier_get, NULL, "requests queued, not yet copied", (void *)3},
    {"cpu_s", (getter)Copier_get, NULL, "the copy thread's CPU seconds", (void *)4},
    {"inline", (getter)Copier_get, NULL, "requests copied by the caller: queue full", (void *)5},
    {"inline_cpu_s", (getter)Copier_get, NULL, "the caller's CPU seconds for those", (void *)6},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Copier_methods[] = {
    {"put_served", (PyCFunction)(void (*)(void))Copier_put_served, METH_FASTCALL,
     "put_served(timestamp, schema_id, schema_json, matrix, rows, scores, unscored, shadow, "
     "id_data, id_offsets, request_id, user_id, degraded, shadow_version) -> queued"},
    {"sync", (PyCFunction)Copier_sync, METH_O, "sync(timeout_s) -> everything queued is copied"},
    {"reap", (PyCFunction)Copier_reap, METH_NOARGS, "release the copied requests' references"},
    {"close", (PyCFunction)Copier_close, METH_NOARGS, "copy what is queued, stop the thread"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CopierType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ranking.flywheel._ring.Copier",
    .tp_basicsize = sizeof(Copier),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The producer side of a log ring: requests queued, copied by a native thread.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Copier_init,
    .tp_dealloc = (destructor)Copier_dealloc,
    .tp_methods = Copier_methods,
    .tp_getset = Copier_getset,
};

static struct PyModuleDef ring_module = {
    PyModuleDef_HEAD_INIT, "_ring", "The log ring's copy (ranking/flywheel/ring.py).", -1, NULL,
};

PyMODINIT_FUNC PyInit__ring(void) {
    import_array();
    if (PyType_Ready(&CopierType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&ring_module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&CopierType);
    if (PyModule_AddObject(m, "Copier", (PyObject *)&CopierType) < 0) {
        Py_DECREF(&CopierType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
