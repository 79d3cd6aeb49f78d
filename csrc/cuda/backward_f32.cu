// Backward launchers for float input (one translation unit per dtype,
// so the kernels compile in parallel).
#include "launch.cuh"
#include "launchers.h"

namespace fastlayernorm::cuda {
template void launch_backward<float, float>(const BackwardArgs&);
}  // namespace fastlayernorm::cuda
