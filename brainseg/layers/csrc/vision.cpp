// Python bindings of brainseg._C.
#include <torch/extension.h>

#include "ms_deform_attn/backends.h"
#include "ms_deform_attn/ms_deform_attn.h"

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
}
