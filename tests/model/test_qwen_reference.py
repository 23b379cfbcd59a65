"""cpt's forwards are the model's own, for each family (Qwen2.5-VL, Qwen3-VL): on a random model at the published
layout (tests/helpers/qwen_reference.py), fed one left-padded batch of a one-image row, a two-image row and a
text-only row, every number cpt computes equals transformers' own forward and `generate` given what the stock
processor gives (float32): the batch itself, SFT's per-token loss and gradient, greedy evaluation's tokens, and
RFT's log-probabilities, which equal those of the distribution each rollout token was drawn from (prompt cache and
fan-out included), in the shared-prefix, repeated and reference passes; with LoRA, and under two-process FSDP."""

from __future__ import annotations

import socket
from dataclasses import replace

import pytest
import torch
from torch.nn import functional as F
from transformers import GenerationConfig

from cpt.data.batches import IGNORE_INDEX
from cpt.model.answer_loss import sft_loss, sft_token_losses
from cpt.model.families import FAMILIES
from cpt.model.generation import PromptCache, Sampling, generate_ids, generate_ids_and_log_probs
from cpt.model.positions import rope_positions
from cpt.model.processor import VisionTextProcessor
from cpt.rl.log_probs import token_log_probs
from cpt.rl.reference import Reference
from cpt.rl.rollouts import completion_mask
from tests.helpers.qwen_reference import build_reference, load_reference

TEMPERATURE, GROUP, NEW_TOKENS = 0.7, 3, 10


@pytest.fixture(scope="module", params=FAMILIES, ids=lambda family: family.name)
def ref(request, processor, tmp_path_factory):
    family = request.param
    return build_reference(family, processor.tokenizer, tmp_path_factory.mktemp(f"{family.name}-published"))


# Row 0's image (168 x 224) on each family's merged grid: 14-pixel patches give 12 x 16, merged 6 x 8; 16-pixel ones
# resize it to 160 x 224 (multiples of 32), 10 x 14 patches, merged 5 x 7.
ROW0_GRID = {"qwen2.5-vl": (6, 8), "qwen3-vl": (5, 7), "qwen3.5": (5, 7)}


# --- what the reference computes, from the stock processor's inputs ----------------------------------------------

def reference_token_losses(model, ref) -> torch.Tensor:
    """(rows, width - 1) transformers' cross-entropy of each answer token (0 elsewhere): the answer is what the SFT
    text holds beyond its prompt, each row's last tokens (left padding)."""
    inputs = ref.stock_inputs(with_response=True)
    prompt_lengths = ref.stock_inputs(with_response=False)["attention_mask"].sum(1)
    answer_lengths = inputs["attention_mask"].sum(1) - prompt_lengths
    width = inputs["input_ids"].shape[1]
    is_answer = torch.arange(width)[None, :] >= width - answer_lengths[:, None]
    labels = inputs["input_ids"].masked_fill(~is_answer, IGNORE_INDEX)
    logits = model(**inputs).logits[:, :-1].float()
    return F.cross_entropy(logits.transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX, reduction="none")


def generation_config(processor: VisionTextProcessor, sampling: bool) -> GenerationConfig:
    """What cpt samples with: the plain softmax(logits / T), the image and vision markers suppressed."""
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, pad_token_id=processor.pad_id, eos_token_id=processor.eos_id,
                              suppress_tokens=processor.placeholder_ids, do_sample=False)
    if sampling:
        config.update(do_sample=True, temperature=TEMPERATURE, top_p=1.0, top_k=0)
    return config


def reference_greedy(model, ref) -> torch.Tensor:
    inputs = ref.stock_inputs(with_response=False)
    out = model.generate(**inputs, generation_config=generation_config(ref.processor, sampling=False))
    return out[:, inputs["input_ids"].shape[1]:]


