// Backward launchers for c10::BFloat16 input (one translation unit per dtype,
// so the kernels compile in parallel).
#include "launch.cuh"
#include "launchers.h"

namespace fastlayernorm::cuda {
template void launch_backward<c10::BFloat16, c10::BFloat16>(const BackwardArgs&);
template void launch_backward<c10::BFloat16, float>(const BackwardArgs&);
template bool launch_backward_upcast<c10::BFloat16>(const BackwardArgs&);
}  // namespace fastlayernorm::cuda
