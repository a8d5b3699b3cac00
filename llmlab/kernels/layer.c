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
typedef void (*attn_fn)(const float *, const float *, const float *, int64_t, int64_t, const int64_t *,
                        const int64_t *, int64_t, int64_t, int64_t, int64_t, float, float *, int, int64_t);

/* one layer's row of `lay`: 4 matrices (qkv, o, gate/up, down) x (fmt, qs, d, m, rows, k), then
 * their 4 bias pointers (0 = none), then the two norm weights */
enum { F_QKV = 0, F_O = 6, F_UP = 12, F_DOWN = 18, F_BIAS = 24, F_N1 = 28, F_N2 = 29, NF = 30 };

#define PTR(T, v) ((T)(intptr_t)(v))

static void product(const int64_t *f, int64_t bias, const float *in, int64_t M, float *out, const int64_t *fns,
                    int nt, int64_t macs, int64_t macs8) {
    int fmt = (int)f[0];
    int64_t rows = f[4], k = f[5], work = M * rows * k;
    const uint8_t *qs = PTR(const uint8_t *, f[1]);
    const float *d = PTR(const float *, f[2]), *m = PTR(const float *, f[3]);
    int done = 0;
    if (fns[1]) done = PTR(mm8_fn, fns[1])(fmt, qs, d, m, rows, k, in, M, out, work >= macs8 ? nt : 1);
    if (!done) PTR(mm_fn, fns[0])(fmt, qs, d, m, rows, k, in, M, out, work >= macs ? nt : 1);
    if (bias) {
        const float *b = PTR(const float *, bias);
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < rows; j++) out[i * rows + j] += b[j];
    }
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

/* nl layers over x (M, dm) in place. kp, vp: each layer's K and V cache; K/V head g of slot s at
 * s * s_pos + g * s_head; wslots (M): the slot each row's k, v go to; slots/offs: every row's
 * key slots (llmlab_decode_attention's). cos, sin (M, D) or 0 (no RoPE). fns: block matmul, int8
 * matmul or 0, attention. lnt[li]: layer li's thread count; its products of at least macs (int8:
 * macs8) multiply-adds get that many threads. prof: 0, or NP doubles that get each piece's
 * seconds added; lsec: 0, or one double per layer that gets its seconds (the thread tuner's). Returns 0, or 1 if out of memory
 * (then x is unchanged). */
int llmlab_decode_layers(int64_t nl, const int64_t *lay, const int64_t *kp, const int64_t *vp, float *x,
                         int64_t M, int64_t dm, int64_t H, int64_t Hkv, int64_t D, int64_t ffn,
                         const float *cos, const float *sin, float eps, int64_t s_pos, int64_t s_head,
                         const int64_t *wslots, const int64_t *slots, const int64_t *offs, const int64_t *fns,
                         const int32_t *lnt, int64_t macs, int64_t macs8, int64_t split, double *prof,
                         double *lsec) {
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
            for (int64_t j = 0; j < ffn; j++) a[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
        }
        TICK(P_ADD_SILU)
        product(L + F_DOWN, L[F_BIAS + 3], act, M, o, fns, nt, macs, macs8);
        TICK(P_DOWN)
        for (int64_t j = 0; j < M * dm; j++) x[j] += o[j];
        TICK(P_ADD_SILU)
        if (lsec) lsec[li] = now() - l0;
    }
    free(buf);
    return 0;
}
