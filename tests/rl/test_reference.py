"""The KL reference: the base with adapters off (LoRA), a start-of-task snapshot, or a frozen copy (full)."""

import torch

from cpt.config import load_config
from cpt.data.batches import Collator, EncodedDataset
from cpt.data.synthetic import SyntheticSplit
from cpt.model.backbone import load_backbone
from cpt.rl.log_probs import token_log_probs
from cpt.rl.reference import Reference


def rollout_batch(processor):
    dataset = EncodedDataset(SyntheticSplit("colour", "train", 2, 0, 64), processor, "direct")
    batch = Collator(processor.pad_id)([dataset[0], dataset[1]])
    completion = torch.tensor([[7, 8, 9], [10, 11, 12]])
    return batch, completion


def perturb(model):
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))


@torch.no_grad()
def log_probs(model, inputs, completion):
    return token_log_probs(model.eval(), inputs, completion, torch.ones_like(completion, dtype=torch.bool),
                           temperature=1.0)[0]


def test_lora_reference_is_the_base_model(foundation_dir, processor):
    inputs, completion = rollout_batch(processor)
    base = load_backbone(load_config(None, ["model.finetune=full"]).model, foundation_dir)
    expected = log_probs(base, inputs, completion)

    torch.manual_seed(0)
    policy = load_backbone(load_config(None, ["model.finetune=lora"]).model, foundation_dir)
    perturb(policy)  # trained adapters: the policy now differs from the base
    assert not torch.allclose(log_probs(policy, inputs, completion), expected, atol=1e-4)
    reference = Reference(policy, "base", build_copy=lambda: None)
    assert reference.copy is None  # no second model is loaded
    with reference.model(policy) as ref:
        torch.testing.assert_close(log_probs(ref, inputs, completion), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(log_probs(policy, inputs, completion), expected, atol=1e-4)  # adapters back on


def test_task_start_reference_follows_the_tasks(foundation_dir, processor):
    inputs, completion = rollout_batch(processor)
    torch.manual_seed(0)
    policy = load_backbone(load_config(None, ["model.finetune=lora"]).model, foundation_dir)
    reference = Reference(policy, "task_start", build_copy=lambda: None)
    perturb(policy)
    reference.start_task(policy)  # task 2 begins with these adapters
    at_start = log_probs(policy, inputs, completion)
    perturb(policy)  # training on task 2
    trained = log_probs(policy, inputs, completion)
    with reference.model(policy) as ref:
        torch.testing.assert_close(log_probs(ref, inputs, completion), at_start)
    torch.testing.assert_close(log_probs(policy, inputs, completion), trained)  # the trained weights are restored


def test_full_finetuning_reference_is_a_frozen_copy(foundation_dir, processor):
    inputs, completion = rollout_batch(processor)
    cfg = load_config(None, ["model.finetune=full"]).model
    policy = load_backbone(cfg, foundation_dir)
    expected = log_probs(policy, inputs, completion)
    reference = Reference(policy, "base", build_copy=lambda: load_backbone(cfg, foundation_dir))
    assert not any(p.requires_grad for p in reference.copy.parameters())
    perturb(policy)
    with reference.model(policy) as ref:
        assert ref is reference.copy
        torch.testing.assert_close(log_probs(ref, inputs, completion), expected)
    following = Reference(policy, "task_start", build_copy=lambda: load_backbone(cfg, foundation_dir))
    following.start_task(policy)
    with following.model(policy) as ref:
        torch.testing.assert_close(log_probs(ref, inputs, completion), log_probs(policy, inputs, completion))
