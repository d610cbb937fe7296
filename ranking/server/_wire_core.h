/*
 * The request codec's pure C part: RankRequest bytes -> plain C arrays, and plain C arrays ->
 * RankResponse bytes. No Python here, so the fuzz harness (tests/server/fuzz/wire_fuzz.c)
 * builds exactly this code with AddressSanitizer and UBSan. Read ranking/server/README.md.
 *
 * The decoder follows protobuf's wire rules as upb (protobuf's C runtime, the Python parser's
 * backend) applies them to ranking/v1/ranking.proto, checked against it by property tests:
 *   - every length and varint is bounds-checked; a varint has at most 10 bytes, a tag or a
 *     length at most 5; a tag is < 2^32 with a field number > 0 (except inside a skipped
 *     group, where upb accepts field 0); wire types 6 and 7 are corrupt;
 *   - a field of unknown number, or of a known number with another wire type, is skipped by its
 *     wire type; a group (wire type 3) is skipped to its matching end tag, at most
 *     WIRE_MAX_DEPTH deep counting submessages; a stray end-group tag is corrupt;
 *   - scalars: the last occurrence wins; int32 top_k keeps the low 32 bits of its varint
 *     (negative values are 10-byte varints); bools (strict, explain) are "varint != 0";
 *   - repeated doubles are accepted packed (a length that is a multiple of 8) and unpacked,
 *     and concatenate;
 *   - every string (request_id, user_id, ids, feature_names, context keys) must be valid UTF-8
 *     (proto3 `string`), each occurrence, even one a later occurrence replaces;
 *   - map entries: a missing key or value takes its default ("" / 0.0); the last entry of a key
 *     wins; an entry holding any field other than key and value is not a map entry for upb (it
 *     keeps the whole entry as an unknown field of the request), so it is left out here too.
 */
#ifndef RANKING_WIRE_CORE_H
#define RANKING_WIRE_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* upb's default depth limit: the request is level 0, a candidate or map entry level 1, and each
   group one level below the message that holds it; no level may pass 100. */
#define WIRE_MAX_DEPTH 100

enum {
    WIRE_OK = 0,
    WIRE_ENOMEM,
    WIRE_TRUNCATED,   /* a field runs past the end of its message */
    WIRE_BAD_VARINT,  /* more than 10 bytes */
    WIRE_BAD_TAG,     /* field number 0, tag >= 2^32 or longer than 5 bytes */
    WIRE_BAD_LENGTH,  /* a length longer than 5 bytes */
    WIRE_BAD_WIRETYPE,
    WIRE_BAD_GROUP,   /* a stray or mismatched end-group tag, or a group left open */
    WIRE_TOO_DEEP,
    WIRE_BAD_PACKED,  /* packed doubles whose length is not a multiple of 8 */
    WIRE_BAD_UTF8,
};

static const char *const wire_error_text[] = {
    "ok",
    "out of memory",
    "a field runs past the end of its message",
    "a varint longer than 10 bytes",
    "a malformed tag",
    "a malformed length",
    "an invalid wire type",
    "an unmatched group",
    "nesting deeper than 100",
    "packed doubles whose length is not a multiple of 8",
    "a string that is not valid UTF-8",
};

typedef struct {
    const uint8_t *p;
    size_t n;
} wire_str;

/* What a RankRequest holds, as views into the body plus arrays the decoder owns. */
typedef struct {
    wire_str request_id, user_id;
    int32_t top_k;
    bool strict;
    bool explain;
    /* candidates: id i is ids[offsets[i]:offsets[i+1]]; its values are count[i] doubles
       starting where candidate i-1's ended in `values`. */
    size_t n;
    uint8_t *ids;
    size_t ids_len, ids_cap;
    int64_t *offsets; /* n + 1 entries */
    int64_t *count;   /* n entries */
    size_t cand_cap;
    double *values;
    size_t values_len, values_cap;
    /* context entries in wire order (a later one of the same key wins) */
    wire_str *ctx_keys;
    double *ctx_vals;
    size_t ctx_n, ctx_cap;
    wire_str *names;
    size_t names_n, names_cap;
    size_t error_at; /* byte offset of a WIRE_* error */
} wire_request;

