// Backward of a few rows (a handful of tokens: small batches, decoding,
// tests) in one kernel. The regular path (backward.cuh) runs a row kernel
// whose CTAs write partial rows of dweight/dbias, then the finalize kernel
// that adds them: at few rows both are pure latency (a launch, a DRAM round
// trip, a reduction each), and the second waits for the first.
//
// Here one thread-block cluster of kFewRowsCluster CTAs splits the columns
// instead of the rows: thread t of the cluster (CTA rank * 32 + lane) owns
// the chunks t, t + 256, ... of every row, and warp w of each CTA holds the
// rows w, w + 16, ... (up to ROWS_PER_WARP) in registers, all loaded at
// once. Then:
//   - a row's sums (w*dy*x_hat, w*dy) over the CTA's columns are one warp
//     reduction; each CTA pushes its share into every peer's shared memory
//     (st.async onto the peer's mbarrier: no cluster barrier, whose fence
//     stalled every warp ~800 cycles, Nsight Compute), and each adds the
//     shares in rank order;
//   - dweight/dbias of a column are complete inside the CTA that owns it:
//     its warps' sums over their rows, added in warp order, are written
//     directly (no partial rows, no finalize kernel). Fixed order for a
//     given shape: deterministic.
// Rows of whole 16-byte chunks only (no shift), up to 32
// (launch_backward_few_rows in launch.cuh picks ITEMS; few_rows_per_warp
// the rows a warp holds).
#pragma once

#include <algorithm>

#include "backward.cuh"
#include "device_utils.cuh"

namespace fastlayernorm::cuda {

constexpr int kFewRowsCluster = 8;  // portable: every Hopper GPU (and MIG slice) has it
constexpr int kFewRowsWarps = 16;
constexpr int kFewRowsThreads = kFewRowsWarps * kWarpSize;
constexpr int kFewRowsRowThreads = kFewRowsCluster * kWarpSize;  // threads that share a row
// Rows x chunks a thread loads at once (ITEMS * ROWS_PER_WARP): 8 packs of
// x and 8 of dy, 64 of its 128 registers, where dy and the weight are of
// x's dtype and x_hat is x's (ptxas: no spills); 4 for float32 dy or weight
// of 16-bit rows and the memory-saving mode (at 8: 12-900 bytes of spills).
template <typename T, typename W, typename G, bool FROM_OUTPUT>
constexpr int few_rows_row_slots() {
  return (sizeof(G) == sizeof(T) && sizeof(W) == sizeof(T) && !FROM_OUTPUT) ? 8 : 4;
}
// Rows per warp: at most 2 (32 rows). Beyond, the 8 SMs of the cluster
// move too few bytes: at 64 rows bf16 N = 1024 / 4096 took 10.8 / 13.2 us
// against the two-kernel path's 9.7 / 11.0 (H200, session 21), at 32 rows
// 9.1 / 10.0 against 9.6 / 10.6.
template <typename T, typename W, typename G, int ITEMS, bool FROM_OUTPUT>
constexpr int few_rows_per_warp() {
  return std::min(2, few_rows_row_slots<T, W, G, FROM_OUTPUT>() / ITEMS);
}

// Dynamic shared memory: the dweight/dbias sums of each of `warps` warps,
// [warp][tensor][ITEMS][VEC / 4][lane] float4.
template <int ITEMS, int VEC>
constexpr size_t few_rows_smem_bytes(int warps) {
  return static_cast<size_t>(warps) * 2 * ITEMS * (VEC / 4) * kWarpSize * sizeof(float4);
}

template <typename T, typename W, typename G, int ITEMS, int ROWS_PER_WARP, bool FROM_OUTPUT>
__global__ void __launch_bounds__(kFewRowsThreads, 1)
    ln_bwd_few_rows_kernel(const BackwardParams<T, W, G> p, W* dw, W* db) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int VEC = 16 / sizeof(T);
  constexpr int B = ROWS_PER_WARP;
  constexpr int kEntries = 2 * ITEMS * (VEC / 4) * kWarpSize;  // float4 sums of one warp
  static_assert(VEC % 4 == 0, "columns are added as float4s");
  // Each row's sums as the cluster's CTAs pushed them, by rank; `landed`
  // completes once all have (the kernel's only exchange: phase 0).
  __shared__ float2 row_parts[B * kFewRowsWarps][kFewRowsCluster];
  __shared__ uint64_t landed;
  extern __shared__ float4 param_sums[];  // few_rows_smem_bytes
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int rank = cluster_rank<kFewRowsCluster>();
  // Peers may push into this CTA once it has initialized its mbarrier: the
  // relaxed arrive here pairs with the wait before the first push.
  if (threadIdx.x == 0) mbarrier_init_for_cluster(&landed);
  cluster_arrive_relaxed();
  const int thread_in_row = rank * kWarpSize + lane;
  const int n = p.cols;
  const int rows = static_cast<int>(p.rows);  // at most B * kFewRowsWarps
  const float inv_n = 1.f / static_cast<float>(n);
  const bool has_w = p.w != nullptr, has_b = p.b != nullptr;
  const bool want_params = dw != nullptr || db != nullptr;
  const int active_warps = min(rows, kFewRowsWarps);
  auto row_of = [&](int b) { return warp + b * kFewRowsWarps; };

