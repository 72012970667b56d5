// The CPU KL kernel's float exp (csrc/cpu/exp.h) against exp in double, rounded to float: test_exp.py compiles this
// file (with and without fused multiply-adds, as the kernel's clones are) and checks what it prints.
//
// stdout, one "name value" per line:
//   max_ulp      the largest error over every stride-th float in [-110, 95] (both signs' bit patterns walked), in
//                units of the spacing of floats at the exact result (the subnormal spacing below the normal range)
//   checked      how many inputs that was
//   special_bad  how many of the special inputs (NaN, +-inf, +-0, the ends of the range) gave a wrong result
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <limits>

#include "../csrc/cpu/exp.h"

namespace {

// An input whose value hides it from the optimiser, so that exp_float is compiled as the kernel compiles it (in a
// loop over values it cannot fold).
volatile float sink;

double ulp_error(float x) {
  const double exact = std::exp(static_cast<double>(x));
  const float got = zskt::exp_float(x);
  const float rounded = static_cast<float>(exact);
  if (std::isinf(rounded)) return std::isinf(got) ? 0.0 : 1e9;
  // Spacing at the exact result: the float spacing at its binade, at least the subnormal spacing.
  int exponent;
  std::frexp(exact, &exponent);
  const double spacing = std::fmax(std::ldexp(1.0, exponent - 24), std::ldexp(1.0, -149));
  return std::fabs(static_cast<double>(got) - exact) / spacing;
}

bool same(float got, float expected) {
  if (std::isnan(expected)) return std::isnan(got);
  return got == expected;
}

}  // namespace

int main() {
  constexpr uint32_t kStride = 61;
  double max_ulp = 0;
  long checked = 0;
  for (uint32_t sign : {0u, 0x80000000u}) {
    for (uint32_t magnitude = 0; magnitude < 0x7F800000u; magnitude += kStride) {
      const uint32_t bits = sign | magnitude;
      float x;
      std::memcpy(&x, &bits, sizeof x);
      if (x < -110.0f || x > 95.0f) continue;
      sink = x;
      max_ulp = std::fmax(max_ulp, ulp_error(sink));
      ++checked;
    }
  }
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const float inputs[] = {nan, -nan, inf, -inf, 0.0f, -0.0f, -104.0f, -110.0f, -1e30f, 89.0f, 100.0f, 1e30f};
  const float expected[] = {nan, nan, inf, 0.0f, 1.0f, 1.0f, 0.0f, 0.0f, 0.0f, inf, inf, inf};
  int special_bad = 0;
  for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; ++i) {
    sink = inputs[i];
    if (!same(zskt::exp_float(sink), expected[i])) {
      std::fprintf(stderr, "exp_float(%a) = %a, expected %a\n", inputs[i], zskt::exp_float(sink), expected[i]);
      ++special_bad;
    }
  }
  std::printf("max_ulp %.6f\nchecked %ld\nspecial_bad %d\n", max_ulp, checked, special_bad);
  return 0;
}
