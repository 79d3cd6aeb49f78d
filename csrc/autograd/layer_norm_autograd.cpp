// Autograd in C++: backward works from Python, TorchScript and C++ programs.
// The backward calls the registered backward operators (never a raw kernel),
// so torch.compile traces it like any other op.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "../ops.h"

namespace fastlayernorm {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::optional<Tensor> defined_or_none(const Tensor& t) {
  return t.defined() ? std::optional<Tensor>(t) : std::nullopt;
}

// Which of (input, weight, bias) need a gradient. The context numbers only
// the tensor arguments that were given: input, then weight and bias if present.
std::array<bool, 3> grad_mask(AutogradContext* ctx, const Tensor& weight,
                              const Tensor& bias) {
  const size_t bias_edge = weight.defined() ? 2 : 1;
  return {ctx->needs_input_grad(0),
          weight.defined() && ctx->needs_input_grad(1),
          bias.defined() && ctx->needs_input_grad(bias_edge)};
}

// fastlayernorm::layer_norm: saves (input, mean, rstd), or (output, rstd)
// when memory_efficient is set. kUpcast: fastlayernorm::_layer_norm_upcast,
// the autocast path (float32 output from half/bfloat16 input; never
// memory_efficient), through the _upcast forward and backward operators.
template <bool kUpcast>
class LayerNormFunction : public torch::autograd::Function<LayerNormFunction<kUpcast>> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& input,
                        c10::SymIntArrayRef normalized_shape,
                        const std::optional<Tensor>& weight,
                        const std::optional<Tensor>& bias, double eps,
                        bool memory_efficient) {
    at::AutoDispatchBelowADInplaceOrView guard;
    // mean and rstd saved as the columns of one tensor of (mean, rstd)
    // pairs (layer_norm.h's empty_stats_pairs): the backward reads them in
    // place.
    const auto [output, stats] =
        kUpcast ? ops::layer_norm_fwd_upcast(input, normalized_shape, weight, bias, eps)
                : ops::layer_norm_fwd_pairs(input, normalized_shape, weight, bias, eps);
    const auto [mean, rstd] = mean_and_rstd_of(stats);
    ctx->saved_data["normalized_shape"] = normalized_shape.vec();
    ctx->saved_data["memory_efficient"] = memory_efficient;
    const Tensor w = weight.value_or(Tensor());
    const Tensor b = bias.value_or(Tensor());
    if (memory_efficient) {
      ctx->save_for_backward({output, rstd, w, b});
    } else {
      ctx->save_for_backward({input, mean, rstd, w, b});
    }
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto shape = ctx->saved_data["normalized_shape"].toSymIntVector();
    const bool memory_efficient = ctx->saved_data["memory_efficient"].toBool();
    const Tensor& grad = grads[0];
    variable_list result(6);
    if (!grad.defined()) return result;
    Tensor dx, dw, db;
    if (memory_efficient) {
      const Tensor &output = saved[0], &rstd = saved[1], &w = saved[2],
                   &b = saved[3];
      std::tie(dx, dw, db) = ops::layer_norm_bwd_from_output(
          grad, output, shape, rstd, defined_or_none(w), defined_or_none(b),
          grad_mask(ctx, w, b));
    } else {
      const Tensor &input = saved[0], &mean = saved[1], &rstd = saved[2],
                   &w = saved[3], &b = saved[4];
      const auto bwd = kUpcast ? &ops::layer_norm_bwd_upcast : &ops::layer_norm_bwd;
      std::tie(dx, dw, db) = bwd(grad, input, shape, mean, rstd, defined_or_none(w),
                                 defined_or_none(b), grad_mask(ctx, w, b));
    }
    result[0] = dx;
    result[2] = dw;
    result[3] = db;
    return result;
  }
};

// fastlayernorm::layer_norm_fwd is differentiable in all three outputs (so a
// caller may use mean and rstd in a loss): the gradients reaching them add
//   d/dx = g_mean / N - g_rstd * rstd^2 * x_hat / N   (x_hat = (x-mean)*rstd).
class LayerNormFwdFunction
    : public torch::autograd::Function<LayerNormFwdFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& input,
                               c10::SymIntArrayRef normalized_shape,
                               const std::optional<Tensor>& weight,
                               const std::optional<Tensor>& bias, double eps) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, mean, rstd] =
        ops::layer_norm_fwd(input, normalized_shape, weight, bias, eps);
    ctx->saved_data["normalized_shape"] = normalized_shape.vec();
    ctx->save_for_backward({input, mean, rstd, weight.value_or(Tensor()),
                            bias.value_or(Tensor())});
    return {output, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto shape = ctx->saved_data["normalized_shape"].toSymIntVector();
    const Tensor &input = saved[0], &mean = saved[1], &rstd = saved[2],
                 &w = saved[3], &b = saved[4];
    const Tensor &g_out = grads[0], &g_mean = grads[1], &g_rstd = grads[2];
    variable_list result(5);
    auto mask = grad_mask(ctx, w, b);
    if (g_out.defined()) {
      std::tie(result[0], result[2], result[3]) =
          ops::layer_norm_bwd(g_out, input, shape, mean, rstd,
                              defined_or_none(w), defined_or_none(b), mask);
    }
    if (mask[0] && (g_mean.defined() || g_rstd.defined())) {
      c10::SymInt n = 1;
      for (const auto& d : shape) n *= d;
      const double inv_n = 1.0 / static_cast<double>(n.guard_int(__FILE__, __LINE__));
      const auto stats_type = mean.scalar_type();
      Tensor extra = at::zeros_like(input, input.options().dtype(stats_type));
      if (g_mean.defined()) extra = extra + g_mean * inv_n;
      if (g_rstd.defined()) {
        const Tensor x_hat = (input.to(stats_type) - mean) * rstd;
        extra = extra - g_rstd * rstd * rstd * x_hat * inv_n;
      }
      extra = extra.to(input.scalar_type());
      result[0] = result[0].defined() ? result[0] + extra : extra;
    }
    return result;
  }
};

