// Argument checks shared by every backend. Each message names the argument,
// what was expected and what was given.
#include "layer_norm.h"

#include <c10/util/Exception.h>
#include <c10/util/irange.h>

#include <cmath>

namespace fastlayernorm {
namespace {

bool is_supported_float(c10::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf ||
         t == at::kBFloat16;
}

// Weight and bias: the input's dtype, or float32 for half/bfloat16 input.
void check_param(const std::optional<Tensor>& param, const char* name,
                 const Tensor& input, c10::SymIntArrayRef normalized_shape) {
  if (!param.has_value() || !param->defined()) return;
  const Tensor& p = *param;
  TORCH_CHECK(p.sym_sizes().equals(normalized_shape),
              "fastlayernorm: expected ", name,
              " to have shape normalized_shape = ", normalized_shape,
              ", but got ", name, " of shape ", p.sym_sizes());
  const auto in = input.scalar_type();
  const auto pt = p.scalar_type();
  const bool low_precision = is_half_or_bfloat16(in);
  TORCH_CHECK(pt == in || (low_precision && pt == at::kFloat),
              "fastlayernorm: expected ", name, " of dtype ", in,
              low_precision ? " or Float" : "", " (the input's dtype is ", in,
              "), but got ", name, " of dtype ", pt);
  TORCH_CHECK(p.device() == input.device(), "fastlayernorm: expected ", name,
              " on the input's device ", input.device(), ", but got ", name,
              " on ", p.device());
}

void check_common(const Tensor& input, c10::SymIntArrayRef normalized_shape,
                  const std::optional<Tensor>& weight,
                  const std::optional<Tensor>& bias) {
  TORCH_CHECK(input.defined(), "fastlayernorm: input is undefined");
  TORCH_CHECK(is_supported_float(input.scalar_type()),
              "fastlayernorm: expected input of a floating-point dtype "
              "(Float, Double, Half or BFloat16), but got input of dtype ",
              input.scalar_type());
  const int64_t ndim = static_cast<int64_t>(normalized_shape.size());
  TORCH_CHECK_VALUE(ndim >= 1,
                    "fastlayernorm: expected normalized_shape to have at least "
                    "one dimension, but got normalized_shape = ",
                    normalized_shape);
  for (const auto& d : normalized_shape) {
    TORCH_CHECK_VALUE(d >= 0,
                      "fastlayernorm: expected non-negative sizes in "
                      "normalized_shape, but got normalized_shape = ",
                      normalized_shape);
  }
  const auto sizes = input.sym_sizes();
  const int64_t in_ndim = static_cast<int64_t>(sizes.size());
  TORCH_CHECK(in_ndim >= ndim &&
                  sizes.slice(in_ndim - ndim).equals(normalized_shape),
              "fastlayernorm: expected input whose trailing dimensions equal "
              "normalized_shape = ",
              normalized_shape, ", but got input of shape ", sizes);
  check_param(weight, "weight", input, normalized_shape);
  check_param(bias, "bias", input, normalized_shape);
  if (weight.has_value() && weight->defined() && bias.has_value() &&
      bias->defined()) {
    TORCH_CHECK(weight->scalar_type() == bias->scalar_type(),
                "fastlayernorm: expected weight and bias of the same dtype, "
                "but got weight of dtype ",
                weight->scalar_type(), " and bias of dtype ",
                bias->scalar_type());
  }
}

void check_eps(double eps) {
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0.0,
                    "fastlayernorm: expected eps to be a finite number >= 0, "
                    "but got eps = ",
                    eps);
}

}  // namespace

c10::ScalarType stats_dtype(c10::ScalarType input_dtype) {
  return input_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

c10::SymDimVector stats_shape(const Tensor& input, int64_t normalized_ndim) {
  c10::SymDimVector shape(input.sym_sizes().begin(), input.sym_sizes().end());
  for (int64_t i = input.dim() - normalized_ndim; i < input.dim(); ++i) {
    shape[i] = 1;
  }
  return shape;
}

RowShape row_shape(const Tensor& input, int64_t normalized_ndim) {
  const int64_t axis = input.dim() - normalized_ndim;
  int64_t rows = 1, cols = 1;
  for (const auto i : c10::irange(input.dim())) {
    (i < axis ? rows : cols) *= input.size(i);
  }
  return {rows, cols};
}

RowShape check_forward_args(const Tensor& input,
                            c10::IntArrayRef normalized_shape,
                            const std::optional<Tensor>& weight,
                            const std::optional<Tensor>& bias, double eps) {
  check_common(input, c10::fromIntArrayRefSlow(normalized_shape), weight,
               bias);
  check_eps(eps);
  return row_shape(input, static_cast<int64_t>(normalized_shape.size()));
}

void check_forward_args_symbolic(const Tensor& input,
                                 c10::SymIntArrayRef normalized_shape,
                                 const std::optional<Tensor>& weight,
                                 const std::optional<Tensor>& bias,
                                 double eps) {
  check_common(input, normalized_shape, weight, bias);
  check_eps(eps);
}

void check_backward_args(const Tensor& grad_out, const Tensor& input,
                         c10::SymIntArrayRef normalized_shape,
                         const std::optional<Tensor>& mean, const Tensor& rstd,
                         const std::optional<Tensor>& weight,
                         const std::optional<Tensor>& bias, bool float_grad_ok) {
  check_common(input, normalized_shape, weight, bias);
  TORCH_CHECK(grad_out.defined(), "fastlayernorm: grad_out is undefined");
  TORCH_CHECK(grad_out.sym_sizes().equals(input.sym_sizes()),
              "fastlayernorm: expected grad_out of the input's shape ",
              input.sym_sizes(), ", but got grad_out of shape ",
              grad_out.sym_sizes());
  if (float_grad_ok && is_half_or_bfloat16(input.scalar_type())) {
    TORCH_CHECK(grad_out.scalar_type() == at::kFloat,
                "fastlayernorm: expected a float32 grad_out (the float32 output's "
                "gradient), but got grad_out of dtype ", grad_out.scalar_type());
  } else {
    TORCH_CHECK(grad_out.scalar_type() == input.scalar_type(),
                "fastlayernorm: expected grad_out of the input's dtype ",
                input.scalar_type(), ", but got grad_out of dtype ",
                grad_out.scalar_type());
  }
  TORCH_CHECK(grad_out.device() == input.device(),
              "fastlayernorm: expected grad_out on the input's device ",
              input.device(), ", but got grad_out on ", grad_out.device());
  const auto sdt = stats_dtype(input.scalar_type());
  const int64_t axis =
      input.dim() - static_cast<int64_t>(normalized_shape.size());
  c10::SymInt rows = 1;
  for (int64_t i = 0; i < axis; ++i) rows *= input.sym_size(i);
  auto check_stat = [&](const Tensor& s, const char* name) {
    TORCH_CHECK(s.defined(), "fastlayernorm: ", name, " is undefined");
    TORCH_CHECK(s.scalar_type() == sdt, "fastlayernorm: expected ", name,
                " of dtype ", sdt, ", but got ", name, " of dtype ",
                s.scalar_type());
    TORCH_CHECK(s.sym_numel() == rows, "fastlayernorm: expected ", name,
                " with one element per row (", rows, "), but got ", name,
                " with ", s.sym_numel(), " elements");
    TORCH_CHECK(s.device() == input.device(), "fastlayernorm: expected ",
                name, " on the input's device ", input.device(),
                ", but got ", name, " on ", s.device());
  };
  if (mean.has_value()) check_stat(*mean, "mean");
  check_stat(rstd, "rstd");
}

}  // namespace fastlayernorm