static void wire_request_free(wire_request *r) {
    free(r->ids);
    free(r->offsets);
    free(r->count);
    free(r->values);
    free(r->ctx_keys);
    free(r->ctx_vals);
    free(r->names);
    memset(r, 0, sizeof *r);
}

/* Grow `*buf` (elements of `size` bytes) to hold at least `need`; 0 on success. */
static int wire_grow(void **buf, size_t *cap, size_t need, size_t size) {
    if (need <= *cap) {
        return 0;
    }
    size_t cap2 = *cap ? *cap : 16;
    while (cap2 < need) {
        if (cap2 > ((size_t)-1 / 2) / size) {
            return -1;
        }
        cap2 *= 2;
    }
    void *p = realloc(*buf, cap2 * size);
    if (p == NULL) {
        return -1;
    }
    *buf = p;
    *cap = cap2;
    return 0;
}

/* ---- reading ---------------------------------------------------------------------------- */

typedef struct {
    const uint8_t *start; /* the whole body, for error offsets */
    int error;
    const uint8_t *error_p;
} wire_reader;

static inline const uint8_t *wire_fail(wire_reader *rd, const uint8_t *p, int code) {
    if (rd->error == WIRE_OK) {
        rd->error = code;
        rd->error_p = p;
    }
    return NULL;
}

/* A varint of at most `max_bytes` bytes; returns the byte after it, or NULL. */
static inline const uint8_t *wire_varint(wire_reader *rd, const uint8_t *p, const uint8_t *end,
                                         int max_bytes, int code, uint64_t *out) {
    uint64_t v = 0;
    for (int i = 0; i < max_bytes; i++) {
        if (p + i >= end) {
            return wire_fail(rd, p, WIRE_TRUNCATED);
        }
        uint8_t b = p[i];
        v |= (uint64_t)(b & 0x7f) << (7 * i); /* bits past 64 are dropped, as upb does */
        if (!(b & 0x80)) {
            *out = v;
            return p + i + 1;
        }
    }
    return wire_fail(rd, p, code);
}

/* A tag: at most 5 bytes, < 2^32, field number > 0. */
/* A tag of any field number, 0 included: what upb reads inside a group it skips. */
static inline const uint8_t *wire_tag_any(wire_reader *rd, const uint8_t *p,
                                          const uint8_t *end, uint32_t *field, int *wt) {
    uint64_t v;
    if (p < end && p[0] < 0x80) {
        v = p[0];
        p++;
    } else {
        const uint8_t *q = wire_varint(rd, p, end, 5, WIRE_BAD_TAG, &v);
        if (q == NULL) {
            return NULL;
        }
        if (v > 0xffffffffu) {
            return wire_fail(rd, p, WIRE_BAD_TAG);
        }
        p = q;
    }
    *field = (uint32_t)(v >> 3);
    *wt = (int)(v & 7);
    return p;
}

/* A message's tag: field number 0 is corrupt there. */
static inline const uint8_t *wire_tag(wire_reader *rd, const uint8_t *p, const uint8_t *end,
                                      uint32_t *field, int *wt) {
    const uint8_t *q = wire_tag_any(rd, p, end, field, wt);
    if (q != NULL && *field == 0) {
        return wire_fail(rd, q, WIRE_BAD_TAG);
    }
    return q;
}

/* A length-delimited payload: sets `*s` and returns the byte after it. */
static inline const uint8_t *wire_bytes(wire_reader *rd, const uint8_t *p, const uint8_t *end,
                                        wire_str *s) {
    uint64_t len;
    const uint8_t *q;
    if (p < end && p[0] < 0x80) {
        len = p[0];
        q = p + 1;
    } else {
        q = wire_varint(rd, p, end, 5, WIRE_BAD_LENGTH, &len);
        if (q == NULL) {
            return NULL;
        }
    }
    if (len > (uint64_t)(end - q)) {
        return wire_fail(rd, p, WIRE_TRUNCATED);
    }
    s->p = q;
    s->n = (size_t)len;
    return q + len;
}

