// 3x3 convolution (stride 1, zero padding 1, no dilation, one group) by Winograd's minimal
// filtering algorithm F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural
// Networks", CVPR 2016), for inference on channels-last float32 CPU tensors:
//
//   out = conv2d(x, weight, bias, padding=1)                      (pool = false)
//   out = relu(max_pool2d(conv2d(x, weight, bias, padding=1), 2))  (pool = true)
//
// Each 4x4 output tile costs 36 multiplications per (input, output channel) pair instead of 144:
// its 6x6 input patch and the 3x3 filter are taken to a 6x6 "Winograd domain", multiplied there
// point by point (36 matrix products over the channels, done in cache-sized blocks of tiles) and
// taken back. The transforms add and scale values, so results equal the direct convolution's up to
// float rounding (a few units in the last place of the largest terms), not bit for bit. With pool,
// each tile's 2x2 windows are pooled before anything is stored (the full-resolution output never is).
#pragma once

#include <ATen/ATen.h>

namespace brainseg {

// The filter in the Winograd domain, U = G g G^T (computed in float64): weight (Cout, Cin, 3, 3)
// -> float32 (36, Cin, Cout), both channel counts rounded up to whole vectors of 16 with zeros.
// Computed once per filter and kept (it is what winograd_conv3x3_forward multiplies by).
at::Tensor winograd_conv3x3_weight(const at::Tensor& weight);

// x: (N, Cin, H, W) channels-last contiguous float32; weight: winograd_conv3x3_weight of the
// (Cout, Cin, 3, 3) filter; bias: float32 (Cout,). Returns (N, Cout, H, W), or (N, Cout, H/2, W/2)
// with pool, channels-last float32.
at::Tensor winograd_conv3x3_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, bool pool);

}  // namespace brainseg
