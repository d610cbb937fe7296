/*
 * QuickScorer kernel: exact LightGBM raw scores for tree ensembles.
 *
 * Read ranking/scoring/README.md first; in short (Lucchese et al., SIGIR 2015):
 *
 *   - Every tree keeps a bitvector per row over its leaves numbered left to right: one uint64
 *     word for trees of <= 64 leaves, `words` of them for larger ones. It starts all ones. A
 *     "false" node (its test sends the row right) ANDs masks clearing the leaves of its left
 *     subtree (one record per word the subtree touches). The exit leaf is the lowest set bit:
 *     ctz of the tree's first non-zero word.
 *   - Numerical nodes are grouped by feature and sorted by threshold, so for a row value x the
 *     false nodes of that feature are a prefix of the list: every node with threshold < x.
 *     Each list ends with a +inf sentinel, so the scan `while (thr[i] < x)` always stops.
 *   - For x == NaN and x == 0 (LightGBM's missing-value cases) the false nodes of a feature do not
 *     depend on x, so Python precomputes those two lists and the kernel just applies them.
 *   - Categorical nodes are few; each is evaluated directly (LightGBM's CategoricalDecision).
 *   - The score of a row is the sum of the exit leaves' values in the model's tree order, starting
 *     from 0.0, exactly as GBDT::PredictRaw adds them, so results are bit-identical.
 *
 * Rows are scored in blocks of QS_BLOCK: the bitvectors of a block are laid out [slot][row]
 * (slot = tree * words + word), so the SIMD kernels update the QS_BLOCK rows of one tree word
 * with one vector AND. Scalar, AVX2 and
 * AVX-512 kernels share everything except the numerical scan and are chosen at run time (the
 * extension is compiled for baseline x86-64; the SIMD bodies use `target` attributes).
 *
 * Thread safety: an Ensemble is immutable after construction; scratch memory is per call; the
 * GIL is released while scoring.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <numpy/arrayobject.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* QS_PORTABLE builds only the scalar kernel (what non-x86 targets get), for testing. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(QS_PORTABLE)
#define QS_X86 1
#include <immintrin.h>
#else
#define QS_X86 0
#endif

/* LightGBM's kZeroThreshold is the float 1e-35f used as a double. */
#define QS_KZERO ((double)1e-35f)
#ifndef QS_BLOCK
#define QS_BLOCK 8
#endif
#define QS_WORD 64 /* leaves per bitvector word */

enum {
    KERNEL_AUTO = -1,
    KERNEL_SCALAR = 0,
    KERNEL_SSE2 = 1,
    KERNEL_AVX2 = 2,
    KERNEL_AVX512 = 3,
    KERNEL_COUNT = 4
};

/* A numerical node as the scans read it: one 24-byte record instead of three arrays. */
typedef struct {
    double thr;
    uint64_t mask;
    uint64_t bv_off; /* tree index * QS_BLOCK */
} qs_node;

typedef struct {
    PyObject_HEAD
    int64_t num_features;
    int64_t num_trees;
    int64_t num_outputs;    /* trees per iteration */
    int64_t num_iterations; /* num_trees / num_outputs */
    int64_t words;          /* bitvector words per tree and row: ceil(max leaves / 64) */
    int64_t num_slots;      /* num_trees * words; tree t's word w is slot t * words + w */
    int average_output;     /* divide sums by num_iterations */
    /* Numerical nodes in segments, one per (tree block, feature): segment s = b * num_features + f
       holds the nodes of feature f in the trees of block b, sorted by threshold, in
       [num_off[s], num_off[s+1]); its last entry is a +inf sentinel. Tree blocks keep the
       bitvectors a scan touches in L1. */
    int64_t num_segments;
    const int64_t *num_off;
    const double *num_thr;
    const uint32_t *num_tree;
    const uint64_t *num_mask;
    qs_node *nodes; /* num_thr / num_tree / num_mask interleaved (owned, malloc) */
    /* False nodes for x NaN and for x == 0, per feature. */
    const int64_t *nan_off;
    const uint32_t *nan_tree;
    const uint64_t *nan_mask;
    const int64_t *zero_off;
    const uint32_t *zero_tree;
    const uint64_t *zero_mask;
    /* Categorical nodes per feature; bitset of node j is cat_bits[cat_bits_off[j] ..
       cat_bits_off[j+1]). */
    const int64_t *cat_off;
    const uint32_t *cat_tree;
    const uint64_t *cat_mask;
    const int64_t *cat_bits_off;
    const uint32_t *cat_bits;
    /* Leaf values in bit order, words * QS_WORD per tree. */
    const double *leaf_value;
    /* Per feature: bit 0 set when a NaN value scans as 0.0 (all its nodes have missing type
       None), bit 1 when a zero value scans as 0.0 (none has missing type Zero). Otherwise the
       value applies the feature's NaN / zero list. */
    const uint8_t *scan_zero;
    /* 1 when feature f has numerical nodes, 2 when categorical, 3 both. */
    const uint8_t *feature_kind;
    PyObject *arrays; /* tuple keeping the owned copies alive */
} EnsembleObject;


