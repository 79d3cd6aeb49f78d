// The kernel choice per size range, as tables: one row per range of row
// sizes (in bytes of the input dtype), giving the thread mapping. A row is
// held in registers by `tpr` threads of a CTA, `bytes_per_thread` bytes each,
// or by `cluster` CTAs of a thread-block cluster (Hopper) when one CTA's
// registers cannot hold it. Rows larger than the last entry go to the
// fallback kernels (fallback.cuh), which stream the row from memory.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fastlayernorm::cuda {

struct KernelConfig {
  int64_t max_row_bytes;  // rows up to this size use this entry
  int tpr;                // threads per row in one CTA (power of two)
  int bytes_per_thread;   // input bytes each thread holds (multiple of 16)
  int cluster;            // CTAs per row (1: no cluster)
};

// CTA size: one row per CTA when a row needs a warp or more, otherwise
// several rows share a 128-thread CTA.
constexpr int cta_threads(int tpr) { return tpr >= 32 ? tpr : 128; }

// Forward: only the input row is held (the output is written from it).
inline constexpr KernelConfig kForwardConfigs[] = {
    {16, 1, 16, 1},          {32, 2, 16, 1},          {64, 4, 16, 1},
    {128, 8, 16, 1},         {256, 16, 16, 1},        {512, 32, 16, 1},
    {1024, 32, 32, 1},       {2048, 32, 64, 1},       {4096, 64, 64, 1},
    {8192, 128, 64, 1},      {16384, 256, 64, 1},     {32768, 512, 64, 1},
    // At 1024 threads a thread may use 64 registers: clusters of 512-thread
    // CTAs instead, except for the largest rows (a few spilled registers).
    {65536, 512, 64, 2},     {131072, 512, 64, 4},    {262144, 512, 64, 8},
    {524288, 1024, 64, 8},
};

// Backward: the input and grad rows are held, plus float accumulators of
// dweight/dbias for the thread's columns (2 floats per element), so threads
// hold fewer bytes and clusters start earlier.
inline constexpr KernelConfig kBackwardConfigs[] = {
    {16, 1, 16, 1},          {32, 2, 16, 1},          {64, 4, 16, 1},
    {128, 8, 16, 1},         {256, 16, 16, 1},        {512, 32, 16, 1},
    {1024, 32, 32, 1},       {2048, 64, 32, 1},       {4096, 128, 32, 1},
    {8192, 256, 32, 1},      {16384, 256, 32, 2},     {32768, 256, 32, 4},
    {65536, 256, 32, 8},     {131072, 512, 32, 8},
};

}  // namespace fastlayernorm::cuda
