// The CUDA KL kernels' arithmetic (csrc/kl_state.h) in the CUDA kernels' order, run on the host: test_kl_state.py
// compiles this file and checks its results against the float64 reference, so that the one-sweep state, its merges and
// the gradient formulas are tested on machines without a GPU.
//
// stdin:  B C T mode chunk_size, then B*C student logits, B*C teacher logits and B upstream gradients, as hex floats.
//         mode "warp": a warp of 32 lanes per row (kl_forward_warp_kernel); mode "chunks": blocks of 256 threads over
//         chunks of chunk_size classes, then the chunk states merged by a warp (kl_forward_chunk_kernel and
//         kl_merge_chunks_kernel).
// stdout: per row, kl, stats_s[2], stats_t[4]; then the student gradients, then the teacher gradients, as hex floats.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../csrc/kl_state.h"

using State = zskt::KlState<float, zskt::Base2Exp>;  // the exponentials as the CUDA kernels take them

namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;

float read_float() {
  char text[64];
  if (std::scanf("%63s", text) != 1) std::exit(2);
  return std::strtof(text, nullptr);
}

// Lane l ends with the merge of its own state and lane l ^ offset's, offsets 16, 8, 4, 2, 1 (__shfl_xor_sync).
State warp_merge(std::vector<State> lanes, float tau) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    std::vector<State> next = lanes;
    for (int l = 0; l < kWarp; ++l) next[l].merge(lanes[l ^ offset], tau);
    lanes = next;
  }
  return lanes[0];
}

// Threads first + i, first + i + stride, ... of a row fold their classes.
State fold(const float* s, const float* t, long first, long end, long stride, float inv_tau) {
  State state = State::empty();
  for (long c = first; c < end; c += stride) state.add(t[c], s[c], inv_tau);
  return state;
}

State block_state(const float* s, const float* t, long first, long end, float inv_tau) {
  std::vector<State> warps;
  for (int w = 0; w < kThreads / kWarp; ++w) {
    std::vector<State> lanes;
    for (int l = 0; l < kWarp; ++l) lanes.push_back(fold(s, t, first + w * kWarp + l, end, kThreads, inv_tau));
    warps.push_back(warp_merge(lanes, inv_tau));
  }
  while (warps.size() < kWarp) warps.push_back(State::empty());
  return warp_merge(warps, inv_tau);
}

}  // namespace

int main() {
  long B, C, chunk_size;
  char mode[16];
  if (std::scanf("%ld %ld", &B, &C) != 2) return 2;
  const float T = read_float();
  if (std::scanf("%15s %ld", mode, &chunk_size) != 2) return 2;
  std::vector<float> s(B * C), t(B * C), g(B);
  for (auto& x : s) x = read_float();
  for (auto& x : t) x = read_float();
  for (auto& x : g) x = read_float();
  const float inv_tau = 1.0f / T;
  std::vector<float> stats_s(2 * B), stats_t(4 * B);
  for (long b = 0; b < B; ++b) {
    const float* sr = s.data() + b * C;
    const float* tr = t.data() + b * C;
    State state = State::empty();
    if (std::strcmp(mode, "warp") == 0) {
      std::vector<State> lanes;
      for (int l = 0; l < kWarp; ++l) lanes.push_back(fold(sr, tr, l, C, kWarp, inv_tau));
      state = warp_merge(lanes, inv_tau);
    } else {
      const long chunks = (C + chunk_size - 1) / chunk_size;
      std::vector<State> lanes(kWarp, State::empty());
      for (long j = 0; j < chunks; ++j) {
        const long first = j * chunk_size, end = first + chunk_size < C ? first + chunk_size : C;
        lanes[j % kWarp].merge(block_state(sr, tr, first, end, inv_tau), inv_tau);
      }
      state = chunks == 1 ? lanes[0] : warp_merge(lanes, inv_tau);
    }
    float kl;
    state.finish(inv_tau, &kl, stats_s.data() + 2 * b, stats_t.data() + 4 * b);
    std::printf("%a %a %a %a %a %a %a\n", kl, stats_s[2 * b], stats_s[2 * b + 1], stats_t[4 * b], stats_t[4 * b + 1],
                stats_t[4 * b + 2], stats_t[4 * b + 3]);
  }
  std::vector<float> grad_s(B * C), grad_t(B * C);
  for (long i = 0; i < B * C; ++i) {
    const long b = i / C;
    zskt::kl_gradients<true, true>(t[i], s[i], inv_tau, stats_s.data() + 2 * b, stats_t.data() + 4 * b,
                                   g[b] * inv_tau, zskt::Base2Exp{}, grad_s[i], grad_t[i]);
  }
  for (float x : grad_s) std::printf("%a\n", x);
  for (float x : grad_t) std::printf("%a\n", x);
  return 0;
}