/* ---------------------------------------------------------------------------------------- */
/* Shared per-block helpers                                                                 */

static inline void apply_list(uint64_t *bv, int lane, const uint32_t *tree, const uint64_t *mask,
                              int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
        bv[(int64_t)tree[i] * QS_BLOCK + lane] &= mask[i];
    }
}

/* LightGBM CategoricalDecision: NaN, negative and out-of-int-range values go right; otherwise
   the integer part is looked up in the node's bitset. (int)x for x >= 2^31 is undefined in C++
   and gives INT_MIN on x86 (so "right"); we make that explicit. */
static inline int cat_goes_left(double x, const uint32_t *bits, int64_t nwords) {
    if (isnan(x) || x <= -1.0 || x >= 2147483648.0) {
        return 0;
    }
    int32_t pos = (int32_t)x; /* truncation toward zero, like static_cast<int> */
    if (pos < 0) {
        return 0;
    }
    int64_t word = pos / 32;
    if (word >= nwords) {
        return 0;
    }
    return (int)((bits[word] >> (pos % 32)) & 1u);
}

static inline void apply_categorical(const EnsembleObject *m, uint64_t *bv, int lane, int64_t f,
                                     double x) {
    for (int64_t j = m->cat_off[f]; j < m->cat_off[f + 1]; ++j) {
        const int64_t b0 = m->cat_bits_off[j];
        if (!cat_goes_left(x, m->cat_bits + b0, m->cat_bits_off[j + 1] - b0)) {
            bv[(int64_t)m->cat_tree[j] * QS_BLOCK + lane] &= m->cat_mask[j];
        }
    }
}

/* Values LightGBM's dense predict path drops (|x| <= kZeroThreshold) become 0.0. */
static inline int is_zero(double x) { return x >= -QS_KZERO && x <= QS_KZERO; }

/* Applies the NaN / zero lists and categorical nodes of a block, and writes the transposed
   block xt[f][lane] for the numerical scan: the value itself, or -inf (no false node) when the
   value is NaN or zero, or for padding lanes. */
static void prepare_block(const EnsembleObject *m, const double *x, int rows, uint64_t *bv,
                          double *xt) {
    const int64_t nf = m->num_features;
    const int64_t nbv = m->num_slots * QS_BLOCK;
    for (int64_t i = 0; i < nbv; ++i) {
        bv[i] = ~(uint64_t)0;
    }
    for (int64_t f = 0; f < nf; ++f) {
        const uint8_t kind = m->feature_kind[f];
        double *col = xt + f * QS_BLOCK;
        for (int lane = 0; lane < QS_BLOCK; ++lane) {
            col[lane] = -INFINITY;
        }
        if (kind == 0) {
            continue;
        }
        for (int lane = 0; lane < rows; ++lane) {
            const double v = x[(int64_t)lane * nf + f];
            if (kind & 1) {
                if (isnan(v)) {
                    if (m->scan_zero[f] & 1) {
                        col[lane] = 0.0;
                    } else {
                        apply_list(bv, lane, m->nan_tree, m->nan_mask, m->nan_off[f],
                                   m->nan_off[f + 1]);
                    }
                } else if (is_zero(v)) {
                    if (m->scan_zero[f] & 2) {
                        col[lane] = 0.0;
                    } else {
                        apply_list(bv, lane, m->zero_tree, m->zero_mask, m->zero_off[f],
                                   m->zero_off[f + 1]);
                    }
                } else {
                    col[lane] = v;
                }
            }
            if (kind & 2) {
                apply_categorical(m, bv, lane, f, is_zero(v) ? 0.0 : v);
            }
        }
    }
}

