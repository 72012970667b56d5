"""Writes docs/options.md: every option of every program, from the programs' own parsers (which make them from the
settings dataclasses), so that the page cannot drift from `--help`; and the preset table of docs/methods.md (between
its PRESETS markers) from the method registry. `--check` only compares (CI does, through tests/test_docs.py) and
exits 1 when a page is out of date.

    python tools/write_options.py [--check]
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "options.md"
METHODS_PAGE = ROOT / "docs" / "methods.md"
PRESETS_BEGIN = "<!-- PRESETS: written by tools/write_options.py from zskt_fast/engine/methods/registry.py -->"
PRESETS_END = "<!-- /PRESETS -->"
PROGRAMS = ("train", "pretrain", "fewshot", "reproduce", "mte", "toy")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(action: argparse.Action) -> str:
    if action.default is None or action.default is False or action.default == [] or \
            action.default == argparse.SUPPRESS or isinstance(action, argparse._StoreTrueAction):
        return ""
    if isinstance(action.default, list):
        return "`" + " ".join(map(str, action.default)) + "`"
    return f"`{action.default}`"


def _flags(action: argparse.Action) -> str:
    flags = ", ".join(f"`{flag}`" for flag in action.option_strings)
    if action.choices and not isinstance(action, argparse.BooleanOptionalAction):
        flags += " {" + ", ".join(map(str, action.choices)) + "}"
    elif action.metavar:
        flags += f" {action.metavar}"
    return flags


def program_section(program: str) -> list[str]:
    parser = importlib.import_module(f"zskt_fast.{program}").build_parser()
    lines = [f"## `python -m zskt_fast.{program}` (`zskt-{program}`)", "", _cell(parser.description), ""]
    untitled = ("options", "optional arguments", "positional arguments")
    for group in sorted(parser._action_groups, key=lambda g: g.title in untitled):  # the program's own last
        actions = [a for a in group._group_actions if a.option_strings and a.dest != "help"]
        if not actions:
            continue
        title = "other options" if group.title in untitled else group.title
        lines += [f"**{title}**", "", "| option | default | |", "|---|---|---|"]
        lines += [f"| {_flags(a)} | {_default(a)} | {_cell(a.help or '')} |" for a in actions]
        lines.append("")
    return lines


def render() -> str:
    lines = ["# Options of the programs", "",
             "Written by `python tools/write_options.py` from the programs' parsers, which make their options from "
             "the settings dataclasses (`zskt_fast/engine/settings/`) and the method registry "
             "(`zskt_fast/engine/methods/registry.py`); `tests/test_docs.py` checks that this page is up to date. "
             "`--help` prints the same. Boolean options come in pairs (`--x` / `--no-x`).",
             ""]
    for program in PROGRAMS:
        lines += program_section(program)
    return "\n".join(lines).rstrip("\n") + "\n"


def presets_table() -> list[str]:
    """Every method's published settings, one row each, as the registry holds them."""
    from zskt_fast.engine.methods.registry import METHODS

    def weight(value, detail):
        return f"{value:g} ({detail})" if value else "0"

    def rounds(method, kind):
        r = method.rounds.get(kind)
        if r is None:
            return "-"
        n_g, n_s = method.default("n_generator_steps", kind), method.default("n_student_steps", kind)
        return (f"{r.iterations} rounds of n_G {n_g} + n_S {n_s}, warm-up {r.warmup}, reset "
                f"{r.reset_round or '-'}, SGD {r.kd_lr:g}")

    lines = ["| `--method` | loop | adversarial | bn_prior | one_hot | balance | activation | tv, l2 | student | "
             "n_G, n_S | batch, z, T | rounds (CIFAR; digits) | source |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in METHODS.items():
        loop = "rounds into a pool" if m.rounds else "Algorithm 1"
        lines.append(
            f"| `{name}` | {loop} | {weight(m.adversarial, m.adversarial_loss)} | "
            f"{weight(m.bn_prior, f'momentum {m.bn_momentum:g}') if m.bn_momentum else f'{m.bn_prior:g}'} | "
            f"{weight(m.one_hot, m.one_hot_targets)} | {m.balance:g} | {m.activation:g} | {m.tv:g}, {m.image_l2:g} | "
            f"`{m.student_loss}` | {m.n_generator_steps}, {m.n_student_steps} | "
            f"{m.batch_size}, {m.z_dim}, {m.temperature:g} | {_cell(rounds(m, 'cifar'))}; "
            f"{_cell(rounds(m, 'digits'))} | {_cell(m.source)} |")
    return lines


def methods_page(text: str) -> str:
    """docs/methods.md with its preset table written anew."""
    head, found, rest = text.partition(PRESETS_BEGIN)
    _, found_end, tail = rest.partition(PRESETS_END)
    if not found or not found_end:
        raise SystemExit(f"{METHODS_PAGE} has no {PRESETS_BEGIN} ... {PRESETS_END} block")
    return head + "\n".join([PRESETS_BEGIN, *presets_table(), PRESETS_END]) + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when docs/options.md differs")
    args = parser.parse_args(argv)
    pages = {PAGE: render(), METHODS_PAGE: methods_page(METHODS_PAGE.read_text())}
    if args.check:
        stale = [page for page, text in pages.items() if not page.is_file() or page.read_text() != text]
        for page in stale:
            print(f"{page} is out of date: run python tools/write_options.py", file=sys.stderr)
        return 1 if stale else 0
    for page, text in pages.items():
        page.write_text(text)
        print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
