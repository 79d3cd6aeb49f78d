// Backward LayerNorm kernels. One pass over x and dy per row:
//   x_hat = (x - mean) * rstd          (or (y - b) / w, rebuilt from the output)
//   c1 = sum(w*dy*x_hat) / N, c2 = sum(w*dy) / N      (one joint reduction)
//   dx = (w*dy - (x_hat*c1 + c2)) * rstd
// dweight/dbias: each thread owns fixed columns across the rows of its
// persistent CTA and accumulates dy*x_hat and dy in fp32 registers (or its
// own shared-memory slots); each CTA (cluster) writes one partial row, or
// PART_GROUPS of them add theirs in a hardware cluster first, and
// ln_dwdb_finalize_kernel sums the partials in a fixed order. No atomics:
// bitwise deterministic.
#pragma once

#include <algorithm>

#include "device_utils.cuh"
#include "kernel_config.h"

namespace fastlayernorm::cuda {

// G: the dtype of dy, T's own, or float32 for half/bfloat16 input under
// autocast (the forward wrote a float32 output).
template <typename T, typename W, typename G = T>
struct BackwardParams {
  const G* dy;
  const T* x;  // the forward's input, or its output (FROM_OUTPUT kernels)
  // Each row's (mean, rstd) pair (load_row_stats); the means are not read by
  // FROM_OUTPUT kernels.
  const float* stats;
  const W* w;  // may be null; 16-byte aligned
  const W* b;  // may be null; read by FROM_OUTPUT kernels only
  T* dx;       // may be null (grad_input not requested)
  float* part_dw;  // [partial rows, cols], null when no parameter grads
  float* part_db;
  int64_t rows;
  int cols;
};

// A row's (mean, rstd) from its pair (stored by forward.cuh's
// store_row_stats). Two 4-byte loads: one 8-byte load takes an aligned
// register pair, and with it 128-register kernels spilled (ptxas: 8-16
// bytes at bf16 N = 1537-2048 and 128-256 K, which ran 8-10 points slower).
__device__ __forceinline__ float2 load_row_stats(const float* stats, int64_t row) {
  return make_float2(stats[2 * row], stats[2 * row + 1]);
}

// 16-byte shared-memory slots a staged chunk of x and of dy take together
// (dy may be float32 for a 16-bit x: two slots).
template <typename T, typename G>
constexpr int staged_slots() {
  return 1 + static_cast<int>(sizeof(G) / sizeof(T));
}

// Dynamic shared memory: STAGES staged rows of x and dy, then (ACC_SMEM) the
// dweight/dbias accumulators, [2][ITEMS][VEC / 4][threads] float4, then
// (PARAMS_SMEM) the thread's weight (and, FROM_OUTPUT, bias) chunks,
// [1 or 2][ITEMS][threads] packs of W.
template <typename T, typename G, typename W, int ITEMS, int THREADS, int STAGES, bool ACC_SMEM,
          bool PARAMS_SMEM, bool FROM_OUTPUT>
constexpr size_t backward_smem_bytes() {
  constexpr int kVec = 16 / sizeof(T);
  const size_t staged = static_cast<size_t>(STAGES) * ITEMS * THREADS * 16 * staged_slots<T, G>();
  const size_t acc = ACC_SMEM ? 2 * static_cast<size_t>(ITEMS) * THREADS * kVec * 4 : 0;
  const size_t params =
      PARAMS_SMEM ? (FROM_OUTPUT ? 2 : 1) * static_cast<size_t>(ITEMS) * THREADS * kVec * sizeof(W)
                  : 0;
  return staged + acc + params;
}

// Whether a backward kernel loads its next row into registers ahead
// (PREFETCH): not when it stages rows in shared memory, nor for shifted rows
// (staged, weight chunks off 16-byte boundaries). The launcher sizes shared
// memory with it.
constexpr bool backward_prefetches(bool prefetch_row, int stages, bool shifted) {
  return prefetch_row && stages == 0 && !shifted;
}

// x_hat and w*dy of a chunk (columns j0 ... j0+VEC-1) from its floats: xh
// holds x (or, FROM_OUTPUT, the output y) and becomes x_hat = (x - mean) *
// rstd (or (y - b) / w); g holds dy. wv / bv: the chunk's weight and bias
// (bias read FROM_OUTPUT only).
template <bool FROM_OUTPUT, typename W, int VEC>
__device__ __forceinline__ void x_hat_and_wdy(float (&xh)[VEC], const float (&g)[VEC],
                                              float (&wg)[VEC], const Pack<W, VEC>& wv,
                                              const Pack<W, VEC>& bv, bool has_w, bool has_b,
                                              float mean, float rstd, int j0, int n) {
  float wf[VEC];
  if (has_w) unpack(wv, wf);
  if constexpr (FROM_OUTPUT) {
    float bf[VEC];
    if (has_b) unpack(bv, bf);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float v = has_b ? xh[k] - bf[k] : xh[k];
      // Outside the row w is a zero fill: no 0/0 there.
      xh[k] = has_w ? (col_in_row(j0 + k, n) ? v / wf[k] : 0.f) : v;
    }
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) xh[k] = (xh[k] - mean) * rstd;
  }
  // Rounded once (no fma contraction): the dx pass must subtract the very
  // value the row sum added (dx is exactly 0 for N = 1).
