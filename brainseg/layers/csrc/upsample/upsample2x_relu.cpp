// CPU kernels of the fused 2x bilinear upsampling + ReLU (+ skip): see upsample2x_relu.h.
//
// Source positions follow PyTorch's bilinear interpolation with align_corners=False at scale 2:
// output index o reads src = max((o + 0.5) / 2 - 0.5, 0), i.e. input rows/columns
// floor(src) and floor(src) + 1 (clamped to the last one) with weights 1 - frac, frac, which at
// this scale are 0.25 / 0.75 (1 at the first and last output).
//
// The interpolation is separable: for an output row, its two input rows are first mixed in one long
// loop (mix_rows), then each output pixel mixes two columns of that row, channels innermost
// (contiguous in channels-last, so the channel loop vectorises), into a float row that is then
// rectified, added to the skip and rounded to the output dtype. Forward parallelises over output
// rows. Backward parallelises over input rows: a task gathers the gradient of every output row that
// reads its input row (at most four), recomputing that row's values (for the ReLU mask) from x, so
// no task writes another's rows (no atomics, deterministic) and the upsampled tensor is never stored.
// With a 1x1 projection (upsample2x_relu_conv1x1) the forward projects each rectified output
// pixel's channels to K logits instead of writing them, and the backward turns the logits'
// gradient into the channels' one pixel by pixel, adding up the weight gradient (per thread, in
// double) in the task that owns each output row's first input row.
// Both are compiled per instruction set (cpu_isa.h).
#include "upsample/upsample2x_relu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu_isa.h"
#include "elementwise.h"

namespace brainseg {
namespace {

// The two inputs an output index reads along one axis, and their weights.
struct Tap {
  int64_t i0, i1;
  float w0, w1;  // 0, 0.25, 0.75 or 1: exact in every floating type
};

std::vector<Tap> axis_taps(int64_t in_size) {
  std::vector<Tap> taps(2 * in_size);
  for (int64_t o = 0; o < 2 * in_size; ++o) {
    const float src = std::max(0.5f * (static_cast<float>(o) + 0.5f) - 0.5f, 0.0f);
    const int64_t i0 = static_cast<int64_t>(src);
    const float frac = src - static_cast<float>(i0);
    taps[o] = {i0, std::min(i0 + 1, in_size - 1), 1.0f - frac, frac};
  }
  return taps;
}

template <typename scalar_t>
struct Args {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x;
  const scalar_t* skip;  // forward only; may be null
  const scalar_t* grad;  // backward only: of the output (the projection's when projecting)
  scalar_t* out;         // forward: output; backward: grad_x
  int64_t height, width, channels;  // of x
  const Tap* rows;  // per output row
  const Tap* cols;  // per output column
  // The 1x1 projection (upsample2x_relu_conv1x1): (K, C) weights and K biases, or null.
  const acc_t* proj_weight;
  const acc_t* proj_bias;
  int64_t proj_channels;  // K
  double* grad_weight_partial;  // backward: (threads, K, C) sums of grad_output * relu(upsampled)
};

// The two input rows an output row reads, mixed with their weights (one long loop): the rows
// step of the separable interpolation; each output pixel then mixes two of its columns.
template <typename scalar_t>
BRAINSEG_ALWAYS_INLINE void mix_rows(
    const Args<scalar_t>& a, int64_t C, int64_t n, const Tap& ty, at::opmath_type<scalar_t>* __restrict__ mixed) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t W = a.width;
  const scalar_t* __restrict__ r0 = a.x + (n * a.height + ty.i0) * W * C;
  const scalar_t* __restrict__ r1 = a.x + (n * a.height + ty.i1) * W * C;
  const acc_t wy0 = ty.w0, wy1 = ty.w1;
#pragma omp simd
  for (int64_t k = 0; k < W * C; ++k) {
    mixed[k] = wy0 * load(r0[k]) + wy1 * load(r1[k]);
  }
}

// One output row of the projection: out[ox, k] = bias[k] + sum_c weight[k, c] * buf[ox, c].
template <typename scalar_t>
BRAINSEG_ALWAYS_INLINE void project_row(
    const Args<scalar_t>& a, int64_t C, const at::opmath_type<scalar_t>* buf, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t K = a.proj_channels, out_w = 2 * a.width;
  for (int64_t ox = 0; ox < out_w; ++ox) {
    const acc_t* __restrict__ b = buf + ox * C;
    for (int64_t k = 0; k < K; ++k) {
      const acc_t* __restrict__ w = a.proj_weight + k * C;
      acc_t sum = acc_t(0);
#pragma omp simd reduction(+ : sum)
      for (int64_t c = 0; c < C; ++c) {
        sum += w[c] * b[c];
      }
      out[ox * K + k] = store<scalar_t>(sum + a.proj_bias[k]);
    }
  }
}

template <typename scalar_t>
struct ForwardRows {
  // Output rows [begin, end) of the flattened (N, 2H).
  static BRAINSEG_ALWAYS_INLINE void run(const Args<scalar_t>* a, int64_t begin, int64_t end) {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t C = a->channels, W = a->width, out_h = 2 * a->height, out_w = 2 * W;
    std::vector<acc_t> row_buffer(out_w * C), column_buffer(W * C);
    acc_t* __restrict__ buf = row_buffer.data();
    acc_t* __restrict__ rows_mixed = column_buffer.data();
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / out_h;
      const Tap ty = a->rows[row % out_h];
      mix_rows(*a, C, n, ty, rows_mixed);
      for (int64_t ox = 0; ox < out_w; ++ox) {
        const Tap tx = a->cols[ox];
        const acc_t wx0 = tx.w0, wx1 = tx.w1;
        const acc_t* __restrict__ v0 = rows_mixed + tx.i0 * C;
        const acc_t* __restrict__ v1 = rows_mixed + tx.i1 * C;
        acc_t* __restrict__ b = buf + ox * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          b[c] = std::max(wx0 * v0[c] + wx1 * v1[c], acc_t(0));
        }
      }
      // The output row in one long loop: a 16-bit store inside the short channel loop above
      // would not vectorise (GCC's AVX-512 factor for 16-bit elements is 32 > C = 16).
      if (a->proj_weight != nullptr) {
        project_row(*a, C, buf, a->out + row * out_w * a->proj_channels);
        continue;
      }
      scalar_t* __restrict__ o = a->out + row * out_w * C;
      if (a->skip != nullptr) {
        const scalar_t* __restrict__ s = a->skip + row * out_w * C;
#pragma omp simd
        for (int64_t k = 0; k < out_w * C; ++k) {
          o[k] = store<scalar_t>(buf[k] + load(s[k]));
        }
      } else {
#pragma omp simd
        for (int64_t k = 0; k < out_w * C; ++k) {
          o[k] = store<scalar_t>(buf[k]);
        }
      }
    }
  }
};

