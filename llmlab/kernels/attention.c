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

/* e^x for x <= 0 (softmax after subtracting the max): Cephes' expf (Cody-Waite reduction by
 * ln 2, degree-6 polynomial; ~1e-7 relative error) written so a loop of it vectorizes; libm's
 * scalar expf was half of this kernel's time. */
static inline float exp_neg(float x) {
    x = x < -87.0f ? -87.0f : x;
    float t = x * 1.44269504088896341f;
    int e = (int)(t - 0.5f);  /* round to nearest for t <= 0 */
    float fe = (float)e;
    float f = x - fe * 0.693359375f - fe * -2.12194440e-4f;
    float y = 1.9875691500E-4f;
    y = y * f + 1.3981999507E-3f;
    y = y * f + 8.3334519073E-3f;
    y = y * f + 4.1665795894E-2f;
    y = y * f + 1.6666665459E-1f;
    y = y * f + 5.0000001201E-1f;
    y = y * f * f + f + 1.0f;
    union { int32_t i; float f; } s = {.i = (e + 127) << 23};
    return y * s.f;
}

/* One (sequence, K/V head) per work item: its G query heads read each key and value once. */
void llmlab_decode_attention(const float *q, const float *k, const float *v, int64_t s_pos, int64_t s_head,
                             const int64_t *slots, const int64_t *offs, int64_t B, int64_t H, int64_t Hkv,
                             int64_t D, float scale, float *out, int nt) {
    int64_t G = H / Hkv;
    if (nt < 1) nt = 1;
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int64_t bg = 0; bg < B * Hkv; bg++) {
        int64_t b = bg / Hkv, g = bg % Hkv, n = offs[b + 1] - offs[b];
        const int64_t *sl = slots + offs[b];
        const float *qv = q + (b * H + g * G) * D;  /* the group's G query heads, consecutive */
        float *o = out + (b * H + g * G) * D;
        for (int64_t d = 0; d < G * D; d++) o[d] = 0.f;
        float *p = (float *)malloc(sizeof(float) * (size_t)(n > 0 ? n * G : 1));
        if (!p || n <= 0) { free(p); continue; }
        for (int64_t i = 0; i < n; i++) {
            const float *kk = k + sl[i] * s_pos + g * s_head;
            for (int64_t h = 0; h < G; h++) p[h * n + i] = scale * dot(qv + h * D, kk, D);
        }
        for (int64_t h = 0; h < G; h++) {
            float *ph = p + h * n, mx = -INFINITY, sum = 0.f;
            for (int64_t i = 0; i < n; i++) mx = ph[i] > mx ? ph[i] : mx;
            for (int64_t i = 0; i < n; i++) ph[i] = exp_neg(ph[i] - mx);
            for (int64_t i = 0; i < n; i++) sum += ph[i];
            float inv = 1.f / sum;
            for (int64_t i = 0; i < n; i++) ph[i] *= inv;
        }
        for (int64_t i = 0; i < n; i++) {
            const float *vv = v + sl[i] * s_pos + g * s_head;
            for (int64_t h = 0; h < G; h++) {
                float w = p[h * n + i];
                float *oh = o + h * D;
                for (int64_t d = 0; d < D; d++) oh[d] += w * vv[d];
            }
        }
        free(p);
    }
}
