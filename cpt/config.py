"""The run configuration: a typed schema, merged with a YAML file and `key=value` overrides.

Every field is documented once, here, in its `help`; `python -m cpt fit --help` prints them. Unknown keys and
wrong types raise ConfigError naming the key and the nearest valid ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from cpt.atomic import write_text
from cpt.bounds import Interval
from cpt.data.general_benchmarks import BENCHMARK_FORMATS
from cpt.data.prompts import TEMPLATES
from cpt.data.schemas import SCHEMAS
from cpt.data.scoring import SCORERS
from cpt.data.synthetic import TASKS
from cpt.errors import ConfigError
from cpt.rl.advantages import ESTIMATORS, SCALES
from cpt.rl.objectives import OBJECTIVES
from cpt.rl.policy_loss import AGGREGATIONS, KL_ESTIMATORS, REFERENCES
from cpt.run_files import read_yaml, run_of

SYNTHETIC_TASKS = list(TASKS)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

RUN_TIME_ENV = "CPT_RUN_TIME"
# configs/: inside the package when installed (pyproject maps it to cpt/configs), beside it in a checkout.
_PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"
CONFIGS = _PACKAGED_CONFIGS if _PACKAGED_CONFIGS.is_dir() else Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIGS / "default.yaml"
# What a method brings beyond the schema's defaults: its recipe fills every key here that neither the config file
# nor an override sets, so `method=rft` on configs/default.yaml (whose values are defaults, not settings) trains
# with RFT's learning rate, batch and lengths rather than SFT's. configs/rft.yaml states the same values (a test
# checks); they live here so that an install without configs/ has them too.
RECIPES: dict[str, dict[str, Any]] = {
    "rft": {"optim.lr": 5e-5, "data.batch_size": 8, "rft.group_size": 8, "rft.max_new_tokens": 16},
}
# On-policy SFT takes RFT's recipe: the two differ only in the loss, which has no KL term.
RECIPES["onpolicy_sft"] = {**RECIPES["rft"], "rft.kl.coef": 0.0}
ROLLOUT_METHODS = ("rft", "onpolicy_sft")  # the methods that sample and score rollouts (the rft section)
METHOD_LABELS = {"sft": "SFT", "rft": "RFT", "onpolicy_sft": "on-policy SFT"}


def method_label(method: str | None) -> str:
    """How tables and figures name a method."""
    return METHOD_LABELS.get(method, str(method))


def _run_time(pattern: str) -> str:
    """`${now:%Y%m%d-%H%M%S}`: the time in $CPT_RUN_TIME if set, else now. The CLI sets it once, and the
    processes Lightning launches for other ranks (which re-read the config) inherit it: one run directory."""
    stamp = os.environ.get(RUN_TIME_ENV) or datetime.now().isoformat(timespec="seconds")
    return datetime.fromisoformat(stamp).strftime(pattern)


OmegaConf.register_resolver("now", _run_time, replace=True)


def doc(help: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field carrying its help text."""
    return field(default=default, default_factory=factory, metadata={"help": help})


def number(range: str, help: str, default: Any = dataclasses.MISSING) -> Any:
    """A numeric field (or a list or mapping of numbers) with its help text and the interval its values must lie in
    (`cpt.bounds`: '[0, 1)', '(0, inf)'); every value must be finite. Every numeric field is declared this way, and
    `check_ranges` checks them all, so a new key is checked by being declared."""
    return field(default=default, metadata={"help": help, "range": Interval.parse(range)})


@dataclass
class LoraConfig:
    r: int = number("(0, inf)", "LoRA rank.", 16)
    alpha: int = number("(0, inf)", "LoRA scaling numerator (scale = alpha / r).", 32)
    dropout: float = number("[0, 1)", "Dropout on the LoRA input.", 0.0)
    target_modules: list[str] = doc("Linear layers of the language model that get adapters.",
                                    factory=lambda: list(LORA_TARGETS))
    vision: bool = doc("Also put adapters on the vision tower's attention and MLP.", False)


@dataclass
class ModelConfig:
    name_or_path: str = doc("`tiny` (built-in toy Qwen2.5-VL), `tiny-qwen3-vl` (built-in toy Qwen3-VL), "
                            "`tiny-qwen3.5` (built-in toy Qwen3.5), `small`, `small-qwen3-vl` and `small-qwen3.5` "
                            "(the same toys 5 to 7 times larger), a published shape with random weights for sizing "
                            "and speed (`qwen2.5-vl-3b`, `qwen2.5-vl-7b`, `qwen3-vl-4b`, `qwen3-vl-8b`, "
                            "`qwen3.5-0.8b`, `qwen3.5-2b`, `qwen3.5-4b`, `qwen3.5-9b`, `qwen3.5-27b`), or a local "
                            "Qwen2.5-VL, Qwen3-VL or Qwen3.5 checkpoint directory.", "tiny")
    finetune: str = doc("lora | qlora (4-bit NF4 base + LoRA) | full.", "full")
    dtype: str = doc("Weight dtype: float32 | bfloat16 | float16.", "float32")
    attn_implementation: str = doc("auto (flash_attention_2 when installed, on CUDA and with half-precision "
                                   "weights, else sdpa) | sdpa | eager | flash_attention_2.", "auto")
    gradient_checkpointing: bool = doc("Recompute activations in the backward pass to save memory.", False)
    freeze_vision: bool = doc("Keep the vision tower's weights fixed (full fine-tuning; LoRA freezes all base "
                              "weights anyway).", False)
    trainable: str = doc("Which weights full fine-tuning trains, the rest frozen (the parameter-subset baseline): "
                         "all | attention (the language model's self-attention projections q, k, v, o; in a "
                         "linear-attention layer its projections) | "
                         "mlp_gate_up (its MLP gate and up projections) | language (all but the vision tower) | "
                         "vision (the vision tower only).", "all")
    min_pixels: Optional[int] = number("(0, inf)", "Smallest image area after resizing (pixels); null keeps the "
                                                   "checkpoint's.", None)
    max_pixels: Optional[int] = number("(0, inf)", "Largest image area after resizing (pixels); null keeps the "
                                                   "checkpoint's.", None)
    lora: LoraConfig = doc("LoRA settings (lora and qlora).", factory=LoraConfig)


@dataclass
class FoundationConfig:
    steps: int = number("(0, inf)", "Pre-training steps of the `tiny` toy foundation model (cached after the first "
                                    "run). 2000: at 1000, with the model's M-RoPE positions, the base counted at "
                                    "chance.", 2000)
    batch_size: int = number("(0, inf)", "Pre-training batch size.", 32)
    lr: float = number("(0, inf)", "Pre-training peak learning rate.", 1e-3)
    task_share: float = number("[0, 1]", "Second pre-training stage: examples in the downstream tasks' format, as a "
                                         "fraction of the general multiple-choice pool's size (gives the base some "
                                         "zero-shot ability: at 0.5 its sampled answers are right often enough for RFT "
                                         "to learn every task).", 0.5)
    seed: int = number("[0, 4294967295]", "Seed of the toy foundation model (independent of the run seed, like a real "
                                          "base model).", 0)
    use_shipped: bool = doc("Load the weights shipped with the package when the recipe above is theirs (the "
                            "defaults), so every machine starts from the same base; false pre-trains them here.",
                            True)
    cache_dir: Optional[str] = doc("Where the toy foundation model is cached; null = $CPT_CACHE_DIR or "
                                   "~/.cache/cpt.", None)


