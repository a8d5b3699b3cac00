/* y = x @ W.T with int8 activations against GGUF blocks (llama.cpp's scheme), beside the exact
 * fp32 path of ggml_matmul.c. Weights in the repacked forms of llmlab/kernels/ggml.py:
 *   fmt 4: per 32-block 16 bytes of nibbles (byte j: weight j low, weight j+16 high), fp32 d, m:
 *          w = d*q + m (Q4_0, Q4_1, Q4_K);   fmt 8: 32 int8 per block, fp32 d: w = d*q (Q8_0).
 *
 * Each 32-block b of an input row is rounded once per matmul to int8:
 *   dx_b = max|x| / 127,  xq_j = nearbyint(x_j * 127 / max|x|),  sx_b = dx_b * sum_j xq_j,
 * and then   sum_j w_j x_j ~= d_b dx_b * sum_j q_j xq_j  +  m_b sx_b,
 * the first sum exact in int32 (u8 x s8 -> s32 products: vpdpbusd with AVX-512 VNNI, maddubs +
 * madd with AVX2; Q8_0's signed weights as |q| against sign(q)*xq).
 *
 * One floating-point order for every build (the portable C below spells it out lane by lane), so
 * the AVX-512 VNNI, AVX2 and portable builds give the same bits, and a row's result does not
 * depend on how many input rows or threads there are (batch invariance):
 *   blocks are taken 4 at a time (group g; a last partial group is padded with zeros), the 128
 *   weight x input products of a group fall into 16 int32 lanes (fmt 4: lane l holds weights
 *   4(l%4)..+3 and 16+4(l%4)..+3 of block l/4; fmt 8: the group's two 64-byte halves, lane l of
 *   half h holds bytes 4(l%8)..+3 of block 2h + l/8), and
 *     acc[l] = fma((float)lane_sum, d_b * dx_b, acc[l])      (fmt 8: half 0, then half 1)
 *     macc[b%4] = fma(m_b, sx_b, macc[b%4])                  (fmt 4 only)
 *   y = tree16(acc) + tree4(macc), tree16(a) = tree8(a[i] + a[i+8]), ..., tree2(a) = a0 + a1.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define I8_ISA 3
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define I8_ISA 2
#else
#define I8_ISA 0
#endif

#define QK 32
#define NRC 4 /* weight rows per pass: the input group's loads are shared by 4 rows */
/* One input row (batch-1 decode) streams the weights from DRAM once. VNNI build: 4 rows side by
 * side stream well while their blocks span at most SPAN bytes (Q4 at k = 576: 4 x 288), else one
 * row at a time streams faster (Q8_0's LM head 2.4 vs 3.4 ms, Q4_1 at k = 1536 0.042 vs 0.067 ms:
 * docs/LOG.md). The AVX2 build runs one row at a time at every k (session 11: faster there too). */
#define SPAN 1536
#define SMALL_K 4096 /* one input row up to this k: its buffers on the stack */
/* fmt | F16S: d and m are IEEE fp16 (the GGUF file's own scales, Q4_0/Q4_1/Q8_0), read as fp16 and
 * converted to fp32 exactly (F16C in the AVX2 build), so the product has the bits of the fp32 scales'
 * one while a Q4_1 block streams 20 bytes instead of 24 (Q8_0: 34 instead of 36). */
#define F16S 16
/* fp16 -> fp32, exact (every fp16 value, subnormals, inf and NaN included) */
static float h2f(uint16_t h) {
    uint32_t s = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, f = h & 0x3FFu, u;
    if (e == 0x1F) u = s | 0x7F800000u | (f << 13);
    else if (e) u = s | ((e + 112) << 23) | (f << 13);
    else if (!f) u = s;
    else { /* subnormal: shift the fraction up to its leading 1 */
        e = 113;
        while (!(f & 0x400u)) f <<= 1, e--;
        u = s | (e << 23) | ((f & 0x3FFu) << 13);
    }
    float r;
    memcpy(&r, &u, sizeof r);
    return r;
}
float llmlab_i8_h2f(uint16_t h) { return h2f(h); } /* tests: against torch's fp16 -> fp32 */

/* Round one block of 32 inputs to int8: xq (fmt 4: low halves at (b%4)*16, high halves at
 * 64 + (b%4)*16 of the group; fmt 8: at (b%4)*32), its scale dx and offset sx. */
static void quantize_block(int fmt, const float *xb, int64_t b, int8_t *o, float *dx, float *sx) {
    float amax = 0.f;
    for (int j = 0; j < QK; j++) amax = fabsf(xb[j]) > amax ? fabsf(xb[j]) : amax;
    float id = amax > 0.f ? 127.f / amax : 0.f;
    int s = 0;
    for (int j = 0; j < QK; j++) {
        int v = (int)nearbyintf(xb[j] * id);
        s += v;
        int64_t at = fmt == 4 ? (j < 16 ? (b % 4) * 16 + j : 64 + (b % 4) * 16 + j - 16) : (b % 4) * QK + j;
        o[at] = (int8_t)v;
    }
    dx[b] = amax / 127.f;
    sx[b] = dx[b] * (float)s;
}

#if I8_ISA >= 2
/* `quantize_block` in AVX2, the same bits: max_ps(|x|, acc) keeps acc where |x| is NaN (the scalar
 * compare's choice), the same x * id and round-half-even (nearbyintf in the default mode), the
 * int32 truncation's low byte (what the scalar (int8_t) cast keeps: masked, then packed without
 * saturation) and the block's int32 sum (wrapping sums do not depend on the order). */
