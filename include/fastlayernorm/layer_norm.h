// fastlayernorm C++ API, everything:
//   fastlayernorm::layer_norm(input, normalized_shape, weight, bias, eps,
//                             memory_efficient)        <fastlayernorm/functional.h>
//   fastlayernorm::LayerNorm / LayerNormOptions         <fastlayernorm/modules.h>
//
// Linking the library fastlayernorm (CMake: fastlayernorm::fastlayernorm)
// registers the operators torch.ops.fastlayernorm.* with the dispatcher, so
// TorchScript models saved from Python that call them load and run too.
#pragma once

#include <fastlayernorm/functional.h>
#include <fastlayernorm/modules.h>
