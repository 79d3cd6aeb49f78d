// The kernel choice per size range, as tables: one row per range of row
// sizes (in bytes of the input dtype), giving the thread mapping. A row is
// held in registers by `tpr` threads, `bytes_per_thread` bytes each; a CTA
// holds `rows` such rows at a time, or one row is split over `cluster` CTAs of
// a thread-block cluster (Hopper) when one CTA's registers cannot hold it.
// Rows larger than the last entry go to the fallback kernels (fallback.cuh),
// which stream the row from memory.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fastlayernorm::cuda {

struct KernelConfig {
  int64_t max_row_bytes;  // rows up to this size use this entry
  int tpr;                // threads per row (power of two)
  int bytes_per_thread;   // input bytes each thread holds (multiple of 16)
  int rows;               // rows per CTA (tpr * rows threads)
  int cluster;            // CTAs per row (1: no cluster; then rows may be > 1)
};

constexpr int cta_threads(const KernelConfig& c) { return c.tpr * c.rows; }

// Persistent CTAs keep at least this many threads per SM resident, which
// caps registers per thread at 65536 / kMinThreadsPerSm.
constexpr int kMinThreadsPerSm = 512;
constexpr int min_ctas_per_sm(const KernelConfig& c) {
  return cta_threads(c) >= kMinThreadsPerSm ? 1 : kMinThreadsPerSm / cta_threads(c);
}

// Forward: the input row is held (the output is written from it), and the
// next row's loads are in flight while this row is reduced.
inline constexpr KernelConfig kForwardConfigs[] = {
    {16, 1, 16, 128, 1},     {32, 2, 16, 64, 1},      {64, 4, 16, 32, 1},
    {128, 8, 16, 16, 1},     {256, 16, 16, 8, 1},     {512, 16, 32, 8, 1},
    {1024, 32, 32, 4, 1},    {2048, 32, 64, 4, 1},    {4096, 64, 64, 2, 1},
    {8192, 128, 64, 1, 1},   {16384, 256, 64, 1, 1},
    // Larger rows: clusters of 256-thread CTAs, so several CTAs (rows) stay
    // resident per SM; the largest at 512/1024 threads (cluster size <= 8).
    {32768, 256, 64, 1, 2},  {65536, 256, 64, 1, 4},  {131072, 256, 64, 1, 8},
    {262144, 512, 64, 1, 8}, {524288, 1024, 64, 1, 8},
};

// Backward: the input and grad rows are held (and prefetched), plus fp32
// dweight/dbias accumulators for the thread's columns. CTAs of several rows
// keep the number of partial rows (one per CTA) small.
inline constexpr KernelConfig kBackwardConfigs[] = {
    {16, 1, 16, 128, 1},     {32, 2, 16, 64, 1},      {64, 4, 16, 32, 1},
    {128, 8, 16, 16, 1},     {256, 16, 16, 8, 1},     {512, 32, 16, 4, 1},
    {1024, 32, 32, 4, 1},    {2048, 64, 32, 4, 1},    {4096, 128, 32, 2, 1},
    {8192, 256, 32, 1, 1},   {16384, 256, 32, 1, 2},  {32768, 256, 32, 1, 4},
    {65536, 256, 32, 1, 8},  {131072, 512, 32, 1, 8},
};

}  // namespace fastlayernorm::cuda