static void quantize_block_avx2(int fmt, const float *xb, int64_t b, int8_t *o, float *dx, float *sx) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4], mx = _mm256_setzero_ps();
    for (int i = 0; i < 4; i++) v[i] = _mm256_loadu_ps(xb + 8 * i), mx = _mm256_max_ps(_mm256_andnot_ps(sign, v[i]), mx);
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1)));
    float id = amax > 0.f ? 127.f / amax : 0.f;
    const __m256 idv = _mm256_set1_ps(id);
    const __m256i low = _mm256_set1_epi32(0xFF);
    __m256i q[4], sum = _mm256_setzero_si256();
    for (int i = 0; i < 4; i++) {
        q[i] = _mm256_cvttps_epi32(_mm256_round_ps(_mm256_mul_ps(v[i], idv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        sum = _mm256_add_epi32(sum, q[i]);
        q[i] = _mm256_and_si256(q[i], low);
    }
    __m256i p = _mm256_packus_epi16(_mm256_packus_epi32(q[0], q[1]), _mm256_packus_epi32(q[2], q[3]));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    if (fmt == 4) {
        _mm_storeu_si128((__m128i *)(o + (b % 4) * 16), _mm256_castsi256_si128(p));
        _mm_storeu_si128((__m128i *)(o + 64 + (b % 4) * 16), _mm256_extracti128_si256(p, 1));
    } else {
        _mm256_storeu_si256((__m256i *)(o + (b % 4) * QK), p);
    }
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
    dx[b] = amax / 127.f;
    sx[b] = dx[b] * (float)_mm_cvtsi128_si32(s4);
}
#endif

/* The AVX2 quantization and small one-row buffers on the stack (default on; off: the scalar loop
 * and malloc, the A/B arm of benchmarks/decode_overhead.py, LLMLAB_I8_FAST_QUANT=0). */
static int fast_quant = 1;
void llmlab_i8_set_fast_quant(int on) { fast_quant = on; }
/* AVX2, batch 1: full groups through `many_t`'s short path (default on; off: the general path, the
 * A/B arm of benchmarks/decode_overhead.py, LLMLAB_I8_ONE_ROW=0). The same bits either way. */
static int one_row_fast = 1;
void llmlab_i8_set_one_row(int on) { one_row_fast = on; }
/* batch 1's weight stream prefetched non-temporally (prefetchnta instead of prefetcht0; default on,
 * LLMLAB_I8_PF_NTA=0 off): the ~100 MB a step streams through once then displaces less of what the
 * step reuses (the KV cache, activations, the Python around the call). Changes no value. */
static int pf_nta = 1;
void llmlab_i8_set_pf_nta(int on) { pf_nta = on; }

/* Round one input row to int8 blocks; xq is laid out for the weight format: fmt 4 keeps, per group
 * of 4 blocks, the 4 low halves (x_0..15 of each block) then the 4 high halves; fmt 8 is plain.
 * Padding (blocks nb..4*ng) is zero. */
void llmlab_i8_quantize(int fmt, const float *x, int64_t k, int8_t *xq, float *dx, float *sx) {
    int64_t nb = k / QK, ng = (nb + 3) / 4;
    memset(xq, 0, (size_t)(ng * 4 * QK));
    for (int64_t b = nb; b < ng * 4; b++) dx[b] = sx[b] = 0.f;
    for (int64_t b = 0; b < nb; b++) {
#if I8_ISA >= 2
        if (fast_quant) { quantize_block_avx2(fmt, x + b * QK, b, xq + (b / 4) * 4 * QK, dx, sx); continue; }
#endif
        quantize_block(fmt, x + b * QK, b, xq + (b / 4) * 4 * QK, dx, sx);
    }
}

static inline float tree4(const float *a) { return (a[0] + a[2]) + (a[1] + a[3]); }
static inline float tree16(const float *a) {
    float b[8], c[4];
    for (int i = 0; i < 8; i++) b[i] = a[i] + a[i + 8];
    for (int i = 0; i < 4; i++) c[i] = b[i] + b[i + 4];
    return tree4(c);
}

/* The reference order in plain C: one weight row against one quantized input row. */
static float row_portable(int fmt, const uint8_t *qs, const float *d, const float *m, int64_t row, int64_t nb,
                          const int8_t *xq, const float *dx, const float *sx) {
    float acc[16] = {0}, macc[4] = {0};
    int64_t ng = (nb + 3) / 4;
    for (int64_t g = 0; g < ng; g++) {
        const int8_t *xg = xq + g * 4 * QK;
        for (int h = 0; h < (fmt == 4 ? 1 : 2); h++)
            for (int l = 0; l < 16; l++) {
                int64_t b = fmt == 4 ? 4 * g + l / 4 : 4 * g + 2 * h + l / 8;
                int32_t p = 0;
                float sc = 0.f;
                if (b < nb) {
                    int64_t blk = row * nb + b;
                    if (fmt == 4) {
                        const uint8_t *q = qs + blk * 16;
                        for (int t = 0; t < 4; t++) {
                            int j = 4 * (l % 4) + t;
                            p += (q[j] & 15) * xg[(l / 4) * 16 + j] + (q[j] >> 4) * xg[64 + (l / 4) * 16 + j];
                        }
                    } else {
                        const int8_t *q = (const int8_t *)qs + blk * QK;
                        for (int t = 0; t < 4; t++) {
                            int j = 4 * (l % 8) + t;
                            p += q[j] * xg[(b % 4) * QK + j];
                        }
                    }
                    sc = d[blk] * dx[b];
                }
                acc[l] = fmaf((float)p, sc, acc[l]);
            }
        if (fmt == 4)
            for (int t = 0; t < 4; t++) {
                int64_t b = 4 * g + t;
                macc[t] = b < nb ? fmaf(m[row * nb + b], sx[b], macc[t]) : fmaf(0.f, 0.f, macc[t]);
            }
    }
    return tree16(acc) + tree4(macc);
}

#if I8_ISA == 3
static inline float red16(__m512 a) {
    __m256 b = _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
    __m128 c = _mm_add_ps(_mm256_castps256_ps128(b), _mm256_extractf128_ps(b, 1));
    __m128 e = _mm_add_ps(c, _mm_movehl_ps(c, c));
    return _mm_cvtss_f32(_mm_add_ss(e, _mm_shuffle_ps(e, e, 1)));
}
static inline float red4(__m128 c) {
    __m128 e = _mm_add_ps(c, _mm_movehl_ps(c, c));
    return _mm_cvtss_f32(_mm_add_ss(e, _mm_shuffle_ps(e, e, 1)));
}

/* nr (1..NRC) weight rows from `row` against one quantized input row -> y[0..nr). */
static void rows_vnni(int fmt, const uint8_t *qs, const float *d, const float *m, int64_t row, int nr, int64_t nb,
                      const int8_t *xq, const float *dx, const float *sx, float *y) {
    __m512 acc[NRC];
    __m128 macc[NRC];
    for (int t = 0; t < NRC; t++) acc[t] = _mm512_setzero_ps(), macc[t] = _mm_setzero_ps();
    const __m512i e4 = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    const __m512i e8a = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i e8b = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2);
    const __m512i lo4 = _mm512_set1_epi8(0x0F);
    int64_t ng = (nb + 3) / 4;
    for (int64_t g = 0; g < ng; g++) {
        int nbg = nb - 4 * g < 4 ? (int)(nb - 4 * g) : 4;
        __mmask8 mb = (__mmask8)((1u << nbg) - 1);
        const int8_t *xg = xq + g * 4 * QK;
        __m512i xa = _mm512_loadu_si512(xg), xb = _mm512_loadu_si512(xg + 64);
        __m128 vdx = _mm_loadu_ps(dx + 4 * g);
        if (fmt == 4) {
            __mmask64 mq = nbg == 4 ? ~(__mmask64)0 : (((__mmask64)1 << (16 * nbg)) - 1);
            __m128 vsx = _mm_loadu_ps(sx + 4 * g);
            for (int t = 0; t < nr; t++) {
                int64_t blk = (row + t) * nb + 4 * g;
                __m512i v = nbg == 4 ? _mm512_loadu_si512(qs + blk * 16) : _mm512_maskz_loadu_epi8(mq, qs + blk * 16);
                __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(v, lo4), xa);
                p = _mm512_dpbusd_epi32(p, _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4), xb);
                __m128 sc = _mm_mul_ps(_mm_maskz_loadu_ps(mb, d + blk), vdx);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_permutexvar_ps(e4, _mm512_castps128_ps512(sc)), acc[t]);
                macc[t] = _mm_fmadd_ps(_mm_maskz_loadu_ps(mb, m + blk), vsx, macc[t]);
            }
        } else {
            __mmask64 ma = nbg >= 2 ? ~(__mmask64)0 : (((__mmask64)1 << 32) - 1);
            __mmask64 mc = nbg == 4 ? ~(__mmask64)0 : nbg == 3 ? (((__mmask64)1 << 32) - 1) : 0;
            for (int t = 0; t < nr; t++) {
                int64_t blk = (row + t) * nb + 4 * g;
                const int8_t *q = (const int8_t *)qs + blk * QK;
                __m512i qa = nbg == 4 ? _mm512_loadu_si512(q) : _mm512_maskz_loadu_epi8(ma, q);
                __m512i qc = nbg == 4 ? _mm512_loadu_si512(q + 64) : _mm512_maskz_loadu_epi8(mc, q + 64);
                __m512i sa = _mm512_mask_sub_epi8(xa, _mm512_movepi8_mask(qa), _mm512_setzero_si512(), xa);
                __m512i scc = _mm512_mask_sub_epi8(xb, _mm512_movepi8_mask(qc), _mm512_setzero_si512(), xb);
                __m512i pa = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(qa), sa);
                __m512i pc = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(qc), scc);
                __m512 sc = _mm512_castps128_ps512(_mm_mul_ps(_mm_maskz_loadu_ps(mb, d + blk), vdx));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pa), _mm512_permutexvar_ps(e8a, sc), acc[t]);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pc), _mm512_permutexvar_ps(e8b, sc), acc[t]);
            }
        }
    }
    for (int t = 0; t < nr; t++) y[t] = red16(acc[t]) + red4(macc[t]);
}

