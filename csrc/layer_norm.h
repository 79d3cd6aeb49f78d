// Internal declarations shared by the backends of fastlayernorm.
//
// Every operator is defined once in registration.cpp; each backend folder
// (cpu/, cuda/, meta/, autograd/, autocast/) adds its implementations with
// TORCH_LIBRARY_IMPL. The argument checks live in checks.cpp so that every
// backend (Meta included) rejects bad input with the same message.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymIntArrayRef.h>
#include <c10/util/Optional.h>

#include <array>
#include <tuple>

namespace fastlayernorm {

using at::Tensor;
using TensorTriple = std::tuple<Tensor, Tensor, Tensor>;
using TensorPair = std::tuple<Tensor, Tensor>;

// 16-bit floating inputs: they may come with float32 weight and bias, and
// autocast gives them a float32 output.
inline bool is_half_or_bfloat16(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16;
}
// An optional parameter that is float32 or absent.
inline bool is_float32_or_absent(const std::optional<Tensor>& t) {
  return !t.has_value() || !t->defined() || t->scalar_type() == at::kFloat;
}

// The input seen as a matrix of `rows` x `cols`: `cols` is the product of
// normalized_shape, `rows` the product of the leading dimensions.
struct RowShape {
  int64_t rows;
  int64_t cols;
};

// Checks the forward arguments (shapes, dtypes, devices, eps) and returns the
// row shape. Throws c10::Error / c10::ValueError naming the bad argument.
RowShape check_forward_args(const Tensor& input,
                            c10::IntArrayRef normalized_shape,
                            const std::optional<Tensor>& weight,
                            const std::optional<Tensor>& bias, double eps);

// The same checks for symbolic shapes (Meta / fake tensors): no row shape.
void check_forward_args_symbolic(const Tensor& input,
                                 c10::SymIntArrayRef normalized_shape,
                                 const std::optional<Tensor>& weight,
                                 const std::optional<Tensor>& bias, double eps);

// Checks the backward arguments. `input` is the saved input (or the saved
// output when the backward rebuilds from the output).
// With float_grad_ok, a float32 grad_out is accepted for half/bfloat16 input
// (the backward of the autocast path, whose output is float32).
void check_backward_args(const Tensor& grad_out, const Tensor& input,
                         c10::SymIntArrayRef normalized_shape,
                         const std::optional<Tensor>& mean, const Tensor& rstd,
                         const std::optional<Tensor>& weight,
                         const std::optional<Tensor>& bias,
                         bool float_grad_ok = false);

// dtype of the saved mean/rstd: float64 for float64 input, else float32.
c10::ScalarType stats_dtype(c10::ScalarType input_dtype);

// Shape of mean/rstd, as in aten::native_layer_norm: the input's shape with
// the normalized dimensions set to 1.
c10::SymDimVector stats_shape(const Tensor& input, int64_t normalized_ndim);

// The forward's statistics, allocated as one tensor of (mean, rstd) pairs:
// the stats shape with a trailing dimension of 2, contiguous, so that a row's
// two values are adjacent (the CUDA kernels store a row's pair with one
// 8-byte store: docs/kernels.md session 30). mean and rstd are its two
// columns (views of stride 2). fastlayernorm::_layer_norm_fwd_pairs returns
// the pairs (layer_norm's autograd node saves them); layer_norm_fwd returns
// mean and rstd as tensors of their own, as aten::native_layer_norm does.
Tensor empty_stats_pairs(const Tensor& input, int64_t normalized_ndim);
std::pair<Tensor, Tensor> mean_and_rstd_of(const Tensor& stats_pairs);
// (output, stats pairs) -> (output, mean, rstd), mean and rstd contiguous
// copies of the pairs' columns (undefined without statistics).
TensorTriple with_separate_stats(const TensorPair& output_and_pairs);

// Row shape of concrete tensors (after the checks passed).
RowShape row_shape(const Tensor& input, int64_t normalized_ndim);

}  // namespace fastlayernorm

namespace fastlayernorm {

// What a backend kernel receives: contiguous tensors viewed as rows x cols,
// outputs already allocated. Absent weight/bias/outputs are undefined Tensors.
struct ForwardArgs {
  Tensor input, weight, bias;
  int64_t rows, cols;
  double eps;
  Tensor output;
  // rows x 2: each row's (mean, rstd) pair (empty_stats_pairs); undefined
  // when the statistics are not stored.
  Tensor stats;
};

// With from_output, `input` holds the forward's output and the pairs' means
// are not read: the kernel rebuilds x_hat = (output - bias) / weight.
struct BackwardArgs {
  Tensor grad_out, input;
  Tensor stats;  // rows x 2: each row's (mean, rstd) pair
  Tensor weight, bias;
  int64_t rows, cols;
  bool from_output;
  Tensor grad_input, grad_weight, grad_bias;
};

using ForwardKernel = void (*)(const ForwardArgs&);
using BackwardKernel = void (*)(const BackwardArgs&);

// The operator bodies shared by the CPU and CUDA backends: check the
// arguments, make inputs contiguous, allocate the outputs, call the kernel.
// output_dtype: the output's dtype when not the input's (the autocast path's
// float32). with_stats false: mean and rstd are neither allocated nor
// stored (undefined in ForwardArgs and in the result), for a forward no
// backward follows. run_forward returns (output, stats pairs), the pairs of
// empty_stats_pairs. float_grad_ok: as in check_backward_args. The backward
// reads mean and rstd in place when they are the two columns of such pairs
// (the columns of the pairs layer_norm's autograd node saves), else from
// pairs copied from them.
TensorPair run_forward(const Tensor& input, c10::SymIntArrayRef normalized_shape,
                       const std::optional<Tensor>& weight,
                       const std::optional<Tensor>& bias, double eps, ForwardKernel kernel,
                       std::optional<c10::ScalarType> output_dtype = std::nullopt,
                       bool with_stats = true);

TensorTriple run_backward(const Tensor& grad_out, const Tensor& input,
                          c10::SymIntArrayRef normalized_shape,
                          const std::optional<Tensor>& mean, const Tensor& rstd,
                          const std::optional<Tensor>& weight,
                          const std::optional<Tensor>& bias,
                          std::array<bool, 3> output_mask, BackwardKernel kernel,
                          bool float_grad_ok = false);

}  // namespace fastlayernorm
