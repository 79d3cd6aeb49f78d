// Device-side building blocks shared by the LayerNorm kernels: packed
// 16-byte loads/stores, conversions, and row reductions across a thread
// group, a CTA, or a thread-block cluster.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace fastlayernorm::cuda {

namespace cg = cooperative_groups;

constexpr int kWarpSize = 32;

// N elements of T kept together in registers and moved through memory with
// 16-byte accesses. Stored as 16-byte words, not as N elements: copies and
// selects (a loaded chunk or zeros) then stay whole 32-bit registers. Held
// as T[N], the compiler split 16-bit packs into halves merged with byte
// permutes that consumed each load at once, so a thread's loads went out one
// after another instead of together (docs/kernels.md, session 4).
template <typename T, int N>
struct alignas(16) Pack {
  static_assert(sizeof(T) * N % 16 == 0, "a pack is whole 16-byte words");
  static constexpr int kWords = static_cast<int>(sizeof(T)) * N / 16;
  uint4 words[kWords];

  __device__ __forceinline__ T& operator[](int k) { return reinterpret_cast<T*>(words)[k]; }
  __device__ __forceinline__ const T& operator[](int k) const {
    return reinterpret_cast<const T*>(words)[k];
  }
};

template <typename T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const T* ptr) {
  Pack<T, N> r;
#pragma unroll
  for (int c = 0; c < Pack<T, N>::kWords; ++c) {
    r.words[c] = __ldg(reinterpret_cast<const uint4*>(ptr) + c);
  }
  return r;
}

// load_pack where `pred` holds, zeros elsewhere: a predicated load, not a
// branch around it (an `if` around a load became a branch with a
// convergence barrier per chunk; the forward's kernels compiled for any N,
// docs/kernels.md session 22). ptr need not be valid where pred is false.
// kZeros false: where pred is false the pack is left undefined (no zeros
// held in registers), for packs that are then never used.
template <typename T, int N, bool kZeros = true>
__device__ __forceinline__ Pack<T, N> load_pack_if(const T* ptr, bool pred) {
  Pack<T, N> r;
#pragma unroll
  for (int c = 0; c < Pack<T, N>::kWords; ++c) {
    const uint4* src = reinterpret_cast<const uint4*>(ptr) + c;
    uint4 v;
    if constexpr (kZeros) {
      v = make_uint4(0u, 0u, 0u, 0u);
      asm("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %5, 0;\n\t"
          "@p ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];\n\t}"
          : "+r"(v.x), "+r"(v.y), "+r"(v.z), "+r"(v.w)
          : "l"(src), "r"(static_cast<int>(pred)));
    } else {
      asm("{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %5, 0;\n\t"
          "@p ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];\n\t}"
          : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
          : "l"(src), "r"(static_cast<int>(pred)));
    }
    r.words[c] = v;
  }
  return r;
}

// One 16-byte store per word, spelled out: through a uint4 assignment the
// compiler split the shifted kernels' full-chunk stores into four 4-byte
// ones (the pack is also stored element by element on the partial-chunk
// path), and __stwb / __stcg come out as "strong" stores.
__device__ __forceinline__ void store16(void* ptr, const uint4& v) {
#if defined(__CUDA_ARCH__)
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(ptr), "r"(v.x), "r"(v.y), "r"(v.z),
               "r"(v.w));
#endif
}
template <typename T, int N>
__device__ __forceinline__ void store_pack(T* ptr, const Pack<T, N>& p) {
#pragma unroll
  for (int c = 0; c < Pack<T, N>::kWords; ++c) store16(reinterpret_cast<uint4*>(ptr) + c, p.words[c]);
}

// An empty asm the compiler must assume rewrites the pack: values computed
// from it before cannot stand in for the same computation after (no common
// subexpression across it), so they need not stay live in registers.
template <typename T, int N>
__device__ __forceinline__ void opaque_pack(Pack<T, N>& p) {
#pragma unroll
  for (int c = 0; c < Pack<T, N>::kWords; ++c) {
    asm volatile("" : "+r"(p.words[c].x), "+r"(p.words[c].y), "+r"(p.words[c].z),
                 "+r"(p.words[c].w));
  }
}

