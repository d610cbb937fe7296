/*
 * Rank kernel: exact LightGBM raw scores, 64 documents per pass, SIMD across documents.
 *
 * Read ranking/scoring/README.md ("The rank kernel") first. In short, this is QuickScorer
 * (Lucchese et al., SIGIR 2015) vectorized across documents (vQS, SIGIR 2016) with two ideas of
 * RapidScorer (Ye et al., KDD 2018) and rank-indexed thresholds:
 *
 *   - Ranks. Each feature's distinct thresholds are sorted once at build time. Each document's
 *     value is binned once per call: rank = number of distinct thresholds < x (a branchless binary
 *     search over doubles, so exact). A numerical node with threshold index j is false (sends the
 *     document right) exactly when rank > j: one unsigned byte compare, 64 documents at a time.
 *   - Merged equal nodes. All nodes of a tree block with the same (feature, threshold) form one
 *     group: one compare for the group, then each node's leaf mask is applied.
 *   - Byte-transposed leaf vectors. Each tree's leaf bitvector (one bit per leaf, left to right)
 *     is stored as ceil(leaves / 8) byte vectors of 64 documents each: byte b of the bitvector
 *     of document d is at bv[(tree_vec + b) * 64 + d]. A node clears the leaves of its left
 *     subtree, a contiguous bit range, so it touches only the one to few bytes that range spans
 *     ("epitome"): one 64-byte AND per byte for 64 documents, instead of one 64-bit AND per
 *     document.
 *   - Tree blocks. Trees are processed in blocks whose byte vectors fit in L1 (quickscorer.py
 *     sizes them); each block starts all ones, applies its false nodes, then finds every tree's
 *     exit leaf (lowest set bit) for the 64 documents and adds the leaf values.
 *
 * NaN and zero values whose decisions cannot be expressed as a rank (missing type NaN / Zero with
 * per-node default directions) and categorical nodes are applied per document from precomputed
 * lists, exactly as the QuickScorer kernel does; AND commutes, so the order does not matter.
 *
 * Exactness: decisions are LightGBM's (see _quickscorer.c and the README); each document's
 * score is the sum of its exit leaves' values in the model's tree order, from 0.0, in float64:
 * every lane of the accumulator vectors is one document, and trees are added in order.
 *
 * Kernels: AVX-512 (F + BW) and AVX2 bodies, compiled with `target` attributes and chosen at run
 * time; the extension itself is compiled for baseline x86-64. On other CPUs this module offers no
 * kernel and quickscorer.py uses the QuickScorer kernels (scalar there).
 *
 * Thread safety: a RankEnsemble is immutable after construction; scratch memory is per call; the
 * GIL is released while scoring. The kernel table is written once, at import.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <numpy/arrayobject.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__) && !defined(QS_PORTABLE)
#define RK_X86 1
#include <immintrin.h>
#else
#define RK_X86 0
#endif

#define RK_LANES 64            /* documents per pass: one byte lane each in a 512-bit vector */
#define RK_KZERO ((double)1e-35f) /* LightGBM's kZeroThreshold */
#define RK_MAX_RANKS 255       /* distinct thresholds per feature: ranks must fit a byte */
#define RK_MAX_PASSES 2        /* passes of 64 rows one sweep over the tree blocks serves */

enum { RK_KERNEL_AVX2 = 0, RK_KERNEL_AVX512 = 1, RK_KERNEL_COUNT = 2 };

/* A numerical node's leaf-mask record: in lanes whose rank > j (the node is false), clear the
   bits `clear` of the byte vector at byte offset `off` (vector index * 64) of the tree block's
   scratch. Bytes are replicated to 4 so that a dword broadcast (a plain load) spreads them. One
   record per byte the node's left subtree spans; equal thresholds sit next to each other, and a
   segment's records ascend in j, so a scan stops at the first record no lane passes. */
typedef struct {
    uint32_t off;
    uint32_t clear4;
    uint32_t j4;  /* j replicated */
    uint32_t jb4; /* (j ^ 0x80) replicated: AVX2 compares signed bytes */
} rk_rec;

typedef struct {
    PyObject_HEAD
    int64_t num_features;
    int64_t num_trees;
    int64_t num_outputs;
    int64_t num_iterations;
    int average_output;
    int64_t num_blocks;
    const int64_t *block_tree; /* [num_blocks + 1]: trees of block b are [block_tree[b], [b+1]) */
    const int64_t *tree_vec;   /* [num_trees + 1]: first byte vector of tree t (global) */
    int64_t max_block_vecs;    /* most byte vectors in one block */
    /* Sorted distinct thresholds of feature f: thr[thr_off[f] .. thr_off[f+1]) (<= 255). */
    const int64_t *thr_off;
    const double *thr;
    /* The same padded with +inf to 256 per feature (owned, 64-byte aligned), and every 16th of
       those (thr_pad[16 i + 15], i < 16) as a first level: a rank is two SIMD compares of 16. */
    double *thr_pad;
    double *pivots;
    uint8_t *zero_rank; /* rank of 0.0 per feature (owned, malloc) */
    const uint8_t *scan_zero; /* bit 0: NaN ranks as 0.0; bit 1: zero ranks as 0.0 */
    uint8_t *kind;            /* bit 0 numerical nodes, bit 1 categorical (owned) */
    uint8_t *has_nan;         /* feature has a NaN list in some block (owned) */
    uint8_t *has_zero;        /* feature has a zero list in some block (owned) */
    /* Records per segment s = block * num_features + f, ascending j: recs[seg_off[s] ..). */
    const int64_t *seg_off;
    rk_rec *recs; /* owned */
    /* Lists per segment for NaN and zero values that do not rank like 0.0: their records are
       applied in the lanes holding such a value (owned copies as rk_rec, j unused). */
    rk_rec *nan_recs;
    rk_rec *zero_recs;
    rk_rec *cat_recs;
    const int64_t *nan_off;
    const uint32_t *nan_vec;
    const uint8_t *nan_clear;
    const int64_t *zero_off;
    const uint32_t *zero_vec;
    const uint8_t *zero_clear;
    /* Categorical nodes per segment; node c clears records [cnode_rec[c], cnode_rec[c+1]) when
       false; its bitset is cat_bits[cat_bits_off[c] .. cat_bits_off[c+1]). */
    const int64_t *cat_off;
    const int64_t *cnode_rec;
    const uint32_t *cat_vec;
    const uint8_t *cat_clear;
    const int64_t *cat_bits_off;
    const uint32_t *cat_bits;
    /* Leaf values in bit order: tree t's leaf bit i at leaf_value[tree_vec[t] * 8 + i]. */
    const double *leaf_value;
    PyObject *arrays; /* tuple keeping the owned array copies alive */
} RankEnsembleObject;

/* ---------------------------------------------------------------------------------------- */
/* Shared scalar parts: binning, per-document lists                                         */

static inline int is_zero(double x) { return x >= -RK_KZERO && x <= RK_KZERO; }

/* Number of thresholds < x in the sorted array t[0..n) (construction only). */
static inline uint8_t rank_of(const double *t, int64_t n, double x) {
    if (n == 0) {
        return 0;
    }
    const double *base = t;
    while (n > 1) {
        const int64_t half = n / 2;
        base = (base[half] < x) ? base + half : base;
        n -= half;
    }
    return (uint8_t)((base - t) + (*base < x));
}