@dataclass
class OptimConfig:
    lr: float = number("(0, inf)", "Peak learning rate of AdamW.", 5e-4)
    weight_decay: float = number("[0, inf)", "AdamW weight decay.", 0.0)
    warmup_ratio: float = number("[0, 1]", "Fraction of each task's steps spent warming up linearly from 0.", 0.1)
    min_lr_ratio: float = number("[0, 1]", "Learning rate at the end of each task's cosine decay, relative to lr.", 0.1)
    reset_per_task: bool = doc("Start each task with fresh AdamW moments, as separate fine-tuning runs would.", True)


@dataclass
class LocalTaskConfig:
    format: str = doc("The rows' public schema: " + " | ".join(SCHEMAS) + " (see README, Real data).", "easyr1")
    path: Optional[str] = doc("The dataset's directory as downloaded (its splits are found by name), or one file; "
                              "train and eval, when given, replace it for their split.", None)
    train: Optional[str] = doc("Training rows: a .parquet/.arrow/.json/.jsonl file, a `datasets` directory, or a "
                               "directory holding them; null = path.", None)
    eval: Optional[str] = doc("Evaluation rows, the same way; null = path.", None)
    train_split: str = doc("The split trained on, where a directory holds several.", "train")
    eval_split: Optional[str] = doc("The split evaluated on; null = the format's (the one with public answers: "
                                    "test, or validation for TextVQA and VizWiz, testdev for GQA).", None)
    images: Optional[str] = doc("gqa: the images, kept apart from the questions: a directory of <imageId>.jpg or "
                                "the *_images tables.", None)
    image_dir: Optional[str] = doc("Directory relative image paths are resolved against; null = the directory of "
                                   "the file the row is in.", None)
    scorer: Optional[str] = doc("exact | multiple_choice | numeric | yes_no | vqa (soft accuracy over the human "
                                "answers) | iou (box overlap) | geometry (choice letter or value) | count (number "
                                "or attribute); null = the format's.", None)
    template: Optional[str] = doc("Prompt template of this task (direct | cot); null = data.template.", None)
    train_size: Optional[int] = number("(0, inf)", "Train on a seeded random subset of this many rows; null = all.",
                                                   None)
    eval_size: Optional[int] = number("(0, inf)", "Evaluate on a seeded random subset of this many rows; null = all.",
                                                  None)
    max_pixels: Optional[int] = number("(0, inf)", "Scale larger images down to this many pixels (aspect kept) before "
                                                   "the processor; null = as stored.", None)


@dataclass
class DataConfig:
    batch_size: int = number("(0, inf)", "Training examples per device per step (prompts per rollout batch under rft).",
                                         16)
    num_workers: int = number("[0, inf)", "DataLoader worker processes.", 0)
    template: str = doc("Prompt template of training and evaluation: direct (answer in \\boxed{}) | cot "
                        "(reasoning in <think></think>, then the boxed answer).", "direct")
    image_size: int = number("[8, inf)", "Side of the synthetic benchmark's square images, in pixels.", 64)
    train_size: int = number("(0, inf)", "Training examples per synthetic task.", 4000)
    eval_size: int = number("(0, inf)", "Evaluation examples per synthetic task.", 64)
    general_size: int = number("(0, inf)", "Examples in the synthetic general-knowledge set.", 128)
    check_rows: bool = doc("Before training, read every selected row of the local tasks (images decoded) and leave "
                           "out those that cannot be used, listed in data_check.json.", True)


@dataclass
class BenchmarkConfig:
    format: str = doc("mmmu | mmlu_pro: the public schema of the files (see README, General knowledge).")
    path: str = doc("A .parquet/.json/.jsonl file, a directory of them (MMMU: one per subject), or a `datasets` "
                    "directory.")
    image_dir: Optional[str] = doc("Directory relative image paths are resolved against; null = the file's.", None)
    limit: Optional[int] = number("(0, inf)", "Evaluate a seeded random subset of this many questions; null = all.",
                                              None)


@dataclass
class EvalConfig:
    batch_size: int = number("(0, inf)", "Prompts decoded at once during evaluation.", 64)
    max_new_tokens: int = number("(0, inf)", "Longest greedy completion during evaluation.", 32)
    general: bool = doc("Evaluate the synthetic general-knowledge set (the toy stand-in for MMMU/MMLU-Pro).", True)
    general_every: int = number("[0, inf)", "General-knowledge benchmarks run before the sequence, after every N-th "
                                            "stage and after the last; 0 = only before and after the sequence.", 1)
    benchmarks: dict[str, BenchmarkConfig] = doc("General benchmarks read from local files, by name (e.g. "
                                                 "mmmu: {format: mmmu, path: ...}); scored as multiple choice, "
                                                 "per benchmark and per category.", factory=dict)


@dataclass
class KLConfig:
    coef: float = number("[0, inf)", "beta, the weight of the KL to the reference policy (the study: 0.01). 0 turns "
                                     "the term off and loads no reference.", 0.01)
    estimator: str = doc("k1 | k2 | k3 (k3 is the study's `low_var_kl`).", "k3")
    placement: str = doc("loss (added per token to the policy loss, as in GRPO) | reward (beta times the "
                         "completion's summed KL is subtracted from its reward before advantages).", "loss")
    reference: str = doc("base (the model before the first task) | task_start (the model as the current task "
                         "began).", "base")
    importance_weighted: bool = doc("placement=loss: multiply each token's KL by the objective's importance ratio "
                                    "(per token, or per completion for gspo and luspo), so that its gradient is the "
                                    "unbiased reverse-KL gradient (DeepSeek-V3.2; TRL's use_bias_correction_kl, on "
                                    "there by default). Off: the study's plain estimate.", False)
    schedule: str = doc("constant (coef throughout) | per_task (per_task[k] during stage k) | linear (from coef "
                        "to final_coef over each stage's steps). Applied by callbacks/kl_schedule.py.", "constant")
    per_task: Optional[list[float]] = number("[0, inf)", "One beta per stage, for schedule=per_task.", None)
    final_coef: float = number("[0, inf)", "beta at the end of each stage, for schedule=linear.", 0.0)


@dataclass
class SAPOConfig:
    tau_pos: float = number("(0, inf)", "objective=sapo: the gate's temperature where the advantage is positive (TRL's "
                                        "sapo_temperature_pos).", 1.0)
    tau_neg: float = number("(0, inf)", "objective=sapo: the gate's temperature where it is not (sapo_temperature_neg; "
                                        "higher: negative updates fade faster off-policy).", 1.05)


@dataclass
class VESPOConfig:
    k_pos: float = number("[0, inf)", "objective=vespo: the power k of the gamma weight for A >= 0 (how fast a "
                                      "completion with ratio below 1 is down-weighted).", 2.0)
    lambda_pos: float = number("(0, inf)", "objective=vespo: the decay lambda for A >= 0 (how fast a ratio above 1 is "
                                           "down-weighted).", 3.0)
    k_neg: float = number("[0, inf)", "objective=vespo: k for A < 0.", 3.0)
    lambda_neg: float = number("(0, inf)", "objective=vespo: lambda for A < 0.", 2.0)


