// Forward launchers for c10::BFloat16 input (one translation unit per dtype,
// so the kernels compile in parallel).
#include "launch.cuh"
#include "launchers.h"

namespace fastlayernorm::cuda {
template void launch_forward<c10::BFloat16, c10::BFloat16>(const ForwardArgs&);
template void launch_forward<c10::BFloat16, float>(const ForwardArgs&);
template bool launch_forward_upcast<c10::BFloat16>(const ForwardArgs&);
}  // namespace fastlayernorm::cuda
