// Autocast: torch.nn.functional.layer_norm is on autocast's float32 list, so
// under torch.autocast it computes and returns float32. fastlayernorm gives
// the same output dtype.
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
