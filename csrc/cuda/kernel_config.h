// The kernel choice per size range, as tables: one row per range of row
// sizes (in bytes of the input dtype), giving the thread mapping. A row is
// held in registers (or, for row_in_smem entries of the forward, in shared
// memory) by `tpr` threads, `bytes_per_thread` bytes each; a CTA holds `rows`
// such rows at a time, or one row is split over `cluster` CTAs of a
// thread-block cluster (Hopper) when one CTA cannot hold it.
// Rows larger than the last entry go to the fallback kernels (fallback.cuh),
// which stream the row from memory.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <iterator>

namespace fastlayernorm::cuda {

struct KernelConfig {
  int64_t max_row_bytes;  // rows up to this size use this entry
  int tpr;                // threads per row (a power of two up to 32, else a multiple of 32)
  int bytes_per_thread;   // input bytes each thread holds (multiple of 16)
  int rows;               // rows per CTA (tpr * rows threads)
  int cluster;            // CTAs per row (1: no cluster; then rows may be > 1); up to 16
  int stages;             // rows ahead staged in shared memory (cp.async); 0: none
  // Resident threads per SM the kernel is compiled for (caps registers at
  // 65536 / min_threads); 0: the direction's default below.
  int min_threads = 0;
  // Forward only: true launches as many CTAs as are resident at once, each
  // looping over rows; false compiles a one-pass kernel, one CTA per `rows`
  // consecutive rows, left to the hardware's CTA scheduler (stages must be
  // 0: nothing to stage ahead). The backward is always persistent (one
  // dweight/dbias partial row per CTA).
  bool persistent = true;
  // Backward only: the dweight/dbias accumulators of a thread's columns live
  // in shared memory instead of registers (added to once per row), which
  // frees registers for more resident threads on long rows.
  bool acc_in_smem = false;
  // Forward only: the row is copied into shared memory and read back by each
  // pass (forward_row_in_smem.cuh), one row per CTA (or cluster); `rows` 1.
  // For long rows, of which registers hold only one or two per SM.
  // Persistent: weight and bias held in shared memory, `stages` rows ahead.
  bool row_in_smem = false;
  // Backward only: CTA groups of `cluster` CTAs whose dweight/dbias
  // accumulators (acc_in_smem, rows 1) are added in distributed shared memory
  // before one partial row is written: a hardware cluster of cluster *
  // part_groups CTAs, part_groups times fewer partial rows.
  int part_groups = 1;
  // Forward, one-pass register kernels: the thread's weight/bias chunks
  // requested before its row and stashed in shared memory once the row's
  // loads are issued; false: loaded from L1/L2 after the reductions
  // (params_from_cache). Where the kernel has no choice (shifted rows and the
  // few-register kernels: shared memory; float32 weights with 16-bit rows:
  // loaded in the output loop) it is ignored (forward_params_in_smem).
  bool params_in_smem = true;
  // Backward (rows not staged or shifted): the next row's x, dy, mean and
  // rstd are loaded into registers once the row's partial sums are taken,
  // and are in flight over its reduction, dx and accumulator update
  // (backward.cuh; the accumulators in shared memory, or in registers for
  // 32-byte threads, session 25). Forward (persistent register
  // entries, stages 0): the next row's x, in flight over the row's
  // reductions and output (forward.cuh). Two rows' packs in registers: for
  // mappings with registers to spare (where they spill it loses,
  // docs/kernels.md session 13).
  bool prefetch_row = false;
  // Backward only, with prefetch_row: the thread's weight chunks kept in its
  // own shared-memory slots (read once per row) instead of registers, which
  // leaves the two rows' packs of 64-byte threads room in 128 registers.
  bool weight_in_smem = false;
  // Backward only: the mapping and staging shifted rows (N not a multiple of
  // the vector) take instead of the entry's (shifted_tpr 0: the entry's own),
  // for entries whose aligned rows load their next row ahead, which shifted
  // rows do not do (shifted_backward_config).
  int shifted_tpr = 0;
  int shifted_bytes_per_thread = 0;
  int shifted_cluster = 0;
  int shifted_stages = 0;
  int shifted_min_threads = 0;
  // Forward, register entries of one CTA per row group: rows of exactly the
  // mapping's size (N = tpr * bytes_per_thread / element size) run on a
  // kernel compiled for that N, with no bounds checks (forward.cuh EXACT);
  // false only to time the generic kernel there (benchmarks/tune_kernels.py),
  // or where an exact_rows_only entry before it takes those rows.
  bool exact_rows = true;
  // Forward only: the entry takes only rows of exactly its mapping's size
  // (max_row_bytes = tpr * cluster * bytes_per_thread), on its exact kernel,
  // or for an entry loading its next row ahead (which has none) on its
  // kernel prefetching rows into L2 where it has one (l2_rows_ahead), else
  // its generic kernel; the other rows of its range go on to the next entry,
  // of the same max_row_bytes. For ranges whose exact rows and the rows
  // below them run fastest on different mappings (for_exact_rows_only).
  bool exact_rows_only = false;
  // Forward only, cluster 1, a row within a warp (tpr <= 32): the short-row
  // kernel (forward_short_rows.cuh), whose threads widen their weight/bias
  // columns to floats once and keep them in registers for all their rows;
  // persistent with max(1, stages) rows loading ahead, or one pass. Shifted
  // rows (N not a multiple of the vector) take the entry's mapping on
  // forward.cuh's persistent kernel instead (shifted_forward_config).
  bool params_in_registers = false;
  // With prefetch_row, for rows that fill the mapping exactly (tpr * cluster
  // * bytes_per_thread bytes; the others of the range run the kernel
  // without): each CTA also asks the L2 for its part of the row this many
  // rows ahead of the one it works on (x, and the backward's dy; one bulk
  // prefetch per row, CTA and tensor, prefetch_row_part_to_l2), so more of
  // the rows' bytes are in flight than the registers hold. 0: none. Measured
  // per entry (tune v38, H200): +1-3.7 points at rows that fill some 16-bit
  // mappings, -1 to -6 at the rows of those ranges that do not, and 2-12
  // points lost at most other entries (docs/kernels.md session 31).
  int l2_rows_ahead = 0;
};

// A backward entry whose CTA groups add their partials in clusters of
// `part_groups` (see KernelConfig::part_groups).
constexpr KernelConfig with_part_groups(KernelConfig c, int part_groups) {
  c.part_groups = part_groups;
  return c;
}

// An entry whose CTAs load their next row while they finish this one (see
// KernelConfig::prefetch_row).
constexpr KernelConfig with_prefetch(KernelConfig c) {
  c.prefetch_row = true;
  return c;
}

// A prefetching entry whose CTAs also prefetch into L2 the row `rows_ahead`
// rows ahead, for rows that fill its mapping (see KernelConfig::l2_rows_ahead).
constexpr KernelConfig with_l2_prefetch(KernelConfig c, int rows_ahead = 2) {
  c.l2_rows_ahead = rows_ahead;
  return c;
}

// A prefetching backward entry whose weight chunks live in shared memory
// (see KernelConfig::weight_in_smem).
constexpr KernelConfig with_smem_weight(KernelConfig c) {
  c.weight_in_smem = true;
  return c;
}

// A backward entry whose shifted rows take another mapping and staging (see
// KernelConfig::shifted_tpr).
constexpr KernelConfig with_shifted_mapping(KernelConfig c, int tpr, int bytes_per_thread,
                                            int cluster, int stages, int min_threads) {
  c.shifted_tpr = tpr;
  c.shifted_bytes_per_thread = bytes_per_thread;
  c.shifted_cluster = cluster;
  c.shifted_stages = stages;
  c.shifted_min_threads = min_threads;
  return c;
}

// A backward entry whose shifted rows take its mapping with one row staged
// ahead (its aligned rows load the next row into registers instead).
constexpr KernelConfig with_staged_shifted_rows(KernelConfig c) {
  return with_shifted_mapping(c, c.tpr, c.bytes_per_thread, c.cluster, 1, c.min_threads);
}

// A one-pass forward entry whose weight/bias chunks are loaded from L1/L2
// after the reductions (see KernelConfig::params_in_smem).
constexpr KernelConfig params_from_cache(KernelConfig c) {
  c.params_in_smem = false;
  return c;
}

// A forward entry on the short-row kernel (see
// KernelConfig::params_in_registers); persistent false: one pass, a CTA per
// `rows` rows.
constexpr KernelConfig with_params_in_registers(KernelConfig c, bool persistent = true) {
  c.persistent = persistent;
  c.params_in_registers = true;
  return c;
}

// A forward entry whose exact rows take the generic kernel too (see
// KernelConfig::exact_rows): for timing that kernel there, or for an entry
// whose exact rows an exact_rows_only entry before it takes (its exact twin
// would never run, so it is not compiled).
constexpr KernelConfig without_exact_rows(KernelConfig c) {
  c.exact_rows = false;
  return c;
}

// A forward entry for the rows that fill its mapping exactly, beside an entry
// of the same max_row_bytes for the other rows of the range (see
// KernelConfig::exact_rows_only).
constexpr KernelConfig for_exact_rows_only(KernelConfig c) {
  c.exact_rows_only = true;
  return c;
}

// Forward register kernels that have an exact-row twin (forward.cuh EXACT):
// rows of whole chunks held by one CTA, no next-row pipeline. Their rows are
// exact at N = forward_exact_cols (the mapping's elements).
constexpr bool forward_has_exact_kernel(bool shifted, int cluster, bool prefetch_row) {
  return !shifted && cluster == 1 && !prefetch_row;
}
constexpr int forward_exact_cols(int vec, int items, int tpr) { return vec * items * tpr; }

// A forward entry whose row lives in shared memory: `threads` per CTA,
// `bytes_per_thread` of the row each, `cluster` CTAs per row; one-pass, or
// persistent with `stages` rows loading ahead.
constexpr KernelConfig row_in_smem_entry(int64_t max_row_bytes, int threads,
                                         int bytes_per_thread, int cluster,
                                         bool persistent = false, int stages = 0,
                                         int min_threads = 0) {
  return {max_row_bytes, threads,     bytes_per_thread, 1,     cluster,
          stages,        min_threads, persistent,       false, true};
}

constexpr int cta_threads(const KernelConfig& c) { return c.tpr * c.rows; }
// Whether rows of `cols` elements of `elem_bytes` fill the entry's mapping
// exactly (every chunk of every thread in the row).
constexpr bool fills_mapping(const KernelConfig& c, int64_t cols, int64_t elem_bytes) {
  return cols * elem_bytes == int64_t{c.tpr} * c.cluster * c.bytes_per_thread;
}
// The entry launches thread-block clusters (Hopper): CTAs split a row, or
// (backward) CTA groups add their partials in a cluster.
constexpr bool needs_clusters(const KernelConfig& c) { return c.cluster > 1 || c.part_groups > 1; }

// Persistent CTAs keep at least this many threads per SM resident, which
// caps registers per thread at 65536 / min_threads (64 for the forward, 128
// for the backward, which also holds dy and the dweight/dbias accumulators).
constexpr int kForwardMinThreadsPerSm = 1024;
// Shared memory per SM that CTAs may use (H100, sm_90: 228 KiB, 1 KiB of it
// reserved per CTA); sizes the register budget of the row-in-shared-memory
// kernels.
constexpr size_t kSharedMemoryPerSm = 228 * 1024;
constexpr size_t kMaxSharedMemoryPerCta = 227 * 1024;  // opt-in maximum (sm_90)
constexpr int kBackwardMinThreadsPerSm = 512;
constexpr int min_ctas_per_sm(const KernelConfig& c, int default_min_threads) {
  const int min_threads = c.min_threads > 0 ? c.min_threads : default_min_threads;
  return cta_threads(c) >= min_threads ? 1 : min_threads / cta_threads(c);
}

// Shifted rows (N not a multiple of the vector: rows off 16-byte boundaries,
// device_utils.cuh) run their entry's mapping with these changes. Their
// CTAs gather the weight and bias chunks once (shifted against the
// vectors) and keep one shift for all their rows, so the forward runs them
// on a persistent grid (a one-pass grid gathers once per CTA, i.e. per row
// or two); 16-bit rows of one-pass entries with one row staged ahead at 512
// resident threads per SM, single-CTA rows in shared memory as register
// kernels the same way (tune v14b: bf16 N=767 51 -> 72% of copy, 1535
// 65 -> 77, 3071 66 -> 80, 6143 62 -> 80, 12287 57 -> 76); rows split over
// clusters keep their one-pass row-in-shared-memory kernel. The 16-bit
// backward stages a row ahead (6143 59 -> 65, 12287 50 -> 56; two rows
// ahead lost from 5001 up). Entries with a shifted mapping
// (with_shifted_mapping, with_staged_shifted_rows) run shifted rows on it.
constexpr KernelConfig shifted_forward_config(KernelConfig c, int elem_bytes) {
  c.params_in_registers = false;  // gathered shifted, into shared memory
  if ((c.persistent && !c.row_in_smem) || (c.row_in_smem && c.cluster > 1)) return c;
  c.persistent = true;
  c.row_in_smem = false;
  if (elem_bytes == 2) {
    c.stages = 1;
    c.min_threads = 512;
  }
  return c;
}
constexpr KernelConfig shifted_backward_config(KernelConfig c, int elem_bytes) {
  if (c.shifted_tpr > 0) {
    c.tpr = c.shifted_tpr;
    c.bytes_per_thread = c.shifted_bytes_per_thread;
    c.cluster = c.shifted_cluster;
    c.stages = c.shifted_stages;
    c.min_threads = c.shifted_min_threads;
  }
  if (elem_bytes == 2 && c.stages < 1) c.stages = 1;
  return c;
}

// Entry I of a table, as a type (the launchers take their entry as a
// template argument).
template <const auto& kTable, size_t I>
struct TableEntry {
  static constexpr KernelConfig config = kTable[I];
};

// The entries below were chosen from measurements on an H100
// (benchmarks/tune_kernels.py; results in benchmarks/results/tune-*.json,
// notes in docs/kernels.md). 16-bit and 32-bit inputs have their own tables:
// at the same row bytes a 16-bit row has twice the elements, so twice the
// arithmetic per byte moved, and prefers staged rows (cp.async).
// Fields: {max_row_bytes, tpr, bytes_per_thread, rows, cluster, stages,
//          min_threads, persistent, acc_in_smem}; with_part_groups() sets the
//          backward's part_groups, params_from_cache() the forward's
//          params_in_smem (false).
constexpr bool kGrid = false;  // persistent = false: one CTA per `rows` rows
constexpr bool kAccSmem = true;

// Forward: the row is widened to floats in registers. Rows that fit one CTA
// measured fastest on one-pass grids (kGrid: one CTA per `rows` rows,
// loaded straight into registers), some on persistent grids with one row
// staged ahead; rows split over clusters, and 32 KiB 16-bit rows, with the
// row in shared memory (row_in_smem_entry: more bytes in flight per SM than
// registers hold). One-pass entries stash weight/bias in shared memory
// after requesting them with the row, unless marked params_from_cache
// (loaded from L1/L2 after the reductions; forward.cuh).
inline constexpr KernelConfig kForwardConfigs16[] = {
    {16, 1, 16, 128, 1, 1},
    {32, 2, 16, 64, 1, 1},
    {64, 4, 16, 32, 1, 1},
    {128, 8, 16, 16, 1, 1},
    // Weight/bias from L1/L2 (tune v15: N=128 91.2% of copy, 256 91.1;
    // stashed 88.7 / 88.2; 4 x 64 B at 64 registers, stashed: 89.8).
    params_from_cache({256, 4, 64, 32, 1, 0, 512, kGrid}),
    params_from_cache({512, 8, 64, 16, 1, 0, 512, kGrid}),
    {1024, 32, 32, 4, 1, 0, 0, kGrid},
    // 48 bytes per thread where a power-of-two mapping would leave a
    // quarter of the threads without columns (tune v13: N=768 89.8%, 3072
    // 93.7; on 64-byte threads 88.8, 88.6). At 64 registers per thread
    // (default minimum threads) with 32 or more elements per thread: the
    // few-register kernels (serial sums), weight/bias stashed in shared
    // memory; 1024 resident threads per SM hide the reductions (tune v15:
    // N=1024 91.3 -> 92.5, 1536 92.8 -> 93.5, 2048 89.5 -> 92.6, 4096
    // 90.5 -> 92.5, 5120 88.9 -> 92.4, 6144 88.6 -> 92.3, 8192 89.0 -> 92.6).
    {1536, 32, 48, 8, 1, 0, 0, kGrid},
    {2048, 32, 64, 8, 1, 0, 0, kGrid},
    {3072, 64, 48, 2, 1, 0, 0, kGrid},
    // N = 1537-2048 (1600: 88.4%) rather than N=2048 alone (93.8% with
    // 128 x 32 B at 1536 threads per SM, 1600 there 87.6): the entry
    // serves the whole range.
    {4096, 64, 64, 2, 1, 0, 0, kGrid},
    // Weight/bias from L1/L2 (tune v15: 93.3% against 92.0 stashed).
    params_from_cache({6144, 128, 48, 1, 1, 0, 512, kGrid}),
    {8192, 128, 64, 1, 1, 0, 0, kGrid},
    // Shifted rows of N = 4097-4608 (4099: 82.7% here, 67% on the next entry's grid).
    {9216, 288, 32, 1, 1, 1},
    {10240, 160, 64, 1, 1, 0, 0, kGrid},
    // (Rows in shared memory before v15: N=6144 88.6%, 8192 89.0.)
    {12288, 192, 64, 1, 1, 0, 0, kGrid},
    {16384, 256, 64, 1, 1, 0, 0, kGrid},
    // tune v15: N=12288 89.4% (stashed 84.8; 384 x 64 B at 56 registers
    // 81.0, 768 x 32 B 82.7).
    params_from_cache({24576, 384, 64, 1, 1, 0, 0, kGrid}),
    // From 24 KiB: rows split over clusters of 128-512-thread CTAs (512
    // threads per SM, 128 registers), each loading its part of the next row
    // while it finishes this one, the CTAs' statistics merged in one
    // mbarrier exchange (tune v24, bf16 / fp16 % of copy: N=16384 88.9 /
    // 89.2, 32768 88.2 / 89.5, 65536 87.8 / 87.6, 131072 86.3 / 87.1, 262144
    // 83.4 / 82.8; the entries before them, the row in shared memory or
    // staged: 87.0 / 87.8, 82.1 / 82.0, 72.4 / 76.6, 75.5 / 77.0, 71.0 /
    // 71.8; bf16 with float32 weights N=32768-262144: 87.0, 86.4, 82.6,
    // 73.9 against 71.9, 70.2, 67.7, 61.8). Clusters of 8 where one of 16
    // was not faster (N=131072: 256 x 64 B x 16 86.5 / 86.7); 512 KiB rows
    // take 16 (Hopper's non-portable size: where it does not fit, the
    // fallback kernel).
    with_prefetch({32768, 128, 64, 1, 4, 0, 512}),
    with_prefetch({65536, 128, 64, 1, 8, 0, 512}),
    with_prefetch({131072, 256, 64, 1, 8, 0, 512}),
    with_prefetch({262144, 512, 64, 1, 8, 0, 512}),
    with_prefetch({524288, 512, 64, 1, 16, 0, 512}),
    // 1 MiB rows: a cluster of 16 CTAs (Hopper's largest, opted into by
    // resident_groups) of 512 threads, 64 KiB of the row each (tune v17:
    // N=524288 63.5% of copy; 8 CTAs of 1024 threads, one per SM, 58.5).
    row_in_smem_entry(1048576, 512, 128, 16),
};
inline constexpr KernelConfig kForwardConfigs32[] = {
    {16, 1, 16, 128, 1, 1},
    {32, 2, 16, 64, 1, 1},
    {64, 4, 16, 32, 1, 1},
    {128, 8, 16, 16, 1, 1},
    {256, 16, 16, 8, 1, 1},
    // One-pass, weight/bias stashed (tune v15: N=128 91.9% of copy; the
    // persistent 16 x 32 B entry before it 84.6, torch.compile 93.5;
    // shifted rows here, e.g. N=101: 70.4, before 53.0).
    {512, 32, 16, 8, 1, 0, 0, kGrid},
    {1024, 64, 16, 2, 1, 0, 1536, kGrid},
    // Weight/bias from L1/L2 here and in the entries so marked below (tune
    // v15, against stashed: N=512 93.6% / 92.5, 6144 92.3 / 90.0, 12288
    // 87.0 / 83.7, 16384 90.7 / 89.3); stashed elsewhere (5120 89.3 ->
    // 93.2, 4096 93.0 -> 93.6, 768-1024 +0.5).
    params_from_cache({2048, 64, 32, 2, 1, 0, 1536, kGrid}),
    {4096, 64, 64, 4, 1, 0, 0, kGrid},
    {8192, 128, 64, 1, 1, 0, 512, kGrid},
    // Entries that fit their largest row exactly: threads left without
    // columns hold no bytes in flight (tune v13: N=3072 89.7% on 256
    // threads, 93.7 on 192; 6144 90.6 on 512, 93.1 on 384).
    {12288, 192, 64, 1, 1, 0, 512, kGrid},
    {16384, 256, 64, 1, 1, 0, 0, kGrid},
    {20480, 320, 64, 1, 1, 0, 512, kGrid},
    params_from_cache({24576, 384, 64, 1, 1, 0, 512, kGrid}),
    // Two CTAs per SM: at up to 128 registers (69 used) one 512-thread CTA
    // per SM ran at 64-74% of copy in the benchmark (the v10 sweep's 93%
    // was taken before a change that raised it from 64 registers).
    {32768, 512, 64, 1, 1, 0, 0, kGrid},
    // 32-44 KiB: one persistent 768-thread CTA per SM, a row staged ahead
    // (tune v13: N=10240 85.6%; on 384 x 128 B one-pass 80.0). (The 48 and
    // 64 KiB rows ran on 128-byte one-pass entries from v13 to v23: N=12288
    // 86.9, 16384 90.9 in tune v13.)
    {45056, 768, 64, 1, 1, 1, 512},
    // From 44 KiB (but the 52 KiB entry), as the 16-bit table's long rows:
    // clusters loading the next row ahead, statistics merged in one exchange
    // (tune v24: N=12288 89.1% against 86.6 on 384 x 128 B one-pass, 16384
    // 89.8 / 88.4 on 512 x 128 B, 32768 88.8 / 82.1, 65536 87.2 (256 x 64
    // B x 16: 88.2) / 80.0, 131072 85.0 / 75.9 on the row in shared memory).
    with_prefetch({49152, 384, 64, 1, 2, 0, 768}),
    {53248, 1024, 64, 1, 1, 1, 512},
    with_prefetch({65536, 256, 64, 1, 4, 0, 512}),
    with_prefetch({131072, 256, 64, 1, 8, 0, 512}),
    with_prefetch({262144, 512, 64, 1, 8, 0, 512}),
    // 512 KiB rows: 128 bytes per thread, one 512-thread CTA per SM, on
    // clusters of 8 (tune v24c: N=131072 88.5% of copy, 94.5 at 2^28
    // elements; 512 x 64 B x 16 84.6 / 91.8).
    with_prefetch({524288, 512, 128, 1, 8, 0, 512}),
    // As the 16-bit table (tune v17: N=262144 66.7%; 8 x 1024 threads 64.3;
    // the fallback kernel before, in the v15 benchmark, 23.7).
    row_in_smem_entry(1048576, 512, 128, 16),
};

// Backward: x_hat and w*dy of the row are held as floats (64-register
// kernels of 16-bit rows keep x and dy packed and widen them twice), plus
// fp32 dweight/dbias accumulators for the thread's columns (registers, up to
// 128 per thread; or shared memory, which lets two 512-thread CTAs share an
// SM); rows ahead of x and dy wait in shared memory. CTAs of several rows,
// and CTA groups adding their partials in clusters (with_part_groups), keep
// the number of partial rows small.
inline constexpr KernelConfig kBackwardConfigs16[] = {
    {16, 1, 16, 128, 1, 2},
    {32, 2, 16, 64, 1, 2},
    {64, 4, 16, 32, 1, 2},
    {128, 8, 16, 16, 1, 2},
    {256, 16, 16, 8, 1, 2},
    {512, 32, 16, 4, 1, 2},
    {1024, 32, 32, 8, 1, 2},
    // 48 bytes per thread: no thread without columns at N=768 (tune v13:
    // 88.9%; 64 x 32 B, a quarter of the threads idle: 80.0); eight rows per
    // CTA with one staged ahead (tune v16: 90.1; four unstaged 88.7).
    {1536, 32, 48, 8, 1, 1, 512, true, kAccSmem},
    // Unstaged, accumulators in shared memory (tune v12: N=1024 87.0%, 2048
    // 86.5; two staged rows with accumulators in registers 85.0, 84.5).
    {2048, 64, 32, 2, 1, 0, 512, true, kAccSmem},
    {2560, 192, 16, 1, 1, 1, 1024, true, kAccSmem},
    // Four CTAs per SM, two rows staged ahead (tune v16: N=1536 87.2%, 1600
    // 86.1, 1792 89.1; 192 x 16 B at five CTAs per SM 83.9, 80.0 (128 x 32 B),
    // 84.8; but N=1280, 64 threads idle: 81.9 against 83.6).
    {3584, 224, 16, 1, 1, 2, 1024, true, kAccSmem},
    // From here to 24 KiB rows (but the 8 and 9 KiB entries) the next row is
    // loaded while the CTA finishes this one, at 120-168 registers (tune
    // v19, bf16: N=2048 90.1% against 87.6; against the entries before them
    // at 64 registers and 5, 3 and 2 CTAs per SM: N=3072 87.9 / 85.0, fp16
    // 87.6 / 84.5; 5000 87.2 / 83.0, fp16 86.5 / 80.8; 5120 88.9 / 86.2;
    // 6144 88.1 / 85.9, fp16 88.2 / 86.1, float32 weights 87.8 / 85.7; 8192
    // 88.3-88.6 / 83.8; 12288 86.8 / 82.4, float32 weights 86.6 / 82.3). At
    // 128 registers on 64-byte threads (N=4096, 16384-65536) the two rows
    // spill and lose 10-20 points.
    with_prefetch({4096, 128, 32, 1, 1, 0, 512, true, kAccSmem}),
    with_prefetch({6144, 96, 64, 1, 1, 0, 384, true, kAccSmem}),
    // 64 bytes per thread at 128 registers, two rows per CTA, two CTAs per SM
    // (tune v17: N=4096 88.4% of copy; 256 x 32 B, two rows staged, 84.5).
    {8192, 128, 64, 2, 1, 0, 512, true, kAccSmem},
    {9216, 288, 32, 1, 1, 2, 576, true, kAccSmem},
    with_prefetch({10240, 160, 64, 1, 1, 0, 320, true, kAccSmem}),
    with_prefetch({12288, 192, 64, 1, 1, 0, 512, true, kAccSmem}),
    with_prefetch({16384, 512, 32, 1, 1, 0, 512, true, kAccSmem}),
    // Rows from 16 KiB: 64 bytes per thread, 512 threads per SM (one
    // 384-thread CTA at 168 registers up to 24 KiB, prefetching since v19;
    // 128 registers beyond), no cluster up to 32 KiB (tune v17: N=12288 82.1%, 16384
    // 80.0-82.3, 32768 75.6, 65536 72.2, 131072 67.8; the 32-byte entries
    // before them, at 64-85 registers and 768-1024 threads per SM, which keep
    // x and dy packed and widen them twice: 75.9, 73.9, 69.5, 68.4, 59.6).
    // Up to 32 KiB the partials of two CTAs are added in a cluster first
    // (tune v18, bf16: N=12288 82.4-82.7 against 82.0-82.3, 16384 82.4-83.2
    // against 81.6-82.4; groups of four at 12288: 79.4-79.6).
    with_prefetch(with_part_groups({24576, 384, 64, 1, 1, 0, 512, true, kAccSmem}, 2)),
    // From 24 KiB the next row is loaded ahead too, with the weight in shared
    // memory: in registers the two rows spilled at 128 (tune v20, bf16 / fp16
    // / bf16 with float32 weights: N=16384 82.7 / 83.7 / 85.1% against
    // 82.6 / 84.4 / 81.0; 65536 79.4 / 77.2 / 74.2 against 72.2 / 72.5 /
    // 71.3; 262144 63.0 against 53.7-57.7); from 32 KiB on clusters of
    // 256-thread CTAs, two per SM (N=32768 81.0 / 79.4 / 76.0 against 75.8 /
    // 76.0 / 75.4 before, 78.1 / 76.9 / 72.6 on the 512-thread pairs; 131072
    // bf16 / fp16 74.2 / 72.6 against 67.7 / 67.2 staged).
    with_smem_weight(with_prefetch(
        with_part_groups({32768, 512, 64, 1, 1, 0, 512, true, kAccSmem}, 2))),
    with_smem_weight(with_prefetch({65536, 256, 64, 1, 4, 0, 512, true, kAccSmem})),
    with_smem_weight(with_prefetch({131072, 256, 64, 1, 8, 0, 512, true, kAccSmem})),
    with_smem_weight(with_prefetch({262144, 256, 64, 1, 16, 0, 512, true, kAccSmem})),
    // 512 KiB rows: a cluster of 16 (tune v17: N=262144 55.1%; the fallback
    // kernel before, in the v16 benchmark, 21.3).
    with_smem_weight(with_prefetch({524288, 512, 64, 1, 16, 0, 512, true, kAccSmem})),
};
inline constexpr KernelConfig kBackwardConfigs32[] = {
    {16, 1, 16, 128, 1, 1},
    {32, 2, 16, 64, 1, 1},
    {64, 4, 16, 32, 1, 1},
    {128, 8, 16, 16, 1, 1},
    {256, 16, 16, 8, 1, 1},
    {512, 32, 16, 4, 1, 1},
    {1024, 32, 32, 4, 1, 1},
    {2048, 64, 32, 4, 1, 0},
    {4096, 128, 32, 2, 1, 0},
    {7168, 256, 32, 1, 1, 0, 1024, true, kAccSmem},
    // The next row loaded while the CTA finishes this one, two CTAs per SM
    // (tune v19: N=2048 91.8-92.0%; four rows per 1024-thread CTA, tune v16's
    // entry, 90.5-90.7).
    with_prefetch({8192, 256, 32, 1, 1, 0, 512, true, kAccSmem}),
    // Two CTAs per SM, accumulators in shared memory (tune v16: N=3072 91.0%;
    // one CTA of 384 threads with them in registers 77.0).
    {12288, 384, 32, 1, 1, 0, 768, true, kAccSmem},
    {16384, 512, 32, 1, 1, 0, 1024, true, kAccSmem},
    // One CTA of 17 warps per row instead of a cluster of two, for rows just
    // past 16 KiB (tune v16: N=4099 77.6%, 320 x 32 B x 2 CTAs 71.4; but at
    // N=4352, all threads busy, 80.8 against 85.7).
    {16640, 544, 32, 1, 1, 0, 544, true, kAccSmem},
    // Clusters, one row staged ahead, accumulators in shared memory (tune
    // v12: N=5120 87.4%, 6144 88.3, 8192 87.2, 12288 84.4, 16384 86.6, 32768
    // 83.4, 65536 75.7; v11 table 77.3, 79.9, 84.4, 69.4, 81.5, 78.7, 73.6).
    {20480, 320, 32, 1, 2, 1, 1024, true, kAccSmem},
    {24576, 192, 32, 1, 4, 1, 1024, true, kAccSmem},
    // From 24 KiB, 64 bytes per thread at 128 registers (two CTAs per SM up
    // to 128 KiB) loading the next row ahead, weight in shared memory,
    // instead of 32-byte threads at 1024 per SM with a row staged (tune v20:
    // N=8192 88.5% against 87.5, 12288 86.8 against 84.9, 16384 88.0 against
    // 87.5, 32768 87.9 against 85.4, 65536 85.5 against 79.0, 131072 79.4
    // against 68.4). Before (tune v17): 64 bytes per thread from 64 KiB
    // (N=32768 85.3%, 65536 79.3; 32 bytes at 1024 threads per SM 84.3,
    // 78.1), and clusters of 16 for 512 KiB-1 MiB rows (N=131072 68.3,
    // 262144 64.9; the fallback kernel before, in the v16 benchmark, 32.2
    // and 22.5). Shifted rows, which do not load ahead, are staged: on the
    // 32-byte mappings of 24-64 KiB rows they had (v20 benchmark on the
    // 64-byte ones, staged: N=8191 64.4% against 69.0, 12287 70.0 / 73.4,
    // 14335 74.5 / 78.0), on the entry's own mapping beyond (as before v20).
    with_shifted_mapping(
        with_smem_weight(with_prefetch({32768, 256, 64, 1, 2, 0, 512, true, kAccSmem})), 512, 32, 2,
        1, 1024),
    with_shifted_mapping(
        with_smem_weight(with_prefetch({49152, 192, 64, 1, 4, 0, 512, true, kAccSmem})), 192, 32, 8,
        1, 1024),
    with_shifted_mapping(
        with_smem_weight(with_prefetch({65536, 256, 64, 1, 4, 0, 512, true, kAccSmem})), 256, 32, 8,
        1, 1024),
    with_staged_shifted_rows(
        with_smem_weight(with_prefetch({131072, 256, 64, 1, 8, 0, 512, true, kAccSmem}))),
    with_staged_shifted_rows(
        with_smem_weight(with_prefetch({262144, 512, 64, 1, 8, 0, 512, true, kAccSmem}))),
    with_staged_shifted_rows(
        with_smem_weight(with_prefetch({524288, 512, 64, 1, 16, 0, 512, true, kAccSmem}))),
    {1048576, 512, 128, 1, 16, 0, 512, true, kAccSmem},
};

// ---- Cards of faster memory -------------------------------------------------
// The tables above were measured on an H100 (3.35 TB/s). A card of the same
// SMs with much faster memory (H200: 4.8 TB/s) runs the same kernels 5-20
// points further from its copy rate (docs/kernels.md, session 19): it needs
// more bytes in flight per SM, and short rows become bound by instruction
// issue. There other mappings win at some sizes, which lose on the H100 (the
// backward's next row loaded ahead at N=1024-4096: on the H100 1-8 points
// slower). Cards whose memory streams more than kFastMemoryBytesPerSecond
// (launch.cuh: fast_memory_card) take the tables below (the memory-saving
// backward keeps the H100's, launch.cuh; shifted rows have their own, at the
// end): the H100's with these entries merged in
// (merge_entries: the changes of a max_row_bytes replace the entries of it;
// a change of a new max_row_bytes goes before the next larger one, splitting
// its range), some per dtype pair (launch.cuh). Measured on an H200
// (benchmarks/tune_kernels.py, benchmarks/bench_layernorm.py; % of copy).
constexpr double kFastMemoryBytesPerSecond = 4e12;

// Entries of `base` with `changes` merged in by max_row_bytes (both sorted;
// arrays of KernelConfig, or merged tables): the changes of a max_row_bytes
// replace the base's entries of it (an exact_rows_only entry and the entry
// after it, of the same max_row_bytes, replace them together).
template <typename Table>
constexpr bool has_row_bytes(const Table& table, int64_t row_bytes) {
  for (size_t i = 0; i < std::size(table); ++i) {
    if (table[i].max_row_bytes == row_bytes) return true;
  }
  return false;
}
template <typename Base, typename Changes>
constexpr size_t merged_size(const Base& base, const Changes& changes) {
  const size_t n = std::size(base), m = std::size(changes);
  for (size_t j = 1; j < m; ++j) {
    const bool same = changes[j].max_row_bytes == changes[j - 1].max_row_bytes;
    if (changes[j].max_row_bytes < changes[j - 1].max_row_bytes ||
        (same && !changes[j - 1].exact_rows_only)) {
      throw "merge_entries: changes must be sorted by max_row_bytes (equal ones only after an "
            "exact_rows_only entry)";
    }
  }
  size_t size = m;
  for (size_t i = 0; i < n; ++i) {
    if (!has_row_bytes(changes, base[i].max_row_bytes)) ++size;
  }
  return size;
}
template <size_t S, typename Base, typename Changes>
constexpr std::array<KernelConfig, S> merge_entries(const Base& base, const Changes& changes) {
  const size_t n = std::size(base), m = std::size(changes);
  std::array<KernelConfig, S> out{};
  size_t i = 0, j = 0, k = 0;
  while (i < n || j < m) {
    if (i < n && has_row_bytes(changes, base[i].max_row_bytes)) {
      ++i;  // replaced
    } else if (j < m && (i == n || changes[j].max_row_bytes <= base[i].max_row_bytes)) {
      out[k++] = changes[j++];
    } else {
      out[k++] = base[i++];
    }
  }
  return out;
}

// A table whose exact_rows_only entries are each followed by an entry of the
// same max_row_bytes for the range's other rows, and fill their mapping: on
// an exact kernel, or loading their next row ahead (a kernel of whole-chunk
// rows, which the launcher runs for those rows alone).
template <typename Table>
constexpr bool exact_rows_entries_valid(const Table& table) {
  for (size_t i = 0; i < std::size(table); ++i) {
    const KernelConfig& c = table[i];
    if (!c.exact_rows_only) continue;
    const bool exact_kernel =
        c.exact_rows && forward_has_exact_kernel(false, c.cluster, c.prefetch_row);
    if (i + 1 == std::size(table) || table[i + 1].max_row_bytes != c.max_row_bytes ||
        table[i + 1].exact_rows_only || (!exact_kernel && !c.prefetch_row) ||
        int64_t{c.tpr} * c.cluster * c.bytes_per_thread != c.max_row_bytes || c.row_in_smem) {
      return false;
    }
  }
  return true;
}

// The entry of `table` for rows up to `max_row_bytes` (a changes list's copy
// of an H100 entry).
template <typename Table>
constexpr KernelConfig entry_of(const Table& table, int64_t max_row_bytes) {
  for (size_t i = 0; i < std::size(table); ++i) {
    if (table[i].max_row_bytes == max_row_bytes) return table[i];
  }
  throw "entry_of: no entry of that max_row_bytes";
}

// A table of cards of faster memory: kBase with kChanges merged in.
template <const auto& kBase, const auto& kChanges>
constexpr auto merged_table() {
  return merge_entries<merged_size(kBase, kChanges)>(kBase, kChanges);
}

// Forward (tune v25a, H200, rows of exactly the mapping's size, against the
// H100 entry's kernel in the same process): bf16 N=128 87.1% of copy
// (83.5), N=512 88.3 (84.4); float32 N=256 89.8 (84.1), N=8192 85.1 (80.8).
// On the H100 these mappings measured 1-8 points below its entries (v10-v16).
// 16-bit N=33-64: one-pass CTAs of 32 rows, 4 x 32 B each, at 1536 threads
// per SM, weight/bias from L1/L2 (tune v28, N=64: bf16 87.4%, fp16 88.5,
// bf16 with float32 weights 87.2 against 68.4 on the H100 entry).
// 16-bit N = 8193-12288 (and float32 N = 5121-6144 below): clusters of
// CTAs loading their next row ahead, as the longer rows' entries (benchmark
// v29 against v28: bf16 / fp16 N=12288 81.0 / 81.6% of copy on 4 x 96 x 64 B
// against 72.2 / 73.8 on the H100 entry's one-pass 384 x 64 B, bf16 with
// float32 weights 77.2 / 70.8, bf16 N=8200 / 10000 67.4 / 73.9 against
// 54.9 / 61.7; float32 N=6144 84.8 on 2 x 192 x 64 B against 79.6).
// 16-bit N = 2049-3072 on the H100 entry's one-pass 128 x 48 B at 1024
// threads per SM instead of 512 (64 registers, no spill), and N = 4097-6144
// on the H100 entries' kernels for any N also where a row fills the mapping
// (tune v33, `tune-h200-v33-fwd*`, two passes; the entries before in the
// same process in brackets): bf16 / fp16 / bf16 with float32 weights N=3072
// 87.7 / 87.9 / 84.9 (86.3 / 86.1 / 79.7), 2944 87.2 / 87.6 / 83.2 (79.0 /
// 79.4 / 78.4); N=5120 87.5 / 88.8 / 84.3 (78.0 / 79.9 / 82.1), 6144 87.0 /
// 88.7 / 83.2 (77.6 / 79.3 / 80.3). The exact kernels of 160 / 192 x 64 B
// spill 24 bytes at their 64 registers where the branch-free kernels for
// any N do not; at one CTA per SM more (800 / 768 threads, no spill) they
// measured 77.0 / 74.9 (bf16), so the spill is not all of it. Mappings
// loading their next row ahead came second (bf16 5120 85.0, 6144 84.1).
// 16-bit N = 129-256: the H100 entry's 8 x 64 B threads at 1024 threads per
// SM (64 registers) in CTAs of 8 rows, instead of 512 per SM in CTAs of 16
// (tune v34e, `tune-h200-v34e-*`, the entry in the same process in
// brackets): bf16 with float32 weights N=160 / 200 / 256 79.4 / 81.3 / 85.4
// (64.8 / 68.7 / 76.6), two passes; bf16 75.2 / 81.4 / 87.5 (60.8 / 66.3 /
// 83.9).
// 512 KiB rows (N = 262144): 128-byte threads, one 256-thread CTA per SM,
// on clusters of 16 (tune v34, `tune-h200-v34-long-*`, the H100 entry's 512
// x 64 B x 16 in the same process in brackets): bf16 65.9 (63.1), fp16 67.5
// (63.7), bf16 with float32 weights 56.6 (52.9). On the H200 only 7 clusters
// of 16 are resident (112 of 132 SMs; of 8: 15, of 4: 30, at one CTA per SM,
// `cluster-residency-probe-h200-v34.txt`), and no mapping of the sweep
// (clusters of 4-16, 32-128-byte threads, rows in shared memory) beat the
// 24-256 KiB entries by more than a point.
// 16-bit rows of N = 768 with float32 weights (and autocast's float32
// output): the short-row kernel (forward_short_rows.cuh), 32 x 48 B threads
// in CTAs of 4 rows, three per SM, two rows ahead (tune v36b, bf16 with
// float32 weights, `tune-h200-v36b-short-*`, two passes: 86.1 / 85.9% of
// copy against 83.5 / 83.6 on the H100 entry's exact kernel in the same
// process).
inline constexpr KernelConfig kForwardChanges16FastMemory[] = {
    params_from_cache({128, 4, 32, 32, 1, 0, 1536, kGrid}),
    {256, 8, 32, 16, 1, 0, 1536, kGrid},
    params_from_cache({512, 8, 64, 8, 1, 0, 1024, kGrid}),
    params_from_cache({1024, 16, 64, 8, 1, 0, 1024, kGrid}),
    for_exact_rows_only(with_params_in_registers({1536, 32, 48, 4, 1, 2, 384})),
    entry_of(kForwardConfigs16, 1536),
    params_from_cache({6144, 128, 48, 1, 1, 0, 1024, kGrid}),
    without_exact_rows(entry_of(kForwardConfigs16, 10240)),
    without_exact_rows(entry_of(kForwardConfigs16, 12288)),
    with_prefetch({24576, 96, 64, 1, 4, 0, 512}),
    with_prefetch({524288, 256, 128, 1, 16, 0, 256}),
};
inline constexpr auto kForwardConfigs16FastMemory =
    merged_table<kForwardConfigs16, kForwardChanges16FastMemory>();
// 16-bit rows with weights of their own dtype (bf16 / fp16; launch.cuh picks
// by the dtypes): N = 1537-2047 on a persistent grid of the H100 entry's
// 64 x 64 B threads, two rows per CTA, weight/bias gathered once per CTA
// (tune v28, bf16 N=1600: 79.6% of copy; the benchmark 69.6 on the H100
// entry's one-pass grid); N=2048 keeps that entry's exact kernel (89.6).
// N = 768 and 8192 on the kernels for any N of their entries rather than the
// exact ones (tune v33 / v34, two passes, `tune-h200-v34-exact16`: bf16 768
// 86.2 against 85.6, 8192 87.3 / 85.9; fp16 87.1 / 86.7, 88.9 / 87.8; with
// float32 weights the exact kernels stay ahead: 84.0 / 83.0, 83.5 / 81.1).
// Since v36 rows of exactly N = 768 take the short-row kernel, one pass (a CTA per 4
// rows of 32 x 48 B threads, 1024 threads per SM; tune v36c,
// `tune-h200-v36c-*`, two passes: bf16 88.5 / 88.4% of copy against 86.7 /
// 86.3 on the kernel for any N in the same process, fp16 86.9 / 87.6
// against 86.9 / 86.3; v36d's two passes 88.0 / 87.9 for bf16).
// Rows that fill the 24, 32 and 64 KiB entries' mappings (N = 12288, 16384,
// 32768) also prefetch the row two ahead into L2 (with_l2_prefetch; tune
// v38c, `tune-h200-v38c-*`, two passes, the same kernel without in
// brackets): bf16 N = 12288 81.9 / 82.0 (81.1 / 80.4), 16384 84.6 / 84.0
// (81.6 / 82.1), 32768 83.5 / 82.3 (81.1 / 80.8); fp16 81.1 / 81.1 (80.3 /
// 80.2), 83.4 / 82.5 (82.7 / 82.6), 84.8 / 84.4 (81.3 / 81.1). The other
// rows of those ranges lost 0.5-3.5 points with it (N = 9216, 10240, 13312,
// 20480, 24576; 14336 gained 0.6-1.5) and run without; with float32
// weights it lost 0.5-2 at the full rows too. The 32 KiB rows (N =
// 12289-16384) on one 512 x 64 B CTA per row instead of clusters of four
// 128-thread CTAs (tune v38e / v38g, two passes each, the clusters in
// brackets): with the row two ahead in L2 at N = 16384 bf16 86.4-87.1
// (83.7-84.1), fp16 82.9-84.4 (82.3-83.3); without it at N = 12800 / 13312 /
// 14336 / 15360 bf16 77.1-77.2 / 76.8-77.5 / 78.8-79.1 / 80.8-80.9 (75.9-76.3
// / 75.9-76.0 / 78.9-79.3 / 80.4-81.1), fp16 alike. Rows of exactly N =
// 12288 on clusters of two 192 x 64 B CTAs with the L2 prefetch
// (for_exact_rows_only of an entry loading its next row ahead: the range's
// other rows stay on the 24 KiB entry without it, where that mapping ran
// 77 against 80-81, v38f); tune v39, `tune-h200-v39f-*`, two passes, the
// entry's clusters of four 96-thread CTAs with it in brackets: bf16 85.0 /
// 85.1 (82.2 / 82.2), fp16 84.6 / 85.0 (80.8 / 81.4); one 384 x 64 B CTA
// per row 83.1 / 82.9 and 86.0 / 85.7. The 128 KiB rows (N = 65536) with it
// too: bf16 78.0 / 77.9 (77.4 / 76.7), fp16 78.6 / 78.6 (78.1 / 77.8).
// Measured and not taken (v39f): persistent mappings loading their next
// row and prefetching into L2 at N = 4096 / 5120 / 8192 (bf16 75-84.2
// against the one-pass entries' 87.0-89.0), 6144 (86.5-87.0 / 87.2-87.3),
// and others for N = 32768 / 65536 (67.6-82.7 / 54.2-72.3).
inline constexpr KernelConfig kForwardChanges16SameWeightFastMemory[] = {
    for_exact_rows_only(with_params_in_registers({1536, 32, 48, 4, 1, 0, 1024, kGrid}, false)),
    without_exact_rows(entry_of(kForwardConfigs16, 1536)),
    for_exact_rows_only(entry_of(kForwardConfigs16, 4096)),
    without_exact_rows({4096, 64, 64, 2, 1, 0, 1024}),
    without_exact_rows(entry_of(kForwardConfigs16FastMemory, 16384)),
    for_exact_rows_only(with_l2_prefetch(with_prefetch({24576, 192, 64, 1, 2, 0, 512}))),
    entry_of(kForwardConfigs16FastMemory, 24576),
    with_l2_prefetch(with_prefetch({32768, 512, 64, 1, 1, 0, 512})),
    with_l2_prefetch(entry_of(kForwardConfigs16, 65536)),
    with_l2_prefetch(entry_of(kForwardConfigs16, 131072)),
};
inline constexpr auto kForwardConfigs16SameWeightFastMemory =
    merged_table<kForwardConfigs16FastMemory, kForwardChanges16SameWeightFastMemory>();
// float32: N = 513-1023 on two-row CTAs of 64 x 64 B and N = 1025-2047 on
// 128 x 64 B, both at 1024 threads per SM with weight/bias from L1/L2 (tune
// v26 fwd-sweep-fp32: N=768 88.8% of copy, 1536 88.5; benchmark v26b: 768
// 89.9 against 79.0, 1000 87.5 / 85.3, 1536 / 1600 89.3 / 88.9 against 82.8
// / 82.4); N=1024 and 2048 keep the H100 entries' exact kernels, which the
// new mappings did not match there (v26b: 86.9 / 87.4 against 90.2 / 89.5).
// N = 4097-5120 on clusters of four 160 x 32 B CTAs loading their next row
// ahead (tune v33, against the H100 entry's one-pass 320 x 64 B in the same
// process): N=5120 86.3 (84.7), 5000 84.8 (81.5), 4500 83.0 (76.7), 4200
// 81.9 (75.4). 128 and 256 KiB rows (N = 32768 / 65536): 128-byte threads
// in CTAs of 128 (123 / 155 registers), on clusters of 8 / 16 (tune v34,
// `tune-h200-v34-long-fp32`, against the H100 entries' 256 / 512 x 64 B x 8
// in the same process): 85.5 (81.5), 81.3 (77.7). Rows of exactly N = 64
// and 128: one-pass CTAs of 8 rows of 4 / 8 x 64 B threads, 1024 threads per
// SM, weight/bias from L1/L2 (tune v37c, `tune-h200-v37c-*`, with the
// statistics stored as pairs, two passes: 88.8 / 89.3 and 89.2 / 89.6% of
// copy against 86.0 / 85.9 on v36's short-row kernel and 85.7 / 86.0 on the
// H100 entry's 32 x 16 B in the same process; v37a, one-warp CTAs with the
// statistics in two arrays: N = 128 86.7 / 87.2 against 85.2 / 84.9).
// Rows of exactly N = 16384 (64 KiB) on clusters of eight 128 x 64 B CTAs
// loading their next row and prefetching the row two ahead into L2 (tune
// v39, `tune-h200-v39c-*`, two passes: 85.3 / 85.6 against the entry's
// clusters of four 256-thread CTAs, 84.2 / 84.3 without it and 83.9 with
// it); the range's other rows stay on the entry. At N = 8192 / 32768 no
// mapping with it reached the entries (77.4-84.0 / 80.8-84.2 against 85.9
// / 84.5-84.7).
inline constexpr KernelConfig kForwardChanges32FastMemory[] = {
    for_exact_rows_only(params_from_cache({256, 4, 64, 8, 1, 0, 1024, kGrid})),
    entry_of(kForwardConfigs32, 256),
    for_exact_rows_only(params_from_cache({512, 8, 64, 8, 1, 0, 1024, kGrid})),
    entry_of(kForwardConfigs32, 512),
    {1024, 16, 64, 16, 1, 0, 512, kGrid},
    for_exact_rows_only(entry_of(kForwardConfigs32, 4096)),
    without_exact_rows(params_from_cache({4096, 64, 64, 2, 1, 0, 1024, kGrid})),
    for_exact_rows_only(entry_of(kForwardConfigs32, 8192)),
    without_exact_rows(params_from_cache({8192, 128, 64, 1, 1, 0, 1024, kGrid})),
    with_prefetch({20480, 160, 32, 1, 4, 0, 1024}),
    with_prefetch({24576, 192, 64, 1, 2, 0, 512}),
    params_from_cache({32768, 512, 64, 1, 1, 0, 1024, kGrid}),
    for_exact_rows_only(with_l2_prefetch(with_prefetch({65536, 128, 64, 1, 8, 0, 512}))),
    entry_of(kForwardConfigs32, 65536),
    with_prefetch({131072, 128, 128, 1, 8, 0, 256}),
    with_prefetch({262144, 128, 128, 1, 16, 0, 256}),
};
inline constexpr auto kForwardConfigs32FastMemory =
    merged_table<kForwardConfigs32, kForwardChanges32FastMemory>();
// Backward: the next row loaded into registers ahead (tune v26
// bwd-sweep-bf16 / -fp32, H200, against the H100 entries in another process
// of the same call, bwd-table): N=1024
// 86.2% of copy (74.9) on 32 x 64 B x 8 rows, weight in shared memory;
// N=1536 80.4 (73.6) on 192 x 16 B (rows of 3073-3584 bytes stay on 224 x
// 16 B; since v32 96 x 32 B, below); N=4096 82.3 (77.2) on the H100 entry's
// mapping. float32: N=768 89.5 (78.6), 1536 89.4 (84.8), 3072 89.5 (83.3),
// 5120 89.9 (80.2), 6144 90.1 (80.2).
// From 4 KiB rows (tune v32, session 25: `tune-h200-v32-bwd-regacc2-*`, two
// passes within 0.5 points, against the entries before in the same process):
// 32-byte threads keeping the dweight/dbias accumulators in registers while
// loading the next row, which spares the per-row read and write of
// accumulators in shared memory (16 bytes per element and row, 2.7x the
// row's DRAM bytes in 16 bits) and, in CTAs of two rows or clusters of two to
// sixteen, keeps the partial rows few. Here the entries of rows with float32
// weights (bf16 with float32 weights, % of copy, before in brackets): N=1536
// 82.1 (75.6; `tune-h200-v32-bwd-regacc3-*`), 2048 84.6 (82.5), 4096 83.9
// (76.4), 5120 80.8 (79.4), 8192 82.0 (78.5), 16384 79.0 (69.2), 32768 76.9
// (68.2), 65536 73.6 (65.4), 131072 66.5 (59.6); with weights of the rows'
// dtype the tables below change some of them. Rows that fill the 8 and 16
// KiB entries' mappings (N = 4096, 8192) also prefetch x and dy of the row
// two ahead into L2 (with_l2_prefetch; tune v38c, two passes, without in
// brackets): N = 4096 85.1 / 84.8 (83.7 / 83.7), 8192 85.9 / 85.8 (82.3 /
// 82.1); bf16 / fp16 with weights of their dtype at 4096 84.4-84.7 / 85.1-85.2
// (83.4 / 82.4-82.6). The other rows of those ranges lost 1-6 points with it
// (N = 2560, 3072, 6400; with float32 weights 7168 gained 2) and run
// without.
inline constexpr KernelConfig kBackwardChanges16FastMemory[] = {
    with_smem_weight(with_prefetch({2048, 32, 64, 8, 1, 0, 512, true, kAccSmem})),
    with_smem_weight(with_prefetch({3072, 96, 32, 1, 1, 0, 480})),
    with_prefetch({4096, 128, 32, 2, 1, 0, 512}),
    with_l2_prefetch(with_prefetch({8192, 256, 32, 2, 1, 0, 512})),
    with_smem_weight(with_prefetch({10240, 160, 32, 1, 2, 0, 480})),
    with_l2_prefetch(with_smem_weight(with_prefetch({16384, 256, 32, 1, 2, 0, 512}))),
    with_smem_weight(with_prefetch({32768, 512, 32, 1, 2, 0, 512})),
    with_smem_weight(with_prefetch({65536, 256, 32, 1, 8, 0, 512})),
    with_smem_weight(with_prefetch({131072, 512, 32, 1, 8, 0, 512})),
    with_smem_weight(with_prefetch({262144, 512, 32, 1, 16, 0, 512})),
};
inline constexpr auto kBackwardConfigs16FastMemory =
    merged_table<kBackwardConfigs16, kBackwardChanges16FastMemory>();
// 16-bit rows with weights of their own dtype (bf16 / fp16; launch.cuh picks
// by the dtypes): 3-3.5 KiB rows (N = 1537-1792) on two-row CTAs of 64 x
// 64 B loading their next row (v26b: bf16 N=1600 77.2% against 67.1, fp16
// 72.3 / 67.0-67.6; with float32 weights 59.0 / 67.4, its twin spilling).
// With the weight in registers instead (tune v32, bf16 / fp16, before in
// brackets): N=1536 on 96 x 32 B, fp16 82.0 (75.0-75.6; bf16 78.9 against
// 80.5 with the weight in shared memory: the bf16 table takes the entry
// above); N=5120 on clusters of two 160 x 32 B CTAs, fp16 79.1 (71.9; bf16
// 76.3 against 79.5, as at 1536); N=8192 on clusters of two 256 x 32 B CTAs
// 81.1 / 80.3 (78.3 / 76.4; smem weight 80.4 / 78.5); N=16384 on clusters of
// two 512 x 32 B CTAs 78.6 / 77.5 (75.3 / 75.3); N=32768 on clusters of eight
// 256 x 32 B CTAs, fp16 75.7 (73.4-73.8; bf16 76.9 against 78.1: the bf16
// table keeps the H100 entry); N=65536 and 131072 keep the H100 entries
// (76.5 / 72.7-73.0 against 72.8 / 69.1, 70.1 / 68.0 against 66.0 / 66.0 on
// the mappings of float32 weights). N = 2048 / 4096 take the entries above
// (bf16 84.5 / 83.7, fp16 83.7 / 82.3; before 82.4 / 82.6 and 81.7 / 82.0).
// 16-24 KiB rows (N = 8193-12288): 64-byte threads with accumulators in
// shared memory on clusters of two 192-thread CTAs, two per SM at 168
// registers, the weight in registers (tune v35e, two passes; bf16 / fp16,
// the H100 entry's one 384 x 64 B CTA per SM in brackets, whose warps all
// update their accumulators after the same barrier, docs/kernels.md
// session 28): N=8200 65.4-65.6 / 61.9-62.0 (61.2-61.3 / 59.2-59.4), 10000
// 74.2-74.3 / 70.1-70.6 (69.6-69.8 / 68.0-68.1), 12288 83.4 / 81.7-81.8
// (79.1-79.4 / 77.3-77.4); with the weight in shared memory 77.8-78.5.
// N = 8192 also prefetching the row two ahead into L2 where rows fill the
// mapping (tune v38c, two passes): bf16 83.0 / 82.6 (81.8 / 81.6), fp16
// 81.3 / 80.7 (80.7 / 80.6); N = 6400 / 7168 lost 1-8 with it. So does N =
// 5120 (the 10 KiB entry's full rows; tune v39, `tune-h200-v39b-*`, two
// passes): fp16 80.8 / 80.5 (79.5 / 79.5); bf16 78.6 / 78.4 against its
// table's entry (weight in shared memory) 79.8 / 79.7, which it keeps.
inline constexpr KernelConfig kBackwardChanges16SameWeightFastMemory[] = {
    with_prefetch({3072, 96, 32, 1, 1, 0, 480}),
    with_smem_weight(with_prefetch({3584, 64, 64, 2, 1, 0, 512, true, kAccSmem})),
    with_l2_prefetch(with_prefetch({10240, 160, 32, 1, 2, 0, 480})),
    with_l2_prefetch(with_prefetch({16384, 256, 32, 1, 2, 0, 512})),
    with_prefetch({24576, 192, 64, 1, 2, 0, 384, true, kAccSmem}),
    with_prefetch({32768, 512, 32, 1, 2, 0, 512}),
    with_prefetch({65536, 256, 32, 1, 8, 0, 512}),
    entry_of(kBackwardConfigs16, 131072),
    entry_of(kBackwardConfigs16, 262144),
};
inline constexpr auto kBackwardConfigs16SameWeightFastMemory =
    merged_table<kBackwardConfigs16FastMemory, kBackwardChanges16SameWeightFastMemory>();
// bfloat16 rows and weights: 2.5-3 KiB and 9-10 KiB rows with the weight in
// shared memory (the entries of float32 weights above: tune v32 N=1536 80.5,
// 5120 79.5, against 79.9 and 79.0 before); 32-64 KiB rows (N =
// 16385-32768) on clusters of eight 128 x 64 B CTAs, three per SM at 168
// registers, accumulators in shared memory, the weight in registers (tune
// v35e, two passes: N=16400 / 24576 / 32768 48.9 / 67.3-67.4 / 78.7 against
// the H100 entry's 48.4 / 65.7-65.8 / 77.4-77.6, two 256 x 64 B CTAs of
// clusters of four per SM; fp16 lost 0.6-1.5 points at 16400 / 24576 on it
// against its 32-byte entry above and keeps that).
inline constexpr KernelConfig kBackwardChangesBF16FastMemory[] = {
    entry_of(kBackwardConfigs16FastMemory, 3072),
    entry_of(kBackwardConfigs16FastMemory, 10240),
    with_prefetch({65536, 128, 64, 1, 8, 0, 384, true, kAccSmem}),
};
inline constexpr auto kBackwardConfigsBF16FastMemory =
    merged_table<kBackwardConfigs16SameWeightFastMemory, kBackwardChangesBF16FastMemory>();
inline constexpr KernelConfig kBackwardChanges32FastMemory[] = {
    with_smem_weight(with_prefetch({4096, 128, 32, 2, 1, 0, 1024, true, kAccSmem})),
    with_prefetch({7168, 128, 64, 2, 1, 0, 512, true, kAccSmem}),
    with_prefetch({12288, 384, 32, 1, 1, 0, 1024, true, kAccSmem}),
    with_prefetch({20480, 320, 32, 1, 2, 0, 512, true, kAccSmem}),
    with_prefetch({24576, 384, 32, 1, 2, 0, 1024, true, kAccSmem}),
};
inline constexpr auto kBackwardConfigs32FastMemory =
    merged_table<kBackwardConfigs32, kBackwardChanges32FastMemory>();

// Shifted rows (N not a multiple of the vector) on cards of faster memory:
// the H100 tables with these entries merged in (not those above, which were
// measured on rows of whole chunks). On the H200 the H100 entries ran odd N
// at 45-78% of copy (benchmark v29), against 86-90 for whole-chunk rows
// beside them: their shifted kernels execute 1.5-1.7x the instructions
// (Nsight Compute, forward bf16 / float32 N=4099 against 4096: 67.6 / 37.3
// M against 39.4 / 24.9 M warp instructions), and on the H100's mappings
// they were bound by instruction issue (the 16-bit forward's 32-byte
// threads: each row's reductions spread over 16 elements) or had too few
// warps (4-6 per scheduler against 7.5). Tune v30 (H200, every
// persistent mapping of 16-64 bytes per thread, 0-2 rows staged or the next
// row in registers, at 512-2048 threads per SM; shifted N = 767-12287)
// found mappings of 64-byte threads sized to the row, with more threads per
// SM, the better ones; each entry below holds the N it was measured at
// (% of copy against the H100 entry, same call).
// Forward, 16-bit: N=3071 68.0 (64.5), 4099 74.0 (64.9), 6143 71.5 (61.8),
// 8191 71.1 (53.7). The 9216-byte entry's rows run on the next entry's
// mapping (the H100 had one of 288 x 32 B for them). Benchmark v30, the
// same build with the H100 tables forced (bf16 / fp16 / bf16 with float32
// weights): N=3071 68.1 / 69.3 / 65.0 (64.6 / 64.4 / 61.6), 4099 73.9 /
// 73.8 / 68.4 (65.2 / 65.7 / 60.1), 6143 71.7 / 71.8 / 60.5 (62.2 / 60.7 /
// 56.9), 8191 71.2 / 71.4 / 62.8 (53.5 / 53.7 / 47.3), 9001 71.9 / 72.7 /
// 64.4 (57.4 / 57.1 / 49.4).
inline constexpr KernelConfig kForwardShiftedChanges16FastMemory[] = {
    with_prefetch({7168, 224, 32, 1, 1, 0, 1024}),
    {9216, 160, 64, 1, 1, 1, 512},
    {14336, 224, 64, 1, 1, 1, 1024},
    {18432, 288, 64, 1, 1, 1, 1024},
};
inline constexpr auto kForwardShiftedConfigs16FastMemory =
    merged_table<kForwardConfigs16, kForwardShiftedChanges16FastMemory>();
// 16-bit rows with weights of their dtype (launch.cuh picks by the dtypes):
// 18-26 KiB rows (N = 9210-13305) on 384 / 416 x 64 B at two CTAs per SM
// (tune v30: N=12287 72.6 against 55.7; benchmark v30 bf16 / fp16 N=10001
// 75.2 / 73.1 against 60.0 / 59.7, 12287 72.4 / 71.7 against 56.1 / 56.4,
// 13001 72.0 / 72.0 against 58.8 / 59.3). With float32 weights these
// kernels spill (8-12 bytes at 72-80 registers) and lost 3-6 points (10001
// 45.6 against 51.6, 12287 49.0 / 52.2): not for them.
inline constexpr KernelConfig kForwardShiftedChanges16SameWeightFastMemory[] = {
    {24576, 384, 64, 1, 1, 1, 1024},
    {26624, 416, 64, 1, 1, 1, 1024},
};
inline constexpr auto kForwardShiftedConfigs16SameWeightFastMemory =
    merged_table<kForwardShiftedConfigs16FastMemory, kForwardShiftedChanges16SameWeightFastMemory>();
// Forward, float32: N=767 80.1 (74.5), 1535 80.4 (76.3), 3071 79.6 (77.3),
// 4099 79.0 (62.1), 5119 78.3 (69.1), 6143 75.0 (71.0), 8191 76.5 (70.9),
// 12287 76.8 (69.1); most with the next row in registers. Benchmark v30
// (H100 tables forced in brackets): 767 80.1 (74.3), 1535 80.9 (76.4), 3071
// 79.2 (76.6), 4099 79.5 (61.8), 5119 79.5 (69.3), 6143 75.2 (70.9), 8191
// 77.6 (71.2), 12287 76.6 (68.7).
inline constexpr KernelConfig kForwardShiftedChanges32FastMemory[] = {
    with_prefetch({4096, 128, 32, 1, 1, 0, 1024}),
    with_prefetch({7168, 224, 32, 1, 1, 0, 1024}),
    with_prefetch({16384, 256, 64, 1, 1, 0, 512}),
    with_prefetch({18432, 288, 64, 1, 1, 0, 512}),
    with_prefetch({22528, 352, 64, 1, 1, 0, 1024}),
    {26624, 416, 64, 1, 1, 1, 512},
    with_prefetch({34816, 544, 64, 1, 1, 0, 1024}),
    {51200, 800, 64, 1, 1, 1, 1024},
};
inline constexpr auto kForwardShiftedConfigs32FastMemory =
    merged_table<kForwardConfigs32, kForwardShiftedChanges32FastMemory>();
// Backward, 16-bit (every dtype pair; shifted rows are staged, see
// shifted_backward_config): N=767 58.2 (53.1), 2047 62.6 (53.2), 3071 58.4
// (54.2), 6143 55.6 (45.1), 8191 49.5 (45.0), 12287 50.8 (47.0). Some of
// these kernels spill (48-212 bytes at 72-128 registers, most with float32
// weights) and still gained in the benchmark v30 (bf16 / fp16 / bf16 with
// float32 weights; H100 tables forced in brackets): N=767 57.7 / 59.1 /
// 58.3 (53.4 / 53.3 / 52.5), 2047 62.3 / 55.1 / 61.8 (52.8 / 52.9 / 51.5),
// 3071 58.7 / 59.9 / 54.0 (54.4 / 52.6 / 46.9), 6143 55.9 / 53.0 / 49.0
// (45.2 / 45.3 / 45.0), 8191 49.6 / 49.2 / 48.4 (44.8 / 45.0 / 45.3), 12287
// 51.2 / 48.7 / 46.5 (47.0 / 45.6 / 43.0).
inline constexpr KernelConfig kBackwardShiftedChanges16FastMemory[] = {
    {2048, 128, 16, 1, 1, 1, 512, true, kAccSmem},
    {4608, 288, 16, 1, 1, 2, 512, true, kAccSmem},
    {7168, 224, 32, 1, 1, 2, 1024, true, kAccSmem},
    {14336, 224, 64, 1, 1, 1, 512, true, kAccSmem},
    {18432, 288, 64, 1, 1, 2, 512, true, kAccSmem},
    {26624, 416, 64, 1, 1, 1, 512, true, kAccSmem},
};
inline constexpr auto kBackwardShiftedConfigs16FastMemory =
    merged_table<kBackwardConfigs16, kBackwardShiftedChanges16FastMemory>();
// Backward, float32: N=767 81.1 (51.8), 1535 82.9 (77.1), 3071 79.2
// (73.4), 4099 77.8 (62.0: the H100's 544-thread entry for rows just past
// 16 KiB, whose rows the 288 x 64 B mapping takes up to 18 KiB), 5119 67.7
// (63.3), 6143 69.1 (60.4). Benchmark v30: 767 80.9 (53.9), 1535 82.8
// (77.1), 3071 79.1 (73.8), 4099 78.0 (62.1), 5119 67.3 (63.2), 6143 70.2
// (60.3).
inline constexpr KernelConfig kBackwardShiftedChanges32FastMemory[] = {
    {4096, 128, 32, 1, 1, 0, 1024, true, kAccSmem},
    {7168, 224, 32, 1, 1, 2, 1024, true, kAccSmem},
    {13312, 416, 32, 1, 1, 2, 1024, true, kAccSmem},
    {16640, 288, 64, 1, 1, 1, 576, true, kAccSmem},
    {18432, 288, 64, 1, 1, 1, 576, true, kAccSmem},
    {22528, 352, 64, 1, 1, 1, 512, true, kAccSmem},
    {26624, 416, 64, 1, 1, 2, 512, true, kAccSmem},
};
inline constexpr auto kBackwardShiftedConfigs32FastMemory =
    merged_table<kBackwardConfigs32, kBackwardShiftedChanges32FastMemory>();

}  // namespace fastlayernorm::cuda
