// CUDA kernels of multi-scale deformable attention. Inputs are validated by
// the dispatcher (ms_deform_attn.cpp): contiguous, on one CUDA device, one float dtype.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace brainseg {

at::Tensor ms_deform_attn_forward_cuda(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights);

std::vector<at::Tensor> ms_deform_attn_backward_cuda(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& grad_output);

}  // namespace brainseg