// The same for float16 packs, whose widening (a conversion instruction)
// ptxas itself shares across the empty asm (in PTX it is no instruction):
// XORs every word with `zero`, 0 at run time but unknown to either compiler.
// (For bfloat16, and for float16 rows rebuilt from the output, the empty asm
// measured fewer spills: ptxas_report.py.)
template <typename T, int N>
__device__ __forceinline__ void opaque_pack(Pack<T, N>& p, unsigned zero) {
#pragma unroll
  for (int c = 0; c < Pack<T, N>::kWords; ++c) {
    p.words[c].x ^= zero;
    p.words[c].y ^= zero;
    p.words[c].z ^= zero;
    p.words[c].w ^= zero;
  }
}

template <typename T, int N>
__device__ __forceinline__ void zero_pack(Pack<T, N>& p) {
#pragma unroll
  for (int c = 0; c < Pack<T, N>::kWords; ++c) p.words[c] = make_uint4(0u, 0u, 0u, 0u);
}

// A pack of VEC copies of v (1 or 0 for an absent weight or bias).
template <typename T, int N>
__device__ __forceinline__ Pack<T, N> filled_pack(float v) {
  Pack<T, N> p;
#pragma unroll
  for (int k = 0; k < N; ++k) p[k] = static_cast<T>(v);
  return p;
}

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}
// bfloat16 is the top half of a float: a shift, written in plain C++ so the
// compiler can redo it instead of keeping float copies of a row in registers
// (c10's conversion goes through an intrinsic the compiler cannot remat;
// with it the bf16 kernels spilled where the fp16 ones did not).
template <>
__device__ __forceinline__ float to_float(c10::BFloat16 v) {
  return __uint_as_float(static_cast<uint32_t>(v.x) << 16);
}

// Widens a pack to floats. 16-bit types are read as 32-bit words holding two
// values each (a shift and a mask for bfloat16, one paired conversion for
// half), so the compiler keeps the pack in whole registers instead of
// splitting it into 16-bit pieces with byte permutes.
template <typename T, int N>
__device__ __forceinline__ void unpack(const Pack<T, N>& p, float (&f)[N]) {
  if constexpr (N % 2 == 0 && std::is_same_v<T, c10::BFloat16>) {
    const uint32_t* w = reinterpret_cast<const uint32_t*>(&p);
#pragma unroll
    for (int k = 0; k < N / 2; ++k) {
      f[2 * k] = __uint_as_float(w[k] << 16);
      f[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    }
  } else if constexpr (N % 2 == 0 && std::is_same_v<T, c10::Half>) {
    const __half2* h = reinterpret_cast<const __half2*>(&p);
#pragma unroll
    for (int k = 0; k < N / 2; ++k) {
      const float2 two = __half22float2(h[k]);
      f[2 * k] = two.x;
      f[2 * k + 1] = two.y;
    }
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) f[k] = to_float(p[k]);
  }
}

// Writes float values into a pack of T, two at a time where the GPU has a
// paired conversion (one cvt per two bf16/fp16 values instead of two).
template <typename T, int N>
__device__ __forceinline__ void store_floats(Pack<T, N>& out, const float (&v)[N]) {
  if constexpr (N % 2 == 0 && std::is_same_v<T, c10::BFloat16>) {
#pragma unroll
    for (int k = 0; k < N; k += 2) {
      const __nv_bfloat162 two = __floats2bfloat162_rn(v[k], v[k + 1]);
      *reinterpret_cast<__nv_bfloat162*>(&out[k]) = two;
    }
  } else if constexpr (N % 2 == 0 && std::is_same_v<T, c10::Half>) {
#pragma unroll
    for (int k = 0; k < N; k += 2) {
      const __half2 two = __floats2half2_rn(v[k], v[k + 1]);
      *reinterpret_cast<__half2*>(&out[k]) = two;
    }
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) out[k] = static_cast<T>(v[k]);
  }
}

