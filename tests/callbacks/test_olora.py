"""O-LoRA: peft adapters per stage summed in the forward with only the stage's own trainable, the orthogonality
penalty and its gradient worked by hand, and a run whose stage directories hold the adapters so far, evaluated
back to the run's own rows (as they are and exported), with the first stage's adapter untouched by the later
stages."""

import json
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from cpt.callbacks.olora import OrthogonalLoRA, orthogonality
from cpt.commands.evaluate import evaluate_checkpoint
from cpt.commands.export import export
from cpt.commands.fit import run
from cpt.config import load_config
from cpt.errors import ConfigError
from cpt.methods.loss_terms import TrainingStep
from cpt.model.stage_adapters import activate, add_stage_adapters, stage_adapter
from tests.helpers import REPO, OneLinear


def three_stage_model():
    """A 2 -> 2 linear layer, W = I, with rank-1 adapters for three stages (scale alpha / r = 1), set by hand:
    A_1 = [1, 0], A_2 = [1, 1], A_3 = [2, -1]; B_k = [k, 0]^T."""
    torch.manual_seed(0)
    model = OneLinear()
    with torch.no_grad():
        model.lin.weight.copy_(torch.eye(2))
    model = get_peft_model(model, LoraConfig(r=1, lora_alpha=1, target_modules=["lin"]))
    add_stage_adapters(model, 3)
    layer = model.base_model.model.lin
    with torch.no_grad():
        for k, a in enumerate(([1.0, 0.0], [1.0, 1.0], [2.0, -1.0])):
            layer.lora_A[stage_adapter(k)].weight.copy_(torch.tensor([a]))
            layer.lora_B[stage_adapter(k)].weight.copy_(torch.tensor([[k + 1.0], [0.0]]))
    return model, layer


def test_each_stage_sums_the_adapters_so_far_and_trains_only_its_own():
    model, layer = three_stage_model()
    x = torch.tensor([[1.0, 2.0]])  # A_1 x = 1, A_2 x = 3, A_3 x = 0
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == 6  # all six adapter matrices reach the optimizer before the first stage starts
    activate(model, 0)
    assert model(x).tolist() == [[1 + 1 * 1, 2]]
    activate(model, 1)
    assert model(x).tolist() == [[1 + 1 * 1 + 2 * 3, 2]]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"base_model.model.lin.lora_{m}.stage2.weight" for m in "AB"}
    activate(model, 2)
    assert model(x).tolist() == [[1 + 1 + 6 + 3 * 0, 2]]


def test_the_orthogonality_penalty_and_its_gradient_by_hand():
    """Stage 3: A_old = [[1, 0], [1, 1]], A_new = [2, -1]: A_old A_new^T = [2, 1], so the overlap is 3; the L2 term
    is |A_new| + |B_new| = sqrt(5) + 3. Gradient of sum |A_old a| with respect to a: sum_i sign(.)_i A_old[i] =
    [2, 1], times the weight and the share."""
    assert float(orthogonality(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[2.0, -1.0]]))) == 3.0
    model, layer = three_stage_model()
    activate(model, 2)
    olora = OrthogonalLoRA(orthogonal=0.5, l2=0.1)
    step = TrainingStep(SimpleNamespace(task_index=2, backbone=model), None, None, None, None, share=0.5)
    loss, metrics = olora.loss(step)
    assert float(loss.detach()) == pytest.approx(0.5 * (0.5 * 3 + 0.1 * (5 ** 0.5 + 3)))
    assert float(metrics["olora/overlap"]) == 3.0
    loss.backward()
    new = layer.lora_A["stage3"].weight
    a_grad = 0.5 * (0.5 * torch.tensor([[2.0, 1.0]]) + 0.1 * new.detach() / 5 ** 0.5)
    torch.testing.assert_close(new.grad, a_grad)
    assert layer.lora_A["default"].weight.grad is None  # the earlier adapters are frozen
    assert olora.loss(TrainingStep(SimpleNamespace(task_index=0), None, None, None, None)) == (None, {})


def test_bad_settings():
    with pytest.raises(ValueError, match="olora orthogonal must be a finite number >= 0"):
        OrthogonalLoRA(orthogonal=-1)
    with pytest.raises(ConfigError, match="needs model.finetune=lora or qlora, not full"):
        load_config(None, ["olora.enabled=true"])
    # the refusal suggests what runs: with two devices, strategy=auto alone would be DDP
    lora = ["olora.enabled=true", "model.finetune=lora"]
    for setting in ("trainer.strategy=ddp", "trainer.devices=2", "trainer.devices=auto", "trainer.devices=[0,1]"):
        with pytest.raises(ConfigError, match="use trainer.strategy=auto trainer.devices=1 trainer.num_nodes=1"):
            load_config(None, [*lora, setting])
    suggested = load_config(None, [*lora, "trainer.devices=2", "trainer.strategy=auto", "trainer.devices=1"])
    assert suggested.trainer.devices == 1 and load_config(None, [*lora, "trainer.devices=[0]"]).olora.enabled


@pytest.mark.slow
def test_a_run_keeps_every_stages_adapter(tmp_path, quick_cfg, foundation_dir):
    cfg = load_config(REPO / "configs" / "experiments" / "sft_olora.yaml",
                      [*quick_cfg, f"output_dir={tmp_path}", "tasks=[colour,count,shape]", "steps_per_task=2",
                       "eval.general=false", "data.eval_size=4", "data.batch_size=2"])
    results = run(cfg)
    stages = tmp_path / "checkpoints"
    assert not (stages / "1-colour" / "stage2").exists()
    assert (stages / "2-count" / "stage2" / "adapter_config.json").is_file()
    assert sorted(p.name for p in (stages / "3-shape").iterdir() if p.is_dir()) == ["stage2", "stage3"]
    # The first stage's adapter is the same after the later stages: frozen.
    first = load_file(stages / "1-colour" / "adapter_model.safetensors")
    last = load_file(stages / "3-shape" / "adapter_model.safetensors")
    assert first.keys() == last.keys() and all(torch.equal(first[k], last[k]) for k in first)
    second, later = (load_file(stages / d / "stage2" / "adapter_model.safetensors") for d in ("2-count", "3-shape"))
    assert all(torch.equal(second[k], later[k]) for k in second)

    # Evaluated from its directory, the last stage (the base and three adapters) gives the run's own row.
    row = evaluate_checkpoint(load_config(tmp_path / "config.yaml", [f"model.name_or_path={stages / '3-shape'}"]),
                              progress=False)
    assert row["accuracy_matrix"][0] == results["accuracy_matrix"][-1]
    # Exported, the three adapters are merged into one standalone model with the same answers.
    export(stages / "3-shape", tmp_path / "export")
    exported = evaluate_checkpoint(load_config(tmp_path / "config.yaml", [f"model.name_or_path={tmp_path / 'export'}"]),
                                   progress=False)
    assert exported["accuracy_matrix"][0] == results["accuracy_matrix"][-1]
    assert json.loads((tmp_path / "results.json").read_text())["complete"]
