// CPU kernels of the fused 2x2 max pooling + ReLU: see max_pool2x2_relu.h.
//
// Tie and NaN rules are PyTorch's: the window is scanned row by row, a value replaces the maximum
// when it is greater or NaN, so the first maximum wins and a NaN propagates. The gradient flows to
// that input unless the maximum is <= 0 (ReLU's derivative at 0 is 0; a NaN passes it, as in PyTorch).
//
// Both passes parallelise over output rows, channels innermost; values go through float rows
// (exact for every dtype's maximum) so that the dtype conversions run in long vectorised loops.
// Compiled per instruction set (cpu_isa.h).
#include "pooling/max_pool2x2_relu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu_isa.h"
#include "elementwise.h"

namespace brainseg {
namespace {

constexpr uint8_t kNoGradient = 4;

template <typename scalar_t>
struct Args {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x;     // forward; batch-norm backward: the norm's input
  scalar_t* out;         // forward: output; backward: grad_x
  uint8_t* code;         // forward: may be null
  const uint8_t* code_in;  // backward
  const scalar_t* grad;  // backward
  int64_t height, width, channels;  // of x
  // Batch-norm backward (per channel): the batch mean, and dx = k_grad * dy + k_centred * (x - mean) + k_const.
  const acc_t* mean;
  const acc_t* k_grad;
  const acc_t* k_centred;
  const acc_t* k_const;
  double* sums_partial;  // (threads, 2, C): sum of dy and of dy * (x - mean); stats: of x and x^2
  // Batch-norm forward (per channel): the pooling reads y = scale * x + shift, rounded to scalar_t.
  const acc_t* scale;
  const acc_t* shift;
};

// Offset of the input a window's code points to, from the window's top-left input.
BRAINSEG_ALWAYS_INLINE int64_t code_offset(int32_t code, int64_t channels, int64_t row_stride) {
  return (code & 1) * channels + (code >> 1) * row_stride;
}

// A row of codes and gradients widened to int32 / the arithmetic type in long loops, so that the
// short per-pixel channel loops that use them hold no 8- or 16-bit elements: GCC sizes a loop's
// vectors by its narrowest element, and with 32 one-byte lanes a 16-channel loop would not
// vectorise at all.
template <typename scalar_t>
BRAINSEG_ALWAYS_INLINE void widen_row(
    const uint8_t* __restrict__ code, const scalar_t* __restrict__ grad, int64_t count,
    int32_t* __restrict__ code_out, at::opmath_type<scalar_t>* __restrict__ grad_out) {
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) {
    code_out[i] = code[i];
  }
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) {
    grad_out[i] = load(grad[i]);
  }
}

// One input of a pooling window: x, or with the batch norm's affine map y = scale * x + shift
// rounded to scalar_t, as the unfused norm would store it (so that ties and maxima are its).
template <typename scalar_t, bool kAffine>
BRAINSEG_ALWAYS_INLINE at::opmath_type<scalar_t> pooled_input(
    const scalar_t* p, const at::opmath_type<scalar_t>* scale, const at::opmath_type<scalar_t>* shift, int64_t c) {
  if constexpr (kAffine) {
    return round_through<scalar_t>(load(p[c]) * scale[c] + shift[c]);
  } else {
    return load(p[c]);
  }
}

