// CPU kernel of the Winograd F(4x4, 3x3) convolution: see winograd_conv3x3.h.
//
// The output is cut into 4x4 tiles, numbered over (image, tile row, tile column); a task takes a
// block of consecutive tiles and, in buffers that stay in the core's L2 cache:
//   1. transforms each tile's 6x6 input patch (zeros outside the image), V = B^T d B, 16 input
//      channels at a time (GCC vectors): V is (36 points, tiles, input channels);
//   2. per chunk of up to kMaxChunkVectors * 16 output channels, multiplies at each of the 36 points
//      the (tiles x Cin) matrix of V by the (Cin x chunk) matrix of the transformed weights
//      U = G g G^T, with a register-blocked kernel (rows of tiles x vectors of output channels);
//   3. takes each tile's 36 products back, Y = A^T M A, adds the bias and stores the 4x4 tile (or its
//      four 2x2 max-pooled, ReLU'd values) where it lies inside the output.
// Each output is computed by one task in a fixed order, so results do not depend on the number of
// threads. Compiled per instruction set (cpu_isa.h); the register block is chosen per variant.
#include "conv/winograd_conv3x3.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu_isa.h"

namespace brainseg {
namespace {

constexpr int64_t kLanes = 16;  // channels per vector
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
constexpr int64_t kTile = 4;    // output tile side
constexpr int64_t kPatch = 6;   // input patch side
constexpr int64_t kPoints = kPatch * kPatch;
constexpr int64_t kMaxChunkVectors = 4;  // output-channel vectors per register block, at most
// bytes of the per-task buffers (V and M) that should stay in L2 with room for U's rows
constexpr int64_t kBlockBytes = 768 * 1024;

BRAINSEG_ALWAYS_INLINE Vec load_vec(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

BRAINSEG_ALWAYS_INLINE void store_vec(float* p, const Vec& v) {
  std::memcpy(p, &v, sizeof(v));
}

// count (< kLanes) lanes from p, zeros in the others
BRAINSEG_ALWAYS_INLINE Vec load_partial(const float* p, int64_t count) {
  float lanes[kLanes] = {};
  std::memcpy(lanes, p, count * sizeof(float));
  return load_vec(lanes);
}

// out[i * s] = (B^T in)[i] for in[k * s], k < 6: the input transform along one axis
BRAINSEG_ALWAYS_INLINE void input_transform_1d(const Vec* in, Vec* out, int64_t s) {
  const Vec d0 = in[0], d1 = in[s], d2 = in[2 * s], d3 = in[3 * s], d4 = in[4 * s], d5 = in[5 * s];
  out[0] = 4.0f * d0 - 5.0f * d2 + d4;
  out[s] = d3 + d4 - 4.0f * (d1 + d2);
  out[2 * s] = d4 - d3 + 4.0f * (d1 - d2);
  out[3 * s] = d4 - d2 + 2.0f * (d3 - d1);
  out[4 * s] = d4 - d2 + 2.0f * (d1 - d3);
  out[5 * s] = 4.0f * d1 - 5.0f * d3 + d5;
}

// out[i * so] = (A^T in)[i] for in[k * si], i < 4, k < 6: the output transform along one axis
BRAINSEG_ALWAYS_INLINE void output_transform_1d(const Vec* in, int64_t si, Vec* out, int64_t so) {
  const Vec m0 = in[0], m1 = in[si], m2 = in[2 * si], m3 = in[3 * si], m4 = in[4 * si], m5 = in[5 * si];
  const Vec sum12 = m1 + m2, diff12 = m1 - m2, sum34 = m3 + m4, diff34 = m3 - m4;
  out[0] = m0 + sum12 + sum34;
  out[so] = diff12 + 2.0f * diff34;
  out[2 * so] = sum12 + 4.0f * sum34;
  out[3 * so] = diff12 + 8.0f * diff34 + m5;
}

struct Args {
  const float* x;
  float* out;
  const float* u;     // (36, padded_in, padded_out): transformed weights, zero-padded channels
  const float* bias;  // (padded_out)
  int64_t height, width, in_channels, out_channels, padded_in, padded_out;
  int64_t tiles_y, tiles_x, tiles;  // tile rows and columns per image; tiles of the batch
  int64_t block_tiles;              // tiles per task block: a multiple of the register block's rows
  bool pool;
};

// M[r, :] = sum_k V[r, k] U[k, :] for kRows rows of tiles and kVectors vectors of output channels.
template <int kRows, int kVectors>
BRAINSEG_ALWAYS_INLINE void multiply_rows(
    const float* __restrict__ v, int64_t v_stride, const float* __restrict__ u, int64_t u_stride,
    int64_t depth, float* __restrict__ m, int64_t m_stride) {
  Vec acc[kRows][kVectors];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < kVectors; ++j) {
      acc[r][j] = Vec{};
    }
  }
  for (int64_t k = 0; k < depth; ++k) {
    Vec b[kVectors];
#pragma GCC unroll 4
    for (int j = 0; j < kVectors; ++j) {
      b[j] = load_vec(u + k * u_stride + j * kLanes);
    }
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const float a = v[r * v_stride + k];
#pragma GCC unroll 4
      for (int j = 0; j < kVectors; ++j) {
        acc[r][j] += b[j] * a;
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < kVectors; ++j) {
      store_vec(m + r * m_stride + j * kLanes, acc[r][j]);
    }
  }
}

template <int kRows>
struct Blocks {
  // Each point's product for rows [0, rows) (a multiple of kRows) and one chunk of vectors.
  template <int kVectors>
  static BRAINSEG_ALWAYS_INLINE void multiply_chunk(
      const Args* a, const float* v, int64_t rows, int64_t co0, float* m) {
    const int64_t cin = a->padded_in, chunk = kVectors * kLanes;
    for (int64_t e = 0; e < kPoints; ++e) {
      const float* ve = v + e * rows * cin;
      const float* ue = a->u + e * cin * a->padded_out + co0;
      float* me = m + e * rows * chunk;
      for (int64_t r = 0; r < rows; r += kRows) {
        multiply_rows<kRows, kVectors>(ve + r * cin, cin, ue, a->padded_out, cin, me + r * chunk, chunk);
      }
    }
  }

