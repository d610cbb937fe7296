/*
 * The feature cache's index and rows in native code (read ranking/features/README.md first).
 *
 * One `Index` per entity type holds `capacity` slots. A slot is one cached entity: its id bytes
 * (a private copy, inline up to 40 bytes), the id's 64-bit hash, an expiry (monotonic seconds),
 * a negative flag (the store said "unknown") and a CLOCK reference bit, in one 64-byte cache
 * line; its float32 row of `width` values is in a separate array. An open-addressing hash table
 * (linear probing, power-of-two size >= 2 x capacity, so the load stays <= 0.5) maps id bytes to
 * slots; each cell keeps 32 bits of the hash beside the slot, so probes rarely touch a slot that
 * is not the one sought. Removal uses backward-shift deletion: no tombstones, probe sequences
 * never degrade. Lookups run in batches that prefetch every id's cell, then slot and row, so a
 * request's cache misses overlap (the index is megabytes: it does not stay in a shared CPU's
 * caches between requests).
 *
 * Every function takes whole requests: the ids of a lookup as one UTF-8 buffer with int64
 * offsets (`ranking.ids.Ids`) or as a list of str, and writes whole results into caller-owned
 * arrays. Nothing calls back into Python per id. The semantics are those of the Python table it
 * replaced (tests/features/test_index_oracle.py runs both on random operation sequences):
 *
 *   lookup   fresh entries (expires > now) are hits: the reference bit is set, found rows are
 *            gathered into `out[i, dst_cols] = row[src_cols]` (float32 -> out's dtype); every
 *            other id is a miss (state 0).
 *   stale    for chosen positions, entries expired less than `stale_ttl_s` ago are served the
 *            same way (no reference bit: stale entries should go first).
 *   insert   existing ids are overwritten in place; new ids take never-used slots first, then
 *            CLOCK victims (a set reference bit buys a second chance and is cleared as the hand
 *            passes); the slots of ids already in the batch are never taken; ids beyond the room
 *            left are dropped. Inserted entries start with a clear reference bit.
 *
 * Thread safety: none needed. An Index belongs to one event loop; calls hold the GIL, which
 * they keep (each call is microseconds: releasing it would cost more than it frees).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define EMPTY (-1)

/* States written per position (the Python side names them in ranking/features/_table.py). */
enum { ST_MISS = 0, ST_FOUND = 1, ST_UNKNOWN = 2 };

/* Ids up to this many bytes live inside the slot (one cache line per slot); longer ones on
   the heap. */
#define INLINE_KEY 40

/* One cached entity: 64 bytes, so a probe that finds its slot touches one cache line for the
   hash, the key, the expiry and the flags (the row is in `rows`). */
typedef struct {
    uint64_t hash;
    double expires;
    uint32_t klen;
    uint8_t used; /* holds a key */
    uint8_t negative;
    uint8_t ref;
    uint8_t pad_;
    union {
        char inl[INLINE_KEY];
        char *heap;
    } key;
} Slot;

typedef struct {
    PyObject_HEAD
    Py_ssize_t capacity;
    Py_ssize_t width;
    Py_ssize_t used;  /* slots handed out so far; slots >= used were never used */
    Py_ssize_t count; /* live keys */
    Py_ssize_t hand;  /* CLOCK hand */
    uint64_t mask;    /* hash table size - 1 */
    /* hash table cell: 0 empty, else (high 32 bits of the id's hash) << 32 | (slot + 1), so a
       probe rejects most other ids without touching their slots */
    uint64_t *table;
    Slot *slots;
    float *rows;      /* capacity x width */
    uint32_t *stamp;  /* insert batch that last touched the slot (protects it in the batch) */
    uint32_t epoch;
    size_t table_len, slots_len, rows_len, stamp_len; /* bytes mapped (big_alloc) */
} Index;

/* ---------------------------------------------------------------- hashing */

/* FNV-1a over the bytes, then murmur3's finaliser so that the low bits (the table index)
   depend on every byte. Ids are short (a few to a few dozen bytes). */
