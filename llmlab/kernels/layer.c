/* Every decoder layer of a decode step in one call: the small per-layer ops in C, the products
 * and the attention through the existing kernels' functions (passed as pointers).
 *
 * Per layer, for rows x (M, dm):                      (a LLaMA block, Touvron et al. 2023)
 *   h = rmsnorm(x) * w1                               RMSNorm (Zhang & Sennrich 2019)
 *   q, k, v = h @ Wqkv^T (+ b); q, k <- RoPE(q, k)    rotary (Su et al. 2021): x*cos + rot(x)*sin
 *   K, V cache[slot] <- k, v; a = attention(q, K, V)  llmlab_decode_attention (attention.c)
 *   x += a @ Wo^T (+ b)
 *   g, u = rmsnorm(x) * w2 @ Wgu^T (+ b); x += (silu(g) * u) @ Wdown^T (+ b)     SwiGLU (Shazeer 2020)
 * Why: in Python each layer is ~25 tensor ops and 4 ctypes calls; at batch 1 their dispatch cost
 * about a third of a token's time (docs/infer.md, breakdown). Products use the block kernel's
 * functions unchanged (same bits); norms, RoPE and SiLU are row-wise and written here, so a row's
 * result does not depend on M or the thread count (the engine's batch invariance). They are not
 * bit-equal to torch's ops (other reduction order / exp): tests/test_kernels_layer.py bounds the
 * difference. Plain C: the compiler vectorizes it for the ISA it is built for (build.py).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "exp_poly.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}
/* prof (optional, the benchmark's breakdown): seconds added per piece, in this order */
enum { P_NORM, P_QKV, P_ROPE_KV, P_ATTN, P_O, P_ADD_SILU, P_UP, P_DOWN, NP };
#define TICK(i) if (prof) { double t_ = now(); prof[i] += t_ - t0; t0 = t_; }

typedef void (*mm_fn)(int, const uint8_t *, const float *, const float *, int64_t, int64_t, const float *,
                      int64_t, float *, int);
typedef int (*mm8_fn)(int, const uint8_t *, const float *, const float *, int64_t, int64_t, const float *,
                      int64_t, float *, int);
typedef void (*attn1_fn)(const float *, const float *, const float *, int64_t, int64_t, const int64_t *, int64_t,
                         int64_t, int64_t, float, float *, int64_t);
typedef void (*attn_fn)(const float *, const float *, const float *, int64_t, int64_t, const int64_t *,
                        const int64_t *, int64_t, int64_t, int64_t, int64_t, float, float *, int, int64_t);

/* one layer's row of `lay`: 4 matrices (qkv, o, gate/up, down) x (fmt, qs, d, m, rows, k), then
 * their 4 bias pointers (0 = none), then the two norm weights, then per matrix the strides of one
 * weight row in qs (bytes), d and m (floats) */
enum { F_QKV = 0, F_O = 6, F_UP = 12, F_DOWN = 18, F_BIAS = 24, F_N1 = 28, F_N2 = 29, F_STR = 30, NF = 42 };

#define PTR(T, v) ((T)(intptr_t)(v))
/* fmt flag of ggml_i8.c: d and m are fp16 (the int8 product's table only; strides in elements) */
#define F16S 16

static void product(const int64_t *f, int64_t bias, const float *in, int64_t M, float *out, const int64_t *fns,
                    int nt, int64_t macs, int64_t macs8) {
    int fmt = (int)f[0];
    int64_t rows = f[4], k = f[5], work = M * rows * k;
    const uint8_t *qs = PTR(const uint8_t *, f[1]);
    const float *d = PTR(const float *, f[2]), *m = PTR(const float *, f[3]);
    int done = 0;
    if (fns[1]) done = PTR(mm8_fn, fns[1])(fmt, qs, d, m, rows, k, in, M, out, work >= macs8 ? nt : 1);
    if (!done && !(fmt & F16S)) PTR(mm_fn, fns[0])(fmt, qs, d, m, rows, k, in, M, out, work >= macs ? nt : 1);
    if (bias) {
        const float *b = PTR(const float *, bias);
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < rows; j++) out[i * rows + j] += b[j];
    }
}

