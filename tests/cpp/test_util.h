// Helpers shared by the C++ API tests.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fastlayernorm/layer_norm.h>

#include <initializer_list>
#include <string>
#include <vector>

namespace fastlayernorm_test {

// The devices to test: CPU, and CUDA when a device is there and the library
// has CUDA kernels.
inline std::vector<torch::Device> devices() {
  std::vector<torch::Device> result{torch::kCPU};
  if (torch::cuda::is_available() && fastlayernorm::cuda_built()) {
    result.emplace_back(torch::kCUDA);
  }
  return result;
}

inline double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.numel() == 0) return 0.0;
  return (a.detach().cpu().to(torch::kDouble) - b.detach().cpu().to(torch::kDouble))
      .abs()
      .max()
      .item<double>();
}

// allclose on CPU in float64, with the largest difference in the message.
inline ::testing::AssertionResult close(const torch::Tensor& actual,
                                        const torch::Tensor& expected,
                                        double rtol, double atol) {
  if (!actual.defined() || !expected.defined()) {
    return ::testing::AssertionFailure()
           << "undefined tensor (actual " << actual.defined() << ", expected "
           << expected.defined() << ")";
  }
  if (actual.sizes() != expected.sizes()) {
    return ::testing::AssertionFailure() << "shape " << actual.sizes()
                                         << " != expected " << expected.sizes();
  }
  const auto a = actual.detach().cpu().to(torch::kDouble);
  const auto e = expected.detach().cpu().to(torch::kDouble);
  if (torch::allclose(a, e, rtol, atol, /*equal_nan=*/true)) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << "max abs difference " << max_abs_diff(a, e) << " (rtol " << rtol
         << ", atol " << atol << ")";
}

// Runs `fn`, expects a c10::Error (or subclass E) whose message contains
// every one of `parts`.
template <typename E = c10::Error, typename Fn>
::testing::AssertionResult throws_with(Fn&& fn,
                                       std::initializer_list<const char*> parts) {
  try {
    fn();
  } catch (const E& e) {
    const std::string msg = e.what_without_backtrace();
    for (const char* part : parts) {
      if (msg.find(part) == std::string::npos) {
        return ::testing::AssertionFailure()
               << "message lacks \"" << part << "\": " << msg;
      }
    }
    return ::testing::AssertionSuccess();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure()
           << "threw another exception type: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw";
}

}  // namespace fastlayernorm_test
