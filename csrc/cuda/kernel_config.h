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
  bool prefetch;          // load the next row while reducing this one
  // Resident threads per SM the kernel is compiled for (caps registers at
  // 65536 / min_threads); 0: the direction's default below.
  int min_threads = 0;
};

constexpr int cta_threads(const KernelConfig& c) { return c.tpr * c.rows; }

// Persistent CTAs keep at least this many threads per SM resident, which
// caps registers per thread at 65536 / min_threads (64 for the forward, 128
// for the backward, which also holds dy and the dweight/dbias accumulators).
constexpr int kForwardMinThreadsPerSm = 1024;
constexpr int kBackwardMinThreadsPerSm = 512;
constexpr int min_ctas_per_sm(const KernelConfig& c, int default_min_threads) {
  const int min_threads = c.min_threads > 0 ? c.min_threads : default_min_threads;
  return cta_threads(c) >= min_threads ? 1 : min_threads / cta_threads(c);
}

// Entry I of a table, as a type (the launchers take their entry as a
// template argument).
template <const auto& kTable, size_t I>
struct TableEntry {
  static constexpr KernelConfig config = kTable[I];
};

// Forward: the input row is held (the output is written from it). Short rows
// prefetch the next row (their threads hold little); long rows rely on other
// resident CTAs for overlap (H100 measurements in docs/kernels.md).
inline constexpr KernelConfig kForwardConfigs[] = {
    {16, 1, 16, 128, 1, true},     {32, 2, 16, 64, 1, true},
    {64, 4, 16, 32, 1, true},      {128, 8, 16, 16, 1, true},
    {256, 16, 16, 8, 1, true},     {512, 16, 32, 8, 1, true},
    {1024, 32, 32, 4, 1, true},    {2048, 32, 64, 4, 1, false},
    {4096, 64, 64, 1, 1, false},   {8192, 128, 64, 1, 1, false},
    {16384, 256, 64, 1, 1, false}, {32768, 512, 64, 1, 1, false},
    {65536, 1024, 64, 1, 1, false},
    // Rows beyond one CTA's registers: a cluster of CTAs per row.
    {131072, 1024, 64, 1, 2, false}, {262144, 1024, 64, 1, 4, false},
    {524288, 1024, 64, 1, 8, false},
};

// Backward: the input and grad rows are held (and prefetched), plus fp32
// dweight/dbias accumulators for the thread's columns. CTAs of several rows
// keep the number of partial rows (one per CTA) small.
inline constexpr KernelConfig kBackwardConfigs[] = {
    {16, 1, 16, 128, 1, true},     {32, 2, 16, 64, 1, true},
    {64, 4, 16, 32, 1, true},      {128, 8, 16, 16, 1, true},
    {256, 16, 16, 8, 1, true},     {512, 32, 16, 4, 1, true},
    {1024, 32, 32, 4, 1, true},    {2048, 64, 32, 4, 1, true},
    {4096, 128, 32, 2, 1, true},   {8192, 256, 32, 1, 1, true},
    {16384, 512, 32, 1, 1, true},  {32768, 512, 32, 1, 2, true},
    {65536, 512, 32, 1, 4, true},  {131072, 512, 32, 1, 8, true},
};

}  // namespace fastlayernorm::cuda
