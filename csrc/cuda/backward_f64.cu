// Backward launchers for double input (one translation unit per dtype,
// so the kernels compile in parallel).
#include "launch.cuh"
#include "launchers.h"

namespace fastlayernorm::cuda {
template void launch_backward<double, double>(const BackwardArgs&);
}  // namespace fastlayernorm::cuda