template <typename scalar_t, bool kAffine>
struct ForwardRows {
  // Output rows [begin, end) of the flattened (N, H/2).
  static BRAINSEG_ALWAYS_INLINE void run(const Args<scalar_t>* a, int64_t begin, int64_t end) {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t C = a->channels, W = a->width, out_h = a->height / 2, out_w = W / 2;
    std::vector<acc_t> value_row(out_w * C);
    std::vector<int32_t> code_row(out_w * C);
    acc_t* __restrict__ values = value_row.data();
    int32_t* __restrict__ codes = code_row.data();
    const acc_t* __restrict__ scale = a->scale;
    const acc_t* __restrict__ shift = a->shift;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / out_h, oy = row % out_h;
      const scalar_t* r0 = a->x + (n * a->height + 2 * oy) * W * C;
      const scalar_t* r1 = r0 + W * C;
      for (int64_t ox = 0; ox < out_w; ++ox) {
        const scalar_t* __restrict__ p0 = r0 + 2 * ox * C;
        const scalar_t* __restrict__ p1 = p0 + C;
        const scalar_t* __restrict__ p2 = r1 + 2 * ox * C;
        const scalar_t* __restrict__ p3 = p2 + C;
        acc_t* __restrict__ v = values + ox * C;
        int32_t* __restrict__ k = codes + ox * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          acc_t m = pooled_input<scalar_t, kAffine>(p0, scale, shift, c);
          int32_t arg = 0;
          const acc_t v1 = pooled_input<scalar_t, kAffine>(p1, scale, shift, c);
          const acc_t v2 = pooled_input<scalar_t, kAffine>(p2, scale, shift, c);
          const acc_t v3 = pooled_input<scalar_t, kAffine>(p3, scale, shift, c);
          const bool t1 = (v1 > m) | (v1 != v1);
          m = t1 ? v1 : m;
          arg = t1 ? 1 : arg;
          const bool t2 = (v2 > m) | (v2 != v2);
          m = t2 ? v2 : m;
          arg = t2 ? 2 : arg;
          const bool t3 = (v3 > m) | (v3 != v3);
          m = t3 ? v3 : m;
          arg = t3 ? 3 : arg;
          v[c] = m < acc_t(0) ? acc_t(0) : m;  // relu; a NaN stays NaN
          k[c] = m <= acc_t(0) ? kNoGradient : arg;  // a NaN maximum passes the gradient, as in PyTorch
        }
      }
      scalar_t* __restrict__ o = a->out + row * out_w * C;
#pragma omp simd
      for (int64_t i = 0; i < out_w * C; ++i) {
        o[i] = store<scalar_t>(values[i]);
      }
      if (a->code != nullptr) {
        uint8_t* __restrict__ code = a->code + row * out_w * C;
#pragma omp simd
        for (int64_t i = 0; i < out_w * C; ++i) {
          code[i] = static_cast<uint8_t>(codes[i]);
        }
      }
    }
  }
};

template <typename scalar_t>
struct BackwardRows {
  // Output rows [begin, end) of the flattened (N, H/2): each writes input rows 2*oy and 2*oy + 1.
  static BRAINSEG_ALWAYS_INLINE void run(const Args<scalar_t>* a, int64_t begin, int64_t end) {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t C = a->channels, W = a->width, out_h = a->height / 2, out_w = W / 2;
    std::vector<acc_t> rows(2 * W * C, acc_t(0));  // input columns past 2 * out_w stay 0
    acc_t* __restrict__ top = rows.data();
    acc_t* __restrict__ bottom = top + W * C;
    std::vector<int32_t> code_row(out_w * C);
    std::vector<acc_t> grad_row(out_w * C);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / out_h, oy = row % out_h;
      widen_row(a->code_in + row * out_w * C, a->grad + row * out_w * C, out_w * C, code_row.data(), grad_row.data());
      for (int64_t ox = 0; ox < out_w; ++ox) {
        acc_t* __restrict__ t0 = top + 2 * ox * C;
        acc_t* __restrict__ t1 = t0 + C;
        acc_t* __restrict__ b0 = bottom + 2 * ox * C;
        acc_t* __restrict__ b1 = b0 + C;
        const acc_t* __restrict__ gp = grad_row.data() + ox * C;
        const int32_t* __restrict__ kp = code_row.data() + ox * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const acc_t gv = gp[c];
          const int32_t arg = kp[c];
          t0[c] = arg == 0 ? gv : acc_t(0);
          t1[c] = arg == 1 ? gv : acc_t(0);
          b0[c] = arg == 2 ? gv : acc_t(0);
          b1[c] = arg == 3 ? gv : acc_t(0);
        }
      }
      scalar_t* __restrict__ out = a->out + (n * a->height + 2 * oy) * W * C;
#pragma omp simd
      for (int64_t i = 0; i < 2 * W * C; ++i) {
        out[i] = store<scalar_t>(top[i]);
      }
    }
  }
};

