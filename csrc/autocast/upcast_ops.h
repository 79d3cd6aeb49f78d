// The float32-output (autocast) path's checks and composite kernels, shared
// with the CUDA backend, which falls back to them for arguments its fused
// kernels do not take.
#pragma once

#include "../layer_norm.h"

namespace fastlayernorm {

// half/bfloat16 input, float32 (or no) weight and bias; throws otherwise.
void check_upcast_args(const Tensor& input, const std::optional<Tensor>& weight,
                       const std::optional<Tensor>& bias);

TensorPair layer_norm_fwd_upcast_composite(const Tensor& input,
                                           c10::SymIntArrayRef normalized_shape,
                                           const std::optional<Tensor>& weight,
                                           const std::optional<Tensor>& bias, double eps);

TensorTriple layer_norm_bwd_upcast_composite(const Tensor& grad_out, const Tensor& input,
                                             c10::SymIntArrayRef normalized_shape,
                                             const Tensor& mean, const Tensor& rstd,
                                             const std::optional<Tensor>& weight,
                                             const std::optional<Tensor>& bias,
                                             std::array<bool, 3> output_mask);

}  // namespace fastlayernorm
