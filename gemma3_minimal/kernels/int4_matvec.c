/* int4 matrix-vector product for one decoding step: y = W x, W [out, in] in packed int4 groups.
 *
 * The layout is quantize.py's: each row is groups of G weights with one bfloat16 scale; in a group,
 * byte j holds element j in its low nibble and element j + G/2 in its high one, both signed 4-bit.
 *
 * A decode step is memory-bound, so the kernel's job is to turn nibbles into float products no
 * slower than the memory delivers them (about 30 GB/s here). It reads a row 64 bytes (128 weights)
 * at a time as 16 lanes of 32 bits. Lane i then holds 8 nibbles; for nibble k, one shift brings it
 * to the lane's low bits and one permute (vpermps) turns those 4 bits into the float value from a
 * 16-entry table. x is permuted once per call into the same order (lane i, nibble k -> its input),
 * so each product is one fused multiply-add: 2 vector instructions per 16 weights, against about
 * 6 for mask, shift, widen, convert, subtract and multiply. A lane's 8 nibbles lie in one group,
 * so one vector of scales multiplies the 8 products' sum.
 *
 * Rows are read 4 at a time (4 independent sums), prefetched PREFETCH_ROWS ahead; OpenMP splits
 * the rows across threads (torch's own OpenMP runtime, so torch.set_num_threads holds).
 * Products are float32: each is x * n (n a small integer), summed in float32, then scaled.
 */
#include "vectors.h"

typedef uint16_t v32h __attribute__((vector_size(64)));
typedef uint64_t v8q __attribute__((vector_size(64)));

#define CHUNK 64          /* bytes of a row read at once: 128 weights, 16 lanes of 8 nibbles */
#define PREFETCH_ROWS 32  /* how far ahead rows are prefetched (a prefetch never faults) */

/* the 4-bit two's complement nibble in the low 4 bits of each lane -> its value as a float. With AVX-512
 * one table lookup (vpermps reads only those 4 bits of each index). Without it GCC would build the
 * 16-entry lookup from scalar code (30x slower, measured with -march=x86-64-v3), so there the nibble
 * is masked, re-signed and converted instead: four instructions on 8-lane registers. */
#ifdef __AVX512F__
static const v16f NIBBLE = {0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1};
static inline v16f nibbles(v16u lanes) { return __builtin_shuffle(NIBBLE, (v16i)lanes); }
#else
static inline v16f nibbles(v16u lanes) { return __builtin_convertvector((v16i)((lanes & 15) ^ 8) - 8, v16f); }
#endif

/* x [in] in the kernel's order: chunk c, nibble k, lane i -> xp[(c * 8 + k) * 16 + i] */
void int4_permute_input(const float* x, float* xp, int64_t in, int64_t G) {
  const int64_t half = G / 2;
  for (int64_t c = 0; c < in / 128; c++)
    for (int k = 0; k < 8; k++)
      for (int i = 0; i < 16; i++) {
        int64_t byte = CHUNK * c + 4 * i + k / 2, g = byte / half, j = byte % half;
        xp[(c * 8 + k) * 16 + i] = x[g * G + j + (k & 1 ? half : 0)];
      }
}

/* the scales of one chunk's groups (npc groups per chunk: 4, 2 or 1) as 16 lanes, lane i in group i / (16 / npc):
 * bfloat16 -> float32 is the 16 bits moved to the top of 32, done by one word permute with zeros */
static inline __attribute__((always_inline)) v16f chunk_scales(const uint16_t* s, const int npc) {
#ifndef __AVX512BW__  /* no word permute across 64 bytes: each scale widened, then spread over its lanes */
  float f[4];
  for (int g = 0; g < npc; g++) { uint32_t b = (uint32_t)s[g] << 16; memcpy(&f[g], &b, 4); }
  v16f v;
  for (int i = 0; i < 16; i++) v[i] = f[i / (16 / npc)];
  return v;
#else
  v32h h;
  if (npc == 4) { uint64_t b; memcpy(&b, s, 8); h = (v32h)((v8q){0} + b); }
  else if (npc == 2) { uint32_t b; memcpy(&b, s, 4); h = (v32h)((v16u){0} + b); }
  else { h = (v32h){0} + s[0]; }
  v32h m;
  for (int i = 0; i < 16; i++) { m[2 * i] = 32; m[2 * i + 1] = i / (16 / npc); }  /* 32: a zero word */
  return (v16f)__builtin_shuffle(h, (v32h){0}, m);
#endif
}

/* y[o .. o + R) for R rows */
static inline __attribute__((always_inline)) void rows(const float* xp, const uint8_t* w, const uint16_t* scale,
    float* y, int64_t o, int64_t in, int64_t G, const int npc, const int R) {
  const int64_t groups = in / G, row_bytes = in / 2, chunks = in / 128, chunks_per_group = G <= 128 ? 1 : G / 128;
  v16f acc[4];
  for (int r = 0; r < R; r++) acc[r] = (v16f){0};
  for (int64_t c = 0; c < chunks; c++) {
    v16u q[4];
    v16f even[4], odd[4];  /* two partial sums per row: shorter chains of dependent additions */
    for (int r = 0; r < R; r++) {
      const uint8_t* p = w + (o + r) * row_bytes + CHUNK * c;
      __builtin_prefetch(p + PREFETCH_ROWS * row_bytes);
      memcpy(&q[r], p, CHUNK);
      even[r] = odd[r] = (v16f){0};
    }
    const float* xc = xp + c * 128;
    for (int k = 0; k < 8; k += 2) {
      v16f x0 = load16(xc + 16 * k), x1 = load16(xc + 16 * k + 16);
      for (int r = 0; r < R; r++) {
        even[r] += x0 * nibbles(q[r] >> (4 * k));
        odd[r] += x1 * nibbles(q[r] >> (4 * k + 4));
      }
    }
    for (int r = 0; r < R; r++) {
      const uint16_t* s = scale + (o + r) * groups + (npc > 1 ? c * npc : c / chunks_per_group);
      acc[r] += (even[r] + odd[r]) * chunk_scales(s, npc);
    }
  }
  for (int r = 0; r < R; r++) y[o + r] = sum16(acc[r]);
}

/* rows() with npc as a constant, so each case compiles to its own loop */
static inline __attribute__((always_inline)) void rows_any(const float* xp, const uint8_t* w, const uint16_t* scale,
    float* y, int64_t o, int64_t in, int64_t G, const int R) {
  if (G == 32) rows(xp, w, scale, y, o, in, G, 4, R);
  else if (G == 64) rows(xp, w, scale, y, o, in, G, 2, R);
  else rows(xp, w, scale, y, o, in, G, 1, R);
}

/* y [out] = W x for xp = int4_permute_input(x); requires in % 128 == 0 and G in {32, 64} or G % 128 == 0 */
void int4_matvec(const float* xp, const uint8_t* w, const uint16_t* scale, float* y, int64_t out, int64_t in, int64_t G) {
  const int64_t full = out - out % 4;
  #pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < full; o += 4) rows_any(xp, w, scale, y, o, in, G, 4);
  for (int64_t o = full; o < out; o++) rows_any(xp, w, scale, y, o, in, G, 1);
}
