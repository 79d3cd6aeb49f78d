// The operator schemas of fastlayernorm, defined once. They mirror
// aten::native_layer_norm / aten::native_layer_norm_backward.
#include <torch/library.h>

namespace fastlayernorm {

// The build defines FASTLAYERNORM_WITH_CUDA when it compiles cuda/.
static bool cuda_kernels_built() {
#ifdef FASTLAYERNORM_WITH_CUDA
  return true;
#else
  return false;
#endif
}

TORCH_LIBRARY(fastlayernorm, m) {
  // Returns (output, mean, rstd); mean/rstd are float32 (float64 for float64
  // input) with the input's shape where the normalized dims are 1.
  m.def(
      "layer_norm_fwd(Tensor input, SymInt[] normalized_shape, Tensor? weight, "
      "Tensor? bias, float eps) -> (Tensor, Tensor, Tensor)");
  // Returns (grad_input, grad_weight, grad_bias); an entry whose output_mask
  // is false (or whose parameter is absent) is undefined (None).
  m.def(
      "layer_norm_bwd(Tensor grad_out, Tensor input, SymInt[] normalized_shape, "
      "Tensor mean, Tensor rstd, Tensor? weight, Tensor? bias, bool[3] "
      "output_mask) -> (Tensor, Tensor, Tensor)");
  // layer_norm_fwd with the statistics as one tensor of (mean, rstd) pairs,
  // the stats shape with a trailing 2 (internal: what layer_norm's autograd
  // node saves, stored by one 8-byte store per row on CUDA).
  m.def(
      "_layer_norm_fwd_pairs(Tensor input, SymInt[] normalized_shape, Tensor? weight, "
      "Tensor? bias, float eps) -> (Tensor, Tensor)");
  // Memory-saving backward: rebuilds the normalized input from the forward's
  // output (x_hat = (output - bias) / weight), so the input need not be kept.
  m.def(
      "layer_norm_bwd_from_output(Tensor grad_out, Tensor output, SymInt[] "
      "normalized_shape, Tensor rstd, Tensor? weight, Tensor? bias, bool[3] "
      "output_mask) -> (Tensor, Tensor, Tensor)");
  // The differentiable entry point, same arguments as F.layer_norm.
  m.def(
      "layer_norm(Tensor input, SymInt[] normalized_shape, Tensor? weight=None, "
      "Tensor? bias=None, float eps=1e-05, bool memory_efficient=False) -> Tensor");
  // Autocast's float32 path without widening the input first (internal):
  // half/bfloat16 input, float32 (or no) weight/bias; the output, mean, rstd
  // are float32 (the forward returns them as _layer_norm_fwd_pairs does); the
  // backward takes a float32 grad_out and returns grad_input in the input's
  // dtype. _layer_norm_upcast is the differentiable one.
  m.def(
      "_layer_norm_fwd_upcast(Tensor input, SymInt[] normalized_shape, Tensor? "
      "weight, Tensor? bias, float eps) -> (Tensor, Tensor)");
  m.def(
      "_layer_norm_bwd_upcast(Tensor grad_out, Tensor input, SymInt[] "
      "normalized_shape, Tensor mean, Tensor rstd, Tensor? weight, Tensor? bias, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def(
      "_layer_norm_upcast(Tensor input, SymInt[] normalized_shape, Tensor? "
      "weight=None, Tensor? bias=None, float eps=1e-05) -> Tensor");
  // Whether this build carries the CUDA kernels.
  m.def("_cuda_built() -> bool", &cuda_kernels_built);
}

}  // namespace fastlayernorm
