// Forward LayerNorm kernel for long rows: the row lives in shared memory.
//
// A register kernel holds at most ~64 KiB of rows per SM (64K registers, the
// row widened to floats), so a 64-512 KiB row runs one CTA (or cluster) per
// SM with little in flight while it reduces and stores (54-81% of copy on
// the H100, docs/kernels.md). Here the row is copied into shared memory with
// cp.async (up to 227 KiB per SM) and read back for each of the three
// passes (sum, deviations, output), so several rows of different CTAs load
// while others reduce. One row per CTA (or per cluster of CLUSTER CTAs, each
// holding a slice), one pass: the grid has a CTA group per row.
//   mean = sum(x) / N, var = sum((x - mean)^2) / N  (corrected two-pass, fp32)
//   y = (x - mean) * rstd * w + b
#pragma once

#include "device_utils.cuh"
#include "forward.cuh"

namespace fastlayernorm::cuda {

// Waits until at most `pending` of this thread's cp.async groups are in
// flight; `pending` is a constant once the caller's loop is unrolled.
template <int MAX>
__device__ __forceinline__ void cp_async_wait_at_most(int pending) {
  if constexpr (MAX == 0) {
    cp_async_wait<0>();
  } else {
    if (pending >= MAX) {
      cp_async_wait<MAX>();
    } else {
      cp_async_wait_at_most<MAX - 1>(pending);
    }
  }
}

// Chunks whose weight/bias packs are loaded together in the output pass of
// a one-pass kernel: requested before the chunks' stores (one L1/L2 round
// trip per batch, see forward.cuh), 16 registers of packs per tensor. Half
// as many under shifted rows, whose chunks are funnel-shifted from twice the
// words (load_param_chunk; with full batches the float32 cluster kernels
// spilled 392 bytes per thread).
template <typename W, int VEC, bool SHIFTED>
constexpr int row_in_smem_param_batch() {
  return (sizeof(Pack<W, VEC>) > 16 ? 2 : 4) / (SHIFTED ? 2 : 1);
}

// Dynamic shared memory: STAGES + 1 buffers of the row's slice, and for
// persistent kernels the slice's weight and bias.
template <typename W, int VEC, int ITEMS, int THREADS, int STAGES, bool PERSISTENT>
constexpr size_t forward_row_in_smem_bytes() {
  return static_cast<size_t>(STAGES + 1) * ITEMS * THREADS * 16 +
         (PERSISTENT ? 2 * sizeof(Pack<W, VEC>) * ITEMS * THREADS : 0);
}

// VEC elements per 16-byte chunk, ITEMS chunks per thread (its slots of a
// row in shared memory: chunk i at [i][threadIdx.x], written by its own
// cp.async and read back by the same thread, so no barrier is needed),
// THREADS per CTA, CLUSTER CTAs per row (each holding a slice).
// PERSISTENT = false: one row per CTA group, once; every chunk is its own
// cp.async group, so the first pass sums a chunk as soon as it has arrived;
// weight/bias from L1/L2 in the output pass (for long rows, Nsight Compute
// shows them re-read from L2 for every row: as many bytes as the row).
// PERSISTENT = true: as many CTA groups as are resident, group g of G taking
// rows g, g + G, ...; the group's slice of weight and bias is read once into
// shared memory, and STAGES rows ahead load while one is reduced (one
// cp.async group per row). Measured slower than one-pass on the H100 (fewer
// CTAs per SM; docs/kernels.md, session 5): no table entry uses it today,
// benchmarks/tune_kernels.py sweeps it.
// SHIFTED: N is not a multiple of VEC (chunks on the aligned grid of memory,
// device_utils.cuh); a persistent grid then has G a multiple of VEC so all of
// a CTA's rows start at the same offset from a 16-byte boundary.
template <typename T, typename W, typename O, int VEC, int ITEMS, int THREADS, int CLUSTER,
          int MIN_CTAS, int STAGES, bool SHIFTED, bool PERSISTENT>
__global__ void __launch_bounds__(THREADS, MIN_CTAS)
    ln_fwd_row_in_smem_kernel(const ForwardParams<T, W, O> p) {
  static_assert(sizeof(Pack<T, VEC>) == 16, "a chunk of the row is one 16-byte slot");
  static_assert(PERSISTENT || STAGES == 0, "rows are loaded ahead only by a CTA that loops");
  constexpr int kRowThreads = THREADS * CLUSTER;
  constexpr int kBuffers = STAGES + 1;
  constexpr int kBatch = row_in_smem_param_batch<W, VEC, SHIFTED>();
  // 16-bit rows write (x - mean) * a + b; float32 rows d * a + (b - corr * a)
  // with d = x - mean0, as the register kernel (forward.cuh) does.
  constexpr bool kFromX = sizeof(T) == 2;
  using Reducer = RowReducer<THREADS, 1, CLUSTER, float2>;
  __shared__ typename Reducer::Storage reduce_storage;
  Reducer reducer(reduce_storage);
  // [kBuffers][ITEMS][THREADS] slots of rows, then (PERSISTENT) the weight
  // and bias chunks: [2][ITEMS][THREADS] packs of W.
  extern __shared__ uint4 row_slots[];
  Pack<W, VEC>* const params_smem =
      reinterpret_cast<Pack<W, VEC>*>(row_slots + kBuffers * ITEMS * THREADS);

  const int64_t groups = gridDim.x / CLUSTER;
  const int64_t group = blockIdx.x / CLUSTER;
  const int thread_in_row = cluster_rank<CLUSTER>() * THREADS + threadIdx.x;
  const int n = p.cols;
  const float inv_n = 1.f / static_cast<float>(n);
  const T* const x_end = p.x + p.rows * static_cast<int64_t>(n);
  const int shift = SHIFTED ? row_shift<VEC>(group, n) : 0;  // the same for all rows here
  auto first_col = [&](int i) { return chunk_first_col<VEC>(i, thread_in_row, kRowThreads, shift); };
  auto slot = [&](int buffer, int i) -> uint4& {
    return row_slots[(buffer * ITEMS + i) * THREADS + threadIdx.x];
  };
  auto param_slot = [&](int tensor, int i) -> Pack<W, VEC>& {
    return params_smem[(tensor * ITEMS + i) * THREADS + threadIdx.x];
  };
  // Starts copying this thread's chunks of row r (if any) into a buffer; a
  // one-pass kernel commits a cp.async group per chunk. A partial chunk
  // (shifted rows) is copied whole from the aligned grid and masked after
  // reading; nothing past the tensor's end is read (store_tail_slot).
  auto load_row_async = [&](int buffer, int64_t r) {
    const T* const row_ptr = p.x + r * static_cast<int64_t>(n);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int j0 = first_col(i);
      if (r < p.rows && chunk_in_row<VEC, SHIFTED>(j0, n)) {
        if (SHIFTED && x_end - (row_ptr + j0) < VEC) {
          store_tail_slot(&slot(buffer, i), row_ptr + j0, x_end);
        } else {
          cp_async16(&slot(buffer, i), row_ptr + j0);
        }
      }
      if constexpr (!PERSISTENT) cp_async_commit();
    }
  };

