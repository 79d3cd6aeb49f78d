// fastlayernorm::LayerNorm (include/fastlayernorm/modules.h), modelled on
// torch::nn::LayerNormImpl.
//
// csrc/api/ belongs to the CMake-built C++ library only; in the Python
// extension build (TORCH_EXTENSION_NAME defined) this file compiles to nothing.
#ifndef TORCH_EXTENSION_NAME

#include <fastlayernorm/modules.h>

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/nn/init.h>

namespace fastlayernorm {

LayerNormOptions::LayerNormOptions(std::vector<int64_t> normalized_shape)
    : normalized_shape_(std::move(normalized_shape)) {}

LayerNormOptions::LayerNormOptions(const torch::nn::LayerNormOptions& options)
    : normalized_shape_(options.normalized_shape()),
      eps_(options.eps()),
      elementwise_affine_(options.elementwise_affine()) {}

LayerNormImpl::LayerNormImpl(LayerNormOptions options_)
    : options(std::move(options_)) {
  // NOLINTNEXTLINE(clang-analyzer-optin.cplusplus.VirtualCall)
  reset();
}

void LayerNormImpl::reset() {
  const auto& shape = options.normalized_shape();
  if (options.elementwise_affine()) {
    weight = register_parameter("weight", torch::empty(shape));
  } else {
    weight = register_parameter("weight", torch::Tensor(),
                                /*requires_grad=*/false);
  }
  if (options.elementwise_affine() && options.bias()) {
    bias = register_parameter("bias", torch::empty(shape));
  } else {
    bias = register_parameter("bias", torch::Tensor(),
                              /*requires_grad=*/false);
  }
  reset_parameters();
}

void LayerNormImpl::reset_parameters() {
  if (weight.defined()) torch::nn::init::ones_(weight);
  if (bias.defined()) torch::nn::init::zeros_(bias);
}

void LayerNormImpl::pretty_print(std::ostream& stream) const {
  stream << std::boolalpha << "fastlayernorm::LayerNorm("
         << at::IntArrayRef(options.normalized_shape())
         << ", eps=" << options.eps()
         << ", elementwise_affine=" << options.elementwise_affine();
  if (options.elementwise_affine() && !options.bias()) stream << ", bias=false";
  if (options.memory_efficient()) stream << ", memory_efficient=true";
  stream << ")";
}

at::Tensor LayerNormImpl::forward(const at::Tensor& input) {
  return fastlayernorm::layer_norm(input, options.normalized_shape(), weight,
                                   bias, options.eps(),
                                   options.memory_efficient());
}

}  // namespace fastlayernorm

#endif  // TORCH_EXTENSION_NAME
