/* How fast this CPU reads the sweep's rows by hand, as a check on benchmarks/floor.py.

   The probe sweep reads, every step, each seed's minibatch rows of one layer:
   rows of D float16 values (3 KB at D = 1,536) at random among N rows of an
   example-major [N, L, D] array. floor.py times jitted gathers of exactly those
   rows; this program reads the same pattern with hand-written C, converting,
   standardising and dropping out each value as the sweep's fused kernel does,
   so that a slow XLA gather cannot pass for the machine's limit.

     gcc -O3 -march=native benchmarks/row_reads.c -o /tmp/row_reads
     /tmp/row_reads 4 1 0     # 4 rows read at once, 2 MB pages, no prefetch
     taskset -c 0 /tmp/row_reads 4 1 0 & taskset -c 1 /tmp/row_reads 4 1 0; wait

   Arguments: rows read at once (1-16, interleaved 8 values at a time), 1 to
   ask for transparent huge pages (as probing.probes.devices places features),
   and 1 to prefetch the next rows while reading these. Prints the mean and
   best time of a part (5 seeds x 32 rows, one layer) over 2,000 parts of
   random rows and the read rate. Needs x86-64 with AVX2 and F16C; runs in
   about 30 s. The development VM (both cores busy, 2 MB pages) gave
   2.8-2.9 GB/s per core one row at a time, 4.4-5.4 GB/s reading 4 or 8 rows
   at once, 3.9 GB/s with prefetching, 4.0-4.1 GB/s on 4 KB pages: below the
   7-8.7 GB/s per core of a plain stream (floor.py's "stream"). */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#define N 40000
#define L 15 /* one device's share of 29 layers, plus padding */
#define D 1536
#define ROWS 160 /* 5 seeds x 32 rows: one part of a 256-row minibatch */
#define PARTS 2000

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

/* (x - mean) * inverse * scale where kept, else 0: the sweep's standardise + dropout. */
static void one(const uint16_t *src, const float *mean, const float *inverse,
                const uint8_t *keep, __m256 scale, float *dst, int d) {
  __m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + d)));
  v = _mm256_mul_ps(_mm256_sub_ps(v, _mm256_loadu_ps(mean + d)), _mm256_loadu_ps(inverse + d));
  v = _mm256_mul_ps(v, scale);
  __m256i k = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(keep + d)));
  __m256 kept = _mm256_castsi256_ps(_mm256_cmpgt_epi32(k, _mm256_setzero_si256()));
  _mm256_storeu_ps(dst + d, _mm256_and_ps(v, kept));
}

static void part(const uint16_t *x, const int *rows, int layer, const float *mean,
                 const float *inverse, const uint8_t *keep, float *out, int at_once,
                 int prefetch) {
  __m256 scale = _mm256_set1_ps(1.0f / 0.9f);
  for (int r0 = 0; r0 < ROWS; r0 += at_once) {
    const uint16_t *src[16];
    for (int g = 0; g < at_once; g++) src[g] = x + ((size_t)rows[r0 + g] * L + layer) * D;
    for (int g = 0; prefetch && g < at_once && r0 + at_once + g < ROWS; g++) {
      const char *next = (const char *)(x + ((size_t)rows[r0 + at_once + g] * L + layer) * D);
      for (int offset = 0; offset < D * 2; offset += 64) _mm_prefetch(next + offset, _MM_HINT_T0);
    }
    for (int d = 0; d < D; d += 8)
      for (int g = 0; g < at_once; g++)
        one(src[g], mean, inverse, keep + (size_t)(r0 + g) * D, scale,
            out + (size_t)(r0 + g) * D, d);
  }
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s ROWS_AT_ONCE(1-16, dividing 160) HUGE_PAGES(0/1) PREFETCH(0/1)\n",
            argv[0]);
    return 2;
  }
  int at_once = atoi(argv[1]), huge = atoi(argv[2]), prefetch = atoi(argv[3]);
  if (at_once < 1 || at_once > 16 || ROWS % at_once) {
    fprintf(stderr, "rows at once: 1-16, dividing %d\n", ROWS);
    return 2;
  }
  size_t page = 2 << 20, bytes = ((size_t)N * L * D * 2 + page - 1) / page * page;
  uint16_t *x = aligned_alloc(page, bytes);
  if (huge) madvise(x, bytes, MADV_HUGEPAGE);
  for (size_t i = 0; i < (size_t)N * L * D; i++) x[i] = 0x3c00 + (i & 255); /* 1.0 + ... */
  static float mean[D], inverse[D];
  for (int d = 0; d < D; d++) mean[d] = 0.1f, inverse[d] = 1.2f;
  uint8_t *keep = malloc(ROWS * D);
  for (int i = 0; i < ROWS * D; i++) keep[i] = (i * 7) % 10 != 0;
  float *out = aligned_alloc(64, ROWS * D * 4);
  int rows[ROWS];
  srand(1);
  double best = 1e9, total = 0;
  for (int p = 0; p < PARTS; p++) {
    for (int r = 0; r < ROWS; r++) rows[r] = ((unsigned)rand() * 2654435761u) % N;
    double start = now();
    part(x, rows, p % L, mean, inverse, keep, out, at_once, prefetch);
    double seconds = now() - start;
    total += seconds;
    best = seconds < best ? seconds : best;
  }
  printf("%d rows at once, huge pages %d, prefetch %d: mean %.1f us, best %.1f us per part, "
         "%.2f GB/s\n", at_once, huge, prefetch, total / PARTS * 1e6, best * 1e6,
         ROWS * D * 2 / (total / PARTS) / 1e9);
  return out[5] > 1e30f; /* keeps the work */
}
