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

// G: the dtype of dy, T's own, or float32 for half/bfloat16 input under
// autocast (the forward wrote a float32 output).
template <typename T, typename W, typename G = T>
struct BackwardParams {
  const G* dy;
  const T* x;  // the forward's input, or its output (FROM_OUTPUT kernels)
  const float* mean;  // null for FROM_OUTPUT kernels
  const float* rstd;
  const W* w;  // may be null; 16-byte aligned
  const W* b;  // may be null; read by FROM_OUTPUT kernels only
  T* dx;       // may be null (grad_input not requested)
  float* part_dw;  // [partial rows, cols], null when no parameter grads
  float* part_db;
  int64_t rows;
  int cols;
};

// 16-byte shared-memory slots a staged chunk of x and of dy take together
// (dy may be float32 for a 16-bit x: two slots).
template <typename T, typename G>
constexpr int staged_slots() {
  return 1 + static_cast<int>(sizeof(G) / sizeof(T));
}

// Dynamic shared memory: STAGES staged rows of x and dy, then (ACC_SMEM) the
// dweight/dbias accumulators, [2][ITEMS][VEC / 4][threads] float4.
template <typename T, typename G, int ITEMS, int THREADS, int STAGES, bool ACC_SMEM>
constexpr size_t backward_smem_bytes() {
  const size_t staged = static_cast<size_t>(STAGES) * ITEMS * THREADS * 16 * staged_slots<T, G>();
  const size_t acc = ACC_SMEM ? 2 * static_cast<size_t>(ITEMS) * THREADS * (16 / sizeof(T)) * 4 : 0;
  return staged + acc;
}

// FROM_OUTPUT: x holds the forward's output y and x_hat = (y - b) / w is
// rebuilt from it (memory-saving mode); otherwise x_hat = (x - mean) * rstd.
// Rows as in the forward (group g of G takes rows g, g + G, ...; STAGES rows
// ahead of x and dy are staged in shared memory). A thread's
// columns must be the same in all its rows (weight and accumulators are
// kept per column): with rows that are not a whole number of 16-byte chunks
// the launcher makes G a multiple of VEC, so all rows of a CTA start at the
// same offset from a 16-byte boundary.
template <typename T, typename W, typename G, int VEC, int ITEMS, int TPR, int ROWS,
          int CLUSTER, int MIN_CTAS, int STAGES, bool ACC_SMEM, bool FROM_OUTPUT, bool SHIFTED>
