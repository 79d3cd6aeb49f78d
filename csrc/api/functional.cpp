// The C++ API function fastlayernorm::layer_norm (include/fastlayernorm/
// functional.h): a thin wrapper that calls the registered operator through
// the dispatcher.
//
// csrc/api/ belongs to the CMake-built C++ library only. setup.py compiles
// every csrc/**/*.cpp into the Python extension, which defines
// TORCH_EXTENSION_NAME; there these files compile to nothing.
#ifndef TORCH_EXTENSION_NAME

#include <fastlayernorm/functional.h>

#include <c10/util/Exception.h>

#include "../ops.h"

namespace fastlayernorm {
namespace {

// An undefined tensor means "absent", as None does in Python.
std::optional<at::Tensor> present_or_none(const std::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined()) ? t : std::nullopt;
}

}  // namespace

at::Tensor layer_norm(const at::Tensor& input, at::IntArrayRef normalized_shape,
                      const std::optional<at::Tensor>& weight,
                      const std::optional<at::Tensor>& bias, double eps,
                      bool memory_efficient) {
  // Without a device the dispatcher could only say "tensor does not have a
  // device".
  TORCH_CHECK(input.defined(),
              "fastlayernorm: expected a defined input tensor, but got an "
              "undefined one");
  return ops::layer_norm(input, c10::fromIntArrayRefSlow(normalized_shape),
                         present_or_none(weight), present_or_none(bias), eps,
                         memory_efficient);
}

bool cuda_built() {
#ifdef FASTLAYERNORM_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace fastlayernorm

#endif  // TORCH_EXTENSION_NAME
