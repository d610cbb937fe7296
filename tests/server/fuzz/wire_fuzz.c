/*
 * Fuzz harness for the request codec's C core (ranking/server/_wire_core.h), built with
 * AddressSanitizer and UBSan by tests/server/test_wire_fuzz.py:
 *   clang -fsanitize=fuzzer,address,undefined   libFuzzer, coverage-guided (LLVMFuzzerTestOneInput)
 *   gcc   -fsanitize=address,undefined -DWIRE_STANDALONE   a seeded mutation loop (main below)
 * Every input is copied into a buffer of exactly its size, so a read one byte past the end is
 * caught. A decoded request is checked for internal consistency and re-encoded as a response.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../../ranking/server/_wire_core.h"

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "invariant broken: %s (line %d)\n", #cond, __LINE__);            \
            abort();                                                                           \
        }                                                                                      \
    } while (0)

static int in_body(wire_str s, const uint8_t *body, size_t len) {
    return s.n == 0 || (s.p >= body && s.p + s.n <= body + len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *body = malloc(size ? size : 1);
    if (body == NULL) {
        return 0;
    }
    if (size) {
        memcpy(body, data, size);
    }
    wire_request r;
    int rc = wire_decode_request(body, size, &r);
    if (rc == WIRE_OK) {
        CHECK(r.offsets[0] == 0 && (size_t)r.offsets[r.n] == r.ids_len);
        int64_t values = 0;
        for (size_t i = 0; i < r.n; i++) {
            CHECK(r.offsets[i] <= r.offsets[i + 1]);
            size_t len = (size_t)(r.offsets[i + 1] - r.offsets[i]);
            CHECK(len == 0 || wire_utf8_ok(r.ids + r.offsets[i], len));
            values += r.count[i];
        }
        CHECK((size_t)values == r.values_len);
        CHECK(in_body(r.request_id, body, size) && in_body(r.user_id, body, size));
        for (size_t i = 0; i < r.ctx_n; i++) {
            CHECK(in_body(r.ctx_keys[i], body, size));
        }
        for (size_t i = 0; i < r.names_n; i++) {
            CHECK(in_body(r.names[i], body, size));
        }
        /* Encode a response: the candidates in reverse, the last third unscored. */
        intptr_t *order = malloc((r.n ? r.n : 1) * sizeof(intptr_t));
        double *scores = malloc((r.n ? r.n : 1) * sizeof(double));
        CHECK(order != NULL && scores != NULL);
        for (size_t i = 0; i < r.n; i++) {
            order[i] = (intptr_t)(r.n - 1 - i);
            scores[i] = r.values_len ? r.values[i % r.values_len] : (double)i;
        }
        wire_response w = {
            .ids = r.ids, .offsets = r.offsets, .n = r.n, .order = order, .count = r.n,
            .scores = scores, .scored = r.n - r.n / 3, .model_version = r.user_id,
            .degraded = r.names, .n_degraded = r.names_n, .request_id = r.request_id,
        };
        size_t need = wire_response_size(&w);
        CHECK(need != (size_t)-1);
        uint8_t *out = malloc(need ? need : 1);
        CHECK(out != NULL);
        CHECK(wire_encode_response(&w, out) == out + need);
        free(out);
        free(order);
        free(scores);
    } else {
        CHECK(rc > WIRE_OK && rc <= WIRE_BAD_UTF8 && r.error_at <= size);
    }
    wire_request_free(&r);
    free(body);
    return 0;
}

#ifdef WIRE_STANDALONE
/* A seeded mutation loop for compilers without libFuzzer: start from seed files, apply random
   edits (bit flips, interesting bytes, inserts, deletes, repeats, splices of two seeds). */
static uint64_t rng_state;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s ITERATIONS SEED [seed files...]\n", argv[0]);
        return 2;
    }
    long iterations = atol(argv[1]);
    rng_state = (uint64_t)atol(argv[2]) * 0x9e3779b97f4a7c15ull + 1;
    int n_seeds = argc - 3;
    uint8_t **seeds = calloc((size_t)(n_seeds ? n_seeds : 1), sizeof *seeds);
    size_t *lens = calloc((size_t)(n_seeds ? n_seeds : 1), sizeof *lens);
    for (int i = 0; i < n_seeds; i++) {
        FILE *f = fopen(argv[3 + i], "rb");
        if (f == NULL) {
            perror(argv[3 + i]);
            return 2;
        }
        seeds[i] = malloc(1 << 16);
        lens[i] = fread(seeds[i], 1, 1 << 16, f);
        fclose(f);
    }
    static const uint8_t interesting[] = {0x00, 0x01, 0x7f, 0x80, 0xff, 0x0a, 0x0b,
                                          0x0c, 0x12, 0x1a, 0x22, 0x06, 0x07, 0xc0, 0xed};
    uint8_t *buf = malloc(1 << 17);
    for (long it = 0; it < iterations; it++) {
        size_t len;
        if (n_seeds == 0 || rnd() % 16 == 0) {
            len = rnd() % 64;
            for (size_t i = 0; i < len; i++) {
                buf[i] = (uint8_t)rnd();
            }
        } else {
            int s = (int)(rnd() % (uint64_t)n_seeds);
            len = lens[s];
            memcpy(buf, seeds[s], len);
            int edits = 1 + (int)(rnd() % 4);
            for (int e = 0; e < edits; e++) {
                size_t at = len ? rnd() % (len + 1) : 0;
                switch (rnd() % 6) {
                case 0:
                    if (at < len) buf[at] ^= (uint8_t)(1u << (rnd() % 8));
                    break;
                case 1:
                    if (at < len) buf[at] = interesting[rnd() % sizeof interesting];
                    break;
                case 2: { /* insert up to 4 random bytes */
                    size_t k = 1 + rnd() % 4;
                    if (len + k < (1 << 17)) {
                        memmove(buf + at + k, buf + at, len - at);
                        for (size_t i = 0; i < k; i++) buf[at + i] = (uint8_t)rnd();
                        len += k;
                    }
                    break;
                }
                case 3: { /* delete */
                    size_t k = 1 + rnd() % 8;
                    if (at + k <= len) {
                        memmove(buf + at, buf + at + k, len - at - k);
                        len -= k;
                    }
                    break;
                }
                case 4: /* truncate */
                    len = at;
                    break;
                default: { /* repeat a chunk, or splice in part of another seed */
                    int o = (int)(rnd() % (uint64_t)n_seeds);
                    size_t from = lens[o] ? rnd() % lens[o] : 0, k = 1 + rnd() % 16;
                    if (from + k > lens[o]) k = lens[o] - from;
                    if (len + k < (1 << 17)) {
                        memmove(buf + at + k, buf + at, len - at);
                        memcpy(buf + at, seeds[o] + from, k);
                        len += k;
                    }
                }
                }
            }
        }
        LLVMFuzzerTestOneInput(buf, len);
    }
    free(buf);
    for (int i = 0; i < n_seeds; i++) {
        free(seeds[i]);
    }
    free(seeds);
    free(lens);
    printf("wire_fuzz: %ld inputs, no sanitizer report\n", iterations);
    return 0;
}
#endif
