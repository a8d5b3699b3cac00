/* y = x @ W.T for W in GGUF block formats, computed on the dequantized fp32 weights.
 *
 * Weights are stored as repacked by llmlab/kernels/ggml.py (not GGUF's interleaved blocks):
 *   "q4": per 32-weight block, 16 bytes qs (byte j: weight j low nibble, weight j+16 high
 *         nibble), fp32 scale d[b] and offset m[b]:  w = d*q + m   (Q4_1; Q4_0 has m = -8d)
 *   "q8": per block, 32 int8 qs and fp32 d[b]:        w = d*q       (Q8_0)
 *   fmt 5: per 32 weights, int8 q (0..31), fp32 d, m: w = d*q + m   (Q5_K; Q4_K uses "q4")
 *   fmt 6: per 16 weights, int8 q (-32..31), fp32 d:   w = d*q       (Q6_K)
 * (a K-quant's d here is its fp16 super-scale times the sub-block's integer scale, m = -dmin*min:
 * both exact in fp32, as in gguf.quants.dequantize.)
 * d*q is exact in fp32 (an fp16 scale times a <= 8-bit integer), so fma(d, q, m) rounds once,
 * like the loader's (d*q) + m: every weight used here equals the model's fp32 weight bit for bit;
 * only the order of the dot product's sum differs from a BLAS gemv.
 *
 * Layout: W rows (out features) x nb blocks; X (m, k) row-major; Y (m, rows) row-major.
 * Rows [r0, r1) are computed, so callers may split rows across threads.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LLMLAB_AVX2 1
#endif

#define QK 32

/* Dequantize one row (nb blocks) into out[nb*32]. */
static void deq_row_q4(const uint8_t *qs, const float *d, const float *m, int64_t nb, float *out) {
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *q = qs + b * 16;
        float db = d[b], mb = m[b];
#ifdef LLMLAB_AVX2
        __m128i v = _mm_loadu_si128((const __m128i *)q);
        __m128i lo = _mm_and_si128(v, _mm_set1_epi8(0x0F));
        __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), _mm_set1_epi8(0x0F));
        __m256 vd = _mm256_set1_ps(db), vm = _mm256_set1_ps(mb);
        float *o = out + b * QK;
        _mm256_storeu_ps(o + 0, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), vd, vm));
        _mm256_storeu_ps(o + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), vd, vm));
        _mm256_storeu_ps(o + 16, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), vd, vm));
        _mm256_storeu_ps(o + 24, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), vd, vm));
#else
        for (int j = 0; j < 16; j++) {
            out[b * QK + j] = __builtin_fmaf(db, (float)(q[j] & 15), mb);
            out[b * QK + j + 16] = __builtin_fmaf(db, (float)(q[j] >> 4), mb);
        }
#endif
    }
}

/* Software prefetch distance of the weight streams that batch-1 decode reads from DRAM (the int8
 * rows of `deq_row_i8`, the nibbles of `fused4_q4_256`): one core, CPU time, under load, LM head
 * 4.6 -> 4.1 ms, down 135 -> 101 us (benchmarks/matvec_shapes.c -DEXACT; docs/LOG.md session 12). */
#define PF_BYTES 2048

/* int8 weights in groups of g (32: Q8_0 and Q5_K's repacking; 16: Q6_K's): w = d*q, or fma(d, q, m)
 * with an offset (Q5_K). d*q is exact in fp32 for every format kept (<= 24 significant bits). */
static void deq_row_i8(const int8_t *qs, const float *d, const float *m, int64_t ng, int g, float *out) {
    for (int64_t b = 0; b < ng; b++) {
        const int8_t *q = qs + b * g;
        float db = d[b];
        __builtin_prefetch(q + PF_BYTES, 0, 3);
#ifdef LLMLAB_AVX2
        __m256 vd = _mm256_set1_ps(db);
        for (int j = 0; j < g; j += 8) {
            __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + j))));
            _mm256_storeu_ps(out + b * g + j, m ? _mm256_fmadd_ps(v, vd, _mm256_set1_ps(m[b])) : _mm256_mul_ps(v, vd));
        }
#else
        if (m) for (int j = 0; j < g; j++) out[b * g + j] = __builtin_fmaf(db, (float)q[j], m[b]);
        else for (int j = 0; j < g; j++) out[b * g + j] = db * (float)q[j];
#endif
    }
}

/* Group size of a format: 16 for fmt 6 (Q6_K), else 32. Bytes of qs per group: 16 for fmt 4. */
static inline int group_of(int fmt) { return fmt == 6 ? 16 : QK; }