@dataclass
class EntropyConfig:
    coef: float = number("[0, inf)", "Entropy bonus: the loss less coef x the mean entropy of the next-token "
                                     "distribution over the tokens the policy loss counts (TRL's entropy_coef); 0 "
                                     "turns it off. With adaptive, the starting coefficient.", 0.0)
    adaptive: bool = doc("Adaptive entropy control (Skywork-OR1): after every optimizer step the coefficient rises "
                         "by `step` when the step's entropy was at or below `target`, else falls by it (within "
                         "[min, max]), and the bonus applies only while the last step's entropy was at or below "
                         "`target`.", False)
    target: float = number("(0, inf)", "adaptive: the entropy (nats per token) the control keeps the policy above.",
                                       0.2)
    step: float = number("(0, inf)", "adaptive: how much the coefficient moves per optimizer step.", 0.005)
    min: float = number("[0, inf)", "adaptive: the lowest coefficient.", 0.0)
    max: float = number("[0, inf)", "adaptive: the highest coefficient.", 1.0)
    top_quantile: float = number("[0, 1]", "The share of counted tokens, highest entropy first, kept in the policy "
                                           "loss and the bonus (\"Beyond the 80/20 rule\": 0.2); the KL term keeps "
                                           "every token. 1 keeps all; 0 only the highest. Token-level objectives "
                                           "only.", 1.0)


@dataclass
class RewardConfig:
    function: str = doc("Reward function by import path, `package.module:function` or `path/file.py:function`, "
                        "called as fn(completion, example, scorer=, template=) -> {component: value}.",
                        "cpt.rl.rewards:task_reward")
    weights: Optional[dict[str, float]] = number("(-inf, inf)", "Weight of each named component in the total reward; a "
                                                                "component with weight 0 is only logged. null = "
                                                                "{accuracy: 0.9, format: 0.1}, the study's; a value "
                                                                "given replaces it whole.", None)


@dataclass
class FilterConfig:
    rule: str = doc("Rollout-based instance filtering before each task (callbacks/rollout_filter.py): none | "
                    "all_wrong (drop instances none of whose k rollouts is right) | all_equal (drop those whose k "
                    "rewards are all equal: all wrong or all right) | range (drop those whose mean reward is "
                    "outside [low, high]).", "none")
    k: int = number("(0, inf)", "Rollouts per candidate instance.", 8)
    low: float = number("[0, 1]", "rule=range: lowest mean reward kept.", 0.01)
    high: float = number("[0, 1]", "rule=range: highest mean reward kept.", 0.99)
    pool_size: Optional[int] = number("(0, inf)", "Candidate instances per task (a seeded subset of its training "
                                                  "data); null = all of it. Training then draws only from the kept "
                                                  "ones.", 512)
    correct_threshold: float = number("[0, 1]", "A rollout is right when its accuracy component (the total reward if "
                                                "the reward function has none) is at least this.", 0.5)
    online: bool = doc("Also drop, from every training batch, groups whose rewards are all equal and refill "
                       "them with fresh prompts of the task (callbacks/online_filter.py).", False)
    max_retries: int = number("[0, inf)", "online: refill rounds per step at most; groups still missing are filled "
                                          "with dropped ones.", 3)


@dataclass
class RFTConfig:
    group_size: int = number("(0, inf)", "Rollouts sampled per prompt (G); data.batch_size prompts make a rollout "
                                         "batch.", 8)
    temperature: float = number("(0, inf)", "Sampling temperature of the rollouts.", 1.0)
    top_p: float = number("(0, 1]", "Nucleus sampling of the rollouts.", 0.99)
    max_new_tokens: int = number("(0, inf)", "Longest rollout; a completion that reaches it without ending is "
                                             "truncated.", 32)
    advantage: str = doc("grpo (group mean and std) | drgrpo (mean only, no std division; pair with "
                         "loss_aggregation=seq_mean or token_mean as you prefer) | rloo (leave-one-out mean) | "
                         "remax (greedy completion's reward as baseline).", "grpo")
    advantage_scale: str = doc("What the centred advantage is divided by: estimator (the estimator's own: grpo "
                               "the group's reward std, the others nothing) | group (the group's std) | batch (the std "
                               "of every reward of the step, all ranks: PPO-Lite) | none.", "estimator")
    objective: str = doc("The policy loss (cpt/rl/objectives.py; docs/rft.md): clip (PPO's clipped surrogate per "
                         "token) | gspo (one length-normalised ratio per completion, clipped whole; "
                         "loss_aggregation=seq_mean) | luspo (gspo summed over each completion's tokens; "
                         "loss_aggregation=seq_sum) | cispo (clipped importance weight without gradient, times log p) "
                         "| sapo (a soft sigmoid gate, rft.sapo) | vespo (a gamma weight of the completion's ratio, "
                         "rft.vespo). With rft.epochs=1 the ratio is 1 and all give the same gradient up to their "
                         "aggregation.", "clip")
    clip_low: float = number("[0, 1)", "Lower clip of the probability ratio: 1 - clip_low.", 0.2)
    clip_high: float = number("[0, inf)", "Upper clip of the probability ratio: 1 + clip_high (DAPO's clip-higher); "
                                          "cispo's cap on its weight (TRL's epsilon_high is 1 + clip_high there).",
                                          0.28)
    clip_delta: Optional[float] = number("(1, inf)", "Two-sided clipping (INTELLECT-2): where A < 0 the ratio is "
                                                     "also capped at delta (above 1 + clip_high); clip, gspo and "
                                                     "luspo only. null = no cap.", None)
    epochs: int = number("(0, inf)", "Policy epochs (mu) over each rollout batch: optimizer steps per batch of "
                                     "rollouts.", 1)
    loss_aggregation: str = doc("token_mean (every completion token of a rank's rollouts weighs the same) | "
                                "seq_mean (every completion weighs the same) | seq_sum (a completion weighs by its "
                                "length; luspo) | max_length (tokens summed over rollouts x max_new_tokens: Dr. "
                                "GRPO's constant).", "token_mean")
    mask_truncated: bool = doc("Leave completions cut off at max_new_tokens out of the loss.", False)
    micro_batch_size: Optional[int] = number("(0, inf)", "Rollouts per forward/backward pass (gradients accumulate "
                                                         "over the rollout batch); null = all at once.", None)
    shared_prefix: bool = doc("Encode each prompt (its images included) once per group: one prefill for its G "
                              "rollouts, and one prompt forward for its G completions in the log-probability "
                              "passes; false repeats the prompt on every row (the slower reference path).", True)
    log_prob_chunk: Optional[int] = number("(0, inf)", "Completion tokens whose vocabulary-wide logits exist at once "
                                                       "when log-probabilities and entropy are computed (recomputed in "
                                                       "the backward pass); null = all of a micro-batch's at once.",
                                                       1024)
    sapo: SAPOConfig = doc("objective=sapo's temperatures.", factory=SAPOConfig)
    vespo: VESPOConfig = doc("objective=vespo's gamma weights.", factory=VESPOConfig)
    entropy: EntropyConfig = doc("An entropy bonus, its adaptive control, and high-entropy token selection.",
                                 factory=EntropyConfig)
    kl: KLConfig = doc("KL regularisation towards a reference policy.", factory=KLConfig)
    reward: RewardConfig = doc("The reward function and its weights.", factory=RewardConfig)
    filter: FilterConfig = doc("Rollout-based instance filtering, before each task and/or online.",
                               factory=FilterConfig)


@dataclass
class ReplayConfig:
    fraction: float = number("[0, 1)", "Experience replay (callbacks/replay.py): this share of every training batch is "
                                       "drawn from earlier tasks' data; 0 turns replay off.", 0.0)
    buffer_per_task: int = number("(0, inf)", "Examples of each finished task kept for replay (a seeded subset).", 500)


