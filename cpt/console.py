"""What the console shows: every message once, in one format, from the chosen level up (`--log-level`, warning by
default), without the logging-service tips Lightning prints on every run.

Lightning gives its loggers a handler of their own at import, on top of the root one, so each of its messages would
print twice: `settle_lightning` removes it once Lightning is loaded.
"""

from __future__ import annotations

import logging
import os
import warnings

LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LEVEL = "warning"


class _NoTips(logging.Filter):
    """Drops advertising (Lightning's "💡 Tip: ... try installing litlogger" on every Trainer)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def configure(level: str = DEFAULT_LEVEL) -> None:
    if logging.getLevelName(level.upper()) >= logging.WARNING:
        # transformers' bars for loading and writing weights (read from this variable when it is imported):
        # between the run's own task and evaluation bars they are noise; --log-level info shows them.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        # which makes a library's later call to switch them on (TRL's trainers, in `cpt bench`) warn every time
        warnings.filterwarnings("ignore", message="Cannot enable progress bars")
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # a no-op where a host set up logging
    logging.getLogger().setLevel(level.upper())
    for handler in logging.getLogger().handlers:
        handler.addFilter(_NoTips())
    # bitsandbytes warns on import that an optional CPU kernel package is missing; QLoRA works without it.
    logging.getLogger("bitsandbytes").setLevel(max(logging.ERROR, logging.getLogger().level))


def settle_lightning() -> None:
    """Lightning's messages through the root handler only, at the chosen level (its loggers set INFO for
    themselves)."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


def split_level(args: list[str]) -> tuple[str, list[str]]:
    """`--log-level LEVEL` (or `--log-level=LEVEL`) taken out of a command line, wherever it stands; ValueError
    naming the choices for an unknown level."""
    level, rest, i = DEFAULT_LEVEL, [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--log-level" or arg.startswith("--log-level="):
            if "=" in arg:
                value = arg.split("=", 1)[1]
            elif i + 1 < len(args):
                value, i = args[i + 1], i + 1
            else:
                value = ""
            if value.lower() not in LEVELS:
                raise ValueError(f"--log-level takes one of {', '.join(LEVELS)}, got {value!r}")
            level = value.lower()
        else:
            rest.append(arg)
        i += 1
    return level, rest
