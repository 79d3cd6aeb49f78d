// fastlayernorm::layer_norm (the C++ API function) against torch::layer_norm:
// forward and backward on CPU (and CUDA when available), over shapes with odd
// sizes and multi-dimensional normalized_shape, every affine mode, both
// backward modes and the floating-point dtypes; and its error messages.
#include "test_util.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <sstream>
#include <tuple>

namespace {

using fastlayernorm_test::close;
using fastlayernorm_test::devices;
using fastlayernorm_test::throws_with;

struct ShapeCase {
  std::vector<int64_t> input;
  std::vector<int64_t> normalized;
};

const std::vector<ShapeCase> kShapes = {
    {{5, 33}, {33}},              // odd rows and N
    {{3, 5, 4, 6}, {4, 6}},       // two normalized dims
    {{2, 3, 127}, {3, 127}},      // odd, two normalized dims
    {{7, 1}, {1}},                // N = 1: zero variance
    {{1, 1025}, {1025}},          // one row, odd N past a vector multiple
    {{3, 4097}, {4097}},          // large odd N
    {{11}, {11}},                 // 1-D input
    {{0, 8}, {8}},                // empty batch
};

enum class Affine { kNone, kWeight, kBias, kBoth };

std::string affine_name(Affine a) {
  switch (a) {
    case Affine::kNone: return "NoAffine";
    case Affine::kWeight: return "WeightOnly";
    case Affine::kBias: return "BiasOnly";
    case Affine::kBoth: return "WeightBias";
  }
  return "?";
}

int64_t rows_of(const ShapeCase& s) {
  int64_t rows = 1;
  for (size_t i = 0; i + s.normalized.size() < s.input.size(); ++i) {
    rows *= s.input[i];
  }
  return rows;
}

struct Tolerance {
  double rtol, atol;
};

// (shape index, affine mode, memory_efficient, dtype)
using Param = std::tuple<size_t, Affine, bool, torch::Dtype>;

class LayerNormFunction : public ::testing::TestWithParam<Param> {};

TEST_P(LayerNormFunction, MatchesTorchLayerNorm) {
  const auto [shape_index, affine, memory_efficient, dtype] = GetParam();
  const ShapeCase& shape = kShapes[shape_index];
  const bool low_precision = dtype == torch::kHalf || dtype == torch::kBFloat16;
  // Low-precision inputs take float32 parameters (the usual mixed setup).
  const auto param_dtype = low_precision ? torch::kFloat : dtype;
  const double eps = 1e-5;

  // Output and input-gradient tolerances; the parameter gradients are sums
  // over the rows, so theirs grow with the row count.
  Tolerance tol{1e-4, 1e-4};
  if (dtype == torch::kDouble) tol = {1e-9, 1e-9};
  if (dtype == torch::kHalf) tol = {1e-2, 1e-2};
  if (dtype == torch::kBFloat16) tol = {2e-2, 5e-2};
  const double row_scale = std::sqrt(static_cast<double>(std::max<int64_t>(rows_of(shape), 1)));
  const Tolerance param_tol{tol.rtol, tol.atol * row_scale * (memory_efficient ? 4 : 1)};

  for (const auto& device : devices()) {
    SCOPED_TRACE(device.str());
    torch::manual_seed(1234);
    // Rounded to `dtype` first, so that the float64 reference sees the same
    // values as the kernel.
    const auto x_data = (torch::randn(shape.input) * 3 + 1).to(dtype);
    const auto grad_data = torch::randn(shape.input).to(dtype);
    // Weights away from zero: memory_efficient divides by them.
    auto w_data = (torch::rand(shape.normalized) + 0.5).to(param_dtype);
    w_data = torch::where(torch::rand(shape.normalized) < 0.5, -w_data, w_data);
    const auto b_data = torch::randn(shape.normalized).to(param_dtype);
    const bool has_w = affine == Affine::kWeight || affine == Affine::kBoth;
    const bool has_b = affine == Affine::kBias || affine == Affine::kBoth;

    // fastlayernorm on `device`.
    // (copies: .to() returns the tensor itself when nothing changes)
    auto x = x_data.to(device, /*non_blocking=*/false, /*copy=*/true).requires_grad_();
    auto w = has_w ? w_data.to(device, false, true).requires_grad_() : torch::Tensor();
    auto b = has_b ? b_data.to(device, false, true).requires_grad_() : torch::Tensor();
    std::optional<torch::Tensor> w_opt, b_opt;
    if (has_w) w_opt = w;
    if (has_b) b_opt = b;
    auto y = fastlayernorm::layer_norm(x, shape.normalized, w_opt, b_opt, eps,
                                       memory_efficient);
    EXPECT_EQ(y.device().type(), device.type());
    EXPECT_EQ(y.scalar_type(), dtype);
    EXPECT_EQ(y.sizes(), x.sizes());
    ASSERT_TRUE(y.requires_grad());
    y.backward(grad_data.to(device));

    // torch::layer_norm in float64 on CPU.
    auto xr = x_data.to(torch::kDouble, false, true).requires_grad_();
    auto wr = has_w ? w_data.to(torch::kDouble, false, true).requires_grad_() : torch::Tensor();
    auto br = has_b ? b_data.to(torch::kDouble, false, true).requires_grad_() : torch::Tensor();
    auto yr = torch::layer_norm(xr, shape.normalized, wr, br, eps);
    yr.backward(grad_data.to(torch::kDouble));

    EXPECT_TRUE(close(y, yr, tol.rtol, tol.atol)) << "output";
    EXPECT_TRUE(close(x.grad(), xr.grad(), tol.rtol, tol.atol * 2)) << "grad input";
    if (has_w) {
      EXPECT_EQ(w.grad().scalar_type(), param_dtype);
      EXPECT_TRUE(close(w.grad(), wr.grad(), param_tol.rtol, param_tol.atol)) << "grad weight";
    }
    if (has_b) {
      EXPECT_TRUE(close(b.grad(), br.grad(), param_tol.rtol, param_tol.atol)) << "grad bias";
    }
  }
}

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  const auto [shape_index, affine, memory_efficient, dtype] = info.param;
  std::ostringstream name;
  name << "Shape" << shape_index << "_" << affine_name(affine)
       << (memory_efficient ? "_MemoryEfficient" : "") << "_"
       << c10::toString(dtype);
  return name.str();
}