/* Dequantize row `row` of a weight with k columns into out[k] (any format). */
static void deq_row(int fmt, const uint8_t *qs, const float *d, const float *m, int64_t row, int64_t k, float *out) {
    int g = group_of(fmt);
    int64_t ng = k / g;
    if (fmt == 4) deq_row_q4(qs + row * ng * 16, d + row * ng, m + row * ng, ng, out);
    else deq_row_i8((const int8_t *)qs + row * k, d + row * ng, m ? m + row * ng : NULL, ng, g, out);
}

#ifdef LLMLAB_AVX2
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* 4 dequantized weight rows (w, stride k) against 2 input rows: out[i*ldy + r]. */
static void dot_4x2_256(const float *w, int64_t k, const float *x0, const float *x1, float *y0, float *y1, int two) {
#ifdef LLMLAB_AVX2
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
    __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    const float *w0 = w, *w1 = w + k, *w2 = w + 2 * k, *w3 = w + 3 * k;
    if (two) {
        for (int64_t j = 0; j < k; j += 8) {
            __m256 u = _mm256_loadu_ps(x0 + j), v = _mm256_loadu_ps(x1 + j);
            __m256 b0 = _mm256_loadu_ps(w0 + j), b1 = _mm256_loadu_ps(w1 + j);
            __m256 b2 = _mm256_loadu_ps(w2 + j), b3 = _mm256_loadu_ps(w3 + j);
            a00 = _mm256_fmadd_ps(u, b0, a00); a01 = _mm256_fmadd_ps(u, b1, a01);
            a02 = _mm256_fmadd_ps(u, b2, a02); a03 = _mm256_fmadd_ps(u, b3, a03);
            a10 = _mm256_fmadd_ps(v, b0, a10); a11 = _mm256_fmadd_ps(v, b1, a11);
            a12 = _mm256_fmadd_ps(v, b2, a12); a13 = _mm256_fmadd_ps(v, b3, a13);
        }
        y1[0] = hsum(a10); y1[1] = hsum(a11); y1[2] = hsum(a12); y1[3] = hsum(a13);
    } else {
        for (int64_t j = 0; j < k; j += 8) {
            __m256 u = _mm256_loadu_ps(x0 + j);
            a00 = _mm256_fmadd_ps(u, _mm256_loadu_ps(w0 + j), a00);
            a01 = _mm256_fmadd_ps(u, _mm256_loadu_ps(w1 + j), a01);
            a02 = _mm256_fmadd_ps(u, _mm256_loadu_ps(w2 + j), a02);
            a03 = _mm256_fmadd_ps(u, _mm256_loadu_ps(w3 + j), a03);
        }
    }
    y0[0] = hsum(a00); y0[1] = hsum(a01); y0[2] = hsum(a02); y0[3] = hsum(a03);
#else
    for (int r = 0; r < 4; r++) {
        float s0 = 0.f, s1 = 0.f;
        for (int64_t j = 0; j < k; j++) {
            s0 += x0[j] * w[r * k + j];
            if (two) s1 += x1[j] * w[r * k + j];
        }
        y0[r] = s0;
        if (two) y1[r] = s1;
    }
#endif
}

#ifdef LLMLAB_AVX2
/* 6 dequantized weight rows (w, stride k) against 2 input rows (AVX2, many input rows): 12
 * accumulators, 8 loads per 12 FMAs (the 4 x 2 tile as compiled: 10 loads per 8 FMAs, so it ran at
 * the load ports' speed, ~40 % of the FMA rate; docs/infer.md, session 10). Per output the order
 * of `dot_4x2_256` (one 8-lane accumulator over k in steps of 8, then hsum): the same bits.
 * noinline: inlined into the OpenMP body, gcc spilled its pointers. */
/* a weight vector held in a register for its 2 FMAs: the empty asm stops the compiler from folding
 * its load into both (two loads instead of one: the loop then waits on the load ports) */
