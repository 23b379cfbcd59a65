"""Loading user code named in a config: `package.module:name` or `path/to/file.py:name` (as EasyR1 does)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from cpt.errors import ConfigError

# Modules a config written before cpt/ had subpackages may still name, and where they are now.
MOVED = {"cpt.rewards": "cpt.rl.rewards"}


def load_object(spec: str, what: str) -> Any:
    """The object `spec` names; `what` says what it is for in error messages ("callback", "reward function")."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ConfigError(f"{what} {spec!r} must look like package.module:name or path/to/file.py:name")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser()
            if not path.is_file():
                raise ConfigError(f"{what} {spec!r}: file {str(path)!r} does not exist")
            name = f"cpt_plugin_{path.stem}"
            loader = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(loader)
            sys.modules[name] = module  # dataclasses and pickling look the module up by name
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError, SyntaxError) as error:
        moved = f"; it is now {MOVED[module_name]}:{attr}" if module_name in MOVED else ""
        raise ConfigError(f"cannot import {what} {spec!r}: {error}{moved}") from None
