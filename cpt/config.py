"""The run configuration: a typed schema, merged with a YAML file and `key=value` overrides.

Every field is documented once, here, in its `help`; `python -m cpt fit --help` prints them. Unknown keys and
wrong types raise ConfigError naming the key and the nearest valid ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from cpt.prompts import TEMPLATES
from cpt.scoring import SCORERS
from cpt.synthetic import TASKS

SYNTHETIC_TASKS = list(TASKS)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

RUN_TIME_ENV = "CPT_RUN_TIME"


def _run_time(pattern: str) -> str:
    """`${now:%Y%m%d-%H%M%S}`: the time in $CPT_RUN_TIME if set, else now. The CLI sets it once, and the
    processes Lightning launches for other ranks (which re-read the config) inherit it: one run directory."""
    stamp = os.environ.get(RUN_TIME_ENV) or datetime.now().isoformat(timespec="seconds")
    return datetime.fromisoformat(stamp).strftime(pattern)


OmegaConf.register_resolver("now", _run_time, replace=True)


def doc(help: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field carrying its help text."""
    return field(default=default, default_factory=factory, metadata={"help": help})


@dataclass
class LoraConfig:
    r: int = doc("LoRA rank.", 16)
    alpha: int = doc("LoRA scaling numerator (scale = alpha / r).", 32)
    dropout: float = doc("Dropout on the LoRA input.", 0.0)
    target_modules: list[str] = doc("Linear layers of the language model that get adapters.", factory=lambda: list(LORA_TARGETS))
    vision: bool = doc("Also put adapters on the vision tower's attention and MLP.", False)


@dataclass
class ModelConfig:
    name_or_path: str = doc("`tiny` (built-in toy foundation model), `qwen2.5-vl-7b` (published shape, random "
                            "weights: for sizing and speed), or a local checkpoint directory.", "tiny")
    finetune: str = doc("lora | qlora (4-bit NF4 base + LoRA) | full.", "full")
    dtype: str = doc("Weight dtype: float32 | bfloat16 | float16.", "float32")
    attn_implementation: str = doc("auto (flash_attention_2 when installed and on CUDA, else sdpa) | sdpa | eager | "
                                   "flash_attention_2.", "auto")
    gradient_checkpointing: bool = doc("Recompute activations in the backward pass to save memory.", False)
    freeze_vision: bool = doc("Keep the vision tower's weights fixed (full fine-tuning; LoRA freezes all base "
                              "weights anyway).", False)
    min_pixels: Optional[int] = doc("Smallest image area after resizing (pixels); null keeps the checkpoint's.", None)
    max_pixels: Optional[int] = doc("Largest image area after resizing (pixels); null keeps the checkpoint's.", None)
    lora: LoraConfig = doc("LoRA settings (lora and qlora).", factory=LoraConfig)


@dataclass
class FoundationConfig:
    steps: int = doc("Pre-training steps of the `tiny` toy foundation model (cached after the first run).", 1000)
    batch_size: int = doc("Pre-training batch size.", 32)
    lr: float = doc("Pre-training peak learning rate.", 1e-3)
    task_share: float = doc("Second pre-training stage: examples in the downstream tasks' format, as a fraction "
                            "of the general multiple-choice pool's size (gives the base some zero-shot ability).", 0.2)
    seed: int = doc("Seed of the toy foundation model (independent of the run seed, like a real base model).", 0)
    cache_dir: Optional[str] = doc("Where the toy foundation model is cached; null = $CPT_CACHE_DIR or "
                                   "~/.cache/cpt.", None)


@dataclass
class OptimConfig:
    lr: float = doc("Peak learning rate of AdamW.", 5e-4)
    weight_decay: float = doc("AdamW weight decay.", 0.0)
    warmup_ratio: float = doc("Fraction of each task's steps spent warming up linearly from 0.", 0.1)
    min_lr_ratio: float = doc("Learning rate at the end of each task's cosine decay, relative to lr.", 0.1)
    reset_per_task: bool = doc("Start each task with fresh AdamW moments, as separate fine-tuning runs would.", True)


@dataclass
class LocalTaskConfig:
    train: str = doc("Training rows in the EasyR1 format (problem, answer, images, optional choices): "
                     "a .json/.jsonl/.parquet file or a `datasets` directory.")
    eval: str = doc("Evaluation rows, same format.")
    scorer: str = doc("exact | multiple_choice | numeric.", "exact")
    image_dir: Optional[str] = doc("Directory relative image paths are resolved against; null = the file's "
                                   "directory.", None)


