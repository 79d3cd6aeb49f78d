// at::vec for the CPU kernels, and the "lanes" the row loops are written in.
//
// Why this header does more than #include <ATen/cpu/vec/vec.h>: the extension
// is built for any x86-64 CPU (no -mavx2), and in such a build at::vec gives
// its generic Vectorized, an array whose operations are element loops that
// GCC compiles to mostly scalar code (measured 5-14x slower than torch's own
// kernel on cached rows). ATen gets real SIMD by compiling its kernels once
// per instruction set with CPU_CAPABILITY_AVX2 / _AVX512 defined and choosing
// one at run time. This header does the same within one file: on x86 with
// GCC it includes at::vec with CPU_CAPABILITY=AVX2 inside a
// `#pragma GCC target("avx2,fma,f16c")` region, so Vectorized<float> is the
// __m256 one. Code using it must be compiled in such a region too
// (FASTLAYERNORM_BEGIN_AVX2 / FASTLAYERNORM_END_AVX2) and run only where
// vec_copy_usable() says so; layer_norm_cpu.cpp compiles its row loops a
// second time with the scalar lanes below for the other CPUs.
//
// Elsewhere (aarch64: NEON; other compilers) at::vec is included as the build
// configures it and is the only copy.
#pragma once

// Everything at::vec includes that is not part of at::vec itself, included
// here first and so compiled without AVX2: an inline function of these
// headers compiled inside the AVX2 region could be the one copy the linker
// keeps for the whole extension, and be called on a CPU without AVX2.
#include <ATen/AccumulateType.h>
#include <ATen/NumericUtils.h>
#include <ATen/OpMathType.h>
#include <ATen/Version.h>
#include <ATen/native/Math.h>
#include <ATen/native/quantized/AffineQuantizerBase.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16-math.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/Load.h>
#include <c10/util/MathConstants.h>
#include <c10/util/TypeCast.h>
#include <c10/util/complex.h>
#include <c10/util/copysign.h>
#include <c10/util/irange.h>
#include <c10/util/qint32.h>
#include <c10/util/qint8.h>
#include <c10/util/quint8.h>

#include <algorithm>
#include <array>
#include <cassert>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>

#if defined(__GNUC__) && !defined(__clang__) && \
    (defined(__x86_64__) || defined(__i386__))
#define FASTLAYERNORM_CPU_AVX2 1
// fp-contract=off: every product is rounded as written, not fused into an FMA
// where the compiler sees fit. The row loops compute dy * w in two passes and
// rely on getting the same value (e.g. dx == 0 exactly for one-element rows);
// and results do not depend on which gradients were asked for.
// -Wpsabi: notes that __m256 arguments pass differently without AVX.
#define FASTLAYERNORM_BEGIN_AVX2                                      \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx2,fma,f16c\")") \
      _Pragma("GCC optimize(\"fp-contract=off\")")                   \
          _Pragma("GCC diagnostic push")                              \
              _Pragma("GCC diagnostic ignored \"-Wpsabi\"")
#define FASTLAYERNORM_END_AVX2 \
  _Pragma("GCC diagnostic pop") _Pragma("GCC pop_options")
#else
#define FASTLAYERNORM_BEGIN_AVX2
#define FASTLAYERNORM_END_AVX2
#endif

// On a row function: inline everything it calls (the lambdas given to
// for_each_vector included), so each pass over a row is one loop.
#if defined(__GNUC__) || defined(__clang__)
#define FASTLAYERNORM_FLATTEN __attribute__((flatten))
#else
#define FASTLAYERNORM_FLATTEN
#endif

#ifdef FASTLAYERNORM_CPU_AVX2
#if defined(CPU_CAPABILITY) || defined(CPU_CAPABILITY_AVX2) || \
    defined(CPU_CAPABILITY_AVX512)
#error "fastlayernorm: expected a build without CPU_CAPABILITY defines"
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#endif

namespace fastlayernorm::cpu {
// float for float/half/bfloat16, double for double.
template <typename T>
using acc_t = at::opmath_type<T>;
}  // namespace fastlayernorm::cpu

// Everything from here to FASTLAYERNORM_END_AVX2 is compiled for AVX2.
FASTLAYERNORM_BEGIN_AVX2