  int64_t row = group;
  if constexpr (PERSISTENT) {
#pragma unroll
    for (int s = 0; s < kBuffers; ++s) {
      load_row_async(s, row + s * groups);
      cp_async_commit();
    }
    // The slice's weight and bias, once (their requests queue behind the
    // rows'; each thread reads back only its own slots).
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int j0 = first_col(i);
      if (p.w) param_slot(0, i) = load_param_chunk<W, VEC, SHIFTED>(p.w, j0, n);
      if (p.b) param_slot(1, i) = load_param_chunk<W, VEC, SHIFTED>(p.b, j0, n);
    }
  } else {
    load_row_async(0, row);
  }

  int buffer = 0;
  // Uniform trip count for every CTA of a cluster (they share `group`), so
  // the reductions' barriers always see all of them.
  for (; row < p.rows; row += groups) {
    const int64_t offset = row * static_cast<int64_t>(n);
    // Chunk i of the row as floats, zeros outside the row.
    auto read_chunk = [&](int i, float (&f)[VEC]) {
      const int j0 = first_col(i);
      if (chunk_in_row<VEC, SHIFTED>(j0, n)) {
        Pack<T, VEC> pack;
        pack.words[0] = slot(buffer, i);
        unpack(pack, f);
        mask_outside<VEC, SHIFTED>(f, j0, n);
      } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) f[k] = 0.f;
      }
    };

    if constexpr (PERSISTENT) cp_async_wait<STAGES>();  // this row's group has landed
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      if constexpr (!PERSISTENT) cp_async_wait_at_most<ITEMS - 1>(ITEMS - 1 - i);
      float f[VEC];
      read_chunk(i, f);
      sum += tree_sum(f);
    }
    const float mean0 = reducer.sum(make_float2(sum, 0.f)).x * inv_n;

    // Corrected two-pass over the row's columns (forward.cuh has the why).
    float2 dev = make_float2(0.f, 0.f);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int j0 = first_col(i);
      float f[VEC], d[VEC];
      read_chunk(i, f);
      // Branches per chunk, not a predicate per element (forward.cuh).
      if (chunk_full<VEC, SHIFTED>(j0, n)) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) d[k] = f[k] - mean0;
      } else if (chunk_partial<VEC, SHIFTED>(j0, n)) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) d[k] = col_in_row(j0 + k, n) ? f[k] - mean0 : 0.f;
      } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) d[k] = 0.f;
      }
      dev.x += tree_sum(d);
      dev.y += dot(d, d);
    }
    dev = reducer.sum(dev);
    const float corr = dev.x * inv_n;  // mean = mean0 + corr
    const float mean = mean0 + corr;
    const float var = fmaxf(dev.y - dev.x * corr, 0.f) * inv_n;
    const float rstd = rsqrtf(var + p.eps);

    // Weight and bias: the CTA's shared-memory copy, or (one-pass) from
    // L1/L2, where under a shifted row their chunks are off 16-byte
    // boundaries (element loads). Absent ones are constant packs.
    auto param_chunk = [&](int tensor, int i, int j0) -> Pack<W, VEC> {
      const W* ptr = tensor == 0 ? p.w : p.b;
      if (!ptr) return filled_pack<W, VEC>(tensor == 0 ? 1.f : 0.f);
      if constexpr (PERSISTENT) {
        return param_slot(tensor, i);
      } else {
        return load_param_chunk<W, VEC, SHIFTED>(ptr, j0, n);
      }
    };
