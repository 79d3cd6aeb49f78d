// Host side: picks a kernel from the tables in kernel_config.h and launches
// it on the current stream with a persistent grid. Included by the
// per-dtype translation units (forward_*.cu, backward_*.cu), which
// instantiate launch_forward / launch_backward for their dtypes.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "../layer_norm.h"
#include "backward.cuh"
#include "backward_few_rows.cuh"
#include "fallback.cuh"
#include "forward.cuh"
#include "forward_row_in_smem.cuh"
#include "forward_short_rows.cuh"

namespace fastlayernorm::cuda {

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}
template <typename T>
T* mutable_ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<T>() : nullptr;
}

inline bool aligned16(const at::Tensor& t) {
  return !t.defined() || reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
}

// The register kernels move rows in 16-byte chunks on the aligned grid of
// memory (any N: rows that do not start on a boundary have a partial first
// chunk), so every tensor they touch must start on a 16-byte boundary.
inline bool all_aligned16(std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors) {
    if (!aligned16(*t)) return false;
  }
  return true;
}

// Row bytes a table entry must hold: rows not starting on a 16-byte boundary
// (N not a multiple of the 16-byte vector) span up to one chunk more.
template <typename T>
int64_t row_capacity_bytes(int64_t cols) {
  constexpr int64_t kVec = 16 / sizeof(T);
  return (cols % kVec == 0 ? cols : cols + kVec - 1) * static_cast<int64_t>(sizeof(T));
}

// A yes/no property of the current device, computed by `compute` once per
// device (devices 0-63; beyond, every call).
template <typename Compute>
bool cached_device_flag(std::array<std::atomic<int8_t>, 64>& cache, Compute&& compute) {
  const int device = at::cuda::current_device();
  if (device < 64) {
    const int8_t known = cache[device].load(std::memory_order_relaxed);  // 0 unknown, 1 yes, -1 no
    if (known != 0) return known > 0;
  }
  const bool yes = compute(device);
  if (device < 64) cache[device].store(yes ? 1 : -1, std::memory_order_relaxed);
  return yes;
}

// Thread-block clusters and programmatic dependent launches: an sm_90+
// device running kernels compiled for sm_90+. An extension built with only
// older architectures' PTX (TORCH_CUDA_ARCH_LIST="8.0+PTX") runs on a
// Hopper GPU as code JIT-compiled from compute_80, in which the cluster
// reductions and griddepcontrol instructions are compiled out
// (__CUDA_ARCH__ < 900): the host must then launch neither. The PTX version
// of one of the extension's kernels tells (all are built with the same
// architectures); cached per device.
inline bool hopper_launch_features() {
  static std::array<std::atomic<int8_t>, 64> cache{};
  return cached_device_flag(cache, [](int) {
    if (at::cuda::getCurrentDeviceProperties()->major < 9) return false;
    cudaFuncAttributes attributes{};
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, ln_dwdb_finalize_kernel<float, 1>));
    return attributes.ptxVersion >= 90;
  });
}

// Whether the device's memory streams more than kFastMemoryBytesPerSecond
// (its peak: twice the memory clock times the bus width), so that the
// launchers take the fast-memory tables of kernel_config.h (H200: 4.8 TB/s)
// instead of the H100's (3.35 TB/s). The environment variable
// FASTLAYERNORM_FAST_MEMORY_TABLES=1 / 0 takes the one or the other on any
// card (read once; for tests and measurements). Cached per device.
inline bool fast_memory_card() {
  static const int forced = [] {  // -1: by the card
    const char* v = std::getenv("FASTLAYERNORM_FAST_MEMORY_TABLES");
    if (v == nullptr || *v == '\0') return -1;
    TORCH_CHECK(std::strcmp(v, "0") == 0 || std::strcmp(v, "1") == 0,
                "fastlayernorm: expected FASTLAYERNORM_FAST_MEMORY_TABLES to be 0 or 1 "
                "(or unset), but got '", v, "'");
    return v[0] == '1' ? 1 : 0;
  }();
  if (forced >= 0) return forced == 1;
  static std::array<std::atomic<int8_t>, 64> cache{};
  return cached_device_flag(cache, [](int device) {
    int clock_khz = 0, bus_bits = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device));
    return 2.0 * clock_khz * 1e3 * (bus_bits / 8) > kFastMemoryBytesPerSecond;
  });
}

// A launch configuration with at most one launch attribute (a cluster
// dimension, or programmatic stream serialization); the config points at the
// attribute beside it, so it is neither copied nor moved.
struct LaunchConfig {
  cudaLaunchConfig_t config{};
  cudaLaunchAttribute attr{};

  LaunchConfig(dim3 grid, dim3 block, size_t smem, cudaStream_t stream) {
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    config.attrs = &attr;
    config.numAttrs = 0;
  }
  LaunchConfig(const LaunchConfig&) = delete;
  LaunchConfig& operator=(const LaunchConfig&) = delete;

  void set_cluster(int cluster) {
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = cluster;
    attr.val.clusterDim.y = 1;
    attr.val.clusterDim.z = 1;
    config.numAttrs = 1;
  }
  // The kernel may start before the one ahead of it in the stream has
  // finished (it waits for it with wait_for_prior_grid()).
  void set_programmatic_serialization() {
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    config.numAttrs = 1;
  }
};

// Per-device cache of resident_groups(); each kernel instantiation owns one
// (a static in its launcher), since kernels of one signature share a type.
using ResidencyCache = std::array<int64_t, 64>;