  // Everything this thread reads, requested at once: weight (and bias) chunks
  // and the warp's rows of x and dy (zeros past the last row or column).
  Pack<W, VEC> wv[ITEMS], bv[ITEMS];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int j0 = chunk_first_col<VEC>(i, thread_in_row, kFewRowsRowThreads, 0);
    zero_pack(wv[i]);
    zero_pack(bv[i]);
    if (has_w) wv[i] = load_chunk<W, VEC, false>(p.w, j0, n);
    if (FROM_OUTPUT && has_b) bv[i] = load_chunk<W, VEC, false>(p.b, j0, n);
  }
  const T* x_end = p.x + p.rows * static_cast<int64_t>(n);
  const G* dy_end = p.dy + p.rows * static_cast<int64_t>(n);
  // The warp's rows of x and dy, mean and rstd (zeros past the last row).
  auto load_rows = [&](Pack<T, VEC>(&xv)[B][ITEMS], Pack<G, VEC>(&gv)[B][ITEMS], float(&mean)[B],
                       float(&rstd)[B]) {
#pragma unroll
    for (int b = 0; b < B; ++b) {
      const int r = row_of(b);
      const bool ok = r < rows;
      const int64_t offset = (ok ? r : 0) * static_cast<int64_t>(n);
      load_row<false>(xv[b], p.x + offset, x_end, ok, thread_in_row, kFewRowsRowThreads, n, 0);
      load_row<false>(gv[b], p.dy + offset, dy_end, ok, thread_in_row, kFewRowsRowThreads, n, 0);
      const float2 s = ok ? load_row_stats(p.stats, r) : make_float2(0.f, 0.f);
      mean[b] = FROM_OUTPUT ? 0.f : s.x;
      rstd[b] = s.y;
    }
  };
  // x_hat, dy and w*dy of chunk i of a row, as the regular kernel computes
  // them (the same helper: the same rounding).
  auto widen = [&](const Pack<T, VEC>& xp, const Pack<G, VEC>& gp, float mean, float rstd, int i,
                   float(&xh)[VEC], float(&g)[VEC], float(&wg)[VEC]) {
    unpack(xp, xh);
    unpack(gp, g);
    const int j0 = chunk_first_col<VEC>(i, thread_in_row, kFewRowsRowThreads, 0);
    x_hat_and_wdy<FROM_OUTPUT>(xh, g, wg, wv[i], bv[i], has_w, has_b, mean, rstd, j0, n);
  };

  // First pass: row sums over the thread's chunks, and the warp's
  // dweight/dbias sums of each chunk over its rows (in row order) into its
  // shared-memory slots.
  {
    Pack<T, VEC> xv[B][ITEMS];
    Pack<G, VEC> gv[B][ITEMS];
    float mean[B], rstd[B];
    load_rows(xv, gv, mean, rstd);
    float dots[B], wg_sums[B];
#pragma unroll
    for (int b = 0; b < B; ++b) dots[b] = wg_sums[b] = 0.f;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      float dw_sum[VEC], db_sum[VEC];
#pragma unroll
      for (int k = 0; k < VEC; ++k) dw_sum[k] = db_sum[k] = 0.f;
#pragma unroll
      for (int b = 0; b < B; ++b) {
        if (row_of(b) >= rows) continue;  // warp-uniform
        float xh[VEC], g[VEC], wg[VEC];
        widen(xv[b][i], gv[b][i], mean[b], rstd[b], i, xh, g, wg);
        dots[b] += dot(wg, xh);
        wg_sums[b] += tree_sum(wg);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          dw_sum[k] = fmaf(g[k], xh[k], dw_sum[k]);
          db_sum[k] += g[k];
        }
      }
      if (want_params && warp < active_warps) {
#pragma unroll
        for (int q = 0; q < VEC / 4; ++q) {
          float4* slot = param_sums + warp * kEntries + (i * (VEC / 4) + q) * kWarpSize + lane;
          slot[0] = make_float4(dw_sum[4 * q], dw_sum[4 * q + 1], dw_sum[4 * q + 2],
                                dw_sum[4 * q + 3]);
          slot[kEntries / 2] = make_float4(db_sum[4 * q], db_sum[4 * q + 1], db_sum[4 * q + 2],
                                           db_sum[4 * q + 3]);
        }
      }
    }
    // This CTA's share of each of the warp's rows, into every peer's slot
    // for this rank (lane l pushes to rank l).
    cluster_wait();
    if (threadIdx.x == 0) {
      mbarrier_arrive_expect_bytes(&landed, rows * kFewRowsCluster * sizeof(float2));
    }