static inline uint64_t hash_bytes(const char *p, Py_ssize_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        h ^= (uint8_t)p[i];
        h *= 1099511628211ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

static inline const char *slot_key(const Slot *sl) {
    return sl->klen <= INLINE_KEY ? sl->key.inl : sl->key.heap;
}

static inline uint64_t cell_of(uint64_t h, int32_t s) {
    return (h & 0xFFFFFFFF00000000ULL) | (uint64_t)(uint32_t)(s + 1);
}

static inline int32_t cell_slot(uint64_t c) { return (int32_t)(uint32_t)c - 1; }

/* Position in `table` holding the id's cell, or of the empty cell where it would go. */
static inline uint64_t find_pos(const Index *ix, const char *key, Py_ssize_t n, uint64_t h,
                                int32_t *slot_out) {
    uint64_t i = h & ix->mask, tag = h & 0xFFFFFFFF00000000ULL;
    for (;;) {
        uint64_t c = ix->table[i];
        if (c == 0) {
            *slot_out = EMPTY;
            return i;
        }
        if ((c & 0xFFFFFFFF00000000ULL) == tag) {
            int32_t s = cell_slot(c);
            const Slot *sl = &ix->slots[s];
            if (sl->hash == h && sl->klen == (uint32_t)n &&
                (n == 0 || memcmp(slot_key(sl), key, (size_t)n) == 0)) {
                *slot_out = s;
                return i;
            }
        }
        i = (i + 1) & ix->mask;
    }
}

static inline int32_t find_slot(const Index *ix, const char *key, Py_ssize_t n) {
    int32_t s;
    (void)find_pos(ix, key, n, hash_bytes(key, n), &s);
    return s;
}

/* Remove slot s's key from the table (backward-shift deletion) and free it. */
static void remove_key(Index *ix, int32_t s) {
    Slot *sl = &ix->slots[s];
    uint64_t i = sl->hash & ix->mask;
    while (cell_slot(ix->table[i]) != s) i = (i + 1) & ix->mask;
    uint64_t j = i;
    for (;;) {
        j = (j + 1) & ix->mask;
        uint64_t c = ix->table[j];
        if (c == 0) break;
        uint64_t home = ix->slots[cell_slot(c)].hash & ix->mask;
        /* c may move back to i when its home is not in the cyclic range (i, j]. */
        int move = (i <= j) ? (home <= i || home > j) : (home <= i && home > j);
        if (move) {
            ix->table[i] = c;
            i = j;
        }
    }
    ix->table[i] = 0;
    if (sl->klen > INLINE_KEY) free(sl->key.heap);
    sl->used = 0;
    sl->klen = 0;
    ix->count--;
}

/* Give slot s the key (copied); returns -1 on memory exhaustion. */
static int set_key(Slot *sl, const char *p, Py_ssize_t n, uint64_t h) {
    if (n > INLINE_KEY) {
        char *copy = malloc((size_t)n);
        if (!copy) return -1;
        memcpy(copy, p, (size_t)n);
        sl->key.heap = copy;
    } else if (n) {
        memcpy(sl->key.inl, p, (size_t)n);
    }
    sl->klen = (uint32_t)n;
    sl->hash = h;
    sl->used = 1;
    return 0;
}

/* ---------------------------------------------------------------- buffers */

/* The ids of one call: a list of str, or (data, offsets). */
typedef struct {
    PyObject *list; /* borrowed; NULL when buffer form */
    Py_buffer data;
    Py_buffer offsets;
    const int64_t *off;
    Py_ssize_t n;
    int have_data, have_offsets;
} Keys;

static int buf_kind_ok(const Py_buffer *b, char kind, Py_ssize_t itemsize) {
    if (b->itemsize != itemsize) return 0;
    const char *f = b->format ? b->format : "B";
    while (*f == '<' || *f == '=' || *f == '@' || *f == '!') f++;
    if (f[0] == '\0' || f[1] != '\0') return 0;
    switch (kind) {
        case 'i': return f[0] == 'q' || f[0] == 'l' || f[0] == 'i' || f[0] == 'b' || f[0] == 'h';
        case 'f': return f[0] == 'f' || f[0] == 'd';
        case '?': return f[0] == '?' || f[0] == 'B' || f[0] == 'b';
        default: return 0;
    }
}

/* A C-contiguous buffer of `kind` (i: signed int, f: float, ?: bool/uint8) and `itemsize`. */
static int get_buf(PyObject *obj, Py_buffer *b, char kind, Py_ssize_t itemsize, int writable,
                   int ndim, const char *name) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, b, flags) < 0) {
        PyErr_Format(PyExc_TypeError, "%s: need a C-contiguous%s array", name,
                     writable ? " writable" : "");
        return -1;
    }
    if (!buf_kind_ok(b, kind, itemsize) || b->ndim != ndim) {
        PyErr_Format(PyExc_TypeError, "%s: wrong dtype or number of dimensions", name);
        PyBuffer_Release(b);
        return -1;
    }
    return 0;
}

static void keys_release(Keys *k) {
    if (k->have_data) PyBuffer_Release(&k->data);
    if (k->have_offsets) PyBuffer_Release(&k->offsets);
}

static int keys_get(PyObject *obj, Keys *k) {
    memset(k, 0, sizeof(*k));
    if (PyList_Check(obj)) {
        k->list = obj;
        k->n = PyList_GET_SIZE(obj);
        return 0;
    }
    PyObject *data, *offsets;
    if (!PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) != 2) {
        PyErr_SetString(PyExc_TypeError, "ids: need a list of str or (data, offsets)");
        return -1;
    }
    data = PyTuple_GET_ITEM(obj, 0);
    offsets = PyTuple_GET_ITEM(obj, 1);
    if (PyObject_GetBuffer(data, &k->data, PyBUF_SIMPLE) < 0) return -1;
    k->have_data = 1;
    if (get_buf(offsets, &k->offsets, 'i', 8, 0, 1, "offsets") < 0) {
        keys_release(k);
        return -1;
    }
    k->have_offsets = 1;
    Py_ssize_t m = k->offsets.shape[0];
    if (m < 1) {
        PyErr_SetString(PyExc_ValueError, "offsets: need n + 1 entries");
        keys_release(k);
        return -1;
    }
    k->off = (const int64_t *)k->offsets.buf;
    k->n = m - 1;
    /* Every id must lie inside data: checked once here, so the loops need no checks. */
    int64_t prev = 0, len = (int64_t)k->data.len;
    if (k->off[0] != 0) goto bad;
    for (Py_ssize_t i = 1; i < m; i++) {
        if (k->off[i] < prev || k->off[i] > len) goto bad;
        prev = k->off[i];
    }
    return 0;
bad:
    PyErr_SetString(PyExc_ValueError, "offsets: must start at 0, not decrease, stay in data");
    keys_release(k);
    return -1;
}

