// How long the dweight/dbias finalize waits after the backward kernel: the
// hand-off of a programmatic dependent launch (griddepcontrol.wait returns
// once the whole primary grid has finished and its memory is flushed)
// against per-CTA flags that the dependent polls (st.release / ld.acquire).
//
//   nvcc -O3 -arch=sm_90a -o pdl_probe pdl_handoff_probe.cu && ./pdl_probe
//
// A persistent primary grid (one 512-thread CTA per SM, as the backward at
// 16-32 KiB rows) spins for `work` us (the first `late` CTAs `extra` us
// longer: the last round's extra rows), allows the dependent launch, then
// writes its partial row and, in flag mode, signals. The dependent (the
// finalize's shape: a CTA per 128 columns) waits either way, then sums the
// partial rows column by column. Printed: the pair's time (CUDA events,
// median) per mode, and from %globaltimer the dependent's first CTA ready
// and last CTA done after the primary's last CTA ended.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK(x)                                                                  \
  do {                                                                            \
    cudaError_t e = (x);                                                          \
    if (e != cudaSuccess) {                                                       \
      std::printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e));       \
      std::exit(1);                                                               \
    }                                                                             \
  } while (0)

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__global__ void primary(float* parts, int n, unsigned long long* flags, unsigned long long epoch,
                        unsigned long long work_ns, int late, unsigned long long extra_ns,
                        int signal, unsigned long long* t_end) {
  extern __shared__ float pad[];  // one CTA per SM
  const unsigned long long t0 = global_ns();
  const unsigned long long spin = work_ns + (blockIdx.x < late ? extra_ns : 0);
  while (global_ns() - t0 < spin) {
  }
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  pad[threadIdx.x] = 0.f;
  for (int i = threadIdx.x * 4; i < n; i += blockDim.x * 4) {
    *reinterpret_cast<float4*>(parts + static_cast<size_t>(blockIdx.x) * n + i) =
        make_float4(blockIdx.x, i, pad[threadIdx.x], 1.f);
  }
  if (signal) {
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
      asm volatile("st.release.gpu.global.u64 [%0], %1;\n" ::"l"(flags + blockIdx.x), "l"(epoch)
                   : "memory");
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) t_end[blockIdx.x] = global_ns();
}

__device__ __forceinline__ unsigned long long load_acquire(const unsigned long long* p) {
  unsigned long long v;
  asm volatile("ld.acquire.gpu.global.u64 %0, [%1];\n" : "=l"(v) : "l"(p) : "memory");
  return v;
}

// mode 0: griddepcontrol.wait; 1: each thread polls the flags of its rows
// before loading them (no wait for the grid).
__global__ void dependent(const float* parts, int n, int nparts, const unsigned long long* flags,
                          unsigned long long epoch, int mode, float* out,
                          unsigned long long* t_ready, unsigned long long* t_done) {
  if (mode == 0) asm volatile("griddepcontrol.wait;\n" ::: "memory");
  const int col = (blockIdx.x * 32 + threadIdx.x) * 4;
  float4 s = make_float4(0, 0, 0, 0);
  for (int p = threadIdx.y; p < nparts; p += blockDim.y) {
    if (mode == 1) {
      while (load_acquire(flags + p) != epoch) __nanosleep(64);
    }
    if (threadIdx.x == 0 && p == threadIdx.y && threadIdx.y == 0) t_ready[blockIdx.x] = global_ns();
    if (col < n) {
      const float4 v = __ldcg(reinterpret_cast<const float4*>(parts + static_cast<size_t>(p) * n + col));
      s.x += v.x, s.y += v.y, s.z += v.z, s.w += v.w;
    }
  }
  __shared__ float4 sums[32][33];
  sums[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0) {
    float4 t = make_float4(0, 0, 0, 0);
    for (int y = 0; y < blockDim.y; ++y) {
      const float4 v = sums[y][threadIdx.x];
      t.x += v.x, t.y += v.y, t.z += v.z, t.w += v.w;
    }
    if (col < n) *reinterpret_cast<float4*>(out + col) = t;
  }
  __syncthreads();
  if (threadIdx.x == 0 && threadIdx.y == 0) t_done[blockIdx.x] = global_ns();
}

