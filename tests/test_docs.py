"""Docs that cannot go stale: every command line shown in README.md and docs/*.md still parses and resolves, and
every relative link still leads somewhere. Nothing is trained, loaded or run.

Collected: each line of a shell code block that runs `python -m cpt ...` (also after `&&`), and each inline code
span in the prose that starts with `python -m cpt` or with the console script's `cpt COMMAND`. Each becomes its own
test case, named page:line.

Checked, for each command line:
- the command exists (`cpt.cli.COMMANDS`);
- `fit`, `eval` and `inspect` (and the overrides of `data check`, `bench rft|sft|jobs`) build their config with the
  project's own loader (`cpt.config.config_with_recipe_from_args`): the config file exists, every key exists, every
  value has its type and range;
- the commands that parse flags of their own (`compare`, `export`, `study`, `data`, `bench`, `smc`) get their
  arguments parsed by that command's own argparse parser: the command's `main` runs until it asks a parser to parse,
  and that parser is taken and asked here (`capture_parser`); `generate` by its own `parse`;
- `study` loads its study file and resolves the configuration of each of its experiments (`cpt.study.plan`);
- every file named on the command line exists, under the conventions below.

Conventions of the pages:
- `<...>` is a placeholder the reader fills in (`runs/<run>/checkpoints/3-shape`, `image=<photo.png>`): a path
  holding one is not looked up; a `key=<value>` override is not typed, but its key must exist.
- ALL-CAPS words are a synopsis' metavariables, as `--help` writes them (`CONFIG.yaml`, `INPUT.csv`, `K`);
  `key=value` stands for any override; `[...]` is optional, `a|b` one of several, `...` more of the same. The
  required part of a synopsis is checked in full, each optional part with it (each alternative of `a|b` in turn);
  an optional part holding a metavariable is checked only for its flags being the command's own.
- An absolute path (`/models/...`, `/data/...`) is a place on the reader's machine and is not looked up.
- A relative path under `runs/` (cpt's output root) must be written by an earlier command on the same page
  (`out=`, `output_dir=`, `--out`), or hold a placeholder.
- Outputs (`out=`, `output_dir=`, `--out`, `--json`, `--dir`, the OUT of `export` and `smc complete`) need not exist;
  every other relative path must exist in the repository (`configs/...` as the package finds its own).
- A bare `python -m cpt COMMAND` (or `cpt COMMAND`) in prose names the command: only its existence is checked, and
  for the commands that take a config, that the default config builds.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import re
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cpt import cli, console
from cpt import flags as cpt_flags
from cpt.config import config_path, config_with_recipe_from_args
from cpt.errors import ConfigError, DataError
from tests.helpers import REPO

PAGES = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
CONFIG_COMMANDS = ("fit", "eval", "inspect")
OUTPUT_KEYS = ("out", "output_dir")
OUTPUT_FLAGS = ("--out", "--json", "--dir")
OUTPUT_DESTS = ("out", "output", "json", "dir")
SHELL_FENCES = ("", "bash", "sh", "shell", "console")
PATH_SUFFIXES = (".yaml", ".yml", ".json", ".jsonl", ".csv", ".npy", ".png", ".jpg", ".parquet", ".txt", ".md")
METAVARIABLE = re.compile(r"^[A-Z][A-Z0-9_]*(\.[a-z]+)?/?$")


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    text: str
    written_before: frozenset[str] = frozenset()  # outputs of the earlier commands on the page
    nth: int = 1  # the how-manieth command on its line

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}" + (f"({self.nth})" if self.nth > 1 else "")


# ---------------------------------------------------------------- collecting


def blank_code_blocks(text: str) -> tuple[str, list[tuple[int, str, str]]]:
    """The text with fenced blocks blanked (line numbers kept), and the blocks' lines: (line number, fence, line)."""
    out, lines, fence = [], [], None
    for number, line in enumerate(text.split("\n"), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = stripped[3:].strip() if fence is None else None
            out.append("")
            continue
        if fence is not None:
            lines.append((number, fence, line))
            out.append("")
        else:
            out.append(line)
    return "\n".join(out), lines


def is_cpt(text: str) -> bool:
    return text == "python -m cpt" or text.startswith("python -m cpt ") or bool(re.match(r"cpt [a-z]", text))


def commands_in(page: str, text: str) -> list[Command]:
    prose, block_lines = blank_code_blocks(text)
    found: list[tuple[int, str]] = []
    for number, fence, line in block_lines:
        if fence not in SHELL_FENCES:
            continue
        for segment in line.split("&&"):
            segment = segment.strip().removeprefix("$ ")
            if segment.startswith("python -m cpt"):
                found.append((number, segment))
    for match in re.finditer(r"`([^`]+)`", prose):
        span = " ".join(match.group(1).split())
        if is_cpt(span):
            found.append((prose.count("\n", 0, match.start()) + 1, span))
    commands, written, seen = [], set(), {}
    for number, line in sorted(found, key=lambda f: f[0]):
        seen[number] = seen.get(number, 0) + 1
        commands.append(Command(page, number, line, frozenset(written), seen[number]))
        written |= outputs_named(line)
    return commands


def outputs_named(line: str) -> set[str]:
    """The paths a command line names as its outputs, read from the text."""
    tokens = tokenize(line)
    outputs = {t.partition("=")[2] for t in tokens if t.partition("=")[0] in OUTPUT_KEYS}
    outputs |= {b for a, b in zip(tokens, tokens[1:]) if a.lstrip("[") in OUTPUT_FLAGS}
    return {o.rstrip("]").rstrip("/") for o in outputs if o}


def tokenize(line: str) -> list[str]:
    return shlex.split(line, comments=True)


def all_commands() -> list[Command]:
    commands = []
    for page in PAGES:
        commands += commands_in(page, (REPO / page).read_text())
    return commands


def command_id(command: Command) -> str:
    return command.id


# ---------------------------------------------------------------- conventions


def is_placeholder(token: str) -> bool:
    return "<" in token or token == "key=value" or bool(METAVARIABLE.match(token))


def looks_like_path(value) -> bool:
    if isinstance(value, Path):
        return True
    return isinstance(value, str) and (("/" in value and " " not in value) or value.endswith(PATH_SUFFIXES))


def input_problem(path: str, command: Command) -> str | None:
    """Why a path the command reads cannot be found, or None."""
    if is_placeholder(path) or any(is_placeholder(part) for part in Path(path).parts) or Path(path).is_absolute():
        return None
    clean = str(path).rstrip("/")
    if clean == "runs" or clean.startswith("runs/"):
        if any(clean == w or clean.startswith(w + "/") for w in command.written_before):
            return None
        return f"{path!r} is under runs/ but no earlier command on {command.page} writes it"
    if (REPO / clean).exists() or config_path(clean).exists():
        return None
    return f"{path!r} does not exist in the repository"


# ---------------------------------------------------------------- one command line


class Captured(BaseException):  # noqa: N818 - not an error: how the parser comes back out of `main`
    """Raised in place of parsing: the parser a command's main built, how it asked to parse, and what."""

    def __init__(self, parser: argparse.ArgumentParser, method: str, args):
        self.parser, self.method, self.args = parser, method, args


PARSE_METHODS = ("parse_args", "parse_known_args", "parse_intermixed_args", "parse_known_intermixed_args")


@contextlib.contextmanager
def capture_parser():
    originals = {name: getattr(argparse.ArgumentParser, name) for name in PARSE_METHODS}

    def stand_in(name):
        def parse(self, args=None, namespace=None):
            raise Captured(self, name, args)

        return parse

    try:
        for name in PARSE_METHODS:
            setattr(argparse.ArgumentParser, name, stand_in(name))
        yield
    finally:
        for name, method in originals.items():
            setattr(argparse.ArgumentParser, name, method)


def parser_of(command: str, args: list[str]) -> Captured | str:
    """The parser the command's own main asks to parse `args`, or why it never asks."""
    module = importlib.import_module(cli.COMMANDS[command])
    with capture_parser(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            code = module.main(list(args))
        except Captured as captured:
            return captured
        except (ConfigError, DataError, FileNotFoundError, ValueError, SystemExit) as error:
            return f"{command} {' '.join(args)}: {type(error).__name__}: {error}"
    return f"{command} {' '.join(args)}: exited {code} before parsing its arguments {err.getvalue().strip()}"


@contextlib.contextmanager
def paths_unchecked():
    """The path flag types take their text as given: this test checks paths itself, knowing placeholders (INPUT.csv,
    runs/<run>) and what an earlier command on the page writes, which the types cannot."""
    kinds = (cpt_flags.InputPath, cpt_flags.OutputFile, cpt_flags.OutputDir)
    originals = {kind: kind.__call__ for kind in kinds}
    try:
        for kind in kinds:
            kind.__call__ = lambda self, text: Path(text)
        yield
    finally:
        for kind, call in originals.items():
            kind.__call__ = call


def parse_with(captured: Captured):
    """Parse as the command would; the namespace (and leftovers for parse_known_*), or the parser's complaint."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err, \
            paths_unchecked():
        try:
            result = getattr(captured.parser, captured.method)(captured.args)
        except SystemExit as stop:
            if stop.code in (0, None):  # --help
                return None, []
            return err.getvalue().strip().splitlines()[-1], []
    return result if isinstance(result, tuple) else (result, [])


def known_flags(captured: Captured, args: list[str]) -> set[str]:
    """Every option string of the parser, and of the subcommand `args` picks."""
    flags = set(captured.parser._option_string_actions)
    for action in captured.parser._actions:
        if isinstance(action, argparse._SubParsersAction) and args and args[0] in action.choices:
            flags |= set(action.choices[args[0]]._option_string_actions)
    return flags


def config_problems(args: list[str], command: Command) -> list[str]:
    """Build the config `args` names (an optional file first, then key=value), as the commands do."""
    problems, overrides, blanks = [], [], []
    if args and "=" not in args[0] and not args[0].startswith("-"):
        path, args = args[0], args[1:]
        if is_placeholder(path):
            path = None
        elif problem := input_problem(path, command):
            return [problem]
    else:
        path = None
    for arg in args:
        key, sep, value = arg.partition("=")
        if arg == "key=value":
            continue
        if sep and is_placeholder(value):
            blanks.append(key)
        else:
            overrides.append(arg)
        if sep and looks_like_path(value) and key not in OUTPUT_KEYS and (problem := input_problem(value, command)):
            problems.append(problem)
    try:
        cfg, _ = config_with_recipe_from_args(([path] if path else []) + overrides)
    except (ConfigError, FileNotFoundError) as error:
        return [*problems, f"config: {error}"]
    absent = object()
    problems += [f"config: unknown key {key!r}" for key in blanks
                 if OmegaConf.select(cfg, key, default=absent) is absent]
    return problems


@functools.cache
def study_problems(path: str) -> tuple[str, ...]:
    """The study file loads and the configuration of each of its experiments resolves (on one seed each)."""
    from cpt.study import load_study, plan

    try:
        study = load_study(path)
        experiments = [replace(e, seeds=e.seeds[:1]) for e in study.experiments]
        plan(replace(study, seeds=[], experiments=experiments))
    except (ConfigError, FileNotFoundError) as error:
        return (f"study: {error}",)
    return ()


def argparse_problems(command_name: str, args: list[str], command: Command) -> list[str]:
    captured = parser_of(command_name, args)
    if isinstance(captured, str):
        return [captured]
    namespace, leftovers = parse_with(captured)
    if isinstance(namespace, str):
        return [namespace]
    if namespace is None:  # --help
        return []
    problems = []
    for dest, value in vars(namespace).items():
        values = value if isinstance(value, list) else [value]
        if dest in OUTPUT_DESTS or dest == "args":
            continue
        for v in values:
            if looks_like_path(v) and (problem := input_problem(str(v), command)):
                problems.append(problem)
    if command_name == "data":
        problems += config_problems(list(namespace.args), command)
    if command_name == "bench":
        if args[0] in ("rft", "sft", "jobs"):
            problems += config_problems(leftovers, command)
        elif leftovers:
            problems.append(f"bench {args[0]} takes no config overrides: {' '.join(leftovers)}")
    if command_name == "study" and not is_placeholder(namespace.study) and not problems:
        problems += list(study_problems(namespace.study))
    return problems


def full_problems(command_name: str, args: list[str], command: Command) -> list[str]:
    """Every problem of one concrete command line (no synopsis left in it)."""
    if command_name in CONFIG_COMMANDS or command_name == "generate":
        if "-h" in args or "--help" in args:
            return []
    if command_name == "fit":
        return config_problems([a for a in args if a != "--print-config"], command)
    if command_name == "eval":
        from cpt.commands.evaluate import KEYS

        own = {a.partition("=")[0]: a.partition("=")[2] for a in args if a.partition("=")[0] in KEYS}
        rest = [a for a in args if a.partition("=")[0] not in own]
        problems = config_problems(rest, command)
        if "checkpoint" in own and (problem := input_problem(own["checkpoint"], command)):
            problems.append(problem)
        return problems
    if command_name == "inspect":
        return config_problems(args, command)
    if command_name == "generate":
        from cpt.commands.generate import parse

        try:
            with paths_unchecked():  # checked below, placeholders known
                found = parse(args)
        except ConfigError as error:
            return [f"generate: {error}"]
        paths = [found["checkpoint"], *map(str, found["image"])]
        return [p for p in (input_problem(path, command) for path in paths) if p]
    return argparse_problems(command_name, args, command)


def synopsis_parts(args: list[str]) -> tuple[list[str], list[list[str]]]:
    """The required tokens and the optional groups `[...]` of a command line; `...` dropped."""
    required, groups, group = [], [], None
    for token in args:
        if group is None and token.startswith("["):
            group, token = [], token[1:]
        closing = group is not None and token.endswith("]")
        token = token[:-1] if closing else token
        if token and token != "...":
            (group if group is not None else required).append(token)
        if closing:
            groups.append(group)
            group = None
    return required, groups


def alternatives(tokens: list[str]) -> list[list[str]]:
    """One token list per choice of every `a|b` token."""
    variants = [[]]
    for token in tokens:
        choices = token.split("|") if "|" in token and "=" not in token and " " not in token else [token]
        variants = [v + [c] for v in variants for c in choices]
    return variants


def problems_of(command: Command) -> list[str]:
    tokens = tokenize(command.text)
    tokens = tokens[3:] if tokens[:3] == ["python", "-m", "cpt"] else tokens[1:]
    try:
        _, tokens = console.split_level(tokens)
    except ValueError as error:
        return [str(error)]
    if not tokens:
        return []  # `python -m cpt` alone prints the usage
    name, args = tokens[0], tokens[1:]
    if is_placeholder(name):  # `python -m cpt COMMAND`: any command
        return []
    if name not in cli.COMMANDS:
        return [f"unknown command {name!r}; cpt has {', '.join(cli.COMMANDS)}"]
    if not args:  # a bare command names it; a config command also builds its default config
        return config_problems([], command) if name in CONFIG_COMMANDS else []
    required, groups = synopsis_parts(args)
    problems = []
    for variant in alternatives(required):
        problems += full_problems(name, variant, command)
    if problems:
        return problems
    for group in groups:
        if any(is_placeholder(t) for t in group):  # only its flags can be checked
            flags = [t for t in group if t.startswith("-")]
            if flags and name not in CONFIG_COMMANDS + ("generate",):
                captured = parser_of(name, alternatives(required)[0])
                if isinstance(captured, str):
                    problems.append(captured)
                    continue
                known = known_flags(captured, alternatives(required)[0])
                problems += [f"{name}: unknown flag {f}" for f in flags if f not in known]
            continue
        for variant in alternatives(group):
            problems += full_problems(name, alternatives(required)[0] + variant, command)
    return problems


# ---------------------------------------------------------------- the tests

COMMANDS = all_commands()


@pytest.fixture(autouse=True)
def _in_the_repository(monkeypatch):
    monkeypatch.chdir(REPO)  # relative paths on the pages are the repository's


@pytest.mark.parametrize("command", COMMANDS, ids=command_id)
def test_command_line_parses_and_resolves(command):
    assert problems_of(command) == [], command.text


def test_every_page_shows_commands_and_every_command_is_collected():
    pages = {c.page for c in COMMANDS}
    assert "README.md" in pages and len(COMMANDS) >= 40
    readme = (REPO / "README.md").read_text()
    assert 'pip install torch==2.13.0 && pip install -e ".[dev]" && python -m cpt fit' in readme
    assert any(c.page == "README.md" and c.text == "python -m cpt fit" for c in COMMANDS)
    assert "```bash\npython -m pytest -q\n```" in readme  # .ci/run runs exactly these two


PLANTED = """# A page

```bash
python -m cpt fit stpes_per_task=3
python -m cpt fitt configs/rft.yaml
python -m cpt study configs/studies/no_such_study.yaml --jobs 2
python -m cpt study configs/studies/toy.yaml --jbos 2
python -m cpt compare runs/eval-x
python -m cpt eval checkpoint=runs/<run>/checkpoints/1-colour optim.lr=-1
python -m cpt smc complete data.csv OUT.npy [--rank K] [--rnak K]
python -m cpt bench memory optim.lr=1e-4
```

Prose names `python -m cpt generate checkpoint=missing/stage question="Why?"` and `cpt inspect model.nme=tiny`.
"""


def test_planted_dead_commands_are_reported():
    planted = commands_in("planted.md", PLANTED)
    assert [c.id for c in planted] == [*(f"planted.md:{n}" for n in range(4, 12)), "planted.md:14",
                                       "planted.md:14(2)"]
    reports = [problems_of(c) for c in planted]
    assert all(reports), [c.text for c, r in zip(planted, reports) if not r]
    expected = ["did you mean: steps_per_task", "unknown command 'fitt'", "does not exist", "--jbos",
                "no earlier command on planted.md writes it", "optim.lr", "'data.csv' does not exist",
                "takes no config overrides", "'missing/stage' does not exist", "model.nme"]
    for command, report, words in zip(planted, reports, expected):
        assert words in report[0], (command.text, report)


def test_planted_unknown_flag_in_a_synopsis_is_reported():
    line = "python -m cpt smc complete INPUT.csv OUTPUT.npy [--rank K] [--rnak K] [--method smcnn|smcnmf|svd]"
    problems = problems_of(Command("planted.md", 1, line))
    assert any("--rnak" in p for p in problems) and any("svd" in p for p in problems), problems
    assert not any("--rank" in p and "--rnak" not in p for p in problems), problems


def test_a_page_writes_what_a_later_command_reads():
    page = "```bash\npython -m cpt eval out=runs/eval-a\npython -m cpt compare runs/eval-a runs/eval-b\n```\n"
    first, second = commands_in("planted.md", page)
    assert problems_of(first) == []
    assert problems_of(second) == ["'runs/eval-b' is under runs/ but no earlier command on planted.md writes it"]


# ---------------------------------------------------------------- links


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", "")).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    prose, _ = blank_code_blocks(page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", prose, re.M)}


LINKS = [(page, number, target) for page in PAGES
         for number, line in enumerate(blank_code_blocks((REPO / page).read_text())[0].split("\n"), 1)
         for target in re.findall(r"\]\(([^)\s]+)\)", line) if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("page, number, target", LINKS, ids=[f"{p}:{n}:{t}" for p, n, t in LINKS])
def test_relative_link_leads_somewhere(page, number, target):
    path, _, anchor = target.partition("#")
    destination = (REPO / page).parent / path if path else REPO / page
    assert destination.exists(), f"{page}:{number}: {target} is not there"
    if anchor:
        assert destination.suffix == ".md" and anchor in anchors(destination), f"{page}:{number}: no #{anchor}"
