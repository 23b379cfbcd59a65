"""Every command flag is checked from its declaration: the tests below walk every command's parser, so a flag added
to one is tried with the wrong values for its type by being declared."""

import argparse
from pathlib import Path

import numpy as np
import pytest

from cpt import flags
from cpt.cli import command_keys, command_parsers, main

PARSERS = command_parsers()
ACTIONS = [(command, action) for name, parser in PARSERS.items()
           for command, action in flags.walk(parser, name + " ")]
NUMBERS = [(command, action) for command, action in ACTIONS if isinstance(action.type, (flags.Number, flags.Setting))]
PATHS = [(command, action) for command, action in ACTIONS
         if isinstance(action.type, (flags.InputPath, flags.OutputFile, flags.OutputDir))]
WRONG = ("nan", "inf", "-inf", "-1", "0", "abc", "1.5", "1e400")


def name(action) -> str:
    """How argparse's messages name the flag or positional."""
    return action.option_strings[0] if action.option_strings else action.metavar or action.dest


def command_line(command: str, action, value: str, tmp_path) -> list[str]:
    """The command with `value` for `action` and a valid value for each other positional before it (argparse
    checks a value's type as it reaches it, so later ones need not be given)."""
    parser = PARSERS[command] if command in PARSERS else next(
        sub for top, parser in PARSERS.items() if command.startswith(top + " ")
        for sub in [parser._subparsers._group_actions[0].choices[command.removeprefix(top + " ")]])
    words = command.split()
    (tmp_path / "in.npy").write_bytes(b"")
    for other in parser._actions:
        if other is action:
            break
        if not other.option_strings and not isinstance(other, argparse._SubParsersAction):
            words.append({flags.InputPath: str(tmp_path / "in.npy"), flags.OutputFile: str(tmp_path / "new.npy"),
                          flags.OutputDir: str(tmp_path / "new")}.get(type(other.type), "x"))
    # --flag=value: a value such as -inf must reach the type, not be taken for a flag of its own
    return [*words, f"{action.option_strings[0]}={value}" if action.option_strings else value]


def test_every_flag_of_every_command_declares_its_type():
    from cpt.cli import OWN_HELP

    # every command with flags of its own is walked (eval and generate take key=value, as fit)
    assert {command.split()[0] for command in PARSERS} == set(OWN_HELP) - {"eval", "generate"}
    assert flags.unchecked(argparse.ArgumentParser()) == []
    for command, parser in PARSERS.items():
        assert flags.unchecked(parser) == [], command
    assert len(NUMBERS) >= 30 and len(PATHS) >= 10  # the walk reaches the subcommands' flags too


def test_a_planted_flag_without_a_type_is_reported():
    parser = flags.Parser(prog="planted")
    parser.add_argument("--size", type=int)
    parser.add_argument("--name")
    parser.add_argument("--ok", type=flags.COUNT)
    parser.add_argument("--mode", choices=("a", "b"))
    parser.add_argument("--on", action="store_true")
    sub = parser.add_subparsers(dest="what").add_parser("inner")
    sub.add_argument("--ratio", type=float)
    assert flags.unchecked(parser) == ["--size", "--name", "inner --ratio"]


@pytest.mark.parametrize(("command", "action"), NUMBERS, ids=[f"{c} {name(a)}" for c, a in NUMBERS])
def test_every_number_flag_refuses_what_its_type_excludes(command, action, tmp_path, capsys):
    number = action.type.number if isinstance(action.type, flags.Setting) else action.type
    for value in WRONG:
        try:
            number(value)
            continue  # allowed by the declaration
        except argparse.ArgumentTypeError:
            pass
        text = f"fm={value}" if isinstance(action.type, flags.Setting) else value
        assert main(command_line(command, action, text, tmp_path)) == 2, (command, name(action), value)
        err = capsys.readouterr().err
        assert err.startswith("error: ") and name(action) in err and len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err


