// Problem sizes of a multi-scale deformable attention call, shared by the kernels.
#pragma once

#include <ATen/ATen.h>

namespace brainseg {
namespace msda {

struct Sizes {
  int64_t batch;       // N
  int64_t num_value;   // S = sum of H * W over levels
  int64_t num_heads;   // M
  int64_t channels;    // D, channels per head
  int64_t num_query;   // Lq
  int64_t num_levels;  // L
  int64_t num_points;  // P
};

// Reads the sizes from value (N, S, M, D) and sampling_locations (N, Lq, M, L, P, 2).
inline Sizes get_sizes(const at::Tensor& value, const at::Tensor& sampling_locations) {
  return Sizes{
      value.size(0),
      value.size(1),
      value.size(2),
      value.size(3),
      sampling_locations.size(1),
      sampling_locations.size(3),
      sampling_locations.size(4)};
}

}  // namespace msda
}  // namespace brainseg
