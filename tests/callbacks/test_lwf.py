"""Learning without Forgetting: its loss and gradient worked by hand, nothing in the first stage, and in runs
(LoRA, full fine-tuning, RFT) a teacher that is the model as the stage began: zero distillation loss at a stage's
first step, growing after it."""

import math
from types import SimpleNamespace

import pytest
import torch

from cpt.callbacks.lwf import LearningWithoutForgetting
from cpt.commands.fit import run
from cpt.config import load_config
from cpt.errors import ConfigError
from cpt.methods.loss_terms import TrainingStep
from tests.helpers import metric_rows


def test_the_distillation_loss_and_gradient_by_hand():
    """Two targets, one counted; a vocabulary of two. At T = 2 the teacher's logits [0, 2 ln 3] become p = [1/4,
    3/4] and the student's [0, 0] q = [1/2, 1/2]: KL = 1/4 ln(1/2) + 3/4 ln(3/2); the gradient of KL with respect
    to the student's logits is (q - p) / T."""
    lwf = LearningWithoutForgetting(weight=0.5, temperature=2.0)
    lwf.teacher_logits = torch.tensor([[[0.0, 2 * math.log(3)], [5.0, 0.0]]])
    student = torch.zeros(1, 2, 2, requires_grad=True)
    step = TrainingStep(None, None, torch.zeros(1, 2), torch.tensor([[True, False]]), student, share=0.5)
    loss, metrics = lwf.loss(step)
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert float(loss.detach()) == pytest.approx(0.5 * 0.5 * kl) and metrics == {}
    loss.backward()
    expected = 0.5 * 0.5 * torch.tensor([[[0.5 - 0.25, 0.5 - 0.75], [0.0, 0.0]]]) / 2.0
    torch.testing.assert_close(student.grad, expected)
    assert lwf.teacher_logits is None  # used once


def test_nothing_to_keep_in_the_first_stage():
    lwf = LearningWithoutForgetting()
    step = TrainingStep(SimpleNamespace(task_index=0), None, None, None, None)
    lwf.before(step)
    assert lwf.loss(step) == (None, {})


@pytest.mark.parametrize("arguments", [{"weight": 0}, {"temperature": -1}, {"weight": float("inf")}])
def test_bad_arguments(arguments):
    with pytest.raises(ValueError, match="must be a finite number > 0"):
        LearningWithoutForgetting(**arguments)
    with pytest.raises(ConfigError, match="bad value for 'lwf.temperature': must be a number > 0, got 0.0"):
        load_config(None, ["lwf.temperature=0"])


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [["model.finetune=lora"], ["model.finetune=full"],
                                       ["method=rft", "rft.group_size=2", "rft.max_new_tokens=4",
                                        "rft.reward.function=tests.helpers.plugins:odd_length_reward",
                                        "rft.reward.weights={accuracy: 1.0}"]], ids=["lora", "full", "rft"])
def test_the_teacher_is_the_model_as_the_stage_began(overrides, tmp_path, quick_cfg, foundation_dir):
    cfg = load_config(None, [*quick_cfg, f"output_dir={tmp_path}", "tasks=[colour,count]", "steps_per_task=3",
                             "data.batch_size=2", "eval.general=false", "data.eval_size=4", "save_checkpoints=false",
                             "lwf.weight=1.0", *overrides])
    run(cfg)
    rows = metric_rows(tmp_path, "train/task")
    assert [r["train/task"] for r in rows] == ["1.0"] * 3 + ["2.0"] * 3
    assert all(not r.get("loss/lwf") for r in rows[:3])  # the first stage distils from nothing
    distilled = [float(r["loss/lwf"]) for r in rows[3:]]
    assert distilled[0] == 0 and all(value > 0 for value in distilled[1:])  # the student moves off its teacher
