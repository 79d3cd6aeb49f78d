// Backward launchers for c10::Half input (one translation unit per dtype,
// so the kernels compile in parallel).
#include "launch.cuh"
#include "launchers.h"

namespace fastlayernorm::cuda {
template void launch_backward<c10::Half, c10::Half>(const BackwardArgs&);
template void launch_backward<c10::Half, float>(const BackwardArgs&);
template bool launch_backward_upcast<c10::Half>(const BackwardArgs&);
}  // namespace fastlayernorm::cuda
