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

from cpt.advantages import ESTIMATORS
from cpt.policy_loss import AGGREGATIONS, KL_ESTIMATORS
from cpt.prompts import TEMPLATES
from cpt.scoring import SCORERS
from cpt.synthetic import TASKS

SYNTHETIC_TASKS = list(TASKS)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

REFERENCES = ("base", "task_start")  # what the KL term pulls towards: see cpt.reference
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
    scorer: str = doc("exact | multiple_choice | numeric | yes_no | vqa (soft accuracy over the reference answers) | "
                      "iou (box overlap).", "exact")
    image_dir: Optional[str] = doc("Directory relative image paths are resolved against; null = the file's "
                                   "directory.", None)


@dataclass
class DataConfig:
    batch_size: int = doc("Training examples per device per step (prompts per rollout batch under rft).", 16)
    num_workers: int = doc("DataLoader worker processes.", 0)
    template: str = doc("Prompt template of training and evaluation: direct (answer in \\boxed{}) | cot "
                        "(reasoning in <think></think>, then the boxed answer).", "direct")
    image_size: int = doc("Side of the synthetic benchmark's square images, in pixels.", 64)
    train_size: int = doc("Training examples per synthetic task.", 4000)
    eval_size: int = doc("Evaluation examples per synthetic task.", 64)
    general_size: int = doc("Examples in the synthetic general-knowledge set.", 128)


@dataclass
class EvalConfig:
    batch_size: int = doc("Prompts decoded at once during evaluation.", 64)
    max_new_tokens: int = doc("Longest greedy completion during evaluation.", 32)
    general: bool = doc("Also evaluate the general-knowledge set after every task.", True)


@dataclass
class KLConfig:
    coef: float = doc("beta, the weight of the KL to the reference policy (the study: 0.01). 0 turns the term off "
                      "and loads no reference.", 0.01)
    estimator: str = doc("k1 | k2 | k3 (k3 is the study's `low_var_kl`).", "k3")
    placement: str = doc("loss (added per token to the policy loss, as in GRPO) | reward (beta times the "
                         "completion's summed KL is subtracted from its reward before advantages).", "loss")
    reference: str = doc("base (the model before the first task) | task_start (the model as the current task "
                         "began).", "base")


@dataclass
class RewardConfig:
    function: str = doc("Reward function by import path, `package.module:function` or `path/file.py:function`, "
                        "called as fn(completion, example, scorer=, template=) -> {component: value}.",
                        "cpt.rewards:task_reward")
    weights: Optional[dict[str, float]] = doc("Weight of each named component in the total reward; a component "
                                              "with weight 0 is only logged. null = {accuracy: 0.9, format: 0.1}, "
                                              "the study's; a value given replaces it whole.", None)


@dataclass
class RFTConfig:
    group_size: int = doc("Rollouts sampled per prompt (G); data.batch_size prompts make a rollout batch.", 8)
    temperature: float = doc("Sampling temperature of the rollouts.", 1.0)
    top_p: float = doc("Nucleus sampling of the rollouts.", 0.99)
    max_new_tokens: int = doc("Longest rollout; a completion that reaches it without ending is truncated.", 32)
    advantage: str = doc("grpo (group mean and std) | drgrpo (mean only, no std division; pair with "
                         "loss_aggregation=seq_mean or token_mean as you prefer) | rloo (leave-one-out mean) | "
                         "remax (greedy completion's reward as baseline).", "grpo")
    clip_low: float = doc("Lower clip of the probability ratio: 1 - clip_low.", 0.2)
    clip_high: float = doc("Upper clip of the probability ratio: 1 + clip_high (DAPO's clip-higher).", 0.28)
    epochs: int = doc("Policy epochs (mu) over each rollout batch: optimizer steps per batch of rollouts.", 1)
    loss_aggregation: str = doc("token_mean (every completion token of a rank's rollouts weighs the same) | "
                                "seq_mean (every completion weighs the same).", "token_mean")
    mask_truncated: bool = doc("Leave completions cut off at max_new_tokens out of the loss.", False)
    micro_batch_size: Optional[int] = doc("Rollouts per forward/backward pass (gradients accumulate over the "
                                          "rollout batch); null = all at once.", None)
    kl: KLConfig = doc("KL regularisation towards a reference policy.", factory=KLConfig)
    reward: RewardConfig = doc("The reward function and its weights.", factory=RewardConfig)


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
    method: str = doc("Training paradigm: sft (supervised fine-tuning) | rft (reinforcement fine-tuning, GRPO family).",
                      "sft")
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
    rft: RFTConfig = doc("Reinforcement fine-tuning (method=rft).", factory=RFTConfig)
    eval: EvalConfig = doc("Evaluation on every task after every task.", factory=EvalConfig)
    trainer: TrainerConfig = doc("Passed to lightning.Trainer.", factory=TrainerConfig)


