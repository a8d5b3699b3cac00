/* llama.cpp's CPU block products on SmolLM2-135M's shapes, timed like benchmarks/matvec_shapes.c
 * (process CPU time, so the figures hold under load; best of 7 passes, each over 30 copies of a
 * layer's weights = 68 MB, from DRAM as in decode), to set our kernel's per-matrix speed beside
 * llama.cpp's without building llama.cpp (its ~14-minute build). The GGUF's own formats: Q4_1
 * layers against a Q8_1-rounded input, the tied Q8_0 embedding as LM head against Q8_0, one
 * `ggml_vec_dot_*` call per weight row after one `quantize_row_*` of the input: what ggml-cpu's
 * mul_mat does for one input row on x86 (nrc = 1 there). No ggml code is in this repository: the
 * harness links ggml's own x86 file from a checkout of github.com/ggml-org/ggml (or llama.cpp's
 * ggml/ directory) at $GGML:
 *   S=$GGML/src; cc -O3 -march=native -c -I$S/ggml-cpu -I$S -I$GGML/include \
 *      $S/ggml-cpu/arch/x86/quants.c -o /tmp/ggml_q.o
 *   cc -O3 -march=native -fopenmp -o /tmp/lmv benchmarks/llamacpp_matvec.c /tmp/ggml_q.o -lm
 *   /tmp/lmv [MX [NT]]   (MX input rows, default 1: MX calls per weight row, as ggml's vec_dot path;
 *                         NT threads split the weight rows in contiguous chunks, as ggml's threads do;
 *                         the time is process CPU time / NT, like matvec_shapes.c: wall on a quiet machine)
 * Session 11 used ggml d99724f (2026-08-21). Columns: time per product, GB/s of the GGUF's bytes
 * (Q4_1 0.625 B/weight, Q8_0 1.0625; ours reads its repacked 0.75 / 1.125), GMAC/s. */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "smollm2_shapes.h"

/* the symbols ggml's x86 quants.c needs from the rest of ggml (tables and one reference
 * quantizer the benchmarked functions do not call) */
float ggml_table_f32_f16[1 << 16];
float ggml_table_f32_e8m0_half[1 << 8];
float ggml_table_f32_ue4m3[1 << 8];
void quantize_row_q8_K_ref(const float *x, void *y, int64_t k) { (void)x, (void)y, (void)k; abort(); }

void quantize_row_q8_0(const float *x, void *y, int64_t k);
void quantize_row_q8_1(const float *x, void *y, int64_t k);
void ggml_vec_dot_q4_1_q8_1(int n, float *s, size_t bs, const void *vx, size_t bx, const void *vy, size_t by, int nrc);
void ggml_vec_dot_q8_0_q8_0(int n, float *s, size_t bs, const void *vx, size_t bx, const void *vy, size_t by, int nrc);

static uint16_t half(float f) { return (uint16_t)_cvtss_sh(f, 0); }

int main(int argc, char **argv) {
    int mx = argc > 1 ? atoi(argv[1]) : 1, nt = argc > 2 ? atoi(argv[2]) : 1;
    for (int i = 0; i < 1 << 16; i++) ggml_table_f32_f16[i] = _cvtsh_ss((unsigned short)i);
    const Shape *S = SHAPES;
    for (int s = 0; s < 5; s++) {
        int fmt = S[s].fmt, C = S[s].copies;
        int64_t rows = S[s].rows, k = S[s].k, nb = k / 32;
        size_t bsz = fmt == 4 ? 20 : 34, ysz = fmt == 4 ? 36 : 34, rb = (size_t)nb * bsz;
        uint8_t **w = malloc(C * sizeof(void *));
        for (int c = 0; c < C; c++) {
            w[c] = malloc(rows * rb);
            for (size_t i = 0; i < rows * rb; i++) w[c][i] = (uint8_t)rand();
            for (int64_t b = 0; b < rows * nb; b++) { /* valid scales (random bytes could be NaN/inf) */
                uint16_t *h = (uint16_t *)(w[c] + b * bsz);
                h[0] = half((rand() % 100) / 1e4f);
                if (fmt == 4) h[1] = half(-(rand() % 100) / 1e3f);
            }
        }
        float *x = malloc(mx * k * 4), *y = malloc(mx * rows * 4);
        uint8_t *xq = malloc(mx * nb * ysz);
        for (int64_t i = 0; i < mx * k; i++) x[i] = (rand() % 2000 - 1000) / 500.f;
        double best = 1e9;
        for (int r = 0; r < 7; r++) {
            double t = cpu_seconds();
            for (int c = 0; c < C; c++)
                for (int i = 0; i < mx; i++) {
                    uint8_t *xi = xq + i * nb * ysz;
                    if (fmt == 4) quantize_row_q8_1(x + i * k, xi, k);
                    else quantize_row_q8_0(x + i * k, xi, k);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
                    for (int64_t row = 0; row < rows; row++) {
                        if (fmt == 4) ggml_vec_dot_q4_1_q8_1((int)k, y + i * rows + row, 0, w[c] + row * rb, 0, xi, 0, 1);
                        else ggml_vec_dot_q8_0_q8_0((int)k, y + i * rows + row, 0, w[c] + row * rb, 0, xi, 0, 1);
                    }
                }
            double e = (cpu_seconds() - t) / C / nt;
            best = e < best ? e : best;
        }
        printf("%-8s %6lld x %4lld  mx %2d nt %d  %8.1f us  %5.1f GB/s  %5.1f GMAC/s  (%g)\n", S[s].name, (long long)rows,
               (long long)k, mx, nt, best * 1e6, rows * rb / best / 1e9, (double)rows * k * mx / best / 1e9, (double)y[0]);
        for (int c = 0; c < C; c++) free(w[c]);
        free(w), free(x), free(y), free(xq);
    }
    return 0;
}