#define LOAD_REG(b, p) do { b = _mm256_loadu_ps(p); __asm__("" : "+x"(b)); } while (0)
__attribute__((noinline)) static void dot_6x2_256(const float *w, int64_t k, const float *x0, const float *x1, float *y0, float *y1) {
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a04 = a00, a05 = a00;
    __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00, a14 = a00, a15 = a00;
    for (int64_t j = 0; j < k; j += 8) {
        __m256 u = _mm256_loadu_ps(x0 + j), v = _mm256_loadu_ps(x1 + j), b;
        LOAD_REG(b, w + j); a00 = _mm256_fmadd_ps(u, b, a00); a10 = _mm256_fmadd_ps(v, b, a10);
        LOAD_REG(b, w + k + j); a01 = _mm256_fmadd_ps(u, b, a01); a11 = _mm256_fmadd_ps(v, b, a11);
        LOAD_REG(b, w + 2 * k + j); a02 = _mm256_fmadd_ps(u, b, a02); a12 = _mm256_fmadd_ps(v, b, a12);
        LOAD_REG(b, w + 3 * k + j); a03 = _mm256_fmadd_ps(u, b, a03); a13 = _mm256_fmadd_ps(v, b, a13);
        LOAD_REG(b, w + 4 * k + j); a04 = _mm256_fmadd_ps(u, b, a04); a14 = _mm256_fmadd_ps(v, b, a14);
        LOAD_REG(b, w + 5 * k + j); a05 = _mm256_fmadd_ps(u, b, a05); a15 = _mm256_fmadd_ps(v, b, a15);
    }
    /* the 12 hsums side by side: each lane gets hsum's tree ((a0+a4) + (a2+a6)) + ((a1+a5) + (a3+a7)) */
    __m256 t0 = _mm256_add_ps(_mm256_permute2f128_ps(a00, a10, 0x20), _mm256_permute2f128_ps(a00, a10, 0x31));
    __m256 t1 = _mm256_add_ps(_mm256_permute2f128_ps(a01, a11, 0x20), _mm256_permute2f128_ps(a01, a11, 0x31));
    __m256 t2 = _mm256_add_ps(_mm256_permute2f128_ps(a02, a12, 0x20), _mm256_permute2f128_ps(a02, a12, 0x31));
    __m256 t3 = _mm256_add_ps(_mm256_permute2f128_ps(a03, a13, 0x20), _mm256_permute2f128_ps(a03, a13, 0x31));
    __m256 t4 = _mm256_add_ps(_mm256_permute2f128_ps(a04, a14, 0x20), _mm256_permute2f128_ps(a04, a14, 0x31));
    __m256 t5 = _mm256_add_ps(_mm256_permute2f128_ps(a05, a15, 0x20), _mm256_permute2f128_ps(a05, a15, 0x31));
    __m256 s01 = _mm256_add_ps(_mm256_unpacklo_ps(t0, t1), _mm256_unpackhi_ps(t0, t1));
    __m256 s23 = _mm256_add_ps(_mm256_unpacklo_ps(t2, t3), _mm256_unpackhi_ps(t2, t3));
    __m256 s45 = _mm256_add_ps(_mm256_unpacklo_ps(t4, t5), _mm256_unpackhi_ps(t4, t5));
    __m256 r03 = _mm256_add_ps(_mm256_shuffle_ps(s01, s23, 0x44), _mm256_shuffle_ps(s01, s23, 0xEE));
    __m256 r45 = _mm256_add_ps(s45, _mm256_shuffle_ps(s45, s45, 0xEE));
    _mm_storeu_ps(y0, _mm256_castps256_ps128(r03));
    _mm_storeu_ps(y1, _mm256_extractf128_ps(r03, 1));
    _mm_storel_pi((__m64 *)(y0 + 4), _mm256_castps256_ps128(r45));
    _mm_storel_pi((__m64 *)(y1 + 4), _mm256_extractf128_ps(r45, 1));
}

/* one output in `dot_4x2_256`'s order (for the 6-row tiles' leftovers) */
static float dot_col8(const float *w, const float *x, int64_t k) {
    __m256 a = _mm256_setzero_ps();
    for (int64_t j = 0; j < k; j += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(w + j), a);
    return hsum(a);
}
#endif

static float dot1_256(const float *w, const float *x, int64_t k) {
#ifdef LLMLAB_AVX2
    __m256 a = _mm256_setzero_ps(), b = a;
    for (int64_t j = 0; j < k; j += 16) {
        a = _mm256_fmadd_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(w + j), a);
        b = _mm256_fmadd_ps(_mm256_loadu_ps(x + j + 8), _mm256_loadu_ps(w + j + 8), b);
    }
    return hsum(_mm256_add_ps(a, b));
#else
    float s = 0.f;
    for (int64_t j = 0; j < k; j++) s += x[j] * w[j];
    return s;
#endif
}


/* ---- AVX2 batch-1 nibble path: 4 weight rows against one input row, dequantized in registers
 * (no trip through L1). Per output the order of `dot_4x2_256` (one 8-lane accumulator over k in
 * steps of 8, then hsum) and the weights of `deq_row_q4` (fma(q, d, m)): the same bits. */
