// CPU backend: vectorized with at::vec, parallel over rows with
// at::parallel_for (libtorch's: see parallel_for below). Accumulation in
// float32 (float64 for float64 input); half/bfloat16 are widened on load and
// rounded once on store.
//
// The row loops live in layer_norm_cpu_rows.h and are compiled twice: with
// at::vec, which on x86 is its AVX2 flavour (see vec_helpers.h for why and
// how), and on x86 also one element at a time for CPUs without AVX2. The
// choice is made once per process. Results do not depend on how rows are
// split over threads, except dweight/dbias, whose per-chunk partial sums are
// fixed by the thread count: bitwise reproducible for a given thread count.
#include "vec_helpers.h"  // first: it includes at::vec for AVX2

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../backend_ops.h"

// See parallel_for below.
#if AT_PARALLEL_OPENMP && !defined(_OPENMP) && \
    __has_include(<torch/csrc/stable/c/shim.h>)
#include <torch/csrc/stable/c/shim.h>
#if TORCH_FEATURE_VERSION >= TORCH_VERSION_2_10_0
#define FASTLAYERNORM_LIBTORCH_PARALLEL_FOR 1
#endif
#endif

namespace fastlayernorm {
namespace cpu {
// Internal linkage for all of it: no function compiled for AVX2 here can be
// merged with a same-named one of another file.
namespace {

// What the row loops read and write: raw pointers into contiguous rows x N
// tensors; a null pointer is an absent tensor.
template <typename T, typename W>
struct ForwardParams {
  const T* x;
  const W* w;
  const W* b;
  T* y;
  acc_t<T>* stats;  // (mean, rstd) pairs, one per row
  int64_t N;
  acc_t<T> eps;
};

template <typename T, typename W>
struct BackwardParams {
  const T* dy;
  const T* x;  // the input, or the forward's output with from_output
  const acc_t<T>* stats;  // (mean, rstd) pairs; the means unread with from_output
  const W* w;
  const W* b;  // only read with from_output
  T* dx;
  acc_t<T>* partial_dw;  // chunks x N partial sums, float (double)
  acc_t<T>* partial_db;
  int64_t rows, N, chunks;
};

template <typename A, typename W>
struct CombineParams {
  const A* partial;  // chunks x N
  W* out;
  int64_t N, chunks;
};

// The at::vec copy of the row loops (AVX2 on x86).
FASTLAYERNORM_BEGIN_AVX2
namespace vec_copy {
using namespace vec_lanes;
#include "layer_norm_cpu_rows.h"
}  // namespace vec_copy
FASTLAYERNORM_END_AVX2

#ifdef FASTLAYERNORM_CPU_AVX2
// The copy for x86 CPUs without AVX2: one element at a time.
namespace scalar_copy {
using namespace scalar_lanes;
#include "layer_norm_cpu_rows.h"
}  // namespace scalar_copy
#endif

// Calls cpu::vec_copy::<call> where that copy may run (see vec_copy_usable),
// else cpu::scalar_copy::<call>.
#ifdef FASTLAYERNORM_CPU_AVX2
#define FASTLAYERNORM_PICK_COPY(...)                     \
  (::fastlayernorm::cpu::vec_copy_usable()                \
       ? ::fastlayernorm::cpu::vec_copy::__VA_ARGS__      \
       : ::fastlayernorm::cpu::scalar_copy::__VA_ARGS__)
#else
#define FASTLAYERNORM_PICK_COPY(...) ::fastlayernorm::cpu::vec_copy::__VA_ARGS__
#endif

}  // namespace
}  // namespace cpu

namespace {

using cpu::acc_t;

// Work (elements) below which a task is not worth a thread of its own; the
// value of ATen's own grain size.
constexpr int64_t kGrainElements = 32768;

// at::parallel_for as libtorch runs it. at::parallel_for is a header template
// whose OpenMP backend parallelizes only code compiled with -fopenmp; this
// extension is built without it, so the template instantiated here would run
// every range on the calling thread. torch >= 2.10 exports its own
// at::parallel_for as the C function torch_parallel_for: same thread pool,
// same split of [begin, end), same torch.set_num_threads.
template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
#ifdef FASTLAYERNORM_LIBTORCH_PARALLEL_FOR
  auto call = [](int64_t b, int64_t e, void* ctx) {
    (*static_cast<const F*>(ctx))(b, e);
  };
  const auto err = torch_parallel_for(begin, end, grain, call,
                                      const_cast<void*>(static_cast<const void*>(&f)));
  TORCH_CHECK(err == AOTI_TORCH_SUCCESS, "fastlayernorm: torch_parallel_for failed");
#else
  at::parallel_for(begin, end, grain, f);
#endif
}

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

template <typename T, typename W>
void forward_rows(const ForwardArgs& a) {
  using A = acc_t<T>;
  const cpu::ForwardParams<T, W> p{
      a.input.const_data_ptr<T>(),
      a.weight.defined() ? a.weight.const_data_ptr<W>() : nullptr,
      a.bias.defined() ? a.bias.const_data_ptr<W>() : nullptr,
      a.output.mutable_data_ptr<T>(),
      a.stats.mutable_data_ptr<A>(),
      a.cols,
      static_cast<A>(a.eps)};
  // Rows are independent: any split gives the same result.
  const int64_t grain = std::max<int64_t>(1, kGrainElements / a.cols);
  with_flags(p.w != nullptr, p.b != nullptr, [&](auto has_w, auto has_b) {
    parallel_for(0, a.rows, grain, [&](int64_t begin, int64_t end) {
      FASTLAYERNORM_PICK_COPY(
          forward_range<T, W, has_w.value, has_b.value>(p, begin, end));
    });
  });
}

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
  const int64_t chunks = backward_chunks(a.rows, N);
  std::vector<A> partial_dw(a.grad_weight.defined() ? chunks * N : 0, A(0));
  std::vector<A> partial_db(a.grad_bias.defined() ? chunks * N : 0, A(0));
  const cpu::BackwardParams<T, W> p{
      a.grad_out.const_data_ptr<T>(),
      a.input.const_data_ptr<T>(),
      a.stats.const_data_ptr<A>(),
      a.weight.defined() ? a.weight.const_data_ptr<W>() : nullptr,
      a.bias.defined() ? a.bias.const_data_ptr<W>() : nullptr,
      a.grad_input.defined() ? a.grad_input.mutable_data_ptr<T>() : nullptr,
      partial_dw.empty() ? nullptr : partial_dw.data(),
      partial_db.empty() ? nullptr : partial_db.data(),
      a.rows,
      N,
      chunks};
  with_flags(p.w != nullptr, a.from_output, [&](auto has_w, auto from_output) {
    parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      FASTLAYERNORM_PICK_COPY(
          backward_range<T, W, has_w.value, from_output.value>(p, begin, end));
    });
  });

  // dweight/dbias: the chunks' partials summed in chunk order.
  const int64_t grain = std::max<int64_t>(1, kGrainElements / chunks);
  auto combine = [&](const std::vector<A>& partial, const Tensor& grad) {
    if (!grad.defined()) return;
    const cpu::CombineParams<A, W> c{partial.data(), grad.mutable_data_ptr<W>(),
                                     N, chunks};
    parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
      FASTLAYERNORM_PICK_COPY(combine_range<A, W>(c, begin, end));
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

}  // namespace

TORCH_LIBRARY_IMPL(fastlayernorm, CPU, m) {
  impl_backend_ops<&forward_kernel, &backward_kernel>(m);
}

}  // namespace fastlayernorm