@pytest.mark.parametrize(("command", "action"), PATHS, ids=[f"{c} {name(a)}" for c, a in PATHS])
def test_every_path_flag_refuses_what_its_type_excludes(command, action, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    wrong = {flags.InputPath: [(str(tmp_path / "missing"), "does not exist")],
             flags.OutputFile: [(str(tmp_path), "is a directory"),
                                (str(tmp_path / "file" / "out.json"), "is a file, so nothing can be written under it")],
             flags.OutputDir: [(str(tmp_path / "file"), "is a file; name a directory"),
                               (str(tmp_path / "file" / "out"), "is a file, so nothing can be written under it")],
             }[type(action.type)]
    for value, message in wrong:
        assert main(command_line(command, action, value, tmp_path)) == 2, (command, name(action), value)
        err = capsys.readouterr().err
        assert message in err and name(action) in err and len(err.strip().splitlines()) == 1, err


def test_no_command_writes_over_its_input(tmp_path, capsys):
    data = tmp_path / "X.npy"
    np.save(data, np.array([[1.0, np.nan], [0.5, 2.0], [1.0, 1.0]]))
    before = data.read_bytes()
    assert main(["smc", "complete", str(data), str(data)]) == 2
    assert "OUTPUT" in capsys.readouterr().err and data.read_bytes() == before
    assert main(["smc", "complete", str(data), str(tmp_path / "S.npy"), "--truth", str(tmp_path / "S.npy")]) == 2
    assert "does not exist" in capsys.readouterr().err  # a truth that is the output to be: not there yet
    stage = tmp_path / "stage"
    stage.mkdir()
    assert main(["export", str(stage), str(stage)]) == 2
    assert "is one of the inputs" in capsys.readouterr().err and stage.is_dir()
    assert main(["compare", str(stage), "--out", str(stage)]) == 2
    assert "--out" in capsys.readouterr().err
    # a directory holding an input: replacing it would delete the input
    (stage / "adapter_config.json").write_text("{}")
    assert main(["export", str(stage), str(tmp_path), "--overwrite"]) == 2
    assert "holds the input" in capsys.readouterr().err and (stage / "adapter_config.json").is_file()
    main(["compare", str(stage), "--out", str(tmp_path)])  # compare only adds files to its --out: no refusal there
    assert "holds the input" not in capsys.readouterr().err
    # data check's report over a dataset its config reads
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"question": "q", "answer": "a"}\n')
    before = rows.read_bytes()
    assert main(["data", "check", "tasks=[mine]", f"local_tasks.mine.train={rows}", f"local_tasks.mine.eval={rows}",
                 "--out", str(rows)]) == 2
    assert "a dataset of the config" in capsys.readouterr().err and rows.read_bytes() == before


def test_types_by_hand():
    assert flags.COUNT("3") == 3 and flags.RATIO("0.5") == 0.5 and flags.COUNTS("2, 4") == [2, 4]
    assert flags.Setting("(0, inf)")("fm=3") == ("fm", 3.0)
    for kind, text in ((flags.COUNT, "0"), (flags.COUNT, "2.0"), (flags.RATIO, "1"), (flags.RATIO, "nan"),
                       (flags.COUNTS, "2,0"), (flags.Setting("(0, inf)"), "=3"), (flags.Setting("(0, inf)"), "fm=0"),
                       (flags.Number("[32, inf)", multiple_of=32), "48")):
        with pytest.raises(argparse.ArgumentTypeError):
            kind(text)
    assert flags.Number("[32, inf)", multiple_of=32)("64") == 64
    assert flags.Choice(("a", "b"))("b") == "b"


def test_an_output_where_nothing_can_be_written_is_refused(tmp_path, monkeypatch):
    # os.access, as a user without write permission would see it (the tests may run as root, who may write anywhere)
    monkeypatch.setattr(flags.os, "access", lambda path, mode: Path(path) != tmp_path)
    for kind in (flags.OUTPUT_FILE, flags.OUTPUT_DIR):
        with pytest.raises(argparse.ArgumentTypeError, match=f"{str(tmp_path)!r} is not writable"):
            kind(str(tmp_path / "new" / "out"))
    (tmp_path / "held.npy").write_text("x")
    monkeypatch.setattr(flags.os, "access", lambda path, mode: Path(path).name != "held.npy")
    with pytest.raises(argparse.ArgumentTypeError, match="held.npy' is not writable"):
        flags.OUTPUT_FILE(str(tmp_path / "held.npy"))


