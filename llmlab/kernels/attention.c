/* Decode attention over a KV cache addressed by slots: one new query per sequence.
 *
 * out[b, h] = softmax(scale * q[b, h] . K[s, g]) @ V[s, g]  over the slots s of sequence b, with
 * g = h / (H / Hkv) (grouped-query attention: consecutive query heads share a K/V head, as in
 * torch's SDPA with enable_gqa). K[s, g] lives at k + s * s_pos + g * s_head (paged cache:
 * s_pos = Hkv*D, s_head = D; contiguous (Hkv, T, D) cache: s_pos = D, s_head = T*D).
 * Why: the engine's decode step gathered every sequence's keys (index_select) into padded
 * groups for torch's SDPA; here each (sequence, head) reads its keys in place, once.
 * Every (b, g) is computed by one thread in one fixed order, so its result does not depend on
 * the batch, on the other sequences or on the thread count (the engine's batch invariance).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define LANES 16

static float dot(const float *a, const float *b, int64_t D) {
    float acc[LANES] = {0};
    int64_t d = 0;
    for (; d + LANES <= D; d += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += a[d + l] * b[d + l];  /* lane-wise: vectorizes, fixed order */
    for (int w = LANES / 2; w > 0; w /= 2)  /* a fixed tree, lane-wise too */
        for (int l = 0; l < w; l++) acc[l] += acc[l + w];
    float s = acc[0];
    for (; d < D; d++) s += a[d] * b[d];
    return s;
}

/* ---- AVX2 path for head sizes that are multiples of 32 (SmolLM2: 64): the same sums in the same
 * order as `dot` and the p.V loops below (which the compiler contracts to FMAs), written so that
 * the accumulators stay in registers: `dot`'s 16 lanes as two 8-lane vectors and its tree as
 * hsum(lo + hi); p.V over keys in order for up to 3 heads x 32 values at a time (12 accumulators)
 * instead of a load and a store of the output per key. */
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define ATTN_AVX2 1
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float dot16(const float *a, const float *b, int64_t D) {
    __m256 lo = _mm256_setzero_ps(), hi = lo;
    for (int64_t d = 0; d < D; d += 16) {
        lo = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), lo);
        hi = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 8), _mm256_loadu_ps(b + d + 8), hi);
    }
    return hsum8(_mm256_add_ps(lo, hi));
}

/* o[h * D + d] = sum over keys i in order of p[h * n + i] * v_i[d], for NH (1..3) heads sharing
 * the value rows v + sl[i] * s_pos (already offset to the K/V head) */
static inline __attribute__((always_inline)) void pv_t(const int NH, const float *p, int64_t n, const float *v,
                                                       const int64_t *sl, int64_t s_pos, int64_t D, float *o) {
    for (int64_t d0 = 0; d0 < D; d0 += 32) {
        __m256 a[3][4];
        for (int h = 0; h < NH; h++)
            for (int j = 0; j < 4; j++) a[h][j] = _mm256_setzero_ps();
        for (int64_t i = 0; i < n; i++) {
            const float *vv = v + sl[i] * s_pos + d0;
            __m256 v0 = _mm256_loadu_ps(vv), v1 = _mm256_loadu_ps(vv + 8);
            __m256 v2 = _mm256_loadu_ps(vv + 16), v3 = _mm256_loadu_ps(vv + 24);
            for (int h = 0; h < NH; h++) {
                __m256 w = _mm256_broadcast_ss(p + h * n + i);
                a[h][0] = _mm256_fmadd_ps(w, v0, a[h][0]);
                a[h][1] = _mm256_fmadd_ps(w, v1, a[h][1]);
                a[h][2] = _mm256_fmadd_ps(w, v2, a[h][2]);
                a[h][3] = _mm256_fmadd_ps(w, v3, a[h][3]);
            }
        }
        for (int h = 0; h < NH; h++)
            for (int j = 0; j < 4; j++) _mm256_storeu_ps(o + h * D + d0 + 8 * j, a[h][j]);
    }
}

