/* The relaxed Poisson sample of iP-VAE and its derivative on a CPU, drawing its own
 * arrivals: the fast path of fondtrain/model/relaxed_poisson.py (where the maths is
 * written out), built and loaded by fondtrain/model/kernels/build.py.
 *
 *   z = sum_{j < n_exp} s_j,  s_j = sigmoid(a_j),  a_j = 1/tau - S_j k,  k = 1 / (r tau),
 *   dz/du = sum_j s_j (1 - s_j) S_j k e^u / r,  r = e^u + float32 eps,
 *
 * S_j the running sum of Exp(1) draws e_0 .. e_j. Draw d of entry i of a member with n
 * entries hashes the counter c = d n + i under the member's keys (k0, k1):
 * bits = mix(mix(c ^ k0) ^ k1), U = ((bits >> 9) + 1/2) 2^-23, e = -log U; the numbers
 * of random_streams.hashed_exponential, whatever order the entries are computed in.
 *
 * S_j only grows, so once a_j falls below `zero_below` (where sigmoid is exactly 0 in
 * float32) every later term of the entry is exactly 0: the entry is finished. It is
 * finished sooner, with the same bits, once its terms no longer change its float32 sums:
 * where a_j < -1 both terms only shrink from one arrival to the next (s_j falls with a_j,
 * and s_j (1 - s_j) S_j falls once S_j k > 1, which a_j < -1 implies), so when twice the
 * term leaves each sum unchanged (the term is at most a quarter of the sum's last place,
 * a margin for the terms' own rounding), adding any later term rounds back to the same
 * sum. At high temperature that ends a trained model's entries of rate ~0.5 after ~10 of
 * their ~30 arrivals; a_j < zero_below alone would run them all. Most
 * entries of a sparse posterior finish at their first arrival, so the work is done in
 * levels: arrival 0 of every entry in one vector loop, then arrival j of the entries
 * still live (a list of them, shortened after each level) until none is; the cost
 * follows the terms that are not 0, not n_exp. Entries are taken CHUNK at a time so
 * that a block's work arrays stay in the core's cache. The loops are plain C that the
 * compiler vectorises (`omp simd`); log and exp are written out below (branch-free
 * polynomials, about 1 ulp like the C library's and torch's) because the C library's
 * scalar ones would keep the loops scalar. The kernel equals the plain expression over
 * the same draws to float32 rounding (tests/test_model_kernel.py). */
#include <float.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 8192  /* entries per block (the fastest of 1024 .. 16384 measured) */
#define LANES 16    /* the live list is padded to whole vectors of this many (AVX-512 floats) */

static inline float as_float(uint32_t u) { union { uint32_t u; float f; } b = { .u = u }; return b.f; }
static inline uint32_t as_uint(float f) { union { float f; uint32_t u; } b = { .f = f }; return b.u; }

/* random_streams._mix32: xor-shift-multiply rounds on 32-bit words */
static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x5BD1E995u;
    return x ^ (x >> 16);
}

/* log x for a normal x > 0 (Cephes logf, about 1 ulp): x = m 2^e, m in [sqrt(1/2), sqrt 2),
 * log x = e log 2 + log1p(m - 1) by a polynomial in m - 1 (exact: Sterbenz). */
static inline float log_f32(float x) {
    uint32_t b = as_uint(x);
    int32_t e = (int32_t)(b >> 23) - 126;  /* x = m 2^e with m in [1/2, 1) */
    float m = as_float((b & 0x007FFFFFu) | 0x3F000000u);
    int below = m < 0.707106781186547524f;
    e -= below;
    float t = (below ? m + m : m) - 1.0f;
    float z = t * t;
    float y = 7.0376836292e-2f;
    y = y * t - 1.1514610310e-1f;
    y = y * t + 1.1676998740e-1f;
    y = y * t - 1.2420140846e-1f;
    y = y * t + 1.4249322787e-1f;
    y = y * t - 1.6668057665e-1f;
    y = y * t + 2.0000714765e-1f;
    y = y * t - 2.4999993993e-1f;
    y = y * t + 3.3333331174e-1f;
    y = y * t * z;
    float fe = (float)e;
    y += -2.12194440e-4f * fe;  /* log 2 in two parts: 0.693359375 - 2.12194440e-4 */
    y += -0.5f * z;
    return (t + y) + 0.693359375f * fe;
}

