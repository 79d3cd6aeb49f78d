// Typed handles on the registered operators.
#include "ops.h"

#include <ATen/core/dispatch/Dispatcher.h>

namespace fastlayernorm::ops {
namespace {

template <typename Signature>
c10::TypedOperatorHandle<Signature> handle(const char* name) {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow(name, "")
      .typed<Signature>();
}

// The forward and backward operators share their signatures with the
// autocast path's (_layer_norm_fwd_upcast / _layer_norm_bwd_upcast; the
// forwards returning the statistics as pairs: PairsForwardSignature).
using ForwardSignature = TensorTriple(const Tensor&, c10::SymIntArrayRef,
                                      const std::optional<Tensor>&,
                                      const std::optional<Tensor>&, double);
using PairsForwardSignature = TensorPair(const Tensor&, c10::SymIntArrayRef,
                                         const std::optional<Tensor>&,
                                         const std::optional<Tensor>&, double);
using BackwardSignature = TensorTriple(const Tensor&, const Tensor&, c10::SymIntArrayRef,
                                       const Tensor&, const Tensor&,
                                       const std::optional<Tensor>&,
                                       const std::optional<Tensor>&, std::array<bool, 3>);

}  // namespace

TensorTriple layer_norm_fwd(const Tensor& input,
                            c10::SymIntArrayRef normalized_shape,
                            const std::optional<Tensor>& weight,
                            const std::optional<Tensor>& bias, double eps) {
  static auto op = handle<ForwardSignature>("fastlayernorm::layer_norm_fwd");
  return op.call(input, normalized_shape, weight, bias, eps);
}

TensorPair layer_norm_fwd_pairs(const Tensor& input, c10::SymIntArrayRef normalized_shape,
                                const std::optional<Tensor>& weight,
                                const std::optional<Tensor>& bias, double eps) {
  static auto op = handle<PairsForwardSignature>("fastlayernorm::_layer_norm_fwd_pairs");
  return op.call(input, normalized_shape, weight, bias, eps);
}

TensorTriple layer_norm_bwd(const Tensor& grad_out, const Tensor& input,
                            c10::SymIntArrayRef normalized_shape,
                            const Tensor& mean, const Tensor& rstd,
                            const std::optional<Tensor>& weight,
                            const std::optional<Tensor>& bias,
                            std::array<bool, 3> output_mask) {
  static auto op = handle<BackwardSignature>("fastlayernorm::layer_norm_bwd");
  return op.call(grad_out, input, normalized_shape, mean, rstd, weight, bias,
                 output_mask);
}

TensorTriple layer_norm_bwd_from_output(const Tensor& grad_out,
                                        const Tensor& output,
                                        c10::SymIntArrayRef normalized_shape,
                                        const Tensor& rstd,
                                        const std::optional<Tensor>& weight,
                                        const std::optional<Tensor>& bias,
                                        std::array<bool, 3> output_mask) {
  static auto op = handle<TensorTriple(
      const Tensor&, const Tensor&, c10::SymIntArrayRef, const Tensor&,
      const std::optional<Tensor>&, const std::optional<Tensor>&,
      std::array<bool, 3>)>("fastlayernorm::layer_norm_bwd_from_output");
  return op.call(grad_out, output, normalized_shape, rstd, weight, bias,
                 output_mask);
}

Tensor layer_norm(const Tensor& input, c10::SymIntArrayRef normalized_shape,
                  const std::optional<Tensor>& weight,
                  const std::optional<Tensor>& bias, double eps,
                  bool memory_efficient) {
  static auto op =
      handle<Tensor(const Tensor&, c10::SymIntArrayRef,
                    const std::optional<Tensor>&, const std::optional<Tensor>&,
                    double, bool)>("fastlayernorm::layer_norm");
  return op.call(input, normalized_shape, weight, bias, eps, memory_efficient);
}

TensorPair layer_norm_fwd_upcast(const Tensor& input, c10::SymIntArrayRef normalized_shape,
                                 const std::optional<Tensor>& weight,
                                 const std::optional<Tensor>& bias, double eps) {
  static auto op = handle<PairsForwardSignature>("fastlayernorm::_layer_norm_fwd_upcast");
  return op.call(input, normalized_shape, weight, bias, eps);
}

TensorTriple layer_norm_bwd_upcast(const Tensor& grad_out, const Tensor& input,
                                   c10::SymIntArrayRef normalized_shape,
                                   const Tensor& mean, const Tensor& rstd,
                                   const std::optional<Tensor>& weight,
                                   const std::optional<Tensor>& bias,
                                   std::array<bool, 3> output_mask) {
  static auto op = handle<BackwardSignature>("fastlayernorm::_layer_norm_bwd_upcast");
  return op.call(grad_out, input, normalized_shape, mean, rstd, weight, bias,
                 output_mask);
}

Tensor layer_norm_upcast(const Tensor& input, c10::SymIntArrayRef normalized_shape,
                         const std::optional<Tensor>& weight,
                         const std::optional<Tensor>& bias, double eps) {
  static auto op =
      handle<Tensor(const Tensor&, c10::SymIntArrayRef,
                    const std::optional<Tensor>&, const std::optional<Tensor>&,
                    double)>("fastlayernorm::_layer_norm_upcast");
  return op.call(input, normalized_shape, weight, bias, eps);
}

}  // namespace fastlayernorm::ops