// Sums within a thread as balanced trees or interleaved chains: a serial
// chain of N dependent adds costs N times the add latency per row, which is
// what bounds a row's time once its loads are in flight.
template <int LO, int LEN, int N>
__device__ __forceinline__ float tree_sum_range(const float (&v)[N]) {
  if constexpr (LEN == 1) {
    return v[LO];
  } else {
    return tree_sum_range<LO, LEN / 2, N>(v) + tree_sum_range<LO + LEN / 2, LEN - LEN / 2, N>(v);
  }
}
template <int N>
__device__ __forceinline__ float tree_sum(const float (&v)[N]) {
  return tree_sum_range<0, N, N>(v);
}
// sum(a[k] * b[k]) in two interleaved fma chains.
template <int N>
__device__ __forceinline__ float dot(const float (&a)[N], const float (&b)[N]) {
  if constexpr (N == 1) {
    return a[0] * b[0];
  } else {
    float even = a[0] * b[0], odd = a[1] * b[1];
#pragma unroll
    for (int k = 2; k + 1 < N; k += 2) {
      even = fmaf(a[k], b[k], even);
      odd = fmaf(a[k + 1], b[k + 1], odd);
    }
    if constexpr (N % 2 == 1) even = fmaf(a[N - 1], b[N - 1], even);
    return even + odd;
  }
}

// Sums of one or two values; the backward reduces two row sums at once.
__device__ __forceinline__ float shfl_xor(float v, int m) {
  return __shfl_xor_sync(0xffffffffu, v, m);
}
__device__ __forceinline__ float2 shfl_xor(float2 v, int m) {
  return make_float2(__shfl_xor_sync(0xffffffffu, v.x, m),
                     __shfl_xor_sync(0xffffffffu, v.y, m));
}
__device__ __forceinline__ double shfl_xor(double v, int m) {
  return __shfl_xor_sync(0xffffffffu, v, m);
}
__device__ __forceinline__ float2 operator+(float2 a, float2 b) {
  return make_float2(a.x + b.x, a.y + b.y);
}
__device__ __forceinline__ float4 operator+(float4 a, float4 b) {
  return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}
// The four floats of v into dst[0..3].
__device__ __forceinline__ void unpack_float4(float4 v, float* dst) {
  dst[0] = v.x, dst[1] = v.y, dst[2] = v.z, dst[3] = v.w;
}
template <typename V>
__device__ __forceinline__ V zero_value() {
  if constexpr (std::is_same_v<V, float2>) {
    return make_float2(0.f, 0.f);
  } else {
    return V(0);
  }
}

// Sum over groups of G consecutive lanes (G a power of two <= 32).
template <int G, typename V>
__device__ __forceinline__ V group_sum(V v) {
#pragma unroll
  for (int m = G / 2; m > 0; m /= 2) v = v + shfl_xor(v, m);
  return v;
}

// Split cluster barrier (sm_90): arrive without ordering memory, then wait
// for every thread of the cluster to have arrived.
__device__ __forceinline__ void cluster_arrive_relaxed() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.relaxed;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void cluster_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait;\n" ::: "memory");
#endif
}

// Rows ahead into L2 (sm_90's bulk prefetch, a hint: no register, nothing to
// wait for): the part `rank` of `parts` of a row of whole 16-byte chunks
// (`row_bytes` a multiple of 16, the row 16-byte aligned), one instruction
// for the thread that calls it. A row not there (row_ok false) is skipped.
__device__ __forceinline__ void prefetch_row_part_to_l2(const void* row, bool row_ok,
                                                        int64_t row_bytes, int rank, int parts) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const int64_t part = (row_bytes / parts + 15) / 16 * 16;
  const int64_t begin = part * rank;
  const int64_t end = begin + part < row_bytes ? begin + part : row_bytes;
  if (row_ok && begin < end) {
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(
                     static_cast<const char*>(row) + begin),
                 "r"(static_cast<uint32_t>(end - begin)));
  }
#endif
}

