// The operator bodies shared by the CPU and CUDA backends, so both check,
// allocate and lay out their results identically.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/DeviceGuard.h>

#include "layer_norm.h"

#include <limits>

namespace fastlayernorm {
namespace {

Tensor contiguous_or_undefined(const std::optional<Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->contiguous() : Tensor();
}

bool present(const std::optional<Tensor>& t) {
  return t.has_value() && t->defined();
}

}  // namespace

TensorTriple run_forward(const Tensor& input,
                         c10::SymIntArrayRef normalized_shape,
                         const std::optional<Tensor>& weight,
                         const std::optional<Tensor>& bias, double eps,
                         ForwardKernel kernel,
                         std::optional<c10::ScalarType> output_dtype, bool with_stats) {
  const auto shape = C10_AS_INTARRAYREF_SLOW(normalized_shape);
  const RowShape rs = check_forward_args(input, shape, weight, bias, eps);
  c10::OptionalDeviceGuard guard(input.device());
  const auto contiguous = at::MemoryFormat::Contiguous;
  const auto stats_sym = stats_shape(input, shape.size());
  const auto stats = C10_AS_INTARRAYREF_SLOW(stats_sym);
  const auto stats_options =
      input.options().dtype(stats_dtype(input.scalar_type()));
  ForwardArgs args{input.contiguous(),
                   contiguous_or_undefined(weight),
                   contiguous_or_undefined(bias),
                   rs.rows,
                   rs.cols,
                   eps,
                   at::empty(input.sizes(),
                             input.options()
                                 .dtype(output_dtype.value_or(input.scalar_type()))
                                 .memory_format(contiguous)),
                   with_stats ? at::empty(stats, stats_options) : Tensor(),
                   with_stats ? at::empty(stats, stats_options) : Tensor()};
  if (rs.cols == 0 && with_stats) {
    // Empty rows: as aten::native_layer_norm, mean 0 and rstd NaN (0/0).
    args.mean.zero_();
    args.rstd.fill_(std::numeric_limits<double>::quiet_NaN());
  } else if (rs.rows > 0 && rs.cols > 0) {
    kernel(args);
  }
  return {args.output, args.mean, args.rstd};
}

TensorTriple run_backward(const Tensor& grad_out, const Tensor& input,
                          c10::SymIntArrayRef normalized_shape,
                          const std::optional<Tensor>& mean, const Tensor& rstd,
                          const std::optional<Tensor>& weight,
                          const std::optional<Tensor>& bias,
                          std::array<bool, 3> output_mask,
                          BackwardKernel kernel, bool float_grad_ok) {
  check_backward_args(grad_out, input, normalized_shape, mean, rstd, weight,
                      bias, float_grad_ok);
  c10::OptionalDeviceGuard guard(input.device());
  const RowShape rs = row_shape(input, normalized_shape.size());
  const auto contiguous = at::MemoryFormat::Contiguous;
  BackwardArgs args{grad_out.contiguous(),
                    input.contiguous(),
                    present(mean) ? mean->contiguous() : Tensor(),
                    rstd.contiguous(),
                    contiguous_or_undefined(weight),
                    contiguous_or_undefined(bias),
                    rs.rows,
                    rs.cols,
                    /*from_output=*/!mean.has_value(),
                    Tensor(),
                    Tensor(),
                    Tensor()};
  if (output_mask[0]) args.grad_input = at::empty_like(args.input, contiguous);
  if (output_mask[1] && present(weight)) {
    args.grad_weight = at::empty_like(args.weight, contiguous);
  }
  if (output_mask[2] && present(bias)) {
    args.grad_bias = at::empty_like(args.bias, contiguous);
  }
  const bool any = args.grad_input.defined() || args.grad_weight.defined() ||
                   args.grad_bias.defined();
  if (rs.rows == 0 || rs.cols == 0) {
    // Nothing to reduce: the parameter gradients of an empty batch are zero.
    if (args.grad_weight.defined()) args.grad_weight.zero_();
    if (args.grad_bias.defined()) args.grad_bias.zero_();
  } else if (any) {
    kernel(args);
  }
  return {args.grad_input, args.grad_weight, args.grad_bias};
}

}  // namespace fastlayernorm
