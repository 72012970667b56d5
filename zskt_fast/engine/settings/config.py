"""Each program's configuration, composed of settings parts (settings/parts.py, zero_shot.py, rounds.py,
training.py, comparison.py).

ZeroShotSettings  objectives + steps + loop + pool + run + outputs: a zero-shot run of given networks (distill)
TrainConfig       data + networks + the zero-shot parts + processes: python -m zskt_fast.train
PretrainConfig    data + pretrain + sgd + run: python -m zskt_fast.pretrain
FewShotConfig     data + networks + sgd + kd + run + outputs: python -m zskt_fast.fewshot
ReproduceConfig   data + networks + objectives + steps + loop + pool + run + comparison: python -m zskt_fast.reproduce
CurvesConfig      data + curves + run: python -m zskt_fast.mte

Every setting's name is unique within a configuration, so a flat {name: value} mapping (keyword arguments, a command
line, a run's config.json) says which part it belongs to. `resolved(context=None)` fills in every default that depends
on the data set or the machine and checks every value, before any work starts.
"""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field

from ...common import resolve_device, settings_from_dict
from ...data import dataset_info
from ..methods.registry import METHODS
from .comparison import ComparisonSettings, CurveSettings
from .training import KDSettings, PretrainSettings, SGDSettings
from .rounds import PoolSettings
from .zero_shot import LoopSettings, ObjectiveSettings, StepSettings, compile_context
from .parts import (DATASET_DEFAULTS, Context, DataSettings, NetworkSettings, OutputSettings, ProcessSettings,
                       RunSettings)


def _part(kind):
    return field(default_factory=kind)


class Composed:
    """A configuration whose fields each hold one settings part."""

    @classmethod
    def part_types(cls) -> dict[str, type]:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    @classmethod
    def setting_names(cls) -> dict[str, str]:
        """{setting: the part holding it}."""
        names: dict[str, str] = {}
        for part, kind in cls.part_types().items():
            for f in dataclasses.fields(kind):
                if f.name in names:
                    raise TypeError(f"{cls.__name__}: {f.name} is declared in both {names[f.name]} and {part}")
                names[f.name] = part
        return names

    @classmethod
    def from_flat(cls, values: Mapping, source: str | None = None, *, taker: str | None = None):
        """The configuration from {setting: value}. With `source` (a file: a run's config.json), keys it does not know
        are ignored (another version wrote them) and each value's type is checked, naming `source`; without, an
        unknown key is an error naming `taker` (who was given it) and what it takes."""
        if not isinstance(values, Mapping):
            raise ValueError(f"{source}: expected a JSON object of settings, got {type(values).__name__}")
        names = cls.setting_names()
        unknown = sorted(set(values) - set(names))
        if unknown and source is None:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}: {taker or cls.__name__} takes "
                             f"{', '.join(sorted(names))}")
        grouped: dict[str, dict] = {part: {} for part in cls.part_types()}
        for key, value in values.items():
            if key in names:
                grouped[names[key]][key] = value
        return cls(**{part: settings_from_dict(kind, grouped[part], source) if source else kind(**grouped[part])
                      for part, kind in cls.part_types().items()})

    def to_dict(self) -> dict:
        """Every setting by name, flat (what config.json holds)."""
        return {k: v for f in dataclasses.fields(self) for k, v in dataclasses.asdict(getattr(self, f.name)).items()}

    def _data_and_context(self, context: Context | None) -> tuple[DataSettings, Context]:
        data = self.data.resolved(Context())
        return data, context or Context(DATASET_DEFAULTS[data.dataset], resolve_device(self.run.device))


@dataclass
class ZeroShotSettings(Composed):
    objectives: ObjectiveSettings = _part(ObjectiveSettings)
    steps: StepSettings = _part(StepSettings)
    loop: LoopSettings = _part(LoopSettings)
    pool: PoolSettings = _part(PoolSettings)
    run: RunSettings = _part(RunSettings)
    outputs: OutputSettings = _part(OutputSettings)

    def resolved(self, context: Context | None = None) -> ZeroShotSettings:
        """Without `context`: the loop lengths of the paper's CIFAR-10 run, on this run's device."""
        context = context or Context(device=resolve_device(self.run.device))
        (objectives, steps, loop, pool), context = resolve_method_parts(self, context)
        return ZeroShotSettings(objectives, steps, loop, pool, self.run.resolved(context),
                                self.outputs.resolved(pool_outputs(context)))


def resolve_method_parts(config, context: Context) -> tuple[tuple, Context]:
    """A configuration's objectives, steps, loop and pool resolved, in the order their defaults depend on one another
    (the method's preset, then the loop's length, then the steps and rounds), and the context that knows them."""
    objectives = config.objectives.resolved(context)
    context = dataclasses.replace(context, method=objectives.method)
    loop = config.loop.resolved(context)
    context = dataclasses.replace(context, iterations=loop.iterations)
    steps = config.steps.resolved(compile_context(context, loop))
    return (objectives, steps, loop, config.pool.resolved(context, loop, steps)), context


