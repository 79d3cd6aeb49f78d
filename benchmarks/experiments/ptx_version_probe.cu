// Which PTX version does the CUDA runtime report for a kernel built as
// compute_80 PTX only (JIT-compiled on a Hopper GPU), and for one with sm_90
// SASS? hopper_launch_features() (csrc/cuda/launch.cuh) relies on
// ptxVersion >= 90 exactly when the sm_90-only code paths exist.
//   nvcc -gencode arch=compute_80,code=compute_80 -o probe80ptx ptx_version_probe.cu
//   nvcc -gencode arch=compute_90,code=sm_90 -o probe90 ptx_version_probe.cu
//   nvcc -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 -o probe80_90 ptx_version_probe.cu
#include <cstdio>
#include <cuda_runtime.h>
__global__ void probe(int* out) {
#if defined(__CUDA_ARCH__)
  *out = __CUDA_ARCH__;
#endif
}
int main() {
  cudaFuncAttributes a{};
  if (cudaFuncGetAttributes(&a, probe) != cudaSuccess) { printf("no kernel image\n"); return 1; }
  int* d; int h = 0;
  cudaMalloc(&d, 4);
  probe<<<1, 1>>>(d);
  cudaMemcpy(&h, d, 4, cudaMemcpyDeviceToHost);
  printf("ptxVersion=%d binaryVersion=%d __CUDA_ARCH__=%d\n", a.ptxVersion, a.binaryVersion, h);
  return 0;
}
