"""What the command-line programs share: options made from the fields of a settings dataclass, help that shows
defaults, and errors that end a program with one line instead of a traceback."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import re
import signal
import threading
import types
import typing

from .common import STORAGE_FAILURES, StorageError, field_default, storage_failure
from .data import DatasetNotFound
from .engine.lifecycle.checkpoint import CheckpointError
from .engine.lifecycle.distributed import lost_peer
from .engine.lifecycle.run import RunInterrupted


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
    """The parser of `python -m zskt_fast.PROGRAM`, showing each option's default (HelpFormatter), with --debug."""
    parser = argparse.ArgumentParser(prog=f"python -m zskt_fast.{program}", description=description,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of the one line that names it")
    return parser


def add_options(parser: argparse.ArgumentParser, config_class, *, skip: tuple[str, ...] = (),
                defaults: dict | None = None, group_order: tuple[str, ...] = ()) -> dict[str, argparse._ArgumentGroup]:
    """One --option per setting of the configuration `config_class` (each field of each of its parts; setting x_y ->
    --x-y), with the setting's default (or the one `defaults` gives instead) and the help text and argparse keywords
    kept in its metadata (aliases=...: further flags); booleans get --x / --no-x. Settings with a `group` go into help
    groups, in `group_order` first; returns the groups by name."""
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
            aliases = tuple(cli.pop("aliases", ()))
            target = parser if group is None else groups.setdefault(group, parser.add_argument_group(group))
            flag = "--" + field.name.replace("_", "-")
            default = defaults.get(field.name, field_default(field))
            value_type = _value_type(hints[field.name])
            if typing.get_origin(value_type) is list:
                (value_type,) = typing.get_args(value_type)
                cli.setdefault("nargs", "+")
            if value_type is bool:
                target.add_argument(flag, *aliases, action=argparse.BooleanOptionalAction, default=default,
                                    help=help_text)
            else:
                target.add_argument(flag, *aliases, type=value_type, default=default, help=help_text, **cli)
    return groups


def settings_from_args(config_class, args: argparse.Namespace, **values):
    """The configuration built from the parsed options of its settings; `values` set the others (or override)."""
    names = config_class.setting_names()
    return config_class.from_flat({**{n: getattr(args, n) for n in names if hasattr(args, n)}, **values})


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a run's loop, so that the program ends as Ctrl-C ends it (with its own exit status)."""


def _terminate(signum, frame):
    raise Terminated


@dataclasses.dataclass
class Ending:
    """What the program has saved so far, for the line that ends it: `continue_with` the command that continues
    (said after an interrupt, a full disk or a lost process); `quiet` for the ranks that leave the talking to rank
    0."""
    continue_with: str = ""
    quiet: bool = False


def _one_line(error: BaseException) -> str:
    """The message of `error` without a worker's traceback (a DataLoader worker's error carries one in its text)."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text or type(error).__name__


@contextlib.contextmanager
def errors_as_messages(parser: argparse.ArgumentParser, *, debug: bool = False):
    """Every way a program can end early ends in one line, 'PROG: ...', with an exit status that says whose it is:
    2 for the user's (bad settings, missing or unreadable files and data sets), 130 / 143 for Ctrl-C / SIGTERM (with
    the Ending's command saying how to go on), 1 for the machine's (a full or read-only disk, a lost
    process of a torchrun job, a run whose losses stopped being finite, anything unexpected). `debug` shows the
    traceback instead. Yields the Ending that the program fills in once it has a run to continue."""
    ending = Ending()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        yield ending
    except SystemExit:
        raise
    except BaseException as error:
        if debug and not isinstance(error, KeyboardInterrupt):
            raise
        status, message, resumable = _classify(error)
        hint = f"\ncontinue with: {ending.continue_with}" if resumable and ending.continue_with else ""
        gap = "\n" if resumable else ""  # off the line of the progress bar or the ^C
        parser.exit(status, "" if ending.quiet else f"{gap}{parser.prog}: {message}{hint}\n")
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _classify(error: BaseException) -> tuple[int, str, bool]:
    """(exit status, message, whether the work saved so far can be continued) of an error that ends a program."""
    if isinstance(error, RunInterrupted):
        return 128 + error.signum, str(error), True
    if isinstance(error, KeyboardInterrupt):
        return (143 if isinstance(error, Terminated) else 130), "interrupted", True
    failure = storage_failure(error)
    if failure is not None:
        if isinstance(failure, StorageError):
            return 1, f"error: {failure}", True
        where = f" {failure.filename}" if failure.filename else ""
        return 1, f"error: cannot write{where}: {STORAGE_FAILURES[failure.errno]}", True
    if lost_peer(error):
        said = re.sub(r"^\[[^\]]*\]\s*", "", _one_line(error).splitlines()[0]).split(". ")[0]  # gloo's source line
        return 1, (f"error: lost contact with another process of the job ({said}): one of them died or hung, and its "
                   f"own output says why"), True
    if isinstance(error, (ValueError, DatasetNotFound, CheckpointError)):
        return 2, f"error: {_one_line(error)}", False
    if isinstance(error, FloatingPointError):
        return 1, f"error: {_one_line(error)}", False
    first = _one_line(error).splitlines()[0]
    return 1, f"error: {type(error).__name__}: {first} (--debug shows where it came from)", False
