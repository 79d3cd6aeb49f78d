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

// Autocast's float32 path for half/bfloat16 input (float32 output and grad,
// float32 or no weight/bias) without widening the input; false when no
// register kernel takes the rows.
template <typename T>
bool launch_forward_upcast(const ForwardArgs& args);
template <typename T>
bool launch_backward_upcast(const BackwardArgs& args);

}  // namespace fastlayernorm::cuda
