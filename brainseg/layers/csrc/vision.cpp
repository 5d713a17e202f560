// Python bindings of brainseg._C.
#include <torch/extension.h>

#include "conv/winograd_conv3x3.h"
#include "ms_deform_attn/backends.h"
#include "ms_deform_attn/ms_deform_attn.h"
#include "pooling/conv3x3_max_pool2x2_relu.h"
#include "pooling/max_pool2x2_relu.h"
#include "upsample/upsample2x_relu.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "brainseg C++/CUDA kernels";
  m.def(
      "ms_deform_attn_forward",
      &brainseg::ms_deform_attn_forward,
      "Multi-scale deformable attention forward -> (N, Lq, M * D)",
      py::arg("value"),
      py::arg("spatial_shapes"),
      py::arg("level_start_index"),
      py::arg("sampling_locations"),
      py::arg("attention_weights"));
  m.def(
      "ms_deform_attn_backward",
      &brainseg::ms_deform_attn_backward,
      "Multi-scale deformable attention backward -> [grad_value, grad_locations, grad_weights]",
      py::arg("value"),
      py::arg("spatial_shapes"),
      py::arg("level_start_index"),
      py::arg("sampling_locations"),
      py::arg("attention_weights"),
      py::arg("grad_output"));
  m.def(
      "ms_deform_attn_cpu_isa",
      &brainseg::ms_deform_attn_cpu_isa,
      "Instruction set of the CPU kernels (forward and backward): 'avx512', 'avx2' or 'default' (follows ATEN_CPU_CAPABILITY)");
  m.def(
      "ms_deform_attn_has_cuda",
      &brainseg::ms_deform_attn_has_cuda,
      "True when the CUDA kernels were compiled in");
  m.def(
      "upsample2x_relu_forward",
      &brainseg::upsample2x_relu_forward,
      "relu(2x bilinear upsampling of x, align_corners=False) [+ skip], channels-last CPU tensors",
      py::arg("x"),
      py::arg("skip") = py::none());
  m.def(
      "upsample2x_relu_backward",
      &brainseg::upsample2x_relu_backward,
      "Gradient of upsample2x_relu_forward with respect to x",
      py::arg("x"),
      py::arg("grad_output"));
  m.def(
      "upsample2x_relu_conv1x1_forward",
      &brainseg::upsample2x_relu_conv1x1_forward,
      "conv2d(relu(2x bilinear upsampling of x), weight (K, C), bias (K,)), channels-last CPU tensors",
      py::arg("x"),
      py::arg("weight"),
      py::arg("bias"));
  m.def(
      "upsample2x_relu_conv1x1_backward",
      &brainseg::upsample2x_relu_conv1x1_backward,
      "Gradients of upsample2x_relu_conv1x1_forward -> [grad_x, grad_weight (K, C) float64]",
      py::arg("x"),
      py::arg("weight"),
      py::arg("grad_output"));
  m.def(
      "max_pool2x2_relu_forward",
      &brainseg::max_pool2x2_relu_forward,
      "relu(max_pool2d(x [* scale + shift], 2)) of a channels-last CPU tensor -> [out, uint8 gradient code or empty]",
      py::arg("x"),
      py::arg("with_code"),
      py::arg("scale") = py::none(),
      py::arg("shift") = py::none());
  m.def(
      "channels_last_mean_var",
      &brainseg::channels_last_mean_var,
      "Per-channel mean and biased variance (float64) of a channels-last CPU tensor",
      py::arg("x"));
  m.def(
      "max_pool2x2_relu_backward",
      &brainseg::max_pool2x2_relu_backward,
      "Gradient of max_pool2x2_relu_forward with respect to x",
      py::arg("grad_output"),
      py::arg("code"),
      py::arg("height"),
      py::arg("width"));
  m.def(
      "batch_norm_max_pool2x2_relu_backward",
      &brainseg::batch_norm_max_pool2x2_relu_backward,
      "Gradients of relu(max_pool2d(batch_norm(x), 2)) in training mode -> [grad_x, grad_weight, grad_bias]",
      py::arg("grad_output"),
      py::arg("code"),
      py::arg("x"),
      py::arg("mean"),
      py::arg("invstd"),
      py::arg("weight") = py::none());
  m.def(
      "conv3x3_max_pool2x2_relu_forward",
      &brainseg::conv3x3_max_pool2x2_relu_forward,
      "relu(max_pool2d(conv2d(x, weight, bias, padding=1), 2)) of a channels-last CPU tensor (inference)",
      py::arg("x"),
      py::arg("weight"),
      py::arg("bias"));
  m.def(
      "winograd_conv3x3_weight",
      &brainseg::winograd_conv3x3_weight,
      "(Cout, Cin, 3, 3) filter -> float32 (36, Cin, Cout) Winograd F(4x4, 3x3) transform, channels padded to 16",
      py::arg("weight"));
  m.def(
      "winograd_conv3x3_forward",
      &brainseg::winograd_conv3x3_forward,
      "conv2d(x, weight, bias, padding=1), or with pool relu(max_pool2d(..., 2)), of a channels-last float32 CPU "
      "tensor by Winograd F(4x4, 3x3) (inference)",
      py::arg("x"),
      py::arg("weight"),
      py::arg("bias"),
      py::arg("pool") = false);
}
