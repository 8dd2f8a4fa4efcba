// torch's operator gemma3_minimal::int4_matvec around int4_matvec.c: checks its inputs, allocates, calls.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

extern "C" {
void int4_permute_input(const float* x, float* xp, int64_t in, int64_t G);
void int4_matvec(const float* xp, const uint8_t* w, const uint16_t* scale, float* y, int64_t out, int64_t in, int64_t G);
}

// x [in] float32, qweight [out, in / 2] int8 (packed pairs), scale [out, in / group_size] bfloat16 -> [out]
at::Tensor int4_matvec_op(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale, int64_t group_size) {
  TORCH_CHECK(x.device().is_cpu() && qweight.device().is_cpu() && scale.device().is_cpu(), "int4_matvec runs on the CPU");
  TORCH_CHECK(x.dim() == 1 && x.scalar_type() == at::kFloat && x.is_contiguous(), "int4_matvec: x must be a contiguous float32 vector, got ", x.sizes(), " ", x.scalar_type());
  const int64_t in = x.size(0);
  TORCH_CHECK(in % 128 == 0, "int4_matvec: the input width ", in, " must be a multiple of 128");
  TORCH_CHECK(group_size == 32 || group_size == 64 || (group_size % 128 == 0 && in % group_size == 0),
              "int4_matvec: group size ", group_size, " must be 32, 64 or a multiple of 128 dividing ", in);
  TORCH_CHECK(qweight.dim() == 2 && qweight.size(1) * 2 == in && qweight.element_size() == 1 && qweight.is_contiguous(),
              "int4_matvec: qweight must be contiguous packed int4 [out, ", in / 2, "], got ", qweight.sizes());
  const int64_t out = qweight.size(0);
  TORCH_CHECK(scale.scalar_type() == at::kBFloat16 && scale.is_contiguous() && scale.dim() == 2 && scale.size(0) == out &&
              scale.size(1) == in / group_size,
              "int4_matvec: scale must be contiguous bfloat16 [", out, ", ", in / group_size, "], got ", scale.sizes(), " ", scale.scalar_type());
  at::Tensor xp = at::empty({in}, x.options());
  at::Tensor y = at::empty({out}, x.options());
  int4_permute_input(x.data_ptr<float>(), xp.data_ptr<float>(), in, group_size);
  int4_matvec(xp.data_ptr<float>(), static_cast<const uint8_t*>(qweight.data_ptr()),
              static_cast<const uint16_t*>(scale.data_ptr()), y.data_ptr<float>(), out, in, group_size);
  return y;
}

TORCH_LIBRARY(gemma3_minimal, m) {
  m.def("int4_matvec(Tensor x, Tensor qweight, Tensor scale, int group_size) -> Tensor");
}

TORCH_LIBRARY_IMPL(gemma3_minimal, CPU, m) {
  m.impl("int4_matvec", int4_matvec_op);
}
