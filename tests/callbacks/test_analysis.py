"""ForgettingAnalysis: update norms by module group, the share of parameters updated, the Fisher-weighted update and
the per-stage forgetting and example changes against hand-computed values; the KL to the base (0 when unchanged,
restored from a checkpoint), the stage's reward variance, and an SFT run that writes analysis.json."""

import json
import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from PIL import Image

from cpt.callbacks.analysis import ForgettingAnalysis, example_changes
from cpt.commands.fit import run
from cpt.config import load_config
from cpt.data.batches import Batch
from cpt.data.tasks import build_tasks
from cpt.methods.rft import RFTModule
from cpt.methods.sft import SFTModule
from cpt.model.families import FAMILIES, QWEN3_5
from cpt.model.fisher import diagonal_fisher
from tests.helpers import REPO, metric_rows


@pytest.fixture
def trainer():
    """A trainer not fitting anything: the hooks are called by hand."""
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False)


@pytest.fixture
def make_module(quick_cfg, foundation_dir, tmp_path):
    """A CPT module over [colour, count] with every parameter trainable, its backbone built."""
    def make(module_class=SFTModule, config="default.yaml", *overrides):
        cfg = load_config(REPO / "configs" / config, [*quick_cfg, f"output_dir={tmp_path}", "tasks=[colour,count]",
                                                      "model.finetune=full", *overrides])
        module = module_class(cfg, foundation_dir, build_tasks(cfg))
        module.configure_model()
        return module

    return make


def group_norm(named: dict[str, torch.Tensor], keep) -> float:
    return math.sqrt(sum(float(t.double().square().sum()) for name, t in named.items() if keep(name)))


@pytest.mark.parametrize("family", FAMILIES, ids=lambda family: family.name)
def test_parameter_names_map_to_module_groups(family):
    module_group = family.module_group
    prefix = "base_model.model.model."
    attention = prefix + "language_model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert module_group(attention) == "attention"
    assert module_group(prefix + "language_model.layers.1.mlp.down_proj.lora_B.default.weight") == "mlp"
    assert module_group(prefix + "visual.blocks.0.mlp.up_proj.lora_B.default.weight") == "vision"
    assert module_group("model.visual.blocks.0.attn.qkv.weight") == "vision"
    assert module_group("model.language_model.embed_tokens.weight") == "embeddings_head"
    assert module_group("lm_head.weight") == "embeddings_head"
    assert module_group("model.language_model.layers.0.input_layernorm.weight") == "other"
    # Qwen3.5's linear-attention layers mix tokens too; elsewhere the name means nothing.
    linear = "model.language_model.layers.0.linear_attn.in_proj_qkv.weight"
    assert module_group(linear) == ("attention" if family is QWEN3_5 else "other")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="probe_size is 0"):
        ForgettingAnalysis("run", probe_size=0)


