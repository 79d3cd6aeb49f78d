// Autograd in C++: backward works from Python, TorchScript and C++ programs.
// The backward calls the registered backward operators (never a raw kernel),
// so torch.compile traces it like any other op.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>
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

// The backward node of fastlayernorm::layer_norm (kUpcast:
// fastlayernorm::_layer_norm_upcast, the autocast path: float32 output from
// half/bfloat16 input, never memory_efficient, through the _upcast forward
// and backward operators). A Node of its own, as torch's generated autograd
// code has for aten::native_layer_norm, not a torch::autograd::Function: the
// Function's generic bookkeeping per call (the inputs' metadata, the outputs'
// wrapping, an IValue map for the non-tensor arguments) and the forward's
// split of the statistics into two views cost the recorded call ~5 us more
// on the host than this (CPU, N = 64; docs/kernels.md, session 32). Saves
// (input, stats pairs), or (output, stats pairs) when memory_efficient, and
// weight and bias; edges to input, weight and bias (invalid where absent).
template <bool kUpcast>
struct LayerNormBackward : public torch::autograd::Node {
  torch::autograd::SavedVariable input_or_output;
  torch::autograd::SavedVariable stats;  // (mean, rstd) pairs
  torch::autograd::SavedVariable weight;
  torch::autograd::SavedVariable bias;
  std::vector<c10::SymInt> normalized_shape;
  bool memory_efficient = false;

  std::string name() const override {
    return kUpcast ? "LayerNormUpcastBackward" : "LayerNormBackward";
  }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    input_or_output.reset_data();
    stats.reset_data();
    weight.reset_data();
    bias.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    variable_list result(3);
    const Tensor& grad = grads[0];
    const std::array<bool, 3> mask = {task_should_compute_output(0),
                                      task_should_compute_output(1),
                                      task_should_compute_output(2)};
    if (!grad.defined() || !(mask[0] || mask[1] || mask[2])) return result;
    // unpack() raises the usual errors: released by a backward without
    // retain_graph, or a saved tensor modified in place since.
    const auto self = shared_from_this();
    const Tensor x_or_y = input_or_output.unpack(self);
    // Without create_graph (grad mode off here) nothing records the backward
    // operators: their Autograd kernel, a boxed fallback that only prepares a
    // double backward's error, is skipped.
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!at::GradMode::is_enabled()) below_autograd.emplace();
    const auto [mean, rstd] = mean_and_rstd_of(stats.unpack(self));
    const Tensor w = weight.unpack(self);
    const Tensor b = bias.unpack(self);
    Tensor dx, dw, db;
    if (memory_efficient) {
      std::tie(dx, dw, db) = ops::layer_norm_bwd_from_output(
          grad, x_or_y, normalized_shape, rstd, defined_or_none(w), defined_or_none(b), mask);
    } else {
      const auto bwd = kUpcast ? &ops::layer_norm_bwd_upcast : &ops::layer_norm_bwd;
      std::tie(dx, dw, db) = bwd(grad, x_or_y, normalized_shape, mean, rstd,
                                 defined_or_none(w), defined_or_none(b), mask);
    }
    result[0] = std::move(dx);
    result[1] = std::move(dw);
    result[2] = std::move(db);
    return result;
  }
};

// The recorded forward: the node, then the forward below autograd, then the
// output's history and the saved tensors (the output, when saved, after its
// history: saved as an output, so the node does not own its own output).
template <bool kUpcast>
Tensor layer_norm_recorded(const Tensor& input, c10::SymIntArrayRef normalized_shape,
                           const std::optional<Tensor>& weight,
                           const std::optional<Tensor>& bias, double eps,
                           bool memory_efficient) {
  const Tensor w = weight.value_or(Tensor());
  const Tensor b = bias.value_or(Tensor());
  auto node = std::shared_ptr<LayerNormBackward<kUpcast>>(new LayerNormBackward<kUpcast>(),
                                                           torch::autograd::deleteNode);
  node->set_next_edges(torch::autograd::collect_next_edges(input, w, b));
  node->normalized_shape = normalized_shape.vec();
  node->memory_efficient = memory_efficient;
  if (!memory_efficient) node->input_or_output = torch::autograd::SavedVariable(input, false);
  node->weight = torch::autograd::SavedVariable(w, false);
  node->bias = torch::autograd::SavedVariable(b, false);
  Tensor output, stats;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(output, stats) =
        kUpcast ? ops::layer_norm_fwd_upcast(input, normalized_shape, weight, bias, eps)
                : ops::layer_norm_fwd_pairs(input, normalized_shape, weight, bias, eps);
  }
  torch::autograd::set_history(output, node);
  if (memory_efficient) node->input_or_output = torch::autograd::SavedVariable(output, true);
  node->stats = torch::autograd::SavedVariable(stats, false);
  return output;
}

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
// requires grad. A forward-mode gradient on one is an error (not dropped by
// the unrecorded path).
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
  TORCH_CHECK(!forward_grad,
              "fastlayernorm.layer_norm: forward-mode AD (jvp) is not implemented; an input "
              "has a forward-mode tangent");
  return at::GradMode::is_enabled() && requires_grad;
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
  return layer_norm_recorded<false>(input, normalized_shape, weight, bias, eps, memory_efficient);
}

Tensor layer_norm_upcast_autograd(const Tensor& input, c10::SymIntArrayRef normalized_shape,
                                  const std::optional<Tensor>& weight,
                                  const std::optional<Tensor>& bias, double eps) {
  if (!records_autograd(input, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return ops::layer_norm_upcast(input, normalized_shape, weight, bias, eps);
  }
  return layer_norm_recorded<true>(input, normalized_shape, weight, bias, eps,
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
