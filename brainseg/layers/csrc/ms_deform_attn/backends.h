// Per-device kernels of multi-scale deformable attention. Inputs are validated by
// the dispatcher (ms_deform_attn.cpp): contiguous, on one device, one float dtype.
// They return what the public functions in ms_deform_attn.h return.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace brainseg {

// The op's inputs, shaped as documented in ms_deform_attn.h.
struct MSDeformAttnInputs {
  at::Tensor value;
  at::Tensor spatial_shapes;
  at::Tensor level_start_index;
  at::Tensor sampling_locations;
  at::Tensor attention_weights;
};

at::Tensor ms_deform_attn_forward_cpu(const MSDeformAttnInputs& in);
// The instruction set the CPU kernels (forward and backward) run: "avx512", "avx2" or "default".
std::string ms_deform_attn_cpu_isa();
std::vector<at::Tensor> ms_deform_attn_backward_cpu(
    const MSDeformAttnInputs& in,
    const at::Tensor& grad_output);

#ifdef WITH_CUDA
at::Tensor ms_deform_attn_forward_cuda(const MSDeformAttnInputs& in);
std::vector<at::Tensor> ms_deform_attn_backward_cuda(
    const MSDeformAttnInputs& in,
    const at::Tensor& grad_output);
#endif

}  // namespace brainseg