@dataclass
class DERConfig:
    weight: float = number("[0, inf)", "Dark Experience Replay (callbacks/der.py; method=sft): a reservoir buffer of "
                                       "the examples trained on, each with the logits the model gave it then; every "
                                       "step the loss gains weight x the mean squared difference between the model's "
                                       "logits on a buffer sample's answers and the stored ones (DER's alpha; 0.5 as "
                                       "MLLM-CTBench); 0 turns it off.", 0.0)
    label_weight: float = number("[0, inf)", "der: DER++'s beta, the weight of the cross-entropy on a second buffer "
                                             "sample's answers; 0 is plain DER.", 0.0)
    buffer_size: int = number("(0, inf)", "der: examples the reservoir keeps, over all tasks.", 500)
    batch_size: Optional[int] = number("(0, inf)", "der: buffer examples replayed per step (each sample); null = "
                                                   "data.batch_size.", None)
    top_k: Optional[int] = number("(0, inf)", "der: keep only each answer token's k largest logits (with their ids) "
                                              "and pull those; null keeps the whole output. A memory saver for large "
                                              "vocabularies (152k: 600 KB per token); the pull on each kept logit "
                                              "stays that of the whole-output MSE.", None)


@dataclass
class RegularizerConfig:
    kind: str = doc("Pull the weights towards the previous stage's (callbacks/regularizer.py), a term of every "
                    "method's loss: none | ewc (weighted by a diagonal Fisher; method=sft) | mas (weighted by the "
                    "output's sensitivity, Memory Aware Synapses; any method) | l2.", "none")
    strength: float = number("[0, inf)", "lambda: the penalty is lambda/2 * sum F (theta - theta*)^2 (F = 1 for l2; "
                                         "for ewc, each stage's diagonal Fisher, for mas its output sensitivity, "
                                         "normalised to mean 1 and summed over the stages).", 1.0)
    fisher_batches: int = number("(0, inf)", "ewc and mas: training batches of the finished stage the importance is "
                                             "estimated on.", 16)


@dataclass
class LwFConfig:
    weight: float = number("[0, inf)", "Learning without Forgetting (callbacks/lwf.py): from the second stage on, the "
                                       "loss gains weight x the mean KL(teacher || model) over the step's targets at "
                                       "`temperature`, the teacher being the model as the stage began; 0 turns it off.",
                                       0.0)
    temperature: float = number("(0, inf)", "lwf: the temperature both distributions are softened by (LwF's T = 2).",
                                            2.0)


@dataclass
class OLoRAConfig:
    enabled: bool = doc("O-LoRA (callbacks/olora.py; model.finetune=lora or qlora): a new LoRA adapter per stage, "
                        "the earlier ones frozen and kept in the model, which after stage t is the base plus the "
                        "adapters of stages 1..t.", False)
    orthogonal: float = number("[0, inf)", "olora: lambda1, the weight of the sum over layers of |A_old A_new^T| (the "
                                           "new adapter's A against the earlier ones').", 0.5)
    l2: float = number("[0, inf)", "olora: lambda2, the weight of the L2 norms of the new adapter's matrices (O-LoRA's "
                                   "scripts: 0).", 0.0)


@dataclass
class MoELoRAConfig:
    enabled: bool = doc("MoELoRA (cpt/model/moe_lora.py; model.finetune=lora): each LoRA's rank split into experts "
                        "mixed per token by a router per layer, as CoIN; model.lora.r and alpha are the whole "
                        "adapter's.", False)
    experts: int = number("(0, inf)", "moe_lora: experts per layer (CoIN's scripts: 2); model.lora.r must be a "
                                      "multiple.", 2)


@dataclass
class InterpolationConfig:
    weight: float = number("[0, 1]", "Weight interpolation with the previous stage, WiSE-FT-style model merging "
                                     "(callbacks/interpolation.py): after each stage the weights become (1 - weight) x "
                                     "those the stage started from + weight x the trained ones; 1 keeps the trained "
                                     "model (off).", 1.0)


@dataclass
class MagMaXConfig:
    enabled: bool = doc("MagMaX (callbacks/magmax.py; model.finetune=full), MLLM-CTBench's merging baseline: train "
                        "sequentially, and after each task evaluate (and save) the base plus scale x the element-wise "
                        "largest of the task vectors theta_t - theta_0 so far; the next task trains on from the "
                        "unmerged weights.", False)
    scale: float = number("(0, inf)", "magmax: the scaling coefficient of the merged task vector (the authors' 0.5).",
                                      0.5)


@dataclass
class AnalysisConfig:
    enabled: bool = doc("Record why forgetting happens (callbacks/analysis.py): per stage, the parameter update "
                        "by module group and its sparsity, the reward variance, the update weighed by the earlier "
                        "tasks' Fisher, the KL to the base model on every task's prompts (the new task's "
                        "included), the forgetting the stage caused and the examples it broke or mended; writes "
                        "analysis.json and analysis.png.", False)
    probe_size: int = number("(0, inf)", "Prompts per task the KL to the base model (and the earlier tasks' Fisher) is "
                                         "estimated on.", 16)


@dataclass
class TrainerConfig:
    accelerator: str = doc("cpu | gpu | auto (passed to lightning.Trainer).", "auto")
    devices: Any = doc("Number of devices, a list of ids, or auto.", 1)
    num_nodes: int = number("(0, inf)", "Number of machines.", 1)
    strategy: str = doc("auto | ddp | fsdp (FSDP2 sharding of decoder layers and vision blocks) | any Lightning "
                        "strategy name.", "auto")
    precision: str = doc("32-true | bf16-mixed | bf16-true | 16-mixed ...", "32-true")
    accumulate_grad_batches: int = number("(0, inf)", "Batches per optimizer step.", 1)
    gradient_clip_val: Optional[float] = number("(0, inf)", "Clip the gradient norm to this value; null disables.", 1.0)
    log_every_n_steps: int = number("(0, inf)", "How often training metrics are logged.", 5)
    enable_progress_bar: bool = doc("Show the progress bar.", True)