// Distributed shared memory through mbarriers (sm_90): a value stored into
// a peer CTA's shared memory with st.async completes its bytes on that CTA's
// mbarrier, whose phase completes once the bytes it expects have landed. No
// cluster barrier and no fence on the way: barrier.cluster.arrive's release
// (cluster.sync()) is a MEMBAR.ALL.GPU, which waits for the thread's
// outstanding memory operations (in the prefetching backward, the next row's
// loads issued just before the reduction: membar stalls in Nsight Compute,
// session 17), once per row reduction.
__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// The address of CTA `rank`'s copy of a shared-memory location of this CTA.
__device__ __forceinline__ uint32_t peer_shared_address(uint32_t local, uint32_t rank) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(local), "r"(rank));
  return remote;
}
// An mbarrier whose phases complete on one arrival and the bytes it expects;
// initialized before the cluster barrier its peers wait at before storing.
__device__ __forceinline__ void mbarrier_init_for_cluster(uint64_t* bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(shared_address(bar)) : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbarrier_arrive_expect_bytes(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(shared_address(bar)),
               "r"(bytes)
               : "memory");
}
// Until the phase of `bar` with this parity has completed. The default
// (CTA-scope) acquire, as for bytes that TMA lands: the bytes are in this
// CTA's shared memory, which no cache holds; at cluster scope the wait also
// invalidated the whole L1 (CCTL.IVALL) at every row.
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n"
      "}\n" ::"r"(shared_address(bar)),
      "r"(parity)
      : "memory");
}
// v into CTA `rank`'s copy of *local, completing 8 bytes on its copy of *bar.
__device__ __forceinline__ void store_to_peer(float2* local, uint64_t* bar, uint32_t rank, float2 v) {
  asm volatile(
      "st.async.shared::cluster.mbarrier::complete_tx::bytes.v2.f32 [%0], {%1, %2}, [%3];\n" ::"r"(
          peer_shared_address(shared_address(local), rank)),
      "f"(v.x), "f"(v.y), "r"(peer_shared_address(shared_address(bar), rank))
      : "memory");
}
#endif

// Programmatic dependent launch (sm_90): a kernel launched with
// cudaLaunchAttributeProgrammaticStreamSerialization may start while the
// kernel before it in the stream is still running; it waits here, before
// reading anything that kernel wrote, until that grid has finished and its
// writes are visible. The kernel before it lets the launch begin once each
// of its CTAs has called allow_dependent_launch() (or exited).
__device__ __forceinline__ void wait_for_prior_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Sums a value over the TPR threads that share a row (ROWS rows per CTA), or
// over CLUSTER CTAs of a cluster holding one row (consecutive ranks of a
// hardware cluster). Every thread of the row gets the same total, summed in
// a fixed order (deterministic). Shared slots alternate between two
// buffers, so one CTA barrier per reduction suffices: a slot is rewritten
// only after everyone passed the barrier in between. A cluster's CTAs
// exchange their totals through a cluster barrier, or with ASYNC_EXCHANGE
// through mbarriers (store_to_peer): for kernels that hold loads in flight
// across the reduction (the backward's next row), which the cluster
// barrier's fence waited for. Kernels that stage their rows with cp.async
// measured slower with the mbarriers (docs/kernels.md, session 17). sum()
// reduces over the whole row; cta_sum() over the CTA's part only, and
// combine_parts() then exchanges one value per CTA for the kernel to merge
// (the forward's per-CTA statistics, session 18).
template <int TPR, int ROWS, int CLUSTER, typename V, bool ASYNC_EXCHANGE = false>
struct RowReducer {
  static_assert(CLUSTER == 1 || ROWS == 1, "a cluster holds one row");
  static constexpr int kWarpsPerRow = TPR > kWarpSize ? TPR / kWarpSize : 1;
  static constexpr bool kAsync = CLUSTER > 1 && ASYNC_EXCHANGE;
  static_assert(!kAsync || std::is_same_v<V, float2>,
                "mbarrier exchanges move float2 (store_to_peer)");
  // Lives in shared memory; one per CTA.
  struct LocalStorage {
    V warp_part[2][ROWS][kWarpsPerRow];
    V cluster_part[2][CLUSTER];  // the CTA totals of a cluster, by rank
  };
  struct ClusterStorage : LocalStorage {
    uint64_t landed[2];  // mbarriers: cluster_part[p] holds every rank's total
  };
  using Storage = std::conditional_t<kAsync, ClusterStorage, LocalStorage>;

  Storage& storage;
  int parity = 0;  // per thread, in registers
  // kAsync: exchanges so far (the next one's slots and mbarrier: uses & 1,
  // the phase to wait for: (uses >> 1) & 1).
  int uses = 0;
  // Cluster: a CTA's slots may be written by its peers only once it runs
  // (and, kAsync, has initialized its mbarriers). Each CTA signals that (a
  // relaxed cluster arrive, after the mbarrier-init fence) when it builds its
  // reducer and waits for its peers' signals before its first remote store,
  // so the wait is normally over by then.
  bool peers_started = false;

