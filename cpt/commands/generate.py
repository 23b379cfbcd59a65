"""`python -m cpt generate checkpoint=PATH image=FILE question="..." [image=... question=...] [key=value ...]`: the
model's answers, each question asked about all the images given (none: text only), prompted as its run prompted
(the run's `data.template` when the checkpoint is a stage of a run, through the checkpoint's chat template).

Greedy by default; `temperature=T` (> 0) samples, `seed=S` fixes the draw, `max_new_tokens=N` bounds the answer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cpt import flags
from cpt.commands.evaluate import model_for_inference
from cpt.config import load_config
from cpt.data.batches import Collator, EncodedDataset
from cpt.data.examples import Example
from cpt.data.files import open_image
from cpt.data.prompts import TEMPLATES
from cpt.errors import ConfigError
from cpt.model.generation import Sampling, generate_ids

# Every key and its type (cpt.flags), checked as it is parsed; the checkpoint may be a preset's name, so
# resolve_checkpoint checks it, with the run's own messages.
KEYS = {"image": flags.INPUT, "question": flags.TEXT, "checkpoint": flags.TEXT, "template": flags.Choice(TEMPLATES),
        "temperature": flags.NON_NEGATIVE, "max_new_tokens": flags.COUNT, "seed": flags.SEED}
REPEATABLE = ("image", "question")


def parse(args: list[str]) -> dict:
    found, _ = flags.key_values(args, KEYS, REPEATABLE)
    if not found["question"]:
        raise ConfigError('give at least one question="..." (and image=FILE for each image it is about)')
    if "checkpoint" not in found:
        raise ConfigError("give checkpoint=PATH: a stage directory, an exported model, or a local checkpoint")
    return found


def run_config(checkpoint: str):
    """The config of the run a stage directory belongs to (<run>/checkpoints/<k>-<task>), else the defaults."""
    saved = Path(checkpoint).expanduser().parent.parent / "config.yaml"
    cfg = load_config(saved if saved.is_file() else None, [])
    cfg.model.name_or_path = checkpoint
    return cfg


def answers(found: dict) -> list[tuple[str, str]]:
    cfg = run_config(found["checkpoint"])
    template = found.get("template", cfg.data.template)
    temperature = found.get("temperature", 0.0)
    max_new_tokens = found.get("max_new_tokens", cfg.eval.max_new_tokens)
    seed = found.get("seed", cfg.seed)
    images = [open_image(str(path), Path.cwd(), f"image={path}") for path in found["image"]]
    _, model, processor, device = model_for_inference(cfg)
    examples = [Example(question=question, answer="", images=images) for question in found["question"]]
    dataset = EncodedDataset(examples, processor, template, with_response=False)
    batch = Collator(processor.pad_id)([dataset[i] for i in range(len(examples))]).to(device)
    torch.manual_seed(seed)
    sampling = Sampling(temperature=temperature) if temperature > 0 else None
    ids = generate_ids(model, processor, batch, max_new_tokens, sampling=sampling)
    return [(question, processor.decode(row)) for question, row in zip(found["question"], ids)]


def main(args: list[str]) -> int:
    if "-h" in args or "--help" in args:
        print(__doc__)
        return 0
    for question, answer in answers(parse(args)):
        print(f"Q: {question}\nA: {answer}\n")
    return 0
