// Forward LayerNorm kernel: a row lives in registers, read from memory once.
//   mean = sum(x) / N, var = sum((x - mean)^2) / N  (corrected two-pass, fp32)
//   y = (x - mean) * rstd * w + b
#pragma once

#include "device_utils.cuh"
#include "kernel_config.h"

namespace fastlayernorm::cuda {

// O: the output dtype, T's own, or float32 for half/bfloat16 input under
// autocast (the row is read in its dtype, no cast pass).
template <typename T, typename W, typename O = T>
struct ForwardParams {
  const T* x;
  const W* w;  // may be null; 16-byte aligned
  const W* b;  // may be null; 16-byte aligned
  O* y;
  float* mean;
  float* rstd;
  int64_t rows;
  int cols;
  float eps;
};

// VEC elements per 16-byte chunk, ITEMS chunks per thread, TPR threads per
// row, ROWS rows per CTA, CLUSTER CTAs per row; STAGES rows ahead are copied
// into shared memory (cp.async) while a row is reduced (0: rows are loaded
// straight into registers); SHIFTED: N is not a multiple of VEC (rows start
// off 16-byte boundaries, device_utils.cuh). CTA group g of G takes rows
// g, g + G, g + 2G, ... (its slots the consecutive ones of these); G is the
// resident CTA count (persistent grid) or all the rows' CTAs. Shifted rows:
// the launcher makes G a multiple of VEC, so all rows of a CTA start at the
// same offset from a 16-byte boundary, and the CTA's weight/bias chunks,
// shifted to match, are gathered once into shared memory.
// Dynamic shared memory: forward_smem_bytes below.
template <typename W, int VEC, int ITEMS, int THREADS, int STAGES, bool SHIFTED>
constexpr size_t forward_smem_bytes() {
  const size_t staged = static_cast<size_t>(STAGES) * ITEMS * THREADS * 16;
  const size_t params = SHIFTED ? 2 * ITEMS * THREADS * sizeof(Pack<W, VEC>) : 0;
  return staged + params;
}

template <typename T, typename W, typename O, int VEC, int ITEMS, int TPR, int ROWS,
          int CLUSTER, int MIN_CTAS, int STAGES, bool SHIFTED>
__global__ void __launch_bounds__(TPR * ROWS, MIN_CTAS)
    ln_fwd_kernel(const ForwardParams<T, W, O> p) {
  constexpr int kThreads = TPR * ROWS;
  constexpr int kRowThreads = TPR * CLUSTER;
  using Reducer = RowReducer<TPR, ROWS, CLUSTER, float2>;
  __shared__ typename Reducer::Storage reduce_storage;
  Reducer reducer(reduce_storage);
  // [STAGES][ITEMS][kThreads] 16-byte slots, then (shifted rows) the
  // weight and bias chunks: [2][ITEMS][kThreads] packs of W.
  extern __shared__ uint4 staging[];
  Pack<W, VEC>* const params_smem =
      reinterpret_cast<Pack<W, VEC>*>(staging + STAGES * ITEMS * kThreads);

  const int slot = threadIdx.x / TPR;  // which of the CTA's rows
  const int thread_in_row = cluster_rank<CLUSTER>() * TPR + threadIdx.x % TPR;
  const int64_t groups = gridDim.x / CLUSTER;
  const int64_t group = blockIdx.x / CLUSTER;
  const int64_t stride = groups * ROWS;
  const int n = p.cols;
  const float inv_n = 1.f / static_cast<float>(n);
  const T* x_end = p.x + p.rows * static_cast<int64_t>(n);
  const int shift = SHIFTED ? row_shift<VEC>(group, n) : 0;  // the same for all rows here
  auto stage_of = [&](int s) { return staging + s * ITEMS * kThreads; };
  auto param_slot = [&](int tensor, int i) -> Pack<W, VEC>& {
    return params_smem[(tensor * ITEMS + i) * kThreads + threadIdx.x];
  };
  if constexpr (SHIFTED) {
    // The chunks under this thread's columns start off 16-byte boundaries
    // of weight/bias: gathered once (each thread reads back only its own).
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int j0 = chunk_first_col<VEC>(i, thread_in_row, kRowThreads, shift);
      if (p.w) param_slot(0, i) = load_chunk<W, VEC, true>(p.w, j0, n, shift == 0);
      if (p.b) param_slot(1, i) = load_chunk<W, VEC, true>(p.b, j0, n, shift == 0);
    }
  }

