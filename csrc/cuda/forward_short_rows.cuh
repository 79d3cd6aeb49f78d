// Forward LayerNorm for short rows: a row within a warp, weight and bias
// held in registers as floats for all of a CTA's rows.
//
// Written for rows that were thought bound by instruction issue (sessions 19
// and 28: the one-pass kernels of forward.cuh spend about 18 instructions
// per element at 16-bit N = 256, 10.5 of them arithmetic). Per element,
// against those kernels:
//   - weight and bias are widened once per CTA, not once per row (two
//     operations), and are not stashed in shared memory;
//   - y = (d * rstd - corr * rstd) * w + b from the deviations d = x - mean0
//     the statistics already formed: two operations instead of three;
//   - the row's addresses advance by one add per row (the thread's columns
//     are immediates off one pointer), instead of a 64-bit product per chunk;
//   - on a persistent grid, the next one or two rows load while this one is
//     reduced.
// That is a third fewer instructions (12-14 per element), yet on an H200 it
// is ahead of forward.cuh's kernels only at some sizes (float32 N = 64,
// 16-bit N = 768), which the tables give it; at the other short 16-bit
// rows it measured 1-4 points slower (docs/kernels.md, session 29). The
// statistics are forward.cuh's: the corrected two-pass in float32 over the
// row in registers.
#pragma once

#include "device_utils.cuh"
#include "forward.cuh"

