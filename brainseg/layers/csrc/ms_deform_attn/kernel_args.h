// Sizes and raw pointers of one multi-scale deformable attention call, shared by
// the CPU and CUDA kernels (plain structs: CUDA kernels take them by value).
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "ms_deform_attn/backends.h"

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

template <typename scalar_t>
struct ForwardArgs {
  Sizes s;
  const scalar_t* value;               // (N, S, M, D)
  const int64_t* spatial_shapes;       // (L, 2)
  const int64_t* level_start_index;    // (L,)
  const scalar_t* sampling_locations;  // (N, Lq, M, L, P, 2)
  const scalar_t* attention_weights;   // (N, Lq, M, L, P)
};

template <typename scalar_t>
struct BackwardArgs {
  const scalar_t* grad_output;  // (N, Lq, M * D)
  scalar_t* grad_value;         // like value, zero-initialised
  scalar_t* grad_locations;     // like sampling_locations, zero-initialised
  scalar_t* grad_weights;       // like attention_weights, zero-initialised
};

template <typename scalar_t>
ForwardArgs<scalar_t> forward_args(const MSDeformAttnInputs& in) {
  const Sizes s{
      in.value.size(0),
      in.value.size(1),
      in.value.size(2),
      in.value.size(3),
      in.sampling_locations.size(1),
      in.sampling_locations.size(3),
      in.sampling_locations.size(4)};
  return ForwardArgs<scalar_t>{
      s,
      in.value.const_data_ptr<scalar_t>(),
      in.spatial_shapes.const_data_ptr<int64_t>(),
      in.level_start_index.const_data_ptr<int64_t>(),
      in.sampling_locations.const_data_ptr<scalar_t>(),
      in.attention_weights.const_data_ptr<scalar_t>()};
}

// An uninitialised (N, Lq, M * D) output.
inline at::Tensor empty_output(const MSDeformAttnInputs& in) {
  const auto& value = in.value;
  return at::empty(
      {value.size(0), in.sampling_locations.size(1), value.size(2) * value.size(3)}, value.options());
}

// Zero-initialised {grad_value, grad_locations, grad_weights}.
inline std::vector<at::Tensor> zero_gradients(const MSDeformAttnInputs& in) {
  return {
      at::zeros_like(in.value),
      at::zeros_like(in.sampling_locations),
      at::zeros_like(in.attention_weights)};
}

template <typename scalar_t>
BackwardArgs<scalar_t> backward_args(const at::Tensor& grad_output, std::vector<at::Tensor>& grads) {
  return BackwardArgs<scalar_t>{
      grad_output.const_data_ptr<scalar_t>(),
      grads[0].mutable_data_ptr<scalar_t>(),
      grads[1].mutable_data_ptr<scalar_t>(),
      grads[2].mutable_data_ptr<scalar_t>()};
}

}  // namespace msda
}  // namespace brainseg