#pragma unroll
    for (int b = 0; b < B; ++b) {
      if (row_of(b) >= rows) continue;
      const float2 share = group_sum<kWarpSize>(make_float2(dots[b], wg_sums[b]));
      if (lane < kFewRowsCluster) store_to_peer(&row_parts[row_of(b)][rank], &landed, lane, share);
    }
  }

  // While the shares land: dweight/dbias, then the second pass's loads.
  // Entry e of the warps' slots
  // (tensor, item, quad, lane), added in warp order and written as four
  // columns of dweight or dbias.
  if (want_params) {
    __syncthreads();  // every warp's slots are written
    for (int e = threadIdx.x; e < kEntries; e += kFewRowsThreads) {
      float4 sum = param_sums[e];
      for (int w = 1; w < active_warps; ++w) sum = sum + param_sums[w * kEntries + e];
      const int tensor = e / (kEntries / 2);
      const int quad = e % (kEntries / 2) / kWarpSize;  // item * VEC / 4 + q
      const int slot_lane = e % kWarpSize;
      const int j = chunk_first_col<VEC>(quad / (VEC / 4), rank * kWarpSize + slot_lane,
                                         kFewRowsRowThreads, 0) +
                    4 * (quad % (VEC / 4));
      W* out = tensor == 0 ? dw : db;
      if (out != nullptr && j < n) {  // n is a multiple of VEC: all four columns or none
        out[j] = static_cast<W>(sum.x);
        out[j + 1] = static_cast<W>(sum.y);
        out[j + 2] = static_cast<W>(sum.z);
        out[j + 3] = static_cast<W>(sum.w);
      }
    }
  }

  // x and dy loaded again (from L1/L2: this SM read them just before)
  // rather than held: 16 packs, the accumulators and the first pass's
  // floats spilled 300-2800 bytes at 128 registers (ptxas); issued before
  // the wait, over the dweight/dbias reduction they spilled 4-392.
  Pack<T, VEC> xv[B][ITEMS];
  Pack<G, VEC> gv[B][ITEMS];
  float mean[B], rstd[B];
  if (p.dx != nullptr) load_rows(xv, gv, mean, rstd);

  // Each row's sums: the CTAs' shares added in rank order (the same bits in
  // every thread and CTA). Once they have landed nothing writes into this
  // CTA's shared memory any more: no barrier before exiting.
  mbarrier_wait(&landed, 0);
  float c1[B], c2[B];
#pragma unroll
  for (int b = 0; b < B; ++b) {
    c1[b] = c2[b] = 0.f;
    if (row_of(b) >= rows) continue;
    float2 total = row_parts[row_of(b)][0];
#pragma unroll
    for (int r = 1; r < kFewRowsCluster; ++r) total = total + row_parts[row_of(b)][r];
    c1[b] = total.x * inv_n;
    c2[b] = total.y * inv_n;
  }

  if (p.dx != nullptr) {
#pragma unroll
    for (int b = 0; b < B; ++b) {
      const int r = row_of(b);
      if (r >= rows) continue;
      T* dx_row = p.dx + static_cast<int64_t>(r) * n;
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        const int j0 = chunk_first_col<VEC>(i, thread_in_row, kFewRowsRowThreads, 0);
        if (j0 >= n) continue;
        float xh[VEC], g[VEC], wg[VEC], v[VEC];
        widen(xv[b][i], gv[b][i], mean[b], rstd[b], i, xh, g, wg);
#pragma unroll
        for (int k = 0; k < VEC; ++k) v[k] = (wg[k] - (xh[k] * c1[b] + c2[b])) * rstd[b];
        Pack<T, VEC> out;
        store_floats(out, v);
        store_pack(dx_row + j0, out);
      }
    }
  }

#else
  __trap();  // cluster kernels are launched on sm_90+ only
#endif
}

}  // namespace fastlayernorm::cuda
