// Fused 2x2 max pooling (stride 2, no padding, floor mode) + ReLU, the encoder step of UNeXt's conv
// stages:
//
//   out = relu(max_pool2d(x, 2))
//
// on channels-last (N, H, W, C memory order) CPU tensors; float, double, bfloat16 and half. The
// forward can also return, per output element, a one-byte code saying which of the four inputs the
// gradient flows to (0..3 in row-major order within the window; 4: none, where the maximum is
// <= 0), all the backward needs: PyTorch's max pooling keeps an int64 index per output instead.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace brainseg {

// x: (N, C, H, W) channels-last contiguous. Returns [out (N, C, H/2, W/2) channels-last, code
// (N, C, H/2, W/2) uint8 channels-last, or an empty tensor when with_code is false].
// With scale and shift ((C,) each) it pools y = scale * x + shift (a batch norm's affine map,
// y rounded to x's dtype) without storing y.
std::vector<at::Tensor> max_pool2x2_relu_forward(
    const at::Tensor& x, bool with_code, const std::optional<at::Tensor>& scale = std::nullopt,
    const std::optional<at::Tensor>& shift = std::nullopt);

// Per-channel mean and biased variance (float64 (C,) each) of a channels-last x over (N, H, W):
// the batch statistics of a batch norm, in one pass (sums of x - x[0, c, 0, 0] and of its square,
// rows in the arithmetic type, added up in double).
std::vector<at::Tensor> channels_last_mean_var(const at::Tensor& x);

// The gradient with respect to x: grad_output (N, C, H/2, W/2) channels-last in x's dtype and the
// forward's code; input_size is x's (H, W).
at::Tensor max_pool2x2_relu_backward(const at::Tensor& grad_output, const at::Tensor& code, int64_t height, int64_t width);

// The gradients of relu(max_pool2d(batch_norm(x), 2)) with batch statistics (training mode), where
// code is the forward's on the norm's output y: [grad_x (x's dtype, channels-last), grad_weight,
// grad_bias (C, float64)], without forming the gradient of y. mean and invstd are the batch's (as
// at::native_batch_norm returns them), weight the norm's (none: 1). Two passes: the per-channel
// sums over the pooled outputs, then one over x writing grad_x.
std::vector<at::Tensor> batch_norm_max_pool2x2_relu_backward(
    const at::Tensor& grad_output, const at::Tensor& code, const at::Tensor& x, const at::Tensor& mean,
    const at::Tensor& invstd, const std::optional<at::Tensor>& weight);

}  // namespace brainseg
