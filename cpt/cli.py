"""`python -m cpt COMMAND ...`: hands the arguments to the command's module (cpt/commands/, or the command line of
a package of its own: cpt/bench/cli.py, cpt/smc/cli.py).

A command's module is imported only when it runs: `--help` and a mistyped command do not load the model,
data and training stack.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import warnings
from datetime import datetime

from cpt import console
from cpt.config import RUN_TIME_ENV, format_help
from cpt.errors import ConfigError, DataError

USAGE = """usage: python -m cpt COMMAND [CONFIG.yaml] [key=value ...] [--log-level debug|info|warning|error]

commands:
  fit       train the task sequence and write the accuracy matrix (python -m cpt fit --help lists every key)
  eval      eval [CONFIG.yaml] checkpoint=PATH [out=DIR] [key=value ...]: one accuracy row for a checkpoint
  generate  generate checkpoint=PATH [image=FILE ...] question="..." [...]: the model's answers
  export    export STAGE_DIR OUT_DIR [--dtype D]: a standalone transformers model (LoRA merged into its base)
  inspect   size the configured backbone on the meta device: parameters, trainable, FSDP units
  bench     bench rft|sft|memory|fsdp-load: RFT and SFT steps against TRL's; an RFT update's, a sharded load's memory
  compare   compare RUN_DIR [RUN_DIR ...] [--out DIR] [--diff A B]: runs side by side, seeds grouped, 95% intervals
  study     study STUDY.yaml [--dry-run]: every (experiment, seed) run of a study, resumable, then the comparison
  smc       smc complete INPUT OUTPUT | smc bench: similarity matrix completion (SMCNN, SMCNmF)
  data      data check [CONFIG.yaml] [key=value ...]: load every task and benchmark, report counts and bad rows
"""

# The errors of a place the user may not write (permission, read-only or full disk, quota).
REFUSED_BY_THE_MACHINE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}

# Each module has main(args) -> exit code.
COMMANDS = {"fit": "cpt.commands.fit", "eval": "cpt.commands.evaluate", "inspect": "cpt.commands.inspect",
            "bench": "cpt.bench.cli", "compare": "cpt.commands.compare", "data": "cpt.commands.data",
            "smc": "cpt.smc.cli",
            "generate": "cpt.commands.generate", "export": "cpt.commands.export", "study": "cpt.commands.study"}
# Commands with arguments of their own answer --help themselves; the others list the config keys.
OWN_HELP = ("bench", "compare", "data", "smc", "eval", "generate", "export", "study")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    try:
        level, argv = console.split_level(argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not argv:
        print(USAGE)
        return 0
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    if command not in OWN_HELP and ("-h" in args or "--help" in args):
        print(format_help(command))
        return 0
    os.environ.setdefault(RUN_TIME_ENV, datetime.now().isoformat(timespec="seconds"))
    console.configure(level)
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notices meant for library authors
    try:
        module = importlib.import_module(COMMANDS[command])
        console.settle_lightning()
        return module.main(args)
    except (ConfigError, FileNotFoundError) as error:  # the command line or config asks for something wrong
        print(f"error: {error}", file=sys.stderr)
        return 2
    except DataError as error:  # a dataset or a model file is unusable: the message names it
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the machine refused: a read-only or full disk, a permission; or another file error
        where = f" {error.filename!r}" if error.filename else ""
        if error.errno in REFUSED_BY_THE_MACHINE:
            print(f"error: cannot write or read{where}: {error.strerror}; choose a place this user may write "
                  "(output_dir, --out, foundation.cache_dir or $CPT_CACHE_DIR)", file=sys.stderr)
        else:
            print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    except SystemExit as stop:  # a command's parser refused a flag (its message is printed) or answered --help
        if isinstance(stop.code, str):  # SystemExit("message"): Python would print it and exit 1
            print(stop.code, file=sys.stderr)
            return 1
        return stop.code or 0


# The parser builder of every command that parses flags of its own (a subcommand's under its parent's).
PARSERS = {"bench": "cpt.bench.cli:build_parser", "bench fsdp-load": "cpt.bench.fsdp_load:build_parser",
           "compare": "cpt.commands.compare:build_parser", "data check": "cpt.commands.data:build_parser",
           "export": "cpt.commands.export:build_parser", "study": "cpt.commands.study:build_parser",
           "smc bench": "cpt.smc.bench:build_parser", "smc complete": "cpt.smc.cli:complete_parser"}


# The commands that take key=value arguments of their own (as fit takes the config's): their declared keys.
KEY_VALUE_KEYS = {"eval": "cpt.commands.evaluate:KEYS", "generate": "cpt.commands.generate:KEYS"}


def command_keys() -> dict[str, dict]:
    """Every key=value command's declared keys, for the test that tries them: each has a type from `cpt.flags`."""
    found = {}
    for command, spec in KEY_VALUE_KEYS.items():
        module, _, name = spec.partition(":")
        found[command] = getattr(importlib.import_module(module), name)
    return found


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser, built, for the test that walks them: a flag is checked by being declared with a
    type from `cpt.flags`."""
    built = {}
    for command, spec in PARSERS.items():
        module, _, builder = spec.partition(":")
        built[command] = getattr(importlib.import_module(module), builder)()
    return built
