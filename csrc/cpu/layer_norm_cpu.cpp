// CPU backend: vectorized with at::vec, parallel over rows with
// at::parallel_for. Accumulation in float32 (float64 for float64 input);
// half/bfloat16 are widened on load and rounded once on store.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../layer_norm.h"
#include "vec_helpers.h"

namespace fastlayernorm {
namespace {

using at::vec::Vectorized;
using cpu::acc_t;
using cpu::Accumulators;
using cpu::first_lanes;
using cpu::for_each_vector;
using cpu::load;
using cpu::store;

// Work (elements) below which a task is not worth a thread of its own; the
// value of ATen's own grain size.
constexpr int64_t kGrainElements = 32768;

// Calls fn(std::bool_constant<a>{}, std::bool_constant<b>{}): the row loops
// are compiled once per combination, without a test per element for an absent
// weight or bias.
template <typename Fn>
void with_flags(bool a, bool b, const Fn& fn) {
  using T = std::true_type;
  using F = std::false_type;
  if (a) {
    b ? fn(T{}, T{}) : fn(T{}, F{});
  } else {
    b ? fn(F{}, T{}) : fn(F{}, F{});
  }
}

// ---------------------------------------------------------------- forward

// Rows [begin, end) of the forward. Per row: exact two-pass statistics (the
// mean, then the sum of squared deviations from it: no cancellation as in
// E[x^2] - mean^2), then y = (x - mean) * rstd * w + b. The row is read three
// times; it stays in the L1/L2 cache between the passes.
template <typename T, typename W, bool kWeight, bool kBias>
struct ForwardRange {
  using A = acc_t<T>;
  using Vec = Vectorized<A>;

  const T* x;
  const W* w;
  const W* b;
  T* y;
  A* mean_out;
  A* rstd_out;
  int64_t N;
  A eps;

  void operator()(int64_t begin, int64_t end) const {
    for (int64_t r = begin; r < end; ++r) row(x + r * N, y + r * N, r);
  }

  void row(const T* xr, T* yr, int64_t r) const {
    Accumulators<A> sum;
    // The lanes of a partial load are zero: they add nothing.
    for_each_vector<A>(N, [&](int64_t j, int64_t n, int k) {
      sum[k] += load(xr + j, n);
    });
    const A mean = sum.sum() / static_cast<A>(N);
    const Vec vmean(mean);

    Accumulators<A> sq;
    for_each_vector<A>(N, [&](int64_t j, int64_t n, int k) {
      const Vec d = first_lanes<A>(load(xr + j, n) - vmean, n);
      sq[k] += d * d;
    });
    const A rstd = A(1) / std::sqrt(sq.sum() / static_cast<A>(N) + eps);
    const Vec vrstd(rstd);

    for_each_vector<A>(N, [&](int64_t j, int64_t n, int) {
      Vec v = (load(xr + j, n) - vmean) * vrstd;
      if constexpr (kWeight) v = v * load(w + j, n);
      if constexpr (kBias) v = v + load(b + j, n);
      store(yr + j, v, n);
    });
    mean_out[r] = mean;
    rstd_out[r] = rstd;
  }
};

template <typename T, typename W>
void forward_rows(const ForwardArgs& a) {
  using A = acc_t<T>;
  const int64_t N = a.cols;
  const W* w = a.weight.defined() ? a.weight.const_data_ptr<W>() : nullptr;
  const W* b = a.bias.defined() ? a.bias.const_data_ptr<W>() : nullptr;
  // Rows are independent: any split gives the same result.
  const int64_t grain = std::max<int64_t>(1, kGrainElements / N);
  with_flags(w != nullptr, b != nullptr, [&](auto has_w, auto has_b) {
    const ForwardRange<T, W, has_w.value, has_b.value> range{
        a.input.const_data_ptr<T>(), w, b,
        a.output.mutable_data_ptr<T>(), a.mean.mutable_data_ptr<A>(),
        a.rstd.mutable_data_ptr<A>(), N, static_cast<A>(a.eps)};
    at::parallel_for(0, a.rows, grain, [&](int64_t begin, int64_t end) {
      cpu::run_range(range, begin, end);
    });
  });
}

// --------------------------------------------------------------- backward

// Chunks [begin, end) of rows of the backward. With g = dy * w (dy without
// weight) and x_hat the normalized input, per row:
//   dx = (g - (x_hat * mean(g * x_hat) + mean(g))) * rstd
//   dweight += dy * x_hat,  dbias += dy   (into the chunk's partial sums)
// x_hat is (x - mean) * rstd, or with kFromOutput rebuilt from the forward's
// output y as (y - bias) / weight.
template <typename T, typename W, bool kWeight, bool kFromOutput>
struct BackwardRange {
  using A = acc_t<T>;
  using Vec = Vectorized<A>;