/* Several input rows (speculative verification, a batched decode step): a register tile of NR
 * weight rows x MI input rows. Each group's weight bytes are loaded and unpacked once per tile and
 * used against MI input rows straight from registers; the inputs come from L1. Per (weight row,
 * input row) the lanes and the order of the fmas are those of `rows_vnni` (d*dx per lane is the
 * same product, permuted), so the bits are too. Fmt 4's offsets of MI <= 4 input rows share one
 * 16-lane fma: lanes 4i..4i+3 hold input row i's four m*sx lanes. */
#define MI 4
#define AI_I8 static inline __attribute__((always_inline))
AI_I8 void tile_t(const int fmt, const int NR, const int NX, const uint8_t *qs, const float *d, const float *m,
                  int64_t row, int64_t nb, const int8_t *xq, int64_t stride, const float *dx, const float *sx,
                  float *y, int64_t ldy) {
    const __m512i e4 = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    const __m512i e8a = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i e8b = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2);
    const __m512i lo4 = _mm512_set1_epi8(0x0F);
    __m512 acc[4][MI], macc[4];
    for (int t = 0; t < NR; t++) {
        macc[t] = _mm512_setzero_ps();
        for (int i = 0; i < NX; i++) acc[t][i] = _mm512_setzero_ps();
    }
    int64_t ng = (nb + 3) / 4;
    for (int64_t g = 0; g < ng; g++) {
        int nbg = nb - 4 * g < 4 ? (int)(nb - 4 * g) : 4;
        __mmask8 mb = (__mmask8)((1u << nbg) - 1);
        __m512 dxa[MI], dxb[MI];
        __m512 vsx = _mm512_setzero_ps();
        for (int i = 0; i < NX; i++) {
            __m512 dx4 = _mm512_castps128_ps512(_mm_loadu_ps(dx + i * ng * 4 + 4 * g));
            dxa[i] = _mm512_permutexvar_ps(fmt == 4 ? e4 : e8a, dx4);
            if (fmt != 4) dxb[i] = _mm512_permutexvar_ps(e8b, dx4);
            else vsx = _mm512_insertf32x4(vsx, _mm_loadu_ps(sx + i * ng * 4 + 4 * g), i);
        }
        for (int t = 0; t < NR; t++) {
            int64_t blk = (row + t) * nb + 4 * g;
            __m512 d4 = _mm512_castps128_ps512(_mm_maskz_loadu_ps(mb, d + blk));
            if (fmt == 4) {
                __mmask64 mq = nbg == 4 ? ~(__mmask64)0 : (((__mmask64)1 << (16 * nbg)) - 1);
                __m512i v = nbg == 4 ? _mm512_loadu_si512(qs + blk * 16) : _mm512_maskz_loadu_epi8(mq, qs + blk * 16);
                __m512i wl = _mm512_and_si512(v, lo4), wh = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
                __m512 de = _mm512_permutexvar_ps(e4, d4);
                for (int i = 0; i < NX; i++) {
                    const int8_t *xg = xq + i * stride + g * 4 * QK;
                    __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wl, _mm512_loadu_si512(xg));
                    p = _mm512_dpbusd_epi32(p, wh, _mm512_loadu_si512(xg + 64));
                    acc[t][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(de, dxa[i]), acc[t][i]);
                }
                __m512 m4 = _mm512_broadcast_f32x4(_mm_maskz_loadu_ps(mb, m + blk));
                macc[t] = _mm512_fmadd_ps(m4, vsx, macc[t]);
            } else {
                __mmask64 ma = nbg >= 2 ? ~(__mmask64)0 : (((__mmask64)1 << 32) - 1);
                __mmask64 mc = nbg == 4 ? ~(__mmask64)0 : nbg == 3 ? (((__mmask64)1 << 32) - 1) : 0;
                const int8_t *q = (const int8_t *)qs + blk * QK;
                __m512i qa = nbg == 4 ? _mm512_loadu_si512(q) : _mm512_maskz_loadu_epi8(ma, q);
                __m512i qc = nbg == 4 ? _mm512_loadu_si512(q + 64) : _mm512_maskz_loadu_epi8(mc, q + 64);
                __mmask64 na = _mm512_movepi8_mask(qa), nc = _mm512_movepi8_mask(qc);
                qa = _mm512_abs_epi8(qa), qc = _mm512_abs_epi8(qc);
                __m512 da = _mm512_permutexvar_ps(e8a, d4), db = _mm512_permutexvar_ps(e8b, d4);
                for (int i = 0; i < NX; i++) {
                    const int8_t *xg = xq + i * stride + g * 4 * QK;
                    __m512i xa = _mm512_loadu_si512(xg), xb = _mm512_loadu_si512(xg + 64);
                    __m512i pa = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qa, _mm512_mask_sub_epi8(xa, na, _mm512_setzero_si512(), xa));
                    __m512i pc = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qc, _mm512_mask_sub_epi8(xb, nc, _mm512_setzero_si512(), xb));
                    acc[t][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pa), _mm512_mul_ps(da, dxa[i]), acc[t][i]);
                    acc[t][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pc), _mm512_mul_ps(db, dxb[i]), acc[t][i]);
                }
            }
        }
    }
    for (int t = 0; t < NR; t++) {
        float ml[16];
        _mm512_storeu_ps(ml, macc[t]);
        for (int i = 0; i < NX; i++)
            y[i * ldy + t] = red16(acc[t][i]) + (fmt == 4 ? red4(_mm_loadu_ps(ml + 4 * i)) : 0.f);
    }
}