// The gradient of the upsampled, rectified values at one output pixel, per channel: grad_output
// itself, or with the projection the sum over k of weight[k, c] * grad_output[k] (into `buffer`).
template <typename scalar_t>
BRAINSEG_ALWAYS_INLINE const at::opmath_type<scalar_t>* pixel_grad(
    const Args<scalar_t>& a, int64_t C, int64_t pixel, at::opmath_type<scalar_t>* __restrict__ buffer) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t K = a.proj_channels;
  if (a.proj_weight == nullptr) {
    const scalar_t* __restrict__ g = a.grad + pixel * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      buffer[c] = load(g[c]);
    }
    return buffer;
  }
  const scalar_t* __restrict__ g = a.grad + pixel * K;
  const acc_t g0 = load(g[0]);
  const acc_t* __restrict__ w0 = a.proj_weight;
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    buffer[c] = w0[c] * g0;
  }
  for (int64_t k = 1; k < K; ++k) {
    const acc_t gk = load(g[k]);
    const acc_t* __restrict__ w = a.proj_weight + k * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      buffer[c] += w[c] * gk;
    }
  }
  return buffer;
}

template <typename scalar_t>
struct BackwardRows {
  // Input rows [begin, end) of the flattened (N, H). With the projection, the task that owns an
  // output row's first input row (tap i0) also adds that output row's share of the weight gradient.
  static BRAINSEG_ALWAYS_INLINE void run(const Args<scalar_t>* a, int64_t begin, int64_t end) {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t H = a->height, W = a->width, C = a->channels, out_h = 2 * H, out_w = 2 * W;
    const int64_t K = a->proj_channels;
    const bool project = a->proj_weight != nullptr;
    std::vector<acc_t> acc_row(W * C), grad_buffer(C), weight_row(project ? K * C : 0), column_buffer(W * C);
    acc_t* __restrict__ acc = acc_row.data();
    acc_t* __restrict__ rows_mixed = column_buffer.data();
    acc_t* __restrict__ grad_buf = grad_buffer.data();
    acc_t* __restrict__ gw = weight_row.data();
    double* gw_total = project ? a->grad_weight_partial + at::get_thread_num() * K * C : nullptr;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / H, iy = row % H;
      std::fill(acc_row.begin(), acc_row.end(), acc_t(0));
      for (int64_t oy = std::max<int64_t>(0, 2 * iy - 1); oy <= std::min(out_h - 1, 2 * iy + 2); ++oy) {
        const Tap ty = a->rows[oy];
        const acc_t wy = (ty.i0 == iy ? acc_t(ty.w0) : acc_t(0)) + (ty.i1 == iy ? acc_t(ty.w1) : acc_t(0));
        if (wy == acc_t(0)) {
          continue;
        }
        const bool weight_share = project && ty.i0 == iy;
        if (weight_share) {
          std::fill(weight_row.begin(), weight_row.end(), acc_t(0));
        }
        mix_rows(*a, C, n, ty, rows_mixed);  // (the forward values, for the ReLU mask)
        for (int64_t ox = 0; ox < out_w; ++ox) {
          const Tap tx = a->cols[ox];
          const acc_t wx0 = tx.w0, wx1 = tx.w1;
          const acc_t* __restrict__ v0 = rows_mixed + tx.i0 * C;
          const acc_t* __restrict__ v1 = rows_mixed + tx.i1 * C;
          const int64_t pixel = (n * out_h + oy) * out_w + ox;
          const acc_t* __restrict__ g = pixel_grad(*a, C, pixel, grad_buf);
          if (weight_share) {
            for (int64_t k = 0; k < K; ++k) {
              const acc_t gk = load(a->grad[pixel * K + k]);
              acc_t* __restrict__ gwk = gw + k * C;
#pragma omp simd
              for (int64_t c = 0; c < C; ++c) {
                gwk[c] += gk * std::max(wx0 * v0[c] + wx1 * v1[c], acc_t(0));
              }
            }
          }
          acc_t* __restrict__ acc0 = acc + tx.i0 * C;
          if (tx.i0 == tx.i1) {  // border column: both weights on one input
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) {
              acc0[c] += relu_grad(wx0 * v0[c] + wx1 * v1[c], wy * g[c]);
            }
            continue;
          }
          acc_t* __restrict__ acc1 = acc + tx.i1 * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const acc_t m = relu_grad(wx0 * v0[c] + wx1 * v1[c], wy * g[c]);
            acc0[c] += wx0 * m;
            acc1[c] += wx1 * m;
          }
        }
        if (weight_share) {
          for (int64_t i = 0; i < K * C; ++i) {
            gw_total[i] += static_cast<double>(gw[i]);
          }
        }
      }
      scalar_t* __restrict__ gx = a->out + row * W * C;
