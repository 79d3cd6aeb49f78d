// Forward launchers for c10::Half input (one translation unit per dtype,
// so the kernels compile in parallel).
#include "launch.cuh"
#include "launchers.h"

namespace fastlayernorm::cuda {
template void launch_forward<c10::Half, c10::Half>(const ForwardArgs&);
template void launch_forward<c10::Half, float>(const ForwardArgs&);
template bool launch_forward_upcast<c10::Half>(const ForwardArgs&);
}  // namespace fastlayernorm::cuda
