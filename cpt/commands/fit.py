"""`python -m cpt fit [CONFIG.yaml] [key=value ...]`: one continual post-training run.

config -> tasks -> backbone -> callbacks -> one Trainer.fit over the sequence of stages -> results. `run(cfg)` is
the same from Python.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch import loggers
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.strategies import ModelParallelStrategy
from omegaconf import DictConfig, OmegaConf

from cpt.atomic import write_json
from cpt.callbacks import (
    AccuracyMatrix,
    DarkExperienceReplay,
    ExperienceReplay,
    ForgettingAnalysis,
    KLSchedule,
    LearningWithoutForgetting,
    MagMaX,
    OnlineFiltering,
    OrthogonalLoRA,
    ParameterRegularizer,
    RolloutFiltering,
    StageInterpolation,
    TaskCheckpoint,
    TaskProgressBar,
    TaskSwitching,
)
from cpt.commands.resume import RunFinished, resume_checkpoint
from cpt.commands.run_dir import held_run, prepare_run_dir, versions
from cpt.config import ROLLOUT_METHODS, config_with_recipe_from_args, recipe_note, save_config
from cpt.data.check import leave_out_bad_rows
from cpt.data.datamodule import TaskSequenceData
from cpt.data.general_benchmarks import load_benchmark
from cpt.data.tasks import Stage, Task, build_stages, build_tasks, general_set
from cpt.errors import ConfigError
from cpt.methods.onpolicy_sft import OnPolicySFTModule
from cpt.methods.rft import RFTModule
from cpt.methods.sft import SFTModule
from cpt.model.card import model_card
from cpt.model.families import family_of_checkpoint
from cpt.model.presets import resolve_checkpoint
from cpt.plugins import load_object

METHODS = {"sft": SFTModule, "rft": RFTModule, "onpolicy_sft": OnPolicySFTModule}


def load_callback(spec) -> Callback:
    """A user callback from `package.module:Class` (constructed without arguments) or from a mapping
    {class: package.module:Class, <argument>: <value>, ...}."""
    if isinstance(spec, str):
        path, arguments = spec, {}
    else:
        arguments = OmegaConf.to_container(spec) if OmegaConf.is_config(spec) else dict(spec)
        path = arguments.pop("class", None)
        if not isinstance(path, str):
            raise ConfigError(f"callback {arguments!r} needs `class: package.module:Class`")
    kind = load_object(path, "callback")
    try:
        callback = kind(**arguments)
    except TypeError as error:
        raise ConfigError(f"callback {path!r} cannot be built with {arguments}: {error}") from None
    except Exception as error:  # the callback's own refusal, in its words
        raise ConfigError(f"callback {path!r} failed while being built with {arguments}: "
                          f"{type(error).__name__}: {error}") from None
    if not isinstance(callback, Callback):
        raise ConfigError(f"callback {path!r} is a {type(callback).__name__}, not a lightning Callback")
    return callback


def build_strategy(cfg: DictConfig):
    t = cfg.trainer
    if t.strategy != "fsdp":
        return t.strategy
    # FSDP2 (fully_shard in configure_model); unlike Lightning's FSDPStrategy it also runs on CPU with gloo.
    # Every process is a data-parallel shard; there is no tensor parallelism. (Validated: a count or a list.)
    per_node = t.devices if isinstance(t.devices, int) else len(t.devices)
    return ModelParallelStrategy(data_parallel_size=per_node * t.num_nodes, tensor_parallel_size=1)


def check_trainer_settings(cfg: DictConfig) -> None:
    """Lightning's own check of trainer.accelerator, devices, num_nodes, strategy and precision (a GPU asked for
    where there is none, an unknown strategy), made by building a Trainer of them and nothing else: ConfigError
    with its message, before the run directory is written."""
    t = cfg.trainer
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.disable(logging.INFO)  # Lightning says which devices it uses when the run's Trainer is built
            L.Trainer(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
                      strategy=build_strategy(cfg), precision=t.precision, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    except (MisconfigurationException, ValueError, TypeError, RuntimeError) as error:
        message = " ".join(str(error).split())
        raise ConfigError(f"trainer.accelerator={t.accelerator} devices={t.devices} strategy={t.strategy} "
                          f"precision={t.precision}: Lightning cannot run these here: {message}") from None
    finally:
        logging.disable(logging.NOTSET)


def build_logger(cfg: DictConfig, run_dir: Path):
    if cfg.logger == "csv":
        return loggers.CSVLogger(run_dir, name="logs", version="")
    if cfg.logger == "tensorboard":
        return loggers.TensorBoardLogger(run_dir, name="logs", version="")
    if cfg.logger == "wandb":
        return loggers.WandbLogger(save_dir=run_dir, project="cpt", name=run_dir.name)
    return False


def general_benchmarks(cfg: DictConfig) -> list[Task]:
    """The synthetic general set (if on) and the benchmarks read from local files."""
    sets = [general_set(cfg)] if cfg.eval.general else []
    for name, spec in cfg.eval.benchmarks.items():
        benchmark = load_benchmark(name, spec.format, spec.path, spec.image_dir, spec.limit, cfg.seed)
        sets.append(replace(benchmark, template=cfg.data.template))  # asked the way the run's tasks are
    return sets


def experiment_callbacks(cfg: DictConfig, run_dir: Path, stages: list[Stage],
                         resume_from: Path | None = None) -> list[Callback]:
    """The callbacks the config's experiment sections turn on (`resume_from`: the checkpoint the run continues
    from)."""
    callbacks: list[Callback] = []
    # First: what the others and the evaluation see at a stage's end is the stage's result, merged.
    if cfg.interpolation.weight < 1:
        callbacks.append(StageInterpolation(cfg.interpolation.weight))
    if cfg.magmax.enabled:
        callbacks.append(MagMaX(cfg.magmax.scale))
    rft = cfg.rft
    if cfg.method == "rft":
        kl = rft.kl
        callbacks.append(KLSchedule(kl.schedule, kl.coef, kl.per_task, kl.final_coef,
                                    cfg.steps_per_task * len(stages[0].tasks)))
    if cfg.method in ROLLOUT_METHODS:
        f = rft.filter
        if f.rule != "none":
            callbacks.append(RolloutFiltering(run_dir, f.rule, f.k, f.low, f.high, f.pool_size, f.correct_threshold,
                                              prompts_per_batch=max(1, cfg.eval.batch_size // f.k), seed=cfg.seed,
                                              progress=cfg.trainer.enable_progress_bar,
                                              resuming=resume_from is not None))
        if f.online:
            callbacks.append(OnlineFiltering(run_dir, f.max_retries))
    if cfg.der.weight > 0:
        d = cfg.der
        callbacks.append(DarkExperienceReplay(d.weight, d.label_weight, d.buffer_size,
                                              d.batch_size or cfg.data.batch_size, d.top_k, cfg.seed))
    if cfg.replay.fraction > 0:
        callbacks.append(ExperienceReplay(cfg.replay.fraction, cfg.replay.buffer_per_task, cfg.seed))
    if cfg.regularizer.kind != "none":
        r = cfg.regularizer
        callbacks.append(ParameterRegularizer(r.kind, r.strength, r.fisher_batches))
    if cfg.lwf.weight > 0:
        callbacks.append(LearningWithoutForgetting(cfg.lwf.weight, cfg.lwf.temperature))
    if cfg.olora.enabled:
        callbacks.append(OrthogonalLoRA(cfg.olora.orthogonal, cfg.olora.l2))
    return callbacks


def run(cfg: DictConfig, extra_callbacks: Sequence[Callback] = ()) -> dict:
    """Train the sequence; returns the results summary (also written to the run directory)."""
    run_dir = Path(cfg.output_dir)
    tasks = build_tasks(cfg)  # data problems surface before anything is written, built or pre-trained
    try:
        resume_from = resume_checkpoint(cfg)  # checked against the stopped run's config before it is overwritten
    except RunFinished as finished:
        print(finished)
        return finished.summary
    benchmarks = general_benchmarks(cfg)
    check_trainer_settings(cfg)  # hardware and strategy Lightning cannot give, named before anything is written
    own_callbacks = [load_callback(path) for path in cfg.callbacks]  # and a callback that cannot be built
    prepare_run_dir(cfg)  # a used output_dir refused before any time is spent
    checkpoint = resolve_checkpoint(cfg)  # and a damaged model directory named before the run directory is written
    save_config(cfg, run_dir / "config.yaml")
    recorded = versions()
    if rank_zero_only.rank == 0:
        write_json(run_dir / "versions.json", recorded)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.data.check_rows:
        first = rank_zero_only.rank == 0  # every process checks (same rows, same result); one writes and shows it
        leave_out_bad_rows(tasks, run_dir if first else None, progress=cfg.trainer.enable_progress_bar and first)
    stages = build_stages(cfg)
    names = [stage.name for stage in stages]
    module = METHODS[cfg.method](cfg, checkpoint, tasks)
    experiments = experiment_callbacks(cfg, run_dir, stages, resume_from)
    filtering = next((c for c in experiments if isinstance(c, RolloutFiltering)), None)
    evaluation = AccuracyMatrix(
        tasks, run_dir, cfg.eval.batch_size, cfg.eval.max_new_tokens,
        general=benchmarks, progress=cfg.trainer.enable_progress_bar,
        stages=[[tasks[k].name for k in stage.tasks] for stage in stages], general_every=cfg.eval.general_every,
        info={"name": cfg.name or f"{cfg.method} {cfg.schedule}", "method": cfg.method, "schedule": cfg.schedule},
        extra=lambda: {"kept_fraction": filtering.kept_fraction if filtering else None},
    )
    callbacks: list[Callback] = [TaskSwitching(names, cfg.optim.reset_per_task), *experiments, evaluation]
    if cfg.analysis.enabled:  # after the evaluation: a stage's forgetting needs that stage's accuracy row
        callbacks.append(ForgettingAnalysis(run_dir, cfg.analysis.probe_size, cfg.eval.max_new_tokens, cfg.seed,
                                            evaluation))
    if cfg.save_checkpoints:
        adapters = cfg.model.finetune != "full"
        callbacks.append(TaskCheckpoint(run_dir, names, lambda k: model_card(
            cfg, k, names[k], evaluation.summary, adapters, str(checkpoint.resolve()),
            family_of_checkpoint(checkpoint).display_name)))
    if cfg.trainer.enable_progress_bar:
        callbacks.append(TaskProgressBar(names, label=f"{cfg.name} seed {cfg.seed}" if cfg.name else ""))
    if cfg.logger != "none":
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    callbacks += own_callbacks + list(extra_callbacks)
    t = cfg.trainer
    trainer = L.Trainer(
        max_epochs=len(stages),  # one epoch per stage, each exactly steps_per_task steps per task long
        reload_dataloaders_every_n_epochs=1, use_distributed_sampler=False,  # TaskSequenceData shards itself
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=build_strategy(cfg),
        precision=t.precision, accumulate_grad_batches=t.accumulate_grad_batches,
        # A module that steps its optimizer itself (RFT) clips its gradients itself.
        gradient_clip_val=t.gradient_clip_val if module.automatic_optimization else None,
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.enable_progress_bar, logger=build_logger(cfg, run_dir), callbacks=callbacks,
        enable_checkpointing=cfg.save_checkpoints,  # TaskCheckpoint is Lightning's checkpoint callback then
        limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=run_dir, enable_model_summary=False,
    )
    for logger in trainer.loggers:  # the run's settings beside its curves (hparams.yaml, TensorBoard, W&B config)
        logger.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), "versions": recorded})
    data = TaskSequenceData(cfg, tasks, module.processor, module.trains_on_answers, stages)
    trainer.fit(module, datamodule=data, ckpt_path=resume_from)
    return evaluation.summary


def check_run_config_points_home(cfg: DictConfig, args: list[str]) -> None:
    """A run's own config.yaml, resumed or overwritten, must name that run as its output_dir: a saved output_dir is
    relative to where the run was started, so from a copy of the run, or from another directory, it names another
    run, which resume would continue and overwrite would delete."""
    if not args or "=" in args[0] or not (cfg.resume or cfg.overwrite):
        return
    config = Path(args[0]).resolve()
    home = config.parent
    if config.name != "config.yaml" or not held_run(home) or any(a.startswith("output_dir=") for a in args[1:]):
        return
    if Path(cfg.output_dir).resolve() != home:
        action = "resume=true would continue" if cfg.resume else "overwrite=true would replace"
        raise ConfigError(f"{args[0]} is the config of the run in {str(home)!r}, but its output_dir "
                          f"{cfg.output_dir!r} names {str(Path(cfg.output_dir).resolve())!r} from here, which "
                          f"{action}: add output_dir={args[0].rsplit('/', 1)[0] if '/' in args[0] else '.'} for this "
                          f"run, or output_dir={cfg.output_dir} for that one")


def main(args: list[str]) -> int:
    show = "--print-config" in args
    cfg, applied = config_with_recipe_from_args([arg for arg in args if arg != "--print-config"])
    if show:  # the resolved config, as the run would save it, and nothing else
        print((f"# {recipe_note(cfg.method, applied)}\n" if applied else "") + OmegaConf.to_yaml(cfg), end="")
        return 0
    if applied and rank_zero_only.rank == 0:  # the processes Lightning launches for other ranks re-read the config
        print(recipe_note(cfg.method, applied))
    check_run_config_points_home(cfg, [arg for arg in args if arg != "--print-config"])
    try:
        run(cfg)
    except FloatingPointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