/* rows [r0, r1) of one input row's product (team mode: each thread its share), through the same
 * kernels on the weight rows from r0: a row's bits do not depend on the range (the kernels compute
 * rows in groups of 4 from the pointer they get; r0 is a multiple of 4) */
static void product_rows(const int64_t *f, const int64_t *str, int64_t bias, const float *in, float *out, int64_t r0,
                         int64_t r1, const int64_t *fns) {
    if (r1 <= r0) return;
    int fmt = (int)f[0];
    int64_t k = f[5], es = fmt & F16S ? 2 : 4; /* bytes per scale: fp16 (F16S) or fp32 */
    const uint8_t *qs = PTR(const uint8_t *, f[1]) + r0 * str[0];
    const float *d = PTR(const float *, f[2] + r0 * str[1] * es), *m = f[3] ? PTR(const float *, f[3] + r0 * str[2] * es) : 0;
    int done = 0;
    if (fns[1]) done = PTR(mm8_fn, fns[1])(fmt, qs, d, m, r1 - r0, k, in, 1, out + r0, 1);
    if (!done && !(fmt & F16S)) PTR(mm_fn, fns[0])(fmt, qs, d, m, r1 - r0, k, in, 1, out + r0, 1);
    if (bias)
        for (int64_t j = r0; j < r1; j++) out[j] += PTR(const float *, bias)[j];
}

static void silu_fast(const float *g, const float *u, float *a, int64_t lo, int64_t hi) {
    for (int64_t j = lo; j < hi; j++) a[j] = g[j] / (1.0f + exp_any(-g[j])) * u[j];
}

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SILU_AVX2 1
/* `silu_fast` on 8 lanes, the same bits: for -88 <= g <= 87 the scalar code's operations as GCC -O3
 * with FMA contracts them (floor(fma(-g, log2e, 0.5)); x - fe c1 - fe c2 as two fmas; the polynomial's
 * Horner steps as fmas; y f f + f = fma(y f, f, f); 1 + y 2^e = fma(y, 2^e, 1); then g / that * u).
 * A group of 8 with any g outside that range (or NaN: the clamps' branches, which GCC folds to
 * constants) runs the scalar code. tests/test_kernels_layer.py checks both against each other. */
static void silu_vec(const float *g, const float *u, float *a, int64_t lo, int64_t hi) {
    const __m256 top = _mm256_set1_ps(87.0f), bot = _mm256_set1_ps(-88.0f), one = _mm256_set1_ps(1.0f);
    int64_t j = lo;
    for (; j + 8 <= hi; j += 8) {
        __m256 gv = _mm256_loadu_ps(g + j);
        __m256 in = _mm256_and_ps(_mm256_cmp_ps(gv, top, _CMP_LE_OQ), _mm256_cmp_ps(gv, bot, _CMP_GE_OQ));
        if (_mm256_movemask_ps(in) != 0xFF) { silu_fast(g, u, a, j, j + 8); continue; }
        __m256 x = _mm256_sub_ps(_mm256_setzero_ps(), gv);
        __m256 fe = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
        __m256 den = _mm256_fmadd_ps(exp_reduced8(x, fe), exp2i8(fe), one);
        _mm256_storeu_ps(a + j, _mm256_mul_ps(_mm256_div_ps(gv, den), _mm256_loadu_ps(u + j)));
    }
    silu_fast(g, u, a, j, hi);
}
#endif

/* a[j] = silu(g[j]) * u[j] for j in [lo, hi): fast & 1: exp_poly.h's exp_any (else libm's expf);
 * fast & 2: that on 8 lanes where AVX2 is built in (the same bits, `silu_vec`) */
