// The operator implementations of a backend (CPU, CUDA) are the shared
// bodies run_forward / run_backward with that backend's kernels plugged in.
#pragma once

#include <torch/library.h>

#include "layer_norm.h"

namespace fastlayernorm {

template <ForwardKernel kForward>
TensorTriple layer_norm_fwd_impl(const Tensor& input, c10::SymIntArrayRef normalized_shape,
                                 const std::optional<Tensor>& weight,
                                 const std::optional<Tensor>& bias, double eps) {
  return with_separate_stats(run_forward(input, normalized_shape, weight, bias, eps, kForward));
}

template <ForwardKernel kForward>
TensorPair layer_norm_fwd_pairs_impl(const Tensor& input, c10::SymIntArrayRef normalized_shape,
                                     const std::optional<Tensor>& weight,
                                     const std::optional<Tensor>& bias, double eps) {
  return run_forward(input, normalized_shape, weight, bias, eps, kForward);
}

template <BackwardKernel kBackward>
TensorTriple layer_norm_bwd_impl(const Tensor& grad_out, const Tensor& input,
                                 c10::SymIntArrayRef normalized_shape, const Tensor& mean,
                                 const Tensor& rstd, const std::optional<Tensor>& weight,
                                 const std::optional<Tensor>& bias,
                                 std::array<bool, 3> output_mask) {
  return run_backward(grad_out, input, normalized_shape, mean, rstd, weight, bias,
                      output_mask, kBackward);
}

template <BackwardKernel kBackward>
TensorTriple layer_norm_bwd_from_output_impl(const Tensor& grad_out, const Tensor& output,
                                             c10::SymIntArrayRef normalized_shape,
                                             const Tensor& rstd,
                                             const std::optional<Tensor>& weight,
                                             const std::optional<Tensor>& bias,
                                             std::array<bool, 3> output_mask) {
  return run_backward(grad_out, output, normalized_shape, std::nullopt, rstd, weight,
                      bias, output_mask, kBackward);
}

// In a TORCH_LIBRARY_IMPL(fastlayernorm, <backend>, m) block.
template <ForwardKernel kForward, BackwardKernel kBackward>
void impl_backend_ops(torch::Library& m) {
  m.impl("layer_norm_fwd", &layer_norm_fwd_impl<kForward>);
  m.impl("_layer_norm_fwd_pairs", &layer_norm_fwd_pairs_impl<kForward>);
  m.impl("layer_norm_bwd", &layer_norm_bwd_impl<kBackward>);
  m.impl("layer_norm_bwd_from_output", &layer_norm_bwd_from_output_impl<kBackward>);
}

}  // namespace fastlayernorm
