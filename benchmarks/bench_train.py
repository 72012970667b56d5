"""Iterations per second of the trainer against a faithful eager implementation of the authors' loop.

Both run Algorithm 1 with WRN-40-2 (randomly initialised, frozen) -> WRN-16-1, batch 128, 32x32x3, n_G = 1, n_S = 10.

authors-eager  the authors' loop as released: plain float32 eager PyTorch, G(z) recomputed before every student step
               (so each student backward also runs through G), losses from F.kl_div / F.normalize, weight gradients
               of the student computed in the generator step, CosineAnnealingLR.
zskt_fast      this package's trainer steps: images and teacher outputs once per iteration, fused loss ops, no weight
               gradients for networks that are not updated; on CUDA also AMP bf16, channels_last and CUDA graphs.
compiled       the same steps through torch.compile (--compile MODE); on CUDA mode default inside this trainer's CUDA
               graphs, and mode reduce-overhead (inductor's own graphs) without them, when ZSKT_BENCH_VARIANTS is
               compiled or all (see below). ZSKT_BENCH_AUTOTUNE=1 adds max-autotune-no-cudagraphs inside our graphs
               (its autotuning takes minutes).
The set-up column is the time from building the steps to the end of the first iteration: compilation (and capture),
reported apart from the step time.

    pytest benchmarks/bench_train.py --benchmark-json=benchmarks/out/train.json && python benchmarks/report.py ...
ZSKT_BENCH_ITERATIONS sets the iterations timed per round (default 1 on the CPU, 20 on a GPU). ZSKT_BENCH_SMOKE=1:
WRN-10-2 -> WRN-10-1, batch 4, n_S = 2, one round, no compiled variant (its compile alone takes over a minute here;
tests/test_train.py checks compiled steps against eager ones).
"""
import os
import time

import pytest
import torch
import torch.nn.functional as F

from zskt_fast.engine.loops.loop import zero_shot_knowledge_transfer
from zskt_fast.engine.methods.generator_strategy import algorithm_one_steps
from zskt_fast.engine.settings.parts import Context
from zskt_fast.engine.settings.zero_shot import ObjectiveSettings, StepSettings
from zskt_fast.models import Generator, build_classifier

from harness import SMOKE

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
BATCH, N_G, N_S, TEACHER, STUDENT = (4, 1, 2, "wrn-10-2", "wrn-10-1") if SMOKE else (128, 1, 10, "wrn-40-2",
                                                                                      "wrn-16-1")
ITERATIONS = int(os.environ.get("ZSKT_BENCH_ITERATIONS", 20 if HAS_CUDA and not SMOKE else 1))
PAPER_ITERATIONS = 80_000

# (name, amp, cuda graphs, channels_last, compile mode)
BASELINES = [("authors-eager", None, False, False, "off"), ("zskt_fast", "off", False, False, "off")]
EAGER_GPU = [("zskt_fast bf16", "bf16", False, True, "off"), ("zskt_fast bf16 + graphs", "bf16", True, True, "off"),
             ("zskt_fast bf16 + graphs, NCHW", "bf16", True, False, "off"),
             ("zskt_fast fp32 + graphs", "off", True, False, "off")]
COMPILED_GPU = [("zskt_fast bf16 + compiled + graphs", "bf16", True, True, "default"),
                ("zskt_fast bf16 + compiled reduce-overhead", "bf16", False, True, "reduce-overhead")]
if os.environ.get("ZSKT_BENCH_AUTOTUNE") == "1":
    COMPILED_GPU += [("zskt_fast bf16 + max-autotune-no-cudagraphs + graphs", "bf16", True, True,
                      "max-autotune-no-cudagraphs")]
# ZSKT_BENCH_VARIANTS on a GPU: eager (the default), compiled (the compiled variants beside the authors' loop and
# bf16 + graphs, for the ratios), or all. The GPU check runs the compiled ones in a later stage of their own, so that
# their compilation cannot eat the time of the others.
GPU_SET = os.environ.get("ZSKT_BENCH_VARIANTS", "eager")
if SMOKE:
    VARIANTS = BASELINES
elif not HAS_CUDA:  # bf16: what amp auto picks on CPUs with native bf16 instructions
    VARIANTS = BASELINES + [("zskt_fast compiled", "off", False, False, "default"),
                            ("zskt_fast compiled + channels_last", "off", False, True, "default"),
                            ("zskt_fast bf16", "bf16", False, False, "off"),
                            ("zskt_fast bf16 + channels_last", "bf16", False, True, "off"),
                            ("zskt_fast bf16 + compiled", "bf16", False, False, "default"),
                            ("zskt_fast bf16 + compiled + channels_last", "bf16", False, True, "default")]
