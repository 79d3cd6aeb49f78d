// fastlayernorm::LayerNorm, the torch::nn module, against torch::nn::LayerNorm.
#include "test_util.h"

#include <sstream>

namespace {

using fastlayernorm_test::close;
using fastlayernorm_test::devices;
using fastlayernorm_test::throws_with;

// Copies the parameters of `from` into `to` by name.
void copy_parameters(const torch::nn::Module& from, torch::nn::Module& to) {
  torch::NoGradGuard no_grad;
  auto dst = to.named_parameters();
  for (const auto& p : from.named_parameters()) {
    ASSERT_TRUE(dst.contains(p.key())) << p.key();
    dst[p.key()].copy_(p.value());
  }
}

TEST(LayerNormModule, UsedLikeTorchNn) {
  // The snippet of docs/cpp.md.
  fastlayernorm::LayerNorm ln(fastlayernorm::LayerNormOptions({64}).eps(1e-5));
  auto x = torch::randn({8, 64});
  auto y = ln(x);
  EXPECT_EQ(y.sizes(), x.sizes());

  const auto params = ln->named_parameters();
  ASSERT_EQ(params.size(), 2u);
  EXPECT_TRUE(params.contains("weight"));
  EXPECT_TRUE(params.contains("bias"));
  EXPECT_TRUE(torch::equal(ln->weight, torch::ones({64})));
  EXPECT_TRUE(torch::equal(ln->bias, torch::zeros({64})));
  EXPECT_EQ(ln->options.normalized_shape(), std::vector<int64_t>({64}));
  EXPECT_DOUBLE_EQ(ln->options.eps(), 1e-5);
  EXPECT_TRUE(ln->options.elementwise_affine());
}

TEST(LayerNormModule, MatchesTorchNnForwardBackward) {
  for (const auto& device : devices()) {
    for (bool memory_efficient : {false, true}) {
      SCOPED_TRACE(device.str() + (memory_efficient ? " memory_efficient" : ""));
      torch::manual_seed(0);
      torch::nn::LayerNorm ref(torch::nn::LayerNormOptions({6, 10}).eps(1e-6));
      fastlayernorm::LayerNorm ln(
          fastlayernorm::LayerNormOptions({6, 10}).eps(1e-6).memory_efficient(memory_efficient));
      {
        torch::NoGradGuard no_grad;
        ref->weight.copy_(torch::rand({6, 10}) + 0.5);
        ref->bias.copy_(torch::randn({6, 10}));
      }
      copy_parameters(*ref, *ln);
      ref->to(device);
      ln->to(device);

      const auto x_data = torch::randn({3, 7, 6, 10}, device) * 2 - 1;
      const auto g = torch::randn({3, 7, 6, 10}, device);
      auto x = x_data.clone().requires_grad_();
      auto xr = x_data.clone().requires_grad_();
      auto y = ln(x);
      auto yr = ref(xr);
      EXPECT_TRUE(close(y, yr, 1e-4, 1e-5));
      y.backward(g);
      yr.backward(g);
      EXPECT_TRUE(close(x.grad(), xr.grad(), 1e-4, 1e-4));
      EXPECT_TRUE(close(ln->weight.grad(), ref->weight.grad(), 1e-4, 1e-3));
      EXPECT_TRUE(close(ln->bias.grad(), ref->bias.grad(), 1e-4, 1e-3));
    }
  }
}

TEST(LayerNormModule, WithoutAffine) {
  fastlayernorm::LayerNorm ln(fastlayernorm::LayerNormOptions({5, 3}).elementwise_affine(false));
  EXPECT_TRUE(ln->parameters().empty());
  EXPECT_FALSE(ln->weight.defined());
  EXPECT_FALSE(ln->bias.defined());
  auto x = torch::randn({7, 5, 3}, torch::requires_grad());
  auto y = ln(x);
  EXPECT_TRUE(close(y, torch::layer_norm(x, {5, 3}), 1e-5, 1e-5));
  y.sum().backward();
  EXPECT_TRUE(x.grad().defined());
}

TEST(LayerNormModule, WithoutBias) {
  fastlayernorm::LayerNorm ln(fastlayernorm::LayerNormOptions({9}).bias(false));
  const auto params = ln->named_parameters();
  ASSERT_EQ(params.size(), 1u);
  EXPECT_TRUE(params.contains("weight"));
  auto x = torch::randn({5, 9});
  EXPECT_TRUE(close(ln(x), torch::layer_norm(x, {9}, ln->weight), 1e-5, 1e-5));
}

TEST(LayerNormModule, FromTorchNnOptions) {
  fastlayernorm::LayerNorm ln(fastlayernorm::LayerNormOptions(
      torch::nn::LayerNormOptions({4, 4}).eps(1e-3).elementwise_affine(false)));
  EXPECT_EQ(ln->options.normalized_shape(), std::vector<int64_t>({4, 4}));
  EXPECT_DOUBLE_EQ(ln->options.eps(), 1e-3);
  EXPECT_FALSE(ln->options.elementwise_affine());
  // The shorthand constructor from a shape, as torch::nn::LayerNorm's.
  fastlayernorm::LayerNorm short_form(std::vector<int64_t>{16});
  EXPECT_EQ(short_form->weight.sizes(), torch::IntArrayRef({16}));
}

TEST(LayerNormModule, StateInterchangesWithTorchNn) {
  torch::nn::LayerNorm ref(torch::nn::LayerNormOptions({12}));
  {
    torch::NoGradGuard no_grad;
    ref->weight.normal_();
    ref->bias.normal_();
  }
  std::stringstream archive;
  torch::save(ref, archive);
  fastlayernorm::LayerNorm ln(fastlayernorm::LayerNormOptions({12}));
  torch::load(ln, archive);
  EXPECT_TRUE(torch::equal(ln->weight, ref->weight));
  EXPECT_TRUE(torch::equal(ln->bias, ref->bias));
  auto x = torch::randn({3, 12});
  EXPECT_TRUE(close(ln(x), ref(x), 1e-5, 1e-5));
}

TEST(LayerNormModule, PrettyPrint) {
  std::ostringstream out;
  out << *fastlayernorm::LayerNorm(fastlayernorm::LayerNormOptions({2, 3}));
  EXPECT_EQ(out.str(), "fastlayernorm::LayerNorm([2, 3], eps=1e-05, elementwise_affine=true)");
  std::ostringstream out2;
  out2 << *fastlayernorm::LayerNorm(
      fastlayernorm::LayerNormOptions({8}).bias(false).memory_efficient(true));
  EXPECT_EQ(out2.str(),
            "fastlayernorm::LayerNorm([8], eps=1e-05, elementwise_affine=true, "
            "bias=false, memory_efficient=true)");
}

TEST(LayerNormModule, CloneIsIndependent) {
  fastlayernorm::LayerNorm ln(fastlayernorm::LayerNormOptions({6}));
  auto copy = std::dynamic_pointer_cast<fastlayernorm::LayerNormImpl>(ln->clone());
  ASSERT_TRUE(copy);
  {
    torch::NoGradGuard no_grad;
    copy->weight.fill_(2);
  }
  EXPECT_TRUE(torch::equal(ln->weight, torch::ones({6})));
  EXPECT_TRUE(torch::equal(copy->named_parameters()["weight"], torch::full({6}, 2.0)));
}

TEST(LayerNormModule, InSequentialAndDouble) {
  torch::nn::Sequential net(torch::nn::Linear(10, 32),
                            fastlayernorm::LayerNorm(fastlayernorm::LayerNormOptions({32})),
                            torch::nn::ReLU());
  net->to(torch::kDouble);
  auto x = torch::randn({5, 10}, torch::kDouble);
  auto y = net->forward(x);
  EXPECT_EQ(y.scalar_type(), torch::kDouble);
  y.sum().backward();
  for (const auto& p : net->parameters()) EXPECT_TRUE(p.grad().defined());
}

TEST(LayerNormModule, BadInput) {
  fastlayernorm::LayerNorm ln(fastlayernorm::LayerNormOptions({64}));
  EXPECT_TRUE(throws_with([&] { ln(torch::randn({4, 32})); },
                          {"fastlayernorm", "normalized_shape", "[4, 32]"}));
}

}  // namespace