/* the G heads of one K/V head (v offset to it), 3 at a time */
static void pv(const float *p, int64_t n, int64_t G, const float *v, const int64_t *sl, int64_t s_pos,
               int64_t D, float *o) {
    for (int64_t h = 0; h < G; h += 3) {
        int64_t nh = G - h < 3 ? G - h : 3;
        if (nh == 3) pv_t(3, p + h * n, n, v, sl, s_pos, D, o + h * D);
        else if (nh == 2) pv_t(2, p + h * n, n, v, sl, s_pos, D, o + h * D);
        else pv_t(1, p + h * n, n, v, sl, s_pos, D, o + h * D);
    }
}
static int fast_on = 2;
#define FAST(D) ((D) % 32 == 0 && fast_on)
#define FAST2(D) ((D) % 32 == 0 && fast_on >= 2)

#include "exp_poly.h"
/* exp_poly.h's exp_neg on 8 lanes, the same bits: its operations as GCC -O3 with FMA contracts the
 * scalar code (t - 0.5 = fma(x, log2e, -0.5); f = x - fe c1 - fe c2 as two fmas; the polynomial's
 * Horner steps as fmas; y f f + f = fma(y f, f, f)); the clamp x < -87 ? -87 : x as max(-87, x)
 * (which keeps x where x is NaN, as the compare does). tests/test_kernels_attention.py checks it
 * against the scalar code over the whole range it is used on. */
static inline __m256 exp_neg8(__m256 x) {
    x = _mm256_max_ps(_mm256_set1_ps(-87.0f), x);
    __m256 fe = _mm256_cvtepi32_ps(_mm256_cvttps_epi32(
        _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(-0.5f))));
    return _mm256_mul_ps(exp_reduced8(x, fe), exp2i8(fe));
}

/* p[i] = scale * dot16(q, k_i) for keys [0, n) (k_i = k + sl[i] * s_pos), 4 keys at a time: the
 * same two 8-lane accumulators per key as dot16 (q in the same order), then hsum8's tree for 4 keys
 * at once (lo + hi; 128-bit halves added; a 4 x 4 transpose; (t0 + t2) + (t1 + t3)). */
static void scores(const float *q, const float *k, const int64_t *sl, int64_t s_pos, int64_t n, int64_t D,
                   float scale, float *p) {
    int64_t i = 0;
    const __m128 sc = _mm_set1_ps(scale);
    for (; i + 4 <= n; i += 4) {
        const float *k0 = k + sl[i] * s_pos, *k1 = k + sl[i + 1] * s_pos, *k2 = k + sl[i + 2] * s_pos,
                    *k3 = k + sl[i + 3] * s_pos;
        __m256 l0 = _mm256_setzero_ps(), l1 = l0, l2 = l0, l3 = l0, h0 = l0, h1 = l0, h2 = l0, h3 = l0;
        for (int64_t d = 0; d < D; d += 16) {
            __m256 qa = _mm256_loadu_ps(q + d), qb = _mm256_loadu_ps(q + d + 8);
            l0 = _mm256_fmadd_ps(qa, _mm256_loadu_ps(k0 + d), l0), h0 = _mm256_fmadd_ps(qb, _mm256_loadu_ps(k0 + d + 8), h0);
            l1 = _mm256_fmadd_ps(qa, _mm256_loadu_ps(k1 + d), l1), h1 = _mm256_fmadd_ps(qb, _mm256_loadu_ps(k1 + d + 8), h1);
            l2 = _mm256_fmadd_ps(qa, _mm256_loadu_ps(k2 + d), l2), h2 = _mm256_fmadd_ps(qb, _mm256_loadu_ps(k2 + d + 8), h2);
            l3 = _mm256_fmadd_ps(qa, _mm256_loadu_ps(k3 + d), l3), h3 = _mm256_fmadd_ps(qb, _mm256_loadu_ps(k3 + d + 8), h3);
        }
        l0 = _mm256_add_ps(l0, h0), l1 = _mm256_add_ps(l1, h1), l2 = _mm256_add_ps(l2, h2), l3 = _mm256_add_ps(l3, h3);
        __m128 t0 = _mm_add_ps(_mm256_castps256_ps128(l0), _mm256_extractf128_ps(l0, 1));
        __m128 t1 = _mm_add_ps(_mm256_castps256_ps128(l1), _mm256_extractf128_ps(l1, 1));
        __m128 t2 = _mm_add_ps(_mm256_castps256_ps128(l2), _mm256_extractf128_ps(l2, 1));
        __m128 t3 = _mm_add_ps(_mm256_castps256_ps128(l3), _mm256_extractf128_ps(l3, 1));
        _MM_TRANSPOSE4_PS(t0, t1, t2, t3);
        _mm_storeu_ps(p + i, _mm_mul_ps(sc, _mm_add_ps(_mm_add_ps(t0, t2), _mm_add_ps(t1, t3))));
    }
    for (; i < n; i++) p[i] = scale * dot16(q, k + sl[i] * s_pos, D);
}

