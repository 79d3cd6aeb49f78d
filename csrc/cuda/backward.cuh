// Backward LayerNorm kernels. One pass over x and dy per row:
//   x_hat = (x - mean) * rstd          (or (y - b) / w, rebuilt from the output)
//   c1 = sum(w*dy*x_hat) / N, c2 = sum(w*dy) / N      (one joint reduction)
//   dx = (w*dy - (x_hat*c1 + c2)) * rstd
// dweight/dbias: each thread owns fixed columns across the rows of its
// persistent CTA and accumulates dy*x_hat and dy in fp32 registers; each CTA
// (cluster) writes one partial row, and ln_dwdb_finalize_kernel sums the
// partials in a fixed order. No atomics: bitwise deterministic.
#pragma once

#include "device_utils.cuh"
#include "kernel_config.h"

namespace fastlayernorm::cuda {

template <typename T, typename W>
struct BackwardParams {
  const T* dy;
  const T* x;  // the forward's input, or its output when from_output
  const float* mean;  // null when from_output
  const float* rstd;
  const W* w;  // may be null
  const W* b;  // may be null; read only when from_output
  T* dx;       // may be null (grad_input not requested)
  float* part_dw;  // [partial rows, cols], null when no parameter grads
  float* part_db;
  int64_t rows;
  int cols;
  bool from_output;
};

template <typename W, int VEC>
__device__ __forceinline__ float x_hat_of(float x, float mean, float rstd,
                                          const Pack<W, VEC>& wv,
                                          const Pack<W, VEC>& bv, int k,
                                          bool has_w, bool has_b,
                                          bool from_output) {
  if (!from_output) return (x - mean) * rstd;
  float v = has_b ? x - to_float(bv.v[k]) : x;
  return has_w ? v / to_float(wv.v[k]) : v;
}

template <typename T, typename W, int VEC, int ITEMS, int TPR, int ROWS, int CLUSTER,
          int MIN_CTAS, bool PREFETCH>
__global__ void __launch_bounds__(TPR * ROWS, MIN_CTAS)
    ln_bwd_kernel(const BackwardParams<T, W> p) {
  constexpr int kThreads = TPR * ROWS;
  constexpr int kRowThreads = TPR * CLUSTER;
  using Reducer = RowReducer<TPR, ROWS, CLUSTER, float2>;
  __shared__ typename Reducer::Storage reduce_storage;
  Reducer reducer(reduce_storage);

  const int slot = threadIdx.x / TPR;
  const int lane = threadIdx.x % TPR;
  const int thread_in_row = cluster_rank<CLUSTER>() * TPR + lane;
  const int64_t group = blockIdx.x / CLUSTER;
  const int64_t stride = static_cast<int64_t>(gridDim.x / CLUSTER) * ROWS;
  const int n = p.cols;
  const float inv_n = 1.f / static_cast<float>(n);
  const bool has_w = p.w != nullptr, has_b = p.b != nullptr;
  const bool want_params = p.part_dw != nullptr;

  // The thread's columns are the same in every row: weight (and bias, when
  // rebuilding from the output) are loaded once.
  Pack<W, VEC> wv[ITEMS], bv[ITEMS];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int col = (i * kRowThreads + thread_in_row) * VEC;
    if (has_w && col < n) wv[i] = load_pack<W, VEC>(p.w + col);
    if (p.from_output && has_b && col < n) bv[i] = load_pack<W, VEC>(p.b + col);
  }

