"""Command-line flag types: each flag of every command declares one, and argparse checks the value when it parses.

`Number` takes the interval of `cpt.bounds` ('[1, inf)', '(0, 1)') and refuses NaN, infinities and, for counts,
fractions; `InputPath` must exist; `OutputFile` and `OutputDir` must be writable where they point and not be the
other kind of thing; `Text` is free text, said so. `parse` also refuses an output that names one of the same
command's inputs, so that no command writes over what it reads. A test walks every command's parser
(`cpt.cli.command_parsers`) and finds a flag without one of these types.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from cpt.bounds import Interval
from cpt.errors import ConfigError


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, naming the flag and where the help is."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class FlagType:
    """The base of the declared flag types (what the parser walk looks for)."""


class Number(FlagType):
    """A number in an interval; integer: a whole number; multiple_of: a whole number divisible by it."""

    def __init__(self, interval: str, integer: bool = False, multiple_of: int | None = None):
        self.interval = dataclasses.replace(Interval.parse(interval), integer=integer or multiple_of is not None)
        self.multiple_of = multiple_of

    def words(self) -> str:
        return self.interval.words() + (f", a multiple of {self.multiple_of}" if self.multiple_of else "")

    def __call__(self, text: str) -> int | float:
        try:
            value = int(text) if self.interval.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.words()}, got {text!r}") from None
        if not self.interval.contains(value) or (self.multiple_of and value % self.multiple_of):
            raise argparse.ArgumentTypeError(f"must be {self.words()}, got {text!r}")
        return value

    def __repr__(self) -> str:  # argparse names the type in some messages
        return "whole number" if self.interval.integer else "number"


COUNT = Number("[1, inf)", integer=True)  # sizes, steps, rounds, processes: at least 1
NATURAL = Number("[0, inf)", integer=True)  # warm-up steps, threads where 0 means the default
SEED = Number("[0, 4294967295]", integer=True)
RATIO = Number("(0, 1)")  # a share strictly between none and all
NON_NEGATIVE = Number("[0, inf)")


class Setting(FlagType):
    """NAME=VALUE with the value a number in an interval ("fm=3")."""

    def __init__(self, interval: str):
        self.number = Number(interval)

    def __call__(self, text: str) -> tuple[str, float]:
        name, _, value = text.partition("=")
        try:
            number = self.number(value)
        except argparse.ArgumentTypeError:
            number = None
        if not name or number is None:
            raise argparse.ArgumentTypeError(f"{text!r} is not NAME=N with N {self.number.words()} (e.g. fm=3)")
        return name, number

    def __repr__(self) -> str:
        return "setting"


class CountList(FlagType):
    """Comma-separated whole numbers, each at least 1 ("2,4")."""

    def __call__(self, text: str) -> list[int]:
        try:
            values = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            values = []
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError(f"must be whole numbers >= 1, comma-separated, got {text!r}")
        return values

    def __repr__(self) -> str:
        return "count list"


COUNTS = CountList()


class Text(FlagType):
    """Free text (a comma-separated list, a name): nothing to check beyond what the command parses itself."""

    def __call__(self, text: str) -> str:
        return text

    def __repr__(self) -> str:
        return "text"


TEXT = Text()


class Choice(FlagType):
    """One of a fixed set of names."""

    def __init__(self, names):
        self.names = tuple(names)

    def __call__(self, text: str) -> str:
        if text not in self.names:
            raise argparse.ArgumentTypeError(f"choose one of {', '.join(self.names)}, got {text!r}")
        return text

    def __repr__(self) -> str:
        return "choice"


class InputPath(FlagType):
    """A file or directory the command reads: it must exist."""

    def __call__(self, text: str) -> Path:
        path = Path(text)
        if not path.exists():
            raise argparse.ArgumentTypeError(f"{text!r} does not exist")
        return path

    def __repr__(self) -> str:
        return "input path"


def _writable_parent(path: Path) -> str | None:
    """What stops a file or directory from being created at path, or None: the nearest existing ancestor must be a
    writable directory."""
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{str(ancestor)!r} is a file, so nothing can be written under it"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{str(ancestor)!r} is not writable"
    return None


class OutputFile(FlagType):
    """A file the command writes: not a directory, and creatable where it points."""

    def __call__(self, text: str) -> Path:
        path = Path(text)
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} is a directory; name a file")
        problem = _writable_parent(path) or (f"{text!r} is not writable" if path.exists() and
                                             not os.access(path, os.W_OK) else None)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return path

    def __repr__(self) -> str:
        return "output file"


class OutputDir(FlagType):
    """A directory the command writes into (created if missing): not a file, and creatable where it points.
    `replaced`: the command replaces it whole (export), so it may not hold one of the inputs either."""

    def __init__(self, replaced: bool = False):
        self.replaced = replaced

    def __call__(self, text: str) -> Path:
        path = Path(text)
        if path.exists() and not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} is a file; name a directory")
        problem = _writable_parent(path) if not path.exists() else (
            None if os.access(path, os.W_OK | os.X_OK) else f"{text!r} is not writable")
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return path

    def __repr__(self) -> str:
        return "output directory"


INPUT, OUTPUT_FILE, OUTPUT_DIR, REPLACED_DIR = InputPath(), OutputFile(), OutputDir(), OutputDir(replaced=True)


def walk(parser: argparse.ArgumentParser, prefix: str = ""):
    """(command, action) for every flag and positional of the parser and its subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, f"{prefix}{name} ")
        elif not isinstance(action, argparse._HelpAction):
            yield prefix.strip(), action


