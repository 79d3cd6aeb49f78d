// CUDA backend: dtype dispatch and registration. The kernels are in
// forward.cuh / backward.cuh / fallback.cuh, the size tables in
// kernel_config.h, the launch logic in launch.cuh.
#include <torch/library.h>

#include <ATen/ops/empty_like.h>

#include "../autocast/upcast_ops.h"
#include "../backend_ops.h"
#include "launchers.h"

namespace fastlayernorm {
namespace {

struct ForwardLauncher {
  template <typename T, typename W>
  static void run(const ForwardArgs& a) { cuda::launch_forward<T, W>(a); }
};
struct BackwardLauncher {
  template <typename T, typename W>
  static void run(const BackwardArgs& a) { cuda::launch_backward<T, W>(a); }
};

// Runs Launcher::run<T, W> for the input dtype T and the parameter dtype W:
// T, or float when half/bfloat16 input comes with float32 weight/bias.
template <typename Launcher, typename Args>
void dispatch_types(const Args& a) {
  const Tensor& param = a.weight.defined() ? a.weight : a.bias;
  const bool float_params = param.defined() && param.scalar_type() == at::kFloat;
  switch (a.input.scalar_type()) {
    case at::kFloat:
      return Launcher::template run<float, float>(a);
    case at::kDouble:
      return Launcher::template run<double, double>(a);
    case at::kHalf:
      return float_params ? Launcher::template run<c10::Half, float>(a)
                          : Launcher::template run<c10::Half, c10::Half>(a);
    case at::kBFloat16:
      return float_params ? Launcher::template run<c10::BFloat16, float>(a)
                          : Launcher::template run<c10::BFloat16, c10::BFloat16>(a);
    default:
      TORCH_CHECK(false, "fastlayernorm: unsupported input dtype ",
                  a.input.scalar_type(), " on CUDA");
  }
}

void forward_kernel(const ForwardArgs& a) { dispatch_types<ForwardLauncher>(a); }
void backward_kernel(const BackwardArgs& a) { dispatch_types<BackwardLauncher>(a); }

// The autocast path (autocast/upcast_ops.cpp): half/bfloat16 rows read in
// their dtype, float32 written. Rows no register kernel takes are widened
// first, as the composite kernel does.
void forward_upcast_kernel(const ForwardArgs& a) {
  const bool done = a.input.scalar_type() == at::kBFloat16
                        ? cuda::launch_forward_upcast<c10::BFloat16>(a)
                        : cuda::launch_forward_upcast<c10::Half>(a);
  if (done) return;
  ForwardArgs wide = a;
  wide.input = a.input.to(at::kFloat);
  cuda::launch_forward<float, float>(wide);
}

void backward_upcast_kernel(const BackwardArgs& a) {
  const bool done = a.input.scalar_type() == at::kBFloat16
                        ? cuda::launch_backward_upcast<c10::BFloat16>(a)
                        : cuda::launch_backward_upcast<c10::Half>(a);
  if (done) return;
  BackwardArgs wide = a;
  wide.input = a.input.to(at::kFloat);
  if (a.grad_input.defined()) wide.grad_input = at::empty_like(wide.input);
  cuda::launch_backward<float, float>(wide);
  if (a.grad_input.defined()) a.grad_input.copy_(wide.grad_input);
}

TensorPair layer_norm_fwd_upcast_cuda(const Tensor& input, c10::SymIntArrayRef normalized_shape,
                                      const std::optional<Tensor>& weight,
                                      const std::optional<Tensor>& bias, double eps) {
  check_upcast_args(input, weight, bias);
  return run_forward(input, normalized_shape, weight, bias, eps, &forward_upcast_kernel,
                     at::kFloat);
}

TensorTriple layer_norm_bwd_upcast_cuda(const Tensor& grad_out, const Tensor& input,
                                        c10::SymIntArrayRef normalized_shape,
                                        const Tensor& mean, const Tensor& rstd,
                                        const std::optional<Tensor>& weight,
                                        const std::optional<Tensor>& bias,
                                        std::array<bool, 3> output_mask) {
  check_upcast_args(input, weight, bias);
  return run_backward(grad_out, input, normalized_shape, mean, rstd, weight, bias,
                      output_mask, &backward_upcast_kernel, /*float_grad_ok=*/true);
}

// fastlayernorm::layer_norm / _layer_norm_upcast below autograd (inference
// mode, or a call no graph records: layer_norm_autograd.cpp): the output
// only, mean and rstd neither allocated nor stored (forward.cuh's null
// statistics pointers; docs/kernels.md, session 29; the shifted rows'
// kernels get scratch ones, launch.cuh).
Tensor layer_norm_inference_cuda(const Tensor& input, c10::SymIntArrayRef normalized_shape,
                                 const std::optional<Tensor>& weight,
                                 const std::optional<Tensor>& bias, double eps,
                                 bool /*memory_efficient*/) {
  return std::get<0>(run_forward(input, normalized_shape, weight, bias, eps, &forward_kernel,
                                 std::nullopt, /*with_stats=*/false));
}

Tensor layer_norm_upcast_inference_cuda(const Tensor& input,
                                        c10::SymIntArrayRef normalized_shape,
                                        const std::optional<Tensor>& weight,
                                        const std::optional<Tensor>& bias, double eps) {
  check_upcast_args(input, weight, bias);
  return std::get<0>(run_forward(input, normalized_shape, weight, bias, eps,
                                 &forward_upcast_kernel, at::kFloat, /*with_stats=*/false));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlayernorm, CUDA, m) {
  impl_backend_ops<&forward_kernel, &backward_kernel>(m);
  m.impl("_layer_norm_fwd_upcast", &layer_norm_fwd_upcast_cuda);
  m.impl("_layer_norm_bwd_upcast", &layer_norm_bwd_upcast_cuda);
  m.impl("layer_norm", &layer_norm_inference_cuda);
  m.impl("_layer_norm_upcast", &layer_norm_upcast_inference_cuda);
}

}  // namespace fastlayernorm