  float dw_acc[ITEMS][VEC], db_acc[ITEMS][VEC];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) dw_acc[i][k] = db_acc[i][k] = 0.f;
  }

  Pack<T, VEC> xv[ITEMS], gv[ITEMS];
  int64_t row = group * ROWS + slot;
  if constexpr (PREFETCH) {
    load_row(xv, p.x + row * n, row < p.rows, thread_in_row, kRowThreads, n);
    load_row(gv, p.dy + row * n, row < p.rows, thread_in_row, kRowThreads, n);
  }
  for (int64_t base = group * ROWS; base < p.rows; base += stride, row += stride) {
    const bool row_ok = row < p.rows;
    const int64_t offset = row * static_cast<int64_t>(n);
    Pack<T, VEC> x_next[ITEMS], g_next[ITEMS];
    if constexpr (PREFETCH) {
      const bool next_ok = row + stride < p.rows;
      load_row(x_next, p.x + offset + stride * n, next_ok, thread_in_row, kRowThreads, n);
      load_row(g_next, p.dy + offset + stride * n, next_ok, thread_in_row, kRowThreads, n);
    } else {
      load_row(xv, p.x + offset, row_ok, thread_in_row, kRowThreads, n);
      load_row(gv, p.dy + offset, row_ok, thread_in_row, kRowThreads, n);
    }
    const float mean = (row_ok && !p.from_output) ? p.mean[row] : 0.f;
    const float rstd = row_ok ? p.rstd[row] : 0.f;

    // x_hat, dy and w*dy of element k of pack i. Computed again for dx
    // rather than kept: the row would otherwise need 3 floats per element
    // in registers across the reduction.
    auto element = [&](int i, int k, float& xh, float& g, float& wg) {
      xh = x_hat_of(to_float(xv[i].v[k]), mean, rstd, wv[i], bv[i], k, has_w, has_b,
                    p.from_output);
      g = to_float(gv[i].v[k]);
      wg = has_w ? g * to_float(wv[i].v[k]) : g;
    };

    float2 sums = make_float2(0.f, 0.f);  // (sum w*dy*x_hat, sum w*dy)
    if (row_ok) {
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        const int col = (i * kRowThreads + thread_in_row) * VEC;
        if (col < n) {
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            float xh, g, wg;
            element(i, k, xh, g, wg);
            sums.x += wg * xh;
            sums.y += wg;
            dw_acc[i][k] += g * xh;
            db_acc[i][k] += g;
          }
        }
      }
    }
    sums = reducer.sum(sums);
    const float c1 = sums.x * inv_n, c2 = sums.y * inv_n;

    if (row_ok && p.dx) {
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        const int col = (i * kRowThreads + thread_in_row) * VEC;
        if (col < n) {
          float v[VEC];
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            float xh, g, wg;
            element(i, k, xh, g, wg);
            v[k] = (wg - (xh * c1 + c2)) * rstd;
          }
          Pack<T, VEC> out;
          store_floats(out, v);
          store_pack(p.dx + offset + col, out);
        }
      }
    }
    if constexpr (PREFETCH) {
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        xv[i] = x_next[i];
        gv[i] = g_next[i];
      }
    }
  }

  if (want_params) {
    // One partial row per CTA group (cluster). CTAs holding several rows
    // first add their row slots in shared memory, in slot order.
    const int64_t part_offset = group * static_cast<int64_t>(n);
    auto write_partial = [&](float(&acc)[ITEMS][VEC], float* part) {
      if constexpr (ROWS > 1) {
        __shared__ float combine[ITEMS * VEC][kThreads];
#pragma unroll
        for (int i = 0; i < ITEMS; ++i) {
#pragma unroll
          for (int k = 0; k < VEC; ++k) combine[i * VEC + k][threadIdx.x] = acc[i][k];
        }
        __syncthreads();
        if (slot == 0) {
#pragma unroll
          for (int i = 0; i < ITEMS; ++i) {
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
              float s = 0.f;
              for (int r = 0; r < ROWS; ++r) s += combine[i * VEC + k][r * TPR + lane];
              acc[i][k] = s;
            }
          }
        }
        __syncthreads();  // combine is reused by the next call
        if (slot != 0) return;
      }
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        const int col = (i * kRowThreads + thread_in_row) * VEC;
        if (col < n) {
          Pack<float, VEC> out;
#pragma unroll
          for (int k = 0; k < VEC; ++k) out.v[k] = acc[i][k];
          store_pack(part + part_offset + col, out);
        }
      }
    };
    write_partial(dw_acc, p.part_dw);
    write_partial(db_acc, p.part_db);
  }
  cluster_exit_barrier<CLUSTER>();
}

// Sums the partial rows column by column: threadIdx.y takes every 32nd
// partial row, then the 32 sums are added in order. Fixed order: deterministic.
constexpr int kFinalizeCols = 32;
constexpr int kFinalizeSlices = 32;

template <typename W>
__global__ void __launch_bounds__(kFinalizeCols * kFinalizeSlices)
    ln_dwdb_finalize_kernel(const float* __restrict__ part_dw,
                            const float* __restrict__ part_db, int64_t parts,
                            int n, W* dw, W* db) {
  __shared__ float s_dw[kFinalizeSlices][kFinalizeCols + 1];
  __shared__ float s_db[kFinalizeSlices][kFinalizeCols + 1];
  const int col = blockIdx.x * kFinalizeCols + threadIdx.x;
  float a = 0.f, b = 0.f;
  if (col < n) {
    for (int64_t r = threadIdx.y; r < parts; r += kFinalizeSlices) {
      a += part_dw[r * n + col];
      b += part_db[r * n + col];
    }
  }
  s_dw[threadIdx.y][threadIdx.x] = a;
  s_db[threadIdx.y][threadIdx.x] = b;
  __syncthreads();
  if (threadIdx.y == 0 && col < n) {
    a = 0.f;
    b = 0.f;
    for (int s = 0; s < kFinalizeSlices; ++s) {
      a += s_dw[s][threadIdx.x];
      b += s_db[s][threadIdx.x];
    }
    if (dw) dw[col] = static_cast<W>(a);
    if (db) db[col] = static_cast<W>(b);
  }
}

}  // namespace fastlayernorm::cuda