@dataclass
class Config:
    method: str = doc("Training paradigm: sft (supervised fine-tuning) | rft (reinforcement fine-tuning, GRPO family) "
                      "| onpolicy_sft (SFT on the model's own right rollouts, sampled and scored as rft's).", "sft")
    schedule: str = doc("sequential (one stage per task, in order) | multitask (all tasks mixed in one stage of "
                        "steps_per_task x tasks steps: the upper bound).", "sequential")
    name: Optional[str] = doc("Label of the run in results.json and `cpt compare`; null = '<method> <schedule>'.",
                              None)
    output_dir: str = doc("Run directory: resolved config, checkpoints, logs and results.",
                          "runs/${method}-${now:%Y%m%d-%H%M%S}")
    seed: int = number("[0, 4294967295]", "Seed for data order, initialisation of adapters and sampling.", 0)
    tasks: list[str] = doc("The task sequence, in order: synthetic task names (" + ", ".join(SYNTHETIC_TASKS) +
                           ") or names defined under local_tasks.", factory=lambda: list(SYNTHETIC_TASKS))
    steps_per_task: int = number("(0, inf)", "Training steps spent on each task (a multitask stage gets this times the "
                                             "tasks).", 100)
    local_tasks: dict[str, LocalTaskConfig] = doc("Tasks read from local files, by name.", factory=dict)
    logger: str = doc("csv | tensorboard | wandb | none.", "csv")
    callbacks: list[Any] = doc("Extra callbacks, added to the built-in ones: an import path "
                               "(`package.module:Class`, built without arguments) or a mapping {class: "
                               "package.module:Class, <argument>: <value>, ...}.", factory=list)
    save_checkpoints: bool = doc("Save the adapters (or full weights) after each task, and the training state "
                                 "a stopped run resumes from (checkpoints/last.ckpt).", True)
    resume: bool = doc("Continue the run in output_dir after its last finished stage, from checkpoints/last.ckpt: "
                       "`python -m cpt fit <run dir>/config.yaml resume=true`.", False)
    overwrite: bool = doc("Replace the run output_dir holds (its results, checkpoints and logs are deleted); "
                          "without it `fit` refuses a directory that holds a run.", False)
    model: ModelConfig = doc("The backbone (Qwen2.5-VL or Qwen3-VL).", factory=ModelConfig)
    foundation: FoundationConfig = doc("The tiny presets' toy pre-training.", factory=FoundationConfig)
    optim: OptimConfig = doc("Optimizer and per-task schedule.", factory=OptimConfig)
    data: DataConfig = doc("Batches, prompts and the synthetic benchmark.", factory=DataConfig)
    rft: RFTConfig = doc("Reinforcement fine-tuning (method=rft).", factory=RFTConfig)
    replay: ReplayConfig = doc("Experience replay of earlier tasks' data.", factory=ReplayConfig)
    der: DERConfig = doc("Dark Experience Replay: replay with the outputs recorded when the examples were learnt.",
                         factory=DERConfig)
    lwf: LwFConfig = doc("Learning without Forgetting: distillation from the model as each stage began.",
                         factory=LwFConfig)
    olora: OLoRAConfig = doc("O-LoRA: an adapter per stage, orthogonal to the earlier ones.", factory=OLoRAConfig)
    moe_lora: MoELoRAConfig = doc("MoELoRA: a LoRA rank split into experts with a token router.",
                                  factory=MoELoRAConfig)
    interpolation: InterpolationConfig = doc("Weight interpolation with the weights each stage started from.",
                                             factory=InterpolationConfig)
    magmax: MagMaXConfig = doc("MagMaX: task vectors merged by their largest magnitude.", factory=MagMaXConfig)
    regularizer: RegularizerConfig = doc("A parameter regularizer towards the previous stage's weights.",
                                         factory=RegularizerConfig)
    analysis: AnalysisConfig = doc("What moved the model, per stage.", factory=AnalysisConfig)
    eval: EvalConfig = doc("Evaluation on every task after every task.", factory=EvalConfig)
    trainer: TrainerConfig = doc("Passed to lightning.Trainer.", factory=TrainerConfig)


CHOICES = {
    "method": ("sft", *ROLLOUT_METHODS),
    "schedule": ("sequential", "multitask"),
    "model.finetune": ("lora", "qlora", "full"),
    "model.trainable": ("all", "attention", "mlp_gate_up", "language", "vision"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.attn_implementation": ("auto", "sdpa", "eager", "flash_attention_2"),
    "logger": ("csv", "tensorboard", "wandb", "none"),
    "data.template": tuple(TEMPLATES),
    "rft.advantage": ESTIMATORS,
    "rft.loss_aggregation": AGGREGATIONS,
    "rft.objective": OBJECTIVES,
    "rft.advantage_scale": ("estimator", *SCALES),
    "rft.kl.estimator": KL_ESTIMATORS,
    "rft.kl.placement": ("loss", "reward"),
    "rft.kl.reference": REFERENCES,
    "rft.kl.schedule": ("constant", "per_task", "linear"),
    "rft.filter.rule": ("none", "all_wrong", "all_equal", "range"),
    "regularizer.kind": ("none", "ewc", "mas", "l2"),
}
# Lightning's precision names that our stack runs (transformer-engine needs NVIDIA's library, not a dependency).
PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "bf16", "16-mixed", "16-true", "16", "64-true", "64")
# Those that run under autocast with Lightning's mixed-precision plugin ("16" and "bf16" are its aliases).
MIXED_PRECISIONS = ("bf16-mixed", "bf16", "16-mixed", "16")
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
    except (OmegaConfBaseException, yaml.YAMLError, ValueError) as error:
        first = " ".join(str(error).split())[:200]
        raise ConfigError(f"cannot parse the overrides {' '.join(overrides)!r}: {first} (a list is written "
                          "key=[a,b], a text with spaces or brackets in quotes)") from None


def _load_yaml(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, DictConfig]]:
    """The file's settings, preceded by those of the config it names as `base:` (a path relative to it), so
    that an experiment config states only what differs from its base; each with its resolved path."""
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    if path.resolve() in seen:
        raise ConfigError(f"config file {str(path)!r} is its own base (a cycle of `base:` keys)")
    if run_of(path) is not None:  # a run's own config.yaml: damaged, it is a run file, with its own next step
        loaded = read_yaml(path)
    else:
        try:
            loaded = OmegaConf.load(path)
            plain = yaml.safe_load(path.read_text())  # OmegaConf reads a lone text as a key with no value
        except Exception as error:  # yaml.YAMLError and friends
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from None
        if plain is not None and not isinstance(plain, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys, not a "
                              f"{type(plain).__name__}")
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys, not a list")
    base = loaded.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"config file {str(path)!r}: base must name one config file (a path relative to this "
                          f"one), got {OmegaConf.to_container(base) if OmegaConf.is_config(base) else base!r}")
    if base is None:
        return [(path.resolve(), loaded)]
    return _load_yaml(path.parent / str(base), (*seen, path.resolve())) + [(path.resolve(), loaded)]


def _wrong_shape(schema: DictConfig, given: Any, prefix: str = "") -> str | None:
    """The first key given as a list, a mapping or a single value where the schema holds another of the three, in
    words; None when every given key has the schema's shape."""
    if not isinstance(given, dict):
        return None
    for name, value in given.items():
        key = f"{prefix}{name}"
        held = isinstance(schema, DictConfig) and not schema._is_none()  # an Optional mapping left null holds none
        node = schema._get_node(name) if held and name in schema else None
        # an entry of a mapping of sections (local_tasks.<name>): a mapping of that section's keys
        element = getattr(schema._metadata, "element_type", None) if isinstance(schema, DictConfig) else None
        if node is None and not dataclasses.is_dataclass(element):
            continue
        wanted = ("mapping" if node is None or isinstance(node, DictConfig)
                  else "list" if isinstance(node, ListConfig) else "value")
        got = "mapping" if isinstance(value, dict) else "list" if isinstance(value, list) else "value"
        if wanted != got and not (got == "value" and value is None):
            example = {"list": f"{key}=[a,b]", "mapping": f"{key}.<name>=...",
                       "value": f"{key}=<a single value>"}[wanted]
            return f"bad value for {key!r}: give a {'single value' if wanted == 'value' else wanted} " \
                   f"(e.g. {example}), not a {'single value' if got == 'value' else got}"
        if wanted == "mapping" and node is not None:
            found = _wrong_shape(node, value, key + ".")
            if found:
                return found
    return None


