import json
import math

import pytest
import torch
from PIL import Image

from cpt.backbone import load_backbone
from cpt.config import ConfigError, load_config
from cpt.data import Collator, EncodedDataset, SyntheticSplit
from cpt.module import per_task_schedule
from cpt.processor import VisionTextProcessor
from cpt.sft import sft_loss
from cpt.tasks import build_tasks


def test_schedule_warms_up_and_decays_within_every_task():
    f = per_task_schedule(steps_per_task=10, warmup_ratio=0.2, min_lr_ratio=0.1)
    # warmup = 2 steps: 1/2, 2/2; then cosine from 1 to 0.1 over the remaining 8 steps.
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == pytest.approx(1.0)
    assert f(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert [f(10 + s) for s in range(10)] == [f(s) for s in range(10)]  # the next task starts over


def test_gradient_checkpointing_gives_the_same_gradients(foundation_dir, processor):
    dataset = EncodedDataset(SyntheticSplit("count", "train", 2, 0, 64), processor, "direct")
    batch = Collator(processor.pad_id)([dataset[0], dataset[1]])
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        cfg = load_config(None, [f"model.gradient_checkpointing={checkpointing}", "model.finetune=full"]).model
        model = load_backbone(cfg, foundation_dir)
        model.train()
        assert model.is_gradient_checkpointing == checkpointing
        sft_loss(model, batch).backward()
        # The embeddings' gradient flows back through every (recomputed) decoder layer.
        grads.append(model.model.language_model.embed_tokens.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_max_pixels_shrinks_images(foundation_dir):
    small = VisionTextProcessor.from_pretrained(foundation_dir, max_pixels=32 * 32)
    encoded = small.encode_prompt("q", [Image.new("RGB", (64, 64))])
    assert encoded.image_grid_thw.tolist() == [[1, 4, 4]]
    assert encoded.input_ids.count(small.image_pad_id) == 4


def test_local_task_in_a_sequence(tmp_path):
    Image.new("RGB", (16, 16), "red").save(tmp_path / "r.png")
    rows = [{"problem": "Colour?", "answer": "red", "images": ["r.png"]}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = load_config(None, ["tasks=[colour,mine]", f"local_tasks.mine.train={tmp_path / 't.jsonl'}",
                             f"local_tasks.mine.eval={tmp_path / 't.jsonl'}", "local_tasks.mine.scorer=exact"])
    colour, mine = build_tasks(cfg)
    assert colour.name == "colour" and mine.name == "mine"
    assert mine.eval[0].answer == "red" and mine.chance is None
    assert mine.scorer("\\boxed{Red}", mine.eval[0])
    with pytest.raises(ConfigError, match="'local_tasks.mine.scorer': 'fuzzy'; choose one of exact"):
        load_config(None, ["local_tasks.mine.train=a", "local_tasks.mine.eval=b", "local_tasks.mine.scorer=fuzzy"])
