/* int8 matrix-vector product for one decoding step: y = W x, W [out, in] int8 in groups of G
 * consecutive weights of a row, each group with a scale s and optionally a min m:
 *
 *     w = q * s (+ m)   =>   y[o] = sum_g s[o,g] * (x_g . q_g)  (+ sum_g m[o,g] * sum(x_g))
 *
 * quantize.py's layouts: int8 per output channel (G = in, bfloat16 scales), int8 in groups, and the
 * GGUF's own integers (gguf-int8: G = 16 or 32, float16 or float32 scales, float32 mins for Q4_K).
 *
 * Per 16 weights: one sign-extending load to 16 int32 lanes, one conversion to float, one fused
 * multiply-add with x; each group's sum is scaled once. Rows are read 4 at a time (independent
 * sums, x loaded once for the 4) and prefetched PREFETCH_ROWS ahead; OpenMP splits the rows across
 * threads (torch's own runtime, so torch.set_num_threads holds). Everything is float32.
 */
#include "vectors.h"
#ifdef __AVX512F__
#include <immintrin.h>
#endif

typedef int8_t v16c __attribute__((vector_size(16)));
typedef int16_t v16s __attribute__((vector_size(32)));

#define PREFETCH_ROWS 16  /* rows prefetched ahead: for the 270M's 640-wide rows the int4 kernel's distance in bytes */
enum { SCALE_BF16 = 0, SCALE_F16 = 1, SCALE_F32 = 2 };  /* the scales' dtype */

/* 16 int8 weights -> 16 floats: one sign-extending load and one conversion with AVX-512 (GCC 12 turns
 * the generic int8 -> int32 conversion into scalar code; via int16 it stays in vectors elsewhere) */
static inline v16f weights16(const int8_t* p) {
#ifdef __AVX512F__
  return (v16f)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
#else
  v16c c; memcpy(&c, p, sizeof c);
  return __builtin_convertvector(__builtin_convertvector(c, v16s), v16f);
#endif
}

/* a . b over n floats */
static inline float dot(const float* a, const float* b, int64_t n) {
  v16f acc = (v16f){0};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) acc += load16(a + i) * load16(b + i);
  float total = sum16(acc);
  for (; i < n; i++) total += a[i] * b[i];
  return total;
}

/* n scales of any kind -> float32 */
static void scales_to_float(const void* s, int kind, int64_t n, float* out) {
  if (kind == SCALE_F32) { memcpy(out, s, n * sizeof(float)); return; }
  if (kind == SCALE_F16) { const _Float16* h = s; for (int64_t i = 0; i < n; i++) out[i] = (float)h[i]; return; }
  const uint16_t* b = s;
  for (int64_t i = 0; i < n; i++) { uint32_t u = (uint32_t)b[i] << 16; memcpy(&out[i], &u, 4); }
}

/* y[o .. o + R) for R rows; s: their scales as float [R, groups]; G16: the group's 16-weight pieces */
static inline __attribute__((always_inline)) void rows(const float* x, const int8_t* w, const float* s, const float* m,
    const float* xs, float* y, int64_t o, int64_t in, int64_t G, const int64_t G16, const int R) {
  const int64_t groups = in / G, pieces = G16 ? G16 : G / 16;
  v16f acc[4];
  for (int r = 0; r < R; r++) acc[r] = (v16f){0};
  for (int64_t g = 0; g < groups; g++) {
    v16f part[4];
    for (int r = 0; r < R; r++) part[r] = (v16f){0};
    for (int64_t j = 0; j < pieces; j++) {
      const int64_t at = g * G + 16 * j;
      v16f xv = load16(x + at);
      for (int r = 0; r < R; r++) {
        const int8_t* p = w + (o + r) * in + at;
        if ((at & 63) == 0) __builtin_prefetch(p + PREFETCH_ROWS * in);
        part[r] += xv * weights16(p);
      }
    }
    for (int r = 0; r < R; r++) acc[r] += part[r] * s[r * groups + g];
  }
  for (int r = 0; r < R; r++) {
    y[o + r] = m ? sum16(acc[r]) + dot(m + (o + r) * groups, xs, groups) : sum16(acc[r]);
  }
}

static inline __attribute__((always_inline)) void block(const float* x, const int8_t* w, const void* scale, int kind,
    const float* m, const float* xs, float* y, int64_t o, int64_t in, int64_t G, const int R) {
  const int64_t groups = in / G;
  float s[4 * groups];
  const int64_t size = kind == SCALE_F32 ? 4 : 2;
  scales_to_float((const char*)scale + o * groups * size, kind, R * groups, s);
  if (G == 16) rows(x, w, s, m, xs, y, o, in, G, 1, R);
  else if (G == 32) rows(x, w, s, m, xs, y, o, in, G, 2, R);
  else rows(x, w, s, m, xs, y, o, in, G, 0, R);
}

/* y [out] = W x; m may be NULL (no mins), else xs [in / G] holds each group's sum of x.
 * Requires G % 16 == 0 and in % G == 0. */
void int8_matvec(const float* x, const int8_t* w, const void* scale, int kind, const float* m, const float* xs,
                 float* y, int64_t out, int64_t in, int64_t G) {
  const int64_t full = out - out % 4;
  #pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < full; o += 4) block(x, w, scale, kind, m, xs, y, o, in, G, 4);
  for (int64_t o = full; o < out; o++) block(x, w, scale, kind, m, xs, y, o, in, G, 1);
}
