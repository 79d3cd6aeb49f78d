// Forward LayerNorm kernel: a row lives in registers, read from memory once.
//   mean = sum(x) / N, var = sum((x - mean)^2) / N  (corrected two-pass, fp32)
//   y = (x - mean) * rstd * w + b
#pragma once

#include "device_utils.cuh"
#include "kernel_config.h"

namespace fastlayernorm::cuda {

template <typename T, typename W>
struct ForwardParams {
  const T* x;
  const W* w;  // may be null
  const W* b;  // may be null
  T* y;
  float* mean;
  float* rstd;
  int64_t rows;
  int cols;
  float eps;
};

// VEC elements per access (16 bytes, or 1 for rows that are not 16B aligned),
// ITEMS accesses per thread, TPR threads per row, ROWS rows per CTA, CLUSTER
// CTAs per row. Persistent: a CTA (cluster) walks rows with a grid stride,
// loading its next row while it reduces the current one.
template <typename T, typename W, int VEC, int ITEMS, int TPR, int ROWS, int CLUSTER,
          int MIN_CTAS, bool PREFETCH>
__global__ void __launch_bounds__(TPR * ROWS, MIN_CTAS)
    ln_fwd_kernel(const ForwardParams<T, W> p) {
  constexpr int kRowThreads = TPR * CLUSTER;
  using Reducer = RowReducer<TPR, ROWS, CLUSTER, float2>;
  __shared__ typename Reducer::Storage reduce_storage;
  Reducer reducer(reduce_storage);

  const int slot = threadIdx.x / TPR;  // which of the CTA's rows
  const int thread_in_row = cluster_rank<CLUSTER>() * TPR + threadIdx.x % TPR;
  const int64_t group = blockIdx.x / CLUSTER;
  const int64_t stride = static_cast<int64_t>(gridDim.x / CLUSTER) * ROWS;
  const int n = p.cols;
  const float inv_n = 1.f / static_cast<float>(n);

  Pack<T, VEC> xv[ITEMS];
  int64_t row = group * ROWS + slot;
  if constexpr (PREFETCH) {
    load_row(xv, p.x + row * n, row < p.rows, thread_in_row, kRowThreads, n);
  }
  // Uniform trip count for every thread of a CTA (and of a cluster), so the
  // reductions' shuffles and barriers always see all threads.
  for (int64_t base = group * ROWS; base < p.rows; base += stride, row += stride) {
    const bool row_ok = row < p.rows;
    const int64_t offset = row * static_cast<int64_t>(n);
    Pack<T, VEC> next[ITEMS];
    if constexpr (PREFETCH) {
      load_row(next, p.x + offset + stride * n, row + stride < p.rows, thread_in_row,
               kRowThreads, n);
    } else {
      load_row(xv, p.x + offset, row_ok, thread_in_row, kRowThreads, n);
    }

    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) sum += to_float(xv[i].v[k]);
    }
    const float mean0 = reducer.sum(make_float2(sum, 0.f)).x * inv_n;

    // Corrected two-pass: the deviations' sum corrects the rounding of the
    // first mean (a constant row then gives x - mean = 0 exactly, not noise
    // that rstd = 1/sqrt(eps) would amplify), and
    //   var = (sum(d^2) - sum(d)^2 / N) / N,  d = x - mean0.
    float2 dev = make_float2(0.f, 0.f);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int col = (i * kRowThreads + thread_in_row) * VEC;
      if (col < n) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const float d = to_float(xv[i].v[k]) - mean0;
          dev.x += d;
          dev.y += d * d;
        }
      }
    }
    dev = reducer.sum(dev);
    const float mean = mean0 + dev.x * inv_n;
    const float var = fmaxf(dev.y - dev.x * dev.x * inv_n, 0.f) * inv_n;
    const float rstd = rsqrtf(var + p.eps);

    if (row_ok) {
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        const int col = (i * kRowThreads + thread_in_row) * VEC;
        if (col < n) {
          Pack<W, VEC> wv, bv;
          if (p.w) wv = load_pack<W, VEC>(p.w + col);
          if (p.b) bv = load_pack<W, VEC>(p.b + col);
          float v[VEC];
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            v[k] = (to_float(xv[i].v[k]) - mean) * rstd;
            if (p.w) v[k] *= to_float(wv.v[k]);
            if (p.b) v[k] += to_float(bv.v[k]);
          }
          Pack<T, VEC> out;
          store_floats(out, v);
          store_pack(p.y + offset + col, out);
        }
      }
      if (thread_in_row == 0) {
        p.mean[row] = mean;
        p.rstd[row] = rstd;
      }
    }
    if constexpr (PREFETCH) {
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) xv[i] = next[i];
    }
  }
  cluster_exit_barrier<CLUSTER>();
}

}  // namespace fastlayernorm::cuda