/* Strict UTF-8 (Unicode Table 3-7): no overlong forms, surrogates or code points > U+10FFFF. */
static bool wire_utf8_ok(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        /* ASCII runs eight bytes at a time. */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull) {
                break;
            }
            i += 8;
        }
        if (i >= n) {
            break;
        }
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint8_t lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            if (c == 0xe0) {
                lo = 0xa0;
            } else if (c == 0xed) {
                hi = 0x9f;
            }
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            if (c == 0xf0) {
                lo = 0x90;
            } else if (c == 0xf4) {
                hi = 0x8f;
            }
        } else {
            return false;
        }
        if (n - i - 1 < need) {
            return false;
        }
        if (s[i + 1] < lo || s[i + 1] > hi) {
            return false;
        }
        for (size_t k = 2; k <= need; k++) {
            if ((s[i + k] & 0xc0) != 0x80) {
                return false;
            }
        }
        i += need + 1;
    }
    return true;
}

static inline const uint8_t *wire_string(wire_reader *rd, const uint8_t *p, const uint8_t *end,
                                         wire_str *s) {
    const uint8_t *q = wire_bytes(rd, p, end, s);
    if (q != NULL && !wire_utf8_ok(s->p, s->n)) {
        return wire_fail(rd, p, WIRE_BAD_UTF8);
    }
    return q;
}

static const uint8_t *wire_skip_group(wire_reader *rd, const uint8_t *p, const uint8_t *end,
                                      uint32_t field, int depth);

/* Skip one field's payload (its tag already read) by wire type. */
static const uint8_t *wire_skip(wire_reader *rd, const uint8_t *p, const uint8_t *end,
                                uint32_t field, int wt, int depth) {
    uint64_t v;
    wire_str s;
    switch (wt) {
    case 0:
        return wire_varint(rd, p, end, 10, WIRE_BAD_VARINT, &v);
    case 1:
        return (size_t)(end - p) < 8 ? wire_fail(rd, p, WIRE_TRUNCATED) : p + 8;
    case 2:
        return wire_bytes(rd, p, end, &s);
    case 3:
        return wire_skip_group(rd, p, end, field, depth);
    case 4: /* an end-group tag where no group is open */
        return wire_fail(rd, p, WIRE_BAD_GROUP);
    case 5:
        return (size_t)(end - p) < 4 ? wire_fail(rd, p, WIRE_TRUNCATED) : p + 4;
    default:
        return wire_fail(rd, p, WIRE_BAD_WIRETYPE);
    }
}

/* A group's fields up to its end tag; `depth` is the enclosing message's level. */
static const uint8_t *wire_skip_group(wire_reader *rd, const uint8_t *p, const uint8_t *end,
                                      uint32_t field, int depth) {
    if (depth + 1 > WIRE_MAX_DEPTH) {
        return wire_fail(rd, p, WIRE_TOO_DEEP);
    }
    while (p < end) {
        uint32_t f;
        int wt;
        const uint8_t *tag_at = p;
        /* upb skips a group's fields without checking their numbers: a field 0 inside an
           unknown group is accepted (found by tests/server/test_wire_properties.py). */
        p = wire_tag_any(rd, p, end, &f, &wt);
        if (p == NULL) {
            return NULL;
        }
        if (wt == 4) {
            return f == field ? p : wire_fail(rd, tag_at, WIRE_BAD_GROUP);
        }
        p = wire_skip(rd, p, end, f, wt, depth + 1);
        if (p == NULL) {
            return NULL;
        }
    }
    return wire_fail(rd, p, WIRE_BAD_GROUP);
}

static inline double wire_double(const uint8_t *p) {
    double d;
    memcpy(&d, p, 8); /* little-endian hosts only (x86-64, aarch64); checked at module init */
    return d;
}