def unchecked(parser: argparse.ArgumentParser) -> list[str]:
    """The flags and positionals that take a value with neither a type from this module nor choices."""
    found = []
    for command, action in walk(parser):
        if action.nargs != 0 and action.choices is None and not isinstance(action.type, FlagType):
            name = action.option_strings[0] if action.option_strings else action.dest
            found.append(f"{command} {name}".strip())
    return found


def unchecked_keys(declared: dict) -> list[str]:
    """The keys of a key=value command (`key_values`) declared without a type from this module."""
    return [key for key, kind in declared.items() if not isinstance(kind, FlagType)]


def parse(parser: argparse.ArgumentParser, args: list[str]) -> argparse.Namespace:
    """parser.parse_args, then no output may name one of the inputs (parser.error, exit 2, otherwise)."""
    options = parser.parse_args(args)
    inputs, outputs = [], []
    for action in parser._actions:
        if not isinstance(action.type, (InputPath, OutputFile, OutputDir)):
            continue
        values = getattr(options, action.dest, None)
        paths = [Path(v) for v in (values if isinstance(values, list) else [values]) if v is not None]
        if isinstance(action.type, InputPath):
            inputs += paths
        elif isinstance(action.type, (OutputFile, OutputDir)):
            outputs += [(action, path) for path in paths]
    for action, path in outputs:
        name = action.option_strings[0] if action.option_strings else action.dest.upper()
        if problem := overlap(path, inputs, replaced=getattr(action.type, "replaced", False)):
            parser.error(f"{name} {str(path)!r} {problem}: name another path")
    return options


def overlap(output: Path, inputs: list[Path], replaced: bool = False) -> str | None:
    """What is wrong with writing `output` given what the command reads: it is one of the inputs, or (`replaced`:
    the command replaces it whole) a directory holding one; None when neither."""
    target = output.resolve()
    for source in inputs:
        if not source.exists():
            continue
        if target == source.resolve():
            return "is one of the inputs; writing it would overwrite what the command reads"
        if replaced and target in source.resolve().parents:
            return f"holds the input {str(source)!r}; replacing it would delete what the command reads"
    return None


def key_values(args: list[str], declared: dict[str, FlagType], repeatable: tuple[str, ...] = (),
               others: bool = False) -> tuple[dict, list[str]]:
    """The `key=value` arguments of a command that takes them (eval, generate) as fit does: each declared key's
    value checked by its type (`repeatable` keys gathered into lists), and the others returned for the config
    (`others`) or refused. ConfigError (exit 2) names the first wrong one."""
    found: dict = {key: [] for key in repeatable}
    rest = []
    for arg in args:
        key, sep, text = arg.partition("=")
        if key not in declared:
            if others:
                rest.append(arg)
                continue
            raise ConfigError(f"unknown argument {arg!r}; give key=value with key one of {', '.join(declared)}")
        if not sep or not text:
            raise ConfigError(f"{key}= needs a value")
        try:
            value = declared[key](text)
        except argparse.ArgumentTypeError as error:
            raise ConfigError(f"{key}={text}: {error}") from None
        if key in repeatable:
            found[key].append(value)
        else:
            found[key] = value
    return found, rest
