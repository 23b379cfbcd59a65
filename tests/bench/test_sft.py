"""`bench sft` trains TRL's SFTTrainer on exactly our SFT inputs: the same tokens, the loss on the same ones."""

from __future__ import annotations

import pytest

from cpt.bench.sft import SFT_BENCH_DEFAULTS, sft_config, train_examples
from cpt.data.batches import IGNORE_INDEX, EncodedDataset
from cpt.model.processor import VisionTextProcessor


@pytest.fixture(scope="module")
def cfg(quick_cfg):
    foundation = [key for key in quick_cfg if key.startswith("foundation.")]  # the model `foundation_dir` holds
    return sft_config([*foundation, "data.batch_size=3"], steps=2, warmup=1)


def test_config_sets_the_shared_settings_and_enough_examples(cfg):
    assert "method=sft" in SFT_BENCH_DEFAULTS
    assert (cfg.method, cfg.model.finetune, cfg.model.dtype) == ("sft", "full", "float32")
    assert (cfg.steps_per_task, cfg.data.train_size) == (4, 12)
    assert (cfg.optim.warmup_ratio, cfg.optim.min_lr_ratio, cfg.trainer.gradient_clip_val) == (0, 1.0, 1.0)


def test_trl_collates_our_tokens_and_trains_on_our_answer_tokens_only(cfg, foundation_dir, tmp_path):
    from cpt.bench.sft import trl_sft_trainer

    trainer = trl_sft_trainer(cfg, foundation_dir, str(tmp_path))
    assert trainer.args.per_device_train_batch_size == cfg.data.batch_size
    assert (trainer.args.learning_rate, trainer.args.max_grad_norm) == (cfg.optim.lr, cfg.trainer.gradient_clip_val)
    examples = train_examples(cfg)[:3]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    processor = VisionTextProcessor.from_pretrained(foundation_dir, cfg.model.min_pixels, cfg.model.max_pixels)
    ours = EncodedDataset(examples, processor, cfg.data.template, with_response=True)
    for row, example in enumerate(examples):
        item = ours.encode(example, row)
        real = batch["attention_mask"][row].bool()
        assert batch["input_ids"][row][real].tolist() == item.input_ids
        assert batch["labels"][row][real].tolist() == item.labels  # the answer and end-of-turn; -100 elsewhere
        assert sum(label != IGNORE_INDEX for label in item.labels) >= 2
        assert (batch["labels"][row][~real] == IGNORE_INDEX).all()
    assert batch["pixel_values"].shape[0] == sum(int(g.prod()) for g in batch["image_grid_thw"])