// How many CTAs (or clusters) of `kernel` are resident on the whole GPU at
// once: the persistent grid size; 0 when the kernel's shared memory exceeds
// what a CTA may have on this GPU (the caller then takes another kernel).
// The first call per device also lets the kernel use `smem` bytes of dynamic
// shared memory (above the 48 KiB default).
template <typename Kernel>
int64_t resident_groups(Kernel kernel, int threads, int cluster, size_t smem,
                        ResidencyCache& cache) {
  const int device = at::cuda::current_device();
  if (device < 64 && cache[device] != 0) return std::max<int64_t>(cache[device], 0);
  cudaFuncAttributes attributes{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  if (smem + attributes.sharedSizeBytes >
      at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin) {
    if (device < 64) cache[device] = -1;
    return 0;
  }
  if (smem > 0) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  }
  int64_t groups = 0;
  if (cluster == 1) {
    int per_sm = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
    groups = static_cast<int64_t>(per_sm) *
             at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  } else {
    LaunchConfig one_cluster(dim3(cluster), dim3(threads), smem, nullptr);
    one_cluster.set_cluster(cluster);
    int clusters = 0;
    // Clusters of more than 8 CTAs (Hopper allows 16) must be opted into,
    // and may not fit a GPU's (or a MIG slice's) GPCs: then none is resident
    // and the caller takes another kernel instead of failing.
    const bool optional = cluster > 8;
    cudaError_t err = cudaSuccess;
    if (optional) {
      err = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    }
    if (err == cudaSuccess) {
      err = cudaOccupancyMaxActiveClusters(&clusters, kernel, &one_cluster.config);
    }
    if (optional && (err != cudaSuccess || clusters == 0)) {
      (void)cudaGetLastError();  // cleared: the fallback runs instead
      if (device < 64) cache[device] = -1;
      return 0;
    }
    C10_CUDA_CHECK(err);
    groups = clusters;
  }
  TORCH_CHECK(groups > 0, "fastlayernorm: a LayerNorm kernel (", threads, " threads, cluster ",
              cluster, ", ", smem, " bytes of shared memory) cannot be resident on this GPU");
  if (device < 64) cache[device] = groups;
  return groups;
}