INSTANTIATE_TEST_SUITE_P(
    AllCases, LayerNormFunction,
    ::testing::Combine(::testing::Range<size_t>(0, kShapes.size()),
                       ::testing::Values(Affine::kNone, Affine::kWeight,
                                         Affine::kBias, Affine::kBoth),
                       ::testing::Bool(),
                       ::testing::Values(torch::kFloat, torch::kDouble,
                                         torch::kHalf, torch::kBFloat16)),
    param_name);

// Same-dtype low-precision parameters (bfloat16 weight for bfloat16 input).
TEST(LayerNormFunctionMisc, LowPrecisionParameters) {
  for (const auto& device : devices()) {
    SCOPED_TRACE(device.str());
    const auto opts = torch::TensorOptions().dtype(torch::kBFloat16).device(device);
    auto x = torch::randn({6, 40}, opts).requires_grad_();
    auto w = (torch::rand({40}, opts) + 0.5).requires_grad_();
    auto b = torch::randn({40}, opts).requires_grad_();
    auto y = fastlayernorm::layer_norm(x, {40}, w, b);
    auto yr = torch::layer_norm(x.detach().to(torch::kDouble), {40},
                                w.detach().to(torch::kDouble),
                                b.detach().to(torch::kDouble), 1e-5);
    EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
    EXPECT_TRUE(close(y, yr, 2e-2, 5e-2));
    y.sum().backward();
    EXPECT_EQ(w.grad().scalar_type(), torch::kBFloat16);
  }
}

TEST(LayerNormFunctionMisc, DefaultArguments) {
  auto x = torch::randn({4, 9});
  EXPECT_TRUE(close(fastlayernorm::layer_norm(x, {9}),
                    torch::layer_norm(x, {9}), 1e-5, 1e-5));
  // An undefined tensor is an absent parameter, as None in Python.
  EXPECT_TRUE(close(fastlayernorm::layer_norm(x, {9}, torch::Tensor(), {}),
                    torch::layer_norm(x, {9}), 1e-5, 1e-5));
  EXPECT_TRUE(close(fastlayernorm::layer_norm(x, {9}, {}, {}, 0.5),
                    torch::layer_norm(x, {9}, {}, {}, 0.5), 1e-5, 1e-5));
}

