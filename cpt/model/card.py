"""The model card (README.md) of a stage directory: what the model is, how it was trained, how it did after this
stage, and how to load it, so that the directory explains itself away from its run."""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf


def model_card(cfg: DictConfig, stage: int, stage_name: str, summary: dict, adapters: bool, base: str,
               family: str) -> str:
    """Markdown for the directory saved after stage `stage` (0-based) of the run `cfg`, whose results so far are
    `summary` (cpt.eval.results.summarize); `adapters`: LoRA adapters on `base` rather than whole weights; `family`:
    the backbone family's name in prose."""
    stages = len(summary.get("stages") or summary["tasks"])
    kind = f"LoRA adapters (peft) on `{base}`" if adapters else "the whole model (transformers)"
    lines = [f"# {summary.get('name') or cfg.method}: stage {stage + 1} of {stages} ({stage_name})", "",
             f"{family} after continual post-training with `cpt` ({cfg.method}, {cfg.schedule}), seed {cfg.seed}. "
             f"This directory holds {kind}, the processor with its chat template, and the generation config.", ""]
    rows = summary["accuracy_matrix"]
    if stage + 1 < len(rows):
        row, general = rows[stage + 1], summary["general"][stage + 1] if stage + 1 < len(summary["general"]) else None
        names = [*summary["tasks"], *(["general"] if general is not None else [])]
        values = [*row, *([general] if general is not None else [])]
        lines += ["## Accuracy after this stage (%)", "", "| " + " | ".join(names) + " |",
                  "|" + "---|" * len(names), "| " + " | ".join(_cell(v) for v in values) + " |", ""]
    lines += ["## Use", "", "```bash",
              "python -m cpt fit model.name_or_path=<this directory> ...   # a new sequence from this stage",
              "```", "",
              "A LoRA stage starts the new sequence from its base with these adapters merged in." if adapters else
              "Loads with `AutoModelForImageTextToText.from_pretrained` and `AutoProcessor.from_pretrained`.", "",
              "## Configuration of the run", "", "```yaml", OmegaConf.to_yaml(cfg).rstrip(), "```", ""]
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"