/* Sums exit leaves in LightGBM's order: for each iteration, tree i*K + k adds to output k,
   starting from 0.0. The lanes' sums are independent, so they advance together (more
   instruction-level parallelism) while each one keeps LightGBM's order exactly. */
static void finish_block(const EnsembleObject *m, const uint64_t *bv, int rows, double *out) {
    const int64_t K = m->num_outputs;
    const int64_t iters = m->num_iterations;
    const int64_t W = m->words;
    for (int64_t k = 0; k < K; ++k) {
        double acc[QS_BLOCK];
        for (int lane = 0; lane < QS_BLOCK; ++lane) {
            acc[lane] = 0.0;
        }
        for (int64_t it = 0; it < iters; ++it) {
            const int64_t t = it * K + k;
            const uint64_t *b = bv + t * W * QS_BLOCK;
            const double *leaf = m->leaf_value + t * W * QS_WORD;
            for (int lane = 0; lane < QS_BLOCK; ++lane) {
                /* The exit leaf is the lowest set bit over the tree's words. */
                int64_t w = 0;
                uint64_t word = b[lane];
                while (word == 0 && w < W - 1) {
                    word = b[++w * QS_BLOCK + lane];
                }
                /* A correct mask set never clears the exit leaf; the OR keeps ctz defined and
                   the index in bounds even for inconsistent input. */
                acc[lane] += leaf[w * QS_WORD + __builtin_ctzll(word | ((uint64_t)1 << 63))];
            }
        }
        for (int lane = 0; lane < rows; ++lane) {
            out[(int64_t)lane * K + k] = m->average_output ? acc[lane] / (double)iters : acc[lane];
        }
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Numerical scans                                                                          */

static void scan_scalar(const EnsembleObject *m, const double *xt, uint64_t *bv) {
    for (int64_t s = 0; s < m->num_segments; ++s) {
        const int64_t base = m->num_off[s];
        if (m->num_off[s + 1] - base <= 1) {
            continue; /* only the sentinel */
        }
        const int64_t f = s % m->num_features;
        const qs_node *nd = m->nodes + base;
        for (int lane = 0; lane < QS_BLOCK; ++lane) {
            const double v = xt[f * QS_BLOCK + lane];
            uint64_t *b = bv + lane;
            /* the segment ends with +inf, and +inf < v is false for every v. */
            for (const qs_node *p = nd; p->thr < v; ++p) {
                b[p->bv_off] &= p->mask;
            }
        }
    }
}

#if QS_X86
/* SSE2 is part of x86-64, so this kernel needs no dispatch: the block as 128-bit pairs. */
static void scan_sse2(const EnsembleObject *m, const double *xt, uint64_t *bv) {
    enum { V = QS_BLOCK / 2 };
    for (int64_t s = 0; s < m->num_segments; ++s) {
        const int64_t base = m->num_off[s];
        if (m->num_off[s + 1] - base <= 1) {
            continue; /* only the sentinel */
        }
        const int64_t f = s % m->num_features;
        const qs_node *nd = m->nodes + base;
        __m128d x[V];
        for (int v = 0; v < V; ++v) {
            x[v] = _mm_loadu_pd(xt + f * QS_BLOCK + 2 * v);
        }
        for (const qs_node *nn = nd;; ++nn) {
            const __m128d t = _mm_set1_pd(nn->thr);
            __m128i c[V];
            __m128i any = _mm_setzero_si128();
            for (int v = 0; v < V; ++v) {
                c[v] = _mm_castpd_si128(_mm_cmplt_pd(t, x[v]));
                any = _mm_or_si128(any, c[v]);
            }
            if (_mm_movemask_epi8(any) == 0) {
                break;
            }
            const __m128i clear = _mm_set1_epi64x((long long)~nn->mask);
            __m128i *p = (__m128i *)(bv + nn->bv_off);
            for (int v = 0; v < V; ++v) {
                _mm_storeu_si128(p + v, _mm_andnot_si128(_mm_and_si128(c[v], clear),
                                                         _mm_loadu_si128(p + v)));
            }
        }
    }
}
#endif

#if QS_X86
__attribute__((target("avx2"))) static void scan_avx2(const EnsembleObject *m, const double *xt,
                                                      uint64_t *bv) {
    enum { V = QS_BLOCK / 4 };
    for (int64_t s = 0; s < m->num_segments; ++s) {
        const int64_t base = m->num_off[s];
        if (m->num_off[s + 1] - base <= 1) {
            continue; /* only the sentinel */
        }
        const int64_t f = s % m->num_features;
        const qs_node *nd = m->nodes + base;
        __m256d x[V];
        for (int v = 0; v < V; ++v) {
            x[v] = _mm256_loadu_pd(xt + f * QS_BLOCK + 4 * v);
        }
        for (const qs_node *nn = nd;; ++nn) {
            const __m256d t = _mm256_broadcast_sd(&nn->thr);
            __m256i c[V];
            __m256i any = _mm256_setzero_si256();
            for (int v = 0; v < V; ++v) {
                c[v] = _mm256_castpd_si256(_mm256_cmp_pd(t, x[v], _CMP_LT_OQ));
                any = _mm256_or_si256(any, c[v]);
            }
            if (_mm256_testz_si256(any, any)) {
                break;
            }
            /* bv &= ~(cmp & ~mask): lanes where the node is false lose the left leaves. */
            const __m256i clear = _mm256_set1_epi64x((long long)~nn->mask);
            __m256i *p = (__m256i *)(bv + nn->bv_off);
            for (int v = 0; v < V; ++v) {
                _mm256_storeu_si256(p + v, _mm256_andnot_si256(_mm256_and_si256(c[v], clear),
                                                                _mm256_loadu_si256(p + v)));
            }
        }
    }
}

__attribute__((target("avx512f"))) static void scan_avx512(const EnsembleObject *m,
                                                           const double *xt, uint64_t *bv) {
    enum { V = QS_BLOCK / 8 };
    for (int64_t s = 0; s < m->num_segments; ++s) {
        const int64_t base = m->num_off[s];
        if (m->num_off[s + 1] - base <= 1) {
            continue; /* only the sentinel */
        }
        const int64_t f = s % m->num_features;
        const qs_node *nd = m->nodes + base;
        __m512d x[V];
        for (int v = 0; v < V; ++v) {
            x[v] = _mm512_loadu_pd(xt + f * QS_BLOCK + 8 * v);
        }
        for (const qs_node *nn = nd;; ++nn) {
            const __m512d t = _mm512_set1_pd(nn->thr);
            __mmask8 k[V];
            int any = 0;
            for (int v = 0; v < V; ++v) {
                k[v] = _mm512_cmp_pd_mask(t, x[v], _CMP_LT_OQ);
                any |= k[v];
            }
            if (!any) {
                break;
            }
            uint64_t *p = bv + nn->bv_off;
            const __m512i mk = _mm512_set1_epi64((long long)nn->mask);
            for (int v = 0; v < V; ++v) {
                const __m512i cur = _mm512_loadu_si512(p + 8 * v);
                _mm512_storeu_si512(p + 8 * v, _mm512_mask_and_epi64(cur, k[v], cur, mk));
            }
        }
    }
}
#endif

typedef void (*scan_fn)(const EnsembleObject *, const double *, uint64_t *);

static const char *const kernel_names[KERNEL_COUNT] = {"scalar", "sse2", "avx2", "avx512"};
/* The kernels this CPU can run (NULL where it lacks the instructions) and the best of them.
   Written once by the module's init, under the import lock, and only read afterwards. */
static scan_fn g_kernels[KERNEL_COUNT];
static int g_auto_kernel = KERNEL_SCALAR;

static void detect_kernels(void) {
    g_kernels[KERNEL_SCALAR] = scan_scalar;
#if QS_X86
    g_kernels[KERNEL_SSE2] = scan_sse2; /* SSE2 is part of x86-64 */
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) {
        g_kernels[KERNEL_AVX2] = scan_avx2;
    }
    if (__builtin_cpu_supports("avx512f")) {
        g_kernels[KERNEL_AVX512] = scan_avx512;
    }
#endif
    for (int k = 0; k < KERNEL_COUNT; ++k) {
        if (g_kernels[k] != NULL) {
            g_auto_kernel = k;
        }
    }
}

static scan_fn select_scan(int kernel) {
    if (kernel == KERNEL_AUTO) {
        return g_kernels[g_auto_kernel];
    }
    return kernel >= 0 && kernel < KERNEL_COUNT ? g_kernels[kernel] : NULL;
}

/* Scores n rows of x (row-major, num_features columns) into out (n x num_outputs). Returns 0, or
   -1 when scratch memory could not be allocated. Runs without the GIL. */
static int score_rows(const EnsembleObject *m, scan_fn scan, const double *x, int64_t n,
                      double *out) {
    const size_t nbv = (size_t)m->num_slots * QS_BLOCK;
    uint64_t *bv = (uint64_t *)aligned_alloc(64, ((nbv * sizeof(uint64_t) + 63) / 64) * 64 + 64);
    double *xt = (double *)aligned_alloc(
        64, (((size_t)m->num_features * QS_BLOCK * sizeof(double) + 63) / 64) * 64 + 64);
    if (bv == NULL || xt == NULL) {
        free(bv);
        free(xt);
        return -1;
    }
    for (int64_t r0 = 0; r0 < n; r0 += QS_BLOCK) {
        const int rows = (int)((n - r0) < QS_BLOCK ? (n - r0) : QS_BLOCK);
        const double *xb = x + r0 * m->num_features;
        prepare_block(m, xb, rows, bv, xt);
        scan(m, xt, bv);
        finish_block(m, bv, rows, out + r0 * m->num_outputs);
    }
    free(bv);
    free(xt);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Python type                                                                              */

static void Ensemble_dealloc(EnsembleObject *self) {
    free(self->nodes);
    Py_XDECREF(self->arrays);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Copies `obj` into a new C-contiguous 1-D array of `typenum` owned by `keep`; sets *data and
   *len. Returns 0, or -1 with an exception set. */
static int own_array(PyObject *obj, int typenum, const char *name, void **data, npy_intp *len,
                     PyObject *keep) {
    PyArrayObject *arr = (PyArrayObject *)PyArray_FROMANY(
        obj, typenum, 1, 1, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_ENSURECOPY);
    if (arr == NULL) {
        PyErr_Format(PyExc_ValueError, "Ensemble: %s must be a 1-D array of the right dtype",
                     name);
        return -1;
    }
    if (PyList_Append(keep, (PyObject *)arr) < 0) {
        Py_DECREF(arr);
        return -1;
    }
    *len = PyArray_DIM(arr, 0);
    *data = PyArray_DATA(arr);
    Py_DECREF(arr); /* `keep` holds it */
    return 0;
}

static int check_offsets(const int64_t *off, npy_intp off_len, int64_t nf, npy_intp items,
                         const char *name) {
    if (off_len != nf + 1 || off[0] != 0 || off[nf] != items) {
        PyErr_Format(PyExc_ValueError, "Ensemble: %s must have num_features + 1 entries from 0 "
                                       "to the item count", name);
        return -1;
    }
    for (int64_t f = 0; f < nf; ++f) {
        if (off[f + 1] < off[f]) {
            PyErr_Format(PyExc_ValueError, "Ensemble: %s must be non-decreasing", name);
            return -1;
        }
    }
    return 0;
}

static int check_trees(const uint32_t *tree, npy_intp n, int64_t num_slots, const char *name) {
    for (npy_intp i = 0; i < n; ++i) {
        if ((int64_t)tree[i] >= num_slots) {
            PyErr_Format(PyExc_ValueError, "Ensemble: %s holds a tree index out of range", name);
            return -1;
        }
    }
    return 0;
}

static PyObject *Ensemble_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"num_features", "num_trees", "num_outputs", "words", "average_output",
                             "num_off", "num_thr", "num_tree", "num_mask",
                             "nan_off", "nan_tree", "nan_mask",
                             "zero_off", "zero_tree", "zero_mask",
                             "cat_off", "cat_tree", "cat_mask", "cat_bits_off", "cat_bits",
                             "leaf_value", "scan_zero", NULL};
    long long nf, nt, K, W;
    int avg;
    PyObject *o[17];
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "LLLLpOOOOOOOOOOOOOOOOO", kwlist, &nf, &nt, &K,
                                     &W, &avg, &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6],
                                     &o[7], &o[8], &o[9], &o[10], &o[11], &o[12], &o[13],
                                     &o[14], &o[15], &o[16])) {
        return NULL;
    }
    if (nf < 1 || nt < 1 || K < 1 || nt % K != 0 || W < 1 || W > 64 || nt * W > (1LL << 28) ||
        nf > (1LL << 31)) {
        PyErr_SetString(PyExc_ValueError,
                        "Ensemble: need num_features >= 1, num_trees >= 1, num_trees a "
                        "multiple of num_outputs, and 1 <= words <= 64");
        return NULL;
    }
    PyObject *keep = PyList_New(0);
    if (keep == NULL) {
        return NULL;
    }
    EnsembleObject *self = (EnsembleObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(keep);
        return NULL;
    }
    self->num_features = nf;
    self->num_trees = nt;
    self->num_outputs = K;
    self->num_iterations = nt / K;
    self->words = W;
    self->num_slots = nt * W;
    self->average_output = avg;
    npy_intp len[17];
    void *p[17];
    static const int types[17] = {NPY_INT64, NPY_DOUBLE, NPY_UINT32, NPY_UINT64,
                                  NPY_INT64, NPY_UINT32, NPY_UINT64,
                                  NPY_INT64, NPY_UINT32, NPY_UINT64,
                                  NPY_INT64, NPY_UINT32, NPY_UINT64, NPY_INT64, NPY_UINT32,
                                  NPY_DOUBLE, NPY_UINT8};
    for (int i = 0; i < 17; ++i) {
        if (own_array(o[i], types[i], kwlist[i + 4], &p[i], &len[i], keep) < 0) {
            goto fail;
        }
    }
    self->num_off = p[0];
    self->num_thr = p[1];
    self->num_tree = p[2];
    self->num_mask = p[3];
    self->nan_off = p[4];
    self->nan_tree = p[5];
    self->nan_mask = p[6];
    self->zero_off = p[7];
    self->zero_tree = p[8];
    self->zero_mask = p[9];
    self->cat_off = p[10];
    self->cat_tree = p[11];
    self->cat_mask = p[12];
    self->cat_bits_off = p[13];
    self->cat_bits = p[14];
    self->leaf_value = p[15];
    self->scan_zero = p[16];

    /* Structural checks: everything the kernel indexes must be in bounds. */
    if (len[1] != len[2] || len[1] != len[3] || len[5] != len[6] || len[8] != len[9] ||
        len[11] != len[12] || len[13] != len[11] + 1 || len[15] != nt * W * QS_WORD ||
        len[16] != nf) {
        PyErr_SetString(PyExc_ValueError, "Ensemble: array lengths do not match");
        goto fail;
    }
    if (len[0] < 2 || (len[0] - 1) % nf != 0) {
        PyErr_SetString(PyExc_ValueError,
                        "Ensemble: num_off must have a multiple of num_features, plus one, entries");
        goto fail;
    }
    self->num_segments = (len[0] - 1);
    if (check_offsets(self->num_off, len[0], self->num_segments, len[1], "num_off") < 0 ||
        check_offsets(self->nan_off, len[4], nf, len[5], "nan_off") < 0 ||
        check_offsets(self->zero_off, len[7], nf, len[8], "zero_off") < 0 ||
        check_offsets(self->cat_off, len[10], nf, len[11], "cat_off") < 0 ||
        check_trees(self->num_tree, len[2], self->num_slots, "num_tree") < 0 ||
        check_trees(self->nan_tree, len[5], self->num_slots, "nan_tree") < 0 ||
        check_trees(self->zero_tree, len[8], self->num_slots, "zero_tree") < 0 ||
        check_trees(self->cat_tree, len[11], self->num_slots, "cat_tree") < 0) {
        goto fail;
    }
    if (self->cat_bits_off[0] != 0 || self->cat_bits_off[len[11]] != len[14]) {
        PyErr_SetString(PyExc_ValueError, "Ensemble: cat_bits_off must run from 0 to the "
                                          "bitset length");
        goto fail;
    }
    for (npy_intp j = 0; j < len[11]; ++j) {
        if (self->cat_bits_off[j + 1] < self->cat_bits_off[j]) {
            PyErr_SetString(PyExc_ValueError, "Ensemble: cat_bits_off must be non-decreasing");
            goto fail;
        }
    }
    /* Every numerical segment is non-empty and ends with the +inf sentinel that stops scans. */
    for (int64_t sg = 0; sg < self->num_segments; ++sg) {
        if (self->num_off[sg + 1] == self->num_off[sg] ||
            self->num_thr[self->num_off[sg + 1] - 1] != INFINITY) {
            PyErr_SetString(PyExc_ValueError,
                            "Ensemble: each segment's thresholds must end with +inf");
            goto fail;
        }
        for (int64_t i = self->num_off[sg]; i < self->num_off[sg + 1] - 1; ++i) {
            if (isnan(self->num_thr[i])) {
                PyErr_SetString(PyExc_ValueError, "Ensemble: thresholds must not be NaN");
                goto fail;
            }
        }
    }
    self->nodes = (qs_node *)malloc(((size_t)len[1] + 1) * sizeof(qs_node));
    if (self->nodes == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (npy_intp i = 0; i < len[1]; ++i) {
        self->nodes[i].thr = self->num_thr[i];
        self->nodes[i].mask = self->num_mask[i];
        self->nodes[i].bv_off = (uint64_t)self->num_tree[i] * QS_BLOCK;
    }
    /* feature_kind, computed here so it always agrees with the offsets. */
    {
        PyObject *kind = PyArray_ZEROS(1, (npy_intp[]){(npy_intp)nf}, NPY_UINT8, 0);
        if (kind == NULL || PyList_Append(keep, kind) < 0) {
            Py_XDECREF(kind);
            goto fail;
        }
        Py_DECREF(kind);
        uint8_t *k = PyArray_DATA((PyArrayObject *)kind);
        for (int64_t f = 0; f < nf; ++f) {
            /* A segment holding only the sentinel has no numerical nodes; NaN / zero lists can
               be non-empty only when the feature has numerical nodes. */
            int numeric = self->nan_off[f + 1] > self->nan_off[f] ||
                                self->zero_off[f + 1] > self->zero_off[f];
            for (int64_t sg = f; sg < self->num_segments; sg += nf) {
                numeric |= self->num_off[sg + 1] - self->num_off[sg] > 1;
            }
            const int categorical = self->cat_off[f + 1] > self->cat_off[f];
            k[f] = (uint8_t)(numeric | (categorical << 1));
        }
        self->feature_kind = k;
    }
    self->arrays = PyList_AsTuple(keep);
    Py_DECREF(keep);
    if (self->arrays == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
fail:
    Py_DECREF(keep);
    Py_DECREF(self);
    return NULL;
}

static PyObject *Ensemble_predict(EnsembleObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"matrix", "kernel", NULL};
    PyObject *obj;
    int kernel = KERNEL_AUTO;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|i", kwlist, &obj, &kernel)) {
        return NULL;
    }
    scan_fn scan = select_scan(kernel);
    if (scan == NULL) {
        PyErr_Format(PyExc_ValueError, "kernel %d is not available on this CPU", kernel);
        return NULL;
    }
    if (!PyArray_Check(obj)) {
        PyErr_SetString(PyExc_ValueError, "matrix must be a numpy.ndarray");
        return NULL;
    }
    PyArrayObject *x = (PyArrayObject *)obj;
    if (PyArray_TYPE(x) != NPY_DOUBLE || !PyArray_ISNOTSWAPPED(x)) {
        PyErr_SetString(PyExc_ValueError, "matrix must have dtype float64 (native byte order)");
        return NULL;
    }
    if (PyArray_NDIM(x) != 2) {
        PyErr_Format(PyExc_ValueError, "matrix must be 2-D, got %d dimension(s)",
                     PyArray_NDIM(x));
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(x) || !PyArray_ISALIGNED(x)) {
        PyErr_SetString(PyExc_ValueError, "matrix must be C-contiguous and aligned");
        return NULL;
    }
    const npy_intp n = PyArray_DIM(x, 0);
    if (PyArray_DIM(x, 1) != self->num_features) {
        PyErr_Format(PyExc_ValueError, "matrix has %zd columns; the model has %lld features",
                     (Py_ssize_t)PyArray_DIM(x, 1), (long long)self->num_features);
        return NULL;
    }
    npy_intp dims[2] = {n, (npy_intp)self->num_outputs};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(2, dims, NPY_DOUBLE);
    if (out == NULL) {
        return NULL;
    }
    int rc = 0;
    if (n > 0) {
        Py_INCREF(x); /* keep the input alive while the GIL is released */
        const double *xd = (const double *)PyArray_DATA(x);
        double *od = (double *)PyArray_DATA(out);
        Py_BEGIN_ALLOW_THREADS
        rc = score_rows(self, scan, xd, (int64_t)n, od);
        Py_END_ALLOW_THREADS
        Py_DECREF(x);
    }
    if (rc < 0) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    return (PyObject *)out;
}