#if defined(LLMLAB_AVX2) && !defined(__AVX512F__)
#define LLMLAB_FUSED_256 1
static void fused4_q4_256(const uint8_t *qs, const float *d, const float *m, int64_t r, int64_t k,
                          const float *x, float *y) {
    int64_t nb = k / QK;
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    const __m128i lo4 = _mm_set1_epi8(0x0F);
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * QK;
        __m256 x0 = _mm256_loadu_ps(xb), x1 = _mm256_loadu_ps(xb + 8);
        __m256 x2 = _mm256_loadu_ps(xb + 16), x3 = _mm256_loadu_ps(xb + 24);
        for (int t = 0; t < 4; t++) {
            int64_t g = (r + t) * nb + b;
            if ((b & 3) == 0) __builtin_prefetch(qs + g * 16 + PF_BYTES, 0, 3); /* one 64-byte line: 4 blocks */
            __m128i v = _mm_loadu_si128((const __m128i *)(qs + g * 16));
            __m128i lo = _mm_and_si128(v, lo4), hi = _mm_and_si128(_mm_srli_epi16(v, 4), lo4);
            __m256 vd = _mm256_set1_ps(d[g]), vm = _mm256_set1_ps(m[g]);
            __m256 w0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), vd, vm);
            __m256 w1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), vd, vm);
            __m256 w2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), vd, vm);
            __m256 w3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), vd, vm);
            a[t] = _mm256_fmadd_ps(x0, w0, a[t]);
            a[t] = _mm256_fmadd_ps(x1, w1, a[t]);
            a[t] = _mm256_fmadd_ps(x2, w2, a[t]);
            a[t] = _mm256_fmadd_ps(x3, w3, a[t]);
        }
    }
    for (int t = 0; t < 4; t++) y[t] = hsum(a[t]);
}
#endif

/* ---- AVX-512 decode path -----------------------------------------------------------------------
 * One summation order for every output (weight row r, input row i), however it is reached: two
 * 16-lane accumulators, A over weights 32c..32c+15 and B over 32c+16..32c+31 of every 32-chunk c
 * in order, then reduce(A + B). A single input row (batch-1 decode) dequantizes each 32-chunk in
 * registers and multiplies it at once (`fused_rows`: no trip through memory); more input rows
 * dequantize 4 weight rows into L1 once and read them from there (`dot_4x2_512`, `dot1_512`). The
 * dequantized weights are the same exact values either way, so the bits are the same. */
#if defined(__AVX512F__) && defined(LLMLAB_AVX2)
#define LLMLAB_512 1
#define AI static inline __attribute__((always_inline))

AI void deq32(const int fmt, const uint8_t *qs, const float *d, const float *m, int64_t row, int64_t k,
              int64_t b, __m512 *lo, __m512 *hi) {
    if (fmt == 4) {
        int64_t g = row * (k / QK) + b;
        __m128i v = _mm_loadu_si128((const __m128i *)(qs + g * 16));
        __m512 vd = _mm512_set1_ps(d[g]), vm = _mm512_set1_ps(m[g]);
        __m512 ql = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(v, _mm_set1_epi8(0x0F))));
        __m512 qh = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(v, 4), _mm_set1_epi8(0x0F))));
        *lo = _mm512_fmadd_ps(ql, vd, vm);
        *hi = _mm512_fmadd_ps(qh, vd, vm);
        return;
    }
    const int8_t *q = (const int8_t *)qs + row * k + b * QK;
    __m512 ql = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q)));
    __m512 qh = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + 16))));
    if (fmt == 6) {
        int64_t g = row * (k / 16) + 2 * b;
        *lo = _mm512_mul_ps(ql, _mm512_set1_ps(d[g]));
        *hi = _mm512_mul_ps(qh, _mm512_set1_ps(d[g + 1]));
        return;
    }
    int64_t g = row * (k / QK) + b;
    __m512 vd = _mm512_set1_ps(d[g]);
    if (fmt == 5) {
        __m512 vm = _mm512_set1_ps(m[g]);
        *lo = _mm512_fmadd_ps(ql, vd, vm);
        *hi = _mm512_fmadd_ps(qh, vd, vm);
    } else {
        *lo = _mm512_mul_ps(ql, vd);
        *hi = _mm512_mul_ps(qh, vd);
    }
}

/* NRC (1..4) weight rows from r against one input row x -> y[0..NRC). */
AI void fused_rows_t(const int fmt, const int NRC, const uint8_t *qs, const float *d, const float *m, int64_t r,
                     int64_t k, const float *x, float *y) {
    __m512 a[4], b2[4];
    for (int t = 0; t < NRC; t++) a[t] = b2[t] = _mm512_setzero_ps();
    for (int64_t c = 0; c < k / QK; c++) {
        __m512 xl = _mm512_loadu_ps(x + c * QK), xh = _mm512_loadu_ps(x + c * QK + 16);
        for (int t = 0; t < NRC; t++) {
            __m512 wl, wh;
            deq32(fmt, qs, d, m, r + t, k, c, &wl, &wh);
            a[t] = _mm512_fmadd_ps(xl, wl, a[t]);
            b2[t] = _mm512_fmadd_ps(xh, wh, b2[t]);
        }
    }
    for (int t = 0; t < NRC; t++) y[t] = _mm512_reduce_add_ps(_mm512_add_ps(a[t], b2[t]));
}

