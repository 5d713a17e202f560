// Fused 3x3 convolution (stride 1, zero padding 1) + 2x2 max pooling + ReLU, for inference:
//
//   out = relu(max_pool2d(conv2d(x, weight, bias, padding=1), 2))
//
// computed per pooled output from the input in registers, so the full-resolution convolution
// output is never stored. Meant for convolutions with few input channels (an image's first layer:
// 3 input channels, 16 outputs at 256x256 in UNeXt), where a direct convolution is cheap and the
// stored output is what costs. Channels-last CPU tensors; float, double, bfloat16 and half
// (arithmetic in float for the 16-bit types, rounded once).
#pragma once

#include <ATen/ATen.h>

namespace brainseg {

// x: (N, Cin, H, W) channels-last contiguous; weight: (Cout, Cin, 3, 3); bias: (Cout,) (any
// floating dtypes; used in x's arithmetic type). Returns (N, Cout, H/2, W/2) channels-last, x's dtype.
at::Tensor conv3x3_max_pool2x2_relu_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

}  // namespace brainseg