#pragma omp simd
      for (int64_t k = 0; k < W * C; ++k) {
        gx[k] = store<scalar_t>(acc[k]);
      }
    }
  }
};

void check_channels_last(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "upsample2x_relu: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() == 4, "upsample2x_relu: ", name, " must be (N, C, H, W), got ", t.sizes());
  TORCH_CHECK(
      t.is_contiguous(at::MemoryFormat::ChannelsLast),
      "upsample2x_relu: ", name, " must be channels-last contiguous");
}

void check_upsampled(const at::Tensor& t, const at::Tensor& x, const char* name) {
  check_channels_last(t, name);
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "upsample2x_relu: ", name, " must have x's dtype");
  TORCH_CHECK(
      t.size(0) == x.size(0) && t.size(1) == x.size(1) && t.size(2) == 2 * x.size(2) &&
          t.size(3) == 2 * x.size(3),
      "upsample2x_relu: ", name, " must be (N, C, 2H, 2W) for x of shape ", x.sizes(), ", got ", t.sizes());
}

template <typename scalar_t>
Args<scalar_t> make_args(const at::Tensor& x, const std::vector<Tap>& rows, const std::vector<Tap>& cols) {
  Args<scalar_t> a{};
  a.x = x.const_data_ptr<scalar_t>();
  a.height = x.size(2);
  a.width = x.size(3);
  a.channels = x.size(1);
  a.rows = rows.data();
  a.cols = cols.data();
  return a;
}

// Rows per task so that a task does at least ~16k element updates.
int64_t grain(int64_t elements_per_row) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, elements_per_row));
}

void check_projection(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_CHECK(
      weight.dim() == 2 && weight.size(1) == x.size(1) && weight.size(0) >= 1,
      "upsample2x_relu_conv1x1: weight must be (K, C) with C = ", x.size(1), " channels of x, got ", weight.sizes());
  TORCH_CHECK(
      bias.dim() == 1 && bias.size(0) == weight.size(0),
      "upsample2x_relu_conv1x1: bias must be (K,) with K = ", weight.size(0), ", got ", bias.sizes());
  TORCH_CHECK(weight.device().is_cpu() && bias.device().is_cpu(), "upsample2x_relu_conv1x1: weight and bias must be CPU tensors");
}

}  // namespace