#define TILE_NX(F, NR) do { switch (nx) { \
    case 4: tile_t(F, NR, 4, qs, d, m, row, nb, xq, stride, dx, sx, y, ldy); break; \
    case 3: tile_t(F, NR, 3, qs, d, m, row, nb, xq, stride, dx, sx, y, ldy); break; \
    case 2: tile_t(F, NR, 2, qs, d, m, row, nb, xq, stride, dx, sx, y, ldy); break; \
    default: tile_t(F, NR, 1, qs, d, m, row, nb, xq, stride, dx, sx, y, ldy); } } while (0)

/* nr (1..NRC) weight rows from `row` against nx (1..MI) input rows (xq, dx, sx at i * stride,
 * i * ng * 4) -> y[i * ldy + t]. */
static void tile(int fmt, const uint8_t *qs, const float *d, const float *m, int64_t row, int nr, int64_t nb,
                 const int8_t *xq, int64_t stride, const float *dx, const float *sx, int nx, float *y, int64_t ldy) {
    if (nr < NRC) {
        for (int t = 0; t < nr; t++, row++, y++) {
            if (fmt == 4) TILE_NX(4, 1);
            else TILE_NX(8, 1);
        }
        return;
    }
    if (fmt == 4) TILE_NX(4, NRC);
    else TILE_NX(8, NRC);
}
#endif

#if I8_ISA == 2
/* AVX2: the same 16 lanes as two 8-lane halves; maddubs (u8 x s8 -> s16 pairs, at most
 * 2 * 128 * 127 = 32512: no saturation) then madd with ones (-> s32 sums of 4). Per (weight row,
 * input row) the lanes and the order of the fmas are `row_portable`'s: the scale d*dx is the same
 * product per lane, the offsets m*sx fma per block lane, and the final sums are tree16/tree4 with
 * the same pairings, so the bits are the same as every other build's. */
