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
# Packages configs name by another path that keeps working: our callbacks install as cpt.callbacks (a top-level
# `callbacks` would collide with an unrelated package of that name), and task scoring moved to cpt.data.
ALIASES = {"callbacks": "cpt.callbacks", "cpt.eval.scoring": "cpt.data.scoring"}


def import_module(name: str):
    """The module `name`, or where an alias says it lives now (a user package of the aliased name still wins
    when ours has no such module)."""
    for old, new in ALIASES.items():
        if name == old or name.startswith(old + "."):
            renamed = new + name[len(old):]
            try:
                found = importlib.util.find_spec(renamed) is not None
            except ModuleNotFoundError:
                found = False
            if found:
                return importlib.import_module(renamed)
    return importlib.import_module(name)


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
            module = import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError, SyntaxError) as error:
        moved = f"; it is now {MOVED[module_name]}:{attr}" if module_name in MOVED else ""
        raise ConfigError(f"cannot import {what} {spec!r}: {error}{moved}") from None
