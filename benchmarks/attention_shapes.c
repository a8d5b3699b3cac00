/* Speed of the C decode attention (llmlab/kernels/attention.c) on SmolLM2-135M's shapes in a 32-row
 * decode step (docs/infer.md, session 10): B sequences of n0..n1 keys (spread evenly), H = 9 query
 * heads, Hkv = 3 K/V heads, D = 64, on the paged cache's layout (a slot's K/V heads side by side,
 * blocks of 16 slots scattered over a pool of 4,096). Process CPU time, best of 7 passes of 30 calls (one per
 * layer, each on its own K/V pool: the caches come from L3/DRAM, as in a step); multiply-adds =
 * 2 * keys * H * D (q.k and p.v).
 *   cc -O3 -march=native -fopenmp -o /tmp/attn benchmarks/attention_shapes.c -lm && /tmp/attn [B n0 n1 nt split]
 * (default 32 16 160 1 512: the roofline benchmark's 32-row step; split: Flash-Decoding chunks) */
#include "../llmlab/kernels/attention.c"
#include <stdio.h>
#include <time.h>

static double cpu_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    int64_t B = argc > 1 ? atoll(argv[1]) : 32, n0 = argc > 2 ? atoll(argv[2]) : 16, n1 = argc > 3 ? atoll(argv[3]) : 160;
    int nt = argc > 4 ? atoi(argv[4]) : 1;
    int64_t split = argc > 5 ? atoll(argv[5]) : 512;  /* the engine's SPLIT (attention.py) */
    const int64_t H = 9, Hkv = 3, D = 64, pool = 4096, L = 30, s_pos = Hkv * D, s_head = D;
    int64_t *offs = malloc(sizeof(int64_t) * (B + 1)), total = 0;
    offs[0] = 0;
    for (int64_t b = 0; b < B; b++) offs[b + 1] = offs[b] + (B > 1 ? n0 + (n1 - n0) * b / (B - 1) : n0);
    total = offs[B];
    int64_t *slots = malloc(sizeof(int64_t) * total);
    srand(1);
    for (int64_t i = 0; i < total; i++)  /* blocks of 16 slots (the paged cache's), blocks at random */
        slots[i] = i % 16 == 0 || i == 0 ? (rand() % (pool / 16)) * 16 : slots[i - 1] + 1;
    float **k = malloc(sizeof(float *) * L), **v = malloc(sizeof(float *) * L);
    for (int l = 0; l < L; l++) {
        k[l] = malloc(sizeof(float) * pool * s_pos), v[l] = malloc(sizeof(float) * pool * s_pos);
        for (int64_t i = 0; i < pool * s_pos; i++) k[l][i] = (rand() % 2000 - 1000) / 1e3f, v[l][i] = (rand() % 2000 - 1000) / 1e3f;
    }
    float *q = malloc(sizeof(float) * B * H * D), *out = malloc(sizeof(float) * B * H * D);
    for (int64_t i = 0; i < B * H * D; i++) q[i] = (rand() % 2000 - 1000) / 1e3f;
    double best = 1e9, check = 0;
    for (int r = 0; r < 7; r++) {
        double t = cpu_seconds();
        for (int l = 0; l < L; l++)
            llmlab_decode_attention(q, k[l], v[l], s_pos, s_head, slots, offs, B, H, Hkv, D, 0.125f, out, nt, split);
        double e = (cpu_seconds() - t) / nt;
        best = e < best ? e : best;
        check += out[0];
    }
    uint64_t bits = 1469598103934665603ull;  /* FNV-1a over the last call's output bits: equal = same bits */
    for (int64_t i = 0; i < B * H * D; i++) {
        union { float f; uint32_t u; } c = {.f = out[i]};
        bits = (bits ^ c.u) * 1099511628211ull;
    }
    printf("attention B %lld keys %lld..%lld (%lld in all) nt %d: %.2f ms per step (30 layers), %.2f GMAC/s, bits %016llx (%g)\n",
           (long long)B, (long long)n0, (long long)n1, (long long)total, nt, best * 1e3,
           2.0 * total * H * D * L / best / 1e9, (unsigned long long)bits, check);
    return 0;
}