def _sets(layer: DictConfig, key: str) -> bool:
    """Whether a file or the overrides give the dotted key a value (interpolations left as written)."""
    node: Any = OmegaConf.to_container(layer, resolve=False)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def load_config_with_recipe(path: str | Path | None = None,
                            overrides: list[str] = ()) -> tuple[DictConfig, dict[str, Any]]:
    """Schema defaults <- YAML file <- overrides, then the method's recipe (RECIPES) on each recipe key that
    neither an override nor a file other than configs/default.yaml sets; validated, interpolations resolved. Also
    returns the recipe values it applied, so that the run can say which defaults it used."""
    merged = OmegaConf.structured(Config)
    layers = (_load_yaml(Path(path)) if path is not None else []) + [(None, _parse_overrides(list(overrides)))]
    for source, layer in layers:
        where = f"{source}: " if source else ""  # a file's problem names the file
        try:
            merged = OmegaConf.merge(merged, layer)
        except (OmegaConfBaseException, TypeError) as error:  # TypeError: a list where a mapping belongs, or back
            if isinstance(error, ConfigKeyError):
                key = getattr(error, "full_key", None) or "?"
                raise ConfigError(f"{where}unknown key {key!r}; did you mean: {_suggest(key)}") from None
            shape = _wrong_shape(merged, OmegaConf.to_container(layer, resolve=False))
            if shape:
                raise ConfigError(where + shape) from None
            key = getattr(error, "full_key", None) or "?"
            message = str(error).splitlines()[0]
            raise ConfigError(f"{where}bad value for {key!r}: {message}") from None
    settings = [layer for source, layer in layers if source != DEFAULT_CONFIG]
    recipe = RECIPES.get(OmegaConf.select(merged, "method", throw_on_resolution_failure=False), {})
    applied = {key: value for key, value in recipe.items() if not any(_sets(layer, key) for layer in settings)}
    for key, value in applied.items():  # before resolving: an interpolation naming a recipe key sees its value
        OmegaConf.update(merged, key, value, merge=False)
    try:
        OmegaConf.resolve(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(f"cannot resolve {getattr(error, 'full_key', '?')!r}: {str(error).splitlines()[0]}") from None
    _validate(merged)
    return merged, applied


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> DictConfig:
    """Schema defaults <- YAML file <- overrides, and the method's recipe where they leave its keys unset."""
    return load_config_with_recipe(path, overrides)[0]


# Keys that change how a run reports, not what it trains: a resumed run may change them, and runs that differ only
# in them (and the seed) are one experiment.
REPORTING_KEYS = {"resume", "overwrite", "callbacks", "logger", "trainer.enable_progress_bar",
                  "trainer.log_every_n_steps", "data.num_workers"}


def flat(config: dict, prefix: str = "") -> dict:
    """A nested config as {"optim.lr": value, ...}."""
    items = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        items.update(flat(value, name + ".") if isinstance(value, dict) else {name: value})
    return items


def differing_keys(saved: DictConfig | dict, current: DictConfig | dict) -> list[str]:
    """The keys, flattened, where two configs would train differently (reporting keys left out). A key only one of
    them has counts as the schema's default in the other: a run saved before a key existed ran as its default
    does (a new key's default keeps what was done before it)."""
    a, b = (flat(OmegaConf.to_container(c) if OmegaConf.is_config(c) else c) for c in (saved, current))
    defaults = flat(OmegaConf.to_container(OmegaConf.structured(Config)))
    absent = object()

    def value(config: dict, key: str):
        return config[key] if key in config else defaults.get(key, absent)

    return sorted(k for k in a.keys() | b.keys() if k not in REPORTING_KEYS and value(a, k) != value(b, k))


def config_path(name: str | Path) -> Path:
    """A config file as named on the command line: the path itself, or where it does not exist and names one of the
    package's (`configs/rft.yaml`), the package's own copy, so that an installed cpt runs them from anywhere."""
    path = Path(name)
    if not path.exists() and not path.is_absolute() and path.parts[:1] == ("configs",):
        shipped = CONFIGS.joinpath(*path.parts[1:])
        if shipped.is_file():
            return shipped
    return path


def config_with_recipe_from_args(args: list[str]) -> tuple[DictConfig, dict[str, Any]]:
    """The config a command line names (see config_from_args) and the recipe defaults it applied."""
    flag = next((arg for arg in args if arg.startswith("-") and "=" not in arg), None)
    if flag:  # what the command took as its own flags is gone by now: this one is unknown
        raise ConfigError(f"unknown flag {flag!r}: give [CONFIG.yaml] key=value ... (fit also takes --print-config, "
                          "every command --log-level; --help lists them)")
    if args and "=" not in args[0]:
        if Path(args[0]).is_dir():
            raise ConfigError(f"{args[0]!r} is a directory; give a config file (a run's is <run>/config.yaml)")
        return load_config_with_recipe(config_path(args[0]), args[1:])
    return load_config_with_recipe(DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None, args)


def config_from_args(args: list[str]) -> DictConfig:
    """The config a command line names: an optional leading YAML path, then key=value overrides; without a path,
    configs/default.yaml (the schema's defaults where the package has no configs/ beside it)."""
    return config_with_recipe_from_args(args)[0]


def recipe_note(method: str, applied: dict[str, Any]) -> str:
    """One line naming the recipe defaults a run took (empty when it took none): the values differ from the ones
    --help and configs/default.yaml show, so the run says so."""
    if not applied:
        return ""
    values = " ".join(f"{key}={value}" for key, value in applied.items())
    return f"method={method}: {method.upper()} recipe defaults {values} (set any of them to override)"


@dataclass(frozen=True)
class NumericKey:
    """A numeric key of a schema: `key` is dotted, with `*` for each name under a mapping of sections
    (local_tasks.*.train_size); `shape` is "value", "list" or "mapping" (of numbers); None for `interval` when the
    field was declared without one (which `undeclared_numbers` reports)."""
    key: str
    interval: Interval | None
    optional: bool
    shape: str


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(the type inside Optional[...], whether None is allowed)."""
    if get_origin(hint) is Union and type(None) in get_args(hint):
        return next(arg for arg in get_args(hint) if arg is not type(None)), True
    return hint, False


def _is_number(hint: Any) -> bool:
    return hint in (int, float)


@functools.cache
def numeric_keys(schema: type = Config, prefix: str = "") -> tuple[NumericKey, ...]:
    """Every numeric key of the schema, sections and mappings of sections walked, from the fields' types."""
    keys = []
    hints = get_type_hints(schema)
    for f in dataclasses.fields(schema):
        hint, optional = _unwrap(hints[f.name])
        key, origin, args = prefix + f.name, get_origin(hint), get_args(hint)
        interval = f.metadata.get("range")
        if dataclasses.is_dataclass(hint):
            keys += numeric_keys(hint, key + ".")
        elif origin is dict and dataclasses.is_dataclass(args[1]):
            keys += numeric_keys(args[1], key + ".*.")
        elif _is_number(hint):
            keys.append(NumericKey(key, interval and dataclasses.replace(interval, integer=hint is int), optional,
                                   "value"))
        elif origin in (list, dict) and _is_number(args[-1]):
            integer = args[-1] is int
            keys.append(NumericKey(key, interval and dataclasses.replace(interval, integer=integer), optional,
                                   "list" if origin is list else "mapping"))
    return tuple(keys)


def undeclared_numbers(schema: type = Config) -> list[str]:
    """The numeric keys declared without an interval (`doc` where `number` belongs): none in Config (a test)."""
    return [spec.key for spec in numeric_keys(schema) if spec.interval is None]


def check_ranges(cfg: DictConfig, schema: type = Config) -> None:
    """Every numeric value of the config in its declared interval, finite: ConfigError naming the first that is
    not (null passes where the field is Optional)."""
    for spec in numeric_keys(schema):
        head, _, tail = spec.key.partition(".*.")
        names = list(OmegaConf.select(cfg, head) or {}) if tail else [None]
        for name in names:
            key = f"{head}.{name}.{tail}" if tail else spec.key
            value = OmegaConf.select(cfg, key)
            if value is None:
                if spec.optional:
                    continue
                raise ConfigError(f"bad value for {key!r}: must be {spec.interval.words()}, got null")
            items = (value.items() if spec.shape == "mapping" else enumerate(value) if spec.shape == "list"
                     else [(None, value)])
            for index, item in items:
                problem = spec.interval.problem(item)
                if problem:
                    where = key if index is None else f"{key}[{index!r}]" if spec.shape == "list" else f"{key}.{index}"
                    raise ConfigError(f"bad value for {where!r}: {problem}")


def _validate(cfg: DictConfig) -> None:
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"bad value for {key!r}: {value!r}; choose one of {', '.join(allowed)}")
    check_ranges(cfg)
    if cfg.model.attn_implementation == "flash_attention_2" and cfg.model.dtype == "float32":
        raise ConfigError("model.attn_implementation=flash_attention_2 runs in half precision only: set "
                          "model.dtype=bfloat16, or attn_implementation=auto (sdpa for float32)")
    if cfg.trainer.precision not in PRECISIONS:
        raise ConfigError(f"bad value for 'trainer.precision': {cfg.trainer.precision!r}; choose one of "
                          f"{', '.join(PRECISIONS)}")
    if Path(cfg.output_dir).exists() and not Path(cfg.output_dir).is_dir():
        raise ConfigError(f"output_dir={cfg.output_dir!r} is a file; name a directory (new or holding a run)")
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
        _validate_local_task(name, spec)
    for name, spec in cfg.eval.benchmarks.items():
        if spec.format not in BENCHMARK_FORMATS:
            raise ConfigError(f"bad value for 'eval.benchmarks.{name}.format': {spec.format!r}; choose one of "
                              f"{', '.join(BENCHMARK_FORMATS)}")
    if cfg.replay.fraction > 0 and round(cfg.replay.fraction * cfg.data.batch_size) == 0:
        raise ConfigError(f"replay.fraction={cfg.replay.fraction} of a batch of {cfg.data.batch_size} is no row; "
                          "raise replay.fraction or data.batch_size")
    if cfg.der.weight > 0 and cfg.method != "sft":
        raise ConfigError(f"der.weight > 0 matches the logits of replayed answers, which method={cfg.method} "
                          "does not train on; use it with method=sft (or replay.fraction alone)")
    if cfg.der.label_weight > 0 and cfg.der.weight <= 0:
        raise ConfigError("der.label_weight is DER++'s term on top of DER: set der.weight too (e.g. 0.5)")
    devices = cfg.trainer.devices
    # Lightning's forms: a count (-1: all), auto, a list of ids, or the same as text ("2", "0,1"); what the machine
    # has is checked by fit against Lightning itself.
    text = isinstance(devices, str) and (devices == "auto" or re.fullmatch(r"\s*(-1|\d+(\s*,\s*\d+)*\s*,?)\s*",
                                                                           devices) and devices.strip() != "0")
    count = isinstance(devices, int) and not isinstance(devices, bool) and (devices >= 1 or devices == -1)
    ids = OmegaConf.is_list(devices) and len(devices) > 0 and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices)
    if not (text or count or ids):
        raise ConfigError(f"bad value for 'trainer.devices': give a number of devices >= 1, -1 (all), auto, or a "
                          f"list of device ids such as [0, 1]; got {devices!r}")
    if cfg.olora.enabled:
        if cfg.model.finetune not in ("lora", "qlora"):
            raise ConfigError(f"olora.enabled=true adds a LoRA adapter per stage: it needs model.finetune=lora or "
                              f"qlora, not {cfg.model.finetune}")
        devices = cfg.trainer.devices
        one_device = devices == 1 or (OmegaConf.is_list(devices) and len(devices) == 1)
        if cfg.trainer.strategy in ("fsdp", "ddp") or not one_device or cfg.trainer.num_nodes != 1:
            raise ConfigError(f"olora.enabled=true runs on one device (which weights train changes from stage to "
                              f"stage, which a distributed strategy fixes at the start; got trainer.strategy="
                              f"{cfg.trainer.strategy}, devices={devices}, num_nodes={cfg.trainer.num_nodes}): use "
                              f"trainer.strategy=auto trainer.devices=1 trainer.num_nodes=1")
    if cfg.moe_lora.enabled:
        if cfg.model.finetune != "lora":
            raise ConfigError(f"moe_lora.enabled=true splits LoRA adapters into experts: it needs model.finetune=lora, "
                              f"not {cfg.model.finetune}")
        if cfg.olora.enabled:
            raise ConfigError("moe_lora and olora each build the run's adapters their own way: enable one of them")
        if cfg.trainer.strategy == "fsdp":
            raise ConfigError("moe_lora.enabled=true runs unsharded; use trainer.strategy=auto or ddp")
        if cfg.model.lora.r % cfg.moe_lora.experts:
            raise ConfigError(f"moe_lora splits the rank into experts: model.lora.r={cfg.model.lora.r} is not a "
                              f"multiple of moe_lora.experts={cfg.moe_lora.experts}")
    if cfg.magmax.enabled:
        if cfg.model.finetune != "full":
            raise ConfigError(f"magmax.enabled=true merges dense task vectors theta_t - theta_0, which a LoRA adapter "
                              f"cannot hold: use model.finetune=full, not {cfg.model.finetune}")
        if cfg.interpolation.weight < 1:
            raise ConfigError("magmax and interpolation each decide the model a stage ends with: use one of them "
                              "(interpolation.weight=1 turns interpolation off)")
    if cfg.model.trainable != "all":
        if cfg.model.finetune != "full":
            raise ConfigError(f"model.trainable={cfg.model.trainable} chooses which full weights train; it needs "
                              f"model.finetune=full, not {cfg.model.finetune}")
        if cfg.model.freeze_vision and cfg.model.trainable == "vision":
            raise ConfigError("model.trainable=vision trains the vision tower only, and model.freeze_vision=true "
                              "freezes it: choose one")
    if cfg.regularizer.kind == "ewc" and cfg.method != "sft":
        raise ConfigError(f"regularizer.kind=ewc estimates its Fisher from the SFT loss on the answers, which "
                          f"method={cfg.method}'s prompt batches do not carry; use regularizer.kind=mas or l2")
    if cfg.method in ROLLOUT_METHODS:
        _validate_rft(cfg)
    elif cfg.rft.filter.rule != "none" or cfg.rft.filter.online:
        raise ConfigError("rft.filter selects instances by their rollouts' rewards: it needs method=rft or "
                          "onpolicy_sft")
    if cfg.trainer.strategy == "fsdp":
        if cfg.model.finetune == "qlora":
            raise ConfigError("model.finetune=qlora cannot be sharded with trainer.strategy=fsdp (4-bit weights); "
                              "use lora with fsdp, or qlora on one device")
        devices = cfg.trainer.devices
        if not ((isinstance(devices, int) and devices > 0) or (OmegaConf.is_list(devices) and len(devices) > 0)):
            raise ConfigError(f"trainer.strategy=fsdp needs trainer.devices as a positive number or a list of "
                              f"device ids, got {devices!r}")


