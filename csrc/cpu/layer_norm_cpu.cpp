// CPU backend: vectorized with at::vec, parallel over rows with
// at::parallel_for. Accumulation in float32 (float64 for float64 input).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/zeros.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../layer_norm.h"

namespace fastlayernorm {
namespace {

template <typename T>
using acc_t = at::opmath_type<T>;

// One row: exact two-pass statistics over the row, then the output.
template <typename T, typename W>
void forward_rows(const ForwardArgs& a) {
  using A = acc_t<T>;
  const int64_t N = a.cols;
  const T* x = a.input.const_data_ptr<T>();
  const W* w = a.weight.defined() ? a.weight.const_data_ptr<W>() : nullptr;
  const W* b = a.bias.defined() ? a.bias.const_data_ptr<W>() : nullptr;
  T* y = a.output.mutable_data_ptr<T>();
  A* mean_out = a.mean.mutable_data_ptr<A>();
  A* rstd_out = a.rstd.mutable_data_ptr<A>();
  at::parallel_for(0, a.rows, 1, [&](int64_t begin, int64_t end) {
    for (const auto r : c10::irange(begin, end)) {
      const T* xr = x + r * N;
      T* yr = y + r * N;
      A sum = 0;
      for (int64_t j = 0; j < N; ++j) sum += static_cast<A>(xr[j]);
      const A mean = sum / N;
      A sq = 0;
      for (int64_t j = 0; j < N; ++j) {
        const A d = static_cast<A>(xr[j]) - mean;
        sq += d * d;
      }
      const A rstd = A(1) / std::sqrt(sq / N + static_cast<A>(a.eps));
      for (int64_t j = 0; j < N; ++j) {
        A v = (static_cast<A>(xr[j]) - mean) * rstd;
        if (w) v *= static_cast<A>(w[j]);
        if (b) v += static_cast<A>(b[j]);
        yr[j] = static_cast<T>(v);
      }
      mean_out[r] = mean;
      rstd_out[r] = rstd;
    }
  });
}

template <typename T, typename W>
void backward_rows(const BackwardArgs& a) {
  using A = acc_t<T>;
  const int64_t M = a.rows, N = a.cols;
  const T* dy = a.grad_out.const_data_ptr<T>();
  const T* x = a.input.const_data_ptr<T>();
  const A* mean = a.from_output ? nullptr : a.mean.const_data_ptr<A>();
  const A* rstd = a.rstd.const_data_ptr<A>();
  const W* w = a.weight.defined() ? a.weight.const_data_ptr<W>() : nullptr;
  const W* b = a.bias.defined() ? a.bias.const_data_ptr<W>() : nullptr;
  T* dx = a.grad_input.defined() ? a.grad_input.mutable_data_ptr<T>() : nullptr;
  const bool want_params = a.grad_weight.defined() || a.grad_bias.defined();

  // dweight/dbias: one float partial per chunk of rows, summed in chunk
  // order at the end (deterministic for a given thread count).
  const int64_t chunks =
      want_params ? std::min<int64_t>(M, std::max(1, at::get_num_threads())) : 1;
  const int64_t chunk_rows = (M + chunks - 1) / chunks;
  std::vector<A> part_dw(want_params ? chunks * N : 0, A(0));
  std::vector<A> part_db(want_params ? chunks * N : 0, A(0));

  at::parallel_for(0, chunks, 1, [&](int64_t cbegin, int64_t cend) {
    std::vector<A> xhat(N);
    for (const auto c : c10::irange(cbegin, cend)) {
      A* pdw = want_params ? part_dw.data() + c * N : nullptr;
      A* pdb = want_params ? part_db.data() + c * N : nullptr;
      const int64_t r_end = std::min(M, (c + 1) * chunk_rows);
      for (int64_t r = c * chunk_rows; r < r_end; ++r) {
        const T* xr = x + r * N;
        const T* dyr = dy + r * N;
        const A rs = rstd[r];
        A sum_wdy = 0, sum_wdy_xhat = 0;
        for (int64_t j = 0; j < N; ++j) {
          A xh;
          if (a.from_output) {
            xh = static_cast<A>(xr[j]) - (b ? static_cast<A>(b[j]) : A(0));
            if (w) xh /= static_cast<A>(w[j]);
          } else {
            xh = (static_cast<A>(xr[j]) - mean[r]) * rs;
          }
          xhat[j] = xh;
          const A g = static_cast<A>(dyr[j]);
          const A wdy = w ? g * static_cast<A>(w[j]) : g;
          sum_wdy += wdy;
          sum_wdy_xhat += wdy * xh;
          if (pdw) {
            pdw[j] += g * xh;
            pdb[j] += g;
          }
        }
        if (dx) {
          const A c1 = sum_wdy_xhat / N, c2 = sum_wdy / N;
          T* dxr = dx + r * N;
          for (int64_t j = 0; j < N; ++j) {
            const A g = static_cast<A>(dyr[j]);
            const A wdy = w ? g * static_cast<A>(w[j]) : g;
            dxr[j] = static_cast<T>((wdy - (xhat[j] * c1 + c2)) * rs);
          }
        }
      }
    }
  });
  if (!want_params) return;
  W* dw = a.grad_weight.defined() ? a.grad_weight.mutable_data_ptr<W>() : nullptr;
  W* db = a.grad_bias.defined() ? a.grad_bias.mutable_data_ptr<W>() : nullptr;
  at::parallel_for(0, N, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      A sw = 0, sb = 0;
      for (int64_t c = 0; c < chunks; ++c) {
        sw += part_dw[c * N + j];
        sb += part_db[c * N + j];
      }
      if (dw) dw[j] = static_cast<W>(sw);
      if (db) db[j] = static_cast<W>(sb);
    }
  });
}

