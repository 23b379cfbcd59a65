"""Generation from a prompt cache: each prompt prefilled once, its cache copied to its rows, the same tokens as
generating from G copies of the prompt."""

import torch

from cpt.config import load_config
from cpt.data.batches import Collator, EncodedDataset
from cpt.data.synthetic import SyntheticSplit
from cpt.model.backbone import load_backbone
from cpt.model.generation import PromptCache, Sampling, generate_ids


def ragged_prompts(processor):
    items = [EncodedDataset(SyntheticSplit(task, "train", 2, 0, 64), processor, "cot")[i]
             for task in ("colour", "compare") for i in range(2)]
    prompts = Collator(processor.pad_id)(items)
    assert len(set(prompts.attention_mask.sum(1).tolist())) == 2  # left padding on some rows
    return prompts


def test_a_prompt_cache_gives_the_tokens_of_repeated_prompts(foundation_dir, processor):
    model = load_backbone(load_config(None, ["model.finetune=full"]).model, foundation_dir).eval()
    prompts = ragged_prompts(processor)
    prefix = PromptCache.prefill(model, prompts)
    assert prefix.cache.get_seq_length() == prompts.input_ids.shape[1] - 1
    repeated = generate_ids(model, processor, prompts.repeat(3), 8)
    shared = generate_ids(model, processor, prompts, 8, repeats=3, prefix=prefix)
    assert torch.equal(shared, repeated)
    # The cache is copied for each use: a second use (ReMax's greedy pass) decodes from the untouched prompts.
    greedy = generate_ids(model, processor, prompts, 8, prefix=prefix)
    assert torch.equal(greedy, repeated[::3])
    # Sampling consumes the generator alike, so the same seed draws the same rollouts.
    sampled = []
    for prefix_or_none in (prefix, None):
        torch.manual_seed(5)
        sampled.append(generate_ids(model, processor, prompts, 8, sampling=Sampling(), repeats=3,
                                    prefix=prefix_or_none))
    assert torch.equal(*sampled)
    assert not torch.equal(sampled[0][0::3], sampled[0][1::3])  # the G rows of a prompt differ