#ifdef FASTLAYERNORM_CPU_AVX2
// sleef.h, which at::vec's AVX2 headers include, declares its 256-bit
// functions only #ifdef __AVX__, and g++ (unlike gcc) does not define __AVX__
// inside a target pragma region: include it first with the macro set for it.
#ifndef __AVX__
#define __AVX__ 1
#define FASTLAYERNORM_UNDEF_AVX
#endif
#define SLEEF_STATIC_LIBS
#include <sleef.h>
#ifdef FASTLAYERNORM_UNDEF_AVX
#undef __AVX__
#undef FASTLAYERNORM_UNDEF_AVX
#endif
#endif

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#ifdef FASTLAYERNORM_CPU_AVX2
#undef CPU_CAPABILITY
#undef CPU_CAPABILITY_AVX2
// Fails if at::vec was included before this header (then without AVX2).
static_assert(std::is_same_v<at::vec::Vectorized<float>,
                             at::vec::AVX2::Vectorized<float>>,
              "fastlayernorm: include vec_helpers.h before any at::vec header");
#endif

namespace fastlayernorm::cpu {

// The lanes of at::vec: the row loops load Vec<A> of kLanes<A> elements of the
// accumulation type A (float or double).
namespace vec_lanes {

template <typename A>
using Vec = at::vec::Vectorized<A>;

template <typename A>
constexpr int64_t kLanes = Vec<A>::size();

template <typename T>
constexpr bool is_reduced_v = at::vec::is_reduced_floating_point_v<T>;

// Loads n <= kLanes elements (lanes past n are zero) in the accumulation
// type. Half/bfloat16 are widened to float on load: no arithmetic in 16 bits.
template <typename T>
C10_ALWAYS_INLINE Vec<acc_t<T>> load(const T* p, int64_t n = kLanes<acc_t<T>>) {
  using V = Vec<acc_t<T>>;
  if constexpr (is_reduced_v<T>) {
    if (n == V::size()) {
      V v;
      at::vec::load_to_float<T>(p, v);
      return v;
    }
    // A partial load of the 16-bit vector, then widen its low half.
    return std::get<0>(at::vec::convert_to_float<T>(at::vec::Vectorized<T>::loadu(p, n)));
  } else {
    return n == V::size() ? V::loadu(p) : V::loadu(p, n);
  }
}

// Stores the first n lanes of v as T (rounded to nearest even for 16 bits).
template <typename T>
C10_ALWAYS_INLINE void store(T* p, const Vec<acc_t<T>>& v, int64_t n = kLanes<acc_t<T>>) {
  if constexpr (is_reduced_v<T>) {
    // convert_from_float packs two float vectors into one 16-bit vector; the
    // first n lanes written are those of the first. (Always inlined: with n
    // a constant the partial store is one move, not a memcpy call.)
    at::vec::convert_from_float<T>(v, v).store(p, n);
  } else if (n == Vec<acc_t<T>>::size()) {
    v.store(p);
  } else {
    v.store(p, n);
  }
}

// v with the lanes at and past n zeroed: a partial vector must not add the
// garbage of its unused lanes (e.g. 0/0 from a zero-filled weight) to a sum.
template <typename A>
C10_ALWAYS_INLINE Vec<A> first_lanes(const Vec<A>& v, int64_t n) {
  return n == Vec<A>::size() ? v : Vec<A>::set(Vec<A>(A(0)), v, n);
}

// The sum of the lanes of v, in a fixed order.
template <typename A>
inline A reduce_sum(const Vec<A>& v) {
  return at::vec::vec_reduce_all<A>(
      [](const Vec<A>& a, const Vec<A>& b) { return a + b; }, v);
}

}  // namespace vec_lanes
}  // namespace fastlayernorm::cpu

FASTLAYERNORM_END_AVX2

namespace fastlayernorm::cpu {

// One element at a time, for the CPUs the at::vec copy cannot run on.
namespace scalar_lanes {

template <typename A>
using Vec = A;

template <typename A>
constexpr int64_t kLanes = 1;

template <typename T>
inline acc_t<T> load(const T* p, int64_t = 1) {
  return static_cast<acc_t<T>>(*p);
}

template <typename T>
inline void store(T* p, acc_t<T> v, int64_t = 1) {
  *p = static_cast<T>(v);
}

template <typename A>
inline A first_lanes(A v, int64_t) {
  return v;
}

template <typename A>
inline A reduce_sum(A v) {
  return v;
}

}  // namespace scalar_lanes

// Whether the at::vec copy of the row loops may run: always, except on x86
// where it is compiled for AVX2 and needs a CPU with AVX2, FMA and F16C, on
// which torch itself uses AVX2 or AVX-512 (so ATEN_CPU_CAPABILITY=default
// selects the scalar copy in both).
inline bool vec_copy_usable() {
#ifdef FASTLAYERNORM_CPU_AVX2
  static const bool usable = [] {
    const std::string torch_isa = at::get_cpu_capability();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c") &&
           (torch_isa == "AVX2" || torch_isa == "AVX512");
  }();
  return usable;
#else
  return true;
#endif
}

}  // namespace fastlayernorm::cpu