template <typename scalar_t>
struct StatsRows {
  // Rows [begin, end) of the flattened (N, H): per channel, the sums of d = x - shift and of d^2,
  // shift = a->mean (one value of the channel: no cancellation when the mean dwarfs the spread); a
  // row in the arithmetic type, rows added up in double per thread.
  static BRAINSEG_ALWAYS_INLINE void run(const Args<scalar_t>* a, int64_t begin, int64_t end) {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t C = a->channels, W = a->width;
    std::vector<acc_t> row_sums(2 * C);
    acc_t* __restrict__ sum = row_sums.data();
    acc_t* __restrict__ sum_sq = sum + C;
    double* total = a->sums_partial + at::get_thread_num() * 2 * C;
    for (int64_t row = begin; row < end; ++row) {
      std::fill(row_sums.begin(), row_sums.end(), acc_t(0));
      const scalar_t* x = a->x + row * W * C;
      for (int64_t p = 0; p < W; ++p) {
        const scalar_t* __restrict__ xp = x + p * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const acc_t d = load(xp[c]) - a->mean[c];
          sum[c] += d;
          sum_sq[c] += d * d;
        }
      }
      for (int64_t i = 0; i < 2 * C; ++i) {
        total[i] += static_cast<double>(row_sums[i]);
      }
    }
  }
};

template <typename scalar_t>
struct BatchNormSumsRows {
  // Output rows [begin, end) of the flattened (N, H/2): per channel, the sums over the inputs the
  // gradient reaches of dy (= grad_output there) and of dy * (x - mean).
  static BRAINSEG_ALWAYS_INLINE void run(const Args<scalar_t>* a, int64_t begin, int64_t end) {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t C = a->channels, W = a->width, out_h = a->height / 2, out_w = W / 2;
    std::vector<acc_t> row_sums(2 * C);
    acc_t* __restrict__ sum_dy = row_sums.data();
    acc_t* __restrict__ sum_dy_xc = sum_dy + C;
    const acc_t* __restrict__ mean = a->mean;
    double* total = a->sums_partial + at::get_thread_num() * 2 * C;
    std::vector<int32_t> code_row(out_w * C);
    std::vector<acc_t> grad_row(out_w * C);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / out_h, oy = row % out_h;
      std::fill(row_sums.begin(), row_sums.end(), acc_t(0));
      widen_row(a->code_in + row * out_w * C, a->grad + row * out_w * C, out_w * C, code_row.data(), grad_row.data());
      const scalar_t* top = a->x + (n * a->height + 2 * oy) * W * C;
      for (int64_t ox = 0; ox < out_w; ++ox) {
        const scalar_t* __restrict__ p0 = top + 2 * ox * C;
        const scalar_t* __restrict__ p1 = p0 + C;
        const scalar_t* __restrict__ p2 = p0 + W * C;
        const scalar_t* __restrict__ p3 = p2 + C;
        const acc_t* __restrict__ g = grad_row.data() + ox * C;
        const int32_t* __restrict__ k = code_row.data() + ox * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const int32_t code = k[c];
          const acc_t dy = code == kNoGradient ? acc_t(0) : g[c];
          const acc_t v0 = load(p0[c]), v1 = load(p1[c]), v2 = load(p2[c]), v3 = load(p3[c]);  // all: no branches
          const acc_t xv = code == 0 ? v0 : code == 1 ? v1 : code == 2 ? v2 : v3;
          sum_dy[c] += dy;
          sum_dy_xc[c] += dy * (xv - mean[c]);
        }
      }
      for (int64_t i = 0; i < 2 * C; ++i) {
        total[i] += static_cast<double>(row_sums[i]);
      }
    }
  }
};

