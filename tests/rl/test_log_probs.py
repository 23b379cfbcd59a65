"""The shared-prefix forward and the chunked head give the log-probabilities, entropies and gradients of the plain
repeated-prompt, full-vocabulary path: packed behind one prompt for an attention-only family (Qwen2.5-VL), the
prompt's cache forked to its completions for a family with recurrent layers (Qwen3.5)."""

import pytest
import torch

from cpt.config import load_config
from cpt.data.batches import Batch, Collator, EncodedDataset
from cpt.data.synthetic import SyntheticSplit
from cpt.model.backbone import load_backbone
from cpt.model.families import QWEN3_5
from cpt.model.presets import resolve_checkpoint
from cpt.model.processor import VisionTextProcessor
from cpt.rl.log_probs import head_log_probs, packing_pays, prompt_sharing, token_log_probs
from cpt.rl.rollouts import completion_mask

GROUP = 3


@pytest.fixture(params=["qwen2.5-vl", "qwen3.5"])
def backbone(request, foundation_dir, processor):
    """A family's toy checkpoint and processor: the quick Qwen2.5-VL, or the shipped tiny Qwen3.5."""
    if request.param == "qwen2.5-vl":
        return foundation_dir, processor
    shipped = resolve_checkpoint(load_config(None, [f"model.name_or_path={QWEN3_5.tiny_preset}"]))
    return shipped, VisionTextProcessor.from_pretrained(shipped)