TEST(LayerNormFunctionMisc, NonContiguousInput) {
  auto base = torch::randn({8, 20});
  auto x = base.t();  // 20 x 8, not contiguous
  auto w = torch::randn({8});
  EXPECT_TRUE(close(fastlayernorm::layer_norm(x, {8}, w),
                    torch::layer_norm(x, {8}, w), 1e-5, 1e-5));
}

TEST(LayerNormFunctionMisc, GoesThroughTheDispatcher) {
  EXPECT_TRUE(c10::Dispatcher::singleton()
                  .findSchema({"fastlayernorm::layer_norm", ""})
                  .has_value());
  auto x = torch::randn({3, 5}, torch::requires_grad());
  auto y = fastlayernorm::layer_norm(x, {5});
  ASSERT_TRUE(y.grad_fn());
  {
    torch::NoGradGuard no_grad;
    EXPECT_FALSE(fastlayernorm::layer_norm(x, {5}).requires_grad());
  }
  {
    c10::InferenceMode inference;
    auto z = fastlayernorm::layer_norm(torch::randn({3, 5}), {5});
    EXPECT_TRUE(z.is_inference());
  }
  // Meta tensors: shapes without computing.
  auto m = fastlayernorm::layer_norm(torch::empty({2, 7, 3}, torch::kMeta), {7, 3});
  EXPECT_TRUE(m.is_meta());
  EXPECT_EQ(m.sizes(), torch::IntArrayRef({2, 7, 3}));
}

// ---------------------------------------------------------------------------
// Bad input: c10::Error naming the problem.

TEST(LayerNormErrors, NormalizedShapeMismatch) {
  auto x = torch::randn({4, 5});
  EXPECT_TRUE(throws_with([&] { fastlayernorm::layer_norm(x, {6}); },
                          {"fastlayernorm", "normalized_shape", "[4, 5]"}));
  EXPECT_TRUE(throws_with([&] { fastlayernorm::layer_norm(x, {2, 4, 5}); },
                          {"fastlayernorm", "normalized_shape"}));
}

TEST(LayerNormErrors, EmptyNormalizedShape) {
  auto x = torch::randn({4, 5});
  EXPECT_TRUE(throws_with<c10::ValueError>(
      [&] { fastlayernorm::layer_norm(x, {}); },
      {"fastlayernorm", "normalized_shape"}));
}

TEST(LayerNormErrors, WeightShape) {
  auto x = torch::randn({4, 5});
  EXPECT_TRUE(throws_with([&] { fastlayernorm::layer_norm(x, {5}, torch::ones({4})); },
                          {"fastlayernorm", "weight", "shape"}));
  EXPECT_TRUE(throws_with(
      [&] { fastlayernorm::layer_norm(x, {5}, torch::ones({5}), torch::zeros({5, 1})); },
      {"fastlayernorm", "bias", "shape"}));
}

TEST(LayerNormErrors, Dtypes) {
  EXPECT_TRUE(throws_with(
      [&] { fastlayernorm::layer_norm(torch::ones({4, 5}, torch::kLong), {5}); },
      {"fastlayernorm", "dtype", "Long"}));
  EXPECT_TRUE(throws_with(
      [&] {
        fastlayernorm::layer_norm(torch::randn({4, 5}), {5},
                                  torch::ones({5}, torch::kDouble));
      },
      {"fastlayernorm", "weight", "dtype", "Double"}));
}

TEST(LayerNormErrors, Eps) {
  auto x = torch::randn({4, 5});
  EXPECT_TRUE(throws_with<c10::ValueError>(
      [&] { fastlayernorm::layer_norm(x, {5}, {}, {}, -1.0); },
      {"fastlayernorm", "eps"}));
}

TEST(LayerNormErrors, UndefinedInput) {
  EXPECT_TRUE(throws_with([&] { fastlayernorm::layer_norm(torch::Tensor(), {5}); },
                          {"fastlayernorm", "undefined"}));
}

TEST(LayerNormErrors, WeightOnAnotherDevice) {
  if (!torch::cuda::is_available() || !fastlayernorm::cuda_built()) {
    GTEST_SKIP() << "needs a CUDA device and the CUDA kernels";
  }
  auto x = torch::randn({4, 5}, torch::kCUDA);
  EXPECT_TRUE(throws_with([&] { fastlayernorm::layer_norm(x, {5}, torch::ones({5})); },
                          {"fastlayernorm", "weight", "device"}));
}

}  // namespace
