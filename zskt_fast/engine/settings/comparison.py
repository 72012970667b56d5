"""The settings of the comparisons: transition curves and the MTE (Algorithm 2), and the paper's report."""
from __future__ import annotations

from dataclasses import dataclass

from ...common import check_choice, check_count, check_positive, option
from ..methods.registry import METHODS
from .parts import ALGORITHM, METHOD, SPEED, Context, copy_of, per_dataset

ALGORITHM_2 = "Algorithm 2 (defaults: the paper's)"
DEFAULT_IMAGES = 1000  # N, the paper's
DEFAULT_STEPS = 100  # K
DEFAULT_STEP_SIZE = 1.0  # xi
DIGITS_IMAGES = 300  # transition curves on digits, whose test set has 397 images
SOURCES = ("agreed", "label")  # the source class of a trajectory: A's and B's common prediction, or the label


@dataclass
class CurveSettings:
    """Transition curves and the MTE (Algorithm 2); defaults: the paper's."""
    n_images: int | None = option(None, f"N images on which A and B agree, the first ones of the test set; default: "
                                        f"{DEFAULT_IMAGES} (the paper's), {DIGITS_IMAGES} for digits",
                                  group=ALGORITHM_2)
    steps: int = option(DEFAULT_STEPS, "K gradient steps per trajectory", group=ALGORITHM_2)
    step_size: float = option(DEFAULT_STEP_SIZE, "xi: x <- x - xi * grad_x CE(A(x), j)", group=ALGORITHM_2)
    source: str = option("agreed", "source class i of an image: the class A and B both predict (the paper's "
                                   "Algorithm 2), or the data set's label (the authors' code)", group=ALGORITHM_2,
                         choices=SOURCES)
    shuffle_seed: int | None = option(None, "take the first agreeing images in an order drawn with this seed (the "
                                            "authors' code takes a seeded random order) instead of the test set's "
                                            "order", group=ALGORITHM_2)
    memory_budget: float | None = option(None, "memory for one batch of trajectories, in GB; default: half the free "
                                               "GPU memory, 2 GB on the CPU", group=SPEED, metavar="GB")

    def resolved(self, context: Context) -> CurveSettings:
        curves = copy_of(self)
        if curves.n_images is None:
            curves.n_images = DIGITS_IMAGES if context.defaults.dataset == "digits" else DEFAULT_IMAGES
        check_count(curves.n_images, "n_images")
        check_count(curves.steps, "steps")
        check_positive(curves.step_size, "step_size")
        check_choice(curves.source, SOURCES, "source")
        if curves.shuffle_seed is not None:
            check_count(curves.shuffle_seed, "shuffle_seed", minimum=0)
        if curves.memory_budget is not None:
            check_positive(curves.memory_budget, "memory_budget")
        return curves


@dataclass
class ComparisonSettings:
    """The paper's comparison for one pair (zskt_fast.reproduce): which runs, how long."""
    shots: list[int] = option([1, 2, 5, 10, 20], "M images per class of the few-shot KD+AT runs (the paper's CIFAR-10 "
                                                 "runs: 10 25 50 75 100)", group=ALGORITHM)
    fewshot_iterations: int | None = option(None, "KD+AT steps of every run; default: as many as full-data training "
                                                  "(digits 330)", group=ALGORITHM)
    scratch_epochs: int | None = option(None, "epochs of the student trained from scratch; default: pretraining's "
                                              f"({per_dataset('pretrain_epochs')})", group=ALGORITHM)
    mte_images: int | None = option(None, f"N test images of the transition curves; default {DIGITS_IMAGES} on digits, "
                                          f"{DEFAULT_IMAGES:,} (the paper's) otherwise", group=ALGORITHM_2)
    mte_steps: int = option(DEFAULT_STEPS, "K gradient steps per trajectory (the paper's 100)", group=ALGORITHM_2)
    methods: list[str] = option(list(METHODS), "the data-free methods of the methods section (student accuracy "
                                               "against wall-clock seconds), each run with its preset",
                                group=METHOD)
    methods_eval_every: int = option(25, "test the students of the methods section every this many iterations (the "
                                         "points of their accuracy-against-seconds curves)", group=METHOD)

    def resolved(self, context: Context) -> ComparisonSettings:
        comparison = copy_of(self)
        if not comparison.methods or not isinstance(comparison.methods, list):
            raise ValueError(f"methods must be a list of method names, got {comparison.methods!r}")
        for method in comparison.methods:
            check_choice(method, tuple(METHODS), "methods")
        if len(set(comparison.methods)) != len(comparison.methods):
            raise ValueError(f"methods takes distinct names, got {comparison.methods}")
        check_count(comparison.methods_eval_every, "methods_eval_every")
        for name in ("fewshot_iterations", "scratch_epochs", "mte_images"):
            if getattr(comparison, name) is not None:
                check_count(getattr(comparison, name), name)
        check_count(comparison.mte_steps, "mte_steps")
        if not comparison.shots or not isinstance(comparison.shots, list):
            raise ValueError(f"shots must be a list of counts, got {comparison.shots!r}")
        for m in comparison.shots:
            check_count(m, "shots")
        if len(set(comparison.shots)) != len(comparison.shots):
            raise ValueError(f"shots takes distinct values, got {comparison.shots}")
        if comparison.mte_images is None:
            comparison.mte_images = DIGITS_IMAGES if context.defaults.dataset == "digits" else DEFAULT_IMAGES
        return comparison
