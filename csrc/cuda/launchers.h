// The per-dtype launchers, instantiated in forward_*.cu / backward_*.cu
// (one translation unit per dtype, so the kernels compile in parallel).
#pragma once

#include "../layer_norm.h"

namespace fastlayernorm::cuda {

// T: input/output dtype; W: weight/bias dtype (T, or float for half/bf16).
template <typename T, typename W>
void launch_forward(const ForwardArgs& args);

template <typename T, typename W>
void launch_backward(const BackwardArgs& args);

}  // namespace fastlayernorm::cuda
