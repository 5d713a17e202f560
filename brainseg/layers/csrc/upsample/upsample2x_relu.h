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

namespace brainseg {

// x: (N, C, H, W) channels-last contiguous; skip: none, or (N, C, 2H, 2W) channels-last
// contiguous of x's dtype. Returns (N, C, 2H, 2W) channels-last.
at::Tensor upsample2x_relu_forward(const at::Tensor& x, const std::optional<at::Tensor>& skip);

// The gradient with respect to x of the forward's output, given x and grad_output
// ((N, C, 2H, 2W) channels-last contiguous, x's dtype). The gradient of skip is grad_output.
at::Tensor upsample2x_relu_backward(const at::Tensor& x, const at::Tensor& grad_output);

}  // namespace brainseg
