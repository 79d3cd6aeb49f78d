// Autocast's float32 path without a cast pass over the input: under
// torch.autocast F.layer_norm widens half/bfloat16 input to float32 and
// returns float32. _layer_norm_upcast gives the same dtype and values, but the
// CUDA kernels read the input in its own dtype and write float32 directly
// (cuda/layer_norm_cuda.cu); the backward takes the float32 gradient and
// returns grad_input in the input's dtype, as the cast's backward would.
//
// Here: the argument checks and the composite kernels (every other backend:
// widen the input, then the float32 operators); the C++ autograd of
// _layer_norm_upcast is in autograd/layer_norm_autograd.cpp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../ops.h"
#include "upcast_ops.h"

namespace fastlayernorm {

void check_upcast_args(const Tensor& input, const std::optional<Tensor>& weight,
                       const std::optional<Tensor>& bias) {
  TORCH_CHECK(is_half_or_bfloat16(input.scalar_type()),
              "fastlayernorm: the float32-output path expects float16 or bfloat16 input, "
              "but got input of dtype ", input.scalar_type());
  for (const auto& [name, t] : {std::pair{"weight", &weight}, std::pair{"bias", &bias}}) {
    TORCH_CHECK(is_float32_or_absent(*t),
                "fastlayernorm: the float32-output path expects a float32 ", name,
                " (or none), but got ", name, " of dtype ", (*t)->scalar_type());
  }
}

TensorPair layer_norm_fwd_upcast_composite(const Tensor& input,
                                           c10::SymIntArrayRef normalized_shape,
                                           const std::optional<Tensor>& weight,
                                           const std::optional<Tensor>& bias, double eps) {
  check_upcast_args(input, weight, bias);
  return ops::layer_norm_fwd_pairs(input.to(at::kFloat), normalized_shape, weight, bias, eps);
}

TensorTriple layer_norm_bwd_upcast_composite(const Tensor& grad_out, const Tensor& input,
                                             c10::SymIntArrayRef normalized_shape,
                                             const Tensor& mean, const Tensor& rstd,
                                             const std::optional<Tensor>& weight,
                                             const std::optional<Tensor>& bias,
                                             std::array<bool, 3> output_mask) {
  check_upcast_args(input, weight, bias);
  auto [dx, dw, db] = ops::layer_norm_bwd(grad_out, input.to(at::kFloat), normalized_shape,
                                          mean, rstd, weight, bias, output_mask);
  if (dx.defined()) dx = dx.to(input.scalar_type());
  return {dx, dw, db};
}

TORCH_LIBRARY_IMPL(fastlayernorm, CompositeExplicitAutograd, m) {
  m.impl("_layer_norm_fwd_upcast", &layer_norm_fwd_upcast_composite);
  m.impl("_layer_norm_bwd_upcast", &layer_norm_bwd_upcast_composite);
}

}  // namespace fastlayernorm