#define FUSED_FMT(F) do { switch (nr) { \
    case 4: fused_rows_t(F, 4, qs, d, m, r, k, x, y); break; case 3: fused_rows_t(F, 3, qs, d, m, r, k, x, y); break; \
    case 2: fused_rows_t(F, 2, qs, d, m, r, k, x, y); break; default: fused_rows_t(F, 1, qs, d, m, r, k, x, y); } } while (0)

static void fused_rows(int fmt, const uint8_t *qs, const float *d, const float *m, int64_t r, int nr, int64_t k,
                       const float *x, float *y) {
    switch (fmt) {
    case 4: FUSED_FMT(4); break;
    case 5: FUSED_FMT(5); break;
    case 6: FUSED_FMT(6); break;
    default: FUSED_FMT(8);
    }
}

static void dot_4x2_512(const float *w, int64_t k, const float *x0, const float *x1, float *y0, float *y1, int two) {
    __m512 a[2][4][2];
    for (int i = 0; i < 2; i++)
        for (int t = 0; t < 4; t++) a[i][t][0] = a[i][t][1] = _mm512_setzero_ps();
    if (two) {
        for (int64_t j = 0; j < k; j += QK) {
            __m512 u0 = _mm512_loadu_ps(x0 + j), u1 = _mm512_loadu_ps(x0 + j + 16);
            __m512 v0 = _mm512_loadu_ps(x1 + j), v1 = _mm512_loadu_ps(x1 + j + 16);
            for (int t = 0; t < 4; t++) {
                __m512 w0 = _mm512_loadu_ps(w + t * k + j), w1 = _mm512_loadu_ps(w + t * k + j + 16);
                a[0][t][0] = _mm512_fmadd_ps(u0, w0, a[0][t][0]);
                a[0][t][1] = _mm512_fmadd_ps(u1, w1, a[0][t][1]);
                a[1][t][0] = _mm512_fmadd_ps(v0, w0, a[1][t][0]);
                a[1][t][1] = _mm512_fmadd_ps(v1, w1, a[1][t][1]);
            }
        }
        for (int t = 0; t < 4; t++) y1[t] = _mm512_reduce_add_ps(_mm512_add_ps(a[1][t][0], a[1][t][1]));
    } else {
        for (int64_t j = 0; j < k; j += QK) {
            __m512 u0 = _mm512_loadu_ps(x0 + j), u1 = _mm512_loadu_ps(x0 + j + 16);
            for (int t = 0; t < 4; t++) {
                a[0][t][0] = _mm512_fmadd_ps(u0, _mm512_loadu_ps(w + t * k + j), a[0][t][0]);
                a[0][t][1] = _mm512_fmadd_ps(u1, _mm512_loadu_ps(w + t * k + j + 16), a[0][t][1]);
            }
        }
    }
    for (int t = 0; t < 4; t++) y0[t] = _mm512_reduce_add_ps(_mm512_add_ps(a[0][t][0], a[0][t][1]));
}

static float dot1_512(const float *w, const float *x, int64_t k) {
    __m512 a = _mm512_setzero_ps(), b = a;
    for (int64_t j = 0; j < k; j += QK) {
        a = _mm512_fmadd_ps(_mm512_loadu_ps(x + j), _mm512_loadu_ps(w + j), a);
        b = _mm512_fmadd_ps(_mm512_loadu_ps(x + j + 16), _mm512_loadu_ps(w + j + 16), b);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a, b));
}
#define dot_4x2 dot_4x2_512
#define dot1 dot1_512
#else
#define dot_4x2 dot_4x2_256
#define dot1 dot1_256
#endif

#if defined(LLMLAB_AVX2) && !defined(LLMLAB_512)
/* A few input rows (2..FEW): 2 weight rows dequantized in registers (as `fused4_q4_256`, no trip
 * through L1) against NX (1..5) input rows, up to 10 accumulators. Dequantizing through L1 costs as much
 * as the products when only a few input rows share it. Per output `dot_4x2_256`'s order and
 * `deq_row`'s weights: the same bits. fmt 4 (nibbles) and 8 (Q8_0) only. */
#define FEW 5
static inline __attribute__((always_inline)) void deq32_256(int fmt, const uint8_t *qs, const float *d,
                                                            const float *m, int64_t row, int64_t k, int64_t b,
                                                            __m256 *w) {
    int64_t g = row * (k / QK) + b;
    __m256 vd = _mm256_set1_ps(d[g]);
    if (fmt == 4) {
        __m128i v = _mm_loadu_si128((const __m128i *)(qs + g * 16)), lo4 = _mm_set1_epi8(0x0F);
        __m128i lo = _mm_and_si128(v, lo4), hi = _mm_and_si128(_mm_srli_epi16(v, 4), lo4);
        __m256 vm = _mm256_set1_ps(m[g]);
        w[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), vd, vm);
        w[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), vd, vm);
        w[2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), vd, vm);
        w[3] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), vd, vm);
    } else {
        const int8_t *q = (const int8_t *)qs + row * k + b * QK;
        for (int j = 0; j < 4; j++)
            w[j] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + 8 * j)))), vd);
    }
}