static void silu_mul(const float *g, const float *u, float *a, int64_t lo, int64_t hi, int fast) {
#ifdef SILU_AVX2
    if ((fast & 3) == 3) { silu_vec(g, u, a, lo, hi); return; }
#endif
    if (fast & 1)
        silu_fast(g, u, a, lo, hi);
    else
        for (int64_t j = lo; j < hi; j++) a[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
}

/* For the test: silu_mul with `fast` (0..3) over [0, n); returns whether the 8-lane form is built in. */
int llmlab_silu_check(const float *g, const float *u, float *a, int64_t n, int fast) {
    silu_mul(g, u, a, 0, n, fast);
#ifdef SILU_AVX2
    return 1;
#else
    return 0;
#endif
}

/* thread t of n: its share [lo, hi) of `rows`, cut at multiples of 4 */
static void share4(int64_t rows, int t, int n, int64_t *lo, int64_t *hi) {
    int64_t g = (rows + 3) / 4, a = g * t / n * 4, b = g * (t + 1) / n * 4;
    *lo = a < rows ? a : rows, *hi = b < rows ? b : rows;
}

#define LANES 16
/* x * rsqrt(mean(x^2) + eps) * w, the sum of squares in LANES fixed lanes and a fixed tree */
static void rmsnorm(const float *x, const float *w, int64_t n, float eps, float *y) {
    float acc[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += x[i + l] * x[i + l];
    for (int s = LANES / 2; s > 0; s /= 2)
        for (int l = 0; l < s; l++) acc[l] += acc[l + s];
    float ss = acc[0];
    for (; i < n; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (i = 0; i < n; i++) y[i] = x[i] * r * w[i];
}

/* RoPE on one head: x*cos + rotate_half(x)*sin, rotate_half's sign folded into sin (as fused.py) */
static void rope(const float *x, const float *cos, const float *sin, int64_t D, float *y) {
    int64_t half = D / 2;
    for (int64_t i = 0; i < half; i++) y[i] = x[i] * cos[i] + x[i + half] * sin[i];
    for (int64_t i = half; i < D; i++) y[i] = x[i] * cos[i] + x[i - half] * sin[i];
}

/* the LM head's row of `head`: fmt, qs, d, m, rows, k, bias, final-norm weight, strides (qs, d, m) */
enum { H_BIAS = 6, H_NORM = 7, H_STR = 8, NH = 11 };
enum { P_HEAD = NP };  /* prof[NP]: the final norm + LM head (+ argmax) */

/* is v a better argmax candidate than b (torch.argmax's order: NaN first, then larger; ties: the earlier) */
static inline int better(float v, float b) { return (v != v && b == b) || v > b; }

/* argmax of y[lo, hi) -> its index (lo if empty) */
static int64_t argmax_range(const float *y, int64_t lo, int64_t hi) {
    int64_t bi = lo;
    for (int64_t j = lo + 1; j < hi; j++)
        if (better(y[j], y[bi])) bi = j;
    return bi;
}

#define TICK0(i) if (prof && t == 0) { double t_ = now(); prof[i] += t_ - t0; t0 = t_; }
#ifdef _OPENMP
#define BARRIER _Pragma("omp barrier")
#else
#define BARRIER
#endif

/* Team mode: this thread's share of a dm-row product into o, a barrier (an orphaned one: it binds to
 * the team's region), then its own residual row += o (every thread, the same bits) */
static void residual_product(const int64_t *f, const int64_t *str, int64_t bias, const float *in, float *o, float *xl,
                             int64_t dm, int t, int ne, const int64_t *fns) {
    int64_t lo, hi;
    if (t < ne) share4(dm, t, ne, &lo, &hi), product_rows(f, str, bias, in, o, lo, hi, fns);
    BARRIER
    for (int64_t j = 0; j < dm; j++) xl[j] += o[j];
}

/* Team mode (one input row, more than one thread): every layer inside ONE parallel region instead
 * of a region per product (each a fork and a join on the runtime) with the small ops between them
 * on one thread while the others wait. Each thread keeps its own copy of the residual row and
 * computes the norms itself (the same ops in the same order: the same bits on every thread), so no
 * hand-off precedes a product; each product's rows, the K/V heads (RoPE, cache writes and their
 * attention) and SiLU*up's columns are shared out; a barrier follows each piece whose output every
 * thread reads (5 per layer). The bits are those of the one-region-per-product path: products by
 * rows in groups of 4 from the same code, attention per K/V head in a fixed order, the same norm,
 * RoPE and SiLU code (tests/test_kernels_layer.py checks equality). lnt[li] < nt: layer li runs on
 * its first lnt[li] threads (the thread tuner's exploring layer). */
static int layers_team(int64_t nl, const int64_t *lay, const int64_t *kp, const int64_t *vp, float *x, int64_t dm,
                       int64_t H, int64_t Hkv, int64_t D, int64_t ffn, const float *cos, const float *sin, float eps,
                       int64_t s_pos, int64_t s_head, const int64_t *wslots, const int64_t *slots,
                       const int64_t *offs, const int64_t *fns, const int32_t *lnt, int nt, int64_t split,
                       double *prof, double *lsec, const int64_t *head, const int64_t *hfns, float *logits,
                       int64_t *amax, int qsplit, int fast_silu) {
    int64_t nqkv = (H + 2 * Hkv) * D, hd = H * D, G = H / Hkv, best[64];
    if (nt > 64) nt = 64;
    float *buf = (float *)malloc(sizeof(float) * (size_t)(nqkv + 2 * hd + 3 * ffn + dm + (int64_t)nt * 2 * dm));
    if (!buf) return 1;
    float *qkv = buf, *q = qkv + nqkv, *att = q + hd, *gu = att + hd, *act = gu + 2 * ffn, *o = act + ffn,
          *priv = o + dm;
    float scale = (float)pow((double)D, -0.5);
#pragma omp parallel num_threads(nt)
    {
        int t = 0, n = 1;
#ifdef _OPENMP
        t = omp_get_thread_num(), n = omp_get_num_threads();
#endif
        float *xl = priv + (int64_t)t * 2 * dm, *h = xl + dm;
        memcpy(xl, x, sizeof(float) * (size_t)dm);
        double t0 = prof && t == 0 ? now() : 0.0;
        for (int64_t li = 0; li < nl; li++) {
            const int64_t *L = lay + li * NF, *S = L + F_STR;
            int ne = lnt[li] < n ? lnt[li] : n, me;  /* this layer's threads; the others wait */
            ne = ne < 1 ? 1 : ne, me = t < ne;
            double l0 = lsec && t == 0 ? now() : 0.0;
            float *K = PTR(float *, kp[li]), *V = PTR(float *, vp[li]);
            int64_t lo = 0, hi = 0, g0 = Hkv * t / ne, g1 = me ? Hkv * (t + 1) / ne : g0;
            rmsnorm(xl, PTR(const float *, L[F_N1]), dm, eps, h);
            TICK0(P_NORM)
            if (me) share4(nqkv, t, ne, &lo, &hi), product_rows(L + F_QKV, S, L[F_BIAS], h, qkv, lo, hi, fns);
            BARRIER
            TICK0(P_QKV)
            for (int64_t g = g0; g < g1; g++) {  /* RoPE and the cache writes of this thread's K/V heads */
                float *kk = K + wslots[0] * s_pos + g * s_head, *vv = V + wslots[0] * s_pos + g * s_head;
                if (cos) rope(qkv + (H + g) * D, cos, sin, D, kk);
                else memcpy(kk, qkv + (H + g) * D, sizeof(float) * (size_t)D);
                memcpy(vv, qkv + (H + Hkv + g) * D, sizeof(float) * (size_t)D);
            }
            /* attention: qsplit, an even share of the query heads (after a barrier: another thread's
             * K/V head may be read); else the query heads of this thread's K/V heads. Each run of
             * heads within one K/V head is one call; every head's scores, softmax and sum are its
             * own, so the bits do not depend on the grouping. */
            int64_t q0 = qsplit ? H * t / ne : g0 * G, q1 = qsplit ? (me ? H * (t + 1) / ne : q0) : g1 * G;
            for (int64_t hh = q0; hh < q1; hh++) {
                if (cos) rope(qkv + hh * D, cos, sin, D, q + hh * D);
                else memcpy(q + hh * D, qkv + hh * D, sizeof(float) * (size_t)D);
            }
            TICK0(P_ROPE_KV)
            if (qsplit) { BARRIER }
            for (int64_t hh = q0; hh < q1;) {
                int64_t g = hh / G, e = (g + 1) * G < q1 ? (g + 1) * G : q1;
                if (fns[3])  /* the one-sequence entry (the same bits, no work lists or region) */
                    PTR(attn1_fn, fns[3])(q + hh * D, K + g * s_head, V + g * s_head, s_pos, s_head, slots + offs[0],
                                          offs[1] - offs[0], e - hh, D, scale, att + hh * D, split);
                else
                    PTR(attn_fn, fns[2])(q + hh * D, K + g * s_head, V + g * s_head, s_pos, s_head, slots, offs, 1, e - hh,
                                         1, D, scale, att + hh * D, 1, split);
                hh = e;
            }
            BARRIER
            TICK0(P_ATTN)
            residual_product(L + F_O, S + 3, L[F_BIAS + 1], att, o, xl, dm, t, ne, fns);
            TICK0(P_O)
            rmsnorm(xl, PTR(const float *, L[F_N2]), dm, eps, h);
            TICK0(P_NORM)
            if (me) {  /* gate and up rows of the same columns, then their SiLU*up: no hand-off between */
                share4(ffn, t, ne, &lo, &hi);
                product_rows(L + F_UP, S + 6, L[F_BIAS + 2], h, gu, lo, hi, fns);
                product_rows(L + F_UP, S + 6, L[F_BIAS + 2], h, gu, ffn + lo, ffn + hi, fns);
                TICK0(P_UP)
                silu_mul(gu, gu + ffn, act, lo, hi, fast_silu);
            }
            BARRIER
            TICK0(P_ADD_SILU)
            residual_product(L + F_DOWN, S + 9, L[F_BIAS + 3], act, o, xl, dm, t, ne, fns);
            TICK0(P_DOWN)
            if (lsec && t == 0) lsec[li] = now() - l0;
        }
        if (t == 0) memcpy(x, xl, sizeof(float) * (size_t)dm);
        if (head) {  /* final norm (each thread), the head's rows shared out, each share's argmax */
            int64_t lo, hi;
            rmsnorm(xl, PTR(const float *, head[H_NORM]), dm, eps, h);
            share4(head[4], t, n, &lo, &hi);
            product_rows(head, head + H_STR, head[H_BIAS], h, logits, lo, hi, hfns);
            if (t < 64) best[t] = argmax_range(logits, lo, hi);
            BARRIER
            if (t == 0 && amax) {
                int64_t bi = best[0];
                for (int u = 1; u < n && u < 64; u++)
                    if (better(logits[best[u]], logits[bi])) bi = best[u];
                *amax = bi;
            }
            TICK0(P_HEAD)
        }
    }
    free(buf);
    return 0;
}

/* nl layers over x (M, dm) in place. kp, vp: each layer's K and V cache; K/V head g of slot s at
 * s * s_pos + g * s_head; wslots (M): the slot each row's k, v go to; slots/offs: every row's
 * key slots (llmlab_decode_attention's). cos, sin (M, D) or 0 (no RoPE). fns: block matmul, int8
 * matmul or 0, attention, and the one-sequence attention (llmlab_decode_attention_one) or 0 (team mode's). lnt[li]: layer li's thread count; its products of at least macs (int8:
 * macs8) multiply-adds get that many threads. prof: 0, or NP doubles that get each piece's
 * seconds added; lsec: 0, or one double per layer that gets its seconds (the thread tuner's). team:
 * one input row on more than one thread runs `layers_team` (one parallel region for every layer);
 * team bit 1: its attention is shared out by query heads (else by K/V heads); bit 2 (any path):
 * SiLU through exp_poly.h's exp_any (else libm's expf); bit 3 (with bit 2): that on 8 lanes.
 * head (one row only; 0: none): the final RMSNorm and the LM head (`H_*` fields) into logits, through
 * hfns (the block matmul, the int8 one or 0) on the threads of the widest layer, and the logits'
 * argmax into *amax (if not 0): the step's whole forward in this call.
 * Returns 0 (2: ran as a team), or 1 if out of memory (then x is unchanged). */
int llmlab_decode_layers(int64_t nl, const int64_t *lay, const int64_t *kp, const int64_t *vp, float *x,
                         int64_t M, int64_t dm, int64_t H, int64_t Hkv, int64_t D, int64_t ffn,
                         const float *cos, const float *sin, float eps, int64_t s_pos, int64_t s_head,
                         const int64_t *wslots, const int64_t *slots, const int64_t *offs, const int64_t *fns,
                         const int32_t *lnt, int64_t macs, int64_t macs8, int64_t split, double *prof,
                         double *lsec, int team, const int64_t *head, const int64_t *hfns, float *logits,
                         int64_t *amax) {
    int max_nt = 1;
    for (int64_t li = 0; li < nl; li++) max_nt = lnt[li] > max_nt ? lnt[li] : max_nt;
    if (M != 1) head = 0;
    if ((team & 1) && M == 1 && max_nt > 1 && ffn % 4 == 0 && Hkv > 0 && H % Hkv == 0)
        return layers_team(nl, lay, kp, vp, x, dm, H, Hkv, D, ffn, cos, sin, eps, s_pos, s_head, wslots, slots,
                           offs, fns, lnt, max_nt, split, prof, lsec, head, hfns, logits, amax, team >> 1 & 1,
                           team >> 2 & 3) ? 1 : 2;
    int64_t nqkv = (H + 2 * Hkv) * D, hd = H * D;
    size_t need = (size_t)(M * (dm + nqkv + 2 * hd + 2 * ffn + ffn + dm));
    float *buf = (float *)malloc(sizeof(float) * need);
    if (!buf) return 1;
    float *h = buf, *qkv = h + M * dm, *q = qkv + M * nqkv, *att = q + M * hd, *gu = att + M * hd,
          *act = gu + M * 2 * ffn, *o = act + M * ffn;
    float scale = (float)pow((double)D, -0.5);
    double t0 = prof ? now() : 0.0;
    /* attention's multiply-adds (q.k and p.v over every row's keys): a small one (batch 1, a short
     * context) runs on one thread, as the products do; its bits do not depend on the count */
    int small_attn = 2 * (offs[M] - offs[0]) * H * D < macs;
    for (int64_t li = 0; li < nl; li++) {
        const int64_t *L = lay + li * NF;
        int nt = lnt[li], attn_nt = small_attn ? 1 : nt;  /* per layer: the thread tuner's choice */
        double l0 = lsec ? now() : 0.0;
        float *K = PTR(float *, kp[li]), *V = PTR(float *, vp[li]);
        for (int64_t i = 0; i < M; i++) rmsnorm(x + i * dm, PTR(const float *, L[F_N1]), dm, eps, h + i * dm);
        TICK(P_NORM)
        product(L + F_QKV, L[F_BIAS], h, M, qkv, fns, nt, macs, macs8);
        TICK(P_QKV)
        for (int64_t i = 0; i < M; i++) {
            const float *r = qkv + i * nqkv, *c = cos ? cos + i * D : 0, *s = sin ? sin + i * D : 0;
            for (int64_t hh = 0; hh < H; hh++) {
                if (c) rope(r + hh * D, c, s, D, q + (i * H + hh) * D);
                else memcpy(q + (i * H + hh) * D, r + hh * D, sizeof(float) * D);
            }
            for (int64_t g = 0; g < Hkv; g++) {
                float *kk = K + wslots[i] * s_pos + g * s_head, *vv = V + wslots[i] * s_pos + g * s_head;
                if (c) rope(r + (H + g) * D, c, s, D, kk);
                else memcpy(kk, r + (H + g) * D, sizeof(float) * D);
                memcpy(vv, r + (H + Hkv + g) * D, sizeof(float) * D);
            }
        }
        TICK(P_ROPE_KV)
        PTR(attn_fn, fns[2])(q, K, V, s_pos, s_head, slots, offs, M, H, Hkv, D, scale, att, attn_nt, split);
        TICK(P_ATTN)
        product(L + F_O, L[F_BIAS + 1], att, M, o, fns, nt, macs, macs8);
        TICK(P_O)
        for (int64_t j = 0; j < M * dm; j++) x[j] += o[j];
        TICK(P_ADD_SILU)
        for (int64_t i = 0; i < M; i++) rmsnorm(x + i * dm, PTR(const float *, L[F_N2]), dm, eps, h + i * dm);
        TICK(P_NORM)
        product(L + F_UP, L[F_BIAS + 2], h, M, gu, fns, nt, macs, macs8);
        TICK(P_UP)
        for (int64_t i = 0; i < M; i++) {
            const float *g = gu + i * 2 * ffn, *u = g + ffn;
            float *a = act + i * ffn;
            silu_mul(g, u, a, 0, ffn, team >> 2 & 3);
        }
        TICK(P_ADD_SILU)
        product(L + F_DOWN, L[F_BIAS + 3], act, M, o, fns, nt, macs, macs8);
        TICK(P_DOWN)
        for (int64_t j = 0; j < M * dm; j++) x[j] += o[j];
        TICK(P_ADD_SILU)
        if (lsec) lsec[li] = now() - l0;
    }
    if (head) {  /* one row: the final norm, the LM head, its argmax */
        rmsnorm(x, PTR(const float *, head[H_NORM]), dm, eps, h);
        product(head, head[H_BIAS], h, 1, logits, hfns, max_nt, macs, macs8);
        if (amax) *amax = argmax_range(logits, 0, head[4]);
        TICK(P_HEAD)
    }
    free(buf);
    return 0;
}

/* For the breakdown (benchmarks/decode_overhead.py): the cost of OpenMP hand-offs on the runtime the
 * products use (torch's libgomp). out[0]: seconds per empty `parallel num_threads(nt)` region, back
 * to back; out[1]: per `barrier` inside one region; out[2]: per empty region after gap_s seconds of
 * one-thread work (the decode pattern: a small op, then a product's region). */
void llmlab_omp_probe(int nt, int64_t reps, double gap_s, double *out) {
    double t0 = now();
    for (int64_t i = 0; i < reps; i++) {
#pragma omp parallel num_threads(nt)
        { __asm__ volatile("" ::: "memory"); }
    }
    out[0] = (now() - t0) / (double)reps;
    t0 = now();
#pragma omp parallel num_threads(nt)
    for (int64_t i = 0; i < reps; i++) {
#pragma omp barrier
    }
    out[1] = (now() - t0) / (double)reps;
    double in_regions = 0.0;
    for (int64_t i = 0; i < reps; i++) {
        double g0 = now();
        while (now() - g0 < gap_s) {}
        double r0 = now();
#pragma omp parallel num_threads(nt)
        { __asm__ volatile("" ::: "memory"); }
        in_regions += now() - r0;
    }
    out[2] = in_regions / (double)reps;
}