  __device__ __forceinline__ explicit RowReducer(Storage& s) : storage(s) {
    if constexpr (kAsync) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      if (threadIdx.x == 0) {
        mbarrier_init_for_cluster(&s.landed[0]);
        mbarrier_init_for_cluster(&s.landed[1]);
      }
#endif
    }
    if constexpr (CLUSTER > 1) cluster_arrive_relaxed();
  }

  // Every thread of the kernel calls this last. Each peer stores into a
  // CTA's slots once per exchange, before the cluster barrier of that
  // exchange (or, kAsync, landing before its mbarrier phase completes), so
  // once a CTA is past its last exchange nothing touches its shared memory
  // any more and it may exit; a CTA that exchanged nothing completes the
  // wait that pairs with its first arrive.
  __device__ __forceinline__ void finish() {
    if constexpr (CLUSTER > 1) {
      if (!peers_started) {
        cluster_wait();
        peers_started = true;
      }
    }
  }

  __device__ __forceinline__ V sum(V v) {
    if constexpr (TPR <= kWarpSize) {
      static_assert(CLUSTER == 1, "a cluster needs whole-CTA rows");
      return group_sum<TPR>(v);
    } else {
      V total = cta_total(v);
      if constexpr (CLUSTER > 1) {
        const V* parts = exchange(total);
        total = zero_value<V>();
#pragma unroll
        for (int r = 0; r < CLUSTER; ++r) total = total + parts[r];
      }
      parity ^= 1;
      return total;
    }
  }

  // The sum over this CTA's threads of the row only (with CLUSTER > 1, the
  // CTA's part of the row); every thread of the row gets it.
  __device__ __forceinline__ V cta_sum(V v) {
    static_assert(TPR > kWarpSize, "a CTA part of a row is whole warps");
    const V total = cta_total(v);
    parity ^= 1;
    return total;
  }

  // The cluster's CTAs exchange a value that is the same in all threads of
  // each CTA (such as a cta_sum): returns combine(parts), parts[r] being rank
  // r's value, in every thread. Called right after a cta_sum (whose CTA
  // barrier orders the previous exchange's reads before this one's stores).
  template <typename Combine>
  __device__ __forceinline__ V combine_parts(V part, Combine combine) {
    static_assert(kAsync, "combine_parts exchanges through the mbarriers");
    return combine(exchange(part));
  }

 private:
  // Sum over the row's threads in this CTA: warp shuffles, then the warps'
  // sums through shared memory (slots of this reduction's parity).
  __device__ __forceinline__ V cta_total(V v) {
    v = group_sum<kWarpSize>(v);
    const int slot = threadIdx.x / TPR;
    const int warp = (threadIdx.x % TPR) / kWarpSize;
    if (threadIdx.x % kWarpSize == 0) storage.warp_part[parity][slot][warp] = v;
    __syncthreads();
    V total = zero_value<V>();
#pragma unroll
    for (int w = 0; w < kWarpsPerRow; ++w) total = total + storage.warp_part[parity][slot][w];
    return total;
  }

  // Every CTA's `total` into every peer's slots; returns this CTA's slots,
  // by rank, once all have landed.
  __device__ __forceinline__ const V* exchange(V total) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // Pushed, not pulled: thread r stores this CTA's total into rank r's
    // slot for this rank (CLUSTER remote stores per CTA; every thread
    // loading every rank's total remotely cost CLUSTER remote loads per
    // thread).
    cg::cluster_group cluster = cg::this_cluster();
    const unsigned rank = cluster.block_rank() % CLUSTER;
    const unsigned first = cluster.block_rank() - rank;  // the row's first CTA
    if (!peers_started) {
      cluster_wait();
      peers_started = true;
    }
    if constexpr (kAsync) {
      // The store completes on rank r's mbarrier of this exchange's parity,
      // which expects CLUSTER totals. A slot (and its mbarrier's next phase)
      // is written again two exchanges later, by a peer that has seen this
      // CTA's total of the exchange in between land: stored after this
      // CTA's barrier of that reduction, which its threads pass only after
      // reading this one.
      const int xp = uses & 1;
      if (threadIdx.x == 0) {
        mbarrier_arrive_expect_bytes(&storage.landed[xp], CLUSTER * sizeof(V));
      }
      if (threadIdx.x < CLUSTER) {
        store_to_peer(&storage.cluster_part[xp][rank], &storage.landed[xp], first + threadIdx.x,
                      total);
      }
      mbarrier_wait(&storage.landed[xp], (uses >> 1) & 1);
      ++uses;
      return storage.cluster_part[xp];
    } else {
      // The cluster barrier orders the stores before the reads; a slot is
      // rewritten two reductions later, after the barrier in between,
      // which its reader passes only after reading it.
      if (threadIdx.x < CLUSTER) {
        *cluster.map_shared_rank(&storage.cluster_part[parity][rank], first + threadIdx.x) = total;
      }
      cluster.sync();
      return storage.cluster_part[parity];
    }
