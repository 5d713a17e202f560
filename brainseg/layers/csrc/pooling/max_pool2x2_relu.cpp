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
  const scalar_t* x;     // forward
  scalar_t* out;         // forward: output; backward: grad_x
  uint8_t* code;         // forward: may be null
  const uint8_t* code_in;  // backward
  const scalar_t* grad;  // backward
  int64_t height, width, channels;  // of x
};

template <typename scalar_t>
struct ForwardRows {
  // Output rows [begin, end) of the flattened (N, H/2).
  static BRAINSEG_ALWAYS_INLINE void run(const Args<scalar_t>* a, int64_t begin, int64_t end) {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t C = a->channels, W = a->width, out_h = a->height / 2, out_w = W / 2;
    std::vector<acc_t> value_row(out_w * C);
    std::vector<int32_t> code_row(out_w * C);
    acc_t* __restrict__ values = value_row.data();
    int32_t* __restrict__ codes = code_row.data();
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
          acc_t m = load(p0[c]);
          int32_t arg = 0;
          const acc_t v1 = load(p1[c]), v2 = load(p2[c]), v3 = load(p3[c]);
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
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / out_h, oy = row % out_h;
      const scalar_t* __restrict__ g = a->grad + row * out_w * C;
      const uint8_t* __restrict__ k = a->code_in + row * out_w * C;
      for (int64_t ox = 0; ox < out_w; ++ox) {
        acc_t* __restrict__ t0 = top + 2 * ox * C;
        acc_t* __restrict__ t1 = t0 + C;
        acc_t* __restrict__ b0 = bottom + 2 * ox * C;
        acc_t* __restrict__ b1 = b0 + C;
        const scalar_t* __restrict__ gp = g + ox * C;
        const uint8_t* __restrict__ kp = k + ox * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const acc_t gv = load(gp[c]);
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

std::vector<at::Tensor> max_pool2x2_relu_forward(const at::Tensor& x, bool with_code) {
  check_channels_last(x, "x");
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
    at::parallel_for(0, out_size[0] * out_size[2], grain(4 * out_size[3] * out_size[1]), [&](int64_t begin, int64_t end) {
      run_for_isa<ForwardRows<scalar_t>>(&a, begin, end);
    });
  });
  return {out, code};
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

}  // namespace brainseg
