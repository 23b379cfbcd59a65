import pytest

from cpt.data.examples import Example
from cpt.data.scoring import exact, extract_answer, multiple_choice, normalize, numeric
from cpt.eval.evaluate import shard_indices


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("\\boxed{red}", "red"),
        ("I think \\boxed{3} and then \\boxed{4}", "4"),  # the last box is the answer
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
        ("\\boxed{ left }", "left"),
        ("\\boxed{unclosed", "unclosed"),
        ("no box here\nthe answer is blue\n", "the answer is blue"),
        ("", ""),
        ("\\boxed{}", ""),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


def test_normalize():
    assert normalize(" The Red. ") == "red"
    assert normalize("\\text{Blue}") == "blue"
    assert normalize("a  circle!") == "circle"


def test_exact_with_aliases():
    example = Example("q", "circle", aliases=["round"])
    assert exact("\\boxed{Circle}", example)
    assert exact("\\boxed{round}", example)
    assert not exact("\\boxed{square}", example)
    assert not exact("", example)


def test_multiple_choice_letter_or_text():
    example = Example("q", "B", choices=["red", "blue", "green"])
    assert multiple_choice("\\boxed{B}", example)
    assert multiple_choice("\\boxed{(B) blue}", example)
    assert multiple_choice("\\boxed{b.}", example)
    assert multiple_choice("\\boxed{blue}", example)
    assert not multiple_choice("\\boxed{A}", example)
    assert not multiple_choice("\\boxed{red}", example)
    assert not multiple_choice("\\boxed{Bl}", example)


def test_numeric_tolerance_and_bad_numbers():
    example = Example("q", "0.5")
    assert numeric("\\boxed{1/2}", example)
    assert numeric("\\boxed{0.50001}", example)
    assert not numeric("\\boxed{0.6}", example)
    assert not numeric("\\boxed{1e999}", example)  # overflows to inf: not a number, not equal
    assert numeric("\\boxed{1,000}", Example("q", "1000"))


def test_evaluation_shards_pad_every_rank_to_the_same_count():
    # 5 examples, 2 ranks: rank 0 scores 0, 2, 4 and rank 1 scores 1, 3 and a repeat of weight 0, so in batches
    # of 2 both make two batches, the second of one.
    assert shard_indices(5, 0, 2) == ([0, 2, 4], [1.0, 1.0, 1.0])
    assert shard_indices(5, 1, 2) == ([1, 3, 1], [1.0, 1.0, 0.0])
    assert shard_indices(5, 0, 1) == ([0, 1, 2, 3, 4], [1.0] * 5)  # one process: no padding
    assert shard_indices(1, 1, 2) == ([0], [0.0])  # a rank with nothing to score still steps along
    assert shard_indices(0, 0, 1) == ([], [])
