/* What both kernels share: 16-lane vectors (GCC vector extensions: 512-bit registers with AVX-512,
 * two or four narrower ones elsewhere), a load of 16 floats and the sum of a vector's lanes. */
#ifndef GEMMA3_MINIMAL_VECTORS_H
#define GEMMA3_MINIMAL_VECTORS_H
#include <stdint.h>
#include <string.h>

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef uint32_t v16u __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));

static inline v16f load16(const float* p) { v16f v; memcpy(&v, p, sizeof v); return v; }

static inline float sum16(v16f v) {
  v8f a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  v4f b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}
#endif
