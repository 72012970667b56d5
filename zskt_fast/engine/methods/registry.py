"""Every data-free method, one entry each: its paper, its strategy (how it makes what the student learns from, and so
which loop it runs), its weighted generator terms, its student loss and its published settings. Settings, `--help`,
docs/options.md and the preset tables of docs/methods.md read them from here; docs/methods.md cites each number.

Adding a method: a strategy (or an existing one) and one entry below; docs/methods.md, "Adding a method".
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ...ops import DEFAULT_TEMPERATURE
from .contrastive import CONTRASTIVE
from .generator_strategy import GENERATOR_OBJECTIVE
from .nayer import NOISY_LABELS
from .pool_strategy import IMAGE_INVERSION, META_GENERATOR, Strategy


@dataclass(frozen=True)
class Rounds:
    """A synthesis-and-pool method's rounds on a data set: their number, the warm-up, the round whose start
    re-initialises the generator's first layers (0: none), the student's SGD, the synthesis and latent learning rates
    (None: by the generator steps, Method.synthesis_learning_rates), and n_G / n_S where they differ from the
    method's (None: the method's). NAYER's: the images a synthesis step makes when not a student batch
    (synthesis_batch), the synthesis loops of a round after and during the warm-up, the rounds between rebuilds of
    the whole generator (0: never) and the width of its noisy layers. CMI's: the student's step schedule (fractions of
    the rounds; empty: cosine) and the contrastive term's weight, temperature, head, bank and negatives."""
    iterations: int
    warmup: int
    reset_round: int
    kd_lr: float
    synthesis_lr: float | None = None
    z_lr: float | None = None
    kd_weight_decay: float = 1e-4
    n_generator_steps: int | None = None
    n_student_steps: int | None = None
    batch_size: int | None = None
    synthesis_batch: int | None = None
    loops: int = 1
    warmup_loops: int = 1
    generator_life: int = 0
    noisy_width: int = 0
    kd_milestones: tuple[float, ...] = ()
    contrastive: float = 0.0
    contrastive_temperature: float = 0.0
    head_dim: int = 0
    bank_size: int = 0
    negatives: int = 0


@dataclass(frozen=True)
class Method:
    """A data-free method: the generator's (or the images') weighted terms, the student's loss, n_G and n_S, the
    batch, the noise dimension and the student's temperature, as its published code runs them; `rounds` holds the
    lengths of a strategy that synthesises in rounds, per data-set kind ('cifar': the published runs, 'digits')."""
    name: str
    title: str
    strategy: Strategy
    adversarial: float
    adversarial_loss: str
    bn_prior: float
    one_hot: float
    balance: float
    activation: float
    student_loss: str
    n_student_steps: int
    one_hot_targets: str = "argmax"
    bn_momentum: float = 0.0
    tv: float = 0.0
    image_l2: float = 0.0
    n_generator_steps: int = 1
    batch_size: int = 128
    z_dim: int = 100
    temperature: float = DEFAULT_TEMPERATURE
    rounds: dict[str, Rounds] = field(default_factory=dict)
    synthesis_learning_rates: dict[int, tuple[float, float]] = field(default_factory=dict)
    source: str = ""  # where the numbers come from

    def rounds_on(self, dataset: str) -> Rounds | None:
        """The rounds on a data set: digits' own, the published CIFAR runs' for every other; None without rounds."""
        return self.rounds.get("digits" if dataset == "digits" else "cifar")

    def default(self, name: str, dataset: str):
        """A preset value on a data set (the rounds of a data set may shorten n_G and n_S)."""
        rounds = self.rounds_on(dataset)
        value = getattr(rounds, name, None) if rounds is not None else None
        return getattr(self, name) if value is None else value