CHOICES = {
    "method": ("sft", "rft"),
    "model.finetune": ("lora", "qlora", "full"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.attn_implementation": ("auto", "sdpa", "eager", "flash_attention_2"),
    "logger": ("csv", "tensorboard", "wandb", "none"),
    "data.template": tuple(TEMPLATES),
    "rft.advantage": ESTIMATORS,
    "rft.loss_aggregation": AGGREGATIONS,
    "rft.kl.estimator": KL_ESTIMATORS,
    "rft.kl.placement": ("loss", "reward"),
    "rft.kl.reference": REFERENCES,
}
POSITIVE = ("steps_per_task", "data.batch_size", "eval.batch_size", "eval.max_new_tokens", "data.eval_size",
            "data.train_size", "data.general_size", "trainer.accumulate_grad_batches", "foundation.steps",
            "foundation.batch_size", "rft.group_size", "rft.max_new_tokens", "rft.epochs", "rft.temperature",
            "rft.micro_batch_size")


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
        value = OmegaConf.select(cfg, key)
        if value is not None and value <= 0:  # null is allowed where the schema allows it
            raise ConfigError(f"bad value for {key!r}: must be positive, got {value}")
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
    if cfg.method == "rft":
        _validate_rft(cfg)
    if cfg.trainer.strategy == "fsdp":
        if cfg.model.finetune == "qlora":
            raise ConfigError("model.finetune=qlora cannot be sharded with trainer.strategy=fsdp (4-bit weights); "
                              "use lora with fsdp, or qlora on one device")
        devices = cfg.trainer.devices
        if not ((isinstance(devices, int) and devices > 0) or (OmegaConf.is_list(devices) and len(devices) > 0)):
            raise ConfigError(f"trainer.strategy=fsdp needs trainer.devices as a positive number or a list of "
                              f"device ids, got {devices!r}")


def _validate_rft(cfg: DictConfig) -> None:
    rft = cfg.rft
    if rft.group_size < 2 and rft.advantage != "remax":
        raise ConfigError(f"rft.advantage={rft.advantage} compares rollouts within a group: set rft.group_size >= 2")
    if not 0 < rft.top_p <= 1:
        raise ConfigError(f"bad value for 'rft.top_p': must be in (0, 1], got {rft.top_p}")
    if rft.clip_low < 0 or rft.clip_high < 0 or rft.clip_low >= 1:
        raise ConfigError(f"rft.clip_low must be in [0, 1) and rft.clip_high >= 0, got {rft.clip_low}, {rft.clip_high}")
    if rft.kl.coef < 0:
        raise ConfigError(f"bad value for 'rft.kl.coef': must be >= 0, got {rft.kl.coef}")
    if rft.reward.weights is not None and not any(rft.reward.weights.values()):
        raise ConfigError("rft.reward.weights gives no component a non-zero weight")
    if rft.kl.coef > 0 and rft.kl.estimator == "k1" and rft.kl.placement == "loss":
        raise ConfigError("rft.kl.estimator=k1 in the loss has zero expected gradient (E[grad log p] = 0): use k1 "
                          "with rft.kl.placement=reward, or k2/k3 in the loss")
    if cfg.trainer.precision in ("16-mixed", "16"):
        raise ConfigError("method=rft clips gradients itself, before the float16 loss scale is removed: use "
                          "trainer.precision=bf16-mixed or 32-true")
    if cfg.trainer.accumulate_grad_batches != 1:
        raise ConfigError("method=rft steps the optimizer itself: keep trainer.accumulate_grad_batches=1 and set "
                          "rft.micro_batch_size to split a rollout batch into smaller passes")


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
