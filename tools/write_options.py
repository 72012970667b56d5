"""Writes docs/options.md: every option of every program, from the programs' own parsers (which make them from the
settings dataclasses), so that the page cannot drift from `--help`. `--check` only compares (CI does, through
tests/test_docs.py) and exits 1 when the page is out of date.

    python tools/write_options.py [--check]
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "options.md"
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
             "the settings dataclasses (`zskt_fast/engine/settings.py`, `recipes.py`); `tests/test_docs.py` checks that "
             "this page is up to date. `--help` prints the same. Boolean options come in pairs (`--x` / `--no-x`).",
             ""]
    for program in PROGRAMS:
        lines += program_section(program)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when docs/options.md differs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not PAGE.is_file() or PAGE.read_text() != text:
            print(f"{PAGE} is out of date: run python tools/write_options.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
