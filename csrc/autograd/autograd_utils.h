// Helpers shared by the C++ autograd Functions (autograd/, autocast/).
#pragma once

#include <torch/autograd.h>

#include <array>
#include <optional>

namespace fastlayernorm {

inline std::optional<at::Tensor> defined_or_none(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// Which of (input, weight, bias) need a gradient. The context numbers only
// the tensor arguments that were given: input, then weight and bias if present.
inline std::array<bool, 3> grad_mask(torch::autograd::AutogradContext* ctx,
                                     const at::Tensor& weight, const at::Tensor& bias) {
  const size_t bias_edge = weight.defined() ? 2 : 1;
  return {ctx->needs_input_grad(0), weight.defined() && ctx->needs_input_grad(1),
          bias.defined() && ctx->needs_input_grad(bias_edge)};
}

}  // namespace fastlayernorm
