"""On-policy SFT: its update is the gradient of the right rollouts' log-likelihood only, the rollouts are sampled
from the current weights, and it runs as a method of its own (sequence, LoRA, resume are covered with the other
methods in tests/commands/test_resume.py)."""

import json
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from cpt.commands.fit import run
from cpt.config import RECIPES, load_config
from cpt.data.batches import Collator, EncodedDataset
from cpt.data.tasks import build_tasks
from cpt.errors import ConfigError
from cpt.methods.onpolicy_sft import OnPolicySFTModule
from cpt.rl.log_probs import logits_log_probs, target_logits, token_log_probs
from cpt.rl.rewards import Scores
from tests.helpers import REPO, metric_rows
from tests.helpers.plugins import TargetLogitPull

GROUP = 4


class RecordingOptimizer:
    """Keeps the gradient each step would apply."""

    def __init__(self, module):
        self.module, self.steps = module, []

    def step(self):
        self.steps.append({name: None if p.grad is None else p.grad.clone()
                           for name, p in self.module.backbone.named_parameters() if p.requires_grad})

    def zero_grad(self, set_to_none=True):
        self.module.backbone.zero_grad(set_to_none=set_to_none)


@pytest.fixture
def module(quick_cfg, foundation_dir, tmp_path):
    """An on-policy SFT module over count whose Lightning plumbing is replaced by recorders, and whose scorer marks
    rollouts 0 and 2 of every group right."""
    cfg = load_config(None, [*quick_cfg, f"output_dir={tmp_path}", "method=onpolicy_sft", "tasks=[count]",
                             f"rft.group_size={GROUP}", "rft.max_new_tokens=5", "trainer.gradient_clip_val=null"])
    module = OnPolicySFTModule(cfg, foundation_dir, build_tasks(cfg))
    module.configure_model()
    module._trainer = SimpleNamespace(world_size=1)
    module.optimizer = RecordingOptimizer(module)
    module.scheduler_steps = 0

    def scheduler_step():
        module.scheduler_steps += 1

    module.optimizers = lambda: module.optimizer
    module.lr_schedulers = lambda: SimpleNamespace(step=scheduler_step)
    module.manual_backward = lambda loss: loss.backward()
    module.check_finite_loss = lambda loss, method: None
    module.logged = []
    module.log_step = lambda drawn, trained, greedy, stats: module.logged.append((drawn, stats))
    module.right_rows = torch.tensor([1.0, 0.0, 1.0, 0.0])

    def score(ids, batch):
        accuracy = module.right_rows.repeat(len(ids) // GROUP)
        return Scores(accuracy, {"accuracy": accuracy}, torch.zeros(len(ids), dtype=torch.bool))

    module.score = score
    return module


def prompts(module, count=2):
    task = module.tasks[0]
    examples = [task.train[i] for i in range(count)]
    dataset = EncodedDataset(examples, module.processor, task.template, with_response=False)
    return Collator(module.processor.pad_id)([dataset[i] for i in range(count)])


def test_update_is_the_right_rollouts_likelihood_gradient(module):
    batch = prompts(module)
    torch.manual_seed(7)
    module.training_step(batch, 0)
    drawn, stats = module.logged[0]
    # The rollouts are the current weights' own samples: the same generator state gives the same completions.
    torch.manual_seed(7)
    assert torch.equal(module.sample(batch, GROUP), drawn.completion_ids)
    assert stats["onpolicy/right"] == 0.5 and module.scheduler_steps == 1

    # The expected gradient, by hand: minus the mean log-likelihood of the right rollouts' tokens only. The
    # recorded gradient was taken at the weights before the step, which the recorder did not apply.
    right = torch.tensor([True, False, True, False] * 2)
    logp = token_log_probs(module.backbone, drawn.prompts, drawn.completion_ids, drawn.mask, 1.0,
                           suppressed=module.processor.placeholder_ids)[0]
    mask = drawn.mask.float() * right.unsqueeze(1)
    (-(logp * mask).sum() / mask.sum()).backward()
    applied = module.optimizer.steps[0]
    trainable = {n: p for n, p in module.backbone.named_parameters() if p.requires_grad}
    assert any(float(p.grad.abs().max()) > 0 for p in trainable.values())
    for name, param in trainable.items():
        torch.testing.assert_close(applied[name], param.grad, rtol=1e-4, atol=1e-7)


def test_a_loss_term_joins_the_update_over_micro_batches(module):
    """A term (tests/helpers/plugins.py: the mean square of the target logits, weight 0.5) sees every rollout, over
    three micro-batches of 3, 3 and 2 rollouts whose shares add up: the applied gradient is the right rollouts'
    negative log-likelihood plus the term over all completion tokens, worked out in one pass."""
    term = TargetLogitPull(weight=0.5)
    module.add_loss_term(term)
    module.cfg.rft.micro_batch_size = 3
    torch.manual_seed(7)
    module.training_step(prompts(module), 0)
    drawn, stats = module.logged[0]
    completions = drawn.mask.float()
    assert term.targets == [int(completions[rows].sum()) for rows in (slice(0, 3), slice(3, 6), slice(6, 8))]

    right = torch.tensor([True, False, True, False] * 2).unsqueeze(1)
    ids = drawn.completion_ids
    logits = target_logits(module.backbone, drawn.prompts.with_completions(ids, drawn.mask), ids.shape[1])
    logp, _ = logits_log_probs(logits, ids, 1.0, suppressed=module.processor.placeholder_ids)
    nll = -(logp * completions * right).sum() / (completions * right).sum()
    pull = 0.5 * (logits.square().mean(-1) * completions).sum() / completions.sum()
    (nll + pull).backward()
    assert stats["loss/target_logit_pull"] == pytest.approx(float(pull.detach()), rel=1e-5)
    assert stats["train/loss"] == pytest.approx(float(nll.detach()), rel=1e-5)
    for name, param in module.backbone.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(module.optimizer.steps[0][name], param.grad, rtol=1e-4, atol=1e-7)


def test_a_step_without_a_right_rollout_has_no_gradient(module):
    module.right_rows = torch.zeros(GROUP)
    module.training_step(prompts(module), 0)
    assert all(grad is None or float(grad.abs().max()) == 0 for grad in module.optimizer.steps[0].values())
    assert module.scheduler_steps == 1  # the schedule moves on as in every other step


def test_method_and_recipe():
    cfg = load_config(None, ["method=onpolicy_sft"])
    assert {key: OmegaConf.select(cfg, key) for key in RECIPES["rft"]} == RECIPES["rft"]  # RFT's rollouts
    assert cfg.rft.kl.coef == 0.0  # no KL term
    assert load_config(None, ["method=onpolicy_sft", "rft.group_size=1"]).rft.group_size == 1  # no advantage
    with pytest.raises(ConfigError, match="choose one of sft, rft, onpolicy_sft"):
        load_config(None, ["method=rejection"])


@pytest.mark.slow
def test_onpolicy_sft_run(tmp_path, quick_cfg):
    cfg = load_config(REPO / "configs" / "experiments" / "onpolicy_sft_sequential.yaml", [
        *quick_cfg, f"output_dir={tmp_path}", "tasks=[colour,count]", "steps_per_task=2", "data.batch_size=2",
        "rft.group_size=4", "rft.max_new_tokens=8", "eval.general=false", "save_checkpoints=false"])
    summary = run(cfg)
    assert summary["method"] == "onpolicy_sft" and len(summary["accuracy_matrix"]) == 3
    rows = metric_rows(tmp_path, "onpolicy/right")
    assert [r["train/task"] for r in rows] == ["1.0", "1.0", "2.0", "2.0"]
    assert all(0 <= float(r["onpolicy/right"]) <= 1 and r["reward/total"] != "" for r in rows)
    assert all("policy/kl" not in r or r["policy/kl"] == "" for r in rows)  # no KL term
    assert json.loads((tmp_path / "results.json").read_text())["name"] == "On-policy SFT sequential"