#else
    __trap();  // cluster kernels are launched on sm_90+ only
    return storage.cluster_part[0];
#endif
  }
};

// A row is cut into 16-byte chunks on the aligned grid of memory, so every
// full chunk moves with one 16-byte access even when the row does not start
// on a 16-byte boundary (N not a multiple of VEC): a row starting `shift`
// elements past a boundary has chunk c holding its columns c*VEC - shift ...
// c*VEC - shift + VEC - 1, and only its first and last chunks are partial.
// Thread t of a row owns chunks t, t + row_threads, ... so each warp-wide
// access covers contiguous memory. SHIFTED = false compiles the kernels for
// rows that are whole chunks (shift 0, no partial chunk).
template <int VEC>
__device__ __forceinline__ int chunk_first_col(int item, int thread_in_row, int row_threads,
                                               int shift) {
  return (item * row_threads + thread_in_row) * VEC - shift;
}
template <int VEC, bool SHIFTED>
__device__ __forceinline__ bool chunk_full(int j0, int n) {
  return SHIFTED ? (j0 >= 0 && j0 + VEC <= n) : j0 < n;
}
// The chunk holds at least one of the row's columns.
template <int VEC, bool SHIFTED>
__device__ __forceinline__ bool chunk_in_row(int j0, int n) {
  return SHIFTED ? (j0 < n && j0 + VEC > 0) : j0 < n;
}
template <int VEC, bool SHIFTED>
__device__ __forceinline__ bool chunk_partial(int j0, int n) {
  return SHIFTED && chunk_in_row<VEC, true>(j0, n) && !chunk_full<VEC, true>(j0, n);
}
__device__ __forceinline__ bool col_in_row(int j, int n) {
  return static_cast<unsigned>(j) < static_cast<unsigned>(n);
}

// The in-row elements of a partial chunk (zeros elsewhere), one by one. Out
// of line, for the few chunks that need it (load_row, load_param_chunk): a
// warp that calls it first waits for all its outstanding loads.
template <typename T, int VEC>
__device__ __noinline__ Pack<T, VEC> load_partial_chunk(const T* ptr, int j0, int n) {
  Pack<T, VEC> p;
  zero_pack(p);
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    if (col_in_row(j0 + k, n)) p[k] = ptr[j0 + k];
  }
  return p;
}

// Loads the chunk of columns j0 ... j0+VEC-1 of `ptr` (ptr + j0 on the
// aligned grid; zeros outside 0..n-1): one 16-byte access when it is full.
template <typename T, int VEC, bool SHIFTED>
__device__ __forceinline__ Pack<T, VEC> load_chunk(const T* ptr, int j0, int n) {
  if (chunk_full<VEC, SHIFTED>(j0, n)) {
    return load_pack<T, VEC>(ptr + j0);
  }
  if (SHIFTED && chunk_in_row<VEC, true>(j0, n)) return load_partial_chunk<T, VEC>(ptr, j0, n);
  Pack<T, VEC> p;
  zero_pack(p);
  return p;
}

