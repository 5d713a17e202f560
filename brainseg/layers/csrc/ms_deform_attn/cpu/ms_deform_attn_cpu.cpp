// C++ (CPU) kernels of multi-scale deformable attention.
//
// Layout: value is (N, S, M, D), so for a sample of head m the D channels of one
// corner are contiguous. Each sample reads its four corners once and updates all D
// channels in a single SIMD-friendly pass; corners outside the map point at a
// buffer of zeros (forward) or a scratch row (backward) instead of branching.
//
// Forward parallelises over (n, q, m): every task owns its D outputs.
// Backward parallelises over (n, m): the grad_value rows of head m in image n are
// touched by that task only, so no atomics are needed and the result is
// deterministic; grad_locations / grad_weights of a sample belong to one task too.
//
// Both passes are compiled three times on x86-64 (baseline SSE2, AVX2 + FMA, AVX-512) and the
// variant is chosen at run time, following PyTorch's own choice (cpu_isa.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>

#include <algorithm>
#include <string>
#include <vector>

#include "cpu_isa.h"
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

// out[d] += sum_k coef[k] * v_k[d]
template <typename scalar_t>
BRAINSEG_ALWAYS_INLINE void accumulate_corners(
    scalar_t* __restrict__ out,
    const scalar_t* __restrict__ v0,
    const scalar_t* __restrict__ v1,
    const scalar_t* __restrict__ v2,
    const scalar_t* __restrict__ v3,
    const scalar_t c0,
    const scalar_t c1,
    const scalar_t c2,
    const scalar_t c3,
    const int64_t channels) {
#pragma omp simd
  for (int64_t d = 0; d < channels; ++d) {
    out[d] += c0 * v0[d] + c1 * v1[d] + c2 * v2[d] + c3 * v3[d];
  }
}

// t[k] = <grad, v_k> and g_k[d] += coef[k] * grad[d], in one pass over the channels.
template <typename scalar_t>
BRAINSEG_ALWAYS_INLINE void backward_corners(
    const scalar_t* __restrict__ grad,
    const scalar_t* __restrict__ v0,
    const scalar_t* __restrict__ v1,
    const scalar_t* __restrict__ v2,
    const scalar_t* __restrict__ v3,
    scalar_t* __restrict__ g0,
    scalar_t* __restrict__ g1,
    scalar_t* __restrict__ g2,
    scalar_t* __restrict__ g3,
    const scalar_t c0,
    const scalar_t c1,
    const scalar_t c2,
    const scalar_t c3,
    const int64_t channels,
    scalar_t t[4]) {
  scalar_t t0 = 0, t1 = 0, t2 = 0, t3 = 0;
#pragma omp simd reduction(+ : t0, t1, t2, t3)
  for (int64_t d = 0; d < channels; ++d) {
    const scalar_t g = grad[d];
    t0 += g * v0[d];
    t1 += g * v1[d];
    t2 += g * v2[d];
    t3 += g * v3[d];
    g0[d] += c0 * g;
    g1[d] += c1 * g;
    g2[d] += c2 * g;
    g3[d] += c3 * g;
  }
  t[0] = t0;
  t[1] = t1;
  t[2] = t2;
  t[3] = t3;
}

// The forward tasks [begin, end): everything the forward computes. It is inlined into one
// function per instruction set below, so that the channel loop is vectorised for that ISA.
template <typename scalar_t>
BRAINSEG_ALWAYS_INLINE void forward_tasks(
    const ForwardArgs<scalar_t>& args,
    scalar_t* output,
    int64_t begin,
    int64_t end) {
  const msda::Sizes& s = args.s;
  const int64_t samples_per_task = s.num_levels * s.num_points;
  const int64_t row_stride = s.num_heads * s.channels;  // between positions of one head
  const std::vector<scalar_t> zeros(s.channels, scalar_t(0));
  BilinearCorners<scalar_t> c;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t head = task % s.num_heads;
    const int64_t n = task / (s.num_query * s.num_heads);
    scalar_t* out = output + task * s.channels;
    std::fill(out, out + s.channels, scalar_t(0));
    const scalar_t* loc = args.sampling_locations + task * samples_per_task * 2;
    const scalar_t* weight = args.attention_weights + task * samples_per_task;
    for (int64_t level = 0; level < s.num_levels; ++level) {
      const int64_t height = args.spatial_shapes[2 * level];
      const int64_t width = args.spatial_shapes[2 * level + 1];
      const scalar_t* level_value =
          args.value + (n * s.num_value + args.level_start_index[level]) * row_stride + head * s.channels;
      for (int64_t p = 0; p < s.num_points; ++p, loc += 2, ++weight) {
        if (!bilinear_corners(loc[0], loc[1], height, width, c)) {
          continue;
        }
        const scalar_t* v[4];
        for (int k = 0; k < 4; ++k) {
          v[k] = c.index[k] >= 0 ? level_value + c.index[k] * row_stride : zeros.data();
        }
        const scalar_t a = *weight;
        accumulate_corners(
            out, v[0], v[1], v[2], v[3], a * c.weight[0], a * c.weight[1], a * c.weight[2],
            a * c.weight[3], s.channels);
      }
    }
  }
}

