// Forward launchers for double input (one translation unit per dtype,
// so the kernels compile in parallel).
#include "launch.cuh"
#include "launchers.h"

namespace fastlayernorm::cuda {
template void launch_forward<double, double>(const ForwardArgs&);
}  // namespace fastlayernorm::cuda
