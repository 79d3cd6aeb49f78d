// fastlayernorm C++ API: fastlayernorm::LayerNorm, a torch::nn module that is
// used like torch::nn::LayerNorm:
//
//   fastlayernorm::LayerNorm ln(fastlayernorm::LayerNormOptions({64}).eps(1e-5));
//   torch::Tensor y = ln(x);   // or ln->forward(x)
//
// Same options, parameter names ("weight", "bias"), initialization (ones and
// zeros) and serialization keys as torch::nn::LayerNorm, so state saved from
// one loads into the other.
#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/options/normalization.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <ostream>
#include <vector>

#include <fastlayernorm/functional.h>

namespace fastlayernorm {

/// Options of fastlayernorm::LayerNorm; the fields of
/// torch::nn::LayerNormOptions plus `bias` (as in Python's
/// nn.LayerNorm(bias=...)) and `memory_efficient`.
struct LayerNormOptions {
  /* implicit */ LayerNormOptions(std::vector<int64_t> normalized_shape);
  /// Takes over the fields of torch::nn::LayerNormOptions.
  explicit LayerNormOptions(const torch::nn::LayerNormOptions& options);

  /// The trailing shape of the input that is normalized.
  TORCH_ARG(std::vector<int64_t>, normalized_shape);
  /// Added to the variance for numerical stability. Default: 1e-5.
  TORCH_ARG(double, eps) = 1e-5;
  /// Whether the module has learnable per-element weight (initialized to
  /// ones) and bias (zeros). Default: true.
  TORCH_ARG(bool, elementwise_affine) = true;
  /// With elementwise_affine, whether there is a bias. Default: true.
  TORCH_ARG(bool, bias) = true;
  /// Backward rebuilds the normalized input from the output instead of
  /// keeping the input (see fastlayernorm::layer_norm). Default: false.
  TORCH_ARG(bool, memory_efficient) = false;
};

/// The implementation behind the fastlayernorm::LayerNorm module holder.
class LayerNormImpl : public torch::nn::Cloneable<LayerNormImpl> {
 public:
  LayerNormImpl(std::vector<int64_t> normalized_shape)
      : LayerNormImpl(LayerNormOptions(std::move(normalized_shape))) {}
  explicit LayerNormImpl(LayerNormOptions options_);

  /// (Re)creates the parameters and initializes them (ones / zeros).
  void reset() override;

  /// Sets weight to ones and bias to zeros.
  void reset_parameters();

  /// Prints e.g. `fastlayernorm::LayerNorm([64], eps=1e-05,
  /// elementwise_affine=true)`.
  void pretty_print(std::ostream& stream) const override;

  /// fastlayernorm::layer_norm(input, normalized_shape, weight, bias, eps,
  /// memory_efficient).
  at::Tensor forward(const at::Tensor& input);

  /// The options with which this module was constructed.
  LayerNormOptions options;

  /// The learned weight (undefined without elementwise_affine).
  at::Tensor weight;

  /// The learned bias (undefined without elementwise_affine or bias).
  at::Tensor bias;
};

/// A torch::nn::ModuleHolder of LayerNormImpl, as torch::nn::LayerNorm is of
/// torch::nn::LayerNormImpl.
TORCH_MODULE(LayerNorm);

}  // namespace fastlayernorm