/* LightGBM CategoricalDecision (see _quickscorer.c). */
static inline int cat_goes_left(double x, const uint32_t *bits, int64_t nwords) {
    if (isnan(x) || x <= -1.0 || x >= 2147483648.0) {
        return 0;
    }
    int32_t pos = (int32_t)x;
    if (pos < 0) {
        return 0;
    }
    int64_t word = pos / 32;
    if (word >= nwords) {
        return 0;
    }
    return (int)((bits[word] >> (pos % 32)) & 1u);
}

/* Scratch of one call; nothing is shared between calls. */
typedef struct {
    uint8_t *bv;      /* max_block_vecs * 64 bytes */
    uint8_t *ranks;   /* num_features * 64: ranks[f * 64 + lane] */
    /* Lane masks (0xFF bytes) of the lanes whose value takes feature f's NaN or zero list, and
       the features that have any such lane in this pass; features with categorical nodes. */
    uint8_t *nan_lanes;
    uint8_t *zero_lanes;
    int64_t *nan_feats;
    int64_t *zero_feats;
    int64_t *cat_feats;
    int64_t n_nan, n_zero, n_cat;
    uint8_t *cat_false; /* 64: lanes where one categorical node is false */
    double *acc;      /* num_outputs * 64 */
    double *last_v;   /* per feature: last value binned, and its rank (equal values repeat a lot:
                         a request's user and context features are the same on every row) */
    uint8_t *last_r;
    uint8_t *leaf_idx; /* 64 */
} rk_scratch;

/* Bins a block of rows: ranks, and the lanes that take a NaN or zero list. Lanes past `rows`
   keep rank 0 (no false node) and take no list. One body per ISA (RANK is the rank search it
   inlines). */
#define RK_BIN_BODY(RANK)                                                                        \
    const int64_t nf = m->num_features;                                                          \
    memset(s->ranks, 0, (size_t)nf * RK_LANES);                                                  \
    for (int64_t i = 0; i < s->n_nan; ++i) {                                                     \
        memset(s->nan_lanes + s->nan_feats[i] * RK_LANES, 0, RK_LANES);                          \
    }                                                                                            \
    for (int64_t i = 0; i < s->n_zero; ++i) {                                                    \
        memset(s->zero_lanes + s->zero_feats[i] * RK_LANES, 0, RK_LANES);                        \
    }                                                                                            \
    s->n_nan = s->n_zero = s->n_cat = 0;                                                         \
    /* Feature by feature, so that the feature's thresholds stay in L1 across the lanes. */     \
    for (int64_t f = 0; f < nf; ++f) {                                                           \
        const uint8_t kind = m->kind[f];                                                         \
        if (kind == 0) {                                                                         \
            continue;                                                                            \
        }                                                                                        \
        if (kind & 2) {                                                                          \
            s->cat_feats[s->n_cat++] = f;                                                        \
        }                                                                                        \
        int nan_seen = 0, zero_seen = 0;                                                         \
        for (int lane = 0; lane < rows; ++lane) {                                                \
            const double v = x[(int64_t)lane * nf + f];                                          \
            if (kind & 1) {                                                                      \
                uint8_t r;                                                                       \
                if (v == s->last_v[f]) {                                                         \
                    r = s->last_r[f]; /* only ordinary values are remembered */                 \
                } else if (isnan(v)) {                                                           \
                    if (m->scan_zero[f] & 1) {                                                   \
                        r = m->zero_rank[f];                                                     \
                    } else {                                                                     \
                        r = 0;                                                                   \
                        if (m->has_nan[f]) {                                                     \
                            s->nan_lanes[f * RK_LANES + lane] = 0xFF;                            \
                            if (!nan_seen) {                                                     \
                                nan_seen = 1;                                                    \
                                s->nan_feats[s->n_nan++] = f;                                    \
                            }                                                                    \
                        }                                                                        \
                    }                                                                            \
                } else if (is_zero(v)) {                                                         \
                    if (m->scan_zero[f] & 2) {                                                   \
                        r = m->zero_rank[f];                                                     \
                    } else {                                                                     \
                        r = 0;                                                                   \
                        if (m->has_zero[f]) {                                                    \
                            s->zero_lanes[f * RK_LANES + lane] = 0xFF;                           \
                            if (!zero_seen) {                                                    \
                                zero_seen = 1;                                                   \
                                s->zero_feats[s->n_zero++] = f;                                  \
                            }                                                                    \
                        }                                                                        \
                    }                                                                            \
                } else {                                                                         \
                    r = RANK(m, f, v);                                                           \
                    s->last_v[f] = v;                                                            \
                    s->last_r[f] = r;                                                            \
                }                                                                                \
                s->ranks[f * RK_LANES + lane] = r;                                               \
            }                                                                                    \
        }                                                                                        \
    }

/* Lanes (0xFF bytes) where categorical node c is false, from the rows' values. */
static inline void cat_false_lanes(const RankEnsembleObject *m, int64_t c, int64_t f,
                                   const double *x, int rows, uint8_t *out) {
    const int64_t nf = m->num_features;
    const int64_t b0 = m->cat_bits_off[c];
    const int64_t nw = m->cat_bits_off[c + 1] - b0;
    memset(out, 0, RK_LANES);
    for (int lane = 0; lane < rows; ++lane) {
        double v = x[(int64_t)lane * nf + f];
        if (is_zero(v)) {
            v = 0.0; /* LightGBM's dense path zeroes |x| <= 1e-35 first */
        }
        out[lane] = cat_goes_left(v, m->cat_bits + b0, nw) ? 0 : 0xFF;
    }
}

/* Sets the block's byte vectors to all ones and applies the NaN / zero lists and the false
   categorical nodes in their lanes (APPLY(recs, begin, end, lanes) is the ISA's masked AND). */
#define RK_START_BODY(APPLY)                                                                     \
    const int64_t nf = m->num_features;                                                          \
    const int64_t nvecs = m->tree_vec[m->block_tree[b + 1]] - m->tree_vec[m->block_tree[b]];     \
    memset(s->bv, 0xFF, (size_t)nvecs * RK_LANES);                                               \
    for (int64_t i = 0; i < s->n_nan; ++i) {                                                     \
        const int64_t f = s->nan_feats[i], sg = b * nf + f;                                      \
        APPLY(s, m->nan_recs, m->nan_off[sg], m->nan_off[sg + 1], s->nan_lanes + f * RK_LANES);  \
    }                                                                                            \
    for (int64_t i = 0; i < s->n_zero; ++i) {                                                    \
        const int64_t f = s->zero_feats[i], sg = b * nf + f;                                     \
        APPLY(s, m->zero_recs, m->zero_off[sg], m->zero_off[sg + 1],                             \
              s->zero_lanes + f * RK_LANES);                                                     \
    }                                                                                            \
    for (int64_t i = 0; i < s->n_cat; ++i) {                                                     \
        const int64_t f = s->cat_feats[i], sg = b * nf + f;                                      \
        for (int64_t c = m->cat_off[sg]; c < m->cat_off[sg + 1]; ++c) {                          \
            cat_false_lanes(m, c, f, x, rows, s->cat_false);                                     \
            APPLY(s, m->cat_recs, m->cnode_rec[c], m->cnode_rec[c + 1], s->cat_false);           \
        }                                                                                        \
    }

/* ctz of a byte by nibble tables: min(ctz_lo[v & 15], ctz_hi[v >> 4]), 8 for v == 0. The
   tables repeat per 128-bit lane, as (v)pshufb looks up within lanes. */
