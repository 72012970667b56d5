// exp(x) in float, inline, so that the compiler vectorises the KL kernel's exp-bound loops without a call per vector
// (glibc's vector expf, reached through a call, measured half as fast in those loops). Torch-free: the tests build it
// alone and check it against exp in double over every 61st float32 bit pattern in a range, and the special values.
//
// x = n ln2 + r with n = round(x / ln2) and |r| <= ln2 / 2 (ln2 in two parts, the first exact in few bits, so that
// n * first is exact), exp(r) by a polynomial of degree 6 fitted to the relative error on that interval (at most
// 3.1e-9 in exact arithmetic; in float the result is within 1.15 units in the last place), and 2^n applied in two
// halves so that results below the smallest normal float round once, to the nearest subnormal. Special values: NaN
// gives NaN, -inf and x < -104 give 0, +inf and x > 89 give +inf.
#pragma once

#include <cstdint>

#include "bits.h"

namespace zskt {

inline float exp_float(float x) {
  // Clamped by comparisons, which a NaN fails: it goes through and makes the polynomial NaN.
  x = x > 89.0f ? 89.0f : x;
  x = x < -104.0f ? -104.0f : x;
  // Adding 1.5 * 2^23 rounds x / ln2 to an integer n held in the low bits of the sum's mantissa.
  constexpr float kRound = 12582912.0f;
  const float shifted = x * 1.44269504088896341f + kRound;
  const float n = shifted - kRound;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.38203416e-3f;
  p = p * r + 8.36871006e-3f;
  p = p * r + 4.16682847e-2f;
  p = p * r + 1.66665211e-1f;
  p = p * r + 4.99999940e-1f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t k = static_cast<int32_t>(bits_of_float(shifted) - bits_of_float(kRound));
  const int32_t half = k >> 1;  // 2^k = 2^half 2^(k - half), each a normal float for k in [-150, 129]
  const float first = float_of_bits(static_cast<uint32_t>(half + 127) << 23);
  const float second = float_of_bits(static_cast<uint32_t>(k - half + 127) << 23);
  return p * first * second;
}

}  // namespace zskt