#pragma unroll
    for (int i0 = 0; i0 < ITEMS; i0 += kBatch) {
      Pack<W, VEC> wp[kBatch], bp[kBatch];
#pragma unroll
      for (int k = 0; k < kBatch; ++k) {
        const int j0 = first_col(i0 + k);
        if (i0 + k < ITEMS && chunk_in_row<VEC, SHIFTED>(j0, n)) {
          wp[k] = param_chunk(0, i0 + k, j0);
          bp[k] = param_chunk(1, i0 + k, j0);
        }
      }
#pragma unroll
      for (int k = 0; k < kBatch; ++k) {
        const int j0 = first_col(i0 + k);
        if (i0 + k < ITEMS && chunk_in_row<VEC, SHIFTED>(j0, n)) {
          float f[VEC], wf[VEC], bf[VEC], v[VEC];
          read_chunk(i0 + k, f);
          unpack(wp[k], wf);
          unpack(bp[k], bf);
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            const float a = rstd * wf[e];
            v[e] = kFromX ? fmaf(f[e] - mean, a, bf[e])
                          : fmaf(f[e] - mean0, a, fmaf(-corr, a, bf[e]));
          }
          Pack<O, VEC> out;
          store_floats(out, v);
          store_chunk<O, VEC, SHIFTED>(p.y + offset, j0, n, out);
        }
      }
    }
    if (thread_in_row == 0 && p.stats != nullptr) {
      store_row_stats(p.stats, row, mean, rstd);
    }
    if constexpr (!PERSISTENT) break;  // one row per CTA group
    // The buffer just read receives the row kBuffers rows ahead (the thread
    // refills only the slots it has read itself).
    load_row_async(buffer, row + kBuffers * groups);
    cp_async_commit();
    buffer = buffer + 1 == kBuffers ? 0 : buffer + 1;
  }
  reducer.finish();  // clusters: when this CTA may exit (device_utils.cuh)
}

}  // namespace fastlayernorm::cuda