namespace fastlayernorm::cuda {

// VEC elements per 16-byte chunk, ITEMS chunks per thread, TPR threads per
// row (a power of two up to a warp: the reductions are shuffles), ROWS rows
// per CTA. CTA g of G takes rows g * ROWS + slot, then G * ROWS further on,
// and so on; AHEAD (1 or 2) of its rows are in flight while it reduces one.
// AHEAD 0: one pass, CTA g taking rows g * ROWS + slot only (a grid of all
// the row groups). EXACT: compiled for N = ITEMS * VEC * TPR (no bounds
// checks, N and 1/N constants); otherwise any N up to that, a multiple of
// VEC (rows of whole 16-byte chunks: shifted rows take forward.cuh's
// kernels).
template <typename T, typename W, typename O, int VEC, int ITEMS, int TPR, int ROWS,
          int MIN_CTAS, int AHEAD, bool EXACT>
__global__ void __launch_bounds__(TPR * ROWS, MIN_CTAS)
    ln_fwd_short_rows_kernel(const ForwardParams<T, W, O> p) {
  static_assert(TPR <= kWarpSize && kWarpSize % TPR == 0,
                "a row within a warp: its reductions are shuffles");
  static_assert(AHEAD >= 0 && AHEAD <= 2, "one pass, or one or two rows in flight ahead");
  constexpr int kChunkStride = TPR * VEC;  // columns from one of a thread's chunks to the next
  const int lane = threadIdx.x % TPR;      // the thread's place in its row
  const int n = EXACT ? ITEMS * VEC * TPR : p.cols;
  const float inv_n = EXACT ? 1.f / static_cast<float>(ITEMS * VEC * TPR) : p.inv_cols;
  // Chunk i of the thread holds columns lane * VEC + i * kChunkStride ...
  auto in_row = [&](int i) { return EXACT || lane * VEC + i * kChunkStride < n; };

  // Weight and bias as floats (1 / 0 where absent or past the row end).
  // kPinParams: made opaque to the compiler where the registers hold them
  // beside the row's floats and the next row's packs, so it keeps them as
  // floats instead of widening the packs again for every row; elsewhere
  // that is its choice (pinned at 64 registers, bf16 16 x 32 B spilled 60
  // bytes).
  constexpr int kElems = ITEMS * VEC;
  constexpr int kRegisters = 65536 / (MIN_CTAS * TPR * ROWS);
  constexpr bool kPinParams =
      3 * kElems + AHEAD * kElems * static_cast<int>(sizeof(T)) / 4 + 24 <= kRegisters;
  float w[ITEMS][VEC], b[ITEMS][VEC];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int j0 = lane * VEC + i * kChunkStride;
    unpack(p.w ? load_chunk<W, VEC, false>(p.w, j0, n) : filled_pack<W, VEC>(1.f), w[i]);
    unpack(p.b ? load_chunk<W, VEC, false>(p.b, j0, n) : filled_pack<W, VEC>(0.f), b[i]);
    if constexpr (kPinParams) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) asm("" : "+f"(w[i][k]), "+f"(b[i][k]));
    }
  }

  const int64_t stride = static_cast<int64_t>(gridDim.x) * ROWS;  // rows between a thread's rows
  const int64_t step = stride * n;                                // their elements
  int64_t row = static_cast<int64_t>(blockIdx.x) * ROWS + threadIdx.x / TPR;
  // This thread's first column of its current row, of the next row it loads.
  O* y_ptr = p.y + row * n + lane * VEC;
  const T* x_ptr = p.x + row * n + lane * VEC;
  // Loads the row at x_ptr (the thread's columns; zeros past the row end for
  // generic N, where they enter the sums; undefined for a row past the last,
  // never stored) and moves x_ptr on to the thread's next row.
  auto load_row = [&](Pack<T, VEC>(&packs)[ITEMS], bool row_ok) {
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      packs[i] = load_pack_if<T, VEC, !EXACT>(x_ptr + i * kChunkStride, row_ok && in_row(i));
    }
    x_ptr += step;
  };
  // One row, from its packs, which then receive the row AHEAD rows further
  // on (its loads in flight from once the row's sum is taken).
  auto run_row = [&](Pack<T, VEC>(&packs)[ITEMS]) {
    const bool row_ok = row < p.rows;
    float xf[ITEMS][VEC];
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) unpack(packs[i], xf[i]);
    float chunk_sums[ITEMS];
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) chunk_sums[i] = tree_sum(xf[i]);
    const float sum = tree_sum(chunk_sums);
    if constexpr (AHEAD > 0) load_row(packs, row + AHEAD * stride < p.rows);
    // mean0 rounded on its own, so x - mean0 is exact for x near it (as in
    // forward.cuh); the corrected two-pass from there.
    const float mean0 = __fmul_rn(group_sum<TPR>(sum), inv_n);
    float dev_sums[ITEMS], dev_squares[ITEMS];
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
#pragma unroll
      for (int k = 0; k < VEC; ++k) xf[i][k] -= mean0;  // xf holds d from here on
      dev_sums[i] = in_row(i) ? tree_sum(xf[i]) : 0.f;
      dev_squares[i] = in_row(i) ? dot(xf[i], xf[i]) : 0.f;
    }
    const float2 dev =
        group_sum<TPR>(make_float2(tree_sum(dev_sums), tree_sum(dev_squares)));
    const float corr = dev.x * inv_n;  // mean = mean0 + corr
    const float m2 = fmaxf(dev.y - dev.x * corr, 0.f);
    const float rstd = rsqrtf(m2 * inv_n + p.eps);
    // x_hat = (d - corr) * rstd as one fma. A constant row has d = corr = 0
    // where mean0 is exact (y = b exactly), and |d - corr| at rounding level
    // otherwise.
    const float hat_shift = -corr * rstd;
    if (row_ok) {
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        float v[VEC];
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          v[k] = fmaf(fmaf(xf[i][k], rstd, hat_shift), w[i][k], b[i][k]);
        }
        Pack<O, VEC> out;
        store_floats(out, v);
        if (in_row(i)) store_pack(y_ptr + i * kChunkStride, out);
      }
      if (lane == 0 && p.stats != nullptr) {
        store_row_stats(p.stats, row, mean0 + corr, rstd);
      }
    }
    y_ptr += step;
    row += stride;
  };
  // The first AHEAD rows in flight; then rows in turns of AHEAD (the packs
  // of each by name, so they stay in registers). Every thread of a warp runs
  // the same number of rows (the shuffles need all its lanes): the loop
  // counts the CTA's first rows.
  Pack<T, VEC> packs[AHEAD > 0 ? AHEAD : 1][ITEMS];
  if constexpr (AHEAD == 0) {
    load_row(packs[0], row < p.rows);
    run_row(packs[0]);
    return;
  }
#pragma unroll
  for (int a = 0; a < AHEAD; ++a) load_row(packs[a], row + a * stride < p.rows);
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * ROWS; base < p.rows;) {
#pragma unroll
    for (int a = 0; a < (AHEAD > 0 ? AHEAD : 1); ++a) {
      if (a > 0 && base >= p.rows) break;
      run_row(packs[a]);
      base += stride;
    }
  }
}

}  // namespace fastlayernorm::cuda
