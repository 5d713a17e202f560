// Fused 2x bilinear upsampling + ReLU (+ skip), the decoder step of UNeXt-style nets:
//
//   out = relu(interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)) [+ skip]
//
// computed in one pass over channels-last (N, H, W, C memory order) tensors, without the
// upsampled intermediate, and its gradient with respect to x. CPU only; float, double, bfloat16
// and half (bf16/half arithmetic in float, rounded once).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace brainseg {

// x: (N, C, H, W) channels-last contiguous; skip: none, or (N, C, 2H, 2W) channels-last
// contiguous of x's dtype. Returns (N, C, 2H, 2W) channels-last.
at::Tensor upsample2x_relu_forward(const at::Tensor& x, const std::optional<at::Tensor>& skip);

// The gradient with respect to x of the forward's output, given x and grad_output
// ((N, C, 2H, 2W) channels-last contiguous, x's dtype). The gradient of skip is grad_output.
at::Tensor upsample2x_relu_backward(const at::Tensor& x, const at::Tensor& grad_output);

// The same followed by a 1x1 convolution, without storing the upsampled tensor (UNeXt's head):
//
//   out = conv2d(relu(interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)), weight, bias)
//
// weight: (K, C), bias: (K,), any floating dtype (used in x's arithmetic type). Returns
// (N, K, 2H, 2W) channels-last of x's dtype.
at::Tensor upsample2x_relu_conv1x1_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// Gradients of upsample2x_relu_conv1x1_forward given grad_output ((N, K, 2H, 2W) channels-last,
// x's dtype): [grad_x (x's dtype and shape), grad_weight ((K, C) float64)]. The bias gradient is
// grad_output summed over (N, 2H, 2W).
std::vector<at::Tensor> upsample2x_relu_conv1x1_backward(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& grad_output);

}  // namespace brainseg