static inline __attribute__((always_inline)) void few_t(const int fmt, const int NX, const uint8_t *qs,
                                                        const float *d, const float *m, int64_t r, int64_t k,
                                                        const float *x, float *y, int64_t rows) {
    __m256 a[2][5];
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < NX; i++) a[t][i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < k / QK; b++)
        for (int t = 0; t < 2; t++) {
            __m256 w[4];
            deq32_256(fmt, qs, d, m, r + t, k, b, w);
            for (int i = 0; i < NX; i++)
                for (int j = 0; j < 4; j++) a[t][i] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i * k + b * QK + 8 * j), w[j], a[t][i]);
        }
    for (int i = 0; i < NX; i++)
        for (int t = 0; t < 2; t++) y[i * rows + r + t] = hsum(a[t][i]);
}

/* weight rows [r0, e4) (an even count) against the input rows [i0, i1) (1..FEW) in one pass */
static void few_256(int fmt, const uint8_t *qs, const float *d, const float *m, int64_t rows, int64_t k,
                    const float *x, int64_t i0, int64_t i1, float *y, int64_t r0, int64_t e4) {
    const float *xi = x + i0 * k;
    float *yi = y + i0 * rows;
    for (int64_t r = r0; r < e4; r += 2)
        switch ((int)(i1 - i0) + (fmt == 4 ? 0 : 8)) {
        case 1: few_t(4, 1, qs, d, m, r, k, xi, yi, rows); break;
        case 2: few_t(4, 2, qs, d, m, r, k, xi, yi, rows); break;
        case 3: few_t(4, 3, qs, d, m, r, k, xi, yi, rows); break;
        case 4: few_t(4, 4, qs, d, m, r, k, xi, yi, rows); break;
        case 5: few_t(4, 5, qs, d, m, r, k, xi, yi, rows); break;
        case 9: few_t(8, 1, qs, d, m, r, k, xi, yi, rows); break;
        case 10: few_t(8, 2, qs, d, m, r, k, xi, yi, rows); break;
        case 11: few_t(8, 3, qs, d, m, r, k, xi, yi, rows); break;
        case 12: few_t(8, 4, qs, d, m, r, k, xi, yi, rows); break;
        default: few_t(8, 5, qs, d, m, r, k, xi, yi, rows);
        }
}

#define LLMLAB_MANY_256 1
/* Input rows [i0, i1) (at least 2) against weight rows [r0, e4), e4 - r0 a multiple of 2, every
 * row inside the matrix's whole groups of 4 (the rows `matmul` gives `dot_4x2`'s order): 6 rows at
 * a time in the 6 x 2 tile, then 4 x 2, then 2 rows one output at a time; every output in
 * `dot_4x2_256`'s order, so the bits are those of the 4-row path at any mx or split. buf: 6*k. */
static void many_256(int fmt, const uint8_t *qs, const float *d, const float *m, int64_t rows, int64_t k,
                     const float *x, int64_t i0, int64_t i1, float *y, int64_t r0, int64_t e4, float *buf) {
    /* Q8_0 at 2 rows: through L1 is faster (4.1 vs 4.4 ms the LM head; 3 rows: 6.7 vs 5.2) */
    if (i1 - i0 <= FEW && (fmt == 4 || (fmt == 8 && i1 - i0 >= 3))) {
        few_256(fmt, qs, d, m, rows, k, x, i0, i1, y, r0, e4);
        return;
    }
    float t0[6], t1[6];
    int64_t r = r0;
    for (; r + 6 <= e4; r += 6) {
        for (int64_t t = 0; t < 6; t++) deq_row(fmt, qs, d, m, r + t, k, buf + t * k);
        int64_t i = i0;
        for (; i + 1 < i1; i += 2) {
            dot_6x2_256(buf, k, x + i * k, x + (i + 1) * k, t0, t1);
            memcpy(y + i * rows + r, t0, sizeof t0);
            memcpy(y + (i + 1) * rows + r, t1, sizeof t1);
        }
        if (i < i1) {
            dot_4x2_256(buf, k, x + i * k, x + i * k, t0, t1, 0);
            for (int t = 4; t < 6; t++) t0[t] = dot_col8(buf + t * k, x + i * k, k);
            memcpy(y + i * rows + r, t0, sizeof t0);
        }
    }
    for (; r < e4; r += 4) {
        int nr = e4 - r < 4 ? 2 : 4;
        for (int64_t t = 0; t < nr; t++) deq_row(fmt, qs, d, m, r + t, k, buf + t * k);
        for (int64_t i = i0; i < i1; i += 2) {
            if (nr == 2) {
                for (int64_t ii = i; ii < i1 && ii < i + 2; ii++)
                    for (int t = 0; t < 2; t++) y[ii * rows + r + t] = dot_col8(buf + t * k, x + ii * k, k);
                continue;
            }
            int two = i + 1 < i1;
            dot_4x2_256(buf, k, x + i * k, x + (two ? i + 1 : i) * k, t0, t1, two);
            memcpy(y + i * rows + r, t0, 4 * sizeof(float));
            if (two) memcpy(y + (i + 1) * rows + r, t1, 4 * sizeof(float));
        }
    }
}
#endif

