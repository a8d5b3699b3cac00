/* Decode attention over a KV cache addressed by slots: one new query per sequence.
 *
 * out[b, h] = softmax(scale * q[b, h] . K[s, g]) @ V[s, g]  over the slots s of sequence b, with
 * g = h / (H / Hkv) (grouped-query attention: consecutive query heads share a K/V head, as in
 * torch's SDPA with enable_gqa). K[s, g] lives at k + s * s_pos + g * s_head (paged cache:
 * s_pos = Hkv*D, s_head = D; contiguous (Hkv, T, D) cache: s_pos = D, s_head = T*D).
 * Why: the engine's decode step gathered every sequence's keys (index_select) into padded
 * groups for torch's SDPA; here each (sequence, head) reads its keys in place, once.
 * Every (b, h) is computed by one thread in one fixed order, so its result does not depend on
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
    float s = 0.f;
    for (int l = 0; l < LANES; l++) s += acc[l];
    for (; d < D; d++) s += a[d] * b[d];
    return s;
}

void llmlab_decode_attention(const float *q, const float *k, const float *v, int64_t s_pos, int64_t s_head,
                             const int64_t *slots, const int64_t *offs, int64_t B, int64_t H, int64_t Hkv,
                             int64_t D, float scale, float *out, int nt) {
    int64_t G = H / Hkv;
    if (nt < 1) nt = 1;
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
    for (int64_t bh = 0; bh < B * H; bh++) {
        int64_t b = bh / H, h = bh % H, g = h / G, n = offs[b + 1] - offs[b];
        const int64_t *sl = slots + offs[b];
        const float *qv = q + bh * D;
        float *o = out + bh * D;
        for (int64_t d = 0; d < D; d++) o[d] = 0.f;
        float *p = (float *)malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
        if (!p || n <= 0) { free(p); continue; }
        float mx = -INFINITY;
        for (int64_t i = 0; i < n; i++) {
            p[i] = scale * dot(qv, k + sl[i] * s_pos + g * s_head, D);
            if (p[i] > mx) mx = p[i];
        }
        float sum = 0.f;
        for (int64_t i = 0; i < n; i++) {
            p[i] = expf(p[i] - mx);
            sum += p[i];
        }
        for (int64_t i = 0; i < n; i++) {
            const float *vv = v + sl[i] * s_pos + g * s_head;
            float w = p[i];
            for (int64_t d = 0; d < D; d++) o[d] += w * vv[d];
        }
        float inv = 1.f / sum;
        for (int64_t d = 0; d < D; d++) o[d] *= inv;
        free(p);
    }
}