KEYS = [(command, key, kind) for command, declared in command_keys().items() for key, kind in declared.items()]


def wrong_values(kind, tmp_path) -> list[tuple[str, str]]:
    """(value, what the message says) for each value the type refuses."""
    (tmp_path / "file").write_text("x")
    if isinstance(kind, flags.Number):
        refused = []
        for value in WRONG:
            try:
                kind(value)
            except argparse.ArgumentTypeError:
                refused.append((value, "must be "))
        return refused
    return {flags.InputPath: [(str(tmp_path / "missing"), "does not exist")],
            flags.OutputDir: [(str(tmp_path / "file"), "is a file; name a directory")],
            flags.Choice: [("bogus", "choose one of ")], flags.Text: []}[type(kind)]


def test_every_key_value_command_declares_its_keys_types():
    from cpt.cli import OWN_HELP

    # with the parsers walked above, every command with arguments of its own is covered
    assert {command.split()[0] for command in PARSERS} | set(command_keys()) == set(OWN_HELP)
    for command, declared in command_keys().items():
        assert flags.unchecked_keys(declared) == [], command
    assert flags.unchecked_keys({"size": int, "ok": flags.COUNT, "name": str}) == ["size", "name"]  # planted


@pytest.mark.parametrize(("command", "key", "kind"), KEYS, ids=[f"{c} {k}" for c, k, _ in KEYS])
def test_every_key_of_a_key_value_command_refuses_what_its_type_excludes(command, key, kind, tmp_path, capsys):
    for value, message in wrong_values(kind, tmp_path):
        # the wrong key first: it is refused before anything else is read
        assert main([command, f"{key}={value}", "checkpoint=nowhere", "question=why?"]) == 2, (command, key, value)
        err = capsys.readouterr().err
        assert err.startswith(f"error: {key}={value}: ") and message in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert main([command, f"{key}="]) == 2 and f"{key}= needs a value" in capsys.readouterr().err


def test_a_place_the_machine_will_not_write_is_one_line(monkeypatch, capsys):
    import cpt.commands.inspect as inspect

    def refused(args):
        raise PermissionError(13, "Permission denied", "/runs/x/results.json")

    monkeypatch.setattr(inspect, "main", refused)
    assert main(["inspect"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write or read '/runs/x/results.json': Permission denied")
    assert len(err.strip().splitlines()) == 1


def test_a_file_where_a_run_is_wanted_text_named_npy_and_a_stray_bench_flag(tmp_path, capsys):
    results = tmp_path / "run" / "results.json"
    results.parent.mkdir()
    results.write_text("{}")
    assert main(["compare", str(results)]) == 2
    assert f"is a file; give the run's directory (the output_dir of a `python -m cpt fit` run, " \
           f"{str(results.parent)!r} here)" in capsys.readouterr().err
    text = tmp_path / "S.npy"
    text.write_text("1,2\n3,4\n")
    assert main(["smc", "complete", str(text), str(tmp_path / "out.npy")]) == 2
    assert "is not a .npy file (no numpy header)" in capsys.readouterr().err
    assert main(["bench", "memory", "--foo"]) == 2
    assert capsys.readouterr().err.startswith("error: bench memory takes no config overrides or other flags: --foo")


def test_eval_names_its_own_keys_and_inspect_its_own_usage(capsys):
    assert main(["eval", "checkpoint=nowhere/stage"]) == 2
    assert "checkpoint='nowhere/stage' does not exist; give a stage directory" in capsys.readouterr().err
    assert main(["eval", "chekpoint=x"]) == 2
    assert "unknown key 'chekpoint'; did you mean checkpoint=?" in capsys.readouterr().err
    assert main(["inspect", "--help"]) == 0
    usage = capsys.readouterr().out.splitlines()[0]
    assert usage == "usage: python -m cpt inspect [CONFIG.yaml] [key=value ...] [--log-level LEVEL]"