#define RK_CTZ_LO 8, 0, 1, 0, 2, 0, 1, 0, 3, 0, 1, 0, 2, 0, 1, 0
#define RK_CTZ_HI 8, 4, 5, 4, 6, 4, 5, 4, 7, 4, 5, 4, 6, 4, 5, 4
static const uint8_t rk_ctz_lo[64] __attribute__((aligned(64))) = {RK_CTZ_LO, RK_CTZ_LO, RK_CTZ_LO,
                                                                  RK_CTZ_LO};
static const uint8_t rk_ctz_hi[64] __attribute__((aligned(64))) = {RK_CTZ_HI, RK_CTZ_HI, RK_CTZ_HI,
                                                                  RK_CTZ_HI};

#if RK_X86
/* ---------------------------------------------------------------------------------------- */
/* AVX-512 (F + BW): the 64 documents of a pass in one 512-bit vector of bytes              */

/* Rank of ordinary x: the pivots below x pick the run of 16 thresholds that holds the rank,
   and the thresholds of that run below x finish it (both exact double compares). */
__attribute__((target("avx512f,avx512bw,popcnt"))) static inline uint8_t
rank_avx512(const RankEnsembleObject *m, int64_t f, double v) {
    const __m512d xv = _mm512_set1_pd(v);
    const double *pv = m->pivots + f * 16;
    const uint32_t c1 = (uint32_t)__builtin_popcount(
        (uint32_t)_mm512_cmp_pd_mask(_mm512_load_pd(pv), xv, _CMP_LT_OQ) |
        ((uint32_t)_mm512_cmp_pd_mask(_mm512_load_pd(pv + 8), xv, _CMP_LT_OQ) << 8));
    const double *tb = m->thr_pad + f * 256 + 16 * c1;
    const uint32_t c2 = (uint32_t)__builtin_popcount(
        (uint32_t)_mm512_cmp_pd_mask(_mm512_load_pd(tb), xv, _CMP_LT_OQ) |
        ((uint32_t)_mm512_cmp_pd_mask(_mm512_load_pd(tb + 8), xv, _CMP_LT_OQ) << 8));
    return (uint8_t)(16 * c1 + c2);
}

__attribute__((target("avx512f,avx512bw,popcnt"))) static void
bin_block_avx512(const RankEnsembleObject *m, const double *x, int rows, rk_scratch *s) {
    RK_BIN_BODY(rank_avx512)
}

/* The records of block b applied to np passes (1 or 2; a constant where this is inlined, so
   each count gets its own loop). With two, each record is loaded and its j and clear bytes
   broadcast once for both passes, and their read-modify-writes are independent. */
__attribute__((target("avx512f,avx512bw"), always_inline)) static inline void
scan_avx512(const RankEnsembleObject *m, int64_t b, rk_scratch *const *sp, int np) {
    const int64_t nf = m->num_features;
    uint8_t *bv0 = sp[0]->bv, *bv1 = np > 1 ? sp[1]->bv : NULL;
    for (int64_t f = 0; f < nf; ++f) {
        const int64_t sg = b * nf + f;
        const rk_rec *rp = m->recs + m->seg_off[sg];
        const rk_rec *re = m->recs + m->seg_off[sg + 1];
        if (rp == re) {
            continue;
        }
        const __m512i r0 = _mm512_loadu_si512(sp[0]->ranks + f * RK_LANES);
        const __m512i r1 = np > 1 ? _mm512_loadu_si512(sp[1]->ranks + f * RK_LANES) : r0;
        for (; rp < re; ++rp) {
            const __m512i j = _mm512_set1_epi32((int)rp->j4);
            const __mmask64 k0 = _mm512_cmpgt_epu8_mask(r0, j);
            const __mmask64 k1 = np > 1 ? _mm512_cmpgt_epu8_mask(r1, j) : 0;
            if ((k0 | k1) == 0) {
                break; /* j ascends: no lane is false for this node or any later one */
            }
            /* lanes where the node is false lose its left leaves; both loads come before both
               stores (the compiler may not reorder them: byte stores may alias) */
            const __m512i clear = _mm512_set1_epi32((int)rp->clear4);
            uint8_t *p0 = bv0 + rp->off;
            uint8_t *p1 = np > 1 ? bv1 + rp->off : NULL;
            const __m512i c0 = _mm512_loadu_si512(p0);
            const __m512i c1 = np > 1 ? _mm512_loadu_si512(p1) : c0;
            _mm512_storeu_si512(p0, _mm512_mask_mov_epi8(c0, k0, _mm512_andnot_si512(clear, c0)));
            if (np > 1) {
                _mm512_storeu_si512(p1,
                                    _mm512_mask_mov_epi8(c1, k1, _mm512_andnot_si512(clear, c1)));
            }
        }
    }
}

/* recs[begin, end) cleared in the lanes whose byte in `lanes` is 0xFF. */
__attribute__((target("avx512f,avx512bw"))) static inline void
apply_avx512(const rk_scratch *s, const rk_rec *recs, int64_t begin, int64_t end,
             const uint8_t *lanes) {
    const __m512i kv = _mm512_loadu_si512(lanes);
    for (int64_t r = begin; r < end; ++r) {
        uint8_t *p = s->bv + recs[r].off;
        const __m512i cur = _mm512_loadu_si512(p);
        _mm512_storeu_si512(p, _mm512_ternarylogic_epi32(
                                   cur, kv, _mm512_set1_epi32((int)recs[r].clear4), 0x70));
    }
}

/* Exit leaf of every lane of one tree: the lowest set bit over its nb byte vectors. */
__attribute__((target("avx512f,avx512bw"))) static inline void
exit_leaves_avx512(const uint8_t *bvt, int64_t nb, uint8_t *idx) {
    __m512i sel = _mm512_setzero_si512();
    __m512i boff = _mm512_setzero_si512();
    for (int64_t w = nb - 1; w >= 0; --w) {
        const __m512i v = _mm512_loadu_si512(bvt + w * RK_LANES);
        const __mmask64 nz = _mm512_test_epi8_mask(v, v);
        sel = _mm512_mask_mov_epi8(sel, nz, v);
        boff = _mm512_mask_mov_epi8(boff, nz, _mm512_set1_epi8((char)(8 * w)));
    }
    const __m512i nib = _mm512_set1_epi8(0x0F);
    const __m512i lo = _mm512_shuffle_epi8(_mm512_load_si512(rk_ctz_lo), _mm512_and_si512(sel, nib));
    const __m512i hi = _mm512_shuffle_epi8(_mm512_load_si512(rk_ctz_hi),
                                           _mm512_and_si512(_mm512_srli_epi16(sel, 4), nib));
    /* A consistent mask set never clears the exit leaf; the min keeps even an inconsistent one
       inside the tree's leaf slots. */
    const __m512i leaf = _mm512_min_epu8(_mm512_add_epi8(boff, _mm512_min_epu8(lo, hi)),
                                         _mm512_set1_epi8((char)(8 * nb - 1)));
    _mm512_storeu_si512(idx, leaf);
}