/* buf: scratch of 6*k floats. The one kernel for both formats: dequantize 4 rows into L1, then
 * every input row of a chunk of MB reads them (weights decoded once per chunk, not once per
 * input row; a chunk's inputs stay in L2). A row's result never depends on mx, the chunking or
 * [r0, r1) as long as r0 is a multiple of 4: the engine's batch invariance rests on it. */
#define MB 64
static void matmul(int fmt, const uint8_t *qs, const float *d, const float *m, int64_t rows, int64_t k,
                   const float *x, int64_t mx, float *y, int64_t r0, int64_t r1, float *buf) {
    for (int64_t i0 = 0; i0 < mx; i0 += MB) {
        int64_t i1 = mx - i0 < MB ? mx : i0 + MB, rs = r0;
#ifdef LLMLAB_MANY_256
        if (i1 - i0 >= 2) {  /* the rows of whole groups of 4 in the 6 x 2 tile; the tail as below */
            rs = r1 < (rows & ~(int64_t)3) ? r1 : (rows & ~(int64_t)3);
            rs = rs > r0 ? rs : r0;
            many_256(fmt, qs, d, m, rows, k, x, i0, i1, y, r0, rs, buf);
        }
#endif
        for (int64_t r = rs; r < r1; r += 4) {
            int64_t nr = r1 - r < 4 ? r1 - r : 4;
#ifdef LLMLAB_512
            /* one input row of nibbles: dequantize in registers (same bits as below). int8 formats
             * stay on the path through L1: fused, their 4 interleaved row streams ran 1.2-5x
             * slower from DRAM here (docs/LOG.md) */
            if (i1 - i0 == 1 && fmt == 4) {
                float tmp[4];
                fused_rows(fmt, qs, d, m, r, (int)nr, k, x + i0 * k, tmp);
                memcpy(y + i0 * rows + r, tmp, sizeof(float) * nr);
                continue;
            }
#endif
#ifdef LLMLAB_FUSED_256
            if (i1 - i0 == 1 && fmt == 4 && nr == 4) {
                float tmp[4];
                fused4_q4_256(qs, d, m, r, k, x + i0 * k, tmp);
                memcpy(y + i0 * rows + r, tmp, sizeof tmp);
                continue;
            }
#endif
            for (int64_t t = 0; t < nr; t++) deq_row(fmt, qs, d, m, r + t, k, buf + t * k);
            if (nr == 4) {
                int64_t i = i0;
                float tmp0[4], tmp1[4];
                for (; i + 1 < i1; i += 2) {
                    dot_4x2(buf, k, x + i * k, x + (i + 1) * k, tmp0, tmp1, 1);
                    memcpy(y + i * rows + r, tmp0, sizeof tmp0);
                    memcpy(y + (i + 1) * rows + r, tmp1, sizeof tmp1);
                }
                if (i < i1) {
                    dot_4x2(buf, k, x + i * k, x + i * k, tmp0, tmp1, 0);
                    memcpy(y + i * rows + r, tmp0, sizeof tmp0);
                }
            } else {
                for (int64_t i = i0; i < i1; i++)
                    for (int64_t t = 0; t < nr; t++) y[i * rows + r + t] = dot1(buf + t * k, x + i * k, k);
            }
        }
    }
}

/* This thread's share [lo, hi) of `units` work units (inside an OpenMP region, or all of it). */
static void my_share(int64_t units, int64_t *lo, int64_t *hi) {
    int t = 0, n = 1;
#ifdef _OPENMP
    t = omp_get_thread_num();
    n = omp_get_num_threads();
#endif
    *lo = units * t / n;
    *hi = units * (t + 1) / n;
}

static int clamp_threads(int nt, int64_t units) {
    if (nt < 1) nt = 1;
    return nt > units ? (int)units : nt;
}

/* Exported: fmt 4 ("q4") or 8 ("q8"); k a multiple of 32. nt threads split the rows in groups of
 * 4 (OpenMP: linked by soname to the libgomp torch already loaded, so these are torch's own
 * worker threads, not a second pool competing with them for the cores). */