/* Id i's bytes; -1 with an exception set when a list item is not a str. */
static inline int key_at(const Keys *k, Py_ssize_t i, const char **p, Py_ssize_t *n) {
    if (k->list) {
        PyObject *s = PyList_GET_ITEM(k->list, i);
        if (!PyUnicode_Check(s)) {
            PyErr_SetString(PyExc_TypeError, "ids: every id must be a str");
            return -1;
        }
        *p = PyUnicode_AsUTF8AndSize(s, n);
        return *p ? 0 : -1;
    }
    *p = (const char *)k->data.buf + k->off[i];
    *n = (Py_ssize_t)(k->off[i + 1] - k->off[i]);
    return 0;
}

/* A gather target: out (rows x cols, float64 or float32) and column maps. */
typedef struct {
    Py_buffer out, dst, src;
    int have_out, have_dst, have_src;
    int f64;
    Py_ssize_t rows, cols, k;
    const int64_t *dcol, *scol;
} Target;

static void target_release(Target *t) {
    if (t->have_out) PyBuffer_Release(&t->out);
    if (t->have_dst) PyBuffer_Release(&t->dst);
    if (t->have_src) PyBuffer_Release(&t->src);
}

static int target_get(PyObject *out, PyObject *dst, PyObject *src, Py_ssize_t width,
                      Py_ssize_t need_rows, Target *t) {
    memset(t, 0, sizeof(*t));
    if (out == Py_None) return 0;
    if (get_buf(out, &t->out, 'f', 8, 1, 2, "out") < 0) {
        PyErr_Clear();
        if (get_buf(out, &t->out, 'f', 4, 1, 2, "out") < 0) return -1;
    }
    t->have_out = 1;
    t->f64 = t->out.itemsize == 8;
    t->rows = t->out.shape[0];
    t->cols = t->out.shape[1];
    if (get_buf(dst, &t->dst, 'i', 8, 0, 1, "dst_cols") < 0) goto fail;
    t->have_dst = 1;
    if (get_buf(src, &t->src, 'i', 8, 0, 1, "src_cols") < 0) goto fail;
    t->have_src = 1;
    t->k = t->dst.shape[0];
    if (t->src.shape[0] != t->k) {
        PyErr_SetString(PyExc_ValueError, "dst_cols and src_cols differ in length");
        goto fail;
    }
    if (t->rows < need_rows) {
        PyErr_SetString(PyExc_ValueError, "out: fewer rows than ids");
        goto fail;
    }
    t->dcol = (const int64_t *)t->dst.buf;
    t->scol = (const int64_t *)t->src.buf;
    for (Py_ssize_t j = 0; j < t->k; j++) {
        if (t->dcol[j] < 0 || t->dcol[j] >= t->cols || t->scol[j] < 0 || t->scol[j] >= width) {
            PyErr_SetString(PyExc_ValueError, "dst_cols/src_cols: column out of range");
            goto fail;
        }
    }
    return 0;
fail:
    target_release(t);
    return -1;
}

static inline void gather_row(const Target *t, Py_ssize_t i, const float *row) {
    if (!t->have_out) return;
    if (t->f64) {
        double *o = (double *)t->out.buf + i * t->cols;
        for (Py_ssize_t j = 0; j < t->k; j++) o[t->dcol[j]] = (double)row[t->scol[j]];
    } else {
        float *o = (float *)t->out.buf + i * t->cols;
        for (Py_ssize_t j = 0; j < t->k; j++) o[t->dcol[j]] = row[t->scol[j]];
    }
}

/* ---------------------------------------------------------------- big arrays */

/* The table, slots and rows are zeroed anonymous mappings that ask for transparent huge pages
   (2 MiB): a request's ids land on random lines of tens of MiB, and with 4 KiB pages nearly
   every one of them also missed the TLB (benchmarks/index_cold.py: a lookup of 200 cold ids
   took 2.4x as long). Where the kernel gives none (THP "never"), they are ordinary pages.
   Every page is faulted in here, when the index is built (at start-up: features/cache.py), so
   that no request waits for the kernel to find and zero a huge page (measured on a VM: 0.4 to
   7 ms each, the first time the host backs the memory). */
#define HUGE_PAGE ((size_t)2 << 20)

static void *big_alloc(size_t n, size_t *mapped) {
    size_t len = n >= HUGE_PAGE ? (n + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1) : (n ? n : 1);
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
#ifdef MADV_HUGEPAGE
    if (len >= HUGE_PAGE) (void)madvise(p, len, MADV_HUGEPAGE);
#endif
    for (size_t at = 0; at < len; at += 4096) ((volatile char *)p)[at] = 0;
    *mapped = len;
    return p;
}

static void big_free(void *p, size_t mapped) {
    if (p) munmap(p, mapped);
}

/* ---------------------------------------------------------------- the type */

static void Index_dealloc(Index *ix) {
    if (ix->slots) {
        for (Py_ssize_t s = 0; s < ix->capacity; s++)
            if (ix->slots[s].used && ix->slots[s].klen > INLINE_KEY) free(ix->slots[s].key.heap);
    }
    big_free(ix->table, ix->table_len);
    big_free(ix->slots, ix->slots_len);
    big_free(ix->rows, ix->rows_len);
    big_free(ix->stamp, ix->stamp_len);
    Py_TYPE(ix)->tp_free((PyObject *)ix);
}