/* C (1..4) heads' sums of p over keys in order, side by side (independent chains) */
static inline __attribute__((always_inline)) void sums_t(const int C, const float *p, int64_t n, float *sum) {
    float s[4] = {0.f, 0.f, 0.f, 0.f};
    for (int64_t i = 0; i < n; i++)
        for (int h = 0; h < C; h++) s[h] += p[h * n + i];
    for (int h = 0; h < C; h++) sum[h] = s[h];
}

/* The softmax of `whole` over nh heads' scores p (h * n + i), the same bits: the max over 8 lanes
 * (a max is exact and the scalar's first-of-equals choice differs only between +0 and -0, which
 * give the same x - max into e^x and so the same values), e^x on 8 lanes, each head's sum in key
 * order (4 heads' chains side by side), then the scaling. */
static void softmax_fast(float *p, int64_t n, int64_t nh) {
    float sum[4];
    for (int64_t h = 0; h < nh; h++) {
        float *ph = p + h * n;
        __m256 m8 = _mm256_set1_ps(-INFINITY);
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) m8 = _mm256_max_ps(_mm256_loadu_ps(ph + i), m8);
        float l[8], mx = -INFINITY;
        _mm256_storeu_ps(l, m8);
        for (int j = 0; j < 8; j++) mx = l[j] > mx ? l[j] : mx;
        for (; i < n; i++) mx = ph[i] > mx ? ph[i] : mx;
        const __m256 mv = _mm256_set1_ps(mx);
        for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(ph + i, exp_neg8(_mm256_sub_ps(_mm256_loadu_ps(ph + i), mv)));
        for (; i < n; i++) ph[i] = exp_neg(ph[i] - mx);
    }
    for (int64_t h = 0; h < nh; h += 4) {
        int64_t c = nh - h < 4 ? nh - h : 4;
        if (c == 4) sums_t(4, p + h * n, n, sum);
        else if (c == 3) sums_t(3, p + h * n, n, sum);
        else if (c == 2) sums_t(2, p + h * n, n, sum);
        else sums_t(1, p + h * n, n, sum);
        for (int64_t j = 0; j < c; j++) {
            float *ph = p + (h + j) * n, inv = 1.f / sum[j];
            for (int64_t i = 0; i < n; i++) ph[i] *= inv;
        }
    }
}
#else
#define FAST(D) 0
#endif

/* Exported: the AVX2 path off (0), on (1: q.k per key, p.V in registers) or on with the scores 4
 * keys at a time and the softmax on 8 lanes (2, the default; LLMLAB_C_ATTN_VEC=0 gives 1); returns 1
 * where it is compiled in. For the test that compares the levels with the plain C loops in the same
 * build (tests/test_kernels_attention.py) and the A/B arms of benchmarks/decode_overhead.py. */
int llmlab_attention_fast(int on) {
#ifdef ATTN_AVX2
    fast_on = on;
    return 1;
#else
    (void)on;
    return 0;
#endif
}

/* For the test: out_s[i] = exp_neg(x[i]) (the scalar code), out_v[i] the 8-lane exp_neg8 (a last
 * partial group padded); returns 0 where the AVX2 path is not compiled in. */