// The backward tasks [begin, end) over (image, head) pairs; inlined into one function per
// instruction set like the forward.
template <typename scalar_t>
BRAINSEG_ALWAYS_INLINE void backward_tasks(
    const ForwardArgs<scalar_t>& args,
    const BackwardArgs<scalar_t>& grads,
    int64_t begin,
    int64_t end) {
  const msda::Sizes& s = args.s;
  const int64_t samples_per_task = s.num_levels * s.num_points;
  const int64_t row_stride = s.num_heads * s.channels;
  const std::vector<scalar_t> zeros(s.channels, scalar_t(0));
  // Write-only sink rows for the grad_value of corners outside the map.
  std::vector<scalar_t> sink(4 * s.channels);
  BilinearCorners<scalar_t> c;
  scalar_t t[4];
  for (int64_t pair = begin; pair < end; ++pair) {
    const int64_t n = pair / s.num_heads;
    const int64_t head = pair % s.num_heads;
    for (int64_t q = 0; q < s.num_query; ++q) {
      const int64_t task = (n * s.num_query + q) * s.num_heads + head;
      const scalar_t* grad = grads.grad_output + task * s.channels;
      const scalar_t* loc = args.sampling_locations + task * samples_per_task * 2;
      const scalar_t* weight = args.attention_weights + task * samples_per_task;
      scalar_t* grad_loc = grads.grad_locations + task * samples_per_task * 2;
      scalar_t* grad_weight = grads.grad_weights + task * samples_per_task;
      for (int64_t level = 0; level < s.num_levels; ++level) {
        const int64_t height = args.spatial_shapes[2 * level];
        const int64_t width = args.spatial_shapes[2 * level + 1];
        const int64_t offset =
            (n * s.num_value + args.level_start_index[level]) * row_stride + head * s.channels;
        const scalar_t* level_value = args.value + offset;
        scalar_t* level_grad_value = grads.grad_value + offset;
        for (int64_t p = 0; p < s.num_points; ++p, loc += 2, ++weight, grad_loc += 2, ++grad_weight) {
          if (!bilinear_corners(loc[0], loc[1], height, width, c)) {
            continue;  // outputs are zero-initialised
          }
          const scalar_t* v[4];
          scalar_t* g[4];
          for (int k = 0; k < 4; ++k) {
            const bool inside = c.index[k] >= 0;
            v[k] = inside ? level_value + c.index[k] * row_stride : zeros.data();
            g[k] = inside ? level_grad_value + c.index[k] * row_stride : sink.data() + k * s.channels;
          }
          const scalar_t a = *weight;
          backward_corners(
              grad, v[0], v[1], v[2], v[3], g[0], g[1], g[2], g[3], a * c.weight[0], a * c.weight[1],
              a * c.weight[2], a * c.weight[3], s.channels, t);
          *grad_weight = c.weight[0] * t[0] + c.weight[1] * t[1] + c.weight[2] * t[2] + c.weight[3] * t[3];
          scalar_t grad_x, grad_y;
          bilinear_coordinate_grad(c, t, grad_x, grad_y);
          grad_loc[0] = a * static_cast<scalar_t>(width) * grad_x;
          grad_loc[1] = a * static_cast<scalar_t>(height) * grad_y;
        }
      }
    }
  }
}

template <typename scalar_t>
struct ForwardTasks {
  static BRAINSEG_ALWAYS_INLINE void run(const ForwardArgs<scalar_t>* args, scalar_t* output, int64_t begin, int64_t end) {
    forward_tasks(*args, output, begin, end);
  }
};

template <typename scalar_t>
struct BackwardTasks {
  static BRAINSEG_ALWAYS_INLINE void run(
      const ForwardArgs<scalar_t>* args,
      const BackwardArgs<scalar_t>* grads,
      int64_t begin,
      int64_t end) {
    backward_tasks(*args, *grads, begin, end);
  }
};

template <typename scalar_t>
void forward_kernel(const ForwardArgs<scalar_t>& args, scalar_t* output) {
  const msda::Sizes& s = args.s;
  const int64_t samples_per_task = s.num_levels * s.num_points;
  // Aim for tasks of ~16k multiply-adds so scheduling overhead stays negligible.
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, samples_per_task * s.channels));
  at::parallel_for(0, s.batch * s.num_query * s.num_heads, grain, [&](int64_t begin, int64_t end) {
    run_for_isa<ForwardTasks<scalar_t>>(&args, output, begin, end);
  });
}

template <typename scalar_t>
void backward_kernel(const ForwardArgs<scalar_t>& args, const BackwardArgs<scalar_t>& grads) {
  at::parallel_for(0, args.s.batch * args.s.num_heads, 1, [&](int64_t begin, int64_t end) {
    run_for_isa<BackwardTasks<scalar_t>>(&args, &grads, begin, end);
  });
}

}  // namespace

std::string ms_deform_attn_cpu_isa() {
  return kernel_isa_name();
}

at::Tensor ms_deform_attn_forward_cpu(const MSDeformAttnInputs& in) {
  auto output = msda::empty_output(in);
  AT_DISPATCH_FLOATING_TYPES(in.value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    forward_kernel(
        msda::forward_args<scalar_t>(in),
        output.mutable_data_ptr<scalar_t>());
  });
  return output;
}

std::vector<at::Tensor> ms_deform_attn_backward_cpu(
    const MSDeformAttnInputs& in,
    const at::Tensor& grad_output) {
  auto grads = msda::zero_gradients(in);
  AT_DISPATCH_FLOATING_TYPES(in.value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    backward_kernel(
        msda::forward_args<scalar_t>(in),
        msda::backward_args<scalar_t>(grad_output, grads));
  });
  return grads;
}

}  // namespace brainseg