template <typename scalar_t>
struct BatchNormGradRows {
  // Input rows [begin, end) of the flattened (N, H): dx = k_grad * dy + k_centred * (x - mean) +
  // k_const, where dy is grad_output at the input its window's code points to and 0 elsewhere
  // (odd last rows and columns, outside every window, included).
  static BRAINSEG_ALWAYS_INLINE void run(const Args<scalar_t>* a, int64_t begin, int64_t end) {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t H = a->height, W = a->width, C = a->channels, out_h = H / 2, out_w = W / 2;
    const acc_t* __restrict__ mean = a->mean;
    const acc_t* __restrict__ k_grad = a->k_grad;
    const acc_t* __restrict__ k_centred = a->k_centred;
    const acc_t* __restrict__ k_const = a->k_const;
    std::vector<int32_t> code_row(out_w * C);
    std::vector<acc_t> grad_row(out_w * C);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / H, iy = row % H, oy = iy / 2;
      const scalar_t* __restrict__ x = a->x + row * W * C;
      scalar_t* __restrict__ dx = a->out + row * W * C;
      int64_t first_plain = 0;  // first pixel of the row outside every window
      if (oy < out_h) {
        first_plain = 2 * out_w;
        const int32_t left = static_cast<int32_t>(2 * (iy % 2)), right = left + 1;  // codes of this row's inputs
        const int64_t out_row = (n * out_h + oy) * out_w * C;
        widen_row(a->code_in + out_row, a->grad + out_row, out_w * C, code_row.data(), grad_row.data());
        for (int64_t ox = 0; ox < out_w; ++ox) {
          const acc_t* __restrict__ gp = grad_row.data() + ox * C;
          const int32_t* __restrict__ kp = code_row.data() + ox * C;
          const scalar_t* __restrict__ x0 = x + 2 * ox * C;
          const scalar_t* __restrict__ x1 = x0 + C;
          scalar_t* __restrict__ d0 = dx + 2 * ox * C;
          scalar_t* __restrict__ d1 = d0 + C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const int32_t code = kp[c];
            const acc_t gv = k_grad[c] * gp[c];
            const acc_t base = k_const[c] - k_centred[c] * mean[c];
            d0[c] = store<scalar_t>((code == left ? gv : acc_t(0)) + k_centred[c] * load(x0[c]) + base);
            d1[c] = store<scalar_t>((code == right ? gv : acc_t(0)) + k_centred[c] * load(x1[c]) + base);
          }
        }
      }
      for (int64_t p = first_plain; p < W; ++p) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          dx[p * C + c] = store<scalar_t>(k_centred[c] * (load(x[p * C + c]) - mean[c]) + k_const[c]);
        }
      }
    }
  }
};

void check_channels_last(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "max_pool2x2_relu: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.dim() == 4, "max_pool2x2_relu: ", name, " must be (N, C, H, W), got ", t.sizes());
  TORCH_CHECK(
      t.is_contiguous(at::MemoryFormat::ChannelsLast),
      "max_pool2x2_relu: ", name, " must be channels-last contiguous");
}

int64_t grain(int64_t elements_per_row) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, elements_per_row));
}

}  // namespace

std::vector<at::Tensor> max_pool2x2_relu_forward(
    const at::Tensor& x, bool with_code, const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift) {
  check_channels_last(x, "x");
  TORCH_CHECK(
      scale.has_value() == shift.has_value() && (!scale.has_value() || (scale->numel() == x.size(1) && shift->numel() == x.size(1))),
      "max_pool2x2_relu: scale and shift must be given together, with C = ", x.size(1), " elements each");
  const auto options = x.options().memory_format(at::MemoryFormat::ChannelsLast);
  const std::vector<int64_t> out_size{x.size(0), x.size(1), x.size(2) / 2, x.size(3) / 2};
  auto out = at::empty(out_size, options);
  auto code = with_code ? at::empty(out_size, options.dtype(at::kByte)) : at::empty({0}, x.options().dtype(at::kByte));
  if (out.numel() == 0) {
    return {out, code};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "max_pool2x2_relu_forward", [&] {
    Args<scalar_t> a{};
    a.x = x.const_data_ptr<scalar_t>();
    a.out = out.mutable_data_ptr<scalar_t>();
    a.code = with_code ? code.mutable_data_ptr<uint8_t>() : nullptr;
    a.height = x.size(2);
    a.width = x.size(3);
    a.channels = x.size(1);
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    at::Tensor scale_acc, shift_acc;
    if (scale.has_value()) {
      scale_acc = scale->to(acc_type).contiguous();
      shift_acc = shift->to(acc_type).contiguous();
      a.scale = scale_acc.const_data_ptr<acc_t>();
      a.shift = shift_acc.const_data_ptr<acc_t>();
    }
    at::parallel_for(0, out_size[0] * out_size[2], grain(4 * out_size[3] * out_size[1]), [&](int64_t begin, int64_t end) {
      if (a.scale != nullptr) {
        run_for_isa<ForwardRows<scalar_t, true>>(&a, begin, end);
      } else {
        run_for_isa<ForwardRows<scalar_t, false>>(&a, begin, end);
      }
    });
  });
  return {out, code};
}