/* One Candidate message (level 1). */
static int wire_candidate(wire_reader *rd, const uint8_t *p, const uint8_t *end,
                          wire_request *r) {
    wire_str id = {p, 0};
    int64_t count = 0;
    while (p < end) {
        uint32_t f;
        int wt;
        p = wire_tag(rd, p, end, &f, &wt);
        if (p == NULL) {
            return -1;
        }
        if (f == 1 && wt == 2) {
            p = wire_string(rd, p, end, &id);
        } else if (f == 2 && wt == 2) {
            wire_str s;
            const uint8_t *at = p;
            p = wire_bytes(rd, p, end, &s);
            if (p == NULL) {
                return -1;
            }
            if (s.n % 8 != 0) {
                wire_fail(rd, at, WIRE_BAD_PACKED);
                return -1;
            }
            size_t k = s.n / 8;
            if (k == 0) {
                continue; /* an empty packed run adds nothing */
            }
            if (wire_grow((void **)&r->values, &r->values_cap, r->values_len + k, 8) != 0) {
                wire_fail(rd, at, WIRE_ENOMEM);
                return -1;
            }
            memcpy(r->values + r->values_len, s.p, s.n);
            r->values_len += k;
            count += (int64_t)k;
        } else if (f == 2 && wt == 1) {
            if ((size_t)(end - p) < 8) {
                wire_fail(rd, p, WIRE_TRUNCATED);
                return -1;
            }
            if (wire_grow((void **)&r->values, &r->values_cap, r->values_len + 1, 8) != 0) {
                wire_fail(rd, p, WIRE_ENOMEM);
                return -1;
            }
            r->values[r->values_len++] = wire_double(p);
            count++;
            p += 8;
        } else {
            p = wire_skip(rd, p, end, f, wt, 1);
        }
        if (p == NULL) {
            return -1;
        }
    }
    size_t cap = r->cand_cap;
    if (wire_grow((void **)&r->ids, &r->ids_cap, r->ids_len + id.n, 1) != 0 ||
        wire_grow((void **)&r->count, &r->cand_cap, r->n + 2, 8) != 0) {
        wire_fail(rd, p, WIRE_ENOMEM);
        return -1;
    }
    if (r->cand_cap != cap) { /* offsets shares count's capacity */
        int64_t *off = realloc(r->offsets, r->cand_cap * 8);
        if (off == NULL) {
            wire_fail(rd, p, WIRE_ENOMEM);
            return -1;
        }
        r->offsets = off;
    }
    if (id.n) {
        memcpy(r->ids + r->ids_len, id.p, id.n);
    }
    r->ids_len += id.n;
    r->count[r->n] = count;
    r->n++;
    r->offsets[r->n] = (int64_t)r->ids_len;
    return 0;
}

/* One context map entry (level 1): appended unless it holds fields other than key/value. */
static int wire_map_entry(wire_reader *rd, const uint8_t *p, const uint8_t *end,
                          wire_request *r) {
    wire_str key = {p, 0};
    double value = 0.0;
    bool other = false;
    while (p < end) {
        uint32_t f;
        int wt;
        p = wire_tag(rd, p, end, &f, &wt);
        if (p == NULL) {
            return -1;
        }
        if (f == 1 && wt == 2) {
            p = wire_string(rd, p, end, &key);
        } else if (f == 2 && wt == 1) {
            if ((size_t)(end - p) < 8) {
                wire_fail(rd, p, WIRE_TRUNCATED);
                return -1;
            }
            value = wire_double(p);
            p += 8;
        } else {
            other = true;
            p = wire_skip(rd, p, end, f, wt, 1);
        }
        if (p == NULL) {
            return -1;
        }
    }
    if (other) {
        return 0;
    }
    size_t cap = r->ctx_cap;
    if (wire_grow((void **)&r->ctx_keys, &r->ctx_cap, r->ctx_n + 1, sizeof(wire_str)) != 0) {
        wire_fail(rd, p, WIRE_ENOMEM);
        return -1;
    }
    if (r->ctx_cap != cap) { /* ctx_vals shares ctx_keys' capacity */
        double *vals = realloc(r->ctx_vals, r->ctx_cap * sizeof(double));
        if (vals == NULL) {
            wire_fail(rd, p, WIRE_ENOMEM);
            return -1;
        }
        r->ctx_vals = vals;
    }
    r->ctx_keys[r->ctx_n] = key;
    r->ctx_vals[r->ctx_n] = value;
    r->ctx_n++;
    return 0;
}

