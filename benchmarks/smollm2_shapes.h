/* SmolLM2-135M's products for the C timing harnesses (matvec_shapes.c: ours; llamacpp_matvec.c:
 * llama.cpp's), and their clock. fmt 4: a Q4_1 layer weight, 30 copies (one per layer, 68 MB: the
 * weights come from DRAM, as in decode); fmt 8: the tied Q8_0 embedding as LM head, one copy. */
#include <stdint.h>
#include <time.h>

typedef struct { int fmt; int64_t rows, k; int copies; const char *name; } Shape;
static const Shape SHAPES[5] = {
    {4, 960, 576, 30, "q/k/v"}, {4, 576, 576, 30, "o"}, {4, 3072, 576, 30, "gate/up"},
    {4, 576, 1536, 30, "down"}, {8, 49152, 576, 1, "LM head"}};

/* process CPU time: holds under load (it does not count the wait for a core) */
static double cpu_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
