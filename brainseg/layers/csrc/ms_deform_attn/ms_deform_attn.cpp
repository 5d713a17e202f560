// Input validation and device dispatch of multi-scale deformable attention.
// Every check raises a c10::Error (a RuntimeError in Python) naming the argument.
#include "ms_deform_attn/ms_deform_attn.h"

#include "ms_deform_attn/backends.h"

namespace brainseg {
namespace {

constexpr const char* kNoCuda =
    "ms_deform_attn: brainseg._C was built without CUDA (reinstall with FORCE_CUDA=1)";

void check_tensor(const at::Tensor& t, const char* name, int64_t dim, const at::Tensor& value) {
  TORCH_CHECK(t.defined(), "ms_deform_attn: ", name, " is undefined");
  TORCH_CHECK(
      t.dim() == dim, "ms_deform_attn: ", name, " must have ", dim, " dims, got shape ", t.sizes());
  TORCH_CHECK(
      t.device() == value.device(),
      "ms_deform_attn: ", name, " is on ", t.device(), " but value is on ", value.device());
  TORCH_CHECK(t.is_contiguous(), "ms_deform_attn: ", name, " must be contiguous");
}

// Checks everything the kernels rely on. Level geometry (positive sizes,
// level_start_index == exclusive cumsum, total == S) is checked for CPU tensors
// only: reading CUDA tensors back would synchronise the device on every call.
void check_inputs(const MSDeformAttnInputs& in) {
  const auto& [value, spatial_shapes, level_start_index, sampling_locations, attention_weights] = in;
  check_tensor(value, "value (N, S, M, D)", 4, value);
  check_tensor(spatial_shapes, "spatial_shapes (L, 2)", 2, value);
  check_tensor(level_start_index, "level_start_index (L,)", 1, value);
  check_tensor(sampling_locations, "sampling_locations (N, Lq, M, L, P, 2)", 6, value);
  check_tensor(attention_weights, "attention_weights (N, Lq, M, L, P)", 5, value);

  const auto dtype = value.scalar_type();
  TORCH_CHECK(
      dtype == at::kFloat || dtype == at::kDouble,
      "ms_deform_attn: value must be float32 or float64, got ", dtype);
  TORCH_CHECK(
      sampling_locations.scalar_type() == dtype && attention_weights.scalar_type() == dtype,
      "ms_deform_attn: value, sampling_locations and attention_weights must share one dtype, got ",
      dtype, ", ", sampling_locations.scalar_type(), ", ", attention_weights.scalar_type());
  TORCH_CHECK(
      spatial_shapes.scalar_type() == at::kLong,
      "ms_deform_attn: spatial_shapes must be int64, got ", spatial_shapes.scalar_type());
  TORCH_CHECK(
      level_start_index.scalar_type() == at::kLong,
      "ms_deform_attn: level_start_index must be int64, got ", level_start_index.scalar_type());

  const int64_t batch = value.size(0);
  const int64_t num_value = value.size(1);
  const int64_t num_heads = value.size(2);
  const int64_t num_levels = spatial_shapes.size(0);
  TORCH_CHECK(
      spatial_shapes.size(1) == 2,
      "ms_deform_attn: spatial_shapes must be (L, 2), got shape ", spatial_shapes.sizes());
  TORCH_CHECK(
      level_start_index.size(0) == num_levels,
      "ms_deform_attn: level_start_index must have L=", num_levels, " entries, got shape ",
      level_start_index.sizes());
  const auto loc = sampling_locations.sizes();
  TORCH_CHECK(
      loc[0] == batch && loc[2] == num_heads && loc[3] == num_levels && loc[5] == 2,
      "ms_deform_attn: sampling_locations must be (N=", batch, ", Lq, M=", num_heads, ", L=",
      num_levels, ", P, 2), got shape ", loc);
  const auto expected_weights = std::vector<int64_t>{loc[0], loc[1], loc[2], loc[3], loc[4]};
  TORCH_CHECK(
      attention_weights.sizes() == at::IntArrayRef(expected_weights),
      "ms_deform_attn: attention_weights must be ", at::IntArrayRef(expected_weights),
      " (N, Lq, M, L, P), got shape ", attention_weights.sizes());

  if (value.device().is_cpu()) {
    const int64_t* shapes = spatial_shapes.data_ptr<int64_t>();
    const int64_t* starts = level_start_index.data_ptr<int64_t>();
    int64_t total = 0;
    for (int64_t l = 0; l < num_levels; ++l) {
      TORCH_CHECK(
          shapes[2 * l] > 0 && shapes[2 * l + 1] > 0,
          "ms_deform_attn: spatial_shapes[", l, "] must be positive (H, W), got (", shapes[2 * l],
          ", ", shapes[2 * l + 1], ")");
      TORCH_CHECK(
          starts[l] == total,
          "ms_deform_attn: level_start_index[", l, "] is ", starts[l],
          " but the levels before it hold ", total, " positions");
      total += shapes[2 * l] * shapes[2 * l + 1];
    }
    TORCH_CHECK(
        total == num_value,
        "ms_deform_attn: spatial_shapes hold ", total, " positions but value has S=", num_value);
  }
}

}  // namespace

at::Tensor ms_deform_attn_forward(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  const MSDeformAttnInputs in{
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights};
  check_inputs(in);
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return ms_deform_attn_forward_cuda(in);
#else
    TORCH_CHECK(false, kNoCuda);
#endif
  }
  TORCH_CHECK(value.device().is_cpu(), "ms_deform_attn: unsupported device ", value.device());
  return ms_deform_attn_forward_cpu(in);
}

std::vector<at::Tensor> ms_deform_attn_backward(
    const at::Tensor& value,
    const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights,
    const at::Tensor& grad_output) {
  const MSDeformAttnInputs in{
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights};
  check_inputs(in);
  const auto loc = sampling_locations.sizes();
  const auto expected = std::vector<int64_t>{loc[0], loc[1], value.size(2) * value.size(3)};
  TORCH_CHECK(
      grad_output.defined() && grad_output.sizes() == at::IntArrayRef(expected),
      "ms_deform_attn: grad_output must be ", at::IntArrayRef(expected), " (N, Lq, M * D)");
  TORCH_CHECK(
      grad_output.scalar_type() == value.scalar_type() && grad_output.device() == value.device() &&
          grad_output.is_contiguous(),
      "ms_deform_attn: grad_output must be a contiguous ", value.scalar_type(), " tensor on ",
      value.device());
  if (value.is_cuda()) {
#ifdef WITH_CUDA
    return ms_deform_attn_backward_cuda(in, grad_output);
#else
    TORCH_CHECK(false, kNoCuda);
#endif
  }
  TORCH_CHECK(value.device().is_cpu(), "ms_deform_attn: unsupported device ", value.device());
  return ms_deform_attn_backward_cpu(in, grad_output);
}

bool ms_deform_attn_has_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace brainseg