int main() {
  int sms = 0;
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const int n = 16384;  // columns (bf16 N = 16384: 66-132 partial rows)
  const size_t pad_smem = 200 * 1024;
  CHECK(cudaFuncSetAttribute(primary, cudaFuncAttributeMaxDynamicSharedMemorySize, pad_smem));
  float *parts, *out;
  unsigned long long *flags, *t_end, *t_ready, *t_done;
  CHECK(cudaMalloc(&parts, sizeof(float) * n * 2 * sms));
  CHECK(cudaMalloc(&out, sizeof(float) * n));
  CHECK(cudaMalloc(&flags, 8 * 2 * sms));
  CHECK(cudaMemset(flags, 0, 8 * 2 * sms));
  CHECK(cudaMalloc(&t_end, 8 * 2 * sms));
  const int dep_ctas = n / 128;
  CHECK(cudaMalloc(&t_ready, 8 * dep_ctas));
  CHECK(cudaMalloc(&t_done, 8 * dep_ctas));
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  unsigned long long epoch = 1;
  const char* names[] = {"griddepcontrol.wait (PDL)", "flags polled (PDL)", "stream order (no PDL)"};
  for (int grid : {sms, 2 * sms}) {
    for (int late : {0, 4}) {
      for (int mode : {0, 1, 2}) {
        const int nparts = grid;
        const int slices = std::min(32, nparts);
        std::vector<float> ms;
        std::vector<double> ready_after, done_after;
        for (int rep = 0; rep < 60; ++rep) {
          ++epoch;
          CHECK(cudaEventRecord(e0));
          primary<<<grid, 512, grid == sms ? pad_smem : pad_smem / 2 - 2048>>>(
              parts, n, flags, epoch, 100000, late, 4000, mode == 1, t_end);
          CHECK(cudaGetLastError());
          cudaLaunchConfig_t cfg{};
          cudaLaunchAttribute attr{};
          attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
          attr.val.programmaticStreamSerializationAllowed = 1;
          cfg.gridDim = dim3(dep_ctas);
          cfg.blockDim = dim3(32, slices);
          cfg.attrs = &attr;
          cfg.numAttrs = mode == 2 ? 0 : 1;
          CHECK(cudaLaunchKernelEx(&cfg, dependent, (const float*)parts, n, nparts,
                                   (const unsigned long long*)flags, epoch, mode == 1 ? 1 : 0,
                                   out, t_ready, t_done));
          CHECK(cudaEventRecord(e1));
          CHECK(cudaEventSynchronize(e1));
          float t = 0;
          CHECK(cudaEventElapsedTime(&t, e0, e1));
          std::vector<unsigned long long> te(grid), tr(dep_ctas), td(dep_ctas);
          CHECK(cudaMemcpy(te.data(), t_end, 8 * grid, cudaMemcpyDeviceToHost));
          CHECK(cudaMemcpy(tr.data(), t_ready, 8 * dep_ctas, cudaMemcpyDeviceToHost));
          CHECK(cudaMemcpy(td.data(), t_done, 8 * dep_ctas, cudaMemcpyDeviceToHost));
          if (rep < 10) continue;  // warm-up
          const double last_end = *std::max_element(te.begin(), te.end());
          ms.push_back(t);
          ready_after.push_back((*std::min_element(tr.begin(), tr.end()) - last_end) / 1e3);
          done_after.push_back((*std::max_element(td.begin(), td.end()) - last_end) / 1e3);
        }
        auto med = [](std::vector<double> v) {
          std::sort(v.begin(), v.end());
          return v[v.size() / 2];
        };
        std::vector<double> msd(ms.begin(), ms.end());
        std::printf(
            "grid %3d late %d  %-28s pair %.2f us  first dependent CTA ready %+.2f us, "
            "last done %+.2f us after the primary's last CTA\n",
            grid, late, names[mode], med(msd) * 1e3, med(ready_after), med(done_after));
      }
    }
  }
  return 0;
}