#define AI_I8 static inline __attribute__((always_inline))
#define MI 4
AI_I8 __m256i dot4_256(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}
AI_I8 float red8x2(__m256 a0, __m256 a1, __m128 macc) {
    __m256 b = _mm256_add_ps(a0, a1);                                            /* a[i] + a[i+8] */
    __m128 c = _mm_add_ps(_mm256_castps256_ps128(b), _mm256_extractf128_ps(b, 1)); /* b[i] + b[i+4] */
    __m128 e = _mm_add_ps(c, _mm_movehl_ps(c, c));                                 /* c0+c2, c1+c3 */
    __m128 f = _mm_add_ps(macc, _mm_movehl_ps(macc, macc));
    return _mm_cvtss_f32(_mm_add_ss(e, _mm_shuffle_ps(e, e, 1))) + _mm_cvtss_f32(_mm_add_ss(f, _mm_shuffle_ps(f, f, 1)));
}

/* The AVX2 tile, for any number of input rows (batch-1 decode, a speculative verification, a
 * batched step): one weight row against NX (1..MI) input rows. One weight row at a time streams
 * from DRAM faster than 4 side by side (session 11: a batch-1 step's int8 products 10.9 -> 9.8 ms
 * when batch 1 moved from a 4-row tile to this one). With several input rows the bound is the integer multiply port (maddubs, madd), so
 * the tile keeps every operation that does not depend on the input row out of the input loop:
 * each group's weight bytes are loaded and unpacked once (one 8-lane half or one block at a time,
 * so the NX x 2 accumulators stay in registers), the weight scales are broadcast to their lanes
 * once, and the input scales come spread already by `spread` (one pointer for the tile's input
 * rows: dxe[g][half][i] = fmt 4's 8 dx lanes, dxe[g][block][i] = fmt 8's dx; sxe[g][pair] = the
 * offsets' sx lanes of 2 input rows side by side, so 2 rows share one 8-lane fma). In a row's
 * last, partial group the blocks past the row are skipped (they would add p * d * dx = +0 to
 * accumulators that are never -0: the same bits), a lone block of a fmt-4 half is read as 16
 * bytes with zero scales above, and the offsets with a masked load. Per (weight row,
 * input row) the int32 lane sums, the products d * dx and the order of the fmas are
 * `row_portable`'s, so the bits are too. */
/* Software prefetch distance of one input row's weight stream (and of Q8_0's scales, the same
 * blocks ahead). The hardware prefetcher alone left one core at 11-12 GB/s on the LM head against
 * 14.8 GB/s for a plain read loop; 2 KB ahead: LM head 2.9 -> ~2.1 ms, down 52 -> 39 us, gate/up
 * 110 -> 88 us (benchmarks/matvec_shapes.c, 1 thread, CPU time, under load; docs/LOG.md session 12). */
