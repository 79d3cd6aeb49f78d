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
  const W* w;  // may be null; 16-byte aligned
  const W* b;  // may be null; 16-byte aligned
  T* y;
  float* mean;
  float* rstd;
  int64_t rows;
  int cols;
  float eps;
};

// VEC elements per 16-byte chunk, ITEMS chunks per thread, TPR threads per
// row, ROWS rows per CTA, CLUSTER CTAs per row; SHIFTED: N is not a multiple
// of VEC (rows start off 16-byte boundaries, device_utils.cuh). Persistent:
// CTA group g of G takes rows g, g + G, g + 2G, ... (its slots the
// consecutive ones of these).
template <typename T, typename W, int VEC, int ITEMS, int TPR, int ROWS, int CLUSTER,
          int MIN_CTAS, bool PREFETCH, bool SHIFTED>
__global__ void __launch_bounds__(TPR * ROWS, MIN_CTAS)
    ln_fwd_kernel(const ForwardParams<T, W> p) {
  constexpr int kRowThreads = TPR * CLUSTER;
  using Reducer = RowReducer<TPR, ROWS, CLUSTER, float2>;
  __shared__ typename Reducer::Storage reduce_storage;
  Reducer reducer(reduce_storage);

  const int slot = threadIdx.x / TPR;  // which of the CTA's rows
  const int thread_in_row = cluster_rank<CLUSTER>() * TPR + threadIdx.x % TPR;
  const int64_t groups = gridDim.x / CLUSTER;
  const int64_t group = blockIdx.x / CLUSTER;
  const int64_t stride = groups * ROWS;
  const int n = p.cols;
  const float inv_n = 1.f / static_cast<float>(n);

  // The row is widened to floats once; with PREFETCH the packs then receive
  // the next row while this one is reduced and written.
  Pack<T, VEC> packs[ITEMS];
  int64_t row = slot * groups + group;
  if constexpr (PREFETCH) {
    load_row<SHIFTED>(packs, p.x + row * n, row < p.rows, thread_in_row, kRowThreads, n,
                      SHIFTED ? row_shift<VEC>(row, n) : 0);
  }
  // Uniform trip count for every thread of a CTA (and of a cluster), so the
  // reductions' shuffles and barriers always see all threads.
  for (int64_t base = group; base < p.rows; base += stride, row += stride) {
    const bool row_ok = row < p.rows;
    const int64_t offset = row * static_cast<int64_t>(n);
    const int shift = SHIFTED ? row_shift<VEC>(row, n) : 0;
    if constexpr (!PREFETCH) {
      load_row<SHIFTED>(packs, p.x + offset, row_ok, thread_in_row, kRowThreads, n, shift);
    }
    float xf[ITEMS][VEC];  // zeros outside the row (load_row zero-fills)
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) unpack(packs[i], xf[i]);
    if constexpr (PREFETCH) {
      const int64_t next = row + stride;
      load_row<SHIFTED>(packs, p.x + offset + stride * n, next < p.rows, thread_in_row,
                        kRowThreads, n, SHIFTED ? row_shift<VEC>(next, n) : 0);
    }

    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) sum += xf[i][k];
    }
    const float mean0 = reducer.sum(make_float2(sum, 0.f)).x * inv_n;

    // Corrected two-pass: the deviations' sum corrects the rounding of the
    // first mean (a constant row then gives x - mean = 0 exactly, not noise
    // that rstd = 1/sqrt(eps) would amplify), and
    //   var = (sum(d^2) - sum(d)^2 / N) / N,  d = x - mean0.
    // Only columns of the row count (the zero fill outside does not).
    float2 dev = make_float2(0.f, 0.f);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int j0 = chunk_first_col<VEC>(i, thread_in_row, kRowThreads, shift);
      if (chunk_full<VEC, SHIFTED>(j0, n)) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const float d = xf[i][k] - mean0;
          dev.x += d;
          dev.y = fmaf(d, d, dev.y);
        }
      } else if (chunk_partial<VEC, SHIFTED>(j0, n)) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const float d = col_in_row(j0 + k, n) ? xf[i][k] - mean0 : 0.f;
          dev.x += d;
          dev.y = fmaf(d, d, dev.y);
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
        const int j0 = chunk_first_col<VEC>(i, thread_in_row, kRowThreads, shift);
        if (chunk_full<VEC, SHIFTED>(j0, n) || chunk_partial<VEC, SHIFTED>(j0, n)) {
          // weight/bias are 16-byte aligned: their chunk is aligned with the
          // row's only when the row is.
          float wf[VEC], bf[VEC];
          if (p.w) unpack(load_chunk<W, VEC, SHIFTED>(p.w, j0, n, shift == 0), wf);
          if (p.b) unpack(load_chunk<W, VEC, SHIFTED>(p.b, j0, n, shift == 0), bf);
          float v[VEC];
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            v[k] = (xf[i][k] - mean) * rstd;
            if (p.w) v[k] *= wf[k];
            if (p.b) v[k] += bf[k];
          }
          Pack<T, VEC> out;
          store_floats(out, v);
          store_chunk<T, VEC, SHIFTED>(p.y + offset, j0, n, out);
        }
      }
      if (thread_in_row == 0) {
        p.mean[row] = mean;
        p.rstd[row] = rstd;
      }
    }
  }
  cluster_exit_barrier<CLUSTER>();
}

}  // namespace fastlayernorm::cuda