@dataclass
class DataConfig:
    batch_size: int = doc("Training examples per device per step.", 16)
    num_workers: int = doc("DataLoader worker processes.", 0)
    template: str = doc("Prompt template: direct (answer in \\boxed{}).", "direct")
    image_size: int = doc("Side of the synthetic benchmark's square images, in pixels.", 64)
    train_size: int = doc("Training examples per synthetic task.", 4000)
    eval_size: int = doc("Evaluation examples per synthetic task.", 64)
    general_size: int = doc("Examples in the synthetic general-knowledge set.", 128)


@dataclass
class EvalConfig:
    batch_size: int = doc("Prompts decoded at once during evaluation.", 64)
    max_new_tokens: int = doc("Longest greedy completion during evaluation.", 12)
    general: bool = doc("Also evaluate the general-knowledge set after every task.", True)


@dataclass
class TrainerConfig:
    accelerator: str = doc("cpu | gpu | auto (passed to lightning.Trainer).", "auto")
    devices: Any = doc("Number of devices, a list of ids, or auto.", 1)
    num_nodes: int = doc("Number of machines.", 1)
    strategy: str = doc("auto | ddp | fsdp (FSDP2 sharding of decoder layers and vision blocks) | any Lightning "
                        "strategy name.", "auto")
    precision: str = doc("32-true | bf16-mixed | bf16-true | 16-mixed ...", "32-true")
    accumulate_grad_batches: int = doc("Batches per optimizer step.", 1)
    gradient_clip_val: Optional[float] = doc("Clip the gradient norm to this value; null disables.", 1.0)
    log_every_n_steps: int = doc("How often training metrics are logged.", 5)
    enable_progress_bar: bool = doc("Show the progress bar.", True)


@dataclass
class Config:
    method: str = doc("Training paradigm: sft.", "sft")
    output_dir: str = doc("Run directory: resolved config, checkpoints, logs and results.",
                          "runs/${method}-${now:%Y%m%d-%H%M%S}")
    seed: int = doc("Seed for data order, initialisation of adapters and sampling.", 0)
    tasks: list[str] = doc("The task sequence, in order: synthetic task names (" + ", ".join(SYNTHETIC_TASKS) +
                           ") or names defined under local_tasks.", factory=lambda: list(SYNTHETIC_TASKS))
    steps_per_task: int = doc("Optimizer steps spent on each task.", 100)
    local_tasks: dict[str, LocalTaskConfig] = doc("Tasks read from local files, by name.", factory=dict)
    logger: str = doc("csv | tensorboard | wandb | none.", "csv")
    callbacks: list[str] = doc("Extra callbacks by import path (`package.module:Class`), added to the built-in "
                               "ones.", factory=list)
    save_checkpoints: bool = doc("Save the adapters (or full weights) after each task.", True)
    model: ModelConfig = doc("The Qwen2.5-VL backbone.", factory=ModelConfig)
    foundation: FoundationConfig = doc("The `tiny` preset's toy pre-training.", factory=FoundationConfig)
    optim: OptimConfig = doc("Optimizer and per-task schedule.", factory=OptimConfig)
    data: DataConfig = doc("Batches, prompts and the synthetic benchmark.", factory=DataConfig)
    eval: EvalConfig = doc("Evaluation on every task after every task.", factory=EvalConfig)
    trainer: TrainerConfig = doc("Passed to lightning.Trainer.", factory=TrainerConfig)