  // Tiles [first, first + count) of the batch.
  static BRAINSEG_ALWAYS_INLINE void run_block(const Args* a, int64_t first, int64_t count, float* v, float* m) {
    const int64_t H = a->height, W = a->width, Cin = a->in_channels, cin = a->padded_in;
    const int64_t rows = (count + kRows - 1) / kRows * kRows;
    // 1. input transform
    Vec d[kPoints], t[kPoints];
    for (int64_t i = 0; i < rows; ++i) {
      if (i >= count) {  // rows padding the block to whole register blocks
        for (int64_t e = 0; e < kPoints; ++e) {
          std::fill(v + (e * rows + i) * cin, v + (e * rows + i + 1) * cin, 0.0f);
        }
        continue;
      }
      const int64_t tile = first + i;
      const int64_t n = tile / (a->tiles_y * a->tiles_x), ty = tile / a->tiles_x % a->tiles_y, tx = tile % a->tiles_x;
      const int64_t y0 = ty * kTile - 1, x0 = tx * kTile - 1;
      const bool inside = y0 >= 0 && x0 >= 0 && y0 + kPatch <= H && x0 + kPatch <= W;
      const float* image = a->x + n * H * W * Cin;
      for (int64_t c = 0; c < cin; c += kLanes) {
        const int64_t lanes = std::min(kLanes, Cin - c);
        for (int64_t py = 0; py < kPatch; ++py) {
          for (int64_t px = 0; px < kPatch; ++px) {
            const int64_t iy = y0 + py, ix = x0 + px;
            if (inside && lanes == kLanes) {
              d[py * kPatch + px] = load_vec(image + (iy * W + ix) * Cin + c);
            } else if (iy < 0 || iy >= H || ix < 0 || ix >= W || lanes <= 0) {
              d[py * kPatch + px] = Vec{};
            } else {
              d[py * kPatch + px] = load_partial(image + (iy * W + ix) * Cin + c, lanes);
            }
          }
        }
        for (int64_t px = 0; px < kPatch; ++px) {  // along y, per column
          input_transform_1d(d + px, t + px, kPatch);
        }
        for (int64_t py = 0; py < kPatch; ++py) {  // along x, per row
          input_transform_1d(t + py * kPatch, d + py * kPatch, 1);
        }
        for (int64_t e = 0; e < kPoints; ++e) {
          store_vec(v + (e * rows + i) * cin + c, d[e]);
        }
      }
    }
    // 2. products per chunk of output channels, 3. output transform of the chunk
    for (int64_t co0 = 0; co0 < a->padded_out; co0 += kMaxChunkVectors * kLanes) {
      const int64_t vectors = std::min(kMaxChunkVectors, (a->padded_out - co0) / kLanes);
      switch (vectors) {
        case 1:
          multiply_chunk<1>(a, v, rows, co0, m);
          break;
        case 2:
          multiply_chunk<2>(a, v, rows, co0, m);
          break;
        case 3:
          multiply_chunk<3>(a, v, rows, co0, m);
          break;
        default:
          multiply_chunk<4>(a, v, rows, co0, m);
          break;
      }
      store_chunk(a, first, count, rows, co0, vectors * kLanes, m);
    }
  }