#pragma unroll
  for (int k = 0; k < VEC; ++k) wg[k] = has_w ? __fmul_rn(g[k], wf[k]) : g[k];
}

// The end of a backward kernel with partial groups: the PART_GROUPS CTAs of
// a hardware cluster that hold the same columns (ranks c, c + CLUSTER, ...)
// add their accumulators ([2][ITEMS][VEC / 4][cta_threads] float4 in shared
// memory) in rank order; each takes every PART_GROUPS-th float4 of a thread
// and writes it to the cluster's partial row. Every CTA of the cluster calls
// this (two cluster barriers), after its row reducer's finish(). Rows of
// whole chunks only (no shift).
template <int VEC, int ITEMS, int CLUSTER, int PART_GROUPS>
__device__ __forceinline__ void write_partial_groups(float4* acc, int cta_threads, float* part_dw,
                                                     float* part_db, int thread_in_row,
                                                     int row_threads, int n) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();  // all accumulators are final
  const unsigned rank = cluster.block_rank();
  const unsigned column_rank = rank % CLUSTER;
  const int part_group = static_cast<int>(rank / CLUSTER);
  const int64_t part_offset = static_cast<int64_t>(blockIdx.x / (CLUSTER * PART_GROUPS)) * n;
  const bool aligned = n % 4 == 0;
  constexpr int kQuads = VEC / 4;
#pragma unroll
  for (int e = 0; e < 2 * ITEMS * kQuads; ++e) {  // (tensor, item, quad)
    if (e % PART_GROUPS != part_group) continue;
    float4* mine = acc + e * cta_threads + threadIdx.x;
    float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int g = 0; g < PART_GROUPS; ++g) {
      const float4 v = *cluster.map_shared_rank(mine, column_rank + g * CLUSTER);
      sum = sum + v;
    }
    const int tensor = e / (ITEMS * kQuads);
    const int item = e / kQuads % ITEMS;
    const int j = chunk_first_col<VEC>(item, thread_in_row, row_threads, 0) + 4 * (e % kQuads);
    float* out = (tensor == 0 ? part_dw : part_db) + part_offset;
    if (aligned && j + 4 <= n) {
      *reinterpret_cast<float4*>(out + j) = sum;
    } else {
      const float v[4] = {sum.x, sum.y, sum.z, sum.w};
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (col_in_row(j + k, n)) out[j + k] = v[k];
      }
    }
  }
  cluster.sync();  // no CTA exits while its peers read its accumulators
#else
  __trap();  // cluster kernels are launched on sm_90+ only
#endif
}

// FROM_OUTPUT: x holds the forward's output y and x_hat = (y - b) / w is
// rebuilt from it (memory-saving mode); otherwise x_hat = (x - mean) * rstd.
// Rows as in the forward (group g of G takes rows g, g + G, ...; STAGES rows
// ahead of x and dy are staged in shared memory). A thread's
// columns must be the same in all its rows (weight and accumulators are
// kept per column): with rows that are not a whole number of 16-byte chunks
// the launcher makes G a multiple of VEC, so all rows of a CTA start at the
// same offset from a 16-byte boundary.
// PART_GROUPS > 1: a hardware cluster holds PART_GROUPS CTA groups (of
// CLUSTER CTAs each) taking different rows; at the end they add their
// dweight/dbias accumulators through distributed shared memory and write one
// partial row for the cluster: PART_GROUPS times fewer partial rows to write
// and to read back in the finalize kernel.
template <typename T, typename W, typename G, int VEC, int ITEMS, int TPR, int ROWS,
          int CLUSTER, int PART_GROUPS, int MIN_CTAS, int STAGES, bool ACC_SMEM, bool FROM_OUTPUT,
          bool SHIFTED, bool PREFETCH = false, bool PARAMS_SMEM = false, int L2_AHEAD = 0>