METHODS = {method.name: method for method in (
    Method("zskt", "ZSKT, Micaelli & Storkey 2019 (the paper's run)", GENERATOR_OBJECTIVE, adversarial=1.0,
           adversarial_loss="kl", bn_prior=0.0, one_hot=0.0, balance=0.0, activation=0.0, student_loss="kl-at",
           n_student_steps=10, source="the paper and the authors' code (polo5/ZeroShotKnowledgeTransfer)"),
    Method("dfad", "DFAD, Fang et al. 2019", GENERATOR_OBJECTIVE, adversarial=1.0, adversarial_loss="l1",
           bn_prior=0.0, one_hot=0.0, balance=0.0, activation=0.0, student_loss="l1", n_student_steps=5,
           source="CMI scripts/dfad_cifar10.sh (as of 3f791f9): --adv 1 --kd_steps 5; the L1 criterion of "
                  "datafree_kd.py"),
    # The frameworks' DAFL scripts (Fast-Datafree scripts/dafl_cifar.sh; CMI scripts/dafl/): act 0.001.
    Method("dafl", "DAFL, Chen et al. 2019", GENERATOR_OBJECTIVE, adversarial=0.0, adversarial_loss="kl",
           bn_prior=0.0, one_hot=1.0, balance=20.0, activation=0.001, student_loss="kd", n_student_steps=5,
           source="Fast-Datafree scripts/dafl_cifar.sh, CMI scripts/dafl/dafl_cifar10_wrn402_wrn161.sh: --oh 1 "
                  "--act 0.001 --balance 20 --adv 0 --kd_steps 5"),
    Method("dfq", "DFQ, Choi et al. 2020", GENERATOR_OBJECTIVE, adversarial=1.0, adversarial_loss="kl-batch",
           bn_prior=1.0, one_hot=1.0, balance=20.0, activation=0.0, student_loss="kd", n_student_steps=10,
           source="CMI scripts/dfq/dfq_cifar10_wrn402_wrn161.sh: --adv 1 --bn 1 --oh 1 --balance 20 --kd_steps 10"),
    # Fast-Datafree's scripts/fast_cifar.sh (the WRN-40-2 teacher's lines), datafree_kd.py and fast_meta.py. The
    # published CIFAR runs: 220 rounds with 20 of warm-up, the first layers re-initialised at 120 + 20; digits
    # (8x8, 1,400 training images): fewer and shorter rounds, chosen by measurement (docs/methods.md). The generator
    # and latent learning rates go with the generator steps (Fast-2, -5, -10).
    Method("fast", "FastDFKD, Fang et al. 2022 (meta-learned generator, pool)", META_GENERATOR, adversarial=1.1,
           adversarial_loss="decision-kl", bn_prior=10.0, bn_momentum=0.9, one_hot=0.4, one_hot_targets="random",
           balance=0.0, activation=0.0, student_loss="kd", n_student_steps=400, n_generator_steps=5,
           batch_size=256, z_dim=256, temperature=20.0,
           rounds={"cifar": Rounds(iterations=220, warmup=20, reset_round=140, kd_lr=0.2),
                   "digits": Rounds(iterations=30, warmup=3, reset_round=20, kd_lr=0.2, n_generator_steps=5,
                                    n_student_steps=50)},
           synthesis_learning_rates={2: (5e-3, 0.015), 5: (3e-3, 0.01), 10: (2e-3, 0.01)},
           source="Fast-Datafree scripts/fast_cifar.sh (the WRN lines), datafree_kd.py, "
                  "datafree/synthesis/fast_meta.py (c188487)"),
    # Fast-Datafree's scripts/deepinv_cifar.sh (200 rounds, student SGD 0.1); the image priors' weights from
    # DeepInversion's CIFAR-10 code.
    Method("deepinversion", "DeepInversion, Yin et al. 2020 (optimised images, pool)", IMAGE_INVERSION,
           adversarial=1.0, adversarial_loss="competition", bn_prior=10.0, one_hot=1.0, one_hot_targets="random",
           tv=2.5e-5, image_l2=0.0, balance=0.0, activation=0.0, student_loss="kd", n_student_steps=400,
           n_generator_steps=1000, batch_size=256, z_dim=256, temperature=20.0,
           rounds={"cifar": Rounds(iterations=200, warmup=0, reset_round=0, kd_lr=0.1, synthesis_lr=0.1, z_lr=0.0),
                   "digits": Rounds(iterations=30, warmup=0, reset_round=0, kd_lr=0.1, synthesis_lr=0.1, z_lr=0.0,
                                    n_generator_steps=50, n_student_steps=50)},
           source="Fast-Datafree scripts/deepinv_cifar.sh, datafree/synthesis/deepinversion.py; tv and l2 from "
                  "NVlabs' cifar10/deepinversion_cifar10.py (--di_var_scale 2.5e-5, --di_l2_scale 0)"),
    # NAYER's scripts/nayer_*.sh and datafree_kd.py (284ba09): the student's batch (512) is not the synthesis batch
    # (400); g_steps 30 is the CIFAR-10 script's (CIFAR-100: 40); the pool keeps every loop's batch.
    Method("nayer", "NAYER, Tran et al. 2024 (label-embedding generator with noisy layers, pool)", NOISY_LABELS,
           adversarial=1.33, adversarial_loss="decision-kl", bn_prior=10.0, bn_momentum=0.9, one_hot=0.5,
           one_hot_targets="random", balance=0.0, activation=0.0, student_loss="kd", n_student_steps=400,
           n_generator_steps=30, batch_size=512, z_dim=256, temperature=20.0,
           rounds={"cifar": Rounds(iterations=120, warmup=20, reset_round=0, kd_lr=0.2, synthesis_lr=4e-3, z_lr=0.0,
                                   synthesis_batch=400, loops=2, warmup_loops=10, generator_life=10,
                                   noisy_width=1000),
                   "digits": Rounds(iterations=24, warmup=2, reset_round=0, kd_lr=0.2, synthesis_lr=4e-3, z_lr=0.0,
                                    n_generator_steps=20, n_student_steps=50, batch_size=256, synthesis_batch=200,
                                    loops=2, warmup_loops=5, generator_life=10, noisy_width=1000)},
           source="NAYER scripts/nayer_100.sh (--lr_g 4e-3 --adv 1.33 --bn 10 --oh 0.5 --g_steps 30 --g_life 10 "
                  "--g_loops 2 --gwp_loops 10 --warmup 20 --epochs 120 --synthesis_batch_size 400 --batch_size 512 "
                  "--lr 0.2 --T 20), bn_mmt 0.9 and kd_steps 400 of its datafree_kd.py, datafree/synthesis/nayer.py, "
                  "datafree/models/generator.py "
                  "NLGenerator (le_emb_size 1000) at 284ba09"),
    # CMI's scripts/cmi_cifar10.sh and datafree_kd.py (3f791f9): 200 epochs (its default) of one synthesis and 400
    # KD steps, MultiStepLR at 120, 150, 180; head_dim 256, bank 40,960, n_neg 4,096 as datafree_kd.py builds it.
    Method("cmi", "CMI, Fang et al. 2021 (contrastive model inversion, pool)", CONTRASTIVE, adversarial=0.5,
           adversarial_loss="decision-kl", bn_prior=1.0, one_hot=1.0, one_hot_targets="random", balance=0.0,
           activation=0.0, student_loss="kd", n_student_steps=400, n_generator_steps=200, batch_size=256, z_dim=256,
           temperature=20.0,
           rounds={"cifar": Rounds(iterations=200, warmup=0, reset_round=0, kd_lr=0.1, synthesis_lr=1e-3, z_lr=1e-3,
                                   kd_milestones=(0.6, 0.75, 0.9), contrastive=0.8, contrastive_temperature=0.2,
                                   head_dim=256, bank_size=40960, negatives=4096),
                   "digits": Rounds(iterations=30, warmup=0, reset_round=0, kd_lr=0.1, synthesis_lr=1e-3, z_lr=1e-3,
                                    n_generator_steps=20, n_student_steps=50, kd_milestones=(0.6, 0.75, 0.9),
                                    contrastive=0.8, contrastive_temperature=0.2, head_dim=256, bank_size=40960,
                                    negatives=1024)},
           source="CMI scripts/cmi_cifar10.sh (--adv 0.5 --bn 1.0 --oh 1.0 --cr 0.8 --cr_T 0.2 --g_steps 200 "
                  "--lr_g 1e-3 --kd_steps 400 --ep_steps 400 --batch_size 256 --lr 0.1 --T 20), datafree_kd.py "
                  "(--epochs 200, --lr_decay_milestones 120,150,180, head_dim 256, bank_size 40960, n_neg 4096), "
                  "datafree/synthesis/contrastive.py at 3f791f9"),
)}


