"""Weight interpolation with the previous stage: worked by hand, and in a run the first stage's weights end
halfway between the base and what that stage alone trains."""

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from cpt.callbacks.interpolation import StageInterpolation
from cpt.config import load_config
from cpt.errors import ConfigError
from cpt.model.fisher import trainable_parameters
from tests.callbacks.test_regularizer import two_task_run


def test_the_weights_move_back_towards_where_the_stage_started():
    model = nn.Linear(2, 1)
    model.bias.requires_grad_(False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.copy_(torch.tensor([5.0]))
    module = SimpleNamespace(backbone=model)
    merging = StageInterpolation(weight=0.25)
    merging.on_train_epoch_start(None, module)
    with torch.no_grad():  # what the stage trained
        model.weight.copy_(torch.tensor([[3.0, 6.0]]))
        model.bias.copy_(torch.tensor([7.0]))
    merging.on_train_epoch_end(None, module)
    # 0.75 * [1, 2] + 0.25 * [3, 6]; the frozen bias is not merged
    assert model.weight.tolist() == [[1.5, 3.0]] and model.bias.tolist() == [7.0]
    assert merging.before == {}


@pytest.mark.parametrize("weight", [-0.1, 1.5, True, "half"])
def test_bad_weights(weight):
    with pytest.raises(ValueError, match="interpolation weight must be a number in"):
        StageInterpolation(weight)


def test_config():
    with pytest.raises(ConfigError, match="'interpolation.weight': must be a number in \\[0, 1\\]"):
        load_config(None, ["interpolation.weight=2"])


class FirstStageStart(Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            self.weights = {n: p.detach().clone() for n, p in trainable_parameters(pl_module.backbone).items()}


@pytest.mark.slow
def test_a_merged_first_stage_ends_halfway_from_where_it_started(tmp_path, quick_cfg, foundation_dir):
    trained = two_task_run(tmp_path / "free", quick_cfg).weights[0]
    start = FirstStageStart()
    merged = two_task_run(tmp_path / "merged", quick_cfg, StageInterpolation(0.5), start).weights[0]
    assert any(not torch.equal(start.weights[n], trained[n]) for n in trained)  # the stage did move them
    for name, value in trained.items():
        torch.testing.assert_close(merged[name], start.weights[name].lerp(value, 0.5), rtol=1e-6, atol=1e-7,
                                   msg=name)
