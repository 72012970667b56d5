"""The method registry and its strategies: every method's generator.pt loads with no network given and makes the
images the trained generator makes; no code outside the registry asks for a method, or a kind of method, by name;
the engine's files and functions stay short."""
import ast
import re
from pathlib import Path

import pytest
import torch

import zskt_fast
from zskt_fast.engine.lifecycle.checkpoint import load_generator
from zskt_fast.engine.methods.registry import METHODS
from zskt_fast.engine.methods.strategy import Strategy
from zskt_fast.engine.settings.config import TrainConfig
from zskt_fast.models import LabelGenerator

from conftest import TinyNet as _Tiny

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "zskt_fast" / "engine"
GENERATIVE = [name for name, method in METHODS.items()
              if method.strategy.make_generator(TrainConfig.from_flat({"method": name, "z_dim": 8}).resolved(),
                                                (1, 8, 8), 3) is not None]


@pytest.mark.parametrize("method", GENERATIVE)
def test_every_generator_file_loads_without_a_network_and_makes_the_same_images(method, tmp_path):
    torch.manual_seed(0)
    teacher, student = _Tiny(), _Tiny()
    short = {"iterations": 2, "n_student_steps": 1, "batch_size": 4, "z_dim": 8, "compile": "off", "amp": "off",
             "progress": False, "beta": 0.0}
    if METHODS[method].rounds:
        short |= {"warmup": 1, "n_generator_steps": 2, "synthesis_lr": 1e-3, "z_lr": 0.01}
    if "loops" in METHODS[method].strategy.round_options:
        short |= {"synthesis_batch": 6, "warmup_loops": 1, "loops": 1}
    result = zskt_fast.distill(teacher, student, image_shape=(1, 8, 8), method=method, out=tmp_path / method,
                               **short)
    loaded = load_generator(tmp_path / method / "generator.pt")
    assert type(loaded) is type(result.generator)
    z = torch.arange(5) % 3 if isinstance(loaded, LabelGenerator) else torch.randn(5, 8)  # classes or noise
    assert isinstance(loaded, LabelGenerator) or loaded.output == result.generator.output
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(z), result.generator.eval()(z), rtol=0, atol=0)


def test_a_method_without_a_generator_writes_no_generator_file(tmp_path):
    missing = [name for name in METHODS if name not in GENERATIVE]
    assert missing == ["deepinversion"]
    torch.manual_seed(0)
    result = zskt_fast.distill(_Tiny(), _Tiny(), image_shape=(1, 8, 8), method="deepinversion", out=tmp_path / "di",
                               iterations=2, warmup=0, n_student_steps=1, n_generator_steps=2, batch_size=4,
                               compile="off", amp="off", progress=False)
    assert result.generator is None and not (tmp_path / "di" / "generator.pt").exists()


def test_each_entry_has_a_strategy_and_the_settings_its_loop_needs():
    for name, method in METHODS.items():
        assert method.name == name and isinstance(method.strategy, Strategy)
        if method.strategy.round_terms:  # a loop of rounds needs their published lengths on both kinds of data
            assert set(method.rounds) == {"cifar", "digits"}, name
        else:
            assert not method.rounds, name


def _python_files(folder: Path):
    return sorted(folder.rglob("*.py"))


def test_no_code_outside_the_registry_asks_for_a_method_by_name():
    """Method names appear in the registry's entries (and in help and error texts), never compared in code; no loop
    kind is compared as a string nor a strategy by isinstance."""
    names = "|".join(METHODS)
    compared = re.compile(rf"""(==|!=|\bin)\s*\(?\s*["']({names})["']|["']({names})["']\s*(==|!=)""")
    kinds = re.compile(r"""\.shape\s*[!=]=\s*["'](pool|generator)["']|isinstance\([^)]*Synthesis""")
    offenders = []
    for path in _python_files(ROOT / "zskt_fast"):
        if path.name == "registry.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if compared.search(line) or kinds.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def _code_lines(node: ast.FunctionDef) -> int:
    """Lines of a function's code, its docstring left out."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    if not body:
        return 0
    return body[-1].end_lineno - body[0].lineno + 1


def test_engine_files_and_functions_are_short():
    """No engine file over 300 lines, no function over 60 lines of code."""
    long_files = [f"{p.relative_to(ROOT)} ({n})" for p in _python_files(ENGINE)
                  if (n := len(p.read_text().splitlines())) > 300]
    long_functions = []
    for path in _python_files(ENGINE):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (n := _code_lines(node)) > 60:
                long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n})")
    assert not long_files and not long_functions, "\n".join(long_files + long_functions)
