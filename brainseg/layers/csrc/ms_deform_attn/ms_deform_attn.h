// Multi-scale deformable attention: device-dispatching entry points.
//
// Shapes (Deformable-DETR convention):
//   value               (N, S, M, D)       float32/float64
//   spatial_shapes      (L, 2)             int64, (H, W) per level, sum(H * W) == S
//   level_start_index   (L,)               int64, exclusive cumsum of H * W
//   sampling_locations  (N, Lq, M, L, P, 2) normalised (x, y)
//   attention_weights   (N, Lq, M, L, P)
//   output              (N, Lq, M * D)
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace brainseg {

at::Tensor ms_deform_attn_forward(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights);

// Returns {grad_value, grad_sampling_locations, grad_attention_weights}.
std::vector<at::Tensor> ms_deform_attn_backward(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& grad_output);

// True when the extension was compiled with the CUDA kernels.
bool ms_deform_attn_has_cuda();

}  // namespace brainseg
