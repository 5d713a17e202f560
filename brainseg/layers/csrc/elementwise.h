// Element helpers shared by brainseg's CPU kernels: loads/stores between a tensor's dtype and its
// arithmetic type (at::opmath_type: float for bf16/half), written so that channel loops vectorise.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>

#include <bit>
#include <cstdint>
#include <type_traits>

#include "cpu_isa.h"

namespace brainseg {

// Element conversions to and from the arithmetic type. bf16 <-> float by bit operations (round to
// nearest even, NaN kept), so that the channel loops vectorise (c10's conversions do not inline into
// the per-ISA variants); other types by plain conversion.
template <typename scalar_t>
BRAINSEG_ALWAYS_INLINE at::opmath_type<scalar_t> load(scalar_t v) {
  return static_cast<at::opmath_type<scalar_t>>(v);
}

template <>
BRAINSEG_ALWAYS_INLINE float load<c10::BFloat16>(c10::BFloat16 v) {
  return std::bit_cast<float>(static_cast<uint32_t>(v.x) << 16);
}

template <typename scalar_t>
BRAINSEG_ALWAYS_INLINE scalar_t store(at::opmath_type<scalar_t> v) {
  return static_cast<scalar_t>(v);
}

template <>
BRAINSEG_ALWAYS_INLINE c10::BFloat16 store<c10::BFloat16>(float v) {
  const uint32_t bits = std::bit_cast<uint32_t>(v);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const bool nan = (bits & 0x7fffffffu) > 0x7f800000u;  // an integer test: the loops stay branch-free
  return c10::BFloat16(static_cast<uint16_t>(nan ? 0x7fc0u : rounded), c10::BFloat16::from_bits());
}

// v rounded to scalar_t and back (what storing v in a scalar_t tensor and reading it keeps). For
// bf16 by 32-bit operations only, so that loops over a few channels still vectorise.
template <typename scalar_t>
BRAINSEG_ALWAYS_INLINE at::opmath_type<scalar_t> round_through(at::opmath_type<scalar_t> v) {
  return load(store<scalar_t>(v));
}

template <>
BRAINSEG_ALWAYS_INLINE float round_through<c10::BFloat16>(float v) {
  const uint32_t bits = std::bit_cast<uint32_t>(v);
  const float rounded = std::bit_cast<float>((bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u);
  return v != v ? v : rounded;  // (a NaN could round to infinity; a float select vectorises)
}

template <>
BRAINSEG_ALWAYS_INLINE float round_through<float>(float v) {
  return v;
}

template <>
BRAINSEG_ALWAYS_INLINE double round_through<double>(double v) {
  return v;
}

// ReLU's gradient: x unless v <= 0 (so a NaN v passes x, as PyTorch's threshold_backward does), by
// a bit mask: GCC turns a `v <= 0 ? 0 : x` feeding an accumulation into a conditional store,
// which only AVX-512 can vectorise.
template <typename acc_t>
BRAINSEG_ALWAYS_INLINE acc_t relu_grad(acc_t v, acc_t x) {
  using Bits = std::conditional_t<sizeof(acc_t) == 4, uint32_t, uint64_t>;
  const Bits mask = Bits(0) - static_cast<Bits>(!(v <= acc_t(0)));
  return std::bit_cast<acc_t>(std::bit_cast<Bits>(x) & mask);
}

}  // namespace brainseg