def ragged_rollouts(processor, eos_id: int) -> tuple[Batch, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two prompts of different lengths (left padding), one image each, G = 3 completions each of different
    lengths: one ends at once, one is truncated, one ends half way."""
    items = [EncodedDataset(SyntheticSplit(task, "train", 1, 0, 64), processor, "cot")[0]
             for task in ("colour", "compare")]
    prompts = Collator(processor.pad_id)(items)
    assert prompts.attention_mask[:, 0].tolist().count(0) == 1  # one prompt is shorter: left-padded
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 200, (2 * GROUP, 7), generator=generator)
    for row, end in [(0, 0), (2, 3), (3, 6), (5, 2)]:  # rows 1 and 4 never end (truncated)
        ids[row, end] = eos_id
        ids[row, end + 1:] = processor.pad_id
    mask, _ = completion_mask(ids, eos_id)
    return prompts.repeat(GROUP), ids, mask, torch.arange(2 * GROUP) // GROUP


def model_for(finetune: str, foundation_dir, attention: str = "sdpa"):
    torch.manual_seed(0)
    cfg = load_config(None, [f"model.finetune={finetune}", f"model.attn_implementation={attention}"])
    model = load_backbone(cfg.model, foundation_dir)
    if finetune == "lora":  # trained adapters (B = 0 at initialisation would hide their gradient path)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.05)
    return model.eval()


def log_probs_and_grads(model, rollouts, groups=None, chunk=None):
    prompts, ids, mask, _ = rollouts
    model.zero_grad(set_to_none=True)
    logp, entropy = token_log_probs(model, prompts, ids, mask, 0.7, with_entropy=True, groups=groups, chunk=chunk)
    weights = torch.linspace(-1, 1, logp.numel()).view_as(logp)  # a loss that weighs every token differently
    (logp * weights * mask).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logp.detach(), entropy, grads


@pytest.mark.parametrize("finetune,attention", [("full", "sdpa"), ("lora", "sdpa"), ("full", "eager")])
def test_shared_prefix_and_chunks_equal_the_repeated_full_vocabulary_path(finetune, attention, backbone):
    checkpoint, processor = backbone
    model = model_for(finetune, checkpoint, attention)
    rollouts = ragged_rollouts(processor, processor.eos_id)
    mask = rollouts[2]
    # The shared path below really shares: packed, or (a recurrent family) forked.
    expected_sharing = "packed" if processor.family.packable else "forked"
    assert prompt_sharing(model, rollouts[0], rollouts[1], rollouts[3]) == expected_sharing
    expected_logp, expected_entropy, expected_grads = log_probs_and_grads(model, rollouts)
    assert expected_grads and all(g.abs().sum() > 0 for name, g in expected_grads.items() if "visual" in name)
    # The forked pass runs the prompt and the completions as two sequences, so Qwen3.5's chunked recurrence splits
    # them at other places than the repeated pass does, in float32: its log-probabilities differ by up to 1e-5 and
    # its entropies (over the whole vocabulary, at 1 / 0.7 the logits) by up to 1e-4 here. Rounding, not a wrong
    # state: with the weights and the recurrence's decay in float64 (the norms stay float32 in transformers) both
    # differences fall below 3e-6.
    atol, rtol = (1e-5, 1e-4) if processor.family.packable else (2e-4, 1e-3)
    for groups, chunk in [(rollouts[3], None), (None, 5), (rollouts[3], 4)]:
        logp, entropy, grads = log_probs_and_grads(model, rollouts, groups, chunk)
        torch.testing.assert_close(logp[mask], expected_logp[mask], rtol=0, atol=atol)
        torch.testing.assert_close(entropy[mask], expected_entropy[mask], rtol=0, atol=atol)
        assert grads.keys() == expected_grads.keys()
        for name, grad in grads.items():
            scale = expected_grads[name].abs().max().clamp(min=1e-12)
            assert (grad - expected_grads[name]).abs().max() / scale < rtol, name


def test_a_split_group_still_shares_within_its_run(backbone):
    """Micro-batches need not align with groups: rows 1..4 hold the tail of group 0 and the head of group 1, runs
    of different lengths in one forward."""
    checkpoint, processor = backbone
    model = model_for("full", checkpoint)
    prompts, ids, mask, groups = ragged_rollouts(processor, processor.eos_id)
    with torch.no_grad():
        expected, _ = token_log_probs(model, prompts, ids, mask, 1.0)
        part, _ = token_log_probs(model, prompts.rows(1, 5), ids[1:5], mask[1:5], 1.0, groups=groups[1:5])
    torch.testing.assert_close(part[mask[1:5]], expected[1:5][mask[1:5]], rtol=0, atol=1e-5)


def test_packing_is_chosen_where_it_computes_less():
    prompts = Batch(torch.zeros(2, 52, dtype=torch.long), None, None, None, None, None, [])
    groups = torch.arange(16) // 8
    # P = 52, r = 8, d = 128 (cost = 1280 tokens + pairs): n = 16 packs, 1280 * 180 + 180^2 = 262,800 against
    # 8 * (1280 * 68 + 68^2) = 733,312; n = 512 does not, 1280 * 4148 + 4148^2 = 22,515,344 against
    # 8 * (1280 * 564 + 564^2) = 8,320,128. At d = 3584 the long case packs: 35840 * 4148 + 4148^2 = 165,870,224
    # against 8 * (35840 * 564 + 564^2) = 164,254,848 is just above: n = 480 packs.
    assert packing_pays(prompts, torch.zeros(16, 16), groups, 128)
    assert not packing_pays(prompts, torch.zeros(16, 512), groups, 128)
    assert not packing_pays(prompts, torch.zeros(16, 512), groups, 3584)
    assert packing_pays(prompts, torch.zeros(16, 480), groups, 3584)


def test_chunked_head_matches_log_softmax_by_hand():
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 11, bias=False)
    hidden = torch.randn(2, 3, 4, requires_grad=True)
    ids = torch.tensor([[1, 5, 10], [0, 2, 7]])
    logits = head(hidden) / 2.0
    expected = logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    probs = logits.softmax(-1)
    expected_entropy = -(probs * probs.log()).sum(-1)
    (expected_grad,) = torch.autograd.grad(expected.sum(), hidden)
    for chunk in (1, 4, 6, None):
        chosen, entropy = head_log_probs(head, hidden, ids, 2.0, with_entropy=True, chunk=chunk)
        torch.testing.assert_close(chosen, expected)
        torch.testing.assert_close(entropy, expected_entropy.detach())
        (grad,) = torch.autograd.grad(chosen.sum(), hidden)
        torch.testing.assert_close(grad, expected_grad)


def test_entropy_carries_its_gradient_when_a_loss_asks():
    """The entropy bonus (rft.entropy.coef) differentiates the entropy: chunked and recomputed in the backward,
    its gradient is that of the whole-vocabulary formula; without the request it has none."""
    torch.manual_seed(1)
    head = torch.nn.Linear(4, 11, bias=False)
    hidden = torch.randn(2, 3, 4, requires_grad=True)
    ids = torch.tensor([[1, 5, 10], [0, 2, 7]])
    probs = (head(hidden) / 0.7).softmax(-1)
    (expected,) = torch.autograd.grad(-(probs * probs.log()).sum(), hidden)
    for chunk in (1, 4, None):
        _, entropy = head_log_probs(head, hidden, ids, 0.7, with_entropy=True, chunk=chunk, entropy_grad=True)
        (grad,) = torch.autograd.grad(entropy.sum(), hidden)
        torch.testing.assert_close(grad, expected)
        _, plain = head_log_probs(head, hidden, ids, 0.7, with_entropy=True, chunk=chunk)
        assert not plain.requires_grad


def _sharded_worker(rank: int, world: int, port: int, checkpoint, processor, out_dir) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from cpt.model.backbone import local_part, shard_backbone

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        for finetune in ("full", "lora"):
            model = shard_backbone(model_for(finetune, checkpoint), init_device_mesh("cpu", (world,)))
            rollouts = ragged_rollouts(processor, processor.eos_id)
            results = [log_probs_and_grads(model, rollouts, groups, chunk)
                       for groups, chunk in [(None, None), (rollouts[3], 4)]]
            (expected, expected_entropy, expected_grads), (logp, entropy, grads) = results
            mask = rollouts[2]
            atol, rtol = (1e-5, 1e-4) if processor.family.packable else (2e-4, 1e-3)  # as above
            torch.testing.assert_close(logp[mask], expected[mask], rtol=0, atol=atol)
            torch.testing.assert_close(entropy[mask], expected_entropy[mask], rtol=0, atol=atol)
            assert grads.keys() == expected_grads.keys() and grads
            for name, grad in grads.items():
                full = expected_grads[name]
                full = full.full_tensor() if hasattr(full, "full_tensor") else full  # (all ranks, same order)
                scale = full.abs().max().clamp(min=1e-12)  # the whole tensor's: a shard of one may be all but 0
                grad, reference = local_part(grad), local_part(expected_grads[name])
                assert (grad - reference).abs().max() / scale < rtol, (finetune, name)
        (out_dir / f"ok-{rank}").write_text("ok")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_the_equalities_hold_under_two_process_fsdp(backbone, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    checkpoint, processor = backbone
    mp.spawn(_sharded_worker, args=(2, port, checkpoint, processor, tmp_path), nprocs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok-0", "ok-1"]
