// CUDA kernels of multi-scale deformable attention.
//
// NOTE: these kernels are compiled in this project's CI (tools/check_cuda_build.py)
// but have never been run on a GPU there (no GPU available). The sampling geometry
// they use (bilinear.h) is shared with, and tested through, the CPU kernels.
//
// Forward: one thread per output element (n, q, m, d); consecutive threads read
// consecutive channels of a value row (coalesced) and loop over levels x points.
// Backward: one thread per sample (n, q, m, l, p), looping over the D channels. Each
// thread owns its grad_locations / grad_weights entries (plain stores); grad_value
// rows are shared between samples and accumulated with atomicAdd.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

#include "ms_deform_attn/backends.h"
#include "ms_deform_attn/bilinear.h"
#include "ms_deform_attn/kernel_args.h"

namespace brainseg {
namespace {

using msda::BilinearCorners;
using msda::bilinear_coordinate_grad;
using msda::bilinear_corners;
using msda::BackwardArgs;
using msda::ForwardArgs;

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

int64_t num_blocks(int64_t total) {
  return std::min<int64_t>((total + kThreads - 1) / kThreads, kMaxBlocks);
}

template <typename scalar_t>
__global__ void forward_kernel(const ForwardArgs<scalar_t> args, scalar_t* __restrict__ output) {
  const msda::Sizes& s = args.s;
  const int64_t total = s.batch * s.num_query * s.num_heads * s.channels;
  const int64_t row_stride = s.num_heads * s.channels;
  const int64_t samples_per_task = s.num_levels * s.num_points;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t d = i % s.channels;
    const int64_t task = i / s.channels;  // (n, q, m)
    const int64_t head = task % s.num_heads;
    const int64_t n = task / (s.num_query * s.num_heads);
    const scalar_t* loc = args.sampling_locations + task * samples_per_task * 2;
    const scalar_t* weight = args.attention_weights + task * samples_per_task;
    BilinearCorners<scalar_t> c;
    scalar_t acc = 0;
    for (int64_t level = 0; level < s.num_levels; ++level) {
      const int64_t height = args.spatial_shapes[2 * level];
      const int64_t width = args.spatial_shapes[2 * level + 1];
      const scalar_t* level_value =
          args.value + (n * s.num_value + args.level_start_index[level]) * row_stride + head * s.channels + d;
      for (int64_t p = 0; p < s.num_points; ++p, loc += 2, ++weight) {
        if (!bilinear_corners(loc[0], loc[1], height, width, c)) {
          continue;
        }
        scalar_t sample = 0;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (c.index[k] >= 0) {
            sample += c.weight[k] * level_value[c.index[k] * row_stride];
          }
        }
        acc += *weight * sample;
      }
    }
    output[i] = acc;
  }
}

template <typename scalar_t>
__global__ void backward_kernel(const ForwardArgs<scalar_t> args, const BackwardArgs<scalar_t> grads) {
  const msda::Sizes& s = args.s;
  const int64_t total = s.batch * s.num_query * s.num_heads * s.num_levels * s.num_points;
  const int64_t row_stride = s.num_heads * s.channels;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t level = (i / s.num_points) % s.num_levels;
    const int64_t task = i / (s.num_levels * s.num_points);  // (n, q, m)
    const int64_t head = task % s.num_heads;
    const int64_t n = task / (s.num_query * s.num_heads);
    const int64_t height = args.spatial_shapes[2 * level];
    const int64_t width = args.spatial_shapes[2 * level + 1];
    BilinearCorners<scalar_t> c;
    const scalar_t* loc = args.sampling_locations + 2 * i;
    if (!bilinear_corners(loc[0], loc[1], height, width, c)) {
      continue;  // outputs are zero-initialised
    }
    const int64_t offset = (n * s.num_value + args.level_start_index[level]) * row_stride + head * s.channels;
    const scalar_t a = args.attention_weights[i];
    const scalar_t* grad = grads.grad_output + task * s.channels;
    scalar_t t[4] = {0, 0, 0, 0};
    for (int64_t d = 0; d < s.channels; ++d) {
      const scalar_t g = grad[d];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (c.index[k] >= 0) {
          const int64_t pos = offset + c.index[k] * row_stride + d;
          t[k] += g * args.value[pos];
          atomicAdd(grads.grad_value + pos, a * c.weight[k] * g);
        }
      }
    }
    grads.grad_weights[i] = c.weight[0] * t[0] + c.weight[1] * t[1] + c.weight[2] * t[2] + c.weight[3] * t[3];
    scalar_t grad_x, grad_y;
    bilinear_coordinate_grad(c, t, grad_x, grad_y);
    grads.grad_locations[2 * i] = a * static_cast<scalar_t>(width) * grad_x;
    grads.grad_locations[2 * i + 1] = a * static_cast<scalar_t>(height) * grad_y;
  }
}

}  // namespace

at::Tensor ms_deform_attn_forward_cuda(const MSDeformAttnInputs& in) {
  const c10::cuda::CUDAGuard device_guard(in.value.device());
  auto output = msda::empty_output(in);
  const int64_t total = output.numel();
  if (total == 0) {
    return output;
  }
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(in.value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
    forward_kernel<scalar_t><<<num_blocks(total), kThreads, 0, stream>>>(
        msda::forward_args<scalar_t>(in),
        output.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::vector<at::Tensor> ms_deform_attn_backward_cuda(
    const MSDeformAttnInputs& in,
    const at::Tensor& grad_output) {
  const c10::cuda::CUDAGuard device_guard(in.value.device());
  auto grads = msda::zero_gradients(in);
  const int64_t total = in.attention_weights.numel();  // one thread per sample
  if (total == 0 || in.value.size(3) == 0) {
    return grads;
  }
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(in.value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
    backward_kernel<scalar_t><<<num_blocks(total), kThreads, 0, stream>>>(
        msda::forward_args<scalar_t>(in),
        msda::backward_args<scalar_t>(grad_output, grads));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grads;
}

}  // namespace brainseg
