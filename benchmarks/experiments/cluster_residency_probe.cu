// How many thread-block clusters of each size are resident on the GPU at
// once (cudaOccupancyMaxActiveClusters), at 1, 2 and 4 CTAs per SM (set by
// the dynamic shared memory each CTA asks for): what the GPC layout leaves
// to the forward and backward kernels that split a row over a cluster. A
// cluster's CTAs must share one GPC, so SMs of a GPC beyond a multiple of
// the cluster size hold none of its CTAs.
//
//   nvcc -O3 -arch=sm_90 -o cluster_probe cluster_residency_probe.cu && ./cluster_probe
//
// The lent H200 (session 27, `cluster-residency-probe-h200-v34.txt`): at one
// CTA per SM clusters of 2 fill all 132 SMs, of 4 and 8 only 120, of 16 only
// 112 (7 clusters).
#include <cstdio>
#include <cuda_runtime.h>
__global__ void k(int* p) { extern __shared__ int s[]; if (p) p[threadIdx.x] = s[0]; }
int main() {
  cudaDeviceProp prop; cudaGetDeviceProperties(&prop, 0);
  printf("%s SMs %d smem/SM %zu\n", prop.name, prop.multiProcessorCount, prop.sharedMemPerMultiprocessor);
  cudaFuncSetAttribute(k, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024);
  for (int per_sm : {1, 2, 4}) {
    size_t smem = (per_sm == 1 ? 150 : per_sm == 2 ? 100 : 50) * 1024;
    for (int cl : {1, 2, 4, 8, 16}) {
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = dim3(cl); cfg.blockDim = dim3(256); cfg.dynamicSmemBytes = smem;
      cudaLaunchAttribute a; a.id = cudaLaunchAttributeClusterDimension;
      a.val.clusterDim.x = cl; a.val.clusterDim.y = 1; a.val.clusterDim.z = 1;
      cfg.attrs = &a; cfg.numAttrs = 1;
      int n = 0; cudaError_t e = cudaOccupancyMaxActiveClusters(&n, k, &cfg);
      printf("ctas/SM %d cluster %2d: %3d clusters (%3d CTAs) %s\n", per_sm, cl, n, n * cl, cudaGetErrorString(e));
    }
  }
}