static int Index_init(Index *ix, PyObject *args, PyObject *kw) {
    static char *names[] = {"capacity", "width", NULL};
    Py_ssize_t capacity, width;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "nn", names, &capacity, &width)) return -1;
    if (ix->table) {
        PyErr_SetString(PyExc_RuntimeError, "Index is already initialised");
        return -1;
    }
    if (capacity < 1 || capacity > (1 << 30) || width < 0 || width > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "need 1 <= capacity <= 2**30 and 0 <= width <= 2**20");
        return -1;
    }
    uint64_t size = 1;
    while (size < (uint64_t)capacity * 2) size <<= 1;
    ix->capacity = capacity;
    ix->width = width;
    ix->mask = size - 1;
    ix->table = big_alloc(size * sizeof(uint64_t), &ix->table_len);
    ix->slots = big_alloc((size_t)capacity * sizeof(Slot), &ix->slots_len);
    ix->rows = big_alloc((size_t)capacity * (size_t)(width ? width : 1) * sizeof(float),
                         &ix->rows_len);
    ix->stamp = big_alloc((size_t)capacity * sizeof(uint32_t), &ix->stamp_len);
    if (!ix->table || !ix->slots || !ix->rows || !ix->stamp) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static Py_ssize_t Index_len(Index *ix) { return ix->count; }

/* Ids per batch of the lookup's passes: hashes and slots of a batch live on the stack. */
#define LOOKUP_BATCH 64

/* lookup(ids, now, state, out=None, dst_cols=None, src_cols=None) -> (found_hits, neg_hits)
   In batches of LOOKUP_BATCH ids: hash every id and prefetch its table cell; probe and
   prefetch the slot (and row) found; then check and gather. The cache misses of a batch overlap
   instead of being paid one after another (a request's 200 ids touch ~600 random lines). */
static PyObject *Index_lookup(Index *ix, PyObject *args, PyObject *kw) {
    static char *names[] = {"ids", "now", "state", "out", "dst_cols", "src_cols", NULL};
    PyObject *ids, *state_obj, *out = Py_None, *dst = Py_None, *src = Py_None;
    double now;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OdO|OOO", names, &ids, &now, &state_obj, &out,
                                     &dst, &src))
        return NULL;
    Keys k;
    Target t;
    Py_buffer st;
    if (keys_get(ids, &k) < 0) return NULL;
    if (get_buf(state_obj, &st, 'i', 1, 1, 1, "state") < 0) {
        keys_release(&k);
        return NULL;
    }
    if (st.shape[0] != k.n) {
        PyErr_SetString(PyExc_ValueError, "state: one entry per id");
        goto fail_st;
    }
    if (target_get(out, dst, src, ix->width, k.n, &t) < 0) goto fail_st;
    int8_t *state = (int8_t *)st.buf;
    Py_ssize_t found = 0, neg = 0;
    const char *kp[LOOKUP_BATCH];
    Py_ssize_t kn[LOOKUP_BATCH];
    uint64_t kh[LOOKUP_BATCH];
    int32_t ks[LOOKUP_BATCH];
    for (Py_ssize_t base = 0; base < k.n; base += LOOKUP_BATCH) {
        Py_ssize_t m = k.n - base < LOOKUP_BATCH ? k.n - base : LOOKUP_BATCH;
        for (Py_ssize_t q = 0; q < m; q++) {
            if (key_at(&k, base + q, &kp[q], &kn[q]) < 0) goto fail_all;
            kh[q] = hash_bytes(kp[q], kn[q]);
            __builtin_prefetch(&ix->table[kh[q] & ix->mask]);
        }
        for (Py_ssize_t q = 0; q < m; q++) {
            /* The first cell's slot is the id's in most probes: fetch it before it is
               compared, so that the key compares below do not wait one by one. */
            uint64_t c = ix->table[kh[q] & ix->mask];
            if (c != 0) __builtin_prefetch(&ix->slots[cell_slot(c)]);
        }
        for (Py_ssize_t q = 0; q < m; q++) {
            (void)find_pos(ix, kp[q], kn[q], kh[q], &ks[q]);
            if (ks[q] != EMPTY) {
                __builtin_prefetch(ix->rows + (Py_ssize_t)ks[q] * ix->width);
                __builtin_prefetch(ix->rows + (Py_ssize_t)ks[q] * ix->width + 16);
            }
        }
        for (Py_ssize_t q = 0; q < m; q++) {
            Py_ssize_t i = base + q;
            int32_t s = ks[q];
            if (s == EMPTY || !(ix->slots[s].expires > now)) {
                state[i] = ST_MISS;
                continue;
            }
            Slot *sl = &ix->slots[s];
            sl->ref = 1;
            if (sl->negative) {
                state[i] = ST_UNKNOWN;
                neg++;
            } else {
                state[i] = ST_FOUND;
                found++;
                gather_row(&t, i, ix->rows + (Py_ssize_t)s * ix->width);
            }
        }
    }
    target_release(&t);
    PyBuffer_Release(&st);
    keys_release(&k);
    return Py_BuildValue("nn", found, neg);
fail_all:
    target_release(&t);
fail_st:
    PyBuffer_Release(&st);
    keys_release(&k);
    return NULL;
}

/* stale(ids, positions, now, stale_ttl_s, state, out=None, dst_cols=None, src_cols=None)
   -> (found_served, neg_served): entries expired less than stale_ttl_s ago, at `positions`. */