__attribute__((target("avx512f,avx512bw"))) static inline void
add_leaves_avx512(const double *leaf, const uint8_t *idx, int rows, double *acc) {
    for (int g = 0; g < rows; g += 8) {
        const __m512i iv = _mm512_cvtepu8_epi64(_mm_loadl_epi64((const __m128i *)(idx + g)));
        const __m512d v = _mm512_i64gather_pd(iv, leaf, 8);
        _mm512_storeu_pd(acc + g, _mm512_add_pd(_mm512_loadu_pd(acc + g), v));
    }
}

/* ---------------------------------------------------------------------------------------- */
/* AVX2: the same with two 256-bit halves; signed byte compares on ranks biased by 0x80       */

static inline uint32_t lt_mask16_avx2(const double *t, __m256d xv)
    __attribute__((target("avx2")));
static inline uint32_t lt_mask16_avx2(const double *t, __m256d xv) {
    uint32_t bits = 0;
    for (int q = 0; q < 4; ++q) {
        bits |= (uint32_t)_mm256_movemask_pd(_mm256_cmp_pd(_mm256_load_pd(t + 4 * q), xv,
                                                           _CMP_LT_OQ))
                << (4 * q);
    }
    return bits;
}

__attribute__((target("avx2,popcnt"))) static inline uint8_t
rank_avx2(const RankEnsembleObject *m, int64_t f, double v) {
    const __m256d xv = _mm256_set1_pd(v);
    const uint32_t c1 = (uint32_t)__builtin_popcount(lt_mask16_avx2(m->pivots + f * 16, xv));
    const uint32_t c2 =
        (uint32_t)__builtin_popcount(lt_mask16_avx2(m->thr_pad + f * 256 + 16 * c1, xv));
    return (uint8_t)(16 * c1 + c2);
}

__attribute__((target("avx2,popcnt"))) static void
bin_block_avx2(const RankEnsembleObject *m, const double *x, int rows, rk_scratch *s) {
    RK_BIN_BODY(rank_avx2)
}

/* AVX2 has one pass per sweep (np is 1): a pass is already two 256-bit halves. */
__attribute__((target("avx2"))) static inline void scan_avx2(const RankEnsembleObject *m,
                                                             int64_t b, rk_scratch *const *sp,
                                                             int np) {
    (void)np;
    const rk_scratch *s = sp[0];
    const int64_t nf = m->num_features;
    uint8_t *bv = s->bv;
    const __m256i bias = _mm256_set1_epi8((char)0x80);
    for (int64_t f = 0; f < nf; ++f) {
        const int64_t sg = b * nf + f;
        const rk_rec *rp = m->recs + m->seg_off[sg];
        const rk_rec *re = m->recs + m->seg_off[sg + 1];
        if (rp == re) {
            continue;
        }
        const uint8_t *rk = s->ranks + f * RK_LANES;
        const __m256i r0 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)rk), bias);
        const __m256i r1 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(rk + 32)), bias);
        for (; rp < re; ++rp) {
            const __m256i j = _mm256_set1_epi32((int)rp->jb4);
            const __m256i c0 = _mm256_cmpgt_epi8(r0, j);
            const __m256i c1 = _mm256_cmpgt_epi8(r1, j);
            const __m256i any = _mm256_or_si256(c0, c1);
            if (_mm256_testz_si256(any, any)) {
                break;
            }
            __m256i *p = (__m256i *)(bv + rp->off);
            const __m256i cl = _mm256_set1_epi32((int)rp->clear4);
            _mm256_storeu_si256(p, _mm256_andnot_si256(_mm256_and_si256(c0, cl),
                                                       _mm256_loadu_si256(p)));
            _mm256_storeu_si256(p + 1, _mm256_andnot_si256(_mm256_and_si256(c1, cl),
                                                           _mm256_loadu_si256(p + 1)));
        }
    }
}

__attribute__((target("avx2"))) static inline void apply_avx2(const rk_scratch *s,
                                                              const rk_rec *recs, int64_t begin,
                                                              int64_t end, const uint8_t *lanes) {
    const __m256i k0 = _mm256_loadu_si256((const __m256i *)lanes);
    const __m256i k1 = _mm256_loadu_si256((const __m256i *)(lanes + 32));
    for (int64_t r = begin; r < end; ++r) {
        __m256i *p = (__m256i *)(s->bv + recs[r].off);
        const __m256i cl = _mm256_set1_epi32((int)recs[r].clear4);
        _mm256_storeu_si256(p, _mm256_andnot_si256(_mm256_and_si256(k0, cl), _mm256_loadu_si256(p)));
        _mm256_storeu_si256(p + 1, _mm256_andnot_si256(_mm256_and_si256(k1, cl),
                                                       _mm256_loadu_si256(p + 1)));
    }
}

__attribute__((target("avx2"))) static inline void exit_leaves_avx2(const uint8_t *bvt, int64_t nb,
                                                             uint8_t *idx) {
    const __m256i zero = _mm256_setzero_si256();
    const __m256i nib = _mm256_set1_epi8(0x0F);
    const __m256i lo_tab = _mm256_load_si256((const __m256i *)rk_ctz_lo);
    const __m256i hi_tab = _mm256_load_si256((const __m256i *)rk_ctz_hi);
    const __m256i top = _mm256_set1_epi8((char)(8 * nb - 1));
    for (int h = 0; h < 2; ++h) {
        __m256i sel = zero;
        __m256i boff = zero;
        for (int64_t w = nb - 1; w >= 0; --w) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(bvt + w * RK_LANES + 32 * h));
            const __m256i isz = _mm256_cmpeq_epi8(v, zero);
            sel = _mm256_blendv_epi8(v, sel, isz);
            boff = _mm256_blendv_epi8(_mm256_set1_epi8((char)(8 * w)), boff, isz);
        }
        const __m256i lo = _mm256_shuffle_epi8(lo_tab, _mm256_and_si256(sel, nib));
        const __m256i hi = _mm256_shuffle_epi8(hi_tab,
                                               _mm256_and_si256(_mm256_srli_epi16(sel, 4), nib));
        const __m256i leaf = _mm256_min_epu8(_mm256_add_epi8(boff, _mm256_min_epu8(lo, hi)), top);
        _mm256_storeu_si256((__m256i *)(idx + 32 * h), leaf);
    }
}

__attribute__((target("avx2"))) static inline void add_leaves_avx2(const double *leaf, const uint8_t *idx,
                                                            int rows, double *acc) {
    for (int g = 0; g < rows; g += 4) {
        int32_t four;
        memcpy(&four, idx + g, 4);
        const __m256i iv = _mm256_cvtepu8_epi64(_mm_cvtsi32_si128(four));
        const __m256d v = _mm256_i64gather_pd(leaf, iv, 8);
        _mm256_storeu_pd(acc + g, _mm256_add_pd(_mm256_loadu_pd(acc + g), v));
    }
}
/* One tree block for np passes (1 or 2, a constant): each pass's vectors started (START, an
   inline wrapper of RK_START_BODY), one scan of the block's records for all of them, then every
   tree's exit leaves per pass in model order (tree t adds to output t % K, as GBDT::PredictRaw
   does). One body per ISA and pass count so that the helpers inline into it. */
