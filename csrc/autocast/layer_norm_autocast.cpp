// Autocast: torch.nn.functional.layer_norm is on autocast's float32 list, so
// under torch.autocast it computes and returns float32. fastlayernorm gives
// the same output dtype; half/bfloat16 input with float32 parameters takes
// the path that does not widen the input first (upcast_ops.cpp).
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include "../ops.h"

namespace fastlayernorm {
namespace {

template <c10::DeviceType device, c10::DispatchKey autocast_key>
Tensor layer_norm_autocast(const Tensor& input,
                           c10::SymIntArrayRef normalized_shape,
                           const std::optional<Tensor>& weight,
                           const std::optional<Tensor>& bias, double eps,
                           bool memory_efficient) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  // Half/bfloat16 input with float32 (or no) weight and bias: the kernels
  // read the input as it is and write float32 (upcast_ops.cpp), no cast pass.
  if (is_half_or_bfloat16(input.scalar_type()) && !memory_efficient &&
      input.device().type() == device && is_float32_or_absent(weight) &&
      is_float32_or_absent(bias)) {
    return ops::layer_norm_upcast(input, normalized_shape, weight, bias, eps);
  }
  return ops::layer_norm(at::autocast::cached_cast(at::kFloat, input, device),
                         normalized_shape,
                         at::autocast::cached_cast(at::kFloat, weight, device),
                         at::autocast::cached_cast(at::kFloat, bias, device),
                         eps, memory_efficient);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlayernorm, AutocastCUDA, m) {
  m.impl("layer_norm",
         &layer_norm_autocast<c10::DeviceType::CUDA,
                              c10::DispatchKey::AutocastCUDA>);
}

// CPU autocast leaves layer_norm alone (it is on none of its lists), so no
// AutocastCPU kernel: the op then runs on its inputs' dtypes, as ATen's does.

}  // namespace fastlayernorm