/* e^x (Cephes expf, about 1 ulp): x = n log 2 + f, |f| <= log(2) / 2, e^x = 2^n e^f; 2^n
 * is applied in two halves so that results down to float32's subnormals and up to its
 * overflow (inf) come out as expf's. */
static inline float exp_f32(float x) {
    x = x < -104.0f ? -104.0f : x;  /* e^-104 rounds to 0 in float32 ... */
    x = x > 89.0f ? 89.0f : x;      /* ... and e^89 to inf */
    const float round = 12582912.0f;  /* 1.5 2^23: adding it rounds to an integer */
    float n = (x * 1.44269504088896341f + round) - round;
    float f = x - n * 0.693359375f;
    f = f - n * -2.12194440e-4f;
    float y = 1.9875691500e-4f;
    y = y * f + 1.3981999507e-3f;
    y = y * f + 8.3334519073e-3f;
    y = y * f + 4.1665795894e-2f;
    y = y * f + 1.6666665459e-1f;
    y = y * f + 5.0000001201e-1f;
    y = y * (f * f) + f + 1.0f;
    int32_t ni = (int32_t)n;  /* in [-150, 129] */
    int32_t half = ni / 2;
    return y * as_float((uint32_t)(half + 127) << 23) * as_float((uint32_t)(ni - half + 127) << 23);
}

/* Exp(1) draw of counter c under keys (k0, k1): -log U (`hashed_exponential`) */
static inline float draw_exp(uint32_t c, uint32_t k0, uint32_t k1) {
    uint32_t bits = mix32(mix32(c ^ k0) ^ k1);
    return -log_f32(((float)(bits >> 9) + 0.5f) * 0x1p-23f);
}

/* sigmoid(a), and exactly 0 below zero_below (as 1 / (1 + exp(-a)) is in float32); a NaN
 * (from a NaN log-rate) stays NaN, as in torch */
static inline float sigmoid_f32(float a, float zero_below) {
    return a < zero_below ? 0.0f : 1.0f / (1.0f + exp_f32(-a));
}

/* Fill the live list's slots m .. up to a multiple of LANES with an inert entry (entry 0,
 * k = 0: finite numbers); returns that multiple (at most CHUNK). */
static int pad(int m, int32_t *live, float *arrival, float *k, float *z, float *slope) {
    int padded = (m + LANES - 1) / LANES * LANES;
    for (int q = m; q < padded; q++) {
        live[q] = 0;
        arrival[q] = k[q] = z[q] = slope[q] = 0.0f;
    }
    return padded;
}

/* One block of len <= CHUNK entries of a member, the first of them entry `first`: u, z and
 * dz (NULL: no derivative) point at the block's entries. */
struct work {
    float slope[CHUNK], factor[CHUNK];  /* sum_j s_j (1 - s_j) S_j; k e^u / r */
    uint8_t keep[CHUNK];  /* 1: the entry's next arrival may count */
    /* the live entries (those whose next arrival may count), packed: index in the
     * block, S_j, k, z and slope so far */
    int32_t live[CHUNK];
    float live_arrival[CHUNK], live_k[CHUNK], live_z[CHUNK], live_slope[CHUNK];
};

