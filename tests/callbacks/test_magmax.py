"""MagMaX as its authors define it: the merge of task vectors by their largest magnitude worked by hand (a signed
maximum, or task vectors taken from the previous stage instead of the base, would give other numbers), the next
stage training from the unmerged weights, and a run whose stages end at base + 0.5 x the merge while training goes
on exactly as plain sequential fine-tuning."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cpt.callbacks.magmax import MagMaX
from cpt.commands.fit import run
from cpt.config import load_config
from cpt.errors import ConfigError
from tests.callbacks.test_regularizer import StageSnapshots
from tests.helpers import REPO


def set_weight(model: nn.Linear, values: list[float]) -> None:
    with torch.no_grad():
        model.weight.copy_(torch.tensor([values]))


def test_the_merge_by_hand():
    model = nn.Linear(2, 1)
    model.bias.requires_grad_(False)  # frozen: not merged
    set_weight(model, [0.0, 1.0])
    module = SimpleNamespace(backbone=model)
    magmax = MagMaX(scale=0.5)
    magmax.on_train_start(None, module)
    magmax.on_train_epoch_start(None, module)
    set_weight(model, [1.0, -2.0])  # stage 1 trained: tau_1 = [1, -3]
    magmax.on_train_epoch_end(None, module)
    # Evaluated: base + 0.5 * [1, -3] = [0.5, -0.5].
    assert model.weight.tolist() == [[0.5, -0.5]]
    magmax.on_train_epoch_start(None, module)
    assert model.weight.tolist() == [[1.0, -2.0]]  # stage 2 trains from theta_1, not from the merge
    set_weight(model, [-1.0, -1.0])  # tau_2 = [-1, -2]: a tie on the first entry (the later wins), -3 beats -2
    magmax.on_train_epoch_end(None, module)
    assert magmax.merged["weight"].tolist() == [[-1.0, -3.0]]
    assert model.weight.tolist() == [[-0.5, -0.5]]  # [0, 1] + 0.5 * [-1, -3]
    # A signed maximum would keep [1, -2]; vectors from the previous stage ([-2, 1]) would merge to [-2, -3].
    resumed = MagMaX(scale=0.5)
    resumed.load_state_dict(magmax.state_dict())
    resumed.on_train_epoch_start(None, module)
    assert model.weight.tolist() == [[-1.0, -1.0]]


def test_bad_settings():
    with pytest.raises(ValueError, match="magmax scale must be a finite number > 0"):
        MagMaX(scale=0)
    with pytest.raises(ConfigError, match="which a LoRA adapter cannot hold"):
        load_config(None, ["magmax.enabled=true", "model.finetune=lora"])
    with pytest.raises(ConfigError, match="use one of them"):
        load_config(None, ["magmax.enabled=true", "interpolation.weight=0.5"])


@pytest.mark.slow
def test_stages_end_merged_and_training_goes_on_from_the_unmerged_weights(tmp_path, quick_cfg, foundation_dir):
    def two_tasks(out, *overrides):
        cfg = load_config(REPO / "configs" / "default.yaml",
                          [*quick_cfg, f"output_dir={out}", "tasks=[colour,count]", "steps_per_task=3",
                           "model.finetune=full", "save_checkpoints=false", "eval.general=false",
                           "data.eval_size=4", "eval.max_new_tokens=2", *overrides])
        snapshots = StageSnapshots()
        run(cfg, extra_callbacks=[snapshots])
        return snapshots.weights

    class Base(StageSnapshots):
        def on_train_start(self, trainer, pl_module):
            self.on_train_epoch_end(trainer, pl_module)

    plain = two_tasks(tmp_path / "plain")
    merged = two_tasks(tmp_path / "magmax", "magmax.enabled=true")
    base = Base()
    cfg = load_config(REPO / "configs" / "default.yaml",
                      [*quick_cfg, f"output_dir={tmp_path / 'base'}", "tasks=[colour]", "steps_per_task=1",
                       "model.finetune=full", "save_checkpoints=false", "eval.general=false", "data.eval_size=4"])
    run(cfg, extra_callbacks=[base])
    theta_0 = base.weights[0]
    for name in theta_0:
        tau_1, tau_2 = plain[0][name] - theta_0[name], plain[1][name] - theta_0[name]
        torch.testing.assert_close(merged[0][name], theta_0[name] + 0.5 * tau_1, rtol=1e-6, atol=1e-7, msg=name)
        # Had stage 2 trained from the merged model, its weights would not be plain sequential training's.
        largest = torch.where(tau_2.abs() >= tau_1.abs(), tau_2, tau_1)
        torch.testing.assert_close(merged[1][name], theta_0[name] + 0.5 * largest, rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(plain[1][n], merged[1][n]) for n in theta_0)