def reference_log_probs(model, ref, ids: torch.Tensor, mask: torch.Tensor, repeats: int) -> torch.Tensor:
    """transformers' forward over the stock prompts, each `repeats` times, followed by completions `ids`: the
    log-probability of each completion token under softmax(logits / T) with the suppressed tokens taken out."""
    inputs = ref.stock_inputs(with_response=False, repeats=repeats)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], ids], 1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], mask.long()], 1)
    inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(ids)], 1)
    logits = model(**inputs).logits[:, -ids.shape[1] - 1:-1].float() / TEMPERATURE
    logits[..., ref.processor.placeholder_ids] = float("-inf")
    return logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def gradients(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_gradients(ours: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert ours.keys() == expected.keys() and ours
    for name, grad in ours.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


# --- the batch and its positions --------------------------------------------------------------------------------

def test_cpt_batches_hold_what_the_stock_processor_gives(ref):
    """cpt's own encoding (pads expanded by cpt, token types from the pad ids) and its stock-processor path both
    give the stock processor's ids, mask, token types, patches and grids, for prompts and for SFT's texts."""
    through_stock = VisionTextProcessor(ref.processor.tokenizer, ref.processor.image_processor, ref.family,
                                        stock=ref.stock)
    for with_response in (False, True):
        stock = ref.stock_inputs(with_response)
        assert set(stock) == {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"}
        for processor in (ref.processor, through_stock):
            batch = replace(ref, processor=processor).batch(with_response)
            assert set(batch.model_inputs()) == set(stock)
            for name, value in stock.items():
                assert torch.equal(batch.model_inputs()[name], value), (with_response, name)
    height, width = ROW0_GRID[ref.family.name]
    assert stock["mm_token_type_ids"].sum(1).tolist() == [height * width, 6 + 16, 0]  # image tokens per row


def test_positions_are_the_models_own_worked_by_hand(ref):
    """Text after an image continues from the image's largest position + 1: a 168 x 224 image (Qwen2.5-VL: 12 x 16
    patches, 6 x 8 merged: 48 tokens) advances the text by 8, not 48; 56 x 84 (2 x 3 merged; Qwen3-VL resizes it to
    64 x 96, the same grid) by 3 and 112 x 112 (4 x 4; Qwen3-VL: 128 x 128) by 4: row 0's last prompt token sits
    48 - 8 = 40 positions before its index (Qwen3-VL: 35 - 7 = 28), row 1's 15 (3 fewer for 6 image tokens, 12 for
    16), the text-only row's at its index."""
    model = ref.model()
    batch = ref.batch(with_response=False)
    positions, next_position = rope_positions(model, batch)
    lengths = batch.attention_mask.sum(1)
    height, width = ROW0_GRID[ref.family.name]
    tokens = height * width
    expected_last = lengths - 1 - torch.tensor([tokens - max(height, width), 15, 0])
    assert positions[:, :, -1].tolist() == [expected_last.tolist()] * 3
    assert next_position.tolist() == (expected_last + 1).tolist()
    # Row 0's image: time at its start, height and width over the merged patches, all from the same start.
    start = int((batch.mm_token_type_ids[0] == 1).nonzero()[0])
    image = positions[:, 0, start:start + tokens]
    first = int(image[0, 0])
    assert image[0].tolist() == [first] * tokens
    assert image[1].tolist() == [first + h for h in range(height) for _ in range(width)]
    assert image[2].tolist() == [first + w for _ in range(height) for w in range(width)]
    assert positions[:, 0, start + tokens].tolist() == [first + width] * 3  # <|vision_end|>
    # And the model computes the same itself, from the token types (transformers' get_rope_index).
    inner = model.model
    expected, _ = inner.get_rope_index(batch.input_ids, batch.mm_token_type_ids, batch.image_grid_thw,
                                       attention_mask=batch.attention_mask)
    assert torch.equal(positions, expected)


def test_images_without_token_types_are_refused(ref):
    """Without token types Qwen2.5-VL would place image tokens in 1D, silently (Qwen3-VL raises): a forward or
    `generate` given images without them is an error that says what to pass."""
    model = ref.model()
    inputs = ref.stock_inputs(with_response=False)
    del inputs["mm_token_type_ids"]
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        model(**inputs)
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        model.generate(**inputs, max_new_tokens=2)
    text_only = {name: inputs[name][2:] for name in ("input_ids", "attention_mask")}
    model(**text_only)  # text alone has 1D positions in every section: nothing to refuse


def test_left_padding_reaches_no_row(ref):
    """Each row of the left-padded batch gives the logits it gives alone, unpadded: padding is masked out of
    attention and, in a linear-attention layer (Qwen3.5), out of the convolution and the recurrence, which would
    otherwise carry it into every later token."""
    model = ref.model()
    batch = ref.batch(with_response=True)
    texts = ref.texts(with_response=True)
    padding = (batch.attention_mask == 0).sum(1).tolist()
    assert min(padding) == 0 and len(set(padding)) == 3  # two rows padded, by different lengths
    with torch.no_grad():
        padded = model(**batch.model_inputs()).logits
        for row, (text, example) in enumerate(zip(texts, ref.examples)):
            alone = ref.stock(text=[text], images=example.images or None, return_tensors="pt")
            width = alone["input_ids"].shape[1]
            assert int(batch.attention_mask[row].sum()) == width
            torch.testing.assert_close(padded[row, -width:], model(**alone).logits[0], rtol=0, atol=1e-5)


# --- SFT and evaluation ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_sft_loss_and_its_gradient_equal_the_reference(ref, finetune):
    model = ref.model(finetune)
    batch = ref.batch(with_response=True)
    expected = reference_token_losses(model, ref)
    expected.sum().div((expected != 0).sum()).backward()
    expected_grads = gradients(model)
    model.zero_grad(set_to_none=True)

    per_token = sft_token_losses(model, batch)
    torch.testing.assert_close(per_token, expected.detach(), rtol=0, atol=1e-5)
    loss = sft_loss(model, batch)
    assert abs(float(loss.detach()) - float(expected.detach()[expected != 0].mean())) < 1e-5
    loss.backward()
    assert_same_gradients(gradients(model), expected_grads)
    assert any("visual" in name for name in expected_grads) == (finetune == "full")


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_greedy_evaluation_gives_the_reference_tokens(ref, finetune):
    model = ref.model(finetune)
    expected = reference_greedy(model, ref)
    assert torch.equal(generate_ids(model, ref.processor, ref.batch(False), NEW_TOKENS), expected)
    # from the prompt cache as well (ReMax's greedy baseline decodes this way)
    prompts = ref.batch(False)
    prefix = PromptCache.prefill(model, prompts)
    assert torch.equal(generate_ids(model, ref.processor, prompts, NEW_TOKENS, prefix=prefix), expected)


# --- RFT ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("finetune", ["full", "lora"])
@pytest.mark.parametrize("cached", [True, False], ids=["prompt-cache", "repeated-prompts"])
def test_rollouts_are_drawn_from_the_distribution_the_update_scores(ref, finetune, cached):
    """The log-probability of each rollout token under the distribution sampling drew it from equals the one the
    update computes for it, on every path (repeated prompts, shared prefix, chunked head), and transformers'
    forward of the stock inputs followed by the completion: the rollouts are on-policy in fact."""
    model = ref.model(finetune)
    prompts = ref.batch(with_response=False)
    prefix = PromptCache.prefill(model, prompts) if cached else None
    torch.manual_seed(1)
    ids, drawn = generate_ids_and_log_probs(model, ref.processor, prompts, NEW_TOKENS, Sampling(TEMPERATURE),
                                            repeats=GROUP, prefix=prefix)
    mask, _ = completion_mask(ids, ref.processor.eos_id)
    assert mask.sum() > 2 * len(ids)  # completions of several tokens
    expected = reference_log_probs(model, ref, ids, mask, GROUP)
    torch.testing.assert_close(drawn[mask], expected[mask], rtol=0, atol=1e-5)

    rows = prompts.repeat(GROUP)
    groups = torch.arange(len(rows)) // GROUP
    for shared, chunk in [(None, None), (groups, None), (groups, 4), (None, 5)]:
        logp, _ = token_log_probs(model, rows, ids, mask, TEMPERATURE, groups=shared, chunk=chunk,
                                  suppressed=ref.processor.placeholder_ids)
        torch.testing.assert_close(logp[mask], drawn[mask], rtol=0, atol=1e-5)


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_the_reference_pass_is_the_reference_models_forward(ref, finetune):
    """The KL term's reference (a frozen model under full fine-tuning, here one of other weights; the adapters
    switched off under LoRA) scores the rollouts as transformers' forward of that model does."""
    model = ref.model(finetune)
    prompts = ref.batch(with_response=False)
    torch.manual_seed(2)
    ids = generate_ids(model, ref.processor, prompts, NEW_TOKENS, sampling=Sampling(TEMPERATURE), repeats=GROUP)
    mask, _ = completion_mask(ids, ref.processor.eos_id)
    if finetune == "lora":
        reference = Reference(model, "base", build_copy=None)  # the base is the model with its adapters off
        with torch.no_grad(), model.disable_adapter():
            expected = reference_log_probs(model, ref, ids, mask, GROUP)
    else:
        other = ref.model(seed=1)
        reference = Reference(model, "base", build_copy=lambda: other)
        with torch.no_grad():
            expected = reference_log_probs(other, ref, ids, mask, GROUP)
    rows = prompts.repeat(GROUP)
    with torch.no_grad(), reference.model(model) as scorer:
        for shared in (None, torch.arange(len(rows)) // GROUP):
            logp, _ = token_log_probs(scorer, rows, ids, mask, TEMPERATURE, groups=shared,
                                      suppressed=ref.processor.placeholder_ids)
            torch.testing.assert_close(logp[mask], expected[mask], rtol=0, atol=1e-5)
    assert not torch.allclose(logp[mask], reference_log_probs(model, ref, ids, mask, GROUP)[mask].detach())


def test_no_position_state_outlives_a_call(ref):
    """The model keeps the rope offsets of its last call; none of them may reach the next one: a generate of G
    rows per prompt from a cache, then a greedy one of another batch size, then forwards of two other sizes, give
    what a fresh model gives."""
    fresh = ref.model()
    prompts = ref.batch(with_response=False)
    text_only, pair = prompts.rows(2, 3), prompts.rows(0, 2)
    with torch.no_grad():
        expected = [fresh(**batch.model_inputs()).logits for batch in (text_only, pair)]
    expected_greedy = generate_ids(fresh, ref.processor, pair, NEW_TOKENS)

    model = ref.model()
    generate_ids(model, ref.processor, prompts, NEW_TOKENS, sampling=Sampling(), repeats=GROUP,
                 prefix=PromptCache.prefill(model, prompts))
    assert torch.equal(generate_ids(model, ref.processor, pair, NEW_TOKENS), expected_greedy)
    with torch.no_grad():
        for batch, logits in zip((text_only, pair), expected):
            torch.testing.assert_close(model(**batch.model_inputs()).logits, logits, rtol=0, atol=1e-5)


# --- under FSDP ----------------------------------------------------------------------------------------------------

def _sharded_worker(rank: int, world: int, port: int, directory, out_dir) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from cpt.model.backbone import shard_backbone

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        ref = load_reference(directory)
        for finetune in ("full", "lora"):
            # The reference: the same model unsharded, fed the stock processor's inputs.
            model = ref.model(finetune)
            losses = reference_token_losses(model, ref)
            losses.sum().div((losses != 0).sum()).backward()
            expected_grads = gradients(model)
            expected_greedy = reference_greedy(model, ref)

            model = shard_backbone(ref.model(finetune), init_device_mesh("cpu", (world,)))
            sft_loss(model, ref.batch(with_response=True)).backward()
            grads = {name: grad.full_tensor() if hasattr(grad, "full_tensor") else grad
                     for name, grad in gradients(model).items()}
            assert_same_gradients(grads, expected_grads)
            model.zero_grad(set_to_none=True)

            prompts = ref.batch(with_response=False)
            assert torch.equal(generate_ids(model, ref.processor, prompts, NEW_TOKENS, synced=True), expected_greedy)
            torch.manual_seed(3)
            ids, drawn = generate_ids_and_log_probs(model, ref.processor, prompts, NEW_TOKENS,
                                                    Sampling(TEMPERATURE), repeats=GROUP, synced=True,
                                                    prefix=PromptCache.prefill(model, prompts))
            mask, _ = completion_mask(ids, ref.processor.eos_id)
            rows = prompts.repeat(GROUP)
            for shared in (None, torch.arange(len(rows)) // GROUP):
                with torch.no_grad():
                    logp, _ = token_log_probs(model, rows, ids, mask, TEMPERATURE, groups=shared,
                                              suppressed=ref.processor.placeholder_ids)
                torch.testing.assert_close(logp[mask], drawn[mask], rtol=0, atol=1e-5)
        (out_dir / f"ok-{rank}").write_text("ok")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_the_equalities_hold_under_two_process_fsdp(ref, tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_sharded_worker, args=(2, port, ref.checkpoint, tmp_path), nprocs=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok-0", "ok-1"]