#define RK_BLOCK_BODY(START, SCAN, EXIT, ADD, NP)                                                \
    for (int q = 0; q < (NP); ++q) {                                                             \
        START(m, b, xp[q], sp[q], rows[q]);                                                      \
    }                                                                                            \
    SCAN(m, b, sp, (NP));                                                                        \
    /* Locals, not reloads: the byte stores below may alias any memory, the model's arrays and \
       the pass array included, so the compiler would otherwise read these again per tree. */  \
    const uint8_t *bvq[NP];                                                                      \
    uint8_t *idxq[NP];                                                                           \
    double *accq[NP];                                                                            \
    for (int q = 0; q < (NP); ++q) {                                                             \
        bvq[q] = sp[q]->bv;                                                                      \
        idxq[q] = sp[q]->leaf_idx;                                                               \
        accq[q] = sp[q]->acc;                                                                    \
    }                                                                                            \
    const int64_t *tree_vec = m->tree_vec;                                                       \
    const double *leaf_value = m->leaf_value;                                                    \
    const int64_t t0 = m->block_tree[b], t1 = m->block_tree[b + 1];                              \
    const int64_t base = tree_vec[t0];                                                           \
    const int64_t K = m->num_outputs;                                                            \
    for (int64_t t = t0; t < t1; ++t) {                                                          \
        const int64_t v0 = tree_vec[t];                                                          \
        const int64_t nb = tree_vec[t + 1] - v0;                                                 \
        for (int q = 0; q < (NP); ++q) {                                                         \
            EXIT(bvq[q] + (v0 - base) * RK_LANES, nb, idxq[q]);                                  \
            ADD(leaf_value + v0 * 8, idxq[q], rows[q], accq[q] + (t % K) * RK_LANES);            \
        }                                                                                        \
    }

__attribute__((target("avx512f,avx512bw"))) static inline void
start_avx512(const RankEnsembleObject *m, int64_t b, const double *x, const rk_scratch *s,
             int rows) {
    RK_START_BODY(apply_avx512)
}

__attribute__((target("avx512f,avx512bw"))) static void
block_avx512(const RankEnsembleObject *m, int64_t b, const double *const *xp,
             rk_scratch *const *sp, const int *rows, int np) {
    if (np == 2) {
        RK_BLOCK_BODY(start_avx512, scan_avx512, exit_leaves_avx512, add_leaves_avx512, 2)
    } else {
        RK_BLOCK_BODY(start_avx512, scan_avx512, exit_leaves_avx512, add_leaves_avx512, 1)
    }
}

__attribute__((target("avx2"))) static inline void start_avx2(const RankEnsembleObject *m,
                                                              int64_t b, const double *x,
                                                              const rk_scratch *s, int rows) {
    RK_START_BODY(apply_avx2)
}

__attribute__((target("avx2"))) static void block_avx2(const RankEnsembleObject *m, int64_t b,
                                                       const double *const *xp,
                                                       rk_scratch *const *sp, const int *rows,
                                                       int np) {
    (void)np;
    RK_BLOCK_BODY(start_avx2, scan_avx2, exit_leaves_avx2, add_leaves_avx2, 1)
}
#endif /* RK_X86 */

typedef struct {
    void (*bin)(const RankEnsembleObject *, const double *, int, rk_scratch *);
    /* One tree block for np <= max_passes passes of up to 64 rows each. */
    void (*block)(const RankEnsembleObject *, int64_t, const double *const *, rk_scratch *const *,
                  const int *, int);
    int max_passes;
} rk_kernel;

static const char *const kernel_names[RK_KERNEL_COUNT] = {"rank-avx2", "rank-avx512"};
/* Written once by the module's init, under the import lock, and only read afterwards. */
static rk_kernel g_kernels[RK_KERNEL_COUNT];
static int g_have[RK_KERNEL_COUNT];

static void detect_kernels(void) {
#if RK_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) {
        g_kernels[RK_KERNEL_AVX2] = (rk_kernel){bin_block_avx2, block_avx2, 1};
        g_have[RK_KERNEL_AVX2] = 1;
    }
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) {
        g_kernels[RK_KERNEL_AVX512] = (rk_kernel){bin_block_avx512, block_avx512, RK_MAX_PASSES};
        g_have[RK_KERNEL_AVX512] = 1;
    }
#endif
}

/* Frees what scratch_alloc allocated (NULL pointers included). */
static void scratch_free(rk_scratch *s) {
    free(s->bv);
    free(s->ranks);
    free(s->nan_lanes);
    free(s->zero_lanes);
    free(s->nan_feats);
    free(s->zero_feats);
    free(s->cat_feats);
    free(s->cat_false);
    free(s->acc);
    free(s->last_v);
    free(s->last_r);
    free(s->leaf_idx);
}

/* Scratch for one pass; 0, or -1 when memory could not be allocated (free it either way). */
static int scratch_alloc(const RankEnsembleObject *m, rk_scratch *s) {
    const int64_t nf = m->num_features;
    const int64_t K = m->num_outputs;
    const size_t bv_bytes = (size_t)m->max_block_vecs * RK_LANES;
    s->bv = aligned_alloc(64, bv_bytes + 64);
    s->ranks = aligned_alloc(64, (size_t)nf * RK_LANES + 64);
    s->nan_lanes = calloc((size_t)nf, RK_LANES);
    s->zero_lanes = calloc((size_t)nf, RK_LANES);
    s->nan_feats = malloc(sizeof(int64_t) * (size_t)nf);
    s->zero_feats = malloc(sizeof(int64_t) * (size_t)nf);
    s->cat_feats = malloc(sizeof(int64_t) * (size_t)nf);
    s->cat_false = aligned_alloc(64, 64);
    s->n_nan = s->n_zero = s->n_cat = 0;
    s->acc = aligned_alloc(64, sizeof(double) * (size_t)K * RK_LANES + 64);
    s->last_v = malloc(sizeof(double) * (size_t)nf);
    s->last_r = malloc((size_t)nf);
    s->leaf_idx = aligned_alloc(64, 64);
    if (!s->bv || !s->ranks || !s->nan_lanes || !s->zero_lanes || !s->nan_feats ||
        !s->zero_feats || !s->cat_feats || !s->cat_false || !s->acc || !s->last_v ||
        !s->last_r || !s->leaf_idx) {
        return -1;
    }
    for (int64_t f = 0; f < nf; ++f) {
        s->last_v[f] = NAN; /* never equal to anything */
        s->last_r[f] = 0;
    }
    return 0;
}

/* Bins `rows` rows of x into the pass's scratch and clears its accumulators. */
static void begin_pass(const RankEnsembleObject *m, const rk_kernel *kn, const double *x, int rows,
                       rk_scratch *s) {
    kn->bin(m, x, rows, s);
    memset(s->acc, 0, sizeof(double) * (size_t)m->num_outputs * RK_LANES);
}

/* The pass's scores into out rows r0 .. r0 + rows. */
static void end_pass(const RankEnsembleObject *m, const rk_scratch *s, int64_t r0, int rows,
                     double *out) {
    const int64_t K = m->num_outputs;
    for (int lane = 0; lane < rows; ++lane) {
        for (int64_t k = 0; k < K; ++k) {
            const double a = s->acc[k * RK_LANES + lane];
            out[(r0 + lane) * K + k] = m->average_output ? a / (double)m->num_iterations : a;
        }
    }
}

/* Scores n rows of x into out (n x num_outputs). Returns 0, or -1 when scratch memory could
   not be allocated. Runs without the GIL. Each sweep over the tree blocks serves up to the
   kernel's max_passes passes of up to 64 rows (AVX-512: two, so 200 rows are two sweeps). */