// Whether the call is recorded for autograd: grad mode on and an input that
// requires grad, or a forward-mode gradient on one (which the Function
// rejects with its error, as without this check).
bool records_autograd(const Tensor& input, const std::optional<Tensor>& weight,
                      const std::optional<Tensor>& bias) {
  bool requires_grad = false;
  bool forward_grad = false;
  for (const Tensor* t : {&input, weight.has_value() ? &*weight : nullptr,
                          bias.has_value() ? &*bias : nullptr}) {
    if (t == nullptr || !t->defined()) continue;
    requires_grad = requires_grad || t->requires_grad();
    forward_grad = forward_grad || t->_fw_grad(/*level=*/0).defined();
  }
  return forward_grad || (at::GradMode::is_enabled() && requires_grad);
}

// Unrecorded calls (inference) go to the op below autograd, whose CUDA
// kernel stores no mean/rstd: no backward will read them, and on an H200
// the short rows' forward runs 2.6-4.7 points of the copy faster without
// them (docs/kernels.md, session 29).
Tensor layer_norm_autograd(const Tensor& input,
                           c10::SymIntArrayRef normalized_shape,
                           const std::optional<Tensor>& weight,
                           const std::optional<Tensor>& bias, double eps,
                           bool memory_efficient) {
  if (!records_autograd(input, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::layer_norm(input, normalized_shape, weight, bias, eps, memory_efficient);
  }
  return LayerNormFunction<false>::apply(input, normalized_shape, weight, bias, eps,
                                         memory_efficient);
}

Tensor layer_norm_upcast_autograd(const Tensor& input, c10::SymIntArrayRef normalized_shape,
                                  const std::optional<Tensor>& weight,
                                  const std::optional<Tensor>& bias, double eps) {
  if (!records_autograd(input, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::layer_norm_upcast(input, normalized_shape, weight, bias, eps);
  }
  return LayerNormFunction<true>::apply(input, normalized_shape, weight, bias, eps,
                                        /*memory_efficient=*/false);
}

TensorTriple layer_norm_fwd_autograd(const Tensor& input,
                                     c10::SymIntArrayRef normalized_shape,
                                     const std::optional<Tensor>& weight,
                                     const std::optional<Tensor>& bias,
                                     double eps) {
  auto out =
      LayerNormFwdFunction::apply(input, normalized_shape, weight, bias, eps);
  return {out[0], out[1], out[2]};
}

// Below autograd (inference mode, the Autograd key excluded, or a call no
// graph records) layer_norm is the forward op's output, on backends without
// a kernel of their own for it (CUDA has one that stores no statistics).
Tensor layer_norm_below_autograd(const Tensor& input,
                                 c10::SymIntArrayRef normalized_shape,
                                 const std::optional<Tensor>& weight,
                                 const std::optional<Tensor>& bias, double eps,
                                 bool /*memory_efficient*/) {
  return std::get<0>(
      ops::layer_norm_fwd_pairs(input, normalized_shape, weight, bias, eps));
}

Tensor layer_norm_upcast_below_autograd(const Tensor& input,
                                        c10::SymIntArrayRef normalized_shape,
                                        const std::optional<Tensor>& weight,
                                        const std::optional<Tensor>& bias, double eps) {
  return std::get<0>(ops::layer_norm_fwd_upcast(input, normalized_shape, weight, bias, eps));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlayernorm, Autograd, m) {
  m.impl("layer_norm", &layer_norm_autograd);
  m.impl("layer_norm_fwd", &layer_norm_fwd_autograd);
  m.impl("_layer_norm_fwd_pairs", torch::autograd::autogradNotImplementedFallback());
  // Double backward is not implemented: a clear error instead of a silent
  // zero gradient.
  m.impl("layer_norm_bwd", torch::autograd::autogradNotImplementedFallback());
  m.impl("layer_norm_bwd_from_output",
         torch::autograd::autogradNotImplementedFallback());
  m.impl("_layer_norm_upcast", &layer_norm_upcast_autograd);
  m.impl("_layer_norm_fwd_upcast", torch::autograd::autogradNotImplementedFallback());
  m.impl("_layer_norm_bwd_upcast", torch::autograd::autogradNotImplementedFallback());
}

TORCH_LIBRARY_IMPL(fastlayernorm, CompositeExplicitAutograd, m) {
  m.impl("layer_norm", &layer_norm_below_autograd);
  m.impl("_layer_norm_upcast", &layer_norm_upcast_below_autograd);
}

}  // namespace fastlayernorm
