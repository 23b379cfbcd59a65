"""The synthetic benchmark: deterministic from its seed, answers in each task's space, lazy splits."""

import pytest

from cpt.data.synthetic import ANSWER_SPACES, TASKS, SyntheticSplit, make_example


def test_synthetic_is_deterministic_and_answers_in_space():
    for name in TASKS:
        for index in range(20):
            a = make_example(name, "train", index, seed=5, image_size=64)
            b = make_example(name, "train", index, seed=5, image_size=64)
            assert a.answer == b.answer and a.question == b.question
            assert a.images[0].tobytes() == b.images[0].tobytes()
            assert a.answer in ANSWER_SPACES[name]
    answers = [make_example("count", "train", i, seed=s, image_size=64).answer for s in (1, 2) for i in range(30)]
    assert answers[:30] != answers[30:]  # another seed, another dataset
    train, evaluation = (make_example("count", split, 0, 1, 64) for split in ("train", "eval"))
    assert train.images[0].tobytes() != evaluation.images[0].tobytes()


def test_general_is_multiple_choice():
    example = make_example("general", "eval", 3, seed=0, image_size=64)
    assert example.choices and example.answer in "ABCD"[: len(example.choices)]


def test_synthetic_split_bounds():
    split = SyntheticSplit("colour", "eval", 3, 0, 64)
    assert len(split) == 3 and split[2].answer
    with pytest.raises(IndexError):
        split[3]
