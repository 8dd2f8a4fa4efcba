// torch's operators gemma3_minimal::int4_matvec and ::int8_matvec around int4_matvec.c and int8_matvec.c:
// each checks its inputs, allocates its output and calls the kernel.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

extern "C" {
void int4_permute_input(const float* x, float* xp, int64_t in, int64_t G);
void int4_matvec(const float* xp, const uint8_t* w, const uint16_t* scale, float* y, int64_t out, int64_t in, int64_t G);
void int8_matvec(const float* x, const int8_t* w, const void* scale, int kind, const float* m, const float* xs,
                 float* y, int64_t out, int64_t in, int64_t G);
}

// x [in] float32, qweight [out, in / 2] int8 (packed pairs), scale [out, in / group_size] bfloat16 -> [out]
at::Tensor int4_matvec_op(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale, int64_t group_size) {
  TORCH_CHECK(x.device().is_cpu() && qweight.device().is_cpu() && scale.device().is_cpu(), "int4_matvec runs on the CPU");
  TORCH_CHECK(x.dim() == 1 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "int4_matvec: x must be a contiguous float32 vector, got ", x.sizes(), " ", x.scalar_type());
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

// x [in] float32, qweight [out, in] int8, scale [out, in / group_size] (bfloat16, float16 or float32),
// min None or float32 like scale (w = q * scale + min) -> [out]
at::Tensor int8_matvec_op(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                          const std::optional<at::Tensor>& min, int64_t group_size) {
  TORCH_CHECK(x.device().is_cpu() && qweight.device().is_cpu() && scale.device().is_cpu(), "int8_matvec runs on the CPU");
  TORCH_CHECK(x.dim() == 1 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "int8_matvec: x must be a contiguous float32 vector, got ", x.sizes(), " ", x.scalar_type());
  const int64_t in = x.size(0);
  TORCH_CHECK(group_size % 16 == 0 && group_size > 0 && in % group_size == 0,
              "int8_matvec: group size ", group_size, " must be a multiple of 16 dividing ", in);
  TORCH_CHECK(qweight.dim() == 2 && qweight.size(1) == in && qweight.scalar_type() == at::kChar && qweight.is_contiguous(),
              "int8_matvec: qweight must be contiguous int8 [out, ", in, "], got ", qweight.sizes(), " ", qweight.scalar_type());
  const int64_t out = qweight.size(0), groups = in / group_size;
  const auto dtype = scale.scalar_type();
  TORCH_CHECK((dtype == at::kBFloat16 || dtype == at::kHalf || dtype == at::kFloat) && scale.is_contiguous() &&
              scale.dim() == 2 && scale.size(0) == out && scale.size(1) == groups,
              "int8_matvec: scale must be contiguous bfloat16, float16 or float32 [", out, ", ", groups, "], got ", scale.sizes(), " ", dtype);
  const int kind = dtype == at::kBFloat16 ? 0 : dtype == at::kHalf ? 1 : 2;
  const float* m = nullptr;
  at::Tensor xs;
  if (min.has_value()) {
    TORCH_CHECK(min->scalar_type() == at::kFloat && min->is_contiguous() && min->sizes() == scale.sizes() && min->device().is_cpu(),
                "int8_matvec: min must be contiguous float32 [", out, ", ", groups, "], got ", min->sizes(), " ", min->scalar_type());
    m = min->data_ptr<float>();
    xs = at::empty({groups}, x.options());
    const float* xp = x.data_ptr<float>();
    float* sums = xs.data_ptr<float>();
    for (int64_t g = 0; g < groups; g++) {
      float total = 0;
      for (int64_t j = 0; j < group_size; j++) total += xp[g * group_size + j];
      sums[g] = total;
    }
  }
  at::Tensor y = at::empty({out}, x.options());
  int8_matvec(x.data_ptr<float>(), qweight.data_ptr<int8_t>(), scale.data_ptr(), kind, m,
              m ? xs.data_ptr<float>() : nullptr, y.data_ptr<float>(), out, in, group_size);
  return y;
}

TORCH_LIBRARY(gemma3_minimal, m) {
  m.def("int4_matvec(Tensor x, Tensor qweight, Tensor scale, int group_size) -> Tensor");
  m.def("int8_matvec(Tensor x, Tensor qweight, Tensor scale, Tensor? min, int group_size) -> Tensor");
}

TORCH_LIBRARY_IMPL(gemma3_minimal, CPU, m) {
  m.impl("int4_matvec", int4_matvec_op);
  m.impl("int8_matvec", int8_matvec_op);
}