// Calls fn<T, W>() for the input dtype T and the parameter dtype W (T, or
// float for half/bfloat16 input; T when there are no parameters).
template <template <typename, typename> class Fn, typename Args>
void dispatch_types(const Args& a, const Tensor& param) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.input.scalar_type(), "fastlayernorm_cpu", [&] {
        if (param.defined() && param.scalar_type() != a.input.scalar_type()) {
          Fn<scalar_t, float>::run(a);
        } else {
          Fn<scalar_t, scalar_t>::run(a);
        }
      });
}

template <typename T, typename W>
struct Forward {
  static void run(const ForwardArgs& a) { forward_rows<T, W>(a); }
};
template <typename T, typename W>
struct Backward {
  static void run(const BackwardArgs& a) { backward_rows<T, W>(a); }
};

void forward_kernel(const ForwardArgs& a) {
  dispatch_types<Forward>(a, a.weight.defined() ? a.weight : a.bias);
}
void backward_kernel(const BackwardArgs& a) {
  dispatch_types<Backward>(a, a.weight.defined() ? a.weight : a.bias);
}

TensorTriple layer_norm_fwd_cpu(const Tensor& input,
                                c10::SymIntArrayRef normalized_shape,
                                const std::optional<Tensor>& weight,
                                const std::optional<Tensor>& bias, double eps) {
  return run_forward(input, normalized_shape, weight, bias, eps,
                     &forward_kernel);
}

TensorTriple layer_norm_bwd_cpu(const Tensor& grad_out, const Tensor& input,
                                c10::SymIntArrayRef normalized_shape,
                                const Tensor& mean, const Tensor& rstd,
                                const std::optional<Tensor>& weight,
                                const std::optional<Tensor>& bias,
                                std::array<bool, 3> output_mask) {
  return run_backward(grad_out, input, normalized_shape, mean, rstd, weight,
                      bias, output_mask, &backward_kernel);
}

TensorTriple layer_norm_bwd_from_output_cpu(
    const Tensor& grad_out, const Tensor& output,
    c10::SymIntArrayRef normalized_shape, const Tensor& rstd,
    const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
    std::array<bool, 3> output_mask) {
  return run_backward(grad_out, output, normalized_shape, std::nullopt, rstd,
                      weight, bias, output_mask, &backward_kernel);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastlayernorm, CPU, m) {
  m.impl("layer_norm_fwd", &layer_norm_fwd_cpu);
  m.impl("layer_norm_bwd", &layer_norm_bwd_cpu);
  m.impl("layer_norm_bwd_from_output", &layer_norm_bwd_from_output_cpu);
}

}  // namespace fastlayernorm
