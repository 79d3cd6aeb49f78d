// Meta (fake-tensor) kernels: output shapes and dtypes with symbolic sizes,
// so torch.compile and torch.export trace the operators without running them.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../layer_norm.h"

namespace fastlayernorm {
namespace {

Tensor empty_contiguous(c10::SymIntArrayRef shape, const at::TensorOptions& o) {
  return at::empty_symint(shape, o.memory_format(at::MemoryFormat::Contiguous));
}

TensorTriple layer_norm_fwd_meta(const Tensor& input,
                                 c10::SymIntArrayRef normalized_shape,
                                 const std::optional<Tensor>& weight,
                                 const std::optional<Tensor>& bias,
                                 double eps) {
  check_forward_args_symbolic(input, normalized_shape, weight, bias, eps);
  const auto shape = stats_shape(input, normalized_shape.size());
  const auto stats_options =
      input.options().dtype(stats_dtype(input.scalar_type()));
  return {empty_contiguous(input.sym_sizes(), input.options()),
          empty_contiguous(shape, stats_options),
          empty_contiguous(shape, stats_options)};
}

TensorPair layer_norm_fwd_pairs_meta(const Tensor& input,
                                     c10::SymIntArrayRef normalized_shape,
                                     const std::optional<Tensor>& weight,
                                     const std::optional<Tensor>& bias, double eps) {
  check_forward_args_symbolic(input, normalized_shape, weight, bias, eps);
  return {empty_contiguous(input.sym_sizes(), input.options()),
          empty_stats_pairs(input, normalized_shape.size())};
}

TensorTriple backward_outputs_meta(const Tensor& input,
                                   const std::optional<Tensor>& weight,
                                   const std::optional<Tensor>& bias,
                                   std::array<bool, 3> mask) {
  Tensor dx, dw, db;
  if (mask[0]) dx = empty_contiguous(input.sym_sizes(), input.options());
  if (mask[1] && weight.has_value() && weight->defined()) {
    dw = empty_contiguous(weight->sym_sizes(), weight->options());
  }
  if (mask[2] && bias.has_value() && bias->defined()) {
    db = empty_contiguous(bias->sym_sizes(), bias->options());
  }
  return {dx, dw, db};
}

TensorTriple layer_norm_bwd_meta(const Tensor& grad_out, const Tensor& input,
                                 c10::SymIntArrayRef normalized_shape,
                                 const Tensor& mean, const Tensor& rstd,
                                 const std::optional<Tensor>& weight,
                                 const std::optional<Tensor>& bias,
                                 std::array<bool, 3> output_mask) {
  check_backward_args(grad_out, input, normalized_shape, mean, rstd, weight,
                      bias);
  return backward_outputs_meta(input, weight, bias, output_mask);
}

TensorTriple layer_norm_bwd_from_output_meta(
    const Tensor& grad_out, const Tensor& output,
    c10::SymIntArrayRef normalized_shape, const Tensor& rstd,
    const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
    std::array<bool, 3> output_mask) {
  check_backward_args(grad_out, output, normalized_shape, std::nullopt, rstd,
                      weight, bias);
  return backward_outputs_meta(output, weight, bias, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlayernorm, Meta, m) {
  m.impl("layer_norm_fwd", &layer_norm_fwd_meta);
  m.impl("_layer_norm_fwd_pairs", &layer_norm_fwd_pairs_meta);
  m.impl("layer_norm_bwd", &layer_norm_bwd_meta);
  m.impl("layer_norm_bwd_from_output", &layer_norm_bwd_from_output_meta);
}

}  // namespace fastlayernorm