def _validate_local_task(name: str, spec: DictConfig) -> None:
    for key, allowed in (("format", SCHEMAS), ("scorer", SCORERS), ("template", TEMPLATES)):
        if spec[key] is not None and spec[key] not in allowed:
            raise ConfigError(f"bad value for 'local_tasks.{name}.{key}': {spec[key]!r}; choose one of "
                              f"{', '.join(allowed)}")
    for split in ("train", "eval"):
        if spec[split] is None and spec.path is None:
            raise ConfigError(f"local_tasks.{name} needs `path` (the dataset's directory) or both `train` and "
                              f"`eval`; {split} has neither")


def _validate_rft(cfg: DictConfig) -> None:
    rft = cfg.rft
    estimator = ESTIMATORS[rft.advantage]
    if cfg.method == "rft" and rft.group_size < estimator.min_group_size:
        raise ConfigError(f"rft.advantage={rft.advantage} compares rollouts within a group: set rft.group_size >= "
                          f"{estimator.min_group_size}")
    if rft.reward.weights is not None and not any(rft.reward.weights.values()):
        raise ConfigError("rft.reward.weights gives no component a non-zero weight")
    if cfg.method == "rft" and max(kl_values(cfg)) > 0 and rft.kl.estimator == "k1" and rft.kl.placement == "loss":
        raise ConfigError("rft.kl.estimator=k1 in the loss has zero expected gradient (E[grad log p] = 0): use k1 "
                          "with rft.kl.placement=reward, or k2/k3 in the loss")
    stages = 1 if cfg.schedule == "multitask" else len(cfg.tasks)
    if rft.kl.schedule == "per_task" and (rft.kl.per_task is None or len(rft.kl.per_task) != stages):
        raise ConfigError(f"rft.kl.schedule=per_task needs rft.kl.per_task with one beta per stage ({stages}), got "
                          f"{None if rft.kl.per_task is None else list(rft.kl.per_task)}")
    f = rft.filter
    if f.low > f.high and f.rule == "range":
        raise ConfigError(f"rft.filter.rule=range keeps mean rewards in [low, high]: low must not exceed high, "
                          f"got {f.low}, {f.high}")
    if f.online and estimator.greedy_baseline:
        group_baselines = [name for name, other in ESTIMATORS.items() if not other.greedy_baseline]
        raise ConfigError(f"rft.filter.online drops groups with equal rewards, but {rft.advantage}'s baseline is the "
                          f"greedy reward, not the group's: use {', '.join(group_baselines[:-1])} or "
                          f"{group_baselines[-1]}")
    _validate_objective(cfg)
    if cfg.trainer.precision in ("16-mixed", "16"):
        raise ConfigError("method=rft clips gradients itself, before the float16 loss scale is removed: use "
                          "trainer.precision=bf16-mixed or 32-true")
    if cfg.trainer.accumulate_grad_batches != 1:
        raise ConfigError("method=rft steps the optimizer itself: keep trainer.accumulate_grad_batches=1 and set "
                          "rft.micro_batch_size to split a rollout batch into smaller passes")


