// The operator bodies shared by the CPU and CUDA backends, so both check,
// allocate and lay out their results identically.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros_like.h>
#include <c10/core/DeviceGuard.h>

#include "layer_norm.h"

#include <limits>
#include <tuple>

namespace fastlayernorm {
namespace {

Tensor contiguous_or_undefined(const std::optional<Tensor>& t) {
  return (t.has_value() && t->defined()) ? t->contiguous() : Tensor();
}

bool present(const std::optional<Tensor>& t) {
  return t.has_value() && t->defined();
}

// Whether the rows' values of a statistics tensor (one value per row) lie
// `stride` elements apart.
bool rows_at_stride(const Tensor& s, int64_t stride) {
  int64_t inner_rows = 1;
  for (int64_t d = s.dim() - 1; d >= 0; --d) {
    if (s.size(d) == 1) continue;
    if (s.stride(d) != stride * inner_rows) return false;
    inner_rows *= s.size(d);
  }
  return true;
}

// The backward's rows x 2 (mean, rstd) pairs: the forward's pairs read in
// place when mean and rstd are their two columns (rstd alone, from_output),
// else a copy. (The CUDA kernels read a pair with two 4-byte loads, so a
// pair needs no more than the element's alignment.)
Tensor stats_pairs_of(const std::optional<Tensor>& mean, const Tensor& rstd, int64_t rows) {
  const int64_t esz = static_cast<int64_t>(rstd.element_size());
  const auto* r = static_cast<const char*>(rstd.const_data_ptr());
  bool paired = rows_at_stride(rstd, 2) && rstd.storage_offset() >= 1;
  if (paired && present(mean)) {
    paired = mean->is_alias_of(rstd) && rows_at_stride(*mean, 2) &&
             static_cast<const char*>(mean->const_data_ptr()) + esz == r;
  }
  if (paired) return rstd.as_strided({rows, 2}, {2, 1}, rstd.storage_offset() - 1);
  const Tensor r1 = rstd.reshape({rows});
  return at::stack({present(mean) ? mean->reshape({rows}) : at::zeros_like(r1), r1}, 1);
}

}  // namespace

Tensor empty_stats_pairs(const Tensor& input, int64_t normalized_ndim) {
  auto shape = stats_shape(input, normalized_ndim);
  shape.push_back(2);
  return at::empty_symint(shape, input.options()
                                     .dtype(stats_dtype(input.scalar_type()))
                                     .memory_format(at::MemoryFormat::Contiguous));
}

std::pair<Tensor, Tensor> mean_and_rstd_of(const Tensor& stats_pairs) {
  return {stats_pairs.select(-1, 0), stats_pairs.select(-1, 1)};
}

TensorTriple with_separate_stats(const TensorPair& output_and_pairs) {
  const auto& [output, pairs] = output_and_pairs;
  if (!pairs.defined()) return {output, Tensor(), Tensor()};
  const auto [mean, rstd] = mean_and_rstd_of(pairs);
  // clone, not contiguous(): an empty column counts as contiguous, and the
  // two would then share the pairs' storage.
  return {output, mean.clone(at::MemoryFormat::Contiguous),
          rstd.clone(at::MemoryFormat::Contiguous)};
}

TensorPair run_forward(const Tensor& input, c10::SymIntArrayRef normalized_shape,
                       const std::optional<Tensor>& weight,
                       const std::optional<Tensor>& bias, double eps, ForwardKernel kernel,
                       std::optional<c10::ScalarType> output_dtype, bool with_stats) {
  const auto shape = C10_AS_INTARRAYREF_SLOW(normalized_shape);
  const RowShape rs = check_forward_args(input, shape, weight, bias, eps);
  c10::OptionalDeviceGuard guard(input.device());
  const auto contiguous = at::MemoryFormat::Contiguous;
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
                   with_stats ? empty_stats_pairs(input, shape.size()) : Tensor()};
  const Tensor stats = args.stats;  // the stats shape and a trailing 2
  if (rs.cols == 0 && with_stats) {
    // Empty rows: as aten::native_layer_norm, mean 0 and rstd NaN (0/0).
    const auto [mean, rstd] = mean_and_rstd_of(stats);
    mean.zero_();
    rstd.fill_(std::numeric_limits<double>::quiet_NaN());
  } else if (rs.rows > 0 && rs.cols > 0) {
    if (with_stats) args.stats = stats.view({rs.rows, 2});
    kernel(args);
  }
  return {args.output, stats};
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
                    stats_pairs_of(mean, rstd, rs.rows),
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
