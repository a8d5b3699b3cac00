/* e^x by Cephes' expf (Cody-Waite reduction by ln 2, degree-6 polynomial; ~1e-7 relative error),
 * inline instead of a call of libm's expf per value (in attention.c that call was half of the
 * kernel's time). Shared by attention.c (exp_neg: the softmax after subtracting the max) and layer.c
 * (exp_any: SiLU). A header because each kernel library is one C file (llmlab/kernels/build.py
 * hashes the headers a source includes into its cache key). */
#ifndef LLMLAB_EXP_POLY_H
#define LLMLAB_EXP_POLY_H
#include <math.h>
#include <stdint.h>

/* 2^fe * e^(x - fe ln 2), fe integer-valued with x - fe ln 2 in [-ln2/2, ln2/2] */
static inline float exp_scaled(float x, float fe) {
    float f = x - fe * 0.693359375f - fe * -2.12194440e-4f;
    float y = 1.9875691500E-4f;
    y = y * f + 1.3981999507E-3f;
    y = y * f + 8.3334519073E-3f;
    y = y * f + 4.1665795894E-2f;
    y = y * f + 1.6666665459E-1f;
    y = y * f + 5.0000001201E-1f;
    y = y * f * f + f + 1.0f;
    union { int32_t i; float f; } s = {.i = ((int32_t)fe + 127) << 23};
    return y * s.f;
}

/* e^x for x <= 0 (clamped at -87) */
static inline float exp_neg(float x) {
    x = x < -87.0f ? -87.0f : x;
    float t = x * 1.44269504088896341f;
    int e = (int)(t - 0.5f);  /* round to nearest for t <= 0 */
    return exp_scaled(x, (float)e);
}

/* e^x for any x (clamped to [-87, 88]) */
static inline float exp_any(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    return exp_scaled(x, floorf(x * 1.44269504088896341f + 0.5f));
}

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
/* exp_scaled's e^(x - fe ln 2) on 8 lanes, the scalar code's operations as GCC -O3 with FMA contracts
 * them (f = x - fe c1 - fe c2 as two fmas; the Horner steps as fmas; y f f + f = fma(y f, f, f); + 1),
 * before the scaling by 2^fe: the callers (attention.c's exp_neg8, layer.c's silu_vec) finish it as
 * their scalar code does, and their tests compare bits with it. */
static inline __m256 exp_reduced8(__m256 x, __m256 fe) {
    __m256 f = _mm256_fnmadd_ps(fe, _mm256_set1_ps(0.693359375f), x);
    f = _mm256_fmadd_ps(fe, _mm256_set1_ps(2.12194440e-4f), f);
    __m256 y = _mm256_set1_ps(1.9875691500E-4f);
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(1.3981999507E-3f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(8.3334519073E-3f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(4.1665795894E-2f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(1.6666665459E-1f));
    y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(5.0000001201E-1f));
    return _mm256_add_ps(_mm256_fmadd_ps(f, _mm256_mul_ps(f, y), f), _mm256_set1_ps(1.0f));
}

/* 2^e as floats, for integer-valued e in float lanes: ((int)e + 127) << 23 */
static inline __m256 exp2i8(__m256 fe) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fe), _mm256_set1_epi32(127)), 23));
}
#endif
#endif