static PyObject *Ensemble_get_num_features(EnsembleObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLongLong(self->num_features);
}

static PyObject *Ensemble_get_num_trees(EnsembleObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLongLong(self->num_trees);
}

static PyObject *Ensemble_get_words(EnsembleObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLongLong(self->words);
}

static PyObject *Ensemble_get_num_outputs(EnsembleObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLongLong(self->num_outputs);
}

static PyMethodDef Ensemble_methods[] = {
    {"predict", (PyCFunction)(void (*)(void))Ensemble_predict, METH_VARARGS | METH_KEYWORDS,
     "predict(matrix, kernel=-1) -> float64 array (n, num_outputs)\n\n"
     "Raw scores of a C-contiguous float64 matrix. kernel: -1 best available, 0 scalar, 1 SSE2, "
     "2 AVX2, 3 AVX-512 (see available_kernels()). Releases the GIL."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Ensemble_getset[] = {
    {"num_features", (getter)Ensemble_get_num_features, NULL, NULL, NULL},
    {"num_trees", (getter)Ensemble_get_num_trees, NULL, NULL, NULL},
    {"num_outputs", (getter)Ensemble_get_num_outputs, NULL, NULL, NULL},
    {"words", (getter)Ensemble_get_words, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject EnsembleType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ranking.scoring._quickscorer.Ensemble",
    .tp_basicsize = sizeof(EnsembleObject),
    .tp_itemsize = 0,
    .tp_dealloc = (destructor)Ensemble_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An immutable QuickScorer ensemble built by ranking.scoring.quickscorer.",
    .tp_methods = Ensemble_methods,
    .tp_getset = Ensemble_getset,
    .tp_new = Ensemble_new,
};

static PyObject *available_kernels(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    PyObject *names = PyDict_New();
    if (names == NULL) {
        return NULL;
    }
    for (int k = 0; k < KERNEL_COUNT; ++k) {
        if (g_kernels[k] == NULL) {
            continue;
        }
        PyObject *v = PyLong_FromLong(k);
        if (v == NULL || PyDict_SetItemString(names, kernel_names[k], v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(names);
            return NULL;
        }
        Py_DECREF(v);
    }
    return names;
}

static PyObject *auto_kernel(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    return PyUnicode_FromString(kernel_names[g_auto_kernel]);
}

static PyMethodDef module_methods[] = {
    {"available_kernels", available_kernels, METH_NOARGS,
     "available_kernels() -> dict name -> kernel id usable on this CPU"},
    {"auto_kernel", auto_kernel, METH_NOARGS, "auto_kernel() -> name of the kernel used by "
                                              "default"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef quickscorer_module = {
    PyModuleDef_HEAD_INIT, "_quickscorer",
    "QuickScorer kernel for exact LightGBM raw scores; see ranking/scoring/README.md.", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__quickscorer(void) {
    import_array();
    detect_kernels();
    if (PyType_Ready(&EnsembleType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&quickscorer_module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&EnsembleType);
    if (PyModule_AddObject(m, "Ensemble", (PyObject *)&EnsembleType) < 0) {
        Py_DECREF(&EnsembleType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "KERNEL_AUTO", KERNEL_AUTO);
    PyModule_AddIntConstant(m, "KERNEL_SCALAR", KERNEL_SCALAR);
    PyModule_AddIntConstant(m, "KERNEL_SSE2", KERNEL_SSE2);
    PyModule_AddIntConstant(m, "KERNEL_AVX2", KERNEL_AVX2);
    PyModule_AddIntConstant(m, "KERNEL_AVX512", KERNEL_AVX512);
    return m;
}