  const T* dy;
  const T* x;  // the input, or the output with kFromOutput
  const A* mean;  // null with kFromOutput
  const A* rstd;
  const W* w;
  const W* b;  // only read with kFromOutput; may be null
  T* dx;  // null when not wanted
  A* partial_dw;  // chunks x N, or null when not wanted
  A* partial_db;
  int64_t rows, N, chunks;

  // Chunk c owns rows [c * rows / chunks, (c + 1) * rows / chunks) and the
  // partial sums [c * N, (c + 1) * N).
  void operator()(int64_t begin, int64_t end) const {
    for (int64_t c = begin; c < end; ++c) {
      A* pdw = partial_dw ? partial_dw + c * N : nullptr;
      A* pdb = partial_db ? partial_db + c * N : nullptr;
      for (int64_t r = c * rows / chunks; r < (c + 1) * rows / chunks; ++r) {
        row(r, pdw, pdb);
      }
    }
  }

  Vec x_hat(const T* xr, int64_t j, int64_t n, const Vec& vmean,
            const Vec& vrstd) const {
    const Vec v = load(xr + j, n);
    if constexpr (kFromOutput) {
      const Vec centered = b ? v - load(b + j, n) : v;
      if constexpr (kWeight) {
        return centered / load(w + j, n);
      } else {
        return centered;
      }
    } else {
      return (v - vmean) * vrstd;
    }
  }

  Vec weighted(const Vec& dyv, int64_t j, int64_t n) const {
    if constexpr (kWeight) {
      return dyv * load(w + j, n);
    } else {
      return dyv;
    }
  }

  // The first pass reduces the row and adds its dweight/dbias terms; the
  // second (dx only) reads the row again, from the cache.
  void row(int64_t r, A* pdw, A* pdb) const {
    const T* dyr = dy + r * N;
    const T* xr = x + r * N;
    const Vec vmean(kFromOutput ? A(0) : mean[r]);
    const Vec vrstd(rstd[r]);
    Accumulators<A> sum_g, sum_gx;
    for_each_vector<A>(N, [&](int64_t j, int64_t n, int k) {
      const Vec dyv = load(dyr + j, n);
      const Vec xh = x_hat(xr, j, n, vmean, vrstd);
      const Vec g = weighted(dyv, j, n);
      sum_g[k] += g;  // zero past n, as dy
      // Masked: with kFromOutput an unused lane of x_hat is 0/0.
      sum_gx[k] += first_lanes<A>(g * xh, n);
      if (pdw) store(pdw + j, load(pdw + j, n) + dyv * xh, n);
      if (pdb) store(pdb + j, load(pdb + j, n) + dyv, n);
    });
    if (!dx) return;
    const Vec c1(sum_gx.sum() / static_cast<A>(N));
    const Vec c2(sum_g.sum() / static_cast<A>(N));
    T* dxr = dx + r * N;
    for_each_vector<A>(N, [&](int64_t j, int64_t n, int) {
      const Vec xh = x_hat(xr, j, n, vmean, vrstd);
      const Vec g = weighted(load(dyr + j, n), j, n);
      store(dxr + j, (g - (xh * c1 + c2)) * vrstd, n);
    });
  }
};

// Columns [begin, end) of dweight or dbias: the chunks' partial sums added
// in chunk order, then rounded once to W.
template <typename A, typename W>
struct CombineRange {
  const A* partial;  // chunks x N
  W* out;
  int64_t N, chunks;

