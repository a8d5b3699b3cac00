/* Per-shape speed of the block products on SmolLM2-135M's shapes (docs/infer.md, session 8):
 * GB/s of weight bytes (repacked blocks: Q4_1 0.75 B/weight, Q8_0 1.125) and GMAC/s, for mx input
 * rows at nt threads. Process CPU time, so the figures hold under load (they do not see time the
 * process waited for a core); best of 7 passes, each over `copies` weights (30 = one per layer,
 * 68 MB: the weights come from DRAM, as in decode). Random blocks; the speed does not depend on them.
 *   cc -O3 -march=native -fopenmp -o /tmp/mv benchmarks/matvec_shapes.c -lm && /tmp/mv MX NT
 * (MX 0: one core's plain read loop over 256 MB instead, the reference for the GB/s)
 * -DEXACT: the exact fp32 path (ggml_matmul.c) instead of int8 activations (ggml_i8.c). */
#ifdef EXACT
#include "../llmlab/kernels/ggml_matmul.c"
#define PRODUCT llmlab_ggml_matmul
#else
#include "../llmlab/kernels/ggml_i8.c"
#define PRODUCT llmlab_i8_matmul
#endif
#include <stdio.h>
#include "smollm2_shapes.h"

/* One core's plain read speed (the products' reference): sum 256 MB of floats, 8 accumulators. */
static void read_loop(void) {
    size_t n = (size_t)64 << 20;
    float *a = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) a[i] = (float)(i & 7);
    double best = 1e9;
    float keep = 0.f;
    for (int r = 0; r < 5; r++) {
        float s[8] = {0};
        double t = cpu_seconds();
        for (size_t i = 0; i < n; i += 8)
            for (int j = 0; j < 8; j++) s[j] += a[i + j];
        double e = cpu_seconds() - t;
        best = e < best ? e : best;
        keep += s[0] + s[7];
    }
    printf("read loop  %zu MB  %5.1f GB/s  (%g)\n", n * 4 >> 20, n * 4 / best / 1e9, (double)keep);
    free(a);
}

int main(int argc, char **argv) {
    int mx = argc > 1 ? atoi(argv[1]) : 1, nt = argc > 2 ? atoi(argv[2]) : 1;
    if (mx == 0) { read_loop(); return 0; }
    const Shape *S = SHAPES;
    for (int s = 0; s < 5; s++) {
        int fmt = S[s].fmt, C = S[s].copies;
        int64_t rows = S[s].rows, k = S[s].k, nb = k / 32;
        size_t qb = (size_t)(rows * nb * (fmt == 4 ? 16 : 32));
        uint8_t **qs = malloc(C * sizeof(void *));
        float **d = malloc(C * sizeof(void *)), **m = malloc(C * sizeof(void *));
        for (int c = 0; c < C; c++) {
            qs[c] = malloc(qb), d[c] = malloc(rows * nb * 4), m[c] = malloc(rows * nb * 4);
            for (size_t i = 0; i < qb; i++) qs[c][i] = (uint8_t)rand();
            for (int64_t i = 0; i < rows * nb; i++) d[c][i] = (rand() % 100) / 1e4f, m[c][i] = -(rand() % 100) / 1e3f;
        }
        float *x = malloc(mx * k * 4), *y = malloc(mx * rows * 4);
        for (int64_t i = 0; i < mx * k; i++) x[i] = (rand() % 2000 - 1000) / 500.f;
        double best = 1e9;
        for (int r = 0; r < 7; r++) {
            double t = cpu_seconds();
            for (int c = 0; c < C; c++) PRODUCT(fmt, qs[c], d[c], fmt == 4 ? m[c] : NULL, rows, k, x, mx, y, nt);
            double e = (cpu_seconds() - t) / C / nt;
            best = e < best ? e : best;
        }
        double bytes = (double)qb + rows * nb * 4 * (fmt == 4 ? 2 : 1);
        printf("%-8s %6lld x %4lld  mx %2d nt %d  %8.1f us  %5.1f GB/s  %5.1f GMAC/s\n", S[s].name, (long long)rows,
               (long long)k, mx, nt, best * 1e6, bytes / best / 1e9, (double)rows * k * mx / best / 1e9);
        for (int c = 0; c < C; c++) free(qs[c]), free(d[c]), free(m[c]);
        free(qs), free(d), free(m), free(x), free(y);
    }
    return 0;
}