/* Decode a whole RankRequest. On error returns a WIRE_* code with r->error_at set; the caller
   frees `r` with wire_request_free either way. */
static int wire_decode_request(const uint8_t *body, size_t len, wire_request *r) {
    memset(r, 0, sizeof *r);
    wire_reader rd = {body, WIRE_OK, NULL};
    const uint8_t *p = body, *end = body + len;
    /* Size the arrays from the body once, instead of growing them candidate by candidate: a
       candidate takes at least 2 bytes on the wire, and the ids at most the whole body. */
    size_t cands = len / 2 + 2, ids = len;
    if (cands > 4096) {
        cands = 4096;
    }
    if (ids > 65536) {
        ids = 65536;
    }
    if (wire_grow((void **)&r->count, &r->cand_cap, cands, 8) != 0 ||
        (r->offsets = malloc(r->cand_cap * 8)) == NULL ||
        wire_grow((void **)&r->ids, &r->ids_cap, ids ? ids : 1, 1) != 0) {
        return WIRE_ENOMEM;
    }
    r->offsets[0] = 0;
    r->request_id.p = r->user_id.p = body;
    while (p < end) {
        uint32_t f;
        int wt;
        p = wire_tag(&rd, p, end, &f, &wt);
        if (p == NULL) {
            break;
        }
        wire_str s;
        uint64_t v;
        if (wt == 2 && (f == 1 || f == 2 || f == 6)) {
            p = wire_string(&rd, p, end, &s);
            if (p == NULL) {
                break;
            }
            if (f == 1) {
                r->request_id = s;
            } else if (f == 2) {
                r->user_id = s;
            } else {
                if (wire_grow((void **)&r->names, &r->names_cap, r->names_n + 1,
                              sizeof(wire_str)) != 0) {
                    wire_fail(&rd, p, WIRE_ENOMEM);
                    break;
                }
                r->names[r->names_n++] = s;
            }
        } else if (wt == 2 && (f == 3 || f == 4)) {
            p = wire_bytes(&rd, p, end, &s);
            if (p == NULL) {
                break;
            }
            int rc = f == 3 ? wire_candidate(&rd, s.p, s.p + s.n, r)
                            : wire_map_entry(&rd, s.p, s.p + s.n, r);
            if (rc != 0) {
                break;
            }
        } else if (wt == 0 && (f == 5 || f == 7 || f == 8)) {
            p = wire_varint(&rd, p, end, 10, WIRE_BAD_VARINT, &v);
            if (p == NULL) {
                break;
            }
            if (f == 5) {
                r->top_k = (int32_t)(uint32_t)(v & 0xffffffffu);
            } else if (f == 7) {
                r->strict = v != 0;
            } else {
                r->explain = v != 0;
            }
        } else {
            p = wire_skip(&rd, p, end, f, wt, 0);
            if (p == NULL) {
                break;
            }
        }
    }
    if (rd.error != WIRE_OK) {
        r->error_at = rd.error_p ? (size_t)(rd.error_p - body) : 0;
        return rd.error;
    }
    return WIRE_OK;
}

/* ---- writing ---------------------------------------------------------------------------- */