std::vector<at::Tensor> channels_last_mean_var(const at::Tensor& x) {
  check_channels_last(x, "x");
  const int64_t C = x.size(1), count = x.numel() / std::max<int64_t>(1, C);
  TORCH_CHECK(count > 0, "batch_norm_max_pool2x2_relu: x must not be empty");
  auto partial = at::zeros({at::get_num_threads(), 2, C}, x.options().dtype(at::kDouble));
  const auto first = x.select(0, 0).select(1, 0).select(1, 0).to(at::kDouble);  // x[0, :, 0, 0]: the shift
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "channels_last_mean_var", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto shift = first.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    Args<scalar_t> a{};
    a.x = x.const_data_ptr<scalar_t>();
    a.mean = shift.const_data_ptr<acc_t>();
    a.width = x.size(3);
    a.channels = C;
    a.sums_partial = partial.mutable_data_ptr<double>();
    at::parallel_for(0, x.size(0) * x.size(2), grain(x.size(3) * C), [&](int64_t begin, int64_t end) {
      run_for_isa<StatsRows<scalar_t>>(&a, begin, end);
    });
  });
  const auto sums = partial.sum(0);
  const auto shifted_mean = sums[0] / static_cast<double>(count);
  const auto var = (sums[1] / static_cast<double>(count) - shifted_mean * shifted_mean).clamp_min(0.0);  // biased
  return {shifted_mean + first, var};
}

at::Tensor max_pool2x2_relu_backward(const at::Tensor& grad_output, const at::Tensor& code, int64_t height, int64_t width) {
  check_channels_last(grad_output, "grad_output");
  check_channels_last(code, "code");
  TORCH_CHECK(code.scalar_type() == at::kByte, "max_pool2x2_relu: code must be uint8");
  TORCH_CHECK(
      code.sizes() == grad_output.sizes() && grad_output.size(2) == height / 2 && grad_output.size(3) == width / 2,
      "max_pool2x2_relu: grad_output ", grad_output.sizes(), " and code ", code.sizes(),
      " must be (N, C, H/2, W/2) for an input of height ", height, " and width ", width);
  const auto options = grad_output.options().memory_format(at::MemoryFormat::ChannelsLast);
  const std::vector<int64_t> in_size{grad_output.size(0), grad_output.size(1), height, width};
  // an odd last row receives no gradient: zero it (the other rows are written whole)
  auto grad_x = at::empty(in_size, options);
  if (height % 2 || grad_output.numel() == 0) {
    grad_x.zero_();  // (at::zeros would not keep the channels-last format)
  }
  if (grad_output.numel() == 0) {
    return grad_x;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, grad_output.scalar_type(), "max_pool2x2_relu_backward", [&] {
    Args<scalar_t> a{};
    a.grad = grad_output.const_data_ptr<scalar_t>();
    a.code_in = code.const_data_ptr<uint8_t>();
    a.out = grad_x.mutable_data_ptr<scalar_t>();
    a.height = height;
    a.width = width;
    a.channels = grad_output.size(1);
    at::parallel_for(0, in_size[0] * (height / 2), grain(4 * (width / 2) * in_size[1]), [&](int64_t begin, int64_t end) {
      run_for_isa<BackwardRows<scalar_t>>(&a, begin, end);
    });
  });
  return grad_x;
}