__global__ void __launch_bounds__(TPR * ROWS, MIN_CTAS)
    ln_bwd_kernel(const BackwardParams<T, W, G> p) {
  static_assert(!ACC_SMEM || VEC % 4 == 0, "accumulators in shared memory are float4s");
  constexpr int kThreads = TPR * ROWS;
  constexpr int kRowThreads = TPR * CLUSTER;
  using Reducer = RowReducer<TPR, ROWS, CLUSTER, float2>;
  __shared__ typename Reducer::Storage reduce_storage;
  Reducer reducer(reduce_storage);
  // [STAGES][x: ITEMS x kThreads slots, then dy: ITEMS x (its slots) x kThreads]
  extern __shared__ uint4 staging[];
  constexpr int kStageSlots = ITEMS * kThreads * staged_slots<T, G>();

  const int slot = threadIdx.x / TPR;
  const int lane = threadIdx.x % TPR;
  const int thread_in_row = cluster_rank<CLUSTER>() * TPR + lane;
  const int64_t groups = gridDim.x / CLUSTER;
  const int64_t group = blockIdx.x / CLUSTER;
  const int64_t stride = groups * ROWS;
  const int n = p.cols;
  const float inv_n = 1.f / static_cast<float>(n);
  const bool has_w = p.w != nullptr, has_b = p.b != nullptr;
  const bool want_params = p.part_dw != nullptr;
  const int shift = SHIFTED ? row_shift<VEC>(group, n) : 0;  // the same for all rows here

  // The thread's columns are the same in every row: weight (and bias, when
  // rebuilding from the output) are loaded once, kept packed (zeros outside).
  Pack<W, VEC> wv[ITEMS], bv[ITEMS];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int j0 = chunk_first_col<VEC>(i, thread_in_row, kRowThreads, shift);
    zero_pack(wv[i]);
    zero_pack(bv[i]);
    if (has_w) wv[i] = load_chunk<W, VEC, SHIFTED>(p.w, j0, n, shift == 0);
    if (FROM_OUTPUT && has_b) bv[i] = load_chunk<W, VEC, SHIFTED>(p.b, j0, n, shift == 0);
  }

  // The dweight/dbias accumulators: registers, or this thread's own float4
  // slots in shared memory (ACC_SMEM; no barrier: no other thread reads them).
  float dw_acc[ITEMS][VEC], db_acc[ITEMS][VEC];
  float4* const acc_smem = reinterpret_cast<float4*>(staging + STAGES * kStageSlots);
  auto acc_slot = [&](int tensor, int i, int q) -> float4& {
    return acc_smem[((tensor * ITEMS + i) * (VEC / 4) + q) * kThreads + threadIdx.x];
  };
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) dw_acc[i][k] = db_acc[i][k] = 0.f;
    if constexpr (ACC_SMEM) {
      if (want_params) {
#pragma unroll
        for (int q = 0; q < VEC / 4; ++q) {
          acc_slot(0, i, q) = make_float4(0.f, 0.f, 0.f, 0.f);
          acc_slot(1, i, q) = make_float4(0.f, 0.f, 0.f, 0.f);
        }
      }
    }
  }

  // x and dy of a row are widened once (x to x_hat, dy to w*dy).
  const T* x_end = p.x + p.rows * static_cast<int64_t>(n);
  const G* dy_end = p.dy + p.rows * static_cast<int64_t>(n);
  auto stage_of = [&](int s, int tensor) {
    return staging + s * kStageSlots + tensor * ITEMS * kThreads;
  };
  auto stage_rows = [&](int s, int64_t r) {
    const bool ok = r < p.rows;
    stage_row<SHIFTED, T, VEC, ITEMS>(stage_of(s, 0), kThreads, p.x + r * n, x_end, ok,
                                      thread_in_row, kRowThreads, n, shift);
    stage_row<SHIFTED, G, VEC, ITEMS>(stage_of(s, 1), kThreads, p.dy + r * n, dy_end, ok,
                                      thread_in_row, kRowThreads, n, shift);
    cp_async_commit();
  };
  int64_t row = slot * groups + group;
  if constexpr (STAGES > 0) {
#pragma unroll
    for (int s = 0; s < STAGES; ++s) stage_rows(s, row + s * stride);
  }
  int stage = 0;
  for (int64_t base = group; base < p.rows; base += stride, row += stride) {
    const bool row_ok = row < p.rows;
    const int64_t offset = row * static_cast<int64_t>(n);
    Pack<T, VEC> xv[ITEMS];
    Pack<G, VEC> gv[ITEMS];
    if constexpr (STAGES > 0) {
      cp_async_wait<STAGES - 1>();
      read_staged_row<SHIFTED>(xv, stage_of(stage, 0), kThreads, row_ok, thread_in_row,
                               kRowThreads, n, shift);
      read_staged_row<SHIFTED>(gv, stage_of(stage, 1), kThreads, row_ok, thread_in_row,
                               kRowThreads, n, shift);
    } else {
      load_row<SHIFTED>(xv, p.x + offset, row_ok, thread_in_row, kRowThreads, n, shift);
      load_row<SHIFTED>(gv, p.dy + offset, row_ok, thread_in_row, kRowThreads, n, shift);
    }
    const float mean = (row_ok && !FROM_OUTPUT) ? p.mean[row] : 0.f;
    const float rstd = row_ok ? p.rstd[row] : 0.f;

    float xh[ITEMS][VEC], wg[ITEMS][VEC];
    float dot_sums[ITEMS], wg_sums[ITEMS];  // per chunk: sum w*dy*x_hat, sum w*dy
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      float g[VEC];
      unpack(xv[i], xh[i]);
      unpack(gv[i], g);
      // Staged partial chunks hold the neighbouring row's x and dy: zeroed,
      // so those columns add nothing below (even where they are not finite).
      const int j0 = chunk_first_col<VEC>(i, thread_in_row, kRowThreads, shift);
      mask_outside<VEC, SHIFTED>(xh[i], j0, n);
      mask_outside<VEC, SHIFTED>(g, j0, n);
      float wf[VEC];
      if (has_w) unpack(wv[i], wf);
      if constexpr (FROM_OUTPUT) {
        float bf[VEC];
        if (has_b) unpack(bv[i], bf);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const float v = has_b ? xh[i][k] - bf[k] : xh[i][k];
          // Outside the row w is a zero fill: no 0/0 there.
          xh[i][k] = has_w ? (col_in_row(j0 + k, n) ? v / wf[k] : 0.f) : v;
        }
      } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) xh[i][k] = (xh[i][k] - mean) * rstd;
      }
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        // Rounded once (no fma contraction): the dx pass must subtract the
        // very value the row sum added (dx is exactly 0 for N = 1).
        wg[i][k] = has_w ? __fmul_rn(g[k], wf[k]) : g[k];
        if constexpr (!ACC_SMEM) {
          dw_acc[i][k] = fmaf(g[k], xh[i][k], dw_acc[i][k]);
          db_acc[i][k] += g[k];
        }
      }
      dot_sums[i] = dot(wg[i], xh[i]);
      wg_sums[i] = tree_sum(wg[i]);
      if constexpr (ACC_SMEM) {
        if (want_params) {
#pragma unroll
          for (int q = 0; q < VEC / 4; ++q) {
            float4 a = acc_slot(0, i, q), c = acc_slot(1, i, q);
            a.x = fmaf(g[4 * q], xh[i][4 * q], a.x);
            a.y = fmaf(g[4 * q + 1], xh[i][4 * q + 1], a.y);
            a.z = fmaf(g[4 * q + 2], xh[i][4 * q + 2], a.z);
            a.w = fmaf(g[4 * q + 3], xh[i][4 * q + 3], a.w);
            c.x += g[4 * q];
            c.y += g[4 * q + 1];
            c.z += g[4 * q + 2];
            c.w += g[4 * q + 3];
            acc_slot(0, i, q) = a;
            acc_slot(1, i, q) = c;
          }
        }
      }
    }
    if constexpr (STAGES > 0) {
      // The stage just read receives the rows STAGES ahead.
      stage_rows(stage, row + STAGES * stride);
      stage = stage + 1 == STAGES ? 0 : stage + 1;
    }
    const float2 sums = reducer.sum(make_float2(tree_sum(dot_sums), tree_sum(wg_sums)));
    const float c1 = sums.x * inv_n, c2 = sums.y * inv_n;

    if (row_ok && p.dx) {
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        const int j0 = chunk_first_col<VEC>(i, thread_in_row, kRowThreads, shift);
        if (chunk_in_row<VEC, SHIFTED>(j0, n)) {
          float v[VEC];
#pragma unroll
          for (int k = 0; k < VEC; ++k) v[k] = (wg[i][k] - (xh[i][k] * c1 + c2)) * rstd;
          Pack<T, VEC> out;
          store_floats(out, v);
          store_chunk<T, VEC, SHIFTED>(p.dx + offset, j0, n, out);
        }
      }
    }
  }

  if (want_params) {
    if constexpr (ACC_SMEM) {
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
#pragma unroll
        for (int q = 0; q < VEC / 4; ++q) {
          const float4 a = acc_slot(0, i, q), c = acc_slot(1, i, q);
          dw_acc[i][4 * q] = a.x;
          dw_acc[i][4 * q + 1] = a.y;
          dw_acc[i][4 * q + 2] = a.z;
          dw_acc[i][4 * q + 3] = a.w;
          db_acc[i][4 * q] = c.x;
          db_acc[i][4 * q + 1] = c.y;
          db_acc[i][4 * q + 2] = c.z;
          db_acc[i][4 * q + 3] = c.w;
        }
      }
    }
    // One partial row per CTA group (cluster). CTAs holding several rows
    // first add their row slots in shared memory, in slot order (all slots
    // hold the same columns).
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
      float* part_row = part + part_offset;
      // 16-byte stores when the partial row's chunk is aligned.
      const bool aligned = shift == 0 && n % 4 == 0;
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        const int j0 = chunk_first_col<VEC>(i, thread_in_row, kRowThreads, shift);
        if (aligned && chunk_full<VEC, SHIFTED>(j0, n)) {
          Pack<float, VEC> out;
#pragma unroll
          for (int k = 0; k < VEC; ++k) out[k] = acc[i][k];
          store_pack(part_row + j0, out);
        } else if (chunk_in_row<VEC, SHIFTED>(j0, n)) {
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            if (col_in_row(j0 + k, n)) part_row[j0 + k] = acc[i][k];
          }
        }
      }
    };
    write_partial(dw_acc, p.part_dw);
    write_partial(db_acc, p.part_db);
  }
  reducer.finish();  // clusters: when this CTA may exit (device_utils.cuh)
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