static inline size_t wire_varint_size(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline uint8_t *wire_put_varint(uint8_t *p, uint64_t v) {
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* Size of RankedItem i: id (1), score (2) unless its bits are all zero (proto3 implicit
   presence, as protobuf decides it: -0.0 is sent), unscored (3) when true. */
static inline size_t wire_item_size(size_t id_len, const double *score, bool unscored) {
    size_t n = 0;
    if (id_len) {
        n += 1 + wire_varint_size(id_len) + id_len;
    }
    if (score != NULL) {
        uint64_t bits;
        memcpy(&bits, score, 8);
        if (bits) {
            n += 9;
        }
    }
    if (unscored) {
        n += 2;
    }
    return n;
}

typedef struct {
    const uint8_t *ids;     /* the request's id buffer */
    const int64_t *offsets; /* n + 1 entries */
    size_t n;
    const intptr_t *order; /* `count` rows of the ids, best first */
    size_t count;
    const double *scores; /* the first `scored` items' scores; the rest are unscored */
    size_t scored;
    wire_str model_version;
    const wire_str *degraded;
    size_t n_degraded;
    wire_str request_id;
    wire_str extra; /* already-encoded fields appended as they are (messages merge) */
} wire_response;

static inline size_t wire_ld_size(size_t n) { return 1 + wire_varint_size(n) + n; }

/* The encoded size, or (size_t)-1 when an order entry or an offset is out of range. */
static size_t wire_response_size(const wire_response *w) {
    size_t total = 0;
    for (size_t i = 0; i < w->count; i++) {
        intptr_t row = w->order[i];
        if (row < 0 || (size_t)row >= w->n) {
            return (size_t)-1;
        }
        int64_t a = w->offsets[row], b = w->offsets[row + 1];
        if (a < 0 || b < a) {
            return (size_t)-1;
        }
        bool scored = i < w->scored;
        total += wire_ld_size(wire_item_size((size_t)(b - a), scored ? &w->scores[i] : NULL,
                                             !scored));
    }
    if (w->model_version.n) {
        total += wire_ld_size(w->model_version.n);
    }
    for (size_t i = 0; i < w->n_degraded; i++) {
        total += wire_ld_size(w->degraded[i].n);
    }
    if (w->request_id.n) {
        total += wire_ld_size(w->request_id.n);
    }
    return total + w->extra.n;
}

static inline uint8_t *wire_put_ld(uint8_t *p, uint8_t tag, const uint8_t *s, size_t n) {
    *p++ = tag;
    p = wire_put_varint(p, n);
    if (n) {
        memcpy(p, s, n);
    }
    return p + n;
}

/* Write the response (fields in number order, as protobuf serializes); `out` holds exactly
   wire_response_size(w) bytes, and the size call has checked every index. */
static uint8_t *wire_encode_response(const wire_response *w, uint8_t *p) {
    for (size_t i = 0; i < w->count; i++) {
        intptr_t row = w->order[i];
        size_t a = (size_t)w->offsets[row], len = (size_t)w->offsets[row + 1] - a;
        bool scored = i < w->scored;
        *p++ = 0x0a; /* items = 1, length-delimited */
        p = wire_put_varint(p, wire_item_size(len, scored ? &w->scores[i] : NULL, !scored));
        if (len) {
            p = wire_put_ld(p, 0x0a, w->ids + a, len); /* id = 1 */
        }
        if (scored) {
            uint64_t bits;
            memcpy(&bits, &w->scores[i], 8);
            if (bits) {
                *p++ = 0x11; /* score = 2, fixed64 */
                memcpy(p, &w->scores[i], 8);
                p += 8;
            }
        } else {
            *p++ = 0x18; /* unscored = 3, varint */
            *p++ = 1;
        }
    }
    if (w->model_version.n) {
        p = wire_put_ld(p, 0x12, w->model_version.p, w->model_version.n);
    }
    for (size_t i = 0; i < w->n_degraded; i++) {
        p = wire_put_ld(p, 0x1a, w->degraded[i].p, w->degraded[i].n);
    }
    if (w->request_id.n) {
        p = wire_put_ld(p, 0x22, w->request_id.p, w->request_id.n);
    }
    if (w->extra.n) {
        memcpy(p, w->extra.p, w->extra.n);
        p += w->extra.n;
    }
    return p;
}

#endif /* RANKING_WIRE_CORE_H */