int llmlab_attention_exp_check(const float *x, int64_t n, float *out_s, float *out_v) {
#ifdef ATTN_AVX2
    for (int64_t i = 0; i < n; i++) out_s[i] = exp_neg(x[i]);
    for (int64_t i = 0; i < n; i += 8) {
        float t[8] = {0};
        for (int64_t j = i; j < i + 8 && j < n; j++) t[j - i] = x[j];
        _mm256_storeu_ps(t, exp_neg8(_mm256_loadu_ps(t)));
        for (int64_t j = i; j < i + 8 && j < n; j++) out_v[j] = t[j - i];
    }
    return 1;
#else
    (void)x, (void)n, (void)out_s, (void)out_v;
    return 0;
#endif
}

/* q.k in `dot`'s order (the AVX2 form where it applies) */
static inline float qk(const float *a, const float *b, int64_t D) {
#ifdef ATTN_AVX2
    if (FAST(D)) return dot16(a, b, D);
#endif
    return dot(a, b, D);
}

#include "exp_poly.h"  /* exp_neg: e^x for x <= 0 (shared with layer.c) */

/* One sequence, K/V heads [g0, g1), all n keys: the G query heads of each K/V head read its key
 * and value once. Each head's scores, softmax and sum over keys run in one fixed order whatever
 * [g0, g1) is, so its bits do not depend on how heads are grouped into work items. */
static void whole(const float *qv, const float *k, const float *v, int64_t s_pos, int64_t s_head,
                  const int64_t *sl, int64_t n, int64_t g0, int64_t g1, int64_t G, int64_t D, float scale,
                  float *o) {
    int64_t nh = (g1 - g0) * G;  /* query heads here; qv, o point at head g0 * G */
    for (int64_t d = 0; d < nh * D; d++) o[d] = 0.f;
    float *p = (float *)malloc(sizeof(float) * (size_t)(n > 0 ? n * nh : 1));
    if (!p || n <= 0) { free(p); return; }
#ifdef ATTN_AVX2
    if (FAST2(D)) {  /* the same scores and softmax, 4 keys / 8 lanes at a time (level 2) */
        for (int64_t g = g0; g < g1; g++)
            for (int64_t h = (g - g0) * G; h < (g - g0 + 1) * G; h++)
                scores(qv + h * D, k + g * s_head, sl, s_pos, n, D, scale, p + h * n);
        softmax_fast(p, n, nh);
        for (int64_t g = g0; g < g1; g++)
            pv(p + (g - g0) * G * n, n, G, v + g * s_head, sl, s_pos, D, o + (g - g0) * G * D);
        free(p);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++)
        for (int64_t g = g0; g < g1; g++) {
            const float *kk = k + sl[i] * s_pos + g * s_head;
            for (int64_t h = (g - g0) * G; h < (g - g0 + 1) * G; h++) p[h * n + i] = scale * qk(qv + h * D, kk, D);
        }
    for (int64_t h = 0; h < nh; h++) {
        float *ph = p + h * n, mx = -INFINITY, sum = 0.f;
        for (int64_t i = 0; i < n; i++) mx = ph[i] > mx ? ph[i] : mx;
        for (int64_t i = 0; i < n; i++) ph[i] = exp_neg(ph[i] - mx);
        for (int64_t i = 0; i < n; i++) sum += ph[i];
        float inv = 1.f / sum;
        for (int64_t i = 0; i < n; i++) ph[i] *= inv;
    }
#ifdef ATTN_AVX2
    if (FAST(D)) {
        for (int64_t g = g0; g < g1; g++)
            pv(p + (g - g0) * G * n, n, G, v + g * s_head, sl, s_pos, D, o + (g - g0) * G * D);
        free(p);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++)
        for (int64_t g = g0; g < g1; g++) {
            const float *vv = v + sl[i] * s_pos + g * s_head;
            for (int64_t h = (g - g0) * G; h < (g - g0 + 1) * G; h++) {
                float w = p[h * n + i];
                float *oh = o + h * D;
                for (int64_t d = 0; d < D; d++) oh[d] += w * vv[d];
            }
        }
    free(p);
}