// Columns j0 ... j0+VEC-1 (zeros outside 0..n-1) of a vector of n elements
// that starts on a 16-byte boundary (weight, bias), for a thread of a row
// whose chunk grid is shifted against it (j0 off the VEC grid): the 16-byte
// words the chunk spans, loaded whole and funnel-shifted into place. Element
// loads (load_partial_chunk, a call: the warp first waits for all its
// outstanding loads) only for the row's partial chunks and a chunk whose
// words reach past the vector's end.
template <typename T, int VEC, bool SHIFTED>
__device__ __forceinline__ Pack<T, VEC> load_param_chunk(const T* ptr, int j0, int n) {
  if constexpr (!SHIFTED) {
    return load_chunk<T, VEC, false>(ptr, j0, n);
  } else {
    constexpr int kWords = Pack<T, VEC>::kWords;
    const int first_byte = j0 * static_cast<int>(sizeof(T));
    const int skip = first_byte & 15;  // bytes of the first word before column j0
    if (chunk_full<VEC, true>(j0, n)) {
      if (skip == 0) return load_pack<T, VEC>(ptr + j0);
      if ((first_byte | 15) + 1 + kWords * 16 <= n * static_cast<int>(sizeof(T))) {
        const uint4* src = reinterpret_cast<const uint4*>(ptr) + (first_byte >> 4);
        uint32_t w[4 * (kWords + 1)];
#pragma unroll
        for (int c = 0; c <= kWords; ++c) {
          const uint4 v = __ldg(src + c);
          w[4 * c] = v.x;
          w[4 * c + 1] = v.y;
          w[4 * c + 2] = v.z;
          w[4 * c + 3] = v.w;
        }
        // Word m of the chunk: bytes skip + 4m ... of w, from two neighbours.
        const int q = skip >> 2;
        const unsigned bits = (skip & 3) * 8;
        Pack<T, VEC> p;
        uint32_t* out = reinterpret_cast<uint32_t*>(p.words);
#pragma unroll
        for (int m = 0; m < 4 * kWords; ++m) {
          const uint32_t lo = q == 0 ? w[m] : q == 1 ? w[m + 1] : q == 2 ? w[m + 2] : w[m + 3];
          const uint32_t hi =
              q == 0 ? w[m + 1] : q == 1 ? w[m + 2] : q == 2 ? w[m + 3] : w[m + 4];
          out[m] = __funnelshift_r(lo, hi, bits);
        }
        return p;
      }
    }
    if (chunk_in_row<VEC, true>(j0, n)) return load_partial_chunk<T, VEC>(ptr, j0, n);
    Pack<T, VEC> p;
    zero_pack(p);
    return p;
  }
}

// Stores the in-row columns of a chunk of a row (ptr + j0 is aligned).
template <typename T, int VEC, bool SHIFTED>
__device__ __forceinline__ void store_chunk(T* ptr, int j0, int n, const Pack<T, VEC>& p) {
  if (chunk_full<VEC, SHIFTED>(j0, n)) {
    store_pack(ptr + j0, p);
  } else if (chunk_partial<VEC, SHIFTED>(j0, n)) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      if (col_in_row(j0 + k, n)) ptr[j0 + k] = p[k];
    }
  }
}

// Loads this thread's chunks of one row (zeros outside the row, or
// everywhere past the last row). A partial chunk (shifted rows) is loaded
// whole from the aligned grid, like a staged one: its other elements belong
// to the neighbouring row and are masked after reading (mask_outside). Only
// a chunk reaching past the end of the tensor (`end`) takes element loads.
// (Element loads for every partial chunk, a call, made each warp holding one
// wait for all its outstanding loads: forward bf16 N=767-14335 at 53-62% of
// copy, backward 43-58.)
template <bool SHIFTED, typename T, int VEC, int ITEMS>
__device__ __forceinline__ void load_row(Pack<T, VEC> (&packs)[ITEMS], const T* row_ptr,
                                         const T* end, bool row_ok, int thread_in_row,
                                         int row_threads, int n, int shift) {
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int j0 = chunk_first_col<VEC>(i, thread_in_row, row_threads, shift);
    if (!row_ok) {
      zero_pack(packs[i]);
    } else if constexpr (SHIFTED) {
      if (chunk_in_row<VEC, true>(j0, n) && row_ptr + j0 + VEC <= end) {
        packs[i] = load_pack<T, VEC>(row_ptr + j0);
      } else {
        packs[i] = load_chunk<T, VEC, true>(row_ptr, j0, n);
      }
    } else {
      packs[i] = load_chunk<T, VEC, false>(row_ptr, j0, n);
    }
  }
}

// ---- staging rows in shared memory with cp.async ---------------------------
// A CTA's next rows are copied into shared memory while the current one is
// reduced, without holding registers for them. Chunk i of a thread lives at
// stage[i * cta_threads + threadIdx.x]: each thread reads back exactly the
// chunks it copied, so no barrier is needed, only cp.async.wait_group.

__device__ __forceinline__ void cp_async16(uint4* smem, const void* gmem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(shared_address(smem)), "l"(gmem)
               : "memory");
#else
  *smem = *reinterpret_cast<const uint4*>(gmem);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// Waits until at most N of this thread's committed groups are in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// The slot of a tensor's last chunk when the tensor ends inside it: the
