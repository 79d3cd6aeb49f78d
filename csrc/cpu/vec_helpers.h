// at::vec helpers for the CPU kernels: every element is computed in the
// accumulation type (float for float/half/bfloat16, double for double), one
// Vectorized<acc> at a time, whatever the storage type; and the machinery that
// runs the row loops compiled for AVX2 when the CPU has it.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Version.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

namespace fastlayernorm::cpu {

using at::vec::Vectorized;

// float for float/half/bfloat16, double for double.
template <typename T>
using acc_t = at::opmath_type<T>;

// The vector of accumulation type that holds elements of storage type T.
template <typename T>
using AccVec = Vectorized<acc_t<T>>;

template <typename T>
constexpr bool is_reduced_v = at::vec::is_reduced_floating_point_v<T>;

// Loads n <= AccVec<T>::size() elements (lanes past n are zero) as AccVec<T>.
// Half/bfloat16 are widened to float on load: no arithmetic in 16 bits.
template <typename T>
inline AccVec<T> load(const T* p, int64_t n = AccVec<T>::size()) {
  if constexpr (is_reduced_v<T>) {
    if (n == AccVec<T>::size()) {
      AccVec<T> v;
      at::vec::load_to_float<T>(p, v);
      return v;
    }
    // A partial load of the 16-bit vector, then widen its low half.
    return std::get<0>(at::vec::convert_to_float<T>(Vectorized<T>::loadu(p, n)));
  } else {
    return n == AccVec<T>::size() ? AccVec<T>::loadu(p) : AccVec<T>::loadu(p, n);
  }
}

// Stores the first n lanes of v as T (rounded to nearest even for 16 bits).
template <typename T>
inline void store(T* p, const AccVec<T>& v, int64_t n = AccVec<T>::size()) {
  if constexpr (is_reduced_v<T>) {
    // convert_from_float packs two float vectors; only the first n lanes of
    // the first one are written.
    at::vec::convert_from_float<T>(v, v).store(p, n);
  } else if (n == AccVec<T>::size()) {
    v.store(p);  // a fixed-size copy; the partial one is a memcpy call
  } else {
    v.store(p, n);
  }
}

// v with the lanes at and past n zeroed: a partial vector must not add the
// garbage of its unused lanes (e.g. 0/0 from a zero-filled weight) to a sum.
template <typename A>
inline Vectorized<A> first_lanes(const Vectorized<A>& v, int64_t n) {
  return n == Vectorized<A>::size() ? v : Vectorized<A>::set(Vectorized<A>(0), v, n);
}

// The number of independent vector accumulators of the row reductions: the
// adds into one accumulator form a dependency chain; four chains keep the
// floating-point adders busy.
constexpr int kAccumulators = 4;

template <typename A>
struct Accumulators {
  Vectorized<A> v[kAccumulators] = {Vectorized<A>(A(0)), Vectorized<A>(A(0)),
                                    Vectorized<A>(A(0)), Vectorized<A>(A(0))};

  Vectorized<A>& operator[](int k) { return v[k]; }

  // The sum of all lanes, in a fixed order (deterministic).
  A sum() const {
    const Vectorized<A> s = (v[0] + v[1]) + (v[2] + v[3]);
    return at::vec::vec_reduce_all<A>(
        [](const Vectorized<A>& a, const Vectorized<A>& b) { return a + b; }, s);
  }
};

// Walks a row of N elements one Vectorized<A> at a time: calls
// body(j, n, k) for the piece [j, j + n), n == lanes except for the last
// piece, k in [0, kAccumulators) the accumulator to use. Full vectors go
// kAccumulators at a time (k is a constant there once inlined); the rest,
// fewer than kAccumulators vectors, follows.
template <typename A, typename Body>
inline void for_each_vector(int64_t N, const Body& body) {
  constexpr int64_t L = Vectorized<A>::size();
  int64_t j = 0;
  for (; j + kAccumulators * L <= N; j += kAccumulators * L) {
    body(j, L, 0);
    body(j + L, L, 1);
    body(j + 2 * L, L, 2);
    body(j + 3 * L, L, 3);
  }
  for (int k = 0; j < N; j += L, ++k) body(j, std::min(L, N - j), k);
}

// ---------------------------------------------------------------------------
// Two compiled copies of the row loops.
//
// The extension is built for any x86-64 CPU (no -mavx2), so at::vec gives its
// generic Vectorized: a fixed-size array (8 floats, 4 doubles) whose
// operations are short loops. run_range() compiles a row loop twice: as is,
// and with AVX2+FMA enabled, where the compiler turns each of those loops into
// one 256-bit instruction. The AVX2 copy runs when the CPU has AVX2 and FMA
// and torch itself uses AVX2 or AVX-512 (so ATEN_CPU_CAPABILITY=default
// selects the generic copy for both). `flatten` inlines every call of the
// loop (at::vec operations, lambdas, helpers) into the copy, so all of it is
// compiled for that copy's instruction set.
#if (defined(__x86_64__) || defined(__i386__)) && \
    (defined(__GNUC__) || defined(__clang__))
#define FASTLAYERNORM_CPU_AVX2_COPY 1
#endif

#if defined(__GNUC__) || defined(__clang__)
#define FASTLAYERNORM_FLATTEN __attribute__((flatten))
#else
#define FASTLAYERNORM_FLATTEN
#endif

inline bool use_avx2_copy() {
#ifdef FASTLAYERNORM_CPU_AVX2_COPY
  static const bool yes = [] {
    const std::string torch_isa = at::get_cpu_capability();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           (torch_isa == "AVX2" || torch_isa == "AVX512");
  }();
  return yes;
#else
  return false;
#endif
}

template <typename Range>
FASTLAYERNORM_FLATTEN void run_range_generic(const Range& range, int64_t begin,
                                             int64_t end) {
  range(begin, end);
}

#ifdef FASTLAYERNORM_CPU_AVX2_COPY
template <typename Range>
__attribute__((target("avx2,fma"))) FASTLAYERNORM_FLATTEN void run_range_avx2(
    const Range& range, int64_t begin, int64_t end) {
  range(begin, end);
}
#endif

// Calls range(begin, end), compiled for the best instruction set available.
template <typename Range>
void run_range(const Range& range, int64_t begin, int64_t end) {
#ifdef FASTLAYERNORM_CPU_AVX2_COPY
  if (use_avx2_copy()) return run_range_avx2(range, begin, end);
#endif
  run_range_generic(range, begin, end);
}

}  // namespace fastlayernorm::cpu