/* Flash-Decoding's partial (Dao et al. 2023): keys [0, n) of one chunk -> per head h, at
 * part + h * (D + 2): m = max score, l = sum e^(s - m), then o = sum e^(s - m) v (unnormalized). */
static void partial(const float *qv, const float *k, const float *v, int64_t s_pos, int64_t s_head,
                    const int64_t *sl, int64_t n, int64_t g, int64_t G, int64_t D, float scale, float *part) {
    float *p = (float *)malloc(sizeof(float) * (size_t)(n * G));
    if (!p) return;
    for (int64_t i = 0; i < n; i++) {  /* as `whole`: each key read once for the G heads */
        const float *kk = k + sl[i] * s_pos + g * s_head;
        for (int64_t h = 0; h < G; h++) p[h * n + i] = scale * qk(qv + h * D, kk, D);
    }
    for (int64_t h = 0; h < G; h++) {
        float *ph = p + h * n, mx = -INFINITY, sum = 0.f, *o = part + h * (D + 2) + 2;
        for (int64_t i = 0; i < n; i++) mx = ph[i] > mx ? ph[i] : mx;
        for (int64_t i = 0; i < n; i++) ph[i] = exp_neg(ph[i] - mx);
        for (int64_t i = 0; i < n; i++) sum += ph[i];
        part[h * (D + 2)] = mx, part[h * (D + 2) + 1] = sum;
        for (int64_t d = 0; d < D; d++) o[d] = 0.f;
    }
#ifdef ATTN_AVX2
    if (FAST(D)) {  /* p.V into a contiguous buffer, then to the partials' (D + 2)-strided outputs */
        float *t = (float *)malloc(sizeof(float) * (size_t)(G * D));
        if (t) {
            pv(p, n, G, v + g * s_head, sl, s_pos, D, t);
            for (int64_t h = 0; h < G; h++)
                for (int64_t d = 0; d < D; d++) part[h * (D + 2) + 2 + d] = t[h * D + d];
        }
        free(t), free(p);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) {
        const float *vv = v + sl[i] * s_pos + g * s_head;
        for (int64_t h = 0; h < G; h++) {
            float w = p[h * n + i], *o = part + h * (D + 2) + 2;
            for (int64_t d = 0; d < D; d++) o[d] += w * vv[d];
        }
    }
    free(p);
}

/* Combine c chunk partials of one (sequence, K/V head) in chunk order, by log-sum-exp:
 * M = max m_j, out = sum_j e^(m_j - M) o_j / sum_j e^(m_j - M) l_j. */
static void combine(const float *part, int64_t c, int64_t stride, int64_t G, int64_t D, float *o) {
    for (int64_t h = 0; h < G; h++) {
        float M = -INFINITY, L = 0.f, *oh = o + h * D;
        for (int64_t j = 0; j < c; j++) M = part[j * stride + h * (D + 2)] > M ? part[j * stride + h * (D + 2)] : M;
        for (int64_t d = 0; d < D; d++) oh[d] = 0.f;
        for (int64_t j = 0; j < c; j++) {
            const float *ph = part + j * stride + h * (D + 2);
            float w = exp_neg(ph[0] - M);
            L += w * ph[1];
            for (int64_t d = 0; d < D; d++) oh[d] += w * ph[2 + d];
        }
        float inv = 1.f / L;
        for (int64_t d = 0; d < D; d++) oh[d] *= inv;
    }
}

/* split > 0: a sequence with more than `split` keys is cut into chunks of `split` keys, each a work
 * item of its own (Flash-Decoding: threads share one long sequence instead of idling), then
 * combined. The cut depends only on the sequence's length, so its result is still the same for
 * any batch and thread count; sequences up to `split` keys run `whole` exactly as before. */