static int score_rows(const RankEnsembleObject *m, const rk_kernel *kn, const double *x,
                      int64_t n, double *out) {
    const int64_t nf = m->num_features;
    const int64_t passes = (n + RK_LANES - 1) / RK_LANES;
    const int np_max = (int)(passes < kn->max_passes ? passes : kn->max_passes);
    rk_scratch s[RK_MAX_PASSES];
    rk_scratch *sp[RK_MAX_PASSES];
    memset(s, 0, sizeof s);
    int rc = 0;
    for (int q = 0; q < np_max; ++q) {
        sp[q] = &s[q];
        if (scratch_alloc(m, &s[q]) < 0) {
            rc = -1;
            goto done;
        }
    }
    for (int64_t r0 = 0; r0 < n;) {
        const double *xp[RK_MAX_PASSES];
        int rows[RK_MAX_PASSES];
        int np = 0;
        int64_t r = r0;
        while (np < np_max && r < n) {
            rows[np] = (int)(n - r < RK_LANES ? n - r : RK_LANES);
            xp[np] = x + r * nf;
            begin_pass(m, kn, xp[np], rows[np], sp[np]);
            r += rows[np++];
        }
        for (int64_t b = 0; b < m->num_blocks; ++b) {
            kn->block(m, b, xp, sp, rows, np);
        }
        for (int q = 0; q < np; ++q) { /* every pass but the last is 64 rows */
            end_pass(m, sp[q], r0 + (int64_t)q * RK_LANES, rows[q], out);
        }
        r0 = r;
    }
done:
    for (int q = 0; q < RK_MAX_PASSES; ++q) {
        scratch_free(&s[q]);
    }
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Python type                                                                              */

static void RankEnsemble_dealloc(RankEnsembleObject *self) {
    free(self->recs);
    free(self->nan_recs);
    free(self->zero_recs);
    free(self->cat_recs);
    free(self->thr_pad);
    free(self->pivots);
    free(self->zero_rank);
    free(self->kind);
    free(self->has_nan);
    free(self->has_zero);
    Py_XDECREF(self->arrays);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Copies `obj` into a new C-contiguous 1-D array of `typenum` owned by `keep`. */
static int own_array(PyObject *obj, int typenum, const char *name, void **data, npy_intp *len,
                     PyObject *keep) {
    PyArrayObject *arr = (PyArrayObject *)PyArray_FROMANY(
        obj, typenum, 1, 1, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_ENSURECOPY);
    if (arr == NULL) {
        PyErr_Format(PyExc_ValueError, "RankEnsemble: %s must be a 1-D array of the right dtype",
                     name);
        return -1;
    }
    if (PyList_Append(keep, (PyObject *)arr) < 0) {
        Py_DECREF(arr);
        return -1;
    }
    *len = PyArray_DIM(arr, 0);
    *data = PyArray_DATA(arr);
    Py_DECREF(arr);
    return 0;
}

/* off has `count + 1` entries, non-decreasing from 0 to `items`. */
static int check_off(const int64_t *off, npy_intp off_len, int64_t count, npy_intp items,
                     const char *name) {
    if (off_len != count + 1 || off[0] != 0 || off[count] != items) {
        PyErr_Format(PyExc_ValueError, "RankEnsemble: %s must have %lld entries from 0 to %lld",
                     name, (long long)(count + 1), (long long)items);
        return -1;
    }
    for (int64_t i = 0; i < count; ++i) {
        if (off[i + 1] < off[i]) {
            PyErr_Format(PyExc_ValueError, "RankEnsemble: %s must be non-decreasing", name);
            return -1;
        }
    }
    return 0;
}

static int fail(const char *msg) {
    PyErr_Format(PyExc_ValueError, "RankEnsemble: %s", msg);
    return -1;
}

/* Every record of segment-indexed list `off` (per block) points inside its block's vectors. */
static int check_vecs(const RankEnsembleObject *m, const int64_t *seg_item_off,
                      const int64_t *item_rec, const uint32_t *vec, const char *name) {
    const int64_t nf = m->num_features;
    for (int64_t b = 0; b < m->num_blocks; ++b) {
        const int64_t nvec = m->tree_vec[m->block_tree[b + 1]] - m->tree_vec[m->block_tree[b]];
        for (int64_t i = seg_item_off[b * nf]; i < seg_item_off[(b + 1) * nf]; ++i) {
            const int64_t r0 = item_rec ? item_rec[i] : i;
            const int64_t r1 = item_rec ? item_rec[i + 1] : i + 1;
            for (int64_t r = r0; r < r1; ++r) {
                if ((int64_t)vec[r] >= nvec) {
                    PyErr_Format(PyExc_ValueError,
                                 "RankEnsemble: %s points outside its tree block", name);
                    return -1;
                }
            }
        }
    }
    return 0;
}

#define RK_NARRAYS 23

static PyObject *RankEnsemble_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"num_features", "num_trees", "num_outputs", "average_output",
                             /* arrays */
                             "block_tree", "tree_vec", "thr_off", "thr", "scan_zero",
                             "seg_off", "rec_rank", "rec_vec", "rec_clear",
                             "nan_off", "nan_vec", "nan_clear",
                             "zero_off", "zero_vec", "zero_clear",
                             "cat_off", "cnode_rec", "cat_vec", "cat_clear",
                             "cat_bits_off", "cat_bits", "leaf_value", NULL};
    static const int types[RK_NARRAYS - 1] = {
        NPY_INT64, NPY_INT64, NPY_INT64, NPY_DOUBLE, NPY_UINT8,           /* block_tree..scan_zero */
        NPY_INT64, NPY_UINT8, NPY_UINT32, NPY_UINT8,                      /* seg_off..rec_clear */
        NPY_INT64, NPY_UINT32, NPY_UINT8, NPY_INT64, NPY_UINT32, NPY_UINT8, /* nan, zero */
        NPY_INT64, NPY_INT64, NPY_UINT32, NPY_UINT8, NPY_INT64, NPY_UINT32, /* cat */
        NPY_DOUBLE};
    enum { A_BLOCK_TREE, A_TREE_VEC, A_THR_OFF, A_THR, A_SCAN_ZERO, A_SEG_OFF, A_REC_RANK,
           A_REC_VEC, A_REC_CLEAR, A_NAN_OFF, A_NAN_VEC, A_NAN_CLEAR, A_ZERO_OFF,
           A_ZERO_VEC, A_ZERO_CLEAR, A_CAT_OFF, A_CNODE_REC, A_CAT_VEC, A_CAT_CLEAR,
           A_CAT_BITS_OFF, A_CAT_BITS, A_LEAF_VALUE, A_COUNT };
    long long nf, nt, K;
    int avg;
    PyObject *o[A_COUNT];
    if (!PyArg_ParseTupleAndKeywords(
            args, kwds, "LLLpOOOOOOOOOOOOOOOOOOOOOO", kwlist, &nf, &nt, &K, &avg, &o[0], &o[1],
            &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8], &o[9], &o[10], &o[11], &o[12],
            &o[13], &o[14], &o[15], &o[16], &o[17], &o[18], &o[19], &o[20], &o[21])) {
        return NULL;
    }
    if (nf < 1 || nt < 1 || K < 1 || nt % K != 0 || nf >= (1LL << 24) || nt >= (1LL << 31)) {
        PyErr_SetString(PyExc_ValueError,
                        "RankEnsemble: need 1 <= num_features < 2^24, num_trees >= 1 and a "
                        "multiple of num_outputs");
        return NULL;
    }
    PyObject *keep = PyList_New(0);
    if (keep == NULL) {
        return NULL;
    }
    RankEnsembleObject *self = (RankEnsembleObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(keep);
        return NULL;
    }
    self->num_features = nf;
    self->num_trees = nt;
    self->num_outputs = K;
    self->num_iterations = nt / K;
    self->average_output = avg;
    void *p[A_COUNT];
    npy_intp len[A_COUNT];
    for (int i = 0; i < A_COUNT; ++i) {
        if (own_array(o[i], types[i], kwlist[i + 4], &p[i], &len[i], keep) < 0) {
            goto error;
        }
    }
    self->block_tree = p[A_BLOCK_TREE];
    self->tree_vec = p[A_TREE_VEC];
    self->thr_off = p[A_THR_OFF];
    self->thr = p[A_THR];
    self->scan_zero = p[A_SCAN_ZERO];
    self->seg_off = p[A_SEG_OFF];
    self->nan_off = p[A_NAN_OFF];
    self->nan_vec = p[A_NAN_VEC];
    self->nan_clear = p[A_NAN_CLEAR];
    self->zero_off = p[A_ZERO_OFF];
    self->zero_vec = p[A_ZERO_VEC];
    self->zero_clear = p[A_ZERO_CLEAR];
    self->cat_off = p[A_CAT_OFF];
    self->cnode_rec = p[A_CNODE_REC];
    self->cat_vec = p[A_CAT_VEC];
    self->cat_clear = p[A_CAT_CLEAR];
    self->cat_bits_off = p[A_CAT_BITS_OFF];
    self->cat_bits = p[A_CAT_BITS];
    self->leaf_value = p[A_LEAF_VALUE];

    /* Trees and blocks: tree_vec strictly increasing (every tree has >= 1 byte vector and at
       most 32, i.e. 256 leaves), blocks partition the trees in order. */
    const int64_t *tv = self->tree_vec;
    if (len[A_TREE_VEC] != nt + 1 || tv[0] != 0) {
        fail("tree_vec must have num_trees + 1 entries from 0");
        goto error;
    }
    for (int64_t t = 0; t < nt; ++t) {
        if (tv[t + 1] - tv[t] < 1 || tv[t + 1] - tv[t] > 32) {
            fail("every tree needs 1 to 32 byte vectors");
            goto error;
        }
    }
    if (len[A_LEAF_VALUE] != tv[nt] * 8) {
        fail("leaf_value must have 8 slots per byte vector");
        goto error;
    }
    self->num_blocks = len[A_BLOCK_TREE] - 1;
    if (self->num_blocks < 1 ||
        check_off(self->block_tree, len[A_BLOCK_TREE], self->num_blocks, (npy_intp)nt,
                  "block_tree") < 0) {
        if (!PyErr_Occurred()) {
            fail("block_tree needs at least one block");
        }
        goto error;
    }
    self->max_block_vecs = 1;
    for (int64_t b = 0; b < self->num_blocks; ++b) {
        if (self->block_tree[b + 1] == self->block_tree[b]) {
            fail("every tree block must hold a tree");
            goto error;
        }
        const int64_t nv = tv[self->block_tree[b + 1]] - tv[self->block_tree[b]];
        if (nv > self->max_block_vecs) {
            self->max_block_vecs = nv;
        }
    }
    /* Thresholds: <= 255 per feature, strictly ascending, not NaN. */
    if (check_off(self->thr_off, len[A_THR_OFF], nf, len[A_THR], "thr_off") < 0 ||
        len[A_SCAN_ZERO] != nf) {
        if (!PyErr_Occurred()) {
            fail("scan_zero must have num_features entries");
        }
        goto error;
    }
    self->zero_rank = malloc((size_t)nf);
    self->thr_pad = aligned_alloc(64, sizeof(double) * 256 * (size_t)nf);
    self->pivots = aligned_alloc(64, sizeof(double) * 16 * (size_t)nf);
    self->kind = calloc((size_t)nf, 1);
    self->has_nan = calloc((size_t)nf, 1);
    self->has_zero = calloc((size_t)nf, 1);
    if (!self->zero_rank || !self->thr_pad || !self->pivots || !self->kind || !self->has_nan || !self->has_zero) {
        PyErr_NoMemory();
        goto error;
    }
    for (int64_t f = 0; f < nf; ++f) {
        const int64_t a = self->thr_off[f], z = self->thr_off[f + 1];
        if (z - a > RK_MAX_RANKS) {
            fail("a feature has more than 255 distinct thresholds");
            goto error;
        }
        for (int64_t i = a; i < z; ++i) {
            if (isnan(self->thr[i]) || (i > a && !(self->thr[i - 1] < self->thr[i]))) {
                fail("thresholds must be strictly ascending per feature");
                goto error;
            }
        }
        self->zero_rank[f] = rank_of(self->thr + a, z - a, 0.0);
        for (int64_t i = 0; i < 256; ++i) {
            self->thr_pad[f * 256 + i] = i < z - a ? self->thr[a + i] : INFINITY;
        }
        for (int64_t i = 0; i < 16; ++i) {
            self->pivots[f * 16 + i] = self->thr_pad[f * 256 + 16 * i + 15];
        }
    }
    const int64_t nseg = self->num_blocks * nf;
    /* Numerical records, per segment ascending in j. */
    const npy_intp R = len[A_REC_VEC];
    if (R >= (npy_intp)(UINT32_MAX / RK_LANES) || len[A_REC_CLEAR] != R ||
        len[A_REC_RANK] != R ||
        check_off(self->seg_off, len[A_SEG_OFF], nseg, R, "seg_off") < 0 ||
        check_vecs(self, self->seg_off, NULL, p[A_REC_VEC], "rec_vec") < 0) {
        if (!PyErr_Occurred()) {
            fail("rec_rank, rec_vec and rec_clear must have the same length");
        }
        goto error;
    }
    const uint8_t *rec_rank = p[A_REC_RANK];
    for (int64_t sg = 0; sg < nseg; ++sg) {
        const int64_t f = sg % nf;
        const int64_t m_f = self->thr_off[f + 1] - self->thr_off[f];
        for (int64_t r = self->seg_off[sg]; r < self->seg_off[sg + 1]; ++r) {
            /* j < m_f so that "rank > j" can hold; ascending for the early exit. */
            if ((int64_t)rec_rank[r] >= m_f ||
                (r > self->seg_off[sg] && rec_rank[r - 1] > rec_rank[r])) {
                fail("records must have ascending threshold ranks below the feature's count");
                goto error;
            }
        }
        if (self->seg_off[sg + 1] > self->seg_off[sg]) {
            self->kind[f] |= 1;
        }
    }
    self->recs = malloc(sizeof(rk_rec) * ((size_t)R + 1));
    if (!self->recs) {
        PyErr_NoMemory();
        goto error;
    }
    const uint32_t *rec_vec = p[A_REC_VEC];
    const uint8_t *rec_clear = p[A_REC_CLEAR];
    for (npy_intp r = 0; r < R; ++r) {
        const uint32_t jr = rec_rank[r];
        self->recs[r] = (rk_rec){rec_vec[r] * RK_LANES, rec_clear[r] * 0x01010101u,
                                 jr * 0x01010101u, (jr ^ 0x80u) * 0x01010101u};
    }
    /* Per-document lists. */
    if (len[A_NAN_CLEAR] != len[A_NAN_VEC] || len[A_ZERO_CLEAR] != len[A_ZERO_VEC] ||
        len[A_CAT_CLEAR] != len[A_CAT_VEC] ||
        check_off(self->nan_off, len[A_NAN_OFF], nseg, len[A_NAN_VEC], "nan_off") < 0 ||
        check_off(self->zero_off, len[A_ZERO_OFF], nseg, len[A_ZERO_VEC], "zero_off") < 0 ||
        check_off(self->cat_off, len[A_CAT_OFF], nseg, len[A_CNODE_REC] - 1, "cat_off") < 0 ||
        check_off(self->cnode_rec, len[A_CNODE_REC], len[A_CNODE_REC] - 1, len[A_CAT_VEC],
                  "cnode_rec") < 0 ||
        check_off(self->cat_bits_off, len[A_CAT_BITS_OFF], len[A_CNODE_REC] - 1,
                  len[A_CAT_BITS], "cat_bits_off") < 0 ||
        check_vecs(self, self->nan_off, NULL, self->nan_vec, "nan_vec") < 0 ||
        check_vecs(self, self->zero_off, NULL, self->zero_vec, "zero_vec") < 0 ||
        check_vecs(self, self->cat_off, self->cnode_rec, self->cat_vec, "cat_vec") < 0) {
        if (!PyErr_Occurred()) {
            fail("list records and their masks must have the same length");
        }
        goto error;
    }
    {
        const struct {
            rk_rec **dst;
            const uint32_t *vec;
            const uint8_t *clear;
            npy_intp n;
        } lists[3] = {{&self->nan_recs, self->nan_vec, self->nan_clear, len[A_NAN_VEC]},
                      {&self->zero_recs, self->zero_vec, self->zero_clear, len[A_ZERO_VEC]},
                      {&self->cat_recs, self->cat_vec, self->cat_clear, len[A_CAT_VEC]}};
        for (int li = 0; li < 3; ++li) {
            if (lists[li].n >= (npy_intp)(UINT32_MAX / RK_LANES)) {
                fail("too many list records");
                goto error;
            }
            rk_rec *out = malloc(sizeof(rk_rec) * ((size_t)lists[li].n + 1));
            if (out == NULL) {
                PyErr_NoMemory();
                goto error;
            }
            *lists[li].dst = out;
            for (npy_intp r = 0; r < lists[li].n; ++r) {
                out[r] = (rk_rec){lists[li].vec[r] * RK_LANES, lists[li].clear[r] * 0x01010101u,
                                  0, 0};
            }
        }
    }
    for (int64_t sg = 0; sg < nseg; ++sg) {
        const int64_t f = sg % nf;
        if (self->nan_off[sg + 1] > self->nan_off[sg]) {
            self->has_nan[f] = 1;
            self->kind[f] |= 1;
        }
        if (self->zero_off[sg + 1] > self->zero_off[sg]) {
            self->has_zero[f] = 1;
            self->kind[f] |= 1;
        }
        if (self->cat_off[sg + 1] > self->cat_off[sg]) {
            self->kind[f] |= 2;
        }
    }
    self->arrays = PyList_AsTuple(keep);
    Py_DECREF(keep);
    if (self->arrays == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
error:
    Py_DECREF(keep);
    Py_DECREF(self);
    return NULL;
}

