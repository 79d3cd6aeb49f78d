// Runs a TorchScript model scripted from Python's fastlayernorm.LayerNorm
// (saved by make_scripted_model.py, path in $FASTLAYERNORM_SCRIPTED_MODEL):
// forward and backward, against the values Python saved with the model.
//
// This program uses no fastlayernorm header or symbol: it links LibTorch and
// fastlayernorm::fastlayernorm only, and the operators must be registered by
// loading the library.
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/script.h>

#include <cstdlib>
#include <string>

namespace {

std::string model_path() {
  const char* path = std::getenv("FASTLAYERNORM_SCRIPTED_MODEL");
  return path ? path : "";
}

// Calls the registered op fastlayernorm::_cuda_built through the dispatcher.
bool cuda_kernels_built() {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow("fastlayernorm::_cuda_built", "")
      .typed<bool()>()
      .call();
}

at::Tensor buffer(const torch::jit::Module& m, const std::string& name) {
  return m.attr(name).toTensor();
}

at::Tensor parameter(const torch::jit::Module& m, const std::string& name) {
  for (const auto& p : m.named_parameters()) {
    if (p.name == name) return p.value;
  }
  ADD_FAILURE() << "no parameter " << name;
  return {};
}

void expect_close(const at::Tensor& actual, const at::Tensor& expected,
                  const std::string& what, double rtol = 1e-4,
                  double atol = 1e-4) {
  ASSERT_TRUE(actual.defined()) << what << " is undefined";
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  const auto a = actual.detach().to(torch::kCPU, torch::kFloat);
  EXPECT_TRUE(torch::allclose(a, expected, rtol, atol))
      << what << ": max abs difference "
      << (a - expected).abs().max().item<double>();
}

// forward or forward_me of the model on `device`, then backward.
void run_case(torch::jit::Module model, const std::string& method,
              const std::string& suffix, const std::string& submodule,
              const torch::Device& device) {
  model.to(device);
  const auto x = buffer(model, "x" + suffix).clone().requires_grad_();
  const auto y = model.get_method(method)({x}).toTensor();
  EXPECT_EQ(y.device().type(), device.type());
  expect_close(y, buffer(model, "expected_y" + suffix).cpu(), method + " output",
               1e-4, 1e-5);
  y.backward(buffer(model, "grad_out" + suffix));
  expect_close(x.grad(), buffer(model, "expected_dx" + suffix).cpu(),
               method + " grad input");
  expect_close(parameter(model, submodule + ".weight").grad(),
               buffer(model, "expected_dweight" + suffix).cpu(),
               method + " grad weight");
  expect_close(parameter(model, submodule + ".bias").grad(),
               buffer(model, "expected_dbias" + suffix).cpu(),
               method + " grad bias");
}

class ScriptedModel : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string path = model_path();
    ASSERT_FALSE(path.empty())
        << "FASTLAYERNORM_SCRIPTED_MODEL is not set (ctest sets it)";
    model_ = torch::jit::load(path);
  }
  torch::jit::Module model_;
};

TEST_F(ScriptedModel, OperatorsRegisteredByLinking) {
  EXPECT_TRUE(c10::Dispatcher::singleton()
                  .findSchema({"fastlayernorm::layer_norm", ""})
                  .has_value());
  const auto graph =
      model_.attr("ln").toModule().get_method("forward").graph()->toString();
  EXPECT_NE(graph.find("fastlayernorm::layer_norm"), std::string::npos)
      << graph;
}

TEST_F(ScriptedModel, ForwardBackwardCPU) {
  run_case(model_, "forward", "", "ln", torch::kCPU);
}

TEST_F(ScriptedModel, MemoryEfficientForwardBackwardCPU) {
  run_case(model_, "forward_me", "_me", "ln_me", torch::kCPU);
}

TEST_F(ScriptedModel, ForwardBackwardCUDA) {
  if (!torch::cuda::is_available() || !cuda_kernels_built()) {
    GTEST_SKIP() << "needs a CUDA device and the CUDA kernels";
  }
  run_case(model_, "forward", "", "ln", torch::kCUDA);
  run_case(model_, "forward_me", "_me", "ln_me", torch::kCUDA);
}

TEST_F(ScriptedModel, InferenceMode) {
  c10::InferenceMode guard;
  const auto y = model_.forward({buffer(model_, "x")}).toTensor();
  expect_close(y, buffer(model_, "expected_y"), "output", 1e-4, 1e-5);
}

}  // namespace
