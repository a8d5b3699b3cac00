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
#endif
