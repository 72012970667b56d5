// A float's bits and back (bit casts the compiler vectorises). Torch-free: exp.h, which the tests build alone, uses it.
#pragma once

#include <cstdint>
#include <cstring>

namespace zskt {

inline float float_of_bits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint32_t bits_of_float(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

}  // namespace zskt