static PyObject *Index_stale(Index *ix, PyObject *args, PyObject *kw) {
    static char *names[] = {"ids",   "positions", "now",      "stale_ttl_s",
                            "state", "out",       "dst_cols", "src_cols", NULL};
    PyObject *ids, *pos_obj, *state_obj, *out = Py_None, *dst = Py_None, *src = Py_None;
    double now, stale_ttl;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOddO|OOO", names, &ids, &pos_obj, &now,
                                     &stale_ttl, &state_obj, &out, &dst, &src))
        return NULL;
    Keys k;
    Target t;
    Py_buffer st, pb;
    if (keys_get(ids, &k) < 0) return NULL;
    if (get_buf(state_obj, &st, 'i', 1, 1, 1, "state") < 0) goto fail_k;
    if (get_buf(pos_obj, &pb, 'i', 8, 0, 1, "positions") < 0) goto fail_st;
    if (st.shape[0] != k.n) {
        PyErr_SetString(PyExc_ValueError, "state: one entry per id");
        goto fail_pb;
    }
    if (target_get(out, dst, src, ix->width, k.n, &t) < 0) goto fail_pb;
    int8_t *state = (int8_t *)st.buf;
    const int64_t *pos = (const int64_t *)pb.buf;
    Py_ssize_t m = pb.shape[0], found = 0, neg = 0;
    for (Py_ssize_t q = 0; q < m; q++) {
        int64_t i = pos[q];
        if (i < 0 || i >= k.n) {
            PyErr_SetString(PyExc_IndexError, "positions: out of range");
            goto fail_all;
        }
        const char *p;
        Py_ssize_t n;
        if (key_at(&k, (Py_ssize_t)i, &p, &n) < 0) goto fail_all;
        int32_t s = find_slot(ix, p, n);
        if (s == EMPTY || !(ix->slots[s].expires + stale_ttl > now)) continue;
        if (ix->slots[s].negative) {
            state[i] = ST_UNKNOWN;
            neg++;
        } else {
            state[i] = ST_FOUND;
            found++;
            gather_row(&t, (Py_ssize_t)i, ix->rows + (Py_ssize_t)s * ix->width);
        }
    }
    target_release(&t);
    PyBuffer_Release(&pb);
    PyBuffer_Release(&st);
    keys_release(&k);
    return Py_BuildValue("nn", found, neg);
fail_all:
    target_release(&t);
fail_pb:
    PyBuffer_Release(&pb);
fail_st:
    PyBuffer_Release(&st);
fail_k:
    keys_release(&k);
    return NULL;
}

/* A slot for a new entry: a never-used one, else the CLOCK victim; -1 when every slot is
   protected by this batch. The victim's old key is removed (*evicted += 1). */
static int32_t take_slot(Index *ix, Py_ssize_t *evicted) {
    if (ix->used < ix->capacity) return (int32_t)ix->used++;
    /* Two full sweeps always suffice: the first clears every reference bit it passes. */
    for (Py_ssize_t step = 0; step < 2 * ix->capacity + 1; step++) {
        Py_ssize_t s = ix->hand;
        ix->hand = (ix->hand + 1) % ix->capacity;
        Slot *sl = &ix->slots[s];
        if (sl->ref) {
            sl->ref = 0;
            continue;
        }
        if (ix->stamp[s] == ix->epoch) continue;
        if (sl->used) {
            remove_key(ix, (int32_t)s);
            (*evicted)++;
        }
        return (int32_t)s;
    }
    return -1;
}

/* insert(ids, rows, found, unknown, now, ttl_s, negative_ttl_s) -> (inserted, evicted)
   Caches id i when found[i] (rows[i], for ttl_s) or unknown[i] (negative, negative_ttl_s). */
