"""Per-round costs of the synthesis-and-pool methods: one synthesis step of FastDFKD (the generator copy's step: G(z),
augmentation, student and teacher passes, the batch-norm prior through its fused op, the backward through the teacher
into the copy and z) and of DeepInversion (the images' step), and one student step on a pool batch (augmentation,
teacher pass, student pass and backward, SGD), eager and through torch.compile.

Points: digits (WRN-16-2 -> WRN-16-1 on 8x8x1, the measured runs' pair) and CIFAR (WRN-40-2 -> WRN-16-1 on 32x32x3, the
published tables' pair), batch 256 as published. A round costs n_G synthesis steps + n_S student steps: FastDFKD's
published round 5 + 400 of them, DeepInversion's 1000 + 400. ZSKT_BENCH_SMOKE=1: WRN-10-2 -> WRN-10-1 on 8x8x1, batch
4, eager only.

    pytest benchmarks/bench_synthesis.py --benchmark-json=benchmarks/out/synthesis.json
"""
import time

import pytest
import torch

from zskt_fast.engine.settings.config import ZeroShotSettings
from zskt_fast.engine.methods.pool_strategy import PoolMethod
from zskt_fast.engine.methods.registry import METHODS
from zskt_fast.models import build_classifier, pair_networks

from harness import SMOKE

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
# (name, teacher, student, image shape, batch)
POINTS = ([("tiny", "wrn-10-2", "wrn-10-1", (1, 8, 8), 4)] if SMOKE else
          [("digits", "wrn-16-2", "wrn-16-1", (1, 8, 8), 256), ("cifar", "wrn-40-2", "wrn-16-1", (3, 32, 32), 256)])
VARIANTS = [("eager", "off", "off")] + ([] if SMOKE else [("bf16", "bf16", "off"), ("compiled", "off", "default")])


def _method(name, point, amp, compile_mode):
    _, teacher_arch, student_arch, shape, batch = point
    # One synthesis step per timed round (FastDFKD's then takes Fast-5's learning rates): a step's cost, with the
    # round's copy of the generator and meta step in it.
    rates = {"synthesis_lr": 3e-3, "z_lr": 0.01} if name == "fast" else {}
    loops = {"synthesis_batch": batch, "loops": 1, "warmup_loops": 1} if name == "nayer" else {}
    settings = ZeroShotSettings.from_flat({"method": name, "batch_size": batch, "iterations": 2, "warmup": 0,
                                           "n_generator_steps": 1, "pool_size": 4 * batch, "amp": amp, **loops,
                                           "compile": compile_mode, "device": str(DEVICE), "backend": "auto",
                                           **rates}).resolved()
    torch.manual_seed(0)
    teacher = build_classifier(teacher_arch, 10, shape[0]).to(DEVICE)
    student = build_classifier(student_arch, 10, shape[0]).to(DEVICE)
    with torch.no_grad():  # running statistics away from the defaults, as a trained teacher's are
        teacher.train()
        teacher(torch.randn(64, *shape, device=DEVICE))
    strategy = METHODS[name].strategy
    generator = strategy.make_generator(settings, shape, 10)
    if generator is not None:
        generator.to(DEVICE)
    teacher, student, _ = pair_networks(teacher, student, image_shape=shape, use_attention=False, num_classes=10)
    normalisation = ((0.5,) * shape[0], (0.25,) * shape[0])
    augmentation = "shift" if shape[-1] < 16 else "crop+flip"
    return PoolMethod(strategy.synthesis_class, teacher, student, generator, settings, image_shape=shape,
                      num_classes=10,
                      normalisation=normalisation, augmentation=augmentation, device=DEVICE, world=None)


def _sync():
    if HAS_CUDA:
        torch.cuda.synchronize()


@pytest.mark.parametrize("point", POINTS, ids=lambda p: p[0])
@pytest.mark.parametrize("method", ["fast", "deepinversion", "nayer"])
def test_synthesis_step(benchmark, method, point):
    pool_method = _method(method, point, "off", "off")

    def step():
        pool_method.synthesise(1, adversarial=True)
        _sync()

    benchmark.group = f"synthesis step, {point[0]}"
    benchmark.extra_info.update(step="synthesis", pool_method=method, point=point[0], batch=point[4],
                                device=DEVICE.type)
    benchmark.pedantic(step, rounds=1 if SMOKE else 3, iterations=1, warmup_rounds=0 if SMOKE else 1)


@pytest.mark.parametrize("point", POINTS, ids=lambda p: p[0])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v[0])
def test_student_step_on_the_pool(benchmark, variant, point):
    name, amp, compile_mode = variant
    pool_method = _method("fast", point, amp, compile_mode)
    pool_method.pool.add(torch.rand(point[4], *point[3], device=DEVICE))
    started = time.perf_counter()
    pool_method.student_steps.step(pool_method.pool)  # the compilation, when compiled
    _sync()
    setup = time.perf_counter() - started

    def step():
        pool_method.student_steps.step(pool_method.pool)
        _sync()

    benchmark.group = f"student step on a pool batch, {point[0]}"
    benchmark.extra_info.update(step="student", pool_variant=name, point=point[0], batch=point[4],
                                setup_s=setup, device=DEVICE.type)
    benchmark.pedantic(step, rounds=1 if SMOKE else 5, iterations=1, warmup_rounds=0 if SMOKE else 1)