void llmlab_ggml_matmul(int fmt, const uint8_t *qs, const float *d, const float *m, int64_t rows, int64_t k,
                        const float *x, int64_t mx, float *y, int nt) {
    int64_t groups = (rows + 3) / 4;
    nt = clamp_threads(nt, groups);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int64_t g0, g1;
        my_share(groups, &g0, &g1);
        int64_t r0 = g0 * 4, r1 = g1 * 4 < rows ? g1 * 4 : rows;
        float *buf = (float *)malloc(sizeof(float) * 6 * (size_t)k);
        if (buf) {
            matmul(fmt, qs, d, m, rows, k, x, mx, y, r0, r1, buf);
            free(buf);
        }
    }
}


/* ---- GEMM path for many input rows (prefill), AVX-512 only -----------------------------------
 * 32 output rows (a panel) are dequantized and transposed into buf as [k][32] floats, then 8 input
 * rows at a time run an 8 x 32 register tile: per k, two 16-wide loads of the panel, 8 broadcasts
 * of x, 16 FMAs. Every output sums over k in order 0..k-1 in one FMA lane, so a row's result does
 * not depend on mx, its position in the tile or the thread split (batch invariant, like the path
 * above, but not bit-equal to it: callers use one path per kind of step). */
#if defined(__AVX512F__)
#define LLMLAB_GEMM 1
#define NR 32
#define MR 8
static void panel(int fmt, const uint8_t *qs, const float *d, const float *m, int64_t rows, int64_t k,
                  int64_t r, float *row, float *pan) {
    for (int64_t t = 0; t < NR; t++) {
        int64_t rr = r + t;
        if (rr < rows) {
            deq_row(fmt, qs, d, m, rr, k, row);
            for (int64_t j = 0; j < k; j++) pan[j * NR + t] = row[j];
        } else {
            for (int64_t j = 0; j < k; j++) pan[j * NR + t] = 0.f;
        }
    }
}

static void tile(const float *pan, int64_t k, const float *x, int64_t nx, float *y, int64_t ldy, int64_t nr) {
    __m512 a[MR][2];
    for (int i = 0; i < MR; i++) a[i][0] = a[i][1] = _mm512_setzero_ps();
    const float *xs[MR];
    for (int i = 0; i < MR; i++) xs[i] = x + (i < nx ? i : 0) * k;  /* rows past nx: computed, dropped */
    for (int64_t j = 0; j < k; j++) {
        __m512 b0 = _mm512_loadu_ps(pan + j * NR), b1 = _mm512_loadu_ps(pan + j * NR + 16);
        for (int i = 0; i < MR; i++) {
            __m512 v = _mm512_set1_ps(xs[i][j]);
            a[i][0] = _mm512_fmadd_ps(v, b0, a[i][0]);
            a[i][1] = _mm512_fmadd_ps(v, b1, a[i][1]);
        }
    }
    __mmask16 m0 = nr >= 16 ? 0xFFFF : (__mmask16)((1u << nr) - 1);
    __mmask16 m1 = nr >= 32 ? 0xFFFF : nr <= 16 ? 0 : (__mmask16)((1u << (nr - 16)) - 1);
    for (int i = 0; i < nx; i++) {
        _mm512_mask_storeu_ps(y + i * ldy, m0, a[i][0]);
        _mm512_mask_storeu_ps(y + i * ldy + 16, m1, a[i][1]);
    }
}
#endif

/* Exported: the GEMM path (returns 0 where it is not compiled in: no AVX-512). */
int llmlab_ggml_gemm(int fmt, const uint8_t *qs, const float *d, const float *m, int64_t rows, int64_t k,
                     const float *x, int64_t mx, float *y, int nt) {
#ifdef LLMLAB_GEMM
    int64_t panels = (rows + NR - 1) / NR;
    nt = clamp_threads(nt, panels);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        int64_t p0, p1;
        my_share(panels, &p0, &p1);
        float *pan = (float *)malloc(sizeof(float) * (size_t)(NR * k + k));
        if (pan) {
            for (int64_t p = p0; p < p1; p++) {
                int64_t r = p * NR, nr = rows - r < NR ? rows - r : NR;
                panel(fmt, qs, d, m, rows, k, r, pan + NR * k, pan);
                for (int64_t i = 0; i < mx; i += MR)
                    tile(pan, k, x + i * k, mx - i < MR ? mx - i : MR, y + i * rows + r, rows, nr);
            }
            free(pan);
        }
    }
    return 1;
#else
    (void)fmt; (void)qs; (void)d; (void)m; (void)rows; (void)k; (void)x; (void)mx; (void)y; (void)nt;
    return 0;
#endif
}

int llmlab_ggml_simd(void) {
#if defined(LLMLAB_AVX2) && defined(__AVX512F__)
    return 3;
#elif defined(LLMLAB_AVX2)
    return 2;
#else
    return 0;
#endif
}