#define PF_BYTES 2048
AI_I8 void many_t(const int fmt, const int H, const int NX, const uint8_t *qs, const float *d, const float *m,
                  int64_t row, int64_t nb, const int8_t *xq, int64_t stride, const float *dx, const float *dxe,
                  const float *sxe, float *y, int64_t ldy) {
    const uint16_t *dh = (const uint16_t *)d, *mh = (const uint16_t *)m; /* H: the fp16 scales (F16S) */
    __m256 acc[MI][2], macc[MI / 2];
    for (int i = 0; i < NX; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int i = 0; i < (NX + 1) / 2; i++) macc[i] = _mm256_setzero_ps();
    const __m256i lo4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    const int bpb = fmt == 4 ? 16 : QK; /* weight bytes per block */
    int64_t ng = (nb + 3) / 4;
    for (int64_t g = 0; g < ng; g++) {
        int nbg = nb - 4 * g < 4 ? (int)(nb - 4 * g) : 4;
        int64_t blk = row * nb + 4 * g;
        const uint8_t *w = qs + blk * bpb;
        const float *dp = H ? NULL : d + blk;
        const uint16_t *hp = H ? dh + blk : NULL;
        const float *ge = dxe + g * (fmt == 4 ? 2 * MI * 8 : 4 * MI);
        __m256 d8 = _mm256_setzero_ps(); /* H: the group's 4 scales converted at once (zeros past the row) */
        if (H) d8 = _mm256_castps128_ps256(nbg == 4 ? _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)hp))
                                                    : _mm_setr_ps(_cvtsh_ss(hp[0]), nbg > 1 ? _cvtsh_ss(hp[1]) : 0.f,
                                                                  nbg > 2 ? _cvtsh_ss(hp[2]) : 0.f, 0.f));
        if (NX == 1 && pf_nta) { /* the same, non-temporal (LLMLAB_I8_PF_NTA): the stream displaces less */
            __builtin_prefetch(w + PF_BYTES, 0, 0);
            if (fmt == 8) {
                __builtin_prefetch(w + PF_BYTES + 64, 0, 0);
                if (H) __builtin_prefetch(hp + PF_BYTES / 32, 0, 0);
                else __builtin_prefetch(dp + PF_BYTES / 32, 0, 0);
            }
        } else if (NX == 1) { /* batch 1 streams the weights: ask for the bytes PF_BYTES ahead (see PF_BYTES) */
            __builtin_prefetch(w + PF_BYTES, 0, 3);
            if (fmt == 8) {
                __builtin_prefetch(w + PF_BYTES + 64, 0, 3);
                if (H) __builtin_prefetch(hp + PF_BYTES / 32, 0, 3);
                else __builtin_prefetch(dp + PF_BYTES / 32, 0, 3);
            }
        }
        if (NX == 1 && !H && nbg == 4 && one_row_fast) {
            /* batch 1, a full group (fp32 scales): the 4 scales d * dx as one 4-lane product permuted to
             * their lanes (the same products as de * ge below: the same bits), with fewer operations
             * a block than the general path; the cores' work per block bounds these products */
            const __m256 s8 = _mm256_castps128_ps256(_mm_mul_ps(_mm_loadu_ps(dp), _mm_loadu_ps(dx + 4 * g)));
            const int8_t *xg = xq + g * 4 * QK;
            if (fmt == 4) {
                for (int u = 0; u < 2; u++) {
                    __m256i v = _mm256_loadu_si256((const __m256i *)(w + 32 * u));
                    __m256i lo = _mm256_and_si256(v, lo4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), lo4);
                    __m256i p = _mm256_madd_epi16(_mm256_add_epi16(
                        _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(xg + 32 * u))),
                        _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(xg + 64 + 32 * u)))), ones);
                    __m256 sc = _mm256_permutevar8x32_ps(s8, u ? _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3)
                                                               : _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
                    acc[0][u] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc, acc[0][u]);
                }
                __m128 m4 = _mm_loadu_ps(m + blk);
                macc[0] = _mm256_fmadd_ps(_mm256_set_m128(m4, m4), _mm256_loadu_ps(sxe + g * MI * 4), macc[0]);
            } else {
                for (int u = 0; u < 4; u++) {
                    __m256i v = _mm256_loadu_si256((const __m256i *)(w + 32 * u));
                    __m256i p = dot4_256(_mm256_abs_epi8(v), _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(xg + 32 * u)), v));
                    __m256 sc = _mm256_permutevar8x32_ps(s8, _mm256_set1_epi32(u));
                    acc[0][u & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc, acc[0][u & 1]);
                }
            }
            continue;
        }
        for (int u = 0; u < (fmt == 4 ? 2 : 4); u++) {
            if ((fmt == 4 ? 2 * u : u) >= nbg) break;
            int two = fmt == 4 && 2 * u + 1 < nbg; /* fmt 4: both blocks of the half are in the row */
            __m256i v = fmt == 8 || two ? _mm256_loadu_si256((const __m256i *)(w + 32 * u))
                                        : _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)(w + 32 * u)));
            if (fmt == 4) { /* half u: blocks 2u, 2u+1 -> lanes 8u..8u+7 */
                __m256i lo = _mm256_and_si256(v, lo4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), lo4);
                __m256 de = H ? _mm256_permutevar8x32_ps(d8, _mm256_setr_epi32(2 * u, 2 * u, 2 * u, 2 * u, 2 * u + 1, 2 * u + 1,
                                                                             2 * u + 1, 2 * u + 1))
                              : _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_broadcast_ss(dp + 2 * u)),
                                                     two ? _mm_broadcast_ss(dp + 2 * u + 1) : _mm_setzero_ps(), 1);
                for (int i = 0; i < NX; i++) {
                    const int8_t *xg = xq + i * stride + g * 4 * QK;
                    __m256i p = _mm256_madd_epi16(_mm256_add_epi16(
                        _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(xg + 32 * u))),
                        _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(xg + 64 + 32 * u)))), ones);
                    __m256 sc = _mm256_mul_ps(de, _mm256_loadu_ps(ge + (u * MI + i) * 8));
                    acc[i][u] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc, acc[i][u]);
                }
            } else { /* block u -> lanes 0..7 (u even) or 8..15 (u odd) */
                __m256i aq = _mm256_abs_epi8(v);
                __m256 de = H ? _mm256_permutevar8x32_ps(d8, _mm256_set1_epi32(u)) : _mm256_broadcast_ss(dp + u);
                for (int i = 0; i < NX; i++) {
                    const int8_t *xg = xq + i * stride + g * 4 * QK;
                    __m256i p = dot4_256(aq, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(xg + 32 * u)), v));
                    __m256 sc = _mm256_mul_ps(de, _mm256_broadcast_ss(ge + u * MI + i));
                    acc[i][u & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc, acc[i][u & 1]);
                }
            }
        }
        if (fmt == 4) {
            __m128 m4;
            if (H) /* a partial group: its blocks past the row as +0, as the masked load gives */
                m4 = nbg == 4 ? _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(mh + blk)))
                              : _mm_setr_ps(_cvtsh_ss(mh[blk]), nbg > 1 ? _cvtsh_ss(mh[blk + 1]) : 0.f,
                                            nbg > 2 ? _cvtsh_ss(mh[blk + 2]) : 0.f, 0.f);
            else
                m4 = nbg == 4 ? _mm_loadu_ps(m + blk)
                              : _mm_maskload_ps(m + blk, _mm_cmpgt_epi32(_mm_set1_epi32(nbg), _mm_setr_epi32(0, 1, 2, 3)));
            __m256 m8 = _mm256_set_m128(m4, m4);
            for (int i = 0; i < (NX + 1) / 2; i++)
                macc[i] = _mm256_fmadd_ps(m8, _mm256_loadu_ps(sxe + g * MI * 4 + i * 8), macc[i]);
        }
    }
    for (int i = 0; i < NX; i++) {
        __m128 mi = fmt != 4 ? _mm_setzero_ps() : i & 1 ? _mm256_extractf128_ps(macc[i / 2], 1) : _mm256_castps256_ps128(macc[i / 2]);
        y[i * ldy] = red8x2(acc[i][0], acc[i][1], mi);
    }
}

/* Spread the input scales of mx input rows for `many_t`, per chunk c of MI rows (zeros for rows
 * past mx): fmt 4: dxe[c][g][half u][row j][8] = block 4g + 2u + l/4 's dx in lane l (size
 * 16 * MI floats per group), sxe[c][g][pair][8] = the sx of rows 2 pair, 2 pair + 1, 4 lanes each
 * (4 * MI); fmt 8: dxe[c][g][block u][row j] = dx (4 * MI). */
