// Conversions between a tensor's element type and float, over whole rows. The bfloat16 ones work on the bits so that
// the compiler vectorises them (c10::BFloat16's own conversions, called per element inside a computing loop, keep it
// from vectorising that loop); rounding is c10's: to nearest even, NaN to the quiet NaN.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>

#include <cstdint>
#include <type_traits>

#include "bits.h"
#include "multiversion.h"

namespace zskt {
namespace {

// Whether a type is computed in a wider one (bfloat16, float16 in float): rows of it are converted once, not per pass.
template <typename scalar_t>
constexpr bool kWidened = !std::is_same_v<scalar_t, at::opmath_type<scalar_t>>;

template <typename src_t, typename dst_t>
[[maybe_unused]] ZSKT_MULTIVERSION void convert(const src_t* __restrict__ src, dst_t* __restrict__ dst,
                                                int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<dst_t>(src[i]);
}

// bfloat16 is the top half of a float: a shift.
inline float float_of_bf16_bits(uint16_t bits) { return float_of_bits(static_cast<uint32_t>(bits) << 16); }

inline uint16_t bf16_bits_of(float value) {
  const uint32_t u = bits_of_float(value);
  const uint32_t rounded = (u + UINT32_C(0x7FFF) + ((u >> 16) & 1)) >> 16;
  return value != value ? UINT16_C(0x7FC0) : static_cast<uint16_t>(rounded);
}

[[maybe_unused]] ZSKT_MULTIVERSION void convert(const c10::BFloat16* __restrict__ src, float* __restrict__ dst,
                                                int64_t n) {
  const auto* bits = reinterpret_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = float_of_bf16_bits(bits[i]);
}

[[maybe_unused]] ZSKT_MULTIVERSION void convert(const float* __restrict__ src, c10::BFloat16* __restrict__ dst,
                                                int64_t n) {
  auto* bits = reinterpret_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) bits[i] = bf16_bits_of(src[i]);
}

}  // namespace
}  // namespace zskt
