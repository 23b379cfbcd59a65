"""Every numeric config key is checked from its declaration: the test below is generated from the schema, so a key
added to it is tried with NaN, infinities, a negative, zero and a wrong type by being declared."""

import math
from dataclasses import dataclass

import pytest

from cpt.bounds import Interval
from cpt.cli import main
from cpt.config import doc, load_config, number, numeric_keys, undeclared_numbers
from cpt.errors import ConfigError

# Sections under a mapping need an entry to hold the key; these give one (the run stops at the config).
CONTEXT = {"local_tasks": ["local_tasks.t.path=/nowhere"],
           "eval.benchmarks": ["eval.benchmarks.b.format=mmmu", "eval.benchmarks.b.path=/nowhere"]}
NAMES = {"local_tasks": "t", "eval.benchmarks": "b"}


def concrete(key: str) -> tuple[str, list[str]]:
    """The dotted key with its `*` named, and the overrides that define that entry."""
    head, star, tail = key.partition(".*.")
    return (f"{head}.{NAMES[head]}.{tail}", CONTEXT[head]) if star else (key, [])


def override(spec, key: str, text: str) -> str:
    return {"value": f"{key}={text}", "list": f"{key}=[{text}]", "mapping": f"{key}.accuracy={text}"}[spec.shape]


def accepted(spec, text: str) -> bool:
    """Whether the declaration allows the value: parsed as the field's type, finite, in its interval."""
    try:
        value = float(text)
    except ValueError:
        return False
    if spec.interval.integer and not (math.isfinite(value) and value.is_integer() and "." not in text):
        return False
    return spec.interval.contains(value)


KEYS = numeric_keys()
TRIED = ("nan", "inf", "-inf", "-1", "0", "abc", "1.5")
# Each try runs the real command (about 0.2 s): these three, one of each kind, run in the fast suite, the rest in
# the full one.
FAST = ("optim.lr", "local_tasks.*.train_size", "rft.kl.per_task")


def test_every_numeric_key_declares_its_range():
    assert undeclared_numbers() == []
    assert len(KEYS) >= 60 and {"optim.lr", "local_tasks.*.train_size", "rft.kl.per_task",
                                "rft.reward.weights"} <= {spec.key for spec in KEYS}


def test_fit_help_says_what_each_numeric_key_must_be(capsys):
    assert main(["fit", "--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    shown = {spec.key: spec for spec in KEYS}
    seen = 0
    for index, line in enumerate(lines):
        key = line.strip().split(" [")[0]
        if line.startswith("  ") and not line.startswith("      ") and key in shown:
            spec = shown[key]
            each = "" if spec.shape == "value" else "each "
            assert lines[index + 2] == f"      Must be: {each}{spec.interval.words()}" + \
                (" (or null)." if spec.optional else "."), key
            seen += 1
    # every key but those under a mapping of sections (local_tasks.*, eval.benchmarks.*), listed by their docs
    assert seen == len([spec for spec in KEYS if ".*." not in spec.key])
    assert "  optim.lr [0.0005]" in lines and "      Must be: a number > 0." in lines


@pytest.mark.parametrize("spec", [pytest.param(spec, id=spec.key, marks=() if spec.key in FAST else pytest.mark.slow)
                                  for spec in KEYS])
def test_every_numeric_key_refuses_what_its_range_excludes(spec, tmp_path, capsys):
    key, context = concrete(spec.key)
    for text in TRIED:
        setting = override(spec, key, text)
        if accepted(spec, text):  # allowed by the declaration: no range error for this key
            try:
                load_config(None, [setting, *context])
            except ConfigError as error:
                assert f"'{key}" not in str(error) or "must be" not in str(error), (setting, error)
            continue
        out = tmp_path / "run"
        assert main(["fit", setting, *context, f"output_dir={out}"]) == 2, setting
        err = capsys.readouterr().err
        assert f"bad value for '{key}" in err and "Traceback" not in err, (setting, err)
        assert len(err.strip().splitlines()) == 1, err
        assert not out.exists(), setting


def test_a_planted_key_without_a_range_is_reported_and_a_declared_one_is_checked():
    @dataclass
    class Inner:
        size: int = doc("Undeclared: only its help.", 3)
        share: float = number("[0, 1]", "Declared.", 0.5)

    @dataclass
    class Planted:
        inner: Inner = doc("A section.", factory=Inner)
        named: dict[str, Inner] = doc("A mapping of sections.", factory=dict)
        betas: list[float] = number("[0, inf)", "Numbers in a list.", None)

    assert undeclared_numbers(Planted) == ["inner.size", "named.*.size"]
    spec = next(s for s in numeric_keys(Planted) if s.key == "betas")
    assert spec.shape == "list" and spec.interval == Interval(0, math.inf, True, False)
    # and the real schema's check finds an out-of-range value in a mapping of sections, by name
    with pytest.raises(ConfigError, match=r"'local_tasks.t.eval_size': must be a whole number > 0, got -2"):
        load_config(None, ["local_tasks.t.path=/d", "local_tasks.t.eval_size=-2"])


@pytest.mark.parametrize(("notation", "inside", "outside", "words"), [
    ("[0, 1)", [0, 0.5], [1, -0.1, math.nan, math.inf], "a number in [0, 1)"),
    ("(0, inf)", [1e-9, 1e12], [0, -1, math.inf, math.nan], "a number > 0"),
    ("[0, inf)", [0, 3], [-1e-9, math.inf], "a number >= 0"),
    ("(-inf, inf)", [-5, 0, 5], [math.nan, -math.inf], "a finite number"),
])
def test_intervals(notation, inside, outside, words):
    interval = Interval.parse(notation)
    assert all(interval.contains(v) for v in inside) and not any(interval.contains(v) for v in outside)
    assert interval.words() == words and interval.problem(inside[0]) is None
    assert interval.problem(outside[0]) == f"must be {words}, got {outside[0]!r}"
    with pytest.raises(ValueError, match="not an interval"):
        Interval.parse("[inf, 0)")
    assert not Interval.parse("(0, inf)").contains(True)  # a bool is not a number here