  static BRAINSEG_ALWAYS_INLINE void store_chunk(
      const Args* a, int64_t first, int64_t count, int64_t rows, int64_t co0, int64_t chunk, const float* m) {
    const int64_t H = a->height, W = a->width, Cout = a->out_channels;
    const int64_t out_h = a->pool ? H / 2 : H, out_w = a->pool ? W / 2 : W;
    Vec p[kPoints], t[kTile * kPatch], y[kTile * kTile];
    for (int64_t i = 0; i < count; ++i) {
      const int64_t tile = first + i;
      const int64_t n = tile / (a->tiles_y * a->tiles_x), ty = tile / a->tiles_x % a->tiles_y, tx = tile % a->tiles_x;
      float* image = a->out + n * out_h * out_w * Cout;
      for (int64_t c = 0; c < chunk; c += kLanes) {
        const int64_t co = co0 + c, lanes = std::min(kLanes, Cout - co);
        if (lanes <= 0) {
          break;
        }
        for (int64_t e = 0; e < kPoints; ++e) {
          p[e] = load_vec(m + (e * rows + i) * chunk + c);
        }
        for (int64_t px = 0; px < kPatch; ++px) {  // along y, per column: 6x6 -> 4x6
          output_transform_1d(p + px, kPatch, t + px, kPatch);
        }
        for (int64_t oy = 0; oy < kTile; ++oy) {  // along x, per row: 4x6 -> 4x4
          output_transform_1d(t + oy * kPatch, 1, y + oy * kTile, 1);
        }
        const Vec b = load_vec(a->bias + co);
        for (int64_t k = 0; k < kTile * kTile; ++k) {
          y[k] += b;
        }
        int64_t side = kTile, y_base = ty * kTile, x_base = tx * kTile;
        if (a->pool) {  // 2x2 windows: greater or NaN replaces (PyTorch's rule), then ReLU
          side = kTile / 2, y_base /= 2, x_base /= 2;
          for (int64_t wy = 0; wy < side; ++wy) {
            for (int64_t wx = 0; wx < side; ++wx) {
              float window[4][kLanes], pooled[kLanes];
              for (int64_t k = 0; k < 4; ++k) {
                store_vec(window[k], y[(2 * wy + k / 2) * kTile + 2 * wx + k % 2]);
              }
#pragma omp simd
              for (int64_t j = 0; j < kLanes; ++j) {
                float best = window[0][j];
                for (int k = 1; k < 4; ++k) {
                  const float value = window[k][j];
                  best = (value > best) | (value != value) ? value : best;
                }
                pooled[j] = best < 0.0f ? 0.0f : best;
              }
              y[wy * kTile + wx] = load_vec(pooled);
            }
          }
        }
        for (int64_t oy = 0; oy < side && y_base + oy < out_h; ++oy) {
          for (int64_t ox = 0; ox < side && x_base + ox < out_w; ++ox) {
            float* dst = image + ((y_base + oy) * out_w + x_base + ox) * Cout + co;
            const Vec value = y[oy * kTile + ox];
            if (lanes == kLanes) {
              store_vec(dst, value);
            } else {
              float lane_values[kLanes];
              store_vec(lane_values, value);
              std::memcpy(dst, lane_values, lanes * sizeof(float));
            }
          }
        }
      }
    }
  }

  // Blocks [begin, end) of a->block_tiles tiles.
  static BRAINSEG_ALWAYS_INLINE void run(const Args* a, int64_t begin, int64_t end) {
    std::vector<float> v(kPoints * a->block_tiles * a->padded_in);
    std::vector<float> m(kPoints * a->block_tiles * kMaxChunkVectors * kLanes);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block * a->block_tiles;
      run_block(a, first, std::min(a->block_tiles, a->tiles - first), v.data(), m.data());
    }
  }
};

int64_t round_up_to_vectors(int64_t channels) {
  return (channels + kLanes - 1) / kLanes * kLanes;
}

}  // namespace

