// CUDA backend: dtype dispatch and registration. The kernels are in
// forward.cuh / backward.cuh / fallback.cuh, the size tables in
// kernel_config.h, the launch logic in launch.cuh.
#include <torch/library.h>

#include "../layer_norm.h"
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

TensorTriple layer_norm_fwd_cuda(const Tensor& input,
                                 c10::SymIntArrayRef normalized_shape,
                                 const std::optional<Tensor>& weight,
                                 const std::optional<Tensor>& bias, double eps) {
  return run_forward(input, normalized_shape, weight, bias, eps, &forward_kernel);
}

TensorTriple layer_norm_bwd_cuda(const Tensor& grad_out, const Tensor& input,
                                 c10::SymIntArrayRef normalized_shape,
                                 const Tensor& mean, const Tensor& rstd,
                                 const std::optional<Tensor>& weight,
                                 const std::optional<Tensor>& bias,
                                 std::array<bool, 3> output_mask) {
  return run_backward(grad_out, input, normalized_shape, mean, rstd, weight,
                      bias, output_mask, &backward_kernel);
}

TensorTriple layer_norm_bwd_from_output_cuda(
    const Tensor& grad_out, const Tensor& output,
    c10::SymIntArrayRef normalized_shape, const Tensor& rstd,
    const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
    std::array<bool, 3> output_mask) {
  return run_backward(grad_out, output, normalized_shape, std::nullopt, rstd,
                      weight, bias, output_mask, &backward_kernel);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlayernorm, CUDA, m) {
  m.impl("layer_norm_fwd", &layer_norm_fwd_cuda);
  m.impl("layer_norm_bwd", &layer_norm_bwd_cuda);
  m.impl("layer_norm_bwd_from_output", &layer_norm_bwd_from_output_cuda);
}

}  // namespace fastlayernorm