static void block(const float *u, float *z, float *dz, int len, uint32_t first, uint32_t n,
                  uint32_t n_exp, float temp, float inv_temp, uint32_t k0, uint32_t k1,
                  float zero_below, struct work *w) {
    float *slope = w->slope, *factor = w->factor, *live_arrival = w->live_arrival, *live_k = w->live_k,
          *live_z = w->live_z, *live_slope = w->live_slope;
    uint8_t *keep = w->keep;
    int32_t *live = w->live;
    if (n_exp == 0) {  /* no arrival: z = 0, dz/du = 0 */
        for (int t = 0; t < len; t++) {
            z[t] = 0.0f;
            if (dz) dz[t] = 0.0f;
        }
        return;
    }
    /* arrival 0 of every entry (counters 0 n + i) */
    #pragma omp simd
    for (int t = 0; t < len; t++) {
        float exp_u = exp_f32(u[t]);
        float rate = exp_u + FLT_EPSILON;
        float k = 1.0f / (rate * temp);
        float s_0 = draw_exp(first + (uint32_t)t, k0, k1);
        float a = inv_temp - s_0 * k;
        float s = sigmoid_f32(a, zero_below);
        z[t] = s;
        slope[t] = (s - s * s) * s_0;
        factor[t] = k * exp_u / rate;
        keep[t] = a >= zero_below;
        live_arrival[t] = s_0;  /* for all entries now; packed below */
        live_k[t] = k;
    }
    int m = 0;
    if (n_exp > 1) {
        for (int t = len; t % 8; t++) keep[t] = 0;  /* whole words of 8 flags below */
        for (int t = 0; t < len; t += 8) {  /* the indices of the live entries ... */
            uint64_t word;  /* few entries are live: skip 8 at a time */
            memcpy(&word, keep + t, 8);
            for (int s = t; word && s < t + 8; s++) {
                live[m] = s;
                m += keep[s];
            }
        }
        for (int q = 0; q < m; q++) {  /* ... and their state, packed (q <= live[q]) */
            int t = live[q];
            live_arrival[q] = live_arrival[t];
            live_k[q] = live_k[t];
            live_z[q] = z[t];
            live_slope[q] = slope[t];
        }
    }
    /* arrival j of the live entries (counters j n + i). The loop runs over whole vectors:
     * the slots q >= m of the last one (`pad`) compute numbers nobody reads, where a
     * remainder loop would run the few entries of the late arrivals one by one. */
    int padded = pad(m, live, live_arrival, live_k, live_z, live_slope);
    int tail = zero_below > -FLT_MAX;  /* zero_below -inf: every arrival, no early exit at all */
    for (uint32_t j = 1; j < n_exp && m > 0; j++) {
        uint32_t base = j * n + first;
        #pragma omp simd
        for (int q = 0; q < padded; q++) {
            float s_j = live_arrival[q] + draw_exp(base + (uint32_t)live[q], k0, k1);
            float a = inv_temp - s_j * live_k[q];
            float s = sigmoid_f32(a, zero_below);
            float g = (s - s * s) * s_j;
            float z_q = live_z[q] + s, slope_q = live_slope[q] + g;
            live_z[q] = z_q;
            live_slope[q] = slope_q;
            live_arrival[q] = s_j;
            keep[q] = a >= zero_below && !(tail && a < -1.0f && z_q + 2.0f * s == z_q && slope_q + 2.0f * g == slope_q);
        }
        int kept = 0;
        #pragma omp simd reduction(+:kept)
        for (int q = 0; q < m; q++) kept += keep[q];
        /* While most entries are live the finished ones stay in the list: they add exact
         * zeros (a_j < zero_below from then on) at less cost than packing the list anew. */
        if (kept > m - m / 4 && j + 1 < n_exp) continue;
        kept = 0;
        for (int q = 0; q < m; q++) {  /* write the sums back, pack the entries still live */
            int t = live[q];
            z[t] = live_z[q];
            slope[t] = live_slope[q];
            live[kept] = t;
            live_arrival[kept] = live_arrival[q];
            live_k[kept] = live_k[q];
            live_z[kept] = live_z[q];
            live_slope[kept] = live_slope[q];
            kept += keep[q];
        }
        m = kept;
        padded = pad(m, live, live_arrival, live_k, live_z, live_slope);
    }
    if (dz) {
        #pragma omp simd
        for (int t = 0; t < len; t++) dz[t] = slope[t] * factor[t];
    }
}

/* Entries start .. stop - 1 of every member p < n_members of u, z, dz [n_members, n]
 * (row-major float32; dz NULL: no derivative), member p at temperature temps[p] with
 * n_exps[p] arrivals drawn under keys[2 p], keys[2 p + 1]. n_exps[p] n <= 2^32 (the
 * counters are 32-bit). Entries are independent: threads may take disjoint ranges.
 * Returns 0, or -1 where the work arrays (~300 KB) cannot be allocated. */
int relaxed_poisson(const float *u, float *z, float *dz, int64_t n_members, int64_t n,
                    int64_t start, int64_t stop, const double *temps, const int64_t *n_exps,
                    const int64_t *keys, float zero_below) {
    struct work *w = malloc(sizeof(struct work));
    if (!w) return -1;
    for (int64_t p = 0; p < n_members; p++) {
        float temp = (float)temps[p];
        float inv_temp = (float)(1.0 / temps[p]);
        for (int64_t i0 = start; i0 < stop; i0 += CHUNK) {
            int len = (int)(stop - i0 < CHUNK ? stop - i0 : CHUNK);
            int64_t at = p * n + i0;
            block(u + at, z + at, dz ? dz + at : 0, len, (uint32_t)i0, (uint32_t)n, (uint32_t)n_exps[p],
                  temp, inv_temp, (uint32_t)keys[2 * p], (uint32_t)keys[2 * p + 1], zero_below, w);
        }
    }
    free(w);
    return 0;
}