at::Tensor winograd_conv3x3_weight(const at::Tensor& weight) {
  TORCH_CHECK(
      weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3 && weight.size(0) >= 1 && weight.size(1) >= 1,
      "winograd_conv3x3_weight: weight must be (Cout, Cin, 3, 3), got ", weight.sizes());
  const int64_t Cout = weight.size(0), Cin = weight.size(1);
  const auto g = weight.to(at::kDouble).contiguous().cpu();
  auto u = at::zeros({kPoints, round_up_to_vectors(Cin), round_up_to_vectors(Cout)}, g.options().dtype(at::kFloat));
  const double G[kPatch][3] = {{1.0 / 4, 0.0, 0.0}, {-1.0 / 6, -1.0 / 6, -1.0 / 6}, {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                               {1.0 / 24, 1.0 / 12, 1.0 / 6}, {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0.0, 0.0, 1.0}};
  const double* gp = g.const_data_ptr<double>();
  float* up = u.mutable_data_ptr<float>();
  const int64_t stride_point = u.size(1) * u.size(2), stride_in = u.size(2);
  at::parallel_for(0, Cout * Cin, 64, [&](int64_t begin, int64_t end) {
    for (int64_t pair = begin; pair < end; ++pair) {  // U = G g G^T for one (co, ci) filter
      const int64_t co = pair / Cin, ci = pair % Cin;
      const double* f = gp + pair * 9;
      double rows[kPatch][3];
      for (int64_t i = 0; i < kPatch; ++i) {
        for (int64_t k = 0; k < 3; ++k) {
          rows[i][k] = G[i][0] * f[k] + G[i][1] * f[3 + k] + G[i][2] * f[6 + k];
        }
      }
      for (int64_t i = 0; i < kPatch; ++i) {
        for (int64_t j = 0; j < kPatch; ++j) {
          const double value = rows[i][0] * G[j][0] + rows[i][1] * G[j][1] + rows[i][2] * G[j][2];
          up[(i * kPatch + j) * stride_point + ci * stride_in + co] = static_cast<float>(value);
        }
      }
    }
  });
  return u.to(weight.device());
}

at::Tensor winograd_conv3x3_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, bool pool) {
  TORCH_CHECK(
      x.device().is_cpu() && x.dim() == 4 && x.scalar_type() == at::kFloat,
      "winograd_conv3x3: x must be a (N, C, H, W) float32 CPU tensor, got ", x.scalar_type(), " ", x.sizes());
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), "winograd_conv3x3: x must be channels-last contiguous");
  const int64_t N = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3), Cout = bias.size(0);
  const int64_t padded_in = round_up_to_vectors(Cin), padded_out = round_up_to_vectors(Cout);
  TORCH_CHECK(
      weight.dim() == 3 && weight.size(0) == kPoints && weight.size(1) == padded_in && weight.size(2) == padded_out &&
          weight.scalar_type() == at::kFloat && weight.is_contiguous() && weight.device().is_cpu(),
      "winograd_conv3x3: weight must be the float32 (36, ", padded_in, ", ", padded_out,
      ") transform of a (", Cout, ", ", Cin, ", 3, 3) filter (winograd_conv3x3_weight), got ", weight.scalar_type(),
      " ", weight.sizes());
  TORCH_CHECK(
      bias.dim() == 1 && Cout >= 1 && bias.scalar_type() == at::kFloat && bias.is_contiguous(),
      "winograd_conv3x3: bias must be a float32 (Cout,) tensor, got ", bias.scalar_type(), " ", bias.sizes());
  auto out = at::empty(
      {N, Cout, pool ? H / 2 : H, pool ? W / 2 : W}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) {
    return out;
  }
  auto b = at::zeros({padded_out}, x.options());
  b.narrow(0, 0, Cout).copy_(bias);

  const bool wide = kernel_isa() == CpuIsa::kAvx512;  // 32 vector registers: 6 x 4 accumulators
  const int64_t rows = wide ? 6 : 3;
  Args a{};
  a.x = x.const_data_ptr<float>();
  a.out = out.mutable_data_ptr<float>();
  a.u = weight.const_data_ptr<float>();
  a.bias = b.const_data_ptr<float>();
  a.height = H;
  a.width = W;
  a.in_channels = Cin;
  a.out_channels = Cout;
  a.padded_in = padded_in;
  a.padded_out = padded_out;
  a.tiles_y = (H + kTile - 1) / kTile;
  a.tiles_x = (W + kTile - 1) / kTile;
  a.tiles = N * a.tiles_y * a.tiles_x;
  a.pool = pool;
  const int64_t bytes_per_tile = kPoints * (padded_in + kMaxChunkVectors * kLanes) * int64_t(sizeof(float));
  const int64_t per_thread = (a.tiles + at::get_num_threads() - 1) / at::get_num_threads();
  a.block_tiles = std::max<int64_t>(1, std::min(kBlockBytes / bytes_per_tile, per_thread) / rows) * rows;
  const int64_t blocks = (a.tiles + a.block_tiles - 1) / a.block_tiles;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    if (wide) {
      run_for_isa<Blocks<6>>(&a, begin, end);
    } else {
      run_for_isa<Blocks<3>>(&a, begin, end);
    }
  });
  return out;
}

}  // namespace brainseg