template <typename Kernel, typename Params>
void launch_kernel(Kernel kernel, int64_t groups, int threads, int cluster, size_t smem,
                   const Params& params, cudaStream_t stream) {
  if (cluster == 1) {
    kernel<<<static_cast<unsigned>(groups), threads, smem, stream>>>(params);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  LaunchConfig launch(dim3(static_cast<unsigned>(groups * cluster)), dim3(threads), smem, stream);
  launch.set_cluster(cluster);
  C10_CUDA_CHECK(cudaLaunchKernelEx(&launch.config, kernel, params));
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Rows that do not start on a 16-byte boundary (N not a multiple of VEC):
// with G CTA groups a multiple of VEC, the rows g, g + G, ... of a CTA all
// start at the same offset from a boundary, so a thread's columns sit at the
// same place in every chunk. A persistent grid rounds down (to stay
// resident), a grid of all the rows' CTAs up.
inline int64_t shift_uniform_groups(int64_t groups, int vec, bool persistent) {
  return persistent ? std::max<int64_t>(vec, groups / vec * vec) : ceil_div(groups, vec) * vec;
}

// Calls launch(TableEntry<kTable, I>{}) for the first entry I of kTable whose
// rows hold row_bytes, and returns its answer (false: the kernel cannot run
// here). False when no entry does, or when it needs clusters this GPU lacks:
// the caller then takes the fallback kernels.
// An exact_rows_only entry takes only rows of its max_row_bytes (rows of
// whole chunks: the tables that have such entries are not used for shifted
// rows), the next entry the others.
template <const auto& kTable, size_t I = 0, typename Launch>
bool dispatch_table(int64_t row_bytes, bool clusters_ok, Launch&& launch) {
  static_assert(I > 0 || exact_rows_entries_valid(kTable),
                "an exact_rows_only entry fills its mapping and is followed by an entry of its "
                "max_row_bytes");
  if constexpr (I == std::size(kTable)) {
    return false;
  } else {
    if (row_bytes > kTable[I].max_row_bytes ||
        (kTable[I].exact_rows_only && row_bytes != kTable[I].max_row_bytes)) {
      return dispatch_table<kTable, I + 1>(row_bytes, clusters_ok, launch);
    }
    if (needs_clusters(kTable[I]) && !clusters_ok) return false;
    return launch(TableEntry<kTable, I>{});
  }
}

// The table of an input dtype among a 16-bit and a 32-bit one.
template <typename T, const auto& kTable16, const auto& kTable32, typename Launch>
bool dispatch_table_for(int64_t row_bytes, bool clusters_ok, Launch&& launch) {
  if constexpr (sizeof(T) == 2) {
    return dispatch_table<kTable16>(row_bytes, clusters_ok, launch);
  } else {
    return dispatch_table<kTable32>(row_bytes, clusters_ok, launch);
  }
}

// dispatch_table_for over the fast-memory tables on cards of faster memory
// (fast_memory_card), over the H100's elsewhere.
template <typename T, const auto& kTable16, const auto& kTable32, const auto& kFastTable16,
          const auto& kFastTable32, typename Launch>
bool dispatch_table_by_memory(int64_t row_bytes, bool clusters_ok, Launch&& launch) {
  if (fast_memory_card()) {
    return dispatch_table_for<T, kFastTable16, kFastTable32>(row_bytes, clusters_ok, launch);
  }
  return dispatch_table_for<T, kTable16, kTable32>(row_bytes, clusters_ok, launch);
}

// The kernels index a row with int.
inline void check_row_fits_int(int64_t cols) {
  TORCH_CHECK(cols <= std::numeric_limits<int>::max(),
              "fastlayernorm: expected at most 2^31-1 normalized elements per "
              "row on CUDA, but got ", cols);
}

// Kernel parameters from the operator's arguments. O / G: the output / dy
// dtype. cols is narrowed to int: only rows a table entry holds (at most
// 512 KiB) reach the register kernels.
template <typename T, typename W, typename O>
ForwardParams<T, W, O> forward_params(const ForwardArgs& a) {
  return make_forward_params<T, W, O>(
      a.input.const_data_ptr<T>(), ptr_or_null<W>(a.weight), ptr_or_null<W>(a.bias),
      a.output.mutable_data_ptr<O>(), mutable_ptr_or_null<float>(a.stats), a.rows,
      static_cast<int>(a.cols), static_cast<float>(a.eps));
}
template <typename T, typename W, typename G>
BackwardParams<T, W, G> backward_params(const BackwardArgs& a) {
  return {a.grad_out.const_data_ptr<G>(),
          a.input.const_data_ptr<T>(),
          a.stats.const_data_ptr<float>(),
          ptr_or_null<W>(a.weight),
          ptr_or_null<W>(a.bias),
          mutable_ptr_or_null<T>(a.grad_input),
          nullptr,  // partials: set by launch_backward_entry
          nullptr,
          a.rows,
          static_cast<int>(a.cols)};
}

// ---- forward ---------------------------------------------------------------

// Launches the row-in-shared-memory forward kernel of `Entry`: one CTA
// group (cluster) per row, or a persistent grid of them.
template <typename T, typename W, bool kShifted, typename Entry, typename O>
bool launch_forward_row_in_smem(Entry, const ForwardParams<T, W, O>& p, cudaStream_t stream) {
  constexpr KernelConfig c = Entry::config;
  static_assert(c.rows == 1 && (c.persistent || c.stages == 0),
                "a row-in-shared-memory entry holds one row per CTA group");
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kItems = c.bytes_per_thread / 16;
  constexpr size_t kSmem =
      forward_row_in_smem_bytes<W, kVec, kItems, c.tpr, c.stages, c.persistent>();
  // Registers for as many CTAs as the rows' shared memory lets an SM hold
  // (up to the default 1024 threads), unless the entry says otherwise.
  constexpr int kMinCtas = c.min_threads > 0
                               ? min_ctas_per_sm(c, kForwardMinThreadsPerSm)
                               : std::clamp(static_cast<int>(kSharedMemoryPerSm / (kSmem + 1024)),
                                            1, std::max(1, kForwardMinThreadsPerSm / c.tpr));
  auto kernel = ln_fwd_row_in_smem_kernel<T, W, O, kVec, kItems, c.tpr, c.cluster, kMinCtas,
                                          c.stages, kShifted, c.persistent>;
  static ResidencyCache cache{};
  const int64_t resident = resident_groups(kernel, c.tpr, c.cluster, kSmem, cache);
  if (resident == 0) return false;
  // One-pass: a CTA group per row (beyond a grid's 2^31-1 CTAs only for
  // tensors far beyond any GPU's memory; the fallback takes those).
  if (!c.persistent && p.rows * c.cluster > (int64_t{1} << 30)) return false;
  int64_t groups = c.persistent ? std::min(p.rows, resident) : p.rows;
  if (kShifted && c.persistent) groups = shift_uniform_groups(groups, kVec, true);
  launch_kernel(kernel, groups, c.tpr, c.cluster, kSmem, p, stream);
  return true;
}

// Launches the register forward kernel of `Entry`; rows that fill its
// mapping exactly (N = tpr * bytes_per_thread / sizeof(T): the table's
// entries end at the common hidden sizes) on the kernel compiled for that N
// (EXACT in forward.cuh), where the entry allows it (exact_rows).
template <typename T, typename W, bool kShifted, typename Entry, typename O>
bool launch_forward_row_in_registers(Entry, const ForwardParams<T, W, O>& p,
                                     cudaStream_t stream) {
  constexpr KernelConfig c = Entry::config;
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kItems = c.bytes_per_thread / 16;
  constexpr int kMinCtas = min_ctas_per_sm(c, kForwardMinThreadsPerSm);
  constexpr size_t kSmem =
      forward_smem_bytes<W, kVec, kItems, cta_threads(c), kMinCtas, c.stages, kShifted,
                         c.persistent, c.params_in_smem, c.prefetch_row>();
  // `resident`: resident_groups() of the kernel (0: its shared memory does
  // not fit a CTA here; the first call also sets its shared-memory limit,
  // which one-pass grids need too).
  auto launch = [&](auto kernel, int64_t resident) {
    if (resident == 0) return false;
    // One-pass grids give every `rows` rows their CTA (more than a grid holds
    // only for tensors far beyond any GPU's memory; the fallback takes those).
    const int64_t all_rows = ceil_div(p.rows, c.rows);
    if (!c.persistent && all_rows > (int64_t{1} << 30)) return false;
    int64_t groups = c.persistent ? std::min(all_rows, resident) : all_rows;
    if (kShifted) groups = shift_uniform_groups(groups, kVec, c.persistent);
    launch_kernel(kernel, groups, cta_threads(c), c.cluster, kSmem, p, stream);
    return true;
  };
  // An exact_rows_only entry that loads its next row ahead and prefetches
  // rows into L2 runs the rows it takes (its full rows) on that kernel
  // alone: no generic twin is compiled for it.
  constexpr bool kFullRowsAhead = c.exact_rows_only && c.l2_rows_ahead > 0 && !kShifted;
  static_assert(c.l2_rows_ahead == 0 || c.prefetch_row, "l2_rows_ahead is prefetch_row's option");
  if constexpr (kFullRowsAhead) {
    if (!fills_mapping(c, p.cols, sizeof(T))) return false;  // not the rows the table gives it
    auto ahead = ln_fwd_kernel<T, W, O, kVec, kItems, c.tpr, c.rows, c.cluster, kMinCtas,
                               c.stages, kShifted, c.persistent, c.params_in_smem, c.prefetch_row,
                               false, c.l2_rows_ahead>;
    static ResidencyCache ahead_cache{};
    return launch(ahead, resident_groups(ahead, cta_threads(c), c.cluster, kSmem, ahead_cache));
  } else {
    auto generic = ln_fwd_kernel<T, W, O, kVec, kItems, c.tpr, c.rows, c.cluster, kMinCtas,
                                 c.stages, kShifted, c.persistent, c.params_in_smem,
                                 c.prefetch_row>;
    static ResidencyCache cache{};
    const int64_t resident = resident_groups(generic, cta_threads(c), c.cluster, kSmem, cache);
    // Not for the autocast path (O = float): fewer instantiations to compile.
    if constexpr (c.exact_rows && forward_has_exact_kernel(kShifted, c.cluster, c.prefetch_row) &&
                  std::is_same_v<O, T>) {
      if (p.cols == forward_exact_cols(kVec, kItems, c.tpr)) {
        auto exact = ln_fwd_kernel<T, W, O, kVec, kItems, c.tpr, c.rows, c.cluster, kMinCtas,
                                   c.stages, kShifted, c.persistent, c.params_in_smem,
                                   c.prefetch_row, true>;
        static ResidencyCache exact_cache{};
        // Only where at least 7/8 as many of its CTAs are resident as of the
        // generic kernel's: the constant N can cost registers. Its fewer
        // instructions paid for one CTA of nine (16-bit N=1536: 64 registers
        // against 56, 88.0% of copy against 82.1 on an H200), not for half of
        // them (float32 N=6144: 90 against 72, one 384-thread CTA per SM
        // instead of two, 54% against 79).
        const int64_t exact_resident =
            resident_groups(exact, cta_threads(c), c.cluster, kSmem, exact_cache);
        if (exact_resident > 0 && 8 * exact_resident >= 7 * resident) {
          return launch(exact, exact_resident);
        }
      }
    }
    // Rows that fill the mapping exactly also prefetch rows into L2 where the
    // entry says so (KernelConfig::l2_rows_ahead; not shifted rows, which
    // start off 16-byte boundaries).
    if constexpr (c.l2_rows_ahead > 0 && !kShifted) {
      if (fills_mapping(c, p.cols, sizeof(T))) {
        auto ahead = ln_fwd_kernel<T, W, O, kVec, kItems, c.tpr, c.rows, c.cluster, kMinCtas,
                                   c.stages, kShifted, c.persistent, c.params_in_smem,
                                   c.prefetch_row, false, c.l2_rows_ahead>;
        static ResidencyCache ahead_cache{};
        const int64_t ahead_resident =
            resident_groups(ahead, cta_threads(c), c.cluster, kSmem, ahead_cache);
        if (ahead_resident > 0 && 8 * ahead_resident >= 7 * resident) {
          return launch(ahead, ahead_resident);
        }
      }
    }
    return launch(generic, resident);
  }
}

// Launches the short-row kernel of `Entry` (params_in_registers): rows that
// fill its mapping exactly on the kernel compiled for that N (where the
// entry allows it), the others on the one for any N (none is compiled for
// an exact_rows_only entry, which the tables give only its own rows).
template <typename T, typename W, typename Entry, typename O>
bool launch_forward_short_rows(Entry, const ForwardParams<T, W, O>& p, cudaStream_t stream) {
  constexpr KernelConfig c = Entry::config;
  static_assert(c.cluster == 1 && c.stages <= 2 && !c.row_in_smem && c.tpr <= 32 &&
                    (c.persistent || c.stages == 0),
                "the short-row kernel: rows within a warp, one CTA per row group, one pass or "
                "1-2 rows ahead");
  constexpr int kAhead = c.persistent ? std::max(1, c.stages) : 0;
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kItems = c.bytes_per_thread / 16;
  constexpr int kMinCtas = min_ctas_per_sm(c, kForwardMinThreadsPerSm);
  auto launch = [&](auto kernel, ResidencyCache& cache) {
    const int64_t resident = resident_groups(kernel, cta_threads(c), 1, 0, cache);
    if (resident == 0) return false;
    // One pass (more than a grid holds only for tensors far beyond any GPU's
    // memory; the fallback takes those).
    const int64_t all_rows = ceil_div(p.rows, c.rows);
    if (!c.persistent && all_rows > (int64_t{1} << 30)) return false;
    const int64_t groups = c.persistent ? std::min(all_rows, resident) : all_rows;
    launch_kernel(kernel, groups, cta_threads(c), 1, 0, p, stream);
    return true;
  };
  if (c.exact_rows && p.cols == forward_exact_cols(kVec, kItems, c.tpr)) {
    static ResidencyCache exact_cache{};
    return launch(
        ln_fwd_short_rows_kernel<T, W, O, kVec, kItems, c.tpr, c.rows, kMinCtas, kAhead, true>,
        exact_cache);
  }
  if constexpr (!c.exact_rows_only) {
    static ResidencyCache cache{};
    return launch(
        ln_fwd_short_rows_kernel<T, W, O, kVec, kItems, c.tpr, c.rows, kMinCtas, kAhead, false>,
        cache);
  }
  return false;
}

// The forward kernel of `Entry`'s mapping.
template <typename T, typename W, bool kShifted, typename Entry, typename O>
bool launch_forward_mapping(Entry e, const ForwardParams<T, W, O>& p, cudaStream_t stream) {
  constexpr KernelConfig c = Entry::config;
  static_assert(c.tpr * c.cluster * c.bytes_per_thread >= c.max_row_bytes,
                "a table entry must hold its largest row");
  // The row-in-shared-memory kernel reads weight and bias from L1/L2 for
  // every row; with weights wider than the row's elements (float32 weights of
  // a 16-bit row: twice the row's bytes) the register kernel at the entry's
  // mapping measured faster where one CTA holds the row (tune v12, bf16:
  // N=6144 91.7 against 84.2% of copy, 8192 91.4 / 86.6, 16384 86.7 / 73.1).
  constexpr bool kRowInSmem = c.row_in_smem && (c.cluster > 1 || sizeof(W) <= sizeof(T));
  if constexpr (c.params_in_registers) {
    static_assert(!kShifted, "shifted rows take forward.cuh's kernels (shifted_forward_config)");
    return launch_forward_short_rows<T, W>(e, p, stream);
  } else if constexpr (kRowInSmem) {
    return launch_forward_row_in_smem<T, W, kShifted>(e, p, stream);
  } else {
    return launch_forward_row_in_registers<T, W, kShifted>(e, p, stream);
  }
}

// The entry whose kernel runs the shifted rows of a table entry
// (shifted_forward_config in kernel_config.h).
template <typename Entry, int kElemBytes>
struct ShiftedForwardEntry {
  static constexpr KernelConfig config = shifted_forward_config(Entry::config, kElemBytes);
};

// Launches the forward kernel of `Entry` (a TableEntry, or any type with a
// constexpr KernelConfig `config`), for shifted rows the kernel of its
// shifted_forward_config; false when it cannot run here.
template <typename T, typename W, bool kShifted, typename Entry, typename O>
bool launch_forward_entry(Entry e, const ForwardParams<T, W, O>& p, cudaStream_t stream) {
  if constexpr (kShifted) {
    return launch_forward_mapping<T, W, true>(ShiftedForwardEntry<Entry, sizeof(T)>{}, p, stream);
  } else {
    return launch_forward_mapping<T, W, false>(e, p, stream);
  }
}

// The forward's fast-memory table of a 16-bit dtype pair (kernel_config.h):
// kSame for rows, weights and output of one dtype, kOther for the rest
// (float32 weights, autocast's float32 output).
template <typename T, typename W, typename O, const auto& kSame, const auto& kOther>
constexpr const auto& forward_table_of_dtype_pair() {
  if constexpr (std::is_same_v<W, T> && std::is_same_v<O, T> && sizeof(T) == 2) {
    return kSame;
  } else {
    return kOther;
  }
}

// Launches the register kernel of the table entry that holds the rows; false
// when none takes them (a tensor off a 16-byte boundary, rows beyond the
// table, clusters this GPU lacks, more shared memory than a CTA may have):
// the caller then takes another path. The autocast path (O = float) has
// kernels for rows of whole 16-byte chunks only (N a multiple of the
// vector): fewer instantiations to compile.
template <typename T, typename W, typename O>
bool launch_forward_registers(const ForwardArgs& a) {
  constexpr bool kShiftedKernels = std::is_same_v<O, T>;
  const bool shifted = a.cols % (16 / sizeof(T)) != 0;
  if ((shifted && !kShiftedKernels) ||
      !all_aligned16({&a.input, &a.output, &a.weight, &a.bias})) {
    return false;
  }
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  // The shifted rows' kernels always store mean/rstd (forward.cuh: with a
  // null check their registers spilled): a forward that keeps none
  // (run_forward's with_stats) gives them scratch ones.
  ForwardArgs scratch;
  const bool needs_scratch = shifted && !a.stats.defined();
  if (needs_scratch) {
    scratch = a;
    scratch.stats = at::empty({a.rows, 2}, a.input.options().dtype(at::kFloat));
  }
  const auto p = forward_params<T, W, O>(needs_scratch ? scratch : a);
  const int64_t row_bytes = row_capacity_bytes<T>(a.cols);
  const bool clusters_ok = hopper_launch_features();
  if constexpr (kShiftedKernels) {
    // Shifted rows have tables of their own on cards of faster memory (the
    // entries for rows of whole chunks were measured on those only).
    if (shifted) {
      return dispatch_table_by_memory<T, kForwardConfigs16, kForwardConfigs32,
                                      forward_table_of_dtype_pair<
                                          T, W, O, kForwardShiftedConfigs16SameWeightFastMemory,
                                          kForwardShiftedConfigs16FastMemory>(),
                                      kForwardShiftedConfigs32FastMemory>(
          row_bytes, clusters_ok,
          [&](auto entry) { return launch_forward_entry<T, W, true>(entry, p, stream); });
    }
  }
  auto launch = [&](auto entry) { return launch_forward_entry<T, W, false>(entry, p, stream); };
  return dispatch_table_by_memory<T, kForwardConfigs16, kForwardConfigs32,
                                  forward_table_of_dtype_pair<
                                      T, W, O, kForwardConfigs16SameWeightFastMemory,
                                      kForwardConfigs16FastMemory>(),
                                  kForwardConfigs32FastMemory>(row_bytes, clusters_ok, launch);
}

template <typename T, typename W>
void launch_forward(const ForwardArgs& a) {
  using A = acc_type_t<T>;
  check_row_fits_int(a.cols);
  if constexpr (!std::is_same_v<T, double>) {
    if (launch_forward_registers<T, W, T>(a)) return;
  }
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t grid = std::min<int64_t>(
      a.rows, 8 * at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  ln_fwd_fallback_kernel<T, W, A><<<static_cast<unsigned>(grid), kFallbackThreads, 0, stream>>>(
      a.input.const_data_ptr<T>(), ptr_or_null<W>(a.weight), ptr_or_null<W>(a.bias),
      a.output.mutable_data_ptr<T>(), mutable_ptr_or_null<A>(a.stats), a.rows, a.cols,
      static_cast<A>(a.eps));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Autocast's float32 path for half/bfloat16 input with float32 (or no)
// weight/bias: the row is read in its own dtype and written as float32, so
// the input is not widened by a separate pass. False when no register kernel
// takes the rows: the caller then widens the input instead.
template <typename T>
bool launch_forward_upcast(const ForwardArgs& a) {
  return launch_forward_registers<T, float, float>(a);
}

// ---- backward --------------------------------------------------------------

// Launches ln_dwdb_finalize_kernel over `parts` partial rows of `cols`
// columns, finalize_slices() slices per CTA: 16-byte loads (VEC = 4) for
// rows of at least kFinalizeWideMinCols columns, a multiple of 4. On Hopper
// as a programmatic dependent launch: its launch overlaps the end of the
// backward kernel before it (whose CTAs allow it once past their rows), and
// its CTAs wait for that kernel in the kernel (wait_for_prior_grid) instead
// of in the stream; elsewhere an ordinary launch (the wait is then a no-op).
template <typename W, int VEC>
void launch_dwdb_finalize_vec(const float* part_dw, const float* part_db, int64_t parts, int cols,
                              W* dw, W* db, cudaStream_t stream) {
  const int slices = finalize_slices<VEC>(parts);
  LaunchConfig launch(dim3(static_cast<unsigned>(ceil_div(cols, kFinalizeCols * VEC))),
                      dim3(kFinalizeCols, slices), finalize_smem_bytes<VEC>(slices), stream);
  if (hopper_launch_features()) launch.set_programmatic_serialization();
  C10_CUDA_CHECK(cudaLaunchKernelEx(&launch.config, ln_dwdb_finalize_kernel<W, VEC>, part_dw,
                                    part_db, parts, cols, dw, db));
}

template <typename W>
void launch_dwdb_finalize(const float* part_dw, const float* part_db, int64_t parts, int cols,
                          W* dw, W* db, cudaStream_t stream) {
  if (cols % 4 == 0 && cols >= kFinalizeWideMinCols) {
    launch_dwdb_finalize_vec<W, 4>(part_dw, part_db, parts, cols, dw, db, stream);
  } else {
    launch_dwdb_finalize_vec<W, 1>(part_dw, part_db, parts, cols, dw, db, stream);
  }
}

// The backward kernel's grid of `resident` CTA groups at most (in whole
// hardware clusters), then the dweight/dbias finalize over its partial rows
// (launch_backward_entry).
// `c`: the entry (shifted_backward_config's for shifted rows), `vec` the
// elements per 16-byte chunk.
template <typename Kernel, typename T, typename W, typename G>
bool launch_backward_kernel(Kernel kernel, const KernelConfig& c, int part_groups, bool shifted,
                            int vec, int64_t resident, size_t smem, BackwardParams<T, W, G> p,
                            const at::TensorOptions& float_options, W* dw, W* db,
                            cudaStream_t stream) {
  const int hw_cluster = c.cluster * part_groups;  // CTAs of a hardware cluster
  int64_t groups =
      part_groups * std::min(ceil_div(ceil_div(p.rows, c.rows), part_groups), resident);
  // A CTA keeps fixed columns (weight, accumulators) across its rows.
  if (shifted) {
    groups = shift_uniform_groups(groups, std::max(vec, part_groups), /*persistent=*/true);
  }
  // One fp32 partial row of dweight and of dbias per hardware cluster.
  const int64_t hw_clusters = groups / part_groups;
  at::Tensor partials;
  const bool want_params = dw != nullptr || db != nullptr;
  if (want_params) {
    partials = at::empty({2, hw_clusters, p.cols}, float_options);
    p.part_dw = partials.mutable_data_ptr<float>();
    p.part_db = p.part_dw + hw_clusters * p.cols;
  }
  launch_kernel(kernel, hw_clusters, cta_threads(c), hw_cluster, smem, p, stream);
  if (want_params) launch_dwdb_finalize(p.part_dw, p.part_db, hw_clusters, p.cols, dw, db, stream);
  return true;
}

// Launches the backward kernel of `Entry`, then the dweight/dbias finalize
// kernel over its partial rows.
template <typename T, typename W, bool kFromOutput, bool kShifted, typename Entry, typename G>
bool launch_backward_entry(Entry, BackwardParams<T, W, G> p, const at::TensorOptions& float_options,
                           W* dw, W* db, cudaStream_t stream) {
  constexpr KernelConfig c =
      kShifted ? shifted_backward_config(Entry::config, sizeof(T)) : Entry::config;
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kItems = c.bytes_per_thread / 16;
  static_assert(c.tpr * c.cluster * c.bytes_per_thread >= c.max_row_bytes,
                "a table entry must hold its largest row");
  static_assert(c.persistent && !c.row_in_smem,
                "the backward keeps one partial row per CTA: persistent, rows in registers");
  // Partial groups add the accumulators of equal threads of their CTAs,
  // which must hold the same columns: not for shifted rows, whose columns
  // follow each CTA group's shift.
  constexpr int kPartGroups = kShifted ? 1 : c.part_groups;
  constexpr int kHwCluster = c.cluster * kPartGroups;  // CTAs of a hardware cluster
  // Weight in shared memory: a prefetching kernel's option (its shifted and
  // staged variants do not prefetch), where it fits beside the accumulators
  // (float32 weight and bias of the memory-saving kernels may not: those
  // keep them in registers).
  constexpr bool kParamsSmem =
      c.weight_in_smem && backward_prefetches(c.prefetch_row, c.stages, kShifted) &&
      backward_smem_bytes<T, G, W, kItems, cta_threads(c), c.stages, c.acc_in_smem, true,
                          kFromOutput>() <= kMaxSharedMemoryPerCta;
  constexpr int kMinCtas = min_ctas_per_sm(c, kBackwardMinThreadsPerSm);
  constexpr size_t kSmem = backward_smem_bytes<T, G, W, kItems, cta_threads(c), c.stages,
                                               c.acc_in_smem, kParamsSmem, kFromOutput>();
  // Rows that fill the mapping exactly also prefetch rows into L2 where the
  // entry says so (KernelConfig::l2_rows_ahead), on a kernel that loads its
  // next row ahead (not staged or shifted rows).
  static_assert(c.l2_rows_ahead == 0 || c.prefetch_row, "l2_rows_ahead is prefetch_row's option");
  constexpr int kL2Ahead =
      backward_prefetches(c.prefetch_row, c.stages, kShifted) ? c.l2_rows_ahead : 0;
  if constexpr (kL2Ahead > 0) {
    if (fills_mapping(c, p.cols, sizeof(T))) {
      static ResidencyCache ahead_cache{};
      auto ahead = ln_bwd_kernel<T, W, G, kVec, kItems, c.tpr, c.rows, c.cluster, kPartGroups,
                                 kMinCtas, c.stages, c.acc_in_smem, kFromOutput, kShifted,
                                 c.prefetch_row, kParamsSmem, kL2Ahead>;
      const int64_t resident =
          resident_groups(ahead, cta_threads(c), kHwCluster, kSmem, ahead_cache);
      if (resident > 0) {
        return launch_backward_kernel(ahead, c, kPartGroups, kShifted, kVec, resident, kSmem, p,
                                      float_options, dw, db, stream);
      }
    }
  }
  auto kernel = ln_bwd_kernel<T, W, G, kVec, kItems, c.tpr, c.rows, c.cluster, kPartGroups,
                              kMinCtas, c.stages, c.acc_in_smem, kFromOutput, kShifted,
                              c.prefetch_row, kParamsSmem>;
  static ResidencyCache cache{};
  // CTA groups: as many as are resident, in whole hardware clusters.
  const int64_t resident = resident_groups(kernel, cta_threads(c), kHwCluster, kSmem, cache);
  if (resident == 0) return false;
  return launch_backward_kernel(kernel, c, kPartGroups, kShifted, kVec, resident, kSmem, p,
                                float_options, dw, db, stream);
}

// The fast-memory 16-bit backward table of a dtype pair (kernel_config.h):
// bf16 rows and weights; other 16-bit rows with weights and dy of their
// dtype; the rest (float32 weights, autocast's float32 dy).
template <typename T, typename W, typename G>
constexpr const auto& backward_configs16_fast_memory() {
  constexpr bool kSameDtypes = std::is_same_v<W, T> && std::is_same_v<G, T>;
  if constexpr (kSameDtypes && std::is_same_v<T, c10::BFloat16>) {
    return kBackwardConfigsBF16FastMemory;
  } else if constexpr (kSameDtypes && sizeof(T) == 2) {
    return kBackwardConfigs16SameWeightFastMemory;
  } else {
    return kBackwardConfigs16FastMemory;
  }
}

// The few-row backward (backward_few_rows.cuh) with ITEMS chunks per thread;
// false for more rows than its warps hold.
template <typename T, typename W, typename G, int ITEMS, bool kFromOutput>
bool launch_backward_few_rows_items(const BackwardParams<T, W, G>& p, W* dw, W* db,
                                    cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kRowsPerWarp = few_rows_per_warp<T, W, G, ITEMS, kFromOutput>();
  static_assert(kRowsPerWarp >= 1, "a warp holds at least one row");
  if (p.rows > kFewRowsWarps * kRowsPerWarp) return false;
  auto kernel = ln_bwd_few_rows_kernel<T, W, G, ITEMS, kRowsPerWarp, kFromOutput>;
  static ResidencyCache cache{};
  if (resident_groups(kernel, kFewRowsThreads, kFewRowsCluster,
                      few_rows_smem_bytes<ITEMS, kVec>(kFewRowsWarps), cache) == 0) {
    return false;
  }
  // dweight/dbias slots for the warps that hold rows.
  const int warps = static_cast<int>(std::min<int64_t>(p.rows, kFewRowsWarps));
  const size_t smem = (dw != nullptr || db != nullptr) ? few_rows_smem_bytes<ITEMS, kVec>(warps) : 0;
  LaunchConfig launch(dim3(kFewRowsCluster), dim3(kFewRowsThreads), smem, stream);
  launch.set_cluster(kFewRowsCluster);
  C10_CUDA_CHECK(cudaLaunchKernelEx(&launch.config, kernel, p, dw, db));
  return true;
}

// The whole backward of a few rows of whole 16-byte chunks in one kernel:
// rows of up to 4 chunks per thread of the cluster (16-bit N <= 8192, float32
// 4096), as many as its warps hold (few_rows_per_warp: up to 32). False
// otherwise: the caller takes the tables.
template <typename T, typename W, typename G>
bool launch_backward_few_rows(const BackwardArgs& a, const BackwardParams<T, W, G>& p, W* dw,
                              W* db, cudaStream_t stream) {
  constexpr int64_t kVec = 16 / sizeof(T);
  const int64_t items = ceil_div(a.cols, kVec * kFewRowsRowThreads);
  if (items > 4) return false;
  auto run = [&](auto from_output) {
    constexpr bool kFromOutput = decltype(from_output)::value;
    switch (items) {
      case 1:
        return launch_backward_few_rows_items<T, W, G, 1, kFromOutput>(p, dw, db, stream);
      case 2:
        return launch_backward_few_rows_items<T, W, G, 2, kFromOutput>(p, dw, db, stream);
      default:  // 3 or 4 chunks
        return launch_backward_few_rows_items<T, W, G, 4, kFromOutput>(p, dw, db, stream);
    }
  };
  if constexpr (std::is_same_v<G, T>) {
    if (a.from_output) return run(std::true_type{});
  }
  return run(std::false_type{});
}

// As launch_forward_registers. The memory-saving mode (rebuild from the
// output) has register kernels for rows of whole 16-byte chunks; the
// autocast path (G = float) neither shifted rows nor the memory-saving mode.
template <typename T, typename W, typename G>
bool launch_backward_registers(const BackwardArgs& a) {
  constexpr bool kAllVariants = std::is_same_v<G, T>;
  const bool shifted = a.cols % (16 / sizeof(T)) != 0;
  const bool has_kernel = kAllVariants ? !(shifted && a.from_output) : !(shifted || a.from_output);
  if (!has_kernel ||
      !all_aligned16({&a.grad_out, &a.input, &a.grad_input, &a.weight, &a.bias})) {
    return false;
  }
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const auto p = backward_params<T, W, G>(a);
  const auto float_options = a.input.options().dtype(at::kFloat);
  W* dw = mutable_ptr_or_null<W>(a.grad_weight);
  W* db = mutable_ptr_or_null<W>(a.grad_bias);
  const int64_t row_bytes = row_capacity_bytes<T>(a.cols);
  const bool clusters_ok = hopper_launch_features();
  if (!shifted && clusters_ok && launch_backward_few_rows<T, W, G>(a, p, dw, db, stream)) {
    return true;
  }
  if constexpr (kAllVariants) {
    // The memory-saving kernels take the H100 tables on every card: the
    // fast-memory entries were measured on the regular backward (and some of
    // their memory-saving twins spill: ptxas 36-208 bytes). Shifted rows have
    // tables of their own on cards of faster memory.
    if (a.from_output) {
      return dispatch_table_for<T, kBackwardConfigs16, kBackwardConfigs32>(
          row_bytes, clusters_ok, [&](auto entry) {
            return launch_backward_entry<T, W, true, false>(entry, p, float_options, dw, db,
                                                            stream);
          });
    }
    if (shifted) {
      return dispatch_table_by_memory<T, kBackwardConfigs16, kBackwardConfigs32,
                                      kBackwardShiftedConfigs16FastMemory,
                                      kBackwardShiftedConfigs32FastMemory>(
          row_bytes, clusters_ok, [&](auto entry) {
            return launch_backward_entry<T, W, false, true>(entry, p, float_options, dw, db,
                                                            stream);
          });
    }
  }
  auto launch = [&](auto entry) {
    return launch_backward_entry<T, W, false, false>(entry, p, float_options, dw, db, stream);
  };
  return dispatch_table_by_memory<T, kBackwardConfigs16, kBackwardConfigs32,
                                  backward_configs16_fast_memory<T, W, G>(),
                                  kBackwardConfigs32FastMemory>(row_bytes, clusters_ok, launch);
}

template <typename T, typename W>
void launch_backward(const BackwardArgs& a) {
  using A = acc_type_t<T>;
  check_row_fits_int(a.cols);
  if constexpr (!std::is_same_v<T, double>) {
    if (launch_backward_registers<T, W, T>(a)) return;
  }
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  W* dw = mutable_ptr_or_null<W>(a.grad_weight);
  W* db = mutable_ptr_or_null<W>(a.grad_bias);
  const A* stats = a.stats.const_data_ptr<A>();
  const W* w = ptr_or_null<W>(a.weight);
  const W* b = ptr_or_null<W>(a.bias);
  if (a.grad_input.defined()) {
    const int64_t grid = std::min<int64_t>(
        a.rows, 8 * at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
    ln_bwd_dx_fallback_kernel<T, W, A><<<static_cast<unsigned>(grid), kFallbackThreads, 0, stream>>>(
        a.grad_out.const_data_ptr<T>(), a.input.const_data_ptr<T>(), stats, a.from_output,
        w, b, a.grad_input.mutable_data_ptr<T>(), a.rows, a.cols);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (dw != nullptr || db != nullptr) {
    const dim3 block(kColumnTile, kRowSlices);
    ln_dwdb_fallback_kernel<T, W, A><<<static_cast<unsigned>(ceil_div(a.cols, kColumnTile)), block, 0, stream>>>(
        a.grad_out.const_data_ptr<T>(), a.input.const_data_ptr<T>(), stats, a.from_output,
        w, b, dw, db, a.rows, a.cols);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// The backward of launch_forward_upcast: float32 dy, x and dx in T, float32
// (or no) weight. False as there: the caller then widens the input.
template <typename T>
bool launch_backward_upcast(const BackwardArgs& a) {
  return launch_backward_registers<T, float, float>(a);
}

}  // namespace fastlayernorm::cuda
