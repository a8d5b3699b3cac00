/* word2vec / fastText / GloVe training loops (Hogwild threads), called through ctypes from
 * llmlab/embed/kernel.py. One function per concept; the algorithms are those of Mikolov's
 * word2vec.c, Bojanowski et al.'s fastText and Pennington et al.'s glove.c, restated here.
 *
 * Work is split as gensim splits it: jobs of consecutive sentences of up to 10,000 words (cut by
 * the caller), each with its own learning rate (from the corpus position where it starts) and
 * its own random stream (from the seed and its first sentence). Threads (OpenMP) take jobs as
 * they free up and update the shared matrices without locks ("Hogwild", Recht et al. 2011), as
 * the reference implementations and gensim do. So the thread count changes only which jobs run
 * at the same time, and one thread is a pure function of the seed (bit-reproducible).
 *
 * Randomness: splitmix64 per job, seeded by the caller (seed, epoch) and the job's first sentence.
 * Negative sampling draws from an alias table (Walker 1977): O(1) per draw, exact distribution.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define EXP_TABLE_SIZE 1000
#define MAX_EXP 6.0f
#define MAX_NEGATIVE 64          /* more is refused in Python */

typedef struct {
    float *syn0;                 /* input rows: words (and fastText buckets after them) x dim */
    float *syn1;                 /* hierarchical softmax: inner nodes (V-1) x dim, or NULL */
    float *syn1neg;              /* negative sampling: output words V x dim, or NULL */
    int64_t dim;
    const int32_t *ids;          /* the corpus as word ids */
    const int64_t *sent_starts;  /* offsets into ids: sentence s is ids[sent_starts[s]:sent_starts[s+1]] */
    const int64_t *job_starts;   /* njobs+1 sentence indices: job j is sentences job_starts[j]..job_starts[j+1]-1 */
    int64_t njobs;
    const uint32_t *keep;        /* subsampling keep probability * (2^32-1), or NULL */
    const uint32_t *alias_prob;  /* alias table: P(keep column) * 2^32 */
    const int32_t *alias_idx;
    int64_t vocab_size;
    const uint8_t *codes;        /* Huffman codes, V x max_code */
    const int32_t *points;       /* inner-node ids on the path, V x max_code */
    const int32_t *codelens;
    int64_t max_code;
    const int64_t *sub_start;    /* fastText: rows of word w are sub_idx[sub_start[w]:sub_start[w+1]] */
    const int32_t *sub_idx;      /* (the word's own row first); NULL for word2vec */
    int32_t sg, hs, negative, window, cbow_mean, nthreads;
    float alpha, min_alpha;
    int64_t total_words;         /* epochs * corpus words: the learning-rate schedule's length */
    int64_t words_before;        /* corpus words of the epochs already done (epoch * corpus words) */
    uint64_t seed;
    int64_t trained;             /* out: words kept after subsampling */
} W2VArgs;

