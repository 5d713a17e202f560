// Bilinear sampling geometry shared by the CPU and CUDA kernels of
// multi-scale deformable attention.
//
// Convention: a normalised location (x, y) in [0, 1] maps to pixel coordinates
// (x * W - 0.5, y * H - 0.5), i.e. pixel centres sit at (i + 0.5) / W
// (grid_sample's align_corners=False). Corners outside the map read zeros.
#pragma once

#include <math.h>

#include <cstdint>

#if defined(__CUDACC__)
#define BRAINSEG_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define BRAINSEG_HOST_DEVICE inline
#endif

namespace brainseg {
namespace msda {

BRAINSEG_HOST_DEVICE float floor_value(float v) {
  return floorf(v);
}

BRAINSEG_HOST_DEVICE double floor_value(double v) {
  return floor(v);
}

// The four neighbours of a sampling point, in the order
// (y0, x0), (y0, x1), (y1, x0), (y1, x1) with x1 = x0 + 1, y1 = y0 + 1.
template <typename scalar_t>
struct BilinearCorners {
  int64_t index[4];    // y * W + x inside the level, or -1 when outside the map
  scalar_t weight[4];  // bilinear weights (they sum to 1)
  scalar_t fx;         // x - x0, fractional part used by the location gradient
  scalar_t fy;         // y - y0
};

// Fills `c` for the normalised location (loc_x, loc_y) on a height x width map.
// Returns false when no corner lies inside the map (the sample is zero and so are
// its gradients); non-finite locations also return false.
template <typename scalar_t>
BRAINSEG_HOST_DEVICE bool bilinear_corners(
    scalar_t loc_x,
    scalar_t loc_y,
    int64_t height,
    int64_t width,
    BilinearCorners<scalar_t>& c) {
  const scalar_t half = static_cast<scalar_t>(0.5);
  const scalar_t x = loc_x * static_cast<scalar_t>(width) - half;
  const scalar_t y = loc_y * static_cast<scalar_t>(height) - half;
  // Written so that NaN fails the test.
  if (!(x >= scalar_t(-1) && x < static_cast<scalar_t>(width) && y >= scalar_t(-1) &&
        y < static_cast<scalar_t>(height))) {
    return false;
  }
  const scalar_t x0f = floor_value(x);
  const scalar_t y0f = floor_value(y);
  const int64_t x0 = static_cast<int64_t>(x0f);
  const int64_t y0 = static_cast<int64_t>(y0f);
  c.fx = x - x0f;
  c.fy = y - y0f;
  const scalar_t one = scalar_t(1);
  c.weight[0] = (one - c.fy) * (one - c.fx);
  c.weight[1] = (one - c.fy) * c.fx;
  c.weight[2] = c.fy * (one - c.fx);
  c.weight[3] = c.fy * c.fx;
  const bool x0_in = x0 >= 0;
  const bool x1_in = x0 + 1 < width;
  const bool y0_in = y0 >= 0;
  const bool y1_in = y0 + 1 < height;
  c.index[0] = (y0_in && x0_in) ? y0 * width + x0 : -1;
  c.index[1] = (y0_in && x1_in) ? y0 * width + x0 + 1 : -1;
  c.index[2] = (y1_in && x0_in) ? (y0 + 1) * width + x0 : -1;
  c.index[3] = (y1_in && x1_in) ? (y0 + 1) * width + x0 + 1 : -1;
  return true;
}

// Gradient of the sample with respect to the pixel coordinates (x, y), given
// t[k] = <upstream gradient, value at corner k> (0 for corners outside the map).
template <typename scalar_t>
BRAINSEG_HOST_DEVICE void bilinear_coordinate_grad(
    const BilinearCorners<scalar_t>& c,
    const scalar_t t[4],
    scalar_t& grad_x,
    scalar_t& grad_y) {
  const scalar_t one = scalar_t(1);
  grad_x = (one - c.fy) * (t[1] - t[0]) + c.fy * (t[3] - t[2]);
  grad_y = (one - c.fx) * (t[2] - t[0]) + c.fx * (t[3] - t[1]);
}

}  // namespace msda
}  // namespace brainseg