  void operator()(int64_t begin, int64_t end) const {
    for_each_vector<A>(end - begin, [&](int64_t j, int64_t n, int) {
      j += begin;
      Vectorized<A> s = load(partial + j, n);
      for (int64_t c = 1; c < chunks; ++c) s += load(partial + c * N + j, n);
      store(out + j, s, n);
    });
  }
};

// The row chunks of the backward: one per thread, each with its own partial
// dweight/dbias, fewer for small problems where a thread costs more than it
// saves. The count depends only on the shape and the thread count, so the
// partials are summed in the same order from run to run.
int64_t backward_chunks(int64_t rows, int64_t cols) {
  const int64_t by_work = std::max<int64_t>(1, rows * cols / kGrainElements);
  return std::max<int64_t>(
      1, std::min({rows, static_cast<int64_t>(at::get_num_threads()), by_work}));
}

template <typename T, typename W>
void backward_rows(const BackwardArgs& a) {
  using A = acc_t<T>;
  static_assert(std::is_same_v<acc_t<W>, A>, "weight accumulates as input");
  const int64_t N = a.cols;
  const W* w = a.weight.defined() ? a.weight.const_data_ptr<W>() : nullptr;
  const int64_t chunks = backward_chunks(a.rows, N);
  // Partial dweight/dbias per chunk, in float (double for double).
  std::vector<A> partial_dw(a.grad_weight.defined() ? chunks * N : 0, A(0));
  std::vector<A> partial_db(a.grad_bias.defined() ? chunks * N : 0, A(0));

  with_flags(w != nullptr, a.from_output, [&](auto has_w, auto from_output) {
    const BackwardRange<T, W, has_w.value, from_output.value> range{
        a.grad_out.const_data_ptr<T>(),
        a.input.const_data_ptr<T>(),
        a.from_output ? nullptr : a.mean.const_data_ptr<A>(),
        a.rstd.const_data_ptr<A>(),
        w,
        a.bias.defined() ? a.bias.const_data_ptr<W>() : nullptr,
        a.grad_input.defined() ? a.grad_input.mutable_data_ptr<T>() : nullptr,
        partial_dw.empty() ? nullptr : partial_dw.data(),
        partial_db.empty() ? nullptr : partial_db.data(),
        a.rows,
        N,
        chunks};
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      cpu::run_range(range, begin, end);
    });
  });

  const int64_t grain = std::max<int64_t>(1, kGrainElements / chunks);
  auto combine = [&](const std::vector<A>& partial, const Tensor& grad) {
    if (!grad.defined()) return;
    const CombineRange<A, W> range{partial.data(), grad.mutable_data_ptr<W>(),
                                   N, chunks};
    at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
      cpu::run_range(range, begin, end);
    });
  };
  combine(partial_dw, a.grad_weight);
  combine(partial_db, a.grad_bias);
}

// ------------------------------------------------------------- dispatch

// Calls Fn<T, W>::run(a) for the input dtype T and the parameter dtype W (T,
// or float for half/bfloat16 input; T when there are no parameters).
template <template <typename, typename> class Fn, typename Args>
void dispatch_types(const Args& a, const Tensor& param) {
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.input.scalar_type(), "fastlayernorm_cpu", [&] {
        if constexpr (std::is_same_v<scalar_t, double>) {
          Fn<scalar_t, scalar_t>::run(a);  // the checks allow only double
        } else if (param.defined() && param.scalar_type() != a.input.scalar_type()) {
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