def _validate_objective(cfg: DictConfig) -> None:
    """The objective's options that mean something together (TRL warns about most of these; here they stop)."""
    rft = cfg.rft
    objective = OBJECTIVES[rft.objective]
    if cfg.method == "onpolicy_sft":
        defaults = OmegaConf.structured(RFTConfig)
        policy_keys = ("objective", "clip_delta", "advantage_scale", "entropy", "sapo", "vespo")
        changed = [f"rft.{key}" for key in policy_keys if rft[key] != defaults[key]]
        if rft.kl.importance_weighted:
            changed.append("rft.kl.importance_weighted")
        if changed:
            raise ConfigError(f"method=onpolicy_sft trains on its right rollouts with the SFT loss: "
                              f"{', '.join(changed)} shape the RFT policy loss and would do nothing here; leave them "
                              "out, or use method=rft")
        return
    if rft.loss_aggregation not in objective.aggregations:
        raise ConfigError(f"rft.objective={rft.objective} is defined with rft.loss_aggregation="
                          f"{' or '.join(objective.aggregations)}, not {rft.loss_aggregation}: set it")
    if rft.clip_delta is not None:
        hard_clipped = [name for name, other in OBJECTIVES.items() if other.hard_clip]
        if not objective.hard_clip:
            raise ConfigError(f"rft.clip_delta caps a hard-clipped ratio; rft.objective={rft.objective} has none: "
                              f"leave clip_delta null, or use {', '.join(hard_clipped)}")
        if rft.clip_delta <= 1 + rft.clip_high:
            raise ConfigError(f"rft.clip_delta={rft.clip_delta} would cap the ratio below the clip it extends "
                              f"(1 + clip_high = {1 + rft.clip_high}): set it above")
    if rft.kl.importance_weighted and rft.kl.placement != "loss":
        raise ConfigError("rft.kl.importance_weighted weights the KL term of the loss by the importance ratio; with "
                          "rft.kl.placement=reward the KL is taken from the sampling policy, whose ratio is 1: set "
                          "placement=loss or importance_weighted=false")
    if rft.entropy.top_quantile < 1 and objective.sequence_level:
        raise ConfigError(f"rft.entropy.top_quantile keeps single tokens in the loss, but rft.objective="
                          f"{rft.objective} weighs whole completions: use a token-level objective or top_quantile=1")
    entropy = rft.entropy
    if entropy.adaptive and not entropy.min <= entropy.coef <= entropy.max:
        raise ConfigError(f"rft.entropy.adaptive moves the coefficient within [min, max] = [{entropy.min}, "
                          f"{entropy.max}], and starts at coef={entropy.coef}: set min <= coef <= max")
    if rft.advantage_scale in ("group", "batch") and not ESTIMATORS[rft.advantage].rescalable:
        scaled = [name for name, other in ESTIMATORS.items() if other.rescalable]
        raise ConfigError(f"rft.advantage={rft.advantage} is defined without a division by a std: for "
                          f"rft.advantage_scale={rft.advantage_scale} use {' or '.join(scaled)}")
    if rft.advantage_scale == "group" and rft.group_size < 2 and cfg.method == "rft":
        raise ConfigError("rft.advantage_scale=group divides by the std of each group's rewards: set "
                          "rft.group_size >= 2, or advantage_scale=batch or none")


def kl_values(cfg: DictConfig) -> list[float]:
    """Every beta the KL schedule can take: a reference model is loaded when any is positive."""
    kl = cfg.rft.kl
    if kl.schedule == "per_task":
        return list(kl.per_task or [0.0])
    return [kl.coef, kl.final_coef] if kl.schedule == "linear" else [kl.coef]


def format_help(command: str = "fit") -> str:
    """`python -m cpt <command> --help` for the commands that take the config's keys (fit, inspect)."""
    if command == "fit":
        lines = ["usage: python -m cpt fit [CONFIG.yaml] [key=value ...] [--print-config] [--log-level LEVEL]", "",
                 "Continual post-training over a task sequence. With no CONFIG, configs/default.yaml. "
                 "--print-config prints the resolved config and exits.", ""]
    else:
        lines = [f"usage: python -m cpt {command} [CONFIG.yaml] [key=value ...] [--log-level LEVEL]", "",
                 "The config's keys, as fit takes them (with no CONFIG, configs/default.yaml).", ""]
    for method, recipe in RECIPES.items():
        values = " ".join(f"{key}={value}" for key, value in recipe.items())
        lines += [f"method={method} brings the {method.upper()} recipe: {values}",
                  "  wherever neither CONFIG (configs/default.yaml aside) nor an override sets them; the brackets "
                  "below show the schema's defaults.", ""]
    lines.append("Keys (dotted; defaults in brackets; what a value must be, as the config is checked):")
    numbers = {spec.key: spec for spec in numeric_keys()}
    for key, default, help in field_docs():
        shown = f" [{default}]" if default else ""
        lines.append(f"  {key}{shown}\n      {help}")
        if key in numbers:
            spec = numbers[key]
            each = "" if spec.shape == "value" else "each "
            null = " (or null)" if spec.optional else ""
            lines.append(f"      Must be: {each}{spec.interval.words()}{null}.")
        elif key in CHOICES:
            lines.append(f"      Must be: one of {', '.join(CHOICES[key])}.")
    return "\n".join(lines)


def save_config(cfg: DictConfig, path: Path) -> None:
    write_text(path, OmegaConf.to_yaml(cfg))
