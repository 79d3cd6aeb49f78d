// C++ entry points that call the registered operators through the
// dispatcher (so autograd, autocast, Meta and tracing all see them).
#pragma once

#include "layer_norm.h"

namespace fastlayernorm::ops {

TensorTriple layer_norm_fwd(const Tensor& input,
                            c10::SymIntArrayRef normalized_shape,
                            const std::optional<Tensor>& weight,
                            const std::optional<Tensor>& bias, double eps);

// (output, stats pairs): registration.cpp's _layer_norm_fwd_pairs.
TensorPair layer_norm_fwd_pairs(const Tensor& input, c10::SymIntArrayRef normalized_shape,
                                const std::optional<Tensor>& weight,
                                const std::optional<Tensor>& bias, double eps);

TensorTriple layer_norm_bwd(const Tensor& grad_out, const Tensor& input,
                            c10::SymIntArrayRef normalized_shape,
                            const Tensor& mean, const Tensor& rstd,
                            const std::optional<Tensor>& weight,
                            const std::optional<Tensor>& bias,
                            std::array<bool, 3> output_mask);

TensorTriple layer_norm_bwd_from_output(const Tensor& grad_out,
                                        const Tensor& output,
                                        c10::SymIntArrayRef normalized_shape,
                                        const Tensor& rstd,
                                        const std::optional<Tensor>& weight,
                                        const std::optional<Tensor>& bias,
                                        std::array<bool, 3> output_mask);

Tensor layer_norm(const Tensor& input, c10::SymIntArrayRef normalized_shape,
                  const std::optional<Tensor>& weight,
                  const std::optional<Tensor>& bias, double eps,
                  bool memory_efficient);

// Autocast's float32 path (registration.cpp): half/bfloat16 input, float32
// output and grad_out, float32 or no weight/bias; the forward returns
// (output, stats pairs).
TensorPair layer_norm_fwd_upcast(const Tensor& input, c10::SymIntArrayRef normalized_shape,
                                 const std::optional<Tensor>& weight,
                                 const std::optional<Tensor>& bias, double eps);

TensorTriple layer_norm_bwd_upcast(const Tensor& grad_out, const Tensor& input,
                                   c10::SymIntArrayRef normalized_shape,
                                   const Tensor& mean, const Tensor& rstd,
                                   const std::optional<Tensor>& weight,
                                   const std::optional<Tensor>& bias,
                                   std::array<bool, 3> output_mask);

Tensor layer_norm_upcast(const Tensor& input, c10::SymIntArrayRef normalized_shape,
                         const std::optional<Tensor>& weight,
                         const std::optional<Tensor>& bias, double eps);

}  // namespace fastlayernorm::ops