std::vector<at::Tensor> batch_norm_max_pool2x2_relu_backward(
    const at::Tensor& grad_output, const at::Tensor& code, const at::Tensor& x, const at::Tensor& mean,
    const at::Tensor& invstd, const std::optional<at::Tensor>& weight) {
  check_channels_last(grad_output, "grad_output");
  check_channels_last(code, "code");
  check_channels_last(x, "x");
  TORCH_CHECK(code.scalar_type() == at::kByte, "max_pool2x2_relu: code must be uint8");
  TORCH_CHECK(grad_output.scalar_type() == x.scalar_type(), "max_pool2x2_relu: grad_output must have x's dtype");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(
      code.sizes() == grad_output.sizes() && grad_output.size(0) == N && grad_output.size(1) == C &&
          grad_output.size(2) == H / 2 && grad_output.size(3) == W / 2,
      "max_pool2x2_relu: grad_output ", grad_output.sizes(), " and code ", code.sizes(),
      " must be (N, C, H/2, W/2) for x of shape ", x.sizes());
  TORCH_CHECK(
      mean.numel() == C && invstd.numel() == C && (!weight.has_value() || weight->numel() == C),
      "batch_norm_max_pool2x2_relu: mean, invstd and weight must have C = ", C, " elements");
  TORCH_CHECK(x.numel() > 0, "batch_norm_max_pool2x2_relu: x must not be empty");
  auto grad_x = at::empty_like(x, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  auto partial = at::zeros({at::get_num_threads(), 2, C}, x.options().dtype(at::kDouble));
  const double count = static_cast<double>(N * H * W);
  const auto mean64 = mean.to(at::kDouble), invstd64 = invstd.to(at::kDouble);
  const auto gamma64 = weight.has_value() ? weight->to(at::kDouble) : at::ones({C}, mean64.options());
  at::Tensor sums;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "batch_norm_max_pool2x2_relu_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    const auto mean_acc = mean.to(acc_type).contiguous();
    Args<scalar_t> a{};
    a.x = x.const_data_ptr<scalar_t>();
    a.grad = grad_output.const_data_ptr<scalar_t>();
    a.code_in = code.const_data_ptr<uint8_t>();
    a.height = H;
    a.width = W;
    a.channels = C;
    a.mean = mean_acc.const_data_ptr<acc_t>();
    a.sums_partial = partial.mutable_data_ptr<double>();
    const int64_t out_rows = N * (H / 2);
    if (out_rows * (W / 2) > 0) {
      at::parallel_for(0, out_rows, grain(4 * (W / 2) * C), [&](int64_t begin, int64_t end) {
        run_for_isa<BatchNormSumsRows<scalar_t>>(&a, begin, end);
      });
    }
    sums = partial.sum(0);  // (2, C): sum of dy, sum of dy * (x - mean)
    // dx = gamma * invstd * (dy - sum_dy / M - (x - mean) * invstd^2 * sum_dy_xc / M)
    const auto k_grad = (gamma64 * invstd64).to(acc_type).contiguous();
    const auto k_centred = (-gamma64 * invstd64.pow(3) * sums[1] / count).to(acc_type).contiguous();
    const auto k_const = (-gamma64 * invstd64 * sums[0] / count).to(acc_type).contiguous();
    a.k_grad = k_grad.const_data_ptr<acc_t>();
    a.k_centred = k_centred.const_data_ptr<acc_t>();
    a.k_const = k_const.const_data_ptr<acc_t>();
    a.out = grad_x.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N * H, grain(W * C), [&](int64_t begin, int64_t end) {
      run_for_isa<BatchNormGradRows<scalar_t>>(&a, begin, end);
    });
  });
  // grad_weight = sum dy * x_hat, grad_bias = sum dy
  return {grad_x, sums[1] * invstd64, sums[0]};
}

}  // namespace brainseg
