// fastlayernorm from C++: the module and the function, forward and backward,
// checked against torch's own LayerNorm.
#include <fastlayernorm/layer_norm.h>
#include <torch/torch.h>

#include <iostream>

int main() {
  torch::manual_seed(0);
  const torch::Device device =
      torch::cuda::is_available() && fastlayernorm::cuda_built() ? torch::kCUDA
                                                                 : torch::kCPU;

  // The module, used like torch::nn::LayerNorm.
  fastlayernorm::LayerNorm ln(fastlayernorm::LayerNormOptions({64}).eps(1e-5));
  ln->to(device);
  auto x = torch::randn({8, 64}, device).requires_grad_();
  auto y = ln(x);
  y.pow(2).sum().backward();

  // The function, with explicit parameters.
  auto z = fastlayernorm::layer_norm(x, {64}, ln->weight, ln->bias, 1e-5);

  // torch's LayerNorm gives the same.
  auto x_ref = x.detach().clone().requires_grad_();
  auto y_ref = torch::layer_norm(x_ref, {64}, ln->weight, ln->bias, 1e-5);
  y_ref.pow(2).sum().backward();

  const bool ok = torch::allclose(y, y_ref, 1e-4, 1e-5) &&
                  torch::allclose(z, y_ref, 1e-4, 1e-5) &&
                  torch::allclose(x.grad(), x_ref.grad(), 1e-4, 1e-4);
  std::cout << *ln << " on " << device << ": output " << y.sizes()
            << (ok ? ", matches torch::layer_norm" : ", MISMATCH") << std::endl;
  return ok ? 0 : 1;
}