def preset_values(name: str) -> str:
    """'zskt X; dfad Y; ...': every method's value of `name`, for help texts."""
    return "; ".join(f"{m.name} {getattr(m, name)}" for m in METHODS.values())


def methods_with_rounds() -> tuple[str, ...]:
    """The methods whose strategy synthesises in rounds into a pool, for error messages and help texts."""
    return tuple(name for name, method in METHODS.items() if method.rounds)


def rounds_values(name: str, only_readers: bool = False) -> str:
    """'fast ...; deepinversion ...': a round setting of every method with rounds (with `only_readers`, of those whose
    strategy reads it), for help texts (the learning rates that go with n_G by n_G)."""
    def value(method: Method) -> str:
        if name in ("synthesis_lr", "z_lr") and method.synthesis_learning_rates:
            index = 0 if name == "synthesis_lr" else 1
            return "by n_G, " + ", ".join(f"{steps}: {rates[index]}"
                                          for steps, rates in method.synthesis_learning_rates.items())
        return str(getattr(method.rounds_on("cifar10"), name))
    return "; ".join(f"{method_name} {value(m)}" for method_name, m in METHODS.items()
                     if m.rounds and (not only_readers or name in m.strategy.round_options))


def digits_values(name: str) -> str:
    """A loop value of every method with rounds on digits ('fast 5; deepinversion 50'), for help texts."""
    return "; ".join(f"{method_name} {getattr(m.rounds_on('digits'), name, None) or m.default(name, 'digits')}"
                     for method_name, m in METHODS.items() if m.rounds)
