"""The package's layering: no module imports one that imports it back, at module level or inside a function."""

import ast
import re
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGES = ("cpt", "callbacks")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[0] == "callbacks":  # installed as cpt.callbacks (pyproject.toml), imported by that name
        parts.insert(0, "cpt")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def ancestors(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:k]) for k in range(1, len(parts))}


def type_only_imports(tree: ast.AST) -> set[int]:
    """The import statements under `if TYPE_CHECKING:`: they name a type for annotations and run nothing."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            found |= {id(inner) for statement in node.body for inner in ast.walk(statement)
                      if isinstance(inner, (ast.Import, ast.ImportFrom))}
    return found


def import_graph(runtime_only: bool = False) -> dict[str, set[str]]:
    """Module -> the project's modules its import statements load, wherever the statement stands (with
    `runtime_only`, leaving out those under `if TYPE_CHECKING:`). Importing a.b.c also runs the packages a and a.b,
    except those the importer is already inside."""
    modules = {module_name(path): path for package in PACKAGES for path in (REPO / package).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        skipped = type_only_imports(tree) if runtime_only else set()
        loaded = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    root = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{root}.{base}" if base else root
                named = [f"{base}.{alias.name}" for alias in node.names]
                targets = [module if module in modules else base for module in named]
            else:
                continue
            for target in targets:
                if target in modules:
                    loaded |= {target} | (ancestors(target) & modules.keys())
        graph[name] = loaded - ancestors(name) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, path = [], {}, []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                found.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def test_no_import_cycles():
    graph = import_graph()
    assert {"cpt.callbacks", "cpt.methods.rft"} <= graph["cpt.commands.fit"]
    assert "cpt.smc.solvers" in graph["cpt.smc.cli"]
    assert cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


# The floors of the house, bottom to top: a module imports modules of its own floor or below, never above. What a
# run is made of comes first (data, then the model that reads it, then the RL pieces), then the config that names
# their registries, the methods built from them, evaluation of one model, reporting across runs, the callbacks, and
# the programs on top. cpt.smc stands apart on the base.
FLOORS = [
    ("cpt.errors", "cpt.atomic", "cpt.console", "cpt.plugins", "cpt.run_files", "cpt.bounds", "cpt.flags"),
    ("cpt.data",),
    ("cpt.model",),
    ("cpt.rl",),
    ("cpt.config",),
    ("cpt.methods",),
    ("cpt.eval",),
    ("cpt.reporting",),
    ("cpt.callbacks",),
    ("cpt.study",),
    ("cpt.commands",),
    ("cpt.bench",),
    ("cpt.cli", "cpt.__main__"),
]
APART = {"cpt.smc": 0}  # a package beside the house: the floor it may import up to


def floor_of(module: str) -> int:
    """The floor of `module`: that of the longest entry naming it or a package above it."""
    matches = [(len(entry), floor) for floor, entries in enumerate(FLOORS) for entry in entries
               if module == entry or module.startswith(entry + ".")]
    matches += [(len(entry), -1) for entry in APART if module == entry or module.startswith(entry + ".")]
    if not matches:
        raise KeyError(f"{module} stands on no floor: add it to FLOORS in tests/test_architecture.py")
    return max(matches)[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, loaded in sorted(graph.items()):
        if module == "cpt":
            continue
        floor = floor_of(module)
        ceiling = APART[next(p for p in APART if module == p or module.startswith(p + "."))] if floor < 0 else floor
        for target in sorted(loaded - {"cpt"}):
            target_floor = floor_of(target)
            if target_floor < 0 and not (floor < 0 and target.split(".")[:2] == module.split(".")[:2]):
                found.append(f"{module} -> {target} (a package apart)")
            elif target_floor > ceiling:
                found.append(f"{module} -> {target}")
    return found


def test_no_import_runs_up_a_floor():
    """Every module stands on a floor, and none imports (at run time) one that stands above it."""
    graph = import_graph(runtime_only=True)
    assert upward_imports(graph) == []


def test_the_floor_check_finds_what_it_looks_for():
    graph = {"cpt.data.tasks": {"cpt.model.backbone", "cpt.errors"}, "cpt.smc.cli": {"cpt.methods.rft", "cpt.errors"},
             "cpt.commands.fit": {"cpt.smc.solvers", "cpt.callbacks.replay"}, "cpt.smc.bench": {"cpt.smc.solvers"}}
    assert upward_imports(graph) == ["cpt.commands.fit -> cpt.smc.solvers (a package apart)",
                                     "cpt.data.tasks -> cpt.model.backbone", "cpt.smc.cli -> cpt.methods.rft"]
    with pytest.raises(KeyError, match="stands on no floor"):
        floor_of("cpt.newroom.thing")
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cpt.model import x\nimport cpt.errors\n"
    tree = ast.parse(source)
    assert [type(node).__name__ for node in ast.walk(tree) if id(node) in type_only_imports(tree)] == ["ImportFrom"]


def test_callbacks_are_imported_as_the_installed_package():
    """callbacks/ installs as cpt.callbacks: an `import callbacks` would load a second copy of every class (or an
    unrelated package of that name)."""
    offenders = []
    for folder in ("cpt", "callbacks", "tests"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                offenders += [f"{path.relative_to(REPO)}: {name}" for name in names
                              if name == "callbacks" or name.startswith("callbacks.")]
    assert offenders == []


# What only a family description may name: transformers' classes and modules of a family, and the module paths
# and attributes inside its models.
FAMILY_NAMES = re.compile(r"Qwen\w*(Config|Model|ForConditionalGeneration|Processor\w*|DecoderLayer|VisionBlock)\b"
                          r"|transformers\.models\.qwen|^(visual|language_model|get_rope_index|rope_deltas)$"
                          r"|\bmodel\.visual\b|\blanguage_model\.(layers|norm)\b")


def family_names_in(source: str) -> list[str]:
    """The names, attributes, imported modules and string constants (not docstrings) of `source` that name a
    family's classes, modules or module paths."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words = [node.id]
        elif isinstance(node, ast.Attribute):
            words = [node.attr]
        elif isinstance(node, ast.alias):
            words = [node.name]
        elif isinstance(node, ast.ImportFrom):
            words = [node.module or ""]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words = [node.value]
        else:
            continue
        found += [word for word in words if FAMILY_NAMES.search(word)]
    return found


def test_only_the_family_descriptions_name_a_familys_classes_or_module_paths():
    """A new backbone family is a new file in cpt/model/families: no other module names a Qwen class, a Qwen
    module of transformers, or a module path inside the models (`model.visual`, `language_model.layers`)."""
    offenders = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if "families" in path.parts or path.name == "family.py":  # the descriptions, and what they hold
                continue
            if names := family_names_in(path.read_text()):
                offenders[str(path.relative_to(REPO))] = sorted(set(names))
    assert offenders == {}


def test_the_family_name_check_finds_what_it_looks_for():
    source = ('"""Qwen2_5_VLForConditionalGeneration in a docstring is prose."""\n'
              "from transformers import Qwen3VLForConditionalGeneration\n"
              "from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import X\n"
              "def f(model):\n    '''model.visual here is prose too'''\n"
              "    return model.model.visual, model.get_submodule('model.language_model.norm')\n")
    assert sorted(family_names_in(source)) == sorted([
        "Qwen3VLForConditionalGeneration", "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl", "visual",
        "model.language_model.norm"])