CHOICES = {
    "method": ("sft",),
    "model.finetune": ("lora", "qlora", "full"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.attn_implementation": ("auto", "sdpa", "eager", "flash_attention_2"),
    "logger": ("csv", "tensorboard", "wandb", "none"),
    "data.template": tuple(TEMPLATES),
}
POSITIVE = ("steps_per_task", "data.batch_size", "eval.batch_size", "eval.max_new_tokens", "data.eval_size",
            "data.train_size", "data.general_size", "trainer.accumulate_grad_batches", "foundation.steps",
            "foundation.batch_size")


class ConfigError(ValueError):
    """A configuration problem a user can fix; the CLI prints it and exits with code 2."""


def field_docs(schema: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every field of the schema, sections included."""
    rows = []
    for f in dataclasses.fields(schema):
        key, help = prefix + f.name, f.metadata.get("help", "")
        factory = f.default_factory
        if isinstance(factory, type) and dataclasses.is_dataclass(factory):
            rows.append((key, "", help))
            rows.extend(field_docs(factory, key + "."))
            continue
        default = f.default if factory is dataclasses.MISSING else factory()
        rows.append((key, "(required)" if default is dataclasses.MISSING else str(default), help))
    return rows


def _suggest(key: str) -> str:
    """The valid keys nearest to a mistyped one, by the whole dotted key and by its last part."""
    keys = [k for k, _, _ in field_docs()]
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
    leaf = key.rsplit(".", 1)[-1]
    close += [k for k in keys if k not in close
              and difflib.SequenceMatcher(None, leaf, k.rsplit(".", 1)[-1]).ratio() >= 0.75]
    return ", ".join(close[:4]) if close else "see `python -m cpt fit --help`"


def _parse_overrides(overrides: list[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not key=value (e.g. steps_per_task=20)")
    try:
        return OmegaConf.from_dotlist(overrides)
    except OmegaConfBaseException as error:
        raise ConfigError(f"cannot parse overrides: {error}") from None


def _load_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        loaded = OmegaConf.load(path)
    except Exception as error:  # yaml.YAMLError and friends
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from None
    return loaded


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> DictConfig:
    """Schema defaults <- YAML file <- overrides, validated; interpolations resolved."""
    merged = OmegaConf.structured(Config)
    sources = ([_load_yaml(Path(path))] if path is not None else []) + [_parse_overrides(list(overrides))]
    for source in sources:
        try:
            merged = OmegaConf.merge(merged, source)
        except OmegaConfBaseException as error:
            key = getattr(error, "full_key", None) or "?"
            if isinstance(error, ConfigKeyError):
                raise ConfigError(f"unknown key {key!r}; did you mean: {_suggest(key)}") from None
            message = str(error).splitlines()[0]
            raise ConfigError(f"bad value for {key!r}: {message}") from None
    try:
        OmegaConf.resolve(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(f"cannot resolve {getattr(error, 'full_key', '?')!r}: {str(error).splitlines()[0]}") from None
    _validate(merged)
    return merged


def _validate(cfg: DictConfig) -> None:
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"bad value for {key!r}: {value!r}; choose one of {', '.join(allowed)}")
    for key in POSITIVE:
        if OmegaConf.select(cfg, key) <= 0:
            raise ConfigError(f"bad value for {key!r}: must be positive, got {OmegaConf.select(cfg, key)}")
    if not cfg.tasks:
        raise ConfigError("`tasks` is empty: name at least one task")
    known = set(SYNTHETIC_TASKS) | set(cfg.local_tasks)
    for name in cfg.tasks:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"did you mean: {', '.join(close)}" if close else f"known: {', '.join(sorted(known))}"
            raise ConfigError(f"unknown task {name!r} in `tasks`; {hint} (or define it under local_tasks)")
    if len(set(cfg.tasks)) != len(cfg.tasks):
        raise ConfigError("`tasks` names a task twice; each task appears once in a sequence")
    for name, spec in cfg.local_tasks.items():
        if spec.scorer not in SCORERS:
            raise ConfigError(f"bad value for 'local_tasks.{name}.scorer': {spec.scorer!r}; choose one of "
                              f"{', '.join(SCORERS)}")
    if cfg.trainer.strategy == "fsdp":
        if cfg.model.finetune == "qlora":
            raise ConfigError("model.finetune=qlora cannot be sharded with trainer.strategy=fsdp (4-bit weights); "
                              "use lora with fsdp, or qlora on one device")
        devices = cfg.trainer.devices
        if not ((isinstance(devices, int) and devices > 0) or (OmegaConf.is_list(devices) and len(devices) > 0)):
            raise ConfigError(f"trainer.strategy=fsdp needs trainer.devices as a positive number or a list of "
                              f"device ids, got {devices!r}")


def format_help() -> str:
    lines = ["usage: python -m cpt fit [CONFIG.yaml] [key=value ...]", "",
             "Continual post-training over a task sequence. With no CONFIG, configs/default.yaml.", "",
             "Keys (dotted; defaults in brackets):"]
    for key, default, help in field_docs():
        shown = f" [{default}]" if default else ""
        lines.append(f"  {key}{shown}\n      {help}")
    return "\n".join(lines)


def save_config(cfg: DictConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path)
