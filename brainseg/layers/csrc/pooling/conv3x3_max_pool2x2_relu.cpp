// CPU kernel of the fused 3x3 convolution + 2x2 max pooling + ReLU: see conv3x3_max_pool2x2_relu.h.
//
// A task computes whole pooled rows. For pooled row oy it widens the four input rows the two
// convolution rows read (2*oy - 1 .. 2*oy + 2, zeros outside the image and in the padding columns)
// into the arithmetic type, then for each pooled pixel accumulates the four convolution outputs of
// its window in registers, a block of 16 output channels at a time (GCC vectors), over the 9 * Cin
// taps: the weights are laid out tap-major so that each tap's block is one contiguous load. The maximum follows PyTorch's rules
// (first maximum wins, NaN propagates), then the ReLU. Compiled per instruction set (cpu_isa.h).
#include "pooling/conv3x3_max_pool2x2_relu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu_isa.h"
#include "elementwise.h"

namespace brainseg {
namespace {

constexpr int64_t kBlock = 16;  // output channels per register block

template <typename scalar_t>
struct Args {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x;
  scalar_t* out;
  const acc_t* weight;  // (9 * Cin, Cout rounded up to kBlock): tap-major, zero-padded channels
  const acc_t* bias;    // (Cout rounded up to kBlock)
  int64_t height, width, in_channels, out_channels, padded_out_channels;
};

// kBlock values as one GCC vector: one AVX-512 register of floats (two AVX2 ones, ...), so the
// accumulators of the tap loop stay in registers whatever the instruction set of the variant.
// (GCC ignores vector_size on a dependent type, hence one typedef per arithmetic type.)
template <typename acc_t>
struct BlockOf;
template <>
struct BlockOf<float> {
  typedef float type __attribute__((vector_size(kBlock * sizeof(float))));
};
template <>
struct BlockOf<double> {
  typedef double type __attribute__((vector_size(kBlock * sizeof(double))));
};
template <typename acc_t>
using Block = typename BlockOf<acc_t>::type;
static_assert(sizeof(Block<float>) == kBlock * sizeof(float), "Block<float> must hold kBlock floats");

template <typename acc_t>
BRAINSEG_ALWAYS_INLINE Block<acc_t> load_block(const acc_t* p) {
  Block<acc_t> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename scalar_t>
struct ForwardRows {
  // Pooled rows [begin, end) of the flattened (N, H/2).
  static BRAINSEG_ALWAYS_INLINE void run(const Args<scalar_t>* a, int64_t begin, int64_t end) {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t H = a->height, W = a->width, Cin = a->in_channels, Cout = a->out_channels;
    const int64_t out_h = H / 2, out_w = W / 2, padded_w = W + 2;
    std::vector<acc_t> window_rows(4 * padded_w * Cin);
    acc_t* __restrict__ rows = window_rows.data();
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / out_h, oy = row % out_h;
      for (int64_t r = 0; r < 4; ++r) {  // input row 2 * oy - 1 + r, padded by a zero column each side
        acc_t* __restrict__ dst = rows + r * padded_w * Cin;
        const int64_t iy = 2 * oy - 1 + r;
        std::fill(dst, dst + Cin, acc_t(0));
        std::fill(dst + (W + 1) * Cin, dst + padded_w * Cin, acc_t(0));
        if (iy < 0 || iy >= H) {
          std::fill(dst + Cin, dst + (W + 1) * Cin, acc_t(0));
          continue;
        }
        const scalar_t* __restrict__ src = a->x + (n * H + iy) * W * Cin;
#pragma omp simd
        for (int64_t i = 0; i < W * Cin; ++i) {
          dst[Cin + i] = load(src[i]);
        }
      }
      scalar_t* out_row = a->out + row * out_w * Cout;
      for (int64_t ox = 0; ox < out_w; ++ox) {
        for (int64_t co0 = 0; co0 < Cout; co0 += kBlock) {
          // the four convolution outputs of the window, for kBlock channels, in registers
          Block<acc_t> acc00 = load_block(a->bias + co0), acc01 = acc00, acc10 = acc00, acc11 = acc00;
          const acc_t* w = a->weight + co0;
          const acc_t* top_row = rows + 2 * ox * Cin;
          for (int64_t ky = 0; ky < 3; ++ky) {
            for (int64_t kxc = 0; kxc < 3 * Cin; ++kxc) {  // (kx, ci) are contiguous in a padded row
              // output (dy, dx) reads padded row dy + ky, column 2 * ox + dx + kx
              const acc_t* top = top_row + ky * padded_w * Cin + kxc;
              const acc_t* bottom = top + padded_w * Cin;
              const Block<acc_t> wv = load_block(w);
              w += a->padded_out_channels;
              acc00 += wv * top[0];
              acc01 += wv * top[Cin];
              acc10 += wv * bottom[0];
              acc11 += wv * bottom[Cin];
            }
          }
          // the maximum and ReLU as a plain simd loop (GCC scalarises the vector-typed version)
          acc_t window[4][kBlock], pooled[kBlock];
          std::memcpy(window[0], &acc00, sizeof(acc00));
          std::memcpy(window[1], &acc01, sizeof(acc01));
          std::memcpy(window[2], &acc10, sizeof(acc10));
          std::memcpy(window[3], &acc11, sizeof(acc11));
#pragma omp simd
          for (int64_t j = 0; j < kBlock; ++j) {
            acc_t m = window[0][j];
            for (int k = 1; k < 4; ++k) {
              const acc_t v = window[k][j];
              m = (v > m) | (v != v) ? v : m;  // PyTorch's rule: greater or NaN replaces
            }
            pooled[j] = m < acc_t(0) ? acc_t(0) : m;  // relu; a NaN stays NaN
          }
          const int64_t count = std::min(kBlock, Cout - co0);
          scalar_t* __restrict__ o = out_row + ox * Cout + co0;
          for (int64_t j = 0; j < count; ++j) {
            o[j] = store<scalar_t>(pooled[j]);
          }
        }
      }
    }
  }
};

}  // namespace

at::Tensor conv3x3_max_pool2x2_relu_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4, "conv3x3_max_pool2x2_relu: x must be a (N, C, H, W) CPU tensor, got ", x.sizes());
  TORCH_CHECK(
      x.is_contiguous(at::MemoryFormat::ChannelsLast), "conv3x3_max_pool2x2_relu: x must be channels-last contiguous");
  TORCH_CHECK(
      weight.dim() == 4 && weight.size(1) == x.size(1) && weight.size(2) == 3 && weight.size(3) == 3 && weight.size(0) >= 1,
      "conv3x3_max_pool2x2_relu: weight must be (Cout, ", x.size(1), ", 3, 3), got ", weight.sizes());
  TORCH_CHECK(
      bias.dim() == 1 && bias.size(0) == weight.size(0),
      "conv3x3_max_pool2x2_relu: bias must be (Cout,) with Cout = ", weight.size(0), ", got ", bias.sizes());
  const int64_t N = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3), Cout = weight.size(0);
  auto out = at::empty({N, Cout, H / 2, W / 2}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) {
    return out;
  }
  const int64_t padded = (Cout + kBlock - 1) / kBlock * kBlock;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "conv3x3_max_pool2x2_relu_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    // (Cout, Cin, ky, kx) -> (ky, kx, Cin, Cout), output channels zero-padded to whole blocks
    auto w = at::zeros({9 * Cin, padded}, weight.options().dtype(acc_type));
    w.narrow(1, 0, Cout).copy_(weight.to(acc_type).permute({2, 3, 1, 0}).reshape({9 * Cin, Cout}));
    auto b = at::zeros({padded}, bias.options().dtype(acc_type));
    b.narrow(0, 0, Cout).copy_(bias.to(acc_type));
    Args<scalar_t> a{};
    a.x = x.const_data_ptr<scalar_t>();
    a.out = out.mutable_data_ptr<scalar_t>();
    a.weight = w.const_data_ptr<acc_t>();
    a.bias = b.const_data_ptr<acc_t>();
    a.height = H;
    a.width = W;
    a.in_channels = Cin;
    a.out_channels = Cout;
    a.padded_out_channels = padded;
    at::parallel_for(0, N * (H / 2), 1, [&](int64_t begin, int64_t end) {
      run_for_isa<ForwardRows<scalar_t>>(&a, begin, end);
    });
  });
  return out;
}

}  // namespace brainseg