// elements before `end` (zeros after) stored by the thread itself. A
// cp.async of fewer source bytes than it copies reads, to compute-sanitizer,
// all 16 (past the end of the tensor's own allocation). The thread reads the
// slot back itself after its cp.async waits: program order makes it visible.
template <typename T>
__device__ __noinline__ void store_tail_slot(uint4* slot, const T* src, const T* end) {
  Pack<T, 16 / sizeof(T)> p;
  zero_pack(p);
#pragma unroll
  for (int k = 0; k < static_cast<int>(16 / sizeof(T)); ++k) {
    if (src + k < end) p[k] = src[k];
  }
  *slot = p.words[0];
}

// Starts copying this thread's chunks of a row into `stage`. A partial chunk
// (shifted rows) is copied whole from the aligned grid: its other elements
// belong to the neighbouring row and are masked after reading, except past
// the end of the tensor (`end`), which is never read (store_tail_slot). A
// chunk of VEC elements of T is one or more 16-byte slots (two for float dy
// of a bf16 row), slot s of chunk i at
// stage[(i * kSlots + s) * cta_threads + threadIdx.x].
template <bool SHIFTED, typename T, int VEC, int ITEMS>
__device__ __forceinline__ void stage_row(uint4* stage, int cta_threads, const T* row_ptr,
                                          const T* end, bool row_ok, int thread_in_row,
                                          int row_threads, int n, int shift) {
  constexpr int kSlots = static_cast<int>(sizeof(T)) * VEC / 16;
  constexpr int kSlotElems = VEC / kSlots;
  if (!row_ok) return;
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int j0 = chunk_first_col<VEC>(i, thread_in_row, row_threads, shift);
    if (chunk_in_row<VEC, SHIFTED>(j0, n)) {
#pragma unroll
      for (int s = 0; s < kSlots; ++s) {
        const T* src = row_ptr + j0 + s * kSlotElems;
        uint4* const slot = stage + (i * kSlots + s) * cta_threads + threadIdx.x;
        if (SHIFTED && end - src < kSlotElems) {
          store_tail_slot(slot, src, end);
        } else {
          cp_async16(slot, src);
        }
      }
    }
  }
}

// Reads back this thread's chunks of a staged row (zeros for chunks outside
// the row; partial chunks still hold neighbouring elements: mask_outside).
template <bool SHIFTED, typename T, int VEC, int ITEMS>
__device__ __forceinline__ void read_staged_row(Pack<T, VEC> (&packs)[ITEMS], const uint4* stage,
                                                int cta_threads, bool row_ok, int thread_in_row,
                                                int row_threads, int n, int shift) {
  constexpr int kSlots = static_cast<int>(sizeof(Pack<T, VEC>)) / 16;
  static_assert(sizeof(Pack<T, VEC>) % 16 == 0, "a staged chunk is whole 16-byte slots");
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int j0 = chunk_first_col<VEC>(i, thread_in_row, row_threads, shift);
    if (row_ok && chunk_in_row<VEC, SHIFTED>(j0, n)) {
#pragma unroll
      for (int s = 0; s < kSlots; ++s) {
        reinterpret_cast<uint4*>(&packs[i])[s] = stage[(i * kSlots + s) * cta_threads + threadIdx.x];
      }
    } else {
      zero_pack(packs[i]);
    }
  }
}

// Zeros the elements of a chunk that are outside the row's columns.
template <int VEC, bool SHIFTED>
__device__ __forceinline__ void mask_outside(float (&f)[VEC], int j0, int n) {
  if (chunk_partial<VEC, SHIFTED>(j0, n)) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) f[k] = col_in_row(j0 + k, n) ? f[k] : 0.f;
  }
}

// Elements row `row` of n-element rows starts past a 16-byte boundary (the
// tensor itself starts on one).
template <int VEC>
__device__ __forceinline__ int row_shift(int64_t row, int n) {
  return static_cast<int>((row * static_cast<int64_t>(n)) & (VEC - 1));
}

// This CTA's rank in its cluster, and the cluster's index in the grid.
template <int CLUSTER>
__device__ __forceinline__ int cluster_rank() {
  if constexpr (CLUSTER > 1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // (A hardware cluster may hold several rows' clusters: the backward's
    // partial groups.)
    return static_cast<int>(cg::this_cluster().block_rank()) % CLUSTER;
#else
    __trap();
#endif
  }
  return 0;
}

}  // namespace fastlayernorm::cuda
