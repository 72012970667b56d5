// Hot loops of the CPU kernels are compiled twice, for AVX2 and for the baseline x86-64, and the loader picks the one
// the processor runs (GCC function multiversioning): AVX2 halves their time, and a build must still run on processors
// without it.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ZSKT_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ZSKT_MULTIVERSION
#endif
