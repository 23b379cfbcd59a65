"""Reward functions on well-formed, malformed and adversarial completions; failures score 0 and are counted."""

import logging

import pytest
import torch

from cpt.config import load_config
from cpt.data.examples import Example
from cpt.data.scoring import SCORERS, box_iou, multiple_choice, numeric, vqa_soft, yes_no
from cpt.errors import ConfigError
from cpt.plugins import load_object
from cpt.rl.rewards import Rewards, format_reward, task_reward

HUGE = "9" * 400


@pytest.mark.parametrize("completion, template, expected", [
    ("<think>\nthree red dots\n</think>\n\\boxed{3}", "cot", 1.0),
    ("<think>x</think>\\boxed{\\frac{1}{2}}", "cot", 1.0),  # nested braces close the box
    ("\\boxed{3}", "cot", 0.0),  # no reasoning
    ("<think></think>\\boxed{3}", "cot", 0.0),  # empty reasoning
    ("<think>a</think>", "cot", 0.0),  # no answer
    ("<think>a</think>\\boxed{3} and \\boxed{4}", "cot", 0.0),  # two answers
    ("<think>a</think><think>b</think>\\boxed{3}", "cot", 0.0),
    ("\\boxed{3}<think>a</think>", "cot", 0.0),  # answer first
    ("<think>a</think>\\boxed{3", "cot", 0.0),  # unclosed box
    ("", "cot", 0.0),
    ("\\boxed{3}", "direct", 1.0),
    ("The answer is \\boxed{left}.", "direct", 1.0),
    ("\\boxed{3}\\boxed{4}", "direct", 0.0),
    ("<think>a</think>\\boxed{3}", "direct", 0.0),
    ("3", "direct", 0.0),
    ("", "direct", 0.0),
])
def test_format_reward(completion, template, expected):
    assert format_reward(completion, template) == expected


def test_task_reward_uses_the_task_scorer():
    example = Example("How many?", "3")
    scored = task_reward("<think>I count 3</think>\\boxed{3}", example, scorer=SCORERS["exact"], template="cot")
    assert scored == {"accuracy": 1.0, "format": 1.0}
    wrong = task_reward("\\boxed{4}", example, scorer=SCORERS["exact"], template="cot")
    assert wrong == {"accuracy": 0.0, "format": 0.0}
    # Two boxes: the last one is the answer; the format is still wrong.
    assert task_reward("\\boxed{4} no, \\boxed{3}", example, scorer=SCORERS["exact"], template="direct") == \
        {"accuracy": 1.0, "format": 0.0}


def test_multiple_choice_letter_text_and_junk():
    example = Example("q", "B", choices=["red", "blue", "green"])
    assert multiple_choice("\\boxed{B}", example) == 1.0
    assert multiple_choice("\\boxed{blue}", example) == 1.0
    assert multiple_choice("\\boxed{A} \\boxed{B}", example) == 1.0  # the last box counts
    assert multiple_choice("\\boxed{Z}", example) == 0.0
    assert multiple_choice("", example) == 0.0
    assert multiple_choice(HUGE, example) == 0.0


def test_numeric_with_huge_and_malformed_numbers():
    assert numeric("\\boxed{42.00001}", Example("q", "42")) == 1.0
    assert numeric(f"\\boxed{{{HUGE}}}", Example("q", "42")) == 0.0  # overflows to inf: not equal, no crash
    assert numeric("\\boxed{1e308} \\boxed{1e309}", Example("q", "1e308")) == 0.0
    assert numeric("\\boxed{4/0}", Example("q", "4")) == 0.0
    assert numeric("\\boxed{}", Example("q", "0")) == 0.0
    assert numeric("\\boxed{forty}", Example("q", "forty")) == 1.0  # not a number: exact match


def test_yes_no():
    assert yes_no("\\boxed{Yes.}", Example("q", "yes")) == 1.0
    assert yes_no("\\boxed{no, it is not}", Example("q", "No")) == 1.0
    assert yes_no("\\boxed{true}", Example("q", "yes")) == 1.0
    assert yes_no("\\boxed{yes}", Example("q", "no")) == 0.0
    assert yes_no("\\boxed{maybe yes}", Example("q", "yes")) == 0.0  # must lead with the verdict
    assert yes_no("", Example("q", "yes")) == 0.0


def test_soft_vqa_accuracy_counts_human_answers():
    # Ten annotators: "2" four times ("two" normalises to "2"), "3" twice, "dog" once, "yellow" three times.
    answers = ["2", "two", "2", "Two.", "3", "3", "dog", "yellow", "yellow", "yellow"]
    example = Example("q", answers[0], aliases=answers[1:])
    assert vqa_soft("\\boxed{2}", example) == 1.0  # 4 matches, capped at 1
    assert vqa_soft("\\boxed{3}", example) == pytest.approx(2 / 3)
    assert vqa_soft("\\boxed{a dog}", example) == pytest.approx(1 / 3)
    assert vqa_soft("\\boxed{Yellow!}", example) == 1.0
    assert vqa_soft("\\boxed{cat}", example) == 0.0
    assert vqa_soft("", example) == 0.0
    unanswerable = Example("q", "unanswerable", aliases=["unanswerable", "unanswerable", "red"])
    assert vqa_soft("\\boxed{unanswerable}", unanswerable) == 1.0