void llmlab_decode_attention(const float *q, const float *k, const float *v, int64_t s_pos, int64_t s_head,
                             const int64_t *slots, const int64_t *offs, int64_t B, int64_t H, int64_t Hkv,
                             int64_t D, float scale, float *out, int nt, int64_t split) {
    int64_t G = H / Hkv, n_chunks = 0;
    /* paged cache (a slot's K/V heads side by side): one work item per sequence reads each slot's
     * Hkv * D values contiguously instead of Hkv items each reading every slot's D-value slice */
    int interleaved = Hkv > 1 && s_head * Hkv <= s_pos;
    if (nt < 1) nt = 1;
    int64_t *first = (int64_t *)malloc(sizeof(int64_t) * (size_t)(B + 1));  /* sequence b's first chunk */
    if (!first) return;
    for (int64_t b = 0; b < B; b++) {
        int64_t n = offs[b + 1] - offs[b];
        first[b] = n_chunks;
        if (split > 0 && n > split) n_chunks += (n + split - 1) / split;
    }
    first[B] = n_chunks;
    int64_t *owner = (int64_t *)malloc(sizeof(int64_t) * (size_t)(n_chunks + 1));
    float *part = (float *)malloc(sizeof(float) * (size_t)(n_chunks * Hkv * G * (D + 2) + 1));
    if (!owner || !part) { free(first); free(owner); free(part); return; }
    for (int64_t b = 0; b < B; b++)
        for (int64_t c = first[b]; c < first[b + 1]; c++) owner[c] = b;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < B * Hkv + n_chunks * Hkv; it++) {
            if (it < B * Hkv) {  /* a whole (sequence, head) unless it is split */
                int64_t b = it / Hkv, g = it % Hkv, g1 = g + 1;
                if (first[b + 1] > first[b] || (interleaved && g > 0)) continue;
                if (interleaved) g1 = Hkv;  /* one item reads each slot's K/V heads as one run */
                whole(q + (b * H + g * G) * D, k, v, s_pos, s_head, slots + offs[b], offs[b + 1] - offs[b], g, g1, G,
                      D, scale, out + (b * H + g * G) * D);
            } else {  /* one chunk of a split sequence */
                int64_t c = (it - B * Hkv) / Hkv, g = (it - B * Hkv) % Hkv, b = owner[c];
                int64_t i0 = (c - first[b]) * split, n = offs[b + 1] - offs[b] - i0;
                partial(q + (b * H + g * G) * D, k, v, s_pos, s_head, slots + offs[b] + i0, n < split ? n : split,
                        g, G, D, scale, part + (c * Hkv + g) * G * (D + 2));
            }
        }
#pragma omp for schedule(static)
        for (int64_t bg = 0; bg < B * Hkv; bg++) {
            int64_t b = bg / Hkv, g = bg % Hkv, c = first[b + 1] - first[b];
            if (c == 0) continue;
            /* chunk j of (b, g) sits at (first[b] + j) * Hkv + g: Hkv * G * (D + 2) floats apart */
            combine(part + (first[b] * Hkv + g) * G * (D + 2), c, Hkv * G * (D + 2), G, D, out + (b * H + g * G) * D);
        }
    }
    free(first), free(owner), free(part);
}

/* One sequence's n keys (slots sl) for G query heads of ONE K/V head (k, v at that head), on the
 * calling thread: `whole` directly (the same bits as llmlab_decode_attention on it), without that
 * function's work lists, their mallocs and its one-thread OpenMP region, which cost ~1-2 us a call
 * (layer.c's team mode makes 2 a layer on each thread). A sequence longer than `split` keys goes
 * through llmlab_decode_attention (Flash-Decoding's chunks, the same bits as there). */
void llmlab_decode_attention_one(const float *q, const float *k, const float *v, int64_t s_pos, int64_t s_head,
                                 const int64_t *sl, int64_t n, int64_t G, int64_t D, float scale, float *out,
                                 int64_t split) {
    if (split > 0 && n > split) {
        int64_t offs[2] = {0, n};
        llmlab_decode_attention(q, k, v, s_pos, s_head, sl, offs, 1, G, 1, D, scale, out, 1, split);
        return;
    }
    whole(q, k, v, s_pos, s_head, sl, n, 0, 1, G, D, scale, out);
}