static PyObject *RankEnsemble_predict(RankEnsembleObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"matrix", "kernel", NULL};
    PyObject *obj;
    int kernel = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|i", kwlist, &obj, &kernel)) {
        return NULL;
    }
    if (kernel == -1) {
        kernel = g_have[RK_KERNEL_AVX512] ? RK_KERNEL_AVX512 : RK_KERNEL_AVX2;
    }
    if (kernel < 0 || kernel >= RK_KERNEL_COUNT || !g_have[kernel]) {
        PyErr_Format(PyExc_ValueError, "rank kernel %d is not available on this CPU", kernel);
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
        const rk_kernel kn = g_kernels[kernel];
        Py_INCREF(x); /* keep the input alive while the GIL is released */
        const double *xd = (const double *)PyArray_DATA(x);
        double *od = (double *)PyArray_DATA(out);
        Py_BEGIN_ALLOW_THREADS
        rc = score_rows(self, &kn, xd, (int64_t)n, od);
        Py_END_ALLOW_THREADS
        Py_DECREF(x);
    }
    if (rc < 0) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    return (PyObject *)out;
}

static PyObject *RankEnsemble_get_num_features(RankEnsembleObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLongLong(self->num_features);
}

static PyObject *RankEnsemble_get_num_trees(RankEnsembleObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLongLong(self->num_trees);
}