def pool_outputs(context: Context) -> Context:
    """The pool methods test the student after every round by default (as their published code does); their rounds
    are few and long."""
    if not METHODS[context.method].strategy.evaluates_every_round:
        return context
    return dataclasses.replace(context, defaults=dataclasses.replace(context.defaults, eval_every=1, log_every=1))


@dataclass
class TrainConfig(Composed):
    data: DataSettings = _part(DataSettings)
    networks: NetworkSettings = _part(NetworkSettings)
    objectives: ObjectiveSettings = _part(ObjectiveSettings)
    steps: StepSettings = _part(StepSettings)
    loop: LoopSettings = _part(LoopSettings)
    pool: PoolSettings = _part(PoolSettings)
    run: RunSettings = _part(RunSettings)
    outputs: OutputSettings = _part(OutputSettings)
    processes: ProcessSettings = _part(ProcessSettings)

    def resolved(self, context: Context | None = None) -> TrainConfig:
        data, context = self._data_and_context(context)
        networks = self.networks.resolved(context)
        classes = dataset_info(data.dataset, root=data.data_root if data.dataset == "folder" else None).num_classes
        if networks.num_classes is not None and networks.num_classes != classes:
            raise ValueError(f"num_classes is {networks.num_classes}, and the {data.dataset} data set has {classes} "
                             f"classes")
        networks.num_classes = classes
        zero_shot = self.zero_shot().resolved(context)
        return TrainConfig(data, networks, **{f.name: getattr(zero_shot, f.name)
                                              for f in dataclasses.fields(zero_shot)},
                           processes=self.processes.resolved(context))

    def zero_shot(self) -> ZeroShotSettings:
        """The parts zskt_fast.distill takes."""
        return ZeroShotSettings(self.objectives, self.steps, self.loop, self.pool, self.run, self.outputs)

    @classmethod
    def from_dict(cls, values: Mapping, source: str = "settings") -> TrainConfig:
        """A run's saved config.json; a run recorded before the compile setting existed ran eager steps."""
        return cls.from_flat({"compile": "off", **values} if isinstance(values, Mapping) else values, source)


@dataclass
class PretrainConfig(Composed):
    data: DataSettings = _part(DataSettings)
    pretrain: PretrainSettings = _part(PretrainSettings)
    sgd: SGDSettings = _part(SGDSettings)
    run: RunSettings = _part(RunSettings)

    def resolved(self, context: Context | None = None) -> PretrainConfig:
        data, context = self._data_and_context(context)
        pretrain = self.pretrain.resolved(context)
        context = dataclasses.replace(context, arch=pretrain.arch)
        return PretrainConfig(data, pretrain, self.sgd.resolved(context), self.run.resolved(context))


@dataclass
class FewShotConfig(Composed):
    data: DataSettings = _part(DataSettings)
    networks: NetworkSettings = _part(NetworkSettings)
    sgd: SGDSettings = _part(SGDSettings)
    kd: KDSettings = _part(KDSettings)
    run: RunSettings = _part(RunSettings)
    outputs: OutputSettings = _part(OutputSettings)

    def resolved(self, context: Context | None = None) -> FewShotConfig:
        """With a context that knows the steps per epoch (the program's, once it read the training set), the default
        number of steps and the output intervals (a tenth of the steps) are filled in too."""
        data, context = self._data_and_context(context)
        networks = self.networks.resolved(context)
        context = dataclasses.replace(context, arch=networks.student)
        sgd = self.sgd.resolved(context)
        kd = self.kd.resolved(context)
        if kd.iterations is None:  # the output intervals depend on it: checked now, filled in later
            self.outputs.resolved(context)
            return FewShotConfig(data, networks, sgd, kd, self.run.resolved(context), self.outputs)
        tenth = max(kd.iterations // 10, 1)
        context = dataclasses.replace(context, iterations=kd.iterations, defaults=dataclasses.replace(
            context.defaults, eval_every=tenth, log_every=self.outputs.eval_every or tenth))
        return FewShotConfig(data, networks, sgd, kd, self.run.resolved(context), self.outputs.resolved(context))


@dataclass
class ReproduceConfig(Composed):
    data: DataSettings = _part(DataSettings)
    networks: NetworkSettings = _part(NetworkSettings)
    objectives: ObjectiveSettings = _part(ObjectiveSettings)
    steps: StepSettings = _part(StepSettings)
    loop: LoopSettings = _part(LoopSettings)
    pool: PoolSettings = _part(PoolSettings)
    run: RunSettings = _part(RunSettings)
    comparison: ComparisonSettings = _part(ComparisonSettings)

    def resolved(self, context: Context | None = None) -> ReproduceConfig:
        data, context = self._data_and_context(context)
        (objectives, steps, loop, pool), context = resolve_method_parts(self, context)
        return ReproduceConfig(data, self.networks.resolved(context), objectives, steps, loop, pool,
                               self.run.resolved(context), self.comparison.resolved(context))


@dataclass
class CurvesConfig(Composed):
    data: DataSettings = _part(DataSettings)
    curves: CurveSettings = _part(CurveSettings)
    run: RunSettings = _part(RunSettings)

    def resolved(self, context: Context | None = None) -> CurvesConfig:
        data, context = self._data_and_context(context)
        return CurvesConfig(data, self.curves.resolved(context), self.run.resolved(context))
