// CUDA backend: dtype dispatch and registration. The kernels are in
// forward.cuh / backward.cuh / fallback.cuh, the size tables in
// kernel_config.h, the launch logic in launch.cuh.
#include <torch/library.h>

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

}  // namespace

TORCH_LIBRARY_IMPL(fastlayernorm, CUDA, m) {
  impl_backend_ops<&forward_kernel, &backward_kernel>(m);
}

}  // namespace fastlayernorm