elif GPU_SET == "compiled":
    VARIANTS = BASELINES[:1] + EAGER_GPU[1:2] + COMPILED_GPU
else:
    VARIANTS = BASELINES + EAGER_GPU + (COMPILED_GPU if GPU_SET == "all" else [])


def _networks(seed=0):
    torch.manual_seed(seed)
    teacher = build_classifier(TEACHER).to(DEVICE)
    student = build_classifier(STUDENT).to(DEVICE)
    generator = Generator(z_dim=100, image_size=32, channels=3).to(DEVICE)
    return teacher, student, generator


class AuthorsLoop:
    """The released training loop, written out from its description (see the module docstring)."""

    def __init__(self, iterations):
        self.teacher, self.student, self.generator = _networks()
        self.teacher.eval()
        self.opt_G = torch.optim.Adam(self.generator.parameters(), lr=1e-3)
        self.opt_S = torch.optim.Adam(self.student.parameters(), lr=2e-3)
        self.sched_G = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt_G, iterations)
        self.sched_S = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt_S, iterations)

    @staticmethod
    def kl(s, t):
        return F.kl_div(F.log_softmax(s, dim=1), F.softmax(t, dim=1))

    @staticmethod
    def at(x, y):
        def attention(a):
            return F.normalize(a.pow(2).mean(1).view(a.size(0), -1))
        return (attention(x) - attention(y)).pow(2).mean()

    def iteration(self):
        z = torch.randn(BATCH, 100, device=DEVICE)
        for _ in range(N_G):
            x = self.generator(z)
            s_logits, _ = self.student(x)
            t_logits, _ = self.teacher(x)
            loss = -self.kl(s_logits, t_logits)
            self.opt_G.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.generator.parameters(), 5)
            self.opt_G.step()
        for i in range(N_S):
            x = self.generator(z)
            if i == 0:
                with torch.no_grad():
                    t_logits, t_feats = self.teacher(x)
            s_logits, s_feats = self.student(x)
            loss = self.kl(s_logits, t_logits) + sum(250 * self.at(s, t) for s, t in zip(s_feats, t_feats))
            self.opt_S.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), 5)
            self.opt_S.step()
        self.sched_S.step()
        self.sched_G.step()

    def run(self, n):
        for _ in range(n):
            self.iteration()


class PackageLoop:
    def __init__(self, amp, graphs, channels_last, iterations, compile="off"):
        teacher, student, generator = _networks()
        settings = StepSettings(batch_size=BATCH, amp=amp, channels_last=channels_last, compile=compile)
        self.steps = algorithm_one_steps(teacher, student, generator, ObjectiveSettings().resolved(),
                                         settings.resolved(Context(device=DEVICE)), device=DEVICE, seed=0,
                                         graphed=graphs)
        self.iterations, self.done = iterations, 0
        if graphs:
            self.steps.set_learning_rates(0, iterations)
            self.steps.capture(generator_passes=N_S)

    def run(self, n):
        zero_shot_knowledge_transfer(self.steps, iterations=self.iterations, n_generator_steps=N_G,
                                     n_student_steps=N_S, start=self.done, stop=self.done + n)
        self.done += n


@pytest.mark.parametrize("variant", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_train_iterations(benchmark, variant):
    name, amp, graphs, channels_last, compile = variant
    rounds = 1 if SMOKE else 3
    total = ITERATIONS * (rounds + 1) + 2

    def sync():
        if HAS_CUDA:
            torch.cuda.synchronize()

    began = time.perf_counter()
    loop = AuthorsLoop(total) if amp is None else PackageLoop(amp, graphs, channels_last, total, compile)
    loop.run(1)  # compiles, captures, and settles the allocator: the set-up, timed apart from the steps
    sync()
    setup = time.perf_counter() - began

    def run():
        loop.run(ITERATIONS)
        sync()

    benchmark.group = f"train {TEACHER.upper()} -> {STUDENT.upper()}, batch {BATCH}, n_S {N_S}, {DEVICE.type}"
    benchmark.extra_info.update(variant=name, iterations_per_round=ITERATIONS, device=DEVICE.type, setup_s=setup,
                                compile=compile, gpu=torch.cuda.get_device_name() if HAS_CUDA else None)
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0 if SMOKE else 1)