static PyObject *Index_insert(Index *ix, PyObject *args, PyObject *kw) {
    static char *names[] = {"ids", "rows", "found", "unknown", "now", "ttl_s", "negative_ttl_s",
                            NULL};
    PyObject *ids, *rows_obj, *found_obj, *unknown_obj;
    double now, ttl, neg_ttl;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOddd", names, &ids, &rows_obj, &found_obj,
                                     &unknown_obj, &now, &ttl, &neg_ttl))
        return NULL;
    Keys k;
    Py_buffer rb, fb, ub;
    if (keys_get(ids, &k) < 0) return NULL;
    if (get_buf(rows_obj, &rb, 'f', 4, 0, 2, "rows") < 0) goto fail_k;
    if (get_buf(found_obj, &fb, '?', 1, 0, 1, "found") < 0) goto fail_r;
    if (get_buf(unknown_obj, &ub, '?', 1, 0, 1, "unknown") < 0) goto fail_f;
    if (rb.shape[0] != k.n || rb.shape[1] != ix->width || fb.shape[0] != k.n ||
        ub.shape[0] != k.n) {
        PyErr_SetString(PyExc_ValueError, "rows, found, unknown: one per id, rows of width");
        goto fail_u;
    }
    const float *rows = (const float *)rb.buf;
    const uint8_t *found = (const uint8_t *)fb.buf, *unknown = (const uint8_t *)ub.buf;
    int32_t *slots = malloc((size_t)(k.n ? k.n : 1) * sizeof(int32_t));
    if (!slots) {
        PyErr_NoMemory();
        goto fail_u;
    }
    if (++ix->epoch == 0) { /* wrapped: no slot may keep a stamp equal to a future epoch */
        memset(ix->stamp, 0, (size_t)ix->capacity * sizeof(uint32_t));
        ix->epoch = 1;
    }
    /* Pass 1: existing ids keep their slots, protected from this batch's evictions. */
    Py_ssize_t known = 0;
    for (Py_ssize_t i = 0; i < k.n; i++) {
        slots[i] = EMPTY;
        if (!found[i] && !unknown[i]) continue;
        const char *p;
        Py_ssize_t n;
        if (key_at(&k, i, &p, &n) < 0) goto fail_s;
        int32_t s = find_slot(ix, p, n);
        if (s != EMPTY) {
            slots[i] = s;
            if (ix->stamp[s] != ix->epoch) known++;
            ix->stamp[s] = ix->epoch;
        }
    }
    /* Pass 2: new ids, in order, while there is room. */
    Py_ssize_t room = ix->capacity - known, inserted = 0, evicted = 0;
    for (Py_ssize_t i = 0; i < k.n; i++) {
        if ((!found[i] && !unknown[i]) || slots[i] != EMPTY) continue;
        const char *p;
        Py_ssize_t n;
        if (key_at(&k, i, &p, &n) < 0) goto fail_s;
        uint64_t h = hash_bytes(p, n);
        int32_t dup;
        (void)find_pos(ix, p, n, h, &dup);
        if (dup != EMPTY) { /* the same id earlier in this batch */
            slots[i] = dup;
            continue;
        }
        if (room <= 0 || n > (Py_ssize_t)UINT32_MAX) continue;
        int32_t s = take_slot(ix, &evicted);
        if (s < 0) {
            room = 0;
            continue;
        }
        room--;
        if (set_key(&ix->slots[s], p, n, h) < 0) {
            PyErr_NoMemory();
            goto fail_s;
        }
        ix->slots[s].expires = -INFINITY; /* expired until the last pass below dates it */
        ix->stamp[s] = ix->epoch;
        int32_t none;
        uint64_t at = find_pos(ix, p, n, h, &none); /* recomputed: an eviction may move cells */
        ix->table[at] = cell_of(h, s);
        ix->count++;
        slots[i] = s;
    }
    for (Py_ssize_t i = 0; i < k.n; i++) {
        int32_t s = slots[i];
        if (s == EMPTY) continue;
        int f = found[i] != 0;
        if (f)
            memcpy(ix->rows + (Py_ssize_t)s * ix->width, rows + i * ix->width,
                   (size_t)ix->width * sizeof(float));
        Slot *sl = &ix->slots[s];
        sl->negative = (uint8_t)!f;
        sl->expires = now + (f ? ttl : neg_ttl);
        sl->ref = 0;
        inserted++;
    }
    free(slots);
    PyBuffer_Release(&ub);
    PyBuffer_Release(&fb);
    PyBuffer_Release(&rb);
    keys_release(&k);
    return Py_BuildValue("nn", inserted, evicted);
fail_s:
    free(slots);
fail_u:
    PyBuffer_Release(&ub);
fail_f:
    PyBuffer_Release(&fb);
fail_r:
    PyBuffer_Release(&rb);
fail_k:
    keys_release(&k);
    return NULL;
}

/* contains(id: str | bytes) -> bool: whether the id has a slot (fresh or not); for tests. */
static PyObject *Index_contains(Index *ix, PyObject *arg) {
    const char *p;
    Py_ssize_t n;
    if (PyUnicode_Check(arg)) {
        p = PyUnicode_AsUTF8AndSize(arg, &n);
        if (!p) return NULL;
    } else if (PyBytes_Check(arg)) {
        p = PyBytes_AS_STRING(arg);
        n = PyBytes_GET_SIZE(arg);
    } else {
        PyErr_SetString(PyExc_TypeError, "need str or bytes");
        return NULL;
    }
    return PyBool_FromLong(find_slot(ix, p, n) != EMPTY);
}

static PyMethodDef Index_methods[] = {
    {"lookup", (PyCFunction)(void (*)(void))Index_lookup, METH_VARARGS | METH_KEYWORDS,
     "Look ids up; gather fresh found rows into out. See _index.pyi."},
    {"stale", (PyCFunction)(void (*)(void))Index_stale, METH_VARARGS | METH_KEYWORDS,
     "Serve entries expired less than stale_ttl_s ago. See _index.pyi."},
    {"insert", (PyCFunction)(void (*)(void))Index_insert, METH_VARARGS | METH_KEYWORDS,
     "Cache found rows and unknown ids. See _index.pyi."},
    {"contains", (PyCFunction)Index_contains, METH_O, "Whether an id has a slot."},
    {NULL, NULL, 0, NULL},
};

static PyObject *Index_get_capacity(Index *ix, void *c) {
    (void)c;
    return PyLong_FromSsize_t(ix->capacity);
}
static PyObject *Index_get_width(Index *ix, void *c) {
    (void)c;
    return PyLong_FromSsize_t(ix->width);
}

