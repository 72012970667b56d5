// Hot loops of the CPU kernels are compiled for the x86-64 levels v4 (AVX-512) and v3 (AVX2 with fused multiply-add
// and F16C), and for the baseline, and the loader picks the one the processor runs (GCC function multiversioning): a
// build runs on any x86-64 and uses the vector units of the one it runs on. GCC before 12 has no dispatcher for the
// levels; there the clones name the instruction sets alone (without fused multiply-add).
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define ZSKT_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ZSKT_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ZSKT_MULTIVERSION
#endif

// For helpers (lambdas included) called from a multiversioned function: a helper that is not inlined is compiled once,
// for the baseline, and its loops run without the clone's vector units.
#if defined(__GNUC__)
#define ZSKT_INLINE_INTO_CLONE __attribute__((always_inline))
#else
#define ZSKT_INLINE_INTO_CLONE
#endif
