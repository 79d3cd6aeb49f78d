// fastlayernorm C++ API: the differentiable LayerNorm function.
//
// A light header (ATen's Tensor only, no torch/nn): include it where only the
// function is needed. <fastlayernorm/layer_norm.h> adds the module.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>

#include <fastlayernorm/version.h>

namespace fastlayernorm {

/// LayerNorm over the trailing dimensions `normalized_shape` of `input`, as
/// torch::layer_norm / torch.nn.functional.layer_norm:
///   y = (x - mean) / sqrt(var + eps) * weight + bias
/// with mean and (biased) var taken over the normalized dimensions.
///
/// Calls the registered operator fastlayernorm::layer_norm through the
/// dispatcher, so it is differentiable (backward runs fastlayernorm's backward
/// kernels) and works on every device the library has kernels for (CPU, and
/// CUDA when built with it), under autocast and in inference mode.
///
/// weight and bias, when given, have shape `normalized_shape` and the input's
/// dtype (or float32 for half/bfloat16 input). With `memory_efficient` the
/// backward rebuilds the normalized input from the output,
/// (output - bias) / weight, instead of keeping the input alive (as the
/// Python module's `memory_efficient` attribute).
///
/// Throws c10::Error (c10::ValueError for bad normalized_shape / eps) with a
/// message starting "fastlayernorm:" that names the bad argument.
at::Tensor layer_norm(const at::Tensor& input, at::IntArrayRef normalized_shape,
                      const std::optional<at::Tensor>& weight = std::nullopt,
                      const std::optional<at::Tensor>& bias = std::nullopt,
                      double eps = 1e-5, bool memory_efficient = false);

/// Whether this library was compiled with its CUDA kernels.
bool cuda_built();

}  // namespace fastlayernorm