static PyObject *RankEnsemble_get_num_outputs(RankEnsembleObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLongLong(self->num_outputs);
}

static PyObject *RankEnsemble_get_num_blocks(RankEnsembleObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLongLong(self->num_blocks);
}

static PyMethodDef RankEnsemble_methods[] = {
    {"predict", (PyCFunction)(void (*)(void))RankEnsemble_predict, METH_VARARGS | METH_KEYWORDS,
     "predict(matrix, kernel=-1) -> float64 array (n, num_outputs)\n\n"
     "Raw scores of a C-contiguous float64 matrix. kernel: -1 best available, 0 AVX2, "
     "1 AVX-512 (see available_kernels()). Releases the GIL."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef RankEnsemble_getset[] = {
    {"num_features", (getter)RankEnsemble_get_num_features, NULL, NULL, NULL},
    {"num_trees", (getter)RankEnsemble_get_num_trees, NULL, NULL, NULL},
    {"num_outputs", (getter)RankEnsemble_get_num_outputs, NULL, NULL, NULL},
    {"num_blocks", (getter)RankEnsemble_get_num_blocks, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RankEnsembleType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ranking.scoring._rankscorer.RankEnsemble",
    .tp_basicsize = sizeof(RankEnsembleObject),
    .tp_itemsize = 0,
    .tp_dealloc = (destructor)RankEnsemble_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An immutable rank-kernel ensemble built by ranking.scoring.quickscorer.",
    .tp_methods = RankEnsemble_methods,
    .tp_getset = RankEnsemble_getset,
    .tp_new = RankEnsemble_new,
};

static PyObject *available_kernels(PyObject *module, PyObject *unused) {
    (void)module;
    (void)unused;
    PyObject *names = PyDict_New();
    if (names == NULL) {
        return NULL;
    }
    for (int k = 0; k < RK_KERNEL_COUNT; ++k) {
        if (!g_have[k]) {
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

static PyMethodDef module_methods[] = {
    {"available_kernels", available_kernels, METH_NOARGS,
     "available_kernels() -> dict name -> rank kernel id usable on this CPU (may be empty)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef rankscorer_module = {
    PyModuleDef_HEAD_INIT, "_rankscorer",
    "Rank kernel (vectorized QuickScorer) for exact LightGBM raw scores; see "
    "ranking/scoring/README.md.",
    -1, module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__rankscorer(void) {
    import_array();
    detect_kernels();
    if (PyType_Ready(&RankEnsembleType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&rankscorer_module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&RankEnsembleType);
    if (PyModule_AddObject(m, "RankEnsemble", (PyObject *)&RankEnsembleType) < 0) {
        Py_DECREF(&RankEnsembleType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "LANES", RK_LANES);
    PyModule_AddIntConstant(m, "MAX_RANKS", RK_MAX_RANKS);
    return m;
}