at::Tensor upsample2x_relu_forward(const at::Tensor& x, const std::optional<at::Tensor>& skip) {
  check_channels_last(x, "x");
  if (skip.has_value()) {
    check_upsampled(*skip, x, "skip");
  }
  auto out = at::empty(
      {x.size(0), x.size(1), 2 * x.size(2), 2 * x.size(3)},
      x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) {
    return out;
  }
  const auto rows = axis_taps(x.size(2)), cols = axis_taps(x.size(3));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "upsample2x_relu_forward", [&] {
    auto a = make_args<scalar_t>(x, rows, cols);
    a.skip = skip.has_value() ? skip->const_data_ptr<scalar_t>() : nullptr;
    a.out = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, out.size(0) * out.size(2), grain(out.size(3) * out.size(1)), [&](int64_t begin, int64_t end) {
      run_for_isa<ForwardRows<scalar_t>>(&a, begin, end);
    });
  });
  return out;
}

at::Tensor upsample2x_relu_backward(const at::Tensor& x, const at::Tensor& grad_output) {
  check_channels_last(x, "x");
  check_upsampled(grad_output, x, "grad_output");
  auto grad_x = at::empty_like(x, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (x.numel() == 0) {
    return grad_x;
  }
  const auto rows = axis_taps(x.size(2)), cols = axis_taps(x.size(3));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "upsample2x_relu_backward", [&] {
    auto a = make_args<scalar_t>(x, rows, cols);
    a.grad = grad_output.const_data_ptr<scalar_t>();
    a.out = grad_x.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, x.size(0) * x.size(2), grain(16 * x.size(3) * x.size(1)), [&](int64_t begin, int64_t end) {
      run_for_isa<BackwardRows<scalar_t>>(&a, begin, end);
    });
  });
  return grad_x;
}

at::Tensor upsample2x_relu_conv1x1_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  check_channels_last(x, "x");
  check_projection(x, weight, bias);
  auto out = at::empty(
      {x.size(0), weight.size(0), 2 * x.size(2), 2 * x.size(3)},
      x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) {
    return out;
  }
  const auto rows = axis_taps(x.size(2)), cols = axis_taps(x.size(3));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "upsample2x_relu_conv1x1_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    const auto w = weight.to(acc_type).contiguous(), b = bias.to(acc_type).contiguous();
    auto a = make_args<scalar_t>(x, rows, cols);
    a.out = out.mutable_data_ptr<scalar_t>();
    a.proj_weight = w.const_data_ptr<acc_t>();
    a.proj_bias = b.const_data_ptr<acc_t>();
    a.proj_channels = weight.size(0);
    at::parallel_for(0, out.size(0) * out.size(2), grain(out.size(3) * x.size(1)), [&](int64_t begin, int64_t end) {
      run_for_isa<ForwardRows<scalar_t>>(&a, begin, end);
    });
  });
  return out;
}

std::vector<at::Tensor> upsample2x_relu_conv1x1_backward(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& grad_output) {
  check_channels_last(x, "x");
  check_channels_last(grad_output, "grad_output");
  TORCH_CHECK(grad_output.scalar_type() == x.scalar_type(), "upsample2x_relu_conv1x1: grad_output must have x's dtype");
  TORCH_CHECK(
      weight.dim() == 2 && weight.size(1) == x.size(1) && grad_output.size(0) == x.size(0) &&
          grad_output.size(1) == weight.size(0) && grad_output.size(2) == 2 * x.size(2) && grad_output.size(3) == 2 * x.size(3),
      "upsample2x_relu_conv1x1: grad_output must be (N, K, 2H, 2W) for x ", x.sizes(), " and weight ", weight.sizes(),
      ", got ", grad_output.sizes());
  const int64_t K = weight.size(0), C = x.size(1);
  auto grad_x = at::empty_like(x, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  auto partial = at::zeros({at::get_num_threads(), K, C}, x.options().dtype(at::kDouble));
  if (x.numel() == 0) {
    return {grad_x, partial.sum(0)};
  }
  const auto rows = axis_taps(x.size(2)), cols = axis_taps(x.size(3));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "upsample2x_relu_conv1x1_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto w = weight.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    auto a = make_args<scalar_t>(x, rows, cols);
    a.grad = grad_output.const_data_ptr<scalar_t>();
    a.out = grad_x.mutable_data_ptr<scalar_t>();
    a.proj_weight = w.const_data_ptr<acc_t>();
    a.proj_channels = K;
    a.grad_weight_partial = partial.mutable_data_ptr<double>();
    at::parallel_for(0, x.size(0) * x.size(2), grain(16 * x.size(3) * C), [&](int64_t begin, int64_t end) {
      run_for_isa<BackwardRows<scalar_t>>(&a, begin, end);
    });
  });
  return {grad_x, partial.sum(0)};
}

}  // namespace brainseg