static int64_t spread_size(int fmt, int64_t mx, int64_t ng) {
    return (mx + MI - 1) / MI * ng * (fmt == 4 ? 20 * MI : 4 * MI);
}
static void spread(int fmt, int64_t mx, int64_t ng, const float *dx, const float *sx, float *dxe, float *sxe) {
    memset(dxe, 0, sizeof(float) * (size_t)spread_size(fmt, mx, ng));
    for (int64_t i = 0; i < mx; i++) {
        int64_t c = i / MI, j = i % MI;
        for (int64_t g = 0; g < ng; g++)
            for (int b = 0; b < 4; b++) {
                float v = dx[i * ng * 4 + 4 * g + b];
                if (fmt == 4) {
                    for (int l = 0; l < 4; l++) dxe[((c * ng + g) * 2 + b / 2) * MI * 8 + j * 8 + (b % 2) * 4 + l] = v;
                    sxe[(c * ng + g) * MI * 4 + j * 4 + b] = sx[i * ng * 4 + 4 * g + b];
                } else {
                    dxe[(c * ng + g) * 4 * MI + b * MI + j] = v;
                }
            }
    }
}

#define MANY_NX(F, H) do { switch (nx) { \
    case 4: many_t(F, H, 4, qs, d, m, row + t, nb, xq, stride, dx, dxe, sxe, y + t, ldy); break; \
    case 3: many_t(F, H, 3, qs, d, m, row + t, nb, xq, stride, dx, dxe, sxe, y + t, ldy); break; \
    case 2: many_t(F, H, 2, qs, d, m, row + t, nb, xq, stride, dx, dxe, sxe, y + t, ldy); break; \
    default: many_t(F, H, 1, qs, d, m, row + t, nb, xq, stride, dx, dxe, sxe, y + t, ldy); } } while (0)

/* nr (1..NRC) weight rows from `row` against nx (1..MI) input rows (xq at i * stride; dx: the first
 * row's block scales; dxe, sxe from `spread`) -> y[i * ldy + t], one weight row at a time; h16: d, m
 * are fp16 (F16S). */
static void tile(int fmt, int h16, const uint8_t *qs, const float *d, const float *m, int64_t row, int nr, int64_t nb,
                 const int8_t *xq, int64_t stride, const float *dx, const float *dxe, const float *sxe, int nx,
                 float *y, int64_t ldy) {
    for (int t = 0; t < nr; t++) {
        if (fmt == 4) { if (h16) MANY_NX(4, 1); else MANY_NX(4, 0); }
        else { if (h16) MANY_NX(8, 1); else MANY_NX(8, 0); }
    }
}
#endif

/* This thread's share [lo, hi) of `units` work units (inside an OpenMP region, or all of it). */
static void share(int64_t units, int64_t *lo, int64_t *hi) {
    int t = 0, n = 1;
#ifdef _OPENMP
    t = omp_get_thread_num();
    n = omp_get_num_threads();
#endif
    *lo = units * t / n;
    *hi = units * (t + 1) / n;
}

/* Weight-row groups [g0, g1) of the product against mx quantized input rows (xq, dx, sx; AVX2:
 * the spread scales dxe, sxe) -> y. h16: d, m are fp16 (F16S): the AVX2 tile reads them as they
 * are; the other builds convert each group's rows to fp32 first (cv: 2 * NRC * nb floats) and run
 * on those, their kernels unchanged. */
static void run_groups(int64_t g0, int64_t g1, int fmt, int h16, const uint8_t *qs, const float *d, const float *m,
                       int64_t rows, int64_t nb, int64_t ng, int64_t mx, const int8_t *xq, int64_t stride,
                       const float *dx, const float *sx, const float *dxe, const float *sxe, float *y, float *cv) {
    (void)dx, (void)sx, (void)dxe, (void)sxe, (void)cv;  /* each build reads some of them */
    for (int64_t gr = g0; gr < g1; gr++) {
        int64_t r = gr * NRC;
        int nr = rows - r < NRC ? (int)(rows - r) : NRC;
#if I8_ISA == 2 /* AVX2: the tile always, fp16 scales read in registers */
        for (int64_t i = 0; i < mx; i += MI)
            tile(fmt, h16, qs, d, m, r, nr, nb, xq + i * stride, stride, dx + i * ng * 4,
                 dxe + i / MI * ng * (fmt == 4 ? 16 : 4) * MI,
                 sxe ? sxe + i / MI * ng * 4 * MI : NULL, mx - i < MI ? (int)(mx - i) : MI, y + i * rows + r, rows);
#else
        const uint8_t *gq = qs;
        const float *gd = d, *gm = m;
        int64_t r0 = r; /* the first row's index in (gq, gd, gm) */
        if (h16) { /* this group's rows: their bytes from row r, their scales as fp32 in cv */
            const uint16_t *hd = (const uint16_t *)d + r * nb, *hm = m ? (const uint16_t *)m + r * nb : NULL;
            for (int64_t j = 0; j < nr * nb; j++) cv[j] = h2f(hd[j]), cv[NRC * nb + j] = hm ? h2f(hm[j]) : 0.f;
            gq = qs + r * nb * (fmt == 4 ? 16 : QK), gd = cv, gm = m ? cv + NRC * nb : NULL, r0 = 0;
        }
#if I8_ISA == 3 /* VNNI: the tile for several input rows, rows_vnni for one */
        if (mx > 1) {
            for (int64_t i = 0; i < mx; i += MI)
                tile(fmt, gq, gd, gm, r0, nr, nb, xq + i * stride, stride, dx + i * ng * 4, sx + i * ng * 4,
                     mx - i < MI ? (int)(mx - i) : MI, y + i * rows + r, rows);
            continue;
        }
#endif
        for (int64_t i = 0; i < mx; i++) {
            const int8_t *xi = xq + i * stride;
            const float *dxi = dx + i * ng * 4, *sxi = sx + i * ng * 4;
#if I8_ISA == 3
            float tmp[NRC];
            int step = NRC * nb * (fmt == 4 ? 16 : QK) > SPAN ? 1 : NRC;
            for (int t = 0; t < nr; t += step)
                rows_vnni(fmt, gq, gd, gm, r0 + t, nr - t < step ? nr - t : step, nb, xi, dxi, sxi, tmp + t);
            memcpy(y + i * rows + r, tmp, sizeof(float) * (size_t)nr);
#else
            for (int t = 0; t < nr; t++)
                y[i * rows + r + t] = row_portable(fmt, gq, gd, gm, r0 + t, nb, xi, dxi, sxi);
#endif
        }
#endif
    }
}