static inline uint64_t rng_next(uint64_t *s) {  /* splitmix64 (Steele, Lea, Flood 2014) */
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static inline float dot(const float *x, const float *y, int64_t n) {
    float s = 0.0f;
#pragma omp simd reduction(+:s)
    for (int64_t i = 0; i < n; i++) s += x[i] * y[i];
    return s;
}

static inline void axpy(float a, const float *x, float *y, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

/* work += g * row; row += g * h, in one pass over row (read before written, so the same
 * result as the two axpys in sequence; one pass instead of two over a row that is usually
 * out of cache) */
static inline void update_pair(float g, float *row, const float *h, float *work, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float r = row[i];
        work[i] += g * r;
        row[i] = r + g * h[i];
    }
}

static inline int32_t draw_negative(const W2VArgs *a, uint64_t *rng) {
    uint64_t r = rng_next(rng);
    int32_t col = (int32_t)(((r >> 32) * (uint64_t)a->vocab_size) >> 32);
    return ((uint32_t)r < a->alias_prob[col]) ? col : a->alias_idx[col];
}

/* Predict `target` from hidden vector h: hierarchical softmax over the target's Huffman path
 * and/or negative sampling; updates the output rows, accumulates dLoss/dh * alpha into work. */
static void predict(const W2VArgs *a, const float *h, int32_t target, float alpha, float *work,
                    const float *exp_table, uint64_t *rng) {
    const int64_t D = a->dim;
    if (a->hs) {
        const uint8_t *code = a->codes + (int64_t)target * a->max_code;
        const int32_t *point = a->points + (int64_t)target * a->max_code;
        for (int32_t d = 0; d < a->codelens[target]; d++) {
            float *row = a->syn1 + (int64_t)point[d] * D;
            float f = dot(h, row, D);
            if (f <= -MAX_EXP || f >= MAX_EXP) continue;  /* as word2vec.c: saturated, no update */
            f = exp_table[(int)((f + MAX_EXP) * (EXP_TABLE_SIZE / MAX_EXP / 2))];
            float g = (1.0f - code[d] - f) * alpha;
            update_pair(g, row, h, work, D);
        }
    }
    if (a->negative <= 0) return;
    /* draw the negatives first (the same random stream, in the same order) and prefetch their
     * rows: the output rows of random words are the loop's cache misses */
    int32_t targets[MAX_NEGATIVE + 1];
    int32_t nt = a->negative < MAX_NEGATIVE ? a->negative : MAX_NEGATIVE;
    targets[0] = target;
    for (int32_t d = 1; d <= nt; d++) {
        targets[d] = draw_negative(a, rng);
        __builtin_prefetch(a->syn1neg + (int64_t)targets[d] * D);
    }
    for (int32_t d = 0; d <= nt; d++) {
        int32_t t = targets[d];
        float label = 1.0f;
        if (d > 0) {
            if (t == target) continue;
            label = 0.0f;
        }
        float *row = a->syn1neg + (int64_t)t * D;
        float f = dot(h, row, D), s;
        if (f >= MAX_EXP) s = 1.0f;
        else if (f <= -MAX_EXP) s = 0.0f;
        else s = exp_table[(int)((f + MAX_EXP) * (EXP_TABLE_SIZE / MAX_EXP / 2))];
        float g = (label - s) * alpha;
        update_pair(g, row, h, work, D);
    }
}

/* Input rows of word w: one row for word2vec; the word's row plus its n-gram buckets for fastText. */
static inline int64_t input_rows(const W2VArgs *a, int32_t w, const int32_t **rows, int32_t *one) {
    if (!a->sub_idx) { *one = w; *rows = one; return 1; }
    *rows = a->sub_idx + a->sub_start[w];
    return a->sub_start[w + 1] - a->sub_start[w];
}

static void train_sentence(const W2VArgs *a, const int32_t *sen, int64_t n, float alpha, float *h,
                           float *work, const float *exp_table, uint64_t *rng) {
    const int64_t D = a->dim;
    const int32_t *rows; int32_t one;
    for (int64_t i = 0; i < n; i++) {
        int64_t b = a->window > 1 ? (int64_t)(rng_next(rng) % (uint64_t)a->window) : 0;
        int64_t lo = i - a->window + b, hi = i + a->window - b + 1;  /* shrunk window */
        if (lo < 0) lo = 0;
        if (hi > n) hi = n;
        if (a->sg && !a->sub_idx) {  /* word2vec.c: each context word's row predicts the centre word */
            for (int64_t c = lo; c < hi; c++) {
                if (c == i) continue;
                float *in = a->syn0 + (int64_t)sen[c] * D;
                memset(work, 0, D * sizeof(float));
                predict(a, in, sen[i], alpha, work, exp_table, rng);
                axpy(1.0f, work, in, D);
            }
        } else if (a->sg) {
            /* fastText: the mean of the centre word's rows predicts each context word. The mean
             * is formed once per centre word and its rows updated once, with the summed
             * gradient of its contexts (fastText and gensim redo both per pair: ~3x the work) */
            int64_t m = input_rows(a, sen[i], &rows, &one);
            memset(h, 0, D * sizeof(float));
            for (int64_t k = 0; k < m; k++) axpy(1.0f, a->syn0 + (int64_t)rows[k] * D, h, D);
            float inv = 1.0f / (float)m;
            for (int64_t k = 0; k < D; k++) h[k] *= inv;
            memset(work, 0, D * sizeof(float));
            for (int64_t c = lo; c < hi; c++)
                if (c != i) predict(a, h, sen[c], alpha, work, exp_table, rng);
            for (int64_t k = 0; k < m; k++) axpy(1.0f, work, a->syn0 + (int64_t)rows[k] * D, D);
        } else {  /* CBOW: the mean (or sum) of the context's input rows predicts the centre word */
            memset(h, 0, D * sizeof(float));
            int64_t count = 0;
            for (int64_t c = lo; c < hi; c++) {
                if (c == i) continue;
                int64_t m = input_rows(a, sen[c], &rows, &one);
                for (int64_t k = 0; k < m; k++) axpy(1.0f, a->syn0 + (int64_t)rows[k] * D, h, D);
                count += m;
            }
            if (count == 0) continue;
            float inv = 1.0f / (float)count;
            if (a->cbow_mean) for (int64_t k = 0; k < D; k++) h[k] *= inv;
            memset(work, 0, D * sizeof(float));
            predict(a, h, sen[i], alpha, work, exp_table, rng);
            if (!a->cbow_mean) for (int64_t k = 0; k < D; k++) work[k] *= inv;
            for (int64_t c = lo; c < hi; c++) {
                if (c == i) continue;
                int64_t m = input_rows(a, sen[c], &rows, &one);
                for (int64_t k = 0; k < m; k++) axpy(1.0f, work, a->syn0 + (int64_t)rows[k] * D, D);
            }
        }
    }
}

/* The jobs job_starts[0..njobs] of one epoch. Returns 0, or -1 if memory ran out. */
int llmlab_w2v_epoch(W2VArgs *a) {
    float exp_table[EXP_TABLE_SIZE];
    for (int i = 0; i < EXP_TABLE_SIZE; i++) {
        float e = expf((i / (float)EXP_TABLE_SIZE * 2.0f - 1.0f) * MAX_EXP);
        exp_table[i] = e / (e + 1.0f);
    }
    int64_t max_len = 1;
    for (int64_t s = a->job_starts[0]; s < a->job_starts[a->njobs]; s++) {
        int64_t len = a->sent_starts[s + 1] - a->sent_starts[s];
        if (len > max_len) max_len = len;
    }
    int64_t trained = 0;
    int failed = 0, nthreads = a->nthreads > 0 ? a->nthreads : 1;
#pragma omp parallel num_threads(nthreads) reduction(+:trained)
    {
        float *h = malloc(a->dim * sizeof(float)), *work = malloc(a->dim * sizeof(float));
        int32_t *sen = malloc(max_len * sizeof(int32_t));
        int ok = h && work && sen;
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
        /* one job at a time to whichever thread is free: two threads train jobs ~10,000 words
         * apart, as gensim's workers do (not neighbouring sentences of the same document) */
#pragma omp for schedule(dynamic, 1)
        for (int64_t j = 0; j < a->njobs; j++) {
            if (!ok) continue;
            int64_t s0 = a->job_starts[j], s1 = a->job_starts[j + 1];
            uint64_t rng = a->seed ^ (0xD1B54A32D192ED03ULL * (uint64_t)(s0 + 1));
            /* linear decay, fixed per job from the corpus position where it starts (gensim) */
            double progress = (double)(a->words_before + a->sent_starts[s0]) / (double)a->total_words;
            float alpha = a->alpha - (a->alpha - a->min_alpha) * (float)progress;
            if (alpha < a->min_alpha) alpha = a->min_alpha;
            for (int64_t s = s0; s < s1; s++) {
                int64_t n = 0;
                for (int64_t p = a->sent_starts[s]; p < a->sent_starts[s + 1]; p++) {
                    int32_t w = a->ids[p];
                    if (a->keep && a->keep[w] < (uint32_t)(rng_next(&rng) >> 32)) continue;
                    sen[n++] = w;
                }
                trained += n;
                train_sentence(a, sen, n, alpha, h, work, exp_table, &rng);
            }
        }
        free(h); free(work); free(sen);
    }
    a->trained = trained;
    return failed ? -1 : 0;
}

/* fastText's FNV-1a variant over the UTF-8 bytes, each byte sign-extended (fastText casts
 * through int8_t), as in fastText's Dictionary::hash. */
uint32_t llmlab_ft_hash(const uint8_t *s, int64_t n) {
    uint32_t h = 2166136261u;
    for (int64_t i = 0; i < n; i++) {
        h ^= (uint32_t)(int32_t)(int8_t)s[i];
        h *= 16777619u;
    }
    return h;
}

/* Bucket ids of the character n-grams of `word` (UTF-8, already wrapped in '<' '>'): n counted
 * in characters, min_n..max_n, as fastText's Dictionary::computeSubwords. Returns the count;
 * writes at most cap ids. */
int64_t llmlab_ft_ngrams(const uint8_t *w, int64_t nbytes, int32_t min_n, int32_t max_n,
                         uint32_t bucket, uint32_t *out, int64_t cap) {
    int64_t count = 0;
    for (int64_t i = 0; i < nbytes; i++) {
        if ((w[i] & 0xC0) == 0x80) continue;
        int64_t j = i;
        for (int32_t n = 1; j < nbytes && n <= max_n; n++) {
            j++;
            while (j < nbytes && (w[j] & 0xC0) == 0x80) j++;
            if (n >= min_n && !(n == 1 && (i == 0 || j == nbytes))) {
                if (count < cap) out[count] = llmlab_ft_hash(w + i, j - i) % bucket;
                count++;
            }
        }
    }
    return count;
}

/* One GloVe AdaGrad epoch over the co-occurrence entries in `order` (Pennington et al. 2014):
 * J = 1/2 sum f(X_ij) (w_i.c_j + b_i + c_j - log X_ij)^2. W and C hold [vector | bias] rows of
 * dim+1; GW, GC the running sums of squared lr-scaled gradients (initialised to 1), as glove.c.
 * Returns J over the epoch. */
double llmlab_glove_epoch(float *W, float *C, float *GW, float *GC, const int32_t *rows,
                          const int32_t *cols, const float *logx, const float *fx,
                          const int64_t *order, int64_t nnz, int64_t dim, float lr, int32_t nthreads) {
    double loss = 0.0;
    const int64_t R = dim + 1;
#pragma omp parallel for num_threads(nthreads > 0 ? nthreads : 1) schedule(static) reduction(+:loss)
    for (int64_t e = 0; e < nnz; e++) {
        int64_t k = order[e];
        float *w = W + (int64_t)rows[k] * R, *c = C + (int64_t)cols[k] * R;
        float *gw = GW + (int64_t)rows[k] * R, *gc = GC + (int64_t)cols[k] * R;
        float diff = dot(w, c, dim) + w[dim] + c[dim] - logx[k];
        float fdiff = fx[k] * diff;
        if (!isfinite(fdiff)) continue;
        loss += 0.5 * (double)fdiff * diff;
        fdiff *= lr;  /* glove.c: the squared-gradient sums accumulate the lr-scaled gradient */
        for (int64_t d = 0; d < dim; d++) {
            float g1 = fdiff * c[d], g2 = fdiff * w[d];
            w[d] -= g1 / sqrtf(gw[d]);
            c[d] -= g2 / sqrtf(gc[d]);
            gw[d] += g1 * g1;
            gc[d] += g2 * g2;
        }
        w[dim] -= fdiff / sqrtf(gw[dim]);
        c[dim] -= fdiff / sqrtf(gc[dim]);
        gw[dim] += fdiff * fdiff;
        gc[dim] += fdiff * fdiff;
    }
    return loss;
}

/* x[i] = (uniform[0,1) - 0.5) * scale for i < n, threaded (fastText's 2M-bucket matrix is 200M floats). */
void llmlab_uniform_init(float *x, int64_t n, uint64_t seed, float scale, int32_t nthreads) {
#pragma omp parallel for num_threads(nthreads > 0 ? nthreads : 1) schedule(static)
    for (int64_t b = 0; b < (n + 65535) / 65536; b++) {
        uint64_t rng = seed ^ (0x9E3779B97F4A7C15ULL * (uint64_t)(b + 1));
        int64_t end = (b + 1) * 65536 < n ? (b + 1) * 65536 : n;
        for (int64_t i = b * 65536; i < end; i++)
            x[i] = ((float)(rng_next(&rng) >> 40) * (1.0f / 16777216.0f) - 0.5f) * scale;
    }
}
