"""`python -m cpt fit [CONFIG.yaml] [key=value ...]` and `python -m cpt inspect [CONFIG.yaml] [key=value ...]`."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from datetime import datetime
from pathlib import Path

from cpt.config import RUN_TIME_ENV, ConfigError, format_help, load_config
from cpt.tables import DataError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
USAGE = """usage: python -m cpt COMMAND [CONFIG.yaml] [key=value ...]

commands:
  fit       train the task sequence and write the accuracy matrix (python -m cpt fit --help lists every key)
  inspect   size the configured backbone on the meta device: parameters, trainable, FSDP units
  bench     bench rft: time our RFT step against TRL's GRPOTrainer on the same model and prompts
  compare   compare RUN_DIR [RUN_DIR ...] [--out DIR]: the runs' metrics side by side, as tables and figures
  smc       smc complete INPUT OUTPUT | smc bench: similarity matrix completion (SMCNN, SMCNmF)
  data      data check [CONFIG.yaml] [key=value ...]: load every task and benchmark, report counts and bad rows
"""


def split_config_args(args: list[str]) -> tuple[Path | None, list[str]]:
    """An optional leading YAML path, then key=value overrides; no path means configs/default.yaml."""
    if args and "=" not in args[0]:
        return Path(args[0]), args[1:]
    return (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None), args


def fit(args: list[str]) -> int:
    from cpt.fit import run

    cfg = load_config(*split_config_args(args))
    try:
        run(cfg)
    except FloatingPointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def inspect(args: list[str]) -> int:
    from cpt.sizing import describe_backbone, format_description

    cfg = load_config(*split_config_args(args))
    print(format_description(cfg.model.name_or_path, describe_backbone(cfg)))
    return 0


def bench(args: list[str]) -> int:
    from cpt.bench import main

    return main(args)


def compare(args: list[str]) -> int:
    from cpt.compare import main

    return main(args)


def smc(args: list[str]) -> int:
    from cpt.smc.cli import main

    return main(args)


def data(args: list[str]) -> int:
    from cpt.datacheck import main

    return main(args)


COMMANDS = {"fit": fit, "inspect": inspect, "bench": bench, "compare": compare, "data": data, "smc": smc}
# Commands with arguments of their own answer --help themselves; the others list the config keys.
OWN_HELP = ("bench", "compare", "data", "smc")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    if command not in OWN_HELP and ("-h" in args or "--help" in args):
        print(format_help())
        return 0
    os.environ.setdefault(RUN_TIME_ENV, datetime.now().isoformat(timespec="seconds"))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # bitsandbytes warns on import that an optional CPU kernel package is missing; QLoRA works without it.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notices meant for library authors
    try:
        return COMMANDS[command](args)
    except (ConfigError, DataError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
