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

namespace fastlayernorm::cuda {

namespace cg = cooperative_groups;

constexpr int kWarpSize = 32;

// N elements of T kept together in registers. Moved through memory with
// 16-byte accesses (or one narrower access when the pack is smaller).
template <typename T, int N>
struct alignas(sizeof(T) * N >= 16 ? 16 : sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const T* ptr) {
  constexpr int kBytes = sizeof(T) * N;
  Pack<T, N> r;
  if constexpr (kBytes >= 16) {
    static_assert(kBytes % 16 == 0, "pack must be a whole number of 16B chunks");
#pragma unroll
    for (int c = 0; c < kBytes / 16; ++c) {
      reinterpret_cast<uint4*>(&r)[c] = __ldg(reinterpret_cast<const uint4*>(ptr) + c);
    }
  } else if constexpr (kBytes == 8) {
    *reinterpret_cast<uint2*>(&r) = __ldg(reinterpret_cast<const uint2*>(ptr));
  } else if constexpr (kBytes == 4) {
    *reinterpret_cast<uint32_t*>(&r) = __ldg(reinterpret_cast<const uint32_t*>(ptr));
  } else {
    static_assert(kBytes == 2, "unsupported pack size");
    *reinterpret_cast<uint16_t*>(&r) = __ldg(reinterpret_cast<const uint16_t*>(ptr));
  }
  return r;
}

template <typename T, int N>
__device__ __forceinline__ void store_pack(T* ptr, const Pack<T, N>& p) {
  constexpr int kBytes = sizeof(T) * N;
  if constexpr (kBytes >= 16) {
#pragma unroll
    for (int c = 0; c < kBytes / 16; ++c) {
      reinterpret_cast<uint4*>(ptr)[c] = reinterpret_cast<const uint4*>(&p)[c];
    }
  } else if constexpr (kBytes == 8) {
    *reinterpret_cast<uint2*>(ptr) = *reinterpret_cast<const uint2*>(&p);
  } else if constexpr (kBytes == 4) {
    *reinterpret_cast<uint32_t*>(ptr) = *reinterpret_cast<const uint32_t*>(&p);
  } else {
    *reinterpret_cast<uint16_t*>(ptr) = *reinterpret_cast<const uint16_t*>(&p);
  }
}

template <typename T, int N>
__device__ __forceinline__ void zero_pack(Pack<T, N>& p) {
#pragma unroll
  for (int k = 0; k < N; ++k) p.v[k] = T(0);
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

// Writes float values into a pack of T, two at a time where the GPU has a
// paired conversion (one cvt per two bf16/fp16 values instead of two).
template <typename T, int N>
__device__ __forceinline__ void store_floats(Pack<T, N>& out, const float (&v)[N]) {
  if constexpr (N % 2 == 0 && std::is_same_v<T, c10::BFloat16>) {
#pragma unroll
    for (int k = 0; k < N; k += 2) {
      const __nv_bfloat162 two = __floats2bfloat162_rn(v[k], v[k + 1]);
      *reinterpret_cast<__nv_bfloat162*>(&out.v[k]) = two;
    }
  } else if constexpr (N % 2 == 0 && std::is_same_v<T, c10::Half>) {
#pragma unroll
    for (int k = 0; k < N; k += 2) {
      const __half2 two = __floats2half2_rn(v[k], v[k + 1]);
      *reinterpret_cast<__half2*>(&out.v[k]) = two;
    }
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) out.v[k] = static_cast<T>(v[k]);
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

// Sums a value over the TPR threads that share a row (ROWS rows per CTA), or
// over CLUSTER CTAs of a cluster holding one row. Every thread of the row
// gets the same total, summed in a fixed order (deterministic). Shared slots
// alternate between two buffers, so one barrier per reduction suffices: a
// slot is rewritten only after everyone passed the barrier in between.
template <int TPR, int ROWS, int CLUSTER, typename V>
struct RowReducer {
  static_assert(CLUSTER == 1 || ROWS == 1, "a cluster holds one row");
  static constexpr int kWarpsPerRow = TPR > kWarpSize ? TPR / kWarpSize : 1;
  // Lives in shared memory; one per CTA.
  struct Storage {
    V warp_part[2][ROWS][kWarpsPerRow];
    V cta_part[2];
  };

  Storage& storage;
  int parity = 0;  // per thread, in registers

  __device__ __forceinline__ explicit RowReducer(Storage& s) : storage(s) {}

  __device__ __forceinline__ V sum(V v) {
    if constexpr (TPR <= kWarpSize) {
      static_assert(CLUSTER == 1, "a cluster needs whole-CTA rows");
      return group_sum<TPR>(v);
    } else {
      v = group_sum<kWarpSize>(v);
      const int slot = threadIdx.x / TPR;
      const int warp = (threadIdx.x % TPR) / kWarpSize;
      if (threadIdx.x % kWarpSize == 0) storage.warp_part[parity][slot][warp] = v;
      __syncthreads();
      V total = zero_value<V>();
#pragma unroll
      for (int w = 0; w < kWarpsPerRow; ++w) total = total + storage.warp_part[parity][slot][w];
      if constexpr (CLUSTER > 1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        cg::cluster_group cluster = cg::this_cluster();
        if (threadIdx.x == 0) storage.cta_part[parity] = total;
        cluster.sync();
        total = zero_value<V>();
#pragma unroll
        for (int r = 0; r < CLUSTER; ++r) {
          total = total + *cluster.map_shared_rank(&storage.cta_part[parity], r);
        }
#else
        __trap();  // cluster kernels are launched on sm_90+ only
#endif
      }
      parity ^= 1;
      return total;
    }
  }
};

// Loads this thread's packs of one row (zeros outside the row or past the
// last row). Thread t of a row owns packs t, t + row_threads, ... so each
// access instruction of a warp covers contiguous memory.
template <typename T, int VEC, int ITEMS>
__device__ __forceinline__ void load_row(Pack<T, VEC> (&packs)[ITEMS], const T* row_ptr,
                                         bool row_ok, int thread_in_row,
                                         int row_threads, int n) {
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int col = (i * row_threads + thread_in_row) * VEC;
    if (row_ok && col < n) {
      packs[i] = load_pack<T, VEC>(row_ptr + col);
    } else {
      zero_pack(packs[i]);
    }
  }
}

// This CTA's rank in its cluster, and the cluster's index in the grid.
template <int CLUSTER>
__device__ __forceinline__ int cluster_rank() {
  if constexpr (CLUSTER > 1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    return static_cast<int>(cg::this_cluster().block_rank());
#else
    __trap();
#endif
  }
  return 0;
}

// A CTA must not exit while cluster peers may still read its shared memory.
template <int CLUSTER>
__device__ __forceinline__ void cluster_exit_barrier() {
  if constexpr (CLUSTER > 1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cg::this_cluster().sync();
#endif
  }
}

}  // namespace fastlayernorm::cuda