  int64_t row = slot * groups + group;
  if constexpr (STAGES > 0) {
#pragma unroll
    for (int s = 0; s < STAGES; ++s) {
      const int64_t r = row + s * stride;
      stage_row<SHIFTED, T, VEC, ITEMS>(stage_of(s), kThreads, p.x + r * n, x_end, r < p.rows,
                                        thread_in_row, kRowThreads, n, shift);
      cp_async_commit();
    }
  }
  int stage = 0;
  // Uniform trip count for every thread of a CTA (and of a cluster), so the
  // reductions' shuffles and barriers always see all threads.
  for (int64_t base = group; base < p.rows; base += stride, row += stride) {
    const bool row_ok = row < p.rows;
    const int64_t offset = row * static_cast<int64_t>(n);
    Pack<T, VEC> packs[ITEMS];
    if constexpr (STAGES > 0) {
      cp_async_wait<STAGES - 1>();
      read_staged_row<SHIFTED>(packs, stage_of(stage), kThreads, row_ok, thread_in_row,
                               kRowThreads, n, shift);
    } else {
      load_row<SHIFTED>(packs, p.x + offset, row_ok, thread_in_row, kRowThreads, n, shift);
    }
    // The row widened to floats once, zeros outside it.
    float xf[ITEMS][VEC];
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      unpack(packs[i], xf[i]);
      mask_outside<VEC, SHIFTED>(xf[i], chunk_first_col<VEC>(i, thread_in_row, kRowThreads, shift),
                                 n);
    }
    if constexpr (STAGES > 0) {
      // The stage just read receives the row STAGES rows ahead.
      const int64_t r = row + STAGES * stride;
      stage_row<SHIFTED, T, VEC, ITEMS>(stage_of(stage), kThreads, p.x + r * n, x_end,
                                        r < p.rows, thread_in_row, kRowThreads, n, shift);
      cp_async_commit();
      stage = stage + 1 == STAGES ? 0 : stage + 1;
    }

    // Threads holding more than 16 floats of a row run at the register cap
    // (64 per thread on 1024-thread rows): there serial sums and the
    // four-operation output keep fewer values live (fewer spills; measured
    // on rows of 64-512 KiB, docs/kernels.md); elsewhere sums are trees and
    // the output is fused multiply-adds.
    constexpr bool kFewRegisters = ITEMS * VEC > 16;
    float sum = 0.f;
    if constexpr (kFewRegisters) {
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) sum += xf[i][k];
      }
    } else {
      float chunk_sums[ITEMS];
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) chunk_sums[i] = tree_sum(xf[i]);
      sum = tree_sum(chunk_sums);
    }
    const float mean0 = reducer.sum(make_float2(sum, 0.f)).x * inv_n;

    // Corrected two-pass: the deviations' sum corrects the rounding of the
    // first mean (a constant row then gives x - mean = 0 exactly, not noise
    // that rstd = 1/sqrt(eps) would amplify), and
    //   var = (sum(d^2) - sum(d)^2 / N) / N,  d = x - mean0.
    // Only columns of the row count (d = 0 outside it). Apart from
    // kFewRegisters, the row is kept as d from here on.
    float2 dev = make_float2(0.f, 0.f);
    if constexpr (kFewRegisters) {
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        const int j0 = chunk_first_col<VEC>(i, thread_in_row, kRowThreads, shift);
        if (chunk_in_row<VEC, SHIFTED>(j0, n)) {
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            const float d = (!SHIFTED || col_in_row(j0 + k, n)) ? xf[i][k] - mean0 : 0.f;
            dev.x += d;
            dev.y = fmaf(d, d, dev.y);
          }
        }
      }
    } else {
      float dev_sums[ITEMS], dev_squares[ITEMS];
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        const int j0 = chunk_first_col<VEC>(i, thread_in_row, kRowThreads, shift);
        if (chunk_full<VEC, SHIFTED>(j0, n)) {
#pragma unroll
          for (int k = 0; k < VEC; ++k) xf[i][k] -= mean0;
        } else if (chunk_partial<VEC, SHIFTED>(j0, n)) {
#pragma unroll
          for (int k = 0; k < VEC; ++k) xf[i][k] = col_in_row(j0 + k, n) ? xf[i][k] - mean0 : 0.f;
        } else {
#pragma unroll
          for (int k = 0; k < VEC; ++k) xf[i][k] = 0.f;
        }
        dev_sums[i] = tree_sum(xf[i]);
        dev_squares[i] = dot(xf[i], xf[i]);
      }
      dev = make_float2(tree_sum(dev_sums), tree_sum(dev_squares));
    }
    dev = reducer.sum(dev);
    const float corr = dev.x * inv_n;  // mean = mean0 + corr
    const float mean = mean0 + corr;
    const float var = fmaxf(dev.y - dev.x * corr, 0.f) * inv_n;
    const float rstd = rsqrtf(var + p.eps);

    if (row_ok) {
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        const int j0 = chunk_first_col<VEC>(i, thread_in_row, kRowThreads, shift);
        if (chunk_in_row<VEC, SHIFTED>(j0, n)) {
          float wf[VEC], bf[VEC];
          if constexpr (SHIFTED) {
            if (p.w) unpack(param_slot(0, i), wf);
            if (p.b) unpack(param_slot(1, i), bf);
          } else {
            if (p.w) unpack(load_chunk<W, VEC, false>(p.w, j0, n, true), wf);
            if (p.b) unpack(load_chunk<W, VEC, false>(p.b, j0, n, true), bf);
          }
          // y = (x - mean) * rstd * w + b = d * a + (b - corr * a), a = rstd * w:
          // two fused multiply-adds and a multiply per element.
          float v[VEC];
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            if constexpr (kFewRegisters) {
              v[k] = (xf[i][k] - mean) * rstd;  // xf still holds x here
              if (p.w) v[k] *= wf[k];
              if (p.b) v[k] += bf[k];
            } else {
              const float a = p.w ? rstd * wf[k] : rstd;
              v[k] = fmaf(xf[i][k], a, fmaf(-corr, a, p.b ? bf[k] : 0.f));
            }
          }
          Pack<O, VEC> out;
          store_floats(out, v);
          store_chunk<O, VEC, SHIFTED>(p.y + offset, j0, n, out);
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