def test_box_iou():
    gold = Example("q", "[0, 0, 10, 10]")
    assert box_iou("\\boxed{[0, 0, 10, 10]}", gold) == 1.0
    assert box_iou("\\boxed{[5, 0, 15, 10]}", gold) == pytest.approx(50 / 150)
    assert box_iou("\\boxed{(20, 20), (30, 30)}", gold) == 0.0  # disjoint
    assert box_iou("\\boxed{[10, 10, 0, 0]}", gold) == 0.0  # corners swapped: not a box
    assert box_iou("\\boxed{[0, 0, 10]}", gold) == 0.0
    assert box_iou(f"\\boxed{{[0, 0, {HUGE}, 10]}}", gold) == 0.0  # inf is not a box
    assert box_iou("", gold) == 0.0


def raises(completion, example, **_):
    if "boom" in completion:
        raise RuntimeError("boom")
    return {"accuracy": float("nan") if "nan" in completion else 1.0, "format": 1.0, "length": len(completion)}


def test_failing_reward_function_scores_zero_and_is_counted(caplog):
    rewards = Rewards(raises, {"accuracy": 0.9, "format": 0.1, "length": 0.0})
    with caplog.at_level(logging.WARNING):
        out = rewards(["ok", "boom", "nan", "fine"], [Example("q", "a")] * 4, SCORERS["exact"], "direct")
    assert out.failed.tolist() == [False, True, True, False] and rewards.errors_total == 2
    torch.testing.assert_close(out.total, torch.tensor([1.0, 0.0, 0.0, 1.0]))
    # A component of weight 0 is kept for logging, not rewarded.
    torch.testing.assert_close(out.components["length"], torch.tensor([2.0, 0.0, 0.0, 4.0]))
    assert "RuntimeError: boom" in caplog.text and "non-finite component(s) accuracy" in caplog.text
    # Later batches may fail whole: scored 0, the run goes on.
    assert rewards(["boom"], [Example("q", "a")], SCORERS["exact"], "direct").failed.tolist() == [True]


def test_a_function_failing_on_the_whole_first_batch_is_a_bug():
    rewards = Rewards(lambda c, e, **_: 1.0, {"accuracy": 1.0}, name="returns_a_float")  # not a mapping
    with pytest.raises(ConfigError, match="returns_a_float failed on every completion of the first batch"):
        rewards(["x", "y"], [Example("q", "a")] * 2, SCORERS["exact"], "direct")


def test_configured_weights_replace_the_study_default():
    assert Rewards.from_config(load_config(None, []).rft.reward).weights == {"accuracy": 0.9, "format": 0.1}
    cfg = load_config(None, ["rft.reward.weights={acc: 1.0, fmt: 0}"])
    assert Rewards.from_config(cfg.rft.reward).weights == {"acc": 1.0, "fmt": 0.0}
    with pytest.raises(ConfigError, match="no component a non-zero weight"):
        load_config(None, ["method=rft", "rft.reward.weights={acc: 0}"])


def test_weighted_component_the_function_never_returns():
    rewards = Rewards(lambda c, e, **_: {"acc": 1.0}, {"accuracy": 1.0}, name="my_reward")
    with pytest.raises(ConfigError, match="my_reward returned no accuracy component; it returns acc"):
        rewards(["x"], [Example("q", "a")], SCORERS["exact"], "direct")


def test_reward_functions_load_by_import_path_or_file(tmp_path):
    assert load_object("cpt.rl.rewards:task_reward", "reward function") is task_reward
    (tmp_path / "mine.py").write_text("def score(completion, example, **_):\n    return {'accuracy': 1.0}\n")
    assert load_object(f"{tmp_path / 'mine.py'}:score", "reward function")("x", None) == {"accuracy": 1.0}
    with pytest.raises(ConfigError, match="'cpt.rewards:task_reward': .*; it is now cpt.rl.rewards:task_reward"):
        load_object("cpt.rewards:task_reward", "reward function")  # a config from before the subpackages
    with pytest.raises(ConfigError, match="cannot import reward function 'cpt.rl.rewards:nope'"):
        load_object("cpt.rl.rewards:nope", "reward function")
    with pytest.raises(ConfigError, match="must look like package.module:name"):
        load_object("cpt.rl.rewards", "reward function")
    with pytest.raises(ConfigError, match="does not exist"):
        load_object(f"{tmp_path / 'absent.py'}:score", "reward function")
