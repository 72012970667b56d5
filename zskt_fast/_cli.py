"""What the command-line programs share: options made from the fields of a settings dataclass, help that shows
defaults, and errors that end a program with one line instead of a traceback."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import types
import typing

from .common import field_default
from .data import DatasetNotFound
from .engine.checkpoint import CheckpointError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None, False): those options say in their
    help what happens when they are not given."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


def _value_type(annotation):
    """int for `int | None`, and so on."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    return annotation


def program_parser(program: str, description: str) -> argparse.ArgumentParser:
    """The parser of `python -m zskt_fast.PROGRAM`, showing each option's default (HelpFormatter)."""
    return argparse.ArgumentParser(prog=f"python -m zskt_fast.{program}", description=description,
                                   formatter_class=HelpFormatter)


def add_options(parser: argparse.ArgumentParser, config_class, *, skip: tuple[str, ...] = (),
                defaults: dict | None = None, group_order: tuple[str, ...] = ()) -> dict[str, argparse._ArgumentGroup]:
    """One --option per setting of the configuration `config_class` (each field of each of its parts; setting x_y ->
    --x-y), with the setting's default (or the one `defaults` gives instead) and the help text and argparse keywords
    kept in its metadata; booleans get --x / --no-x. Settings with a `group` go into help groups, in `group_order`
    first; returns the groups by name."""
    groups = {name: parser.add_argument_group(name) for name in group_order}
    defaults = defaults or {}
    for kind in config_class.part_types().values():
        hints = typing.get_type_hints(kind)
        for field in dataclasses.fields(kind):
            if field.name in skip or "help" not in field.metadata:
                continue
            cli = dict(field.metadata)
            help_text = cli.pop("help").replace("%", "%%")
            group = cli.pop("group", None)
            target = parser if group is None else groups.setdefault(group, parser.add_argument_group(group))
            flag = "--" + field.name.replace("_", "-")
            default = defaults.get(field.name, field_default(field))
            value_type = _value_type(hints[field.name])
            if typing.get_origin(value_type) is list:
                (value_type,) = typing.get_args(value_type)
                cli.setdefault("nargs", "+")
            if value_type is bool:
                target.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            else:
                target.add_argument(flag, type=value_type, default=default, help=help_text, **cli)
    return groups


def settings_from_args(config_class, args: argparse.Namespace, **values):
    """The configuration built from the parsed options of its settings; `values` set the others (or override)."""
    names = config_class.setting_names()
    return config_class.from_flat({**{n: getattr(args, n) for n in names if hasattr(args, n)}, **values})


@contextlib.contextmanager
def errors_as_messages(parser: argparse.ArgumentParser, interrupted: str = ""):
    """Bad settings, missing or unreadable files and missing data sets end the program with 'PROG: error: ...' and
    exit status 2; a run whose losses stopped being finite with exit status 1; Ctrl-C with 'interrupted' (and the
    hint `interrupted`) and exit status 130."""
    try:
        yield
    except KeyboardInterrupt:
        parser.exit(130, f"\n{parser.prog}: interrupted{'; ' + interrupted if interrupted else ''}\n")
    except (ValueError, DatasetNotFound, CheckpointError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    except FloatingPointError as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