def test_update_norm_by_group(tmp_path, make_module, trainer):
    module = make_module()
    analysis = ForgettingAnalysis(tmp_path, probe_size=2, max_new_tokens=4)
    analysis.on_train_start(trainer, module)
    analysis.on_train_epoch_start(trainer, module)
    start = {name: p.detach().clone() for name, p in module.backbone.named_parameters()}
    name = next(n for n in start if ".mlp.up_proj." in n and "visual" not in n)
    delta = 0.01 * torch.randn(start[name].shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        module.backbone.get_parameter(name).add_(delta)
    analysis.on_train_epoch_end(trainer, module)

    stage = json.loads((tmp_path / "analysis.json").read_text())["stages"][0]
    assert stage["stage"] == 1 and stage["name"] == "colour"
    norms = stage["update_norm"]
    assert set(norms) == {"vision", "attention", "mlp", "embeddings_head", "other"}
    language_mlp = group_norm(start, lambda n: ".mlp." in n and "visual" not in n)
    assert norms["mlp"]["abs"] == pytest.approx(float(delta.norm()), rel=1e-4)
    assert norms["mlp"]["rel"] == pytest.approx(float(delta.norm()) / language_mlp, rel=1e-4)
    assert all(norms[g] == {"abs": 0.0, "rel": 0.0} for g in ("vision", "attention", "embeddings_head", "other"))
    assert stage["reward_var"] is None  # SFT: no rewards
    assert set(stage["kl_to_base"]) == {"colour", "count"}
    assert Image.open(tmp_path / "analysis.png").size[0] > 600


def test_kl_to_base_is_zero_until_the_model_changes_and_survives_a_resume(tmp_path, make_module, trainer):
    module = make_module()
    analysis = ForgettingAnalysis(tmp_path, probe_size=3, max_new_tokens=4, seed=3)
    training_stream = torch.random.get_rng_state()
    analysis.on_train_start(trainer, module)
    assert torch.equal(torch.random.get_rng_state(), training_stream)  # probes sample from their own seed
    assert module.backbone.training  # eval mode for the probes only
    probe = analysis.probes["colour"]
    ids = probe.rollouts.completion_ids
    assert ids.shape[0] == 3 and ids.shape[1] <= 4
    assert probe.base_logp.shape == ids.shape and (probe.base_logp <= 0).all()
    assert analysis.kl_to_base(module) == {"colour": 0.0, "count": 0.0}

    state = analysis.state_dict()
    with torch.no_grad():
        head = module.backbone.lm_head.weight
        head.add_(0.5 * torch.randn(head.shape, generator=torch.Generator().manual_seed(1)))
    kl = analysis.kl_to_base(module)
    assert kl["colour"] > 0 and kl["count"] > 0

    # A resumed run keeps the base's samples and log-probs: the model it starts with is no longer the base.
    resumed = ForgettingAnalysis(tmp_path, probe_size=3, max_new_tokens=4, seed=3)
    resumed.load_state_dict(state)
    resumed.on_train_start(trainer, module)
    assert torch.equal(resumed.probes["colour"].rollouts.completion_ids, ids)
    assert torch.equal(resumed.probes["colour"].base_logp, probe.base_logp)
    assert resumed.kl_to_base(module) == pytest.approx(kl)


def test_reward_variance_is_the_stage_mean_of_group_var(tmp_path, make_module, trainer):
    module = make_module(RFTModule, "rft.yaml", "rft.kl.coef=0")
    analysis = ForgettingAnalysis(tmp_path, probe_size=1, max_new_tokens=2)
    analysis.on_train_start(trainer, module)
    for stage, values in enumerate([[0.25, 0.1, 0.0], [0.2]]):
        module.start_stage(stage)
        analysis.on_train_epoch_start(trainer, module)
        for step, value in enumerate(values):
            module.step_metrics = {"reward/total": 0.5, "reward/group_var": value}
            analysis.on_train_batch_end(trainer, module, None, None, step)
        analysis.on_train_epoch_end(trainer, module)
    stages = json.loads((tmp_path / "analysis.json").read_text())["stages"]
    assert [s["name"] for s in stages] == ["colour", "count"]
    assert stages[0]["reward_var"] == pytest.approx(0.35 / 3)
    assert stages[1]["reward_var"] == pytest.approx(0.2)  # each stage starts its own mean


@pytest.mark.slow
def test_sft_run_writes_the_analysis(tmp_path, quick_cfg, foundation_dir):
    cfg = load_config(REPO / "configs" / "default.yaml",
                      [*quick_cfg, f"output_dir={tmp_path}", "tasks=[colour,count]", "steps_per_task=3",
                       "data.eval_size=4", "eval.general=false", "save_checkpoints=false"])
    run(cfg, extra_callbacks=[ForgettingAnalysis(tmp_path, probe_size=2, max_new_tokens=4)])

    analysis = json.loads((tmp_path / "analysis.json").read_text())
    assert analysis["kl_unit"].startswith("nats per completion")
    stages = analysis["stages"]
    assert [(s["stage"], s["name"]) for s in stages] == [(1, "colour"), (2, "count")]
    for stage in stages:
        # LoRA on the language model's attention and MLP projections: only those groups train.
        assert set(stage["update_norm"]) == {"attention", "mlp"}
        assert all(norm["abs"] > 0 and norm["rel"] > 0 for norm in stage["update_norm"].values())
        assert stage["reward_var"] is None
        assert set(stage["kl_to_base"]) == {"colour", "count"}
        assert all(kl > 0 for kl in stage["kl_to_base"].values())
    assert Image.open(tmp_path / "analysis.png").size[0] > 600
    logged = metric_rows(tmp_path, "analysis/kl_to_base/colour")
    assert len(logged) == 2
    assert float(logged[1]["analysis/update_norm/mlp"]) == pytest.approx(stages[1]["update_norm"]["mlp"]["abs"])


# --- the competing explanations' quantities ------------------------------------------------------------------------

class TwoGroups(torch.nn.Module):
    """Parameters named like a language model's MLP and attention weights, set by hand."""

    config = SimpleNamespace(model_type="qwen2_5_vl")  # the family the analysis reads the vision tower's name from

    def __init__(self, mlp: list[float], attention: list[float]):
        super().__init__()
        self.mlp = torch.nn.ParameterDict({"up_proj": torch.nn.Parameter(torch.tensor(mlp))})
        self.self_attn = torch.nn.ParameterDict({"q_proj": torch.nn.Parameter(torch.tensor(attention))})


def measured(start: TwoGroups, end: TwoGroups, fisher=None) -> ForgettingAnalysis:
    """An analysis whose stage started at `start`'s parameters, with `fisher` as the earlier tasks' Fisher."""
    analysis = ForgettingAnalysis("unused")
    analysis.start = {name: p.detach().clone() for name, p in start.named_parameters()}
    analysis.fisher = fisher or {}
    return analysis


def test_updated_share_counts_parameters_whose_bfloat16_value_changed(trainer):
    # bfloat16 steps: 2^-7 next to 1, 2^-6 next to 2. mlp: 1 -> 1.003 rounds back to 1 (less than half a step) and
    # 1 -> 1.002 too, though both moved more than 0.1% of their value; 2 -> 2.01 rounds to 2.015625, changed; -4
    # stays. attention: 0 -> 2e-5 is a bfloat16 number of its own, more than 1e-5 away: changed; 0.0015 -> 0.0015 +
    # 2^-17 (one bfloat16 step there, 7.6e-6) changes its bfloat16 value by less than the authors' 1e-5: unchanged.
    start = TwoGroups([1.0, 1.0, 2.0, -4.0], [0.0, 0.0015])
    end = TwoGroups([1.003, 1.002, 2.01, -4.0], [2e-5, 0.0015 + 2 ** -17])
    shares = measured(start, end).updated_share(trainer, SimpleNamespace(backbone=end))
    assert shares == {"all": pytest.approx(2 / 6), "attention": pytest.approx(1 / 2), "mlp": pytest.approx(1 / 4)}


def test_updated_share_finds_a_constructed_sparse_update(trainer):
    """Weights stored in bfloat16 (as a bf16 checkpoint's are); 10% of them take a real step (5%), the rest a move
    of 0.11% (as Adam gives every weight with a gradient), under half of bfloat16's step at any value: the measure
    reads 10%, where a 0.1% threshold on the float32 values read 100%."""
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(2, 1000, generator=generator).to(torch.bfloat16).float()
    start = TwoGroups(values[0].tolist(), values[1].tolist())
    stepped = torch.zeros(2, 1000, dtype=torch.bool)
    stepped.view(-1)[torch.randperm(2000, generator=generator)[:200]] = True
    moved = values * torch.where(stepped, 1.05, 1.0011)
    end = TwoGroups(moved[0].tolist(), moved[1].tolist())
    shares = measured(start, end).updated_share(trainer, SimpleNamespace(backbone=end))
    assert shares["all"] == pytest.approx(0.1)
    assert shares["mlp"] == pytest.approx(float(stepped[0].float().mean()))


def test_fisher_weighted_update_of_two_parameters(trainer):
    # One parameter per group; an example's loss w_mlp * a + w_attn * b has gradient (a, b), so over the examples
    # (1, 2) and (3, 0), one batch of two, the diagonal Fisher is ((1 + 9) / 2, (4 + 0) / 2) = (5, 2).
    start, end = TwoGroups([0.5], [1.0]), TwoGroups([0.6], [0.5])
    ab = torch.tensor([[1, 2], [3, 0]])
    batch = Batch(ab, torch.ones_like(ab), None, torch.arange(2), torch.zeros(2), torch.zeros(2), [None] * 2)
    fisher = diagonal_fisher(start, [batch], lambda model, one: model.mlp["up_proj"][0] * one.input_ids[0, 0]
                             + model.self_attn["q_proj"][0] * one.input_ids[0, 1])
    assert {name: value.item() for name, value in fisher.items()} == {"mlp.up_proj": 5.0, "self_attn.q_proj": 2.0}
    # d theta = (0.1, -0.5): 5 * 0.01 + 2 * 0.25 = 0.55
    analysis = measured(start, end, fisher=fisher)
    assert analysis.fisher_update(trainer, SimpleNamespace(backbone=end)) == pytest.approx(0.55)
    assert measured(start, end).fisher_update(trainer, SimpleNamespace(backbone=end)) is None  # no earlier task


def test_examples_that_turned_right_to_wrong_and_back():
    before = {"count": [1, 1, 0, 0, 1], "general": [1, 0], "colour": [1]}
    after = {"count": [1, 0, 1, 0, 0], "general": [0, 1]}  # colour not evaluated in this row
    assert example_changes(before, after) == {"count": {"right_to_wrong": 2, "wrong_to_right": 1},
                                              "general": {"right_to_wrong": 1, "wrong_to_right": 1}}


def test_stage_forgetting_from_the_accuracy_rows():
    evaluation = SimpleNamespace(
        rows=[[50.0, 20.0, 10.0], [80.0, 20.0, 10.0], [60.0, 70.0, 12.0], [55.0, 40.0, 90.0]],
        benchmark_rows={"general": [{"accuracy": 40.0}, None, {"accuracy": 35.0}, {"accuracy": 30.0}]},
        correct=[{"count": [0, 1]}, {"count": [1, 1]}, {"count": [1, 0]}, {"count": [0, 1]}])
    stages = [SimpleNamespace(tasks=[0]), SimpleNamespace(tasks=[1]), SimpleNamespace(tasks=[2])]
    analysis = ForgettingAnalysis("unused", evaluation=evaluation)
    module = SimpleNamespace(stages=stages)
    first = analysis.stage_forgetting(1, module)
    assert first == {"forgetting": None, "general_change": None,  # general not evaluated after stage 1
                     "examples": {"count": {"right_to_wrong": 0, "wrong_to_right": 1}}}
    assert analysis.stage_forgetting(2, module)["forgetting"] == pytest.approx(20.0)  # task 1: 80 -> 60
    third = analysis.stage_forgetting(3, module)
    assert third["forgetting"] == pytest.approx((5.0 + 30.0) / 2)  # tasks 1 and 2: 60 -> 55, 70 -> 40
    assert third["general_change"] == pytest.approx(-5.0)
    with pytest.raises(RuntimeError, match="must come after the AccuracyMatrix"):
        analysis.stage_forgetting(4, module)