__global__ void __launch_bounds__(TPR * ROWS, MIN_CTAS)
    ln_bwd_kernel(const BackwardParams<T, W, G> p) {
  static_assert(!ACC_SMEM || VEC % 4 == 0, "accumulators in shared memory are float4s");
  // PREFETCH: a one-row pipeline in registers. The next row's x, dy, mean
  // and rstd are loaded once this row's partial sums are taken and stay in
  // flight over the row's reduction, its dx and its accumulator update (in
  // shared memory, or with ACC_SMEM false in registers, added to after the
  // reduction: 32-byte threads at 128 registers hold them beside the two
  // rows' packs, and skip 16 bytes of shared-memory traffic per element and
  // row, session 25). Only packs of x and dy are held (two rows' worth), x_hat
  // and w*dy widened again after the reduction; weight stays in registers
  // (from L1 it waited on L2 inside the row: the accumulators take the L1's
  // shared memory) or, PARAMS_SMEM, in shared memory. For entries with
  // registers to spare (168 per thread, or 32-byte threads at 128; 64-byte
  // threads at 128 with PARAMS_SMEM): where the two rows spill it loses. Not
  // for staged or shifted rows (backward_prefetches).
  constexpr bool kPrefetch = backward_prefetches(PREFETCH, STAGES, SHIFTED);
  // PARAMS_SMEM (prefetching kernels only; the launcher decides where it
  // fits): the thread's weight (and bias) chunks in its own shared-memory
  // slots (after the accumulators, where those are there too), read once per
  // row chunk by chunk, instead of registers: the two rows' packs of a
  // 64-byte thread fit 128 registers (held in registers they spilled, v19).
  // Written and read by the same thread only: no barrier.
  static_assert(!PARAMS_SMEM || kPrefetch, "weight in shared memory is a prefetching kernel's option");
  static_assert(L2_AHEAD == 0 || kPrefetch,
                "rows are prefetched into L2 by kernels loading the next row into registers");
  static_assert(PART_GROUPS == 1 || (ACC_SMEM && ROWS == 1 && !SHIFTED),
                "partial groups add the accumulators in shared memory of one-row CTAs, "
                "whose threads hold the same columns in every CTA (no shifted rows)");
  constexpr int kThreads = TPR * ROWS;
  constexpr int kRowThreads = TPR * CLUSTER;
  // 16-bit rows of 16+ elements per thread at 64 registers: x_hat and w*dy
  // as floats (32+ registers) and the weight chunks spilled 64-88 bytes per
  // thread (Nsight Compute, bf16 N=16384: as much local-memory traffic
  // through L2 as DRAM traffic). Such kernels keep x and dy as loaded packs
  // over the row reduction (half the registers), widen them again for dx, and
  // load weight (and bias) chunks from L1 when needed instead of holding them.
  // Not for shifted rows: their weight chunks are off 16-byte boundaries.
  // The prefetching kernel keeps packs too (kKeepPacks), not its weight.
  constexpr int kRegisterCap = 65536 / (kThreads * MIN_CTAS) / 8 * 8;
  constexpr bool kParamsFromL1 =
      sizeof(T) == 2 && ITEMS * VEC >= 16 && kRegisterCap <= 64 && !SHIFTED && !PARAMS_SMEM;
  constexpr bool kKeepPacks = kParamsFromL1 || kPrefetch;
  // Clusters of the prefetching kernel exchange their row sums through
  // mbarriers: the cluster barrier's fence waited for the next row's loads,
  // issued before the reduction (session 17: bf16 N = 32768-262144 81-67% ->
  // 85-86% of copy).
  using Reducer = RowReducer<TPR, ROWS, CLUSTER, float2, kPrefetch>;
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
  // Row clusters sharing a hardware cluster (PART_GROUPS > 1) take part in
  // each other's reduction barriers: they loop as often as the first of them
  // (the others' last row may be past the end: row_ok false).
  const int64_t loop_group =
      (CLUSTER > 1 && PART_GROUPS > 1) ? group / PART_GROUPS * PART_GROUPS : group;
  const int n = p.cols;
  const float inv_n = 1.f / static_cast<float>(n);
  const bool has_w = p.w != nullptr, has_b = p.b != nullptr;
  const bool want_params = p.part_dw != nullptr;
  const int shift = SHIFTED ? row_shift<VEC>(group, n) : 0;  // the same for all rows here
  // 0 (rows * n < 2^62), which no compiler can tell: see opaque_pack.
  const unsigned opaque_zero = static_cast<unsigned>(p.rows >> 62);

  // The thread's columns are the same in every row: weight (and bias, when
  // rebuilding from the output) are loaded once, kept packed (zeros outside),
  // or loaded from L1 when needed (kParamsFromL1).
  Pack<W, VEC> wv[ITEMS], bv[ITEMS];
  auto load_params = [&](int i) {
    const int j0 = chunk_first_col<VEC>(i, thread_in_row, kRowThreads, shift);
    zero_pack(wv[i]);
    zero_pack(bv[i]);
    if (has_w) wv[i] = load_param_chunk<W, VEC, SHIFTED>(p.w, j0, n);
    if (FROM_OUTPUT && has_b) bv[i] = load_param_chunk<W, VEC, SHIFTED>(p.b, j0, n);
  };
  if constexpr (!kParamsFromL1 && !PARAMS_SMEM) {
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) load_params(i);
  }

  // The dweight/dbias accumulators: registers, or this thread's own float4
  // slots in shared memory (ACC_SMEM; no barrier: no other thread reads them).
  float dw_acc[ITEMS][VEC], db_acc[ITEMS][VEC];
  float4* const acc_smem = reinterpret_cast<float4*>(staging + STAGES * kStageSlots);
  // PARAMS_SMEM: [weight, bias][ITEMS][kThreads] packs after the accumulators,
  // loaded once.
  Pack<W, VEC>* const params_smem =
      reinterpret_cast<Pack<W, VEC>*>(acc_smem + (ACC_SMEM ? 2 * ITEMS * (VEC / 4) * kThreads
                                                            : 0));
  auto param_slot = [&](int tensor, int i) -> Pack<W, VEC>& {
    return params_smem[(tensor * ITEMS + i) * kThreads + threadIdx.x];
  };
  if constexpr (PARAMS_SMEM) {
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      load_params(i);
      param_slot(0, i) = wv[i];
      if constexpr (FROM_OUTPUT) param_slot(1, i) = bv[i];
    }
  }
  auto acc_slot_of = [&](int tensor, int i, int q, int thread) -> float4& {
    return acc_smem[((tensor * ITEMS + i) * (VEC / 4) + q) * kThreads + thread];
  };
  auto acc_slot = [&](int tensor, int i, int q) -> float4& {
    return acc_slot_of(tensor, i, q, threadIdx.x);
  };
  // Adds chunk i of a row (dy and x_hat) to the thread's accumulators in
  // shared memory.
  auto accumulate_smem = [&](int i, const float(&g)[VEC], const float(&xh_i)[VEC]) {
#pragma unroll
    for (int q = 0; q < VEC / 4; ++q) {
      float4 a = acc_slot(0, i, q), c = acc_slot(1, i, q);
      a.x = fmaf(g[4 * q], xh_i[4 * q], a.x);
      a.y = fmaf(g[4 * q + 1], xh_i[4 * q + 1], a.y);
      a.z = fmaf(g[4 * q + 2], xh_i[4 * q + 2], a.z);
      a.w = fmaf(g[4 * q + 3], xh_i[4 * q + 3], a.w);
      c.x += g[4 * q];
      c.y += g[4 * q + 1];
      c.z += g[4 * q + 2];
      c.w += g[4 * q + 3];
      acc_slot(0, i, q) = a;
      acc_slot(1, i, q) = c;
    }
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
  Pack<T, VEC> xv[ITEMS];
  Pack<G, VEC> gv[ITEMS];
  // PREFETCH: x, dy, mean and rstd of row r into registers (zeros past the
  // last row).
  float mean_next = 0.f, rstd_next = 0.f;
  auto prefetch_rows = [&](Pack<T, VEC>(&xs)[ITEMS], Pack<G, VEC>(&gs)[ITEMS], int64_t r) {
    const bool ok = r < p.rows;
    const int64_t offset = (ok ? r : 0) * static_cast<int64_t>(n);
    load_row<SHIFTED>(xs, p.x + offset, x_end, ok, thread_in_row, kRowThreads, n, shift);
    load_row<SHIFTED>(gs, p.dy + offset, dy_end, ok, thread_in_row, kRowThreads, n, shift);
    const float2 s = ok ? load_row_stats(p.stats, r) : make_float2(0.f, 0.f);
    mean_next = FROM_OUTPUT ? 0.f : s.x;
    rstd_next = s.y;
  };
  if constexpr (kPrefetch) prefetch_rows(xv, gv, row);
  for (int64_t base = loop_group; base < p.rows; base += stride, row += stride) {
    const bool row_ok = row < p.rows;
    const int64_t offset = row * static_cast<int64_t>(n);
    // L2_AHEAD: x and dy of the row L2_AHEAD rows ahead into L2, a CTA's
    // part of each by the row's first two threads (forward.cuh has the why
    // of the place).
    if constexpr (L2_AHEAD > 0) {
      if (lane < 2) {
        const int64_t r = row + L2_AHEAD * stride;
        const bool ok = r < p.rows;
        const int64_t off = (ok ? r : 0) * static_cast<int64_t>(n);
        if (lane == 0) {
          prefetch_row_part_to_l2(p.x + off, ok, static_cast<int64_t>(n) * sizeof(T),
                                  cluster_rank<CLUSTER>(), CLUSTER);
        } else {
          prefetch_row_part_to_l2(p.dy + off, ok, static_cast<int64_t>(n) * sizeof(G),
                                  cluster_rank<CLUSTER>(), CLUSTER);
        }
      }
    }
    if constexpr (kPrefetch) {
      // xv, gv, mean_next and rstd_next hold this row (loaded the iteration
      // before).
    } else if constexpr (STAGES > 0) {
      cp_async_wait<STAGES - 1>();
      read_staged_row<SHIFTED>(xv, stage_of(stage, 0), kThreads, row_ok, thread_in_row,
                               kRowThreads, n, shift);
      read_staged_row<SHIFTED>(gv, stage_of(stage, 1), kThreads, row_ok, thread_in_row,
                               kRowThreads, n, shift);
    } else {
      load_row<SHIFTED>(xv, p.x + offset, x_end, row_ok, thread_in_row, kRowThreads, n, shift);
      load_row<SHIFTED>(gv, p.dy + offset, dy_end, row_ok, thread_in_row, kRowThreads, n, shift);
    }
    float mean, rstd;
    if constexpr (kPrefetch) {
      mean = mean_next;
      rstd = rstd_next;
    } else {
      const float2 s = row_ok ? load_row_stats(p.stats, row) : make_float2(0.f, 0.f);
      mean = FROM_OUTPUT ? 0.f : s.x;
      rstd = s.y;
    }

    // x_hat, dy and w*dy of chunk i as floats, from the row's packs.
    auto widen = [&](int i, float(&xh_i)[VEC], float(&g)[VEC], float(&wg_i)[VEC]) {
      if constexpr (kParamsFromL1) load_params(i);
      if constexpr (PARAMS_SMEM) {
        wv[i] = param_slot(0, i);
        if constexpr (FROM_OUTPUT) bv[i] = param_slot(1, i);
      }
      unpack(xv[i], xh_i);
      unpack(gv[i], g);
      // Staged partial chunks hold the neighbouring row's x and dy: zeroed,
      // so those columns add nothing below (even where they are not finite).
      const int j0 = chunk_first_col<VEC>(i, thread_in_row, kRowThreads, shift);
      mask_outside<VEC, SHIFTED>(xh_i, j0, n);
      mask_outside<VEC, SHIFTED>(g, j0, n);
      x_hat_and_wdy<FROM_OUTPUT>(xh_i, g, wg_i, wv[i], bv[i], has_w, has_b, mean, rstd, j0, n);
    };
    // Chunk i's packs made opaque before they are widened a second time.
    auto make_opaque = [&](int i) {
      if constexpr (std::is_same_v<T, c10::Half> && !FROM_OUTPUT) {
        opaque_pack(xv[i], opaque_zero);
        opaque_pack(gv[i], opaque_zero);
      } else {
        opaque_pack(xv[i]);
        opaque_pack(gv[i]);
      }
    };

    float xh[ITEMS][VEC], wg[ITEMS][VEC];
    float dot_sums[ITEMS], wg_sums[ITEMS];  // per chunk: sum w*dy*x_hat, sum w*dy
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      float g[VEC];
      widen(i, xh[i], g, wg[i]);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        if constexpr (!ACC_SMEM && !kPrefetch) {
          dw_acc[i][k] = fmaf(g[k], xh[i][k], dw_acc[i][k]);
          db_acc[i][k] += g[k];
        }
      }
      dot_sums[i] = dot(wg[i], xh[i]);
      wg_sums[i] = tree_sum(wg[i]);
      if constexpr (ACC_SMEM && !kPrefetch) {
        if (want_params) accumulate_smem(i, g, xh[i]);
      }
    }
    if constexpr (STAGES > 0) {
      // The stage just read receives the rows STAGES ahead.
      stage_rows(stage, row + STAGES * stride);
      stage = stage + 1 == STAGES ? 0 : stage + 1;
    }
    // PREFETCH: the next row in flight from here on.
    Pack<T, VEC> x_next[kPrefetch ? ITEMS : 1];
    Pack<G, VEC> g_next[kPrefetch ? ITEMS : 1];
    if constexpr (kPrefetch) prefetch_rows(x_next, g_next, row + stride);
    const float2 sums = reducer.sum(make_float2(tree_sum(dot_sums), tree_sum(wg_sums)));
    const float c1 = sums.x * inv_n, c2 = sums.y * inv_n;
    if constexpr (kPrefetch) {
      // Chunk by chunk, widened again from the packs (the same instructions:
      // the same values; opaque so that the compiler does not hold the floats
      // from before the reduction instead): dx, then the accumulators. (The
      // other kernels keep their dx loop inline: this lambda there changed
      // their code, -4 points at bf16 N=128.)
      auto store_dx = [&](int i, const float(&xh_i)[VEC], const float(&wg_i)[VEC]) {
        const int j0 = chunk_first_col<VEC>(i, thread_in_row, kRowThreads, shift);
        if (chunk_in_row<VEC, SHIFTED>(j0, n)) {
          float v[VEC];
#pragma unroll
          for (int k = 0; k < VEC; ++k) v[k] = (wg_i[k] - (xh_i[k] * c1 + c2)) * rstd;
          Pack<T, VEC> out;
          store_floats(out, v);
          store_chunk<T, VEC, SHIFTED>(p.dx + offset, j0, n, out);
        }
      };
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        make_opaque(i);
        float xh_i[VEC], g[VEC], wg_i[VEC];
        widen(i, xh_i, g, wg_i);
        if (row_ok && p.dx) store_dx(i, xh_i, wg_i);
        if constexpr (ACC_SMEM) {
          if (want_params) accumulate_smem(i, g, xh_i);
        } else {
          // The first pass's register update, written out again: as a lambda
          // shared by both it changed the SASS of 34 other kernels (float32
          // weights, +2-10% instructions; session 25 review).
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            dw_acc[i][k] = fmaf(g[k], xh_i[k], dw_acc[i][k]);
            db_acc[i][k] += g[k];
          }
        }
      }
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        xv[i] = x_next[i];
        gv[i] = g_next[i];
      }
      continue;
    }
    if constexpr (kKeepPacks) {
      // Widened again from the packs (the same instructions: the same
      // values), which the compiler may not take from before the reduction.
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        make_opaque(i);
        float g[VEC];
        widen(i, xh[i], g, wg[i]);
      }
    }
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
  // The finalize kernel may launch now: its CTAs take the SMs these CTAs
  // leave and wait for this grid before reading the partial rows.
  allow_dependent_launch();

  if constexpr (PART_GROUPS > 1) {
    reducer.finish();  // the barrier phase of the reducer's first arrive, if pending
    if (want_params) write_partial_groups<VEC, ITEMS, CLUSTER, PART_GROUPS>(
        acc_smem, kThreads, p.part_dw, p.part_db, thread_in_row, kRowThreads, n);
    return;
  }
  if (want_params) {
    // One partial row per CTA group (cluster). CTAs holding several rows
    // first add their row slots, in slot order (all slots hold the same
    // columns): the accumulators in shared memory where they are, the
    // registers through a shared buffer.
    if constexpr (ACC_SMEM) {
      if constexpr (ROWS > 1) __syncthreads();  // every row slot's accumulators are final
      if (slot == 0) {
#pragma unroll
        for (int i = 0; i < ITEMS; ++i) {
#pragma unroll
          for (int q = 0; q < VEC / 4; ++q) {
            float4 a = acc_slot(0, i, q), c = acc_slot(1, i, q);
#pragma unroll
            for (int r = 1; r < ROWS; ++r) {  // row slot r's thread of this lane
              a = a + acc_slot_of(0, i, q, threadIdx.x + r * TPR);
              c = c + acc_slot_of(1, i, q, threadIdx.x + r * TPR);
            }
            unpack_float4(a, &dw_acc[i][4 * q]);
            unpack_float4(c, &db_acc[i][4 * q]);
          }
        }
      }
    }
    const int64_t part_offset = group * static_cast<int64_t>(n);
    auto write_partial = [&](float(&acc)[ITEMS][VEC], float* part) {
      if constexpr (ROWS > 1 && !ACC_SMEM) {
        // The slots after the first: [ITEMS * VEC][kThreads - TPR].
        __shared__ float combine[ITEMS * VEC][kThreads - TPR];
        if (slot != 0) {
#pragma unroll
          for (int i = 0; i < ITEMS; ++i) {
#pragma unroll
            for (int k = 0; k < VEC; ++k) combine[i * VEC + k][threadIdx.x - TPR] = acc[i][k];
          }
        }
        __syncthreads();
        if (slot == 0) {
#pragma unroll
          for (int i = 0; i < ITEMS; ++i) {
#pragma unroll
            for (int k = 0; k < VEC; ++k) {
              for (int r = 1; r < ROWS; ++r) {
                acc[i][k] += combine[i * VEC + k][(r - 1) * TPR + lane];
              }
            }
          }
        }
        __syncthreads();  // combine is reused by the next call
      }
      if (ROWS > 1 && slot != 0) return;
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

// Sums the partial rows column by column: a CTA takes 32 x VEC columns and
// blockDim.y slices, slice s the partial rows s, s + slices, ..., then the
// slices' sums are added in order. Fixed order for a given number of
// partial rows: deterministic. VEC = 4 (16-byte loads) for long rows of N a
// multiple of 4, where the grid still has a CTA for every SM. Launched as a
// programmatic dependent of the backward kernel (launch_dwdb_finalize).
constexpr int kFinalizeCols = 32;
constexpr int kFinalizeMaxSlices = 32;
constexpr int kFinalizeWideMinCols = 16384;
// Partial rows a thread loads together before adding them: 16 registers of
// loads (dweight and dbias, 8 rows of one column or 2 of four), which keeps
// the kernel at 32 registers, two 1024-thread CTAs per SM (at one, the
// grids of 133-264 CTAs, N = 4257-8448, ran in two waves: -1 point).
template <int VEC>
constexpr int finalize_batch() {
  return VEC == 1 ? 8 : 2;
}
// Slices for `parts` partial rows: as many as give each thread one batch of
// loads, up to 32. After the backward kernel every load is an L2 round trip
// on the critical path, one per batch a thread holds; always 32 slices left
// 1024-thread CTAs half idle at the 16-33 partial rows of 64-256 KiB rows.
template <int VEC>
int finalize_slices(int64_t parts) {
  constexpr int64_t kBatch = finalize_batch<VEC>();
  return static_cast<int>(std::clamp<int64_t>((parts + kBatch - 1) / kBatch, 1, kFinalizeMaxSlices));
}
// Dynamic shared memory of a finalize CTA: each slice's sums of dweight and
// of dbias for the CTA's columns (+1 column against bank conflicts).
template <int VEC>
constexpr size_t finalize_smem_bytes(int slices) {
  return static_cast<size_t>(2 * slices * (kFinalizeCols * VEC + 1)) * sizeof(float);
}

// VEC columns of a partial row, read once: through L2 only (cg), never from
// an L1 line older than the backward kernel, which may still have been
// running when the finalize kernel was launched.
template <int VEC>
__device__ __forceinline__ void load_partial(const float* ptr, float (&v)[VEC]) {
  if constexpr (VEC == 4) {
    const float4 t = __ldcg(reinterpret_cast<const float4*>(ptr));
    v[0] = t.x, v[1] = t.y, v[2] = t.z, v[3] = t.w;
  } else {
    v[0] = __ldcg(ptr);
  }
}

template <typename W, int VEC>
__global__ void __launch_bounds__(kFinalizeCols * kFinalizeMaxSlices, 2)
    ln_dwdb_finalize_kernel(const float* __restrict__ part_dw,
                            const float* __restrict__ part_db, int64_t parts,
                            int n, W* dw, W* db) {
  static_assert(VEC == 1 || VEC == 4, "columns per thread: one, or a 16-byte vector");
  constexpr int kCtaCols = kFinalizeCols * VEC;
  constexpr int kBatch = finalize_batch<VEC>();
  const int slices = blockDim.y;
  extern __shared__ float finalize_sums[];  // [2][slices][kCtaCols + 1]
  auto sum_slot = [&](int tensor, int slice, int c) -> float& {
    return finalize_sums[(tensor * slices + slice) * (kCtaCols + 1) + c];
  };
  const int cta_col = blockIdx.x * kCtaCols;
  const int col = cta_col + threadIdx.x * VEC;  // VEC == 4: n % 4 == 0, all in or all out
  float a[VEC], b[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) a[k] = b[k] = 0.f;
  wait_for_prior_grid();  // the backward kernel's partial rows
  if (col < n) {
    // The thread's partial rows threadIdx.y, + slices, ..., in batches whose
    // loads are all requested before any is added (in row order): whole
    // batches, then one of the rows left (the rest zeros). Pointers stepping
    // by a fixed stride, whole batches without predicates: with few CTAs
    // (short rows, many partial rows) the finalize is bound by instruction
    // issue (at N = 128, a 64-bit row * n product per load cost ~1 us,
    // predicates on every batch ~0.5 us).
    const size_t step = static_cast<size_t>(slices) * n;  // from one of the thread's rows to the next
    const float* pw = part_dw + threadIdx.y * static_cast<size_t>(n) + col;
    const float* pb = part_db + threadIdx.y * static_cast<size_t>(n) + col;
    auto add_batch = [&](int valid) {  // the batch's first `valid` rows
      float u[kBatch][VEC], v[kBatch][VEC];
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
        if (j < valid) {
          load_partial(pw + j * step, u[j]);
          load_partial(pb + j * step, v[j]);
        } else {  // zeros, which add nothing
#pragma unroll
          for (int k = 0; k < VEC; ++k) u[j][k] = v[j][k] = 0.f;
        }
      }
#pragma unroll
      for (int j = 0; j < kBatch; ++j) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) a[k] += u[j][k], b[k] += v[j][k];
      }
    };
    // Rows from the thread's first on (threadIdx.y < slices <= parts).
    const int rows = static_cast<int>(parts) - threadIdx.y;
    int r0 = 0;
#pragma unroll 1
    for (; r0 + (kBatch - 1) * slices < rows;
         r0 += kBatch * slices, pw += kBatch * step, pb += kBatch * step) {
      add_batch(kBatch);
    }
    if (r0 < rows) add_batch((rows - r0 + slices - 1) / slices);
  }
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    sum_slot(0, threadIdx.y, threadIdx.x * VEC + k) = a[k];
    sum_slot(1, threadIdx.y, threadIdx.x * VEC + k) = b[k];
  }
  __syncthreads();
  for (int c = threadIdx.y * kFinalizeCols + threadIdx.x; c < kCtaCols;
       c += kFinalizeCols * slices) {  // a column of the CTA
    if (cta_col + c >= n) break;
    float sa = 0.f, sb = 0.f;
    for (int s = 0; s < slices; ++s) {
      sa += sum_slot(0, s, c);
      sb += sum_slot(1, s, c);
    }
    if (dw) dw[cta_col + c] = static_cast<W>(sa);
    if (db) db[cta_col + c] = static_cast<W>(sb);
  }
}

}  // namespace fastlayernorm::cuda