#if I8_ISA == 2
#define DXE dxe
#define SXE sxe
#else
#define DXE NULL
#define SXE NULL
#endif
/* Exported: fmt 4 or 8, k a multiple of 32; returns 0 for another format or no memory. nt threads
 * split the weight rows in groups of NRC; each group's rows stay in L1 across the input rows. */
int llmlab_i8_matmul(int fmt, const uint8_t *qs, const float *d, const float *m, int64_t rows, int64_t k,
                     const float *x, int64_t mx, float *y, int nt) {
    int h16 = (fmt & F16S) != 0;
    fmt &= ~F16S;
    if ((fmt != 4 && fmt != 8) || k % QK) return 0;
    int64_t nb = k / QK, ng = (nb + 3) / 4, stride = ng * 4 * QK;
    /* one input row of at most SMALL_K (a decode step's products, team mode's shares): buffers on
     * the stack, not 3 mallocs and frees per call */
    int small = fast_quant && mx == 1 && k <= SMALL_K;
    int8_t xq_s[SMALL_K];
    float dx_s[2 * SMALL_K / QK];
    int8_t *xq = small ? xq_s : (int8_t *)malloc((size_t)(mx * stride));
    float *dx = small ? dx_s : (float *)malloc(sizeof(float) * (size_t)(2 * mx * ng * 4));
    if (!xq || !dx) { if (!small) free(xq), free(dx); return 0; }
    float *sx = dx + mx * ng * 4;
    for (int64_t i = 0; i < mx; i++) llmlab_i8_quantize(fmt, x + i * k, k, xq + i * stride, dx + i * ng * 4, sx + i * ng * 4);
#if I8_ISA == 2
    float *dxe = NULL, *sxe = NULL, dxe_s[SMALL_K / QK / 4 * 20 * MI];
    { /* the input scales spread to their lanes for `many_t` */
        dxe = small ? dxe_s : (float *)malloc(sizeof(float) * (size_t)spread_size(fmt, mx, ng));
        if (!dxe) { free(xq); free(dx); return 0; }
        sxe = fmt == 4 ? dxe + (mx + MI - 1) / MI * ng * 16 * MI : NULL;
        spread(fmt, mx, ng, dx, sx, dxe, sxe);
    }
#endif
    int64_t groups = (rows + NRC - 1) / NRC;
    if (nt > groups) nt = (int)groups;
    if (nt < 1) nt = 1;
    float *cv = NULL; /* the fp16 scales' fp32 rows for the builds other than AVX2: per thread */
#if I8_ISA != 2
    if (h16 && !(cv = (float *)malloc(sizeof(float) * (size_t)(nt * 2 * NRC * nb)))) {
        if (!small) free(xq), free(dx);
        return 0;
    }
#endif
    if (nt > 1 || !fast_quant) { /* nested in team mode: a region of one thread (share's ids 0 of 1) */
#pragma omp parallel num_threads(nt) if (nt > 1)
        {
            int64_t g0, g1;
            share(groups, &g0, &g1);
            int t = 0;
#ifdef _OPENMP
            t = omp_get_thread_num();
#endif
            run_groups(g0, g1, fmt, h16, qs, d, m, rows, nb, ng, mx, xq, stride, dx, sx, DXE, SXE, y,
                       cv ? cv + (int64_t)t * 2 * NRC * nb : NULL);
        }
    } else { /* one thread: no region (in team mode the calling thread's own share) */
        run_groups(0, groups, fmt, h16, qs, d, m, rows, nb, ng, mx, xq, stride, dx, sx, DXE, SXE, y, cv);
    }
    free(cv);
    if (small) return 1;
    free(xq);
    free(dx);
#if I8_ISA == 2
    free(dxe);
#endif
    return 1;
}

/* The same product through the portable reference order whatever the build (tests compare). */
int llmlab_i8_matmul_reference(int fmt, const uint8_t *qs, const float *d, const float *m, int64_t rows, int64_t k,
                               const float *x, int64_t mx, float *y) {
    if ((fmt != 4 && fmt != 8) || k % QK) return 0;
    int64_t nb = k / QK, ng = (nb + 3) / 4, stride = ng * 4 * QK;
    int8_t *xq = (int8_t *)malloc((size_t)stride);
    float *dx = (float *)malloc(sizeof(float) * (size_t)(8 * ng));
    if (!xq || !dx) { free(xq); free(dx); return 0; }
    for (int64_t i = 0; i < mx; i++) {
        llmlab_i8_quantize(fmt, x + i * k, k, xq, dx, dx + 4 * ng);
        for (int64_t r = 0; r < rows; r++) y[i * rows + r] = row_portable(fmt, qs, d, m, r, nb, xq, dx, dx + 4 * ng);
    }
    free(xq);
    free(dx);
    return 1;
}

int llmlab_i8_isa(void) { return I8_ISA; }