static PyGetSetDef Index_getset[] = {
    {"capacity", (getter)Index_get_capacity, NULL, "slots", NULL},
    {"width", (getter)Index_get_width, NULL, "values per row", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Index_as_sequence = {.sq_length = (lenfunc)Index_len};

static PyTypeObject IndexType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ranking.features._index.Index",
    .tp_basicsize = sizeof(Index),
    .tp_dealloc = (destructor)Index_dealloc,
    .tp_as_sequence = &Index_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Index(capacity, width): the slots of one cached entity type.",
    .tp_methods = Index_methods,
    .tp_getset = Index_getset,
    .tp_init = (initproc)Index_init,
    .tp_new = PyType_GenericNew,
};

/* ---------------------------------------------------------------- module functions */

/* scatter(rows, src_rows, found, unknown, state, out, dst_rows, dst_cols, src_cols) -> copied:
   for each q: found[src_rows[q]] -> out[dst_rows[q], dst_cols] = rows[src_rows[q], src_cols] and
   state[dst_rows[q]] = FOUND; else unknown[src_rows[q]] -> state UNKNOWN; else state MISS. */
static PyObject *mod_scatter(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *rows_obj, *srcr_obj, *found_obj, *unknown_obj, *state_obj, *out, *dstr_obj, *dst,
        *src;
    if (!PyArg_ParseTuple(args, "OOOOOOOOO", &rows_obj, &srcr_obj, &found_obj, &unknown_obj,
                          &state_obj, &out, &dstr_obj, &dst, &src))
        return NULL;
    Py_buffer rb, sb, fb, ub, stb, db;
    Target t;
    PyObject *result = NULL;
    if (get_buf(rows_obj, &rb, 'f', 4, 0, 2, "rows") < 0) return NULL;
    if (get_buf(srcr_obj, &sb, 'i', 8, 0, 1, "src_rows") < 0) goto f_r;
    if (get_buf(found_obj, &fb, '?', 1, 0, 1, "found") < 0) goto f_s;
    if (get_buf(unknown_obj, &ub, '?', 1, 0, 1, "unknown") < 0) goto f_f;
    if (get_buf(state_obj, &stb, 'i', 1, 1, 1, "state") < 0) goto f_u;
    if (get_buf(dstr_obj, &db, 'i', 8, 0, 1, "dst_rows") < 0) goto f_st;
    if (target_get(out, dst, src, rb.shape[1], 0, &t) < 0) goto f_d;
    if (!t.have_out || sb.shape[0] != db.shape[0] || fb.shape[0] != rb.shape[0] ||
        ub.shape[0] != rb.shape[0]) {
        PyErr_SetString(PyExc_ValueError, "scatter: mismatched lengths");
        goto f_t;
    }
    const float *rows = (const float *)rb.buf;
    const int64_t *sr = (const int64_t *)sb.buf, *dr = (const int64_t *)db.buf;
    const uint8_t *found = (const uint8_t *)fb.buf, *unknown = (const uint8_t *)ub.buf;
    int8_t *state = (int8_t *)stb.buf;
    Py_ssize_t copied = 0, width = rb.shape[1], nstate = stb.shape[0];
    for (Py_ssize_t q = 0; q < sb.shape[0]; q++) {
        if (sr[q] < 0 || sr[q] >= rb.shape[0] || dr[q] < 0 || dr[q] >= t.rows ||
            dr[q] >= nstate) {
            PyErr_SetString(PyExc_IndexError, "scatter: row out of range");
            goto f_t;
        }
    }
    for (Py_ssize_t q = 0; q < sb.shape[0]; q++) {
        if (found[sr[q]]) {
            gather_row(&t, (Py_ssize_t)dr[q], rows + sr[q] * width);
            state[dr[q]] = ST_FOUND;
            copied++;
        } else {
            state[dr[q]] = unknown[sr[q]] ? ST_UNKNOWN : ST_MISS;
        }
    }
    result = PyLong_FromSsize_t(copied);
f_t:
    target_release(&t);
f_d:
    PyBuffer_Release(&db);
f_st:
    PyBuffer_Release(&stb);
f_u:
    PyBuffer_Release(&ub);
f_f:
    PyBuffer_Release(&fb);
f_s:
    PyBuffer_Release(&sb);
f_r:
    PyBuffer_Release(&rb);
    return result;
}

/* zlib's CRC-32 (IEEE 802.3, reflected 0xEDB88320), for cluster hash-tag buckets. */
static uint32_t crc_table[256];
static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int j = 0; j < 8; j++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}
static uint32_t crc32_bytes(const char *p, Py_ssize_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (Py_ssize_t i = 0; i < n; i++) c = crc_table[(c ^ (uint8_t)p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* Growable output buffer. */
typedef struct {
    char *p;
    size_t len, cap;
} Out;

static int out_put(Out *o, const char *s, size_t n) {
    if (o->len + n > o->cap) {
        size_t cap = o->cap ? o->cap : 4096;
        while (cap < o->len + n) cap *= 2;
        char *q = realloc(o->p, cap);
        if (!q) {
            PyErr_NoMemory();
            return -1;
        }
        o->p = q;
        o->cap = cap;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
    return 0;
}

static int out_fmt(Out *o, const char *fmt, long long v) {
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, fmt, v);
    return out_put(o, tmp, (size_t)n);
}

/* mget_command(parts, buckets) -> bytes: the RESP of MGET over every part's keys, in order.
   parts: list of (prefix: bytes, ids); a key is prefix + b":" + id (buckets == 0) or
   b"{" + prefix + b":b" + str(crc32(id) % buckets) + b"}:" + id (Redis Cluster hash tags),
   exactly as ranking.features.redis_store.KeyLayout.keys spells them. */
static PyObject *mod_mget_command(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *parts;
    long long buckets;
    if (!PyArg_ParseTuple(args, "O!L", &PyList_Type, &parts, &buckets)) return NULL;
    if (buckets < 0) {
        PyErr_SetString(PyExc_ValueError, "buckets must be >= 0");
        return NULL;
    }
    Py_ssize_t np_ = PyList_GET_SIZE(parts), total = 0;
    for (Py_ssize_t q = 0; q < np_; q++) {
        PyObject *part = PyList_GET_ITEM(parts, q);
        if (!PyTuple_Check(part) || PyTuple_GET_SIZE(part) != 2 ||
            !PyBytes_Check(PyTuple_GET_ITEM(part, 0))) {
            PyErr_SetString(PyExc_TypeError, "parts: need (prefix: bytes, ids) tuples");
            return NULL;
        }
        Keys k;
        if (keys_get(PyTuple_GET_ITEM(part, 1), &k) < 0) return NULL;
        total += k.n;
        keys_release(&k);
    }
    Out o = {0};
    if (out_fmt(&o, "*%lld\r\n$4\r\nMGET\r\n", (long long)total + 1) < 0) goto fail;
    for (Py_ssize_t q = 0; q < np_; q++) {
        PyObject *part = PyList_GET_ITEM(parts, q);
        PyObject *prefix = PyTuple_GET_ITEM(part, 0);
        const char *pp = PyBytes_AS_STRING(prefix);
        Py_ssize_t pn = PyBytes_GET_SIZE(prefix);
        Keys k;
        if (keys_get(PyTuple_GET_ITEM(part, 1), &k) < 0) goto fail;
        for (Py_ssize_t i = 0; i < k.n; i++) {
            const char *p;
            Py_ssize_t n;
            if (key_at(&k, i, &p, &n) < 0) {
                keys_release(&k);
                goto fail;
            }
            char tag[32];
            int tn = 0;
            if (buckets) tn = snprintf(tag, sizeof tag, ":b%lld}:", (long long)(crc32_bytes(p, n) % (uint64_t)buckets));
            long long klen = (long long)pn + n + (buckets ? 1 + tn : 1);
            if (out_fmt(&o, "$%lld\r\n", klen) < 0 || (buckets && out_put(&o, "{", 1) < 0) ||
                out_put(&o, pp, (size_t)pn) < 0 ||
                (buckets ? out_put(&o, tag, (size_t)tn) : out_put(&o, ":", 1)) < 0 ||
                out_put(&o, p, (size_t)n) < 0 || out_put(&o, "\r\n", 2) < 0) {
                keys_release(&k);
                goto fail;
            }
        }
        keys_release(&k);
    }
    PyObject *res = PyBytes_FromStringAndSize(o.p, (Py_ssize_t)o.len);
    free(o.p);
    return res;
fail:
    free(o.p);
    return NULL;
}

static inline uint32_t load_le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void fill_nan(float *r, Py_ssize_t width) {
    for (Py_ssize_t j = 0; j < width; j++) r[j] = NAN;
}

/* decode_values(values, start, header, rows, found, unknown) -> mismatches
   values[start + i] (bytes or None) -> rows[i] (float32 after the 8-byte header), found[i];
   None -> unknown[i]; a value of the wrong length or header is neither (a schema mismatch).
   Rows not found are filled with NaN, so `rows` may come uninitialised. */
static PyObject *mod_decode_values(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *values, *rows_obj, *found_obj, *unknown_obj;
    Py_ssize_t start;
    const char *header;
    Py_ssize_t hlen;
    if (!PyArg_ParseTuple(args, "O!ny#OOO", &PyList_Type, &values, &start, &header, &hlen,
                          &rows_obj, &found_obj, &unknown_obj))
        return NULL;
    if (hlen != 8) {
        PyErr_SetString(PyExc_ValueError, "header must be 8 bytes");
        return NULL;
    }
    Py_buffer rb, fb, ub;
    PyObject *result = NULL;
    if (get_buf(rows_obj, &rb, 'f', 4, 1, 2, "rows") < 0) return NULL;
    if (get_buf(found_obj, &fb, '?', 1, 1, 1, "found") < 0) goto d_r;
    if (get_buf(unknown_obj, &ub, '?', 1, 1, 1, "unknown") < 0) goto d_f;
    Py_ssize_t n = rb.shape[0], width = rb.shape[1];
    if (fb.shape[0] != n || ub.shape[0] != n || start < 0 ||
        start + n > PyList_GET_SIZE(values)) {
        PyErr_SetString(PyExc_ValueError, "decode_values: mismatched lengths");
        goto d_u;
    }
    float *rows = (float *)rb.buf;
    uint8_t *found = (uint8_t *)fb.buf, *unknown = (uint8_t *)ub.buf;
    Py_ssize_t size = 8 + 4 * width, mismatches = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(values, start + i);
        float *r = rows + i * width;
        found[i] = 0;
        unknown[i] = 0;
        if (v == Py_None) {
            unknown[i] = 1;
            fill_nan(r, width);
            continue;
        }
        if (!PyBytes_Check(v) || PyBytes_GET_SIZE(v) != size ||
            memcmp(PyBytes_AS_STRING(v), header, 8) != 0) {
            mismatches++;
            fill_nan(r, width);
            continue;
        }
        const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(v) + 8;
        for (Py_ssize_t j = 0; j < width; j++) {
            uint32_t w = load_le32(p + 4 * j);
            memcpy(&r[j], &w, 4);
        }
        found[i] = 1;
    }
    result = PyLong_FromSsize_t(mismatches);
d_u:
    PyBuffer_Release(&ub);
d_f:
    PyBuffer_Release(&fb);
d_r:
    PyBuffer_Release(&rb);
    return result;
}

static PyMethodDef module_methods[] = {
    {"scatter", mod_scatter, METH_VARARGS, "Copy found rows into a target. See _index.pyi."},
    {"mget_command", mod_mget_command, METH_VARARGS, "RESP bytes of one MGET. See _index.pyi."},
    {"decode_values", mod_decode_values, METH_VARARGS, "Decode MGET values. See _index.pyi."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "ranking.features._index",
    "Native index and row storage of the feature cache; RESP helpers for its Redis reads.", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__index(void) {
    crc_init();
    if (PyType_Ready(&IndexType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&IndexType);
    if (PyModule_AddObject(m, "Index", (PyObject *)&IndexType) < 0) {
        Py_DECREF(&IndexType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
