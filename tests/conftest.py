"""Shared fixtures: a tiny processor and a small, quickly pre-trained toy foundation model.

Tests never download anything: the `tiny` preset builds its own tokenizer and weights under a temporary cache.
"""

from __future__ import annotations

import pytest
import torch

from cpt.config import load_config
from cpt.model.presets import resolve_checkpoint
from cpt.model.tiny import build_tiny_processor

# A foundation model good enough for mechanics, not for accuracy: seconds to build.
QUICK_FOUNDATION = ["foundation.steps=12", "foundation.batch_size=8"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cpt-cache")


@pytest.fixture(scope="session")
def processor():
    return build_tiny_processor(seed=0, image_size=64)


@pytest.fixture(scope="session")
def quick_cfg(cache_dir):
    """Overrides for a fast run on the quick foundation model."""
    return [*QUICK_FOUNDATION, f"foundation.cache_dir={cache_dir}", "model.finetune=lora", "data.batch_size=4",
            "data.eval_size=8", "data.general_size=8", "eval.batch_size=8", "eval.max_new_tokens=6",
            "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "trainer.log_every_n_steps=1"]


@pytest.fixture(scope="session")
def foundation_dir(quick_cfg):
    return resolve_checkpoint(load_config(None, quick_cfg))


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)
