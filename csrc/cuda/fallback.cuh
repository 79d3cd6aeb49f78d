// Fallback kernels: any row size, and float64. A CTA streams its row from
// memory in several passes (statistics, then output), so they move more
// bytes than the register kernels; they serve rows too large for a cluster's
// registers, float64, and GPUs without clusters.
#pragma once

#include "device_utils.cuh"

namespace fastlayernorm::cuda {

constexpr int kFallbackThreads = 512;

// Accumulation type: double for double, float otherwise.
template <typename T>
using acc_type_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T, typename W, typename A>
__global__ void __launch_bounds__(kFallbackThreads)
    ln_fwd_fallback_kernel(const T* __restrict__ x, const W* w, const W* b,
                           T* __restrict__ y, A* stats_out, int64_t rows, int64_t n,
                           A eps) {
  using Reducer = RowReducer<kFallbackThreads, 1, 1, A>;
  __shared__ typename Reducer::Storage storage;
  Reducer reducer(storage);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * n;
    A sum = 0;
    for (int64_t j = threadIdx.x; j < n; j += kFallbackThreads) sum += static_cast<A>(xr[j]);
    const A mean0 = reducer.sum(sum) / static_cast<A>(n);
    // Corrected two-pass, as in forward.cuh.
    A sd = 0, sq = 0;
    for (int64_t j = threadIdx.x; j < n; j += kFallbackThreads) {
      const A d = static_cast<A>(xr[j]) - mean0;
      sd += d;
      sq += d * d;
    }
    sd = reducer.sum(sd);
    sq = reducer.sum(sq);
    const A mean = mean0 + sd / static_cast<A>(n);
    const A var = (sq - sd * sd / static_cast<A>(n)) / static_cast<A>(n);
    const A rstd = A(1) / sqrt((var > A(0) ? var : A(0)) + eps);
    T* yr = y + row * n;
    for (int64_t j = threadIdx.x; j < n; j += kFallbackThreads) {
      A v = (static_cast<A>(xr[j]) - mean) * rstd;
      if (w) v *= static_cast<A>(w[j]);
      if (b) v += static_cast<A>(b[j]);
      yr[j] = static_cast<T>(v);
    }
    if (threadIdx.x == 0 && stats_out != nullptr) {  // null: not stored (inference)
      stats_out[2 * row] = mean;  // (mean, rstd) pairs, as forward.cuh's store_row_stats
      stats_out[2 * row + 1] = rstd;
    }
  }
}

template <typename T, typename W, typename A>
__device__ __forceinline__ A fallback_x_hat(const T* xr, const A* stats, bool from_output,
                                            const W* w, const W* b, int64_t row,
                                            int64_t j) {
  const A x = static_cast<A>(xr[j]);
  if (!from_output) return (x - stats[2 * row]) * stats[2 * row + 1];
  A v = b ? x - static_cast<A>(b[j]) : x;        // from the output
  return w ? v / static_cast<A>(w[j]) : v;
}

// w*dy, rounded once: the dx pass must see the very value the reduction
// summed (a contracted fma there would leave rounding noise where the exact
// result is 0, e.g. N = 1).
__device__ __forceinline__ float mul_rounded(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rounded(double a, double b) { return __dmul_rn(a, b); }

// dx only. stats: each row's (mean, rstd) pair; from_output: x holds the
// forward's output (the means are not read).
template <typename T, typename W, typename A>
__global__ void __launch_bounds__(kFallbackThreads)
    ln_bwd_dx_fallback_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                              const A* stats, bool from_output, const W* w,
                              const W* b, T* __restrict__ dx, int64_t rows,
                              int64_t n) {
  using Reducer = RowReducer<kFallbackThreads, 1, 1, A>;
  __shared__ typename Reducer::Storage storage;
  Reducer reducer(storage);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * n;
    const T* gr = dy + row * n;
    A s1 = 0, s2 = 0;
    for (int64_t j = threadIdx.x; j < n; j += kFallbackThreads) {
      const A g = w ? mul_rounded(static_cast<A>(gr[j]), static_cast<A>(w[j])) : static_cast<A>(gr[j]);
      s1 += g * fallback_x_hat(xr, stats, from_output, w, b, row, j);
      s2 += g;
    }
    const A c1 = reducer.sum(s1) / static_cast<A>(n);
    const A c2 = reducer.sum(s2) / static_cast<A>(n);
    const A rs = stats[2 * row + 1];
    for (int64_t j = threadIdx.x; j < n; j += kFallbackThreads) {
      const A g = w ? mul_rounded(static_cast<A>(gr[j]), static_cast<A>(w[j])) : static_cast<A>(gr[j]);
      const A xh = fallback_x_hat(xr, stats, from_output, w, b, row, j);
      dx[row * n + j] = static_cast<T>((g - (xh * c1 + c2)) * rs);
    }
  }
}

// dweight/dbias by columns: a CTA takes 32 columns; threadIdx.y sums every
// 8th row, then the 8 sums are added in order (deterministic).
constexpr int kColumnTile = 32;
constexpr int kRowSlices = 8;

template <typename T, typename W, typename A>
__global__ void __launch_bounds__(kColumnTile * kRowSlices)
    ln_dwdb_fallback_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                            const A* stats, bool from_output, const W* w,
                            const W* b, W* dw, W* db, int64_t rows, int64_t n) {
  __shared__ A s_dw[kRowSlices][kColumnTile + 1];
  __shared__ A s_db[kRowSlices][kColumnTile + 1];
  const int64_t col = blockIdx.x * static_cast<int64_t>(kColumnTile) + threadIdx.x;
  A a = 0, c = 0;
  if (col < n) {
    for (int64_t row = threadIdx.y; row < rows; row += kRowSlices) {
      const A g = static_cast<A>(dy[row * n + col]);
      a += g * fallback_x_hat(x + row * n, stats, from_output, w, b, row, col);
      c += g;
    }
  }
  s_dw[threadIdx.y][threadIdx.x] = a;
  s_db[threadIdx.y][threadIdx.x] = c;
  __syncthreads();
  if (threadIdx.y == 0 && col < n) {
    a = 0;
    c = 0;
    for (int s = 0; s < kRowSlices; ++s) {
      a += s_dw[s][threadIdx.x];
      c += s_db[s][threadIdx.x];
    }
    if (dw) dw[col] = static_cast<W>(a);
    if (db) db[col] = static_cast<W>(c);
  }
}

}  // namespace fastlayernorm::cuda
