"""One continual post-training run: config -> backbone -> tasks -> Trainer.fit over the sequence -> results."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.strategies import ModelParallelStrategy
from omegaconf import DictConfig

from callbacks import MultiTaskEvaluation, TaskCheckpoint, TaskProgressBar, TaskSwitching
from cpt.config import ConfigError, save_config
from cpt.datamodule import TaskSequenceData
from cpt.plugins import load_object
from cpt.presets import resolve_checkpoint
from cpt.rft import RFTModule
from cpt.sft import SFTModule
from cpt.tasks import build_tasks, general_set

METHODS = {"sft": SFTModule, "rft": RFTModule}


def load_callback(path: str) -> Callback:
    """A user callback from `package.module:Class`, constructed without arguments."""
    callback = load_object(path, "callback")()
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


def build_logger(cfg: DictConfig, run_dir: Path):
    from lightning.pytorch import loggers

    if cfg.logger == "csv":
        return loggers.CSVLogger(run_dir, name="logs", version="")
    if cfg.logger == "tensorboard":
        return loggers.TensorBoardLogger(run_dir, name="logs", version="")
    if cfg.logger == "wandb":
        return loggers.WandbLogger(save_dir=run_dir, project="cpt", name=run_dir.name)
    return False


def run(cfg: DictConfig, extra_callbacks: Sequence[Callback] = ()) -> dict:
    """Train the sequence; returns the results summary (also written to the run directory)."""
    run_dir = Path(cfg.output_dir)
    save_config(cfg, run_dir / "config.yaml")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    checkpoint = resolve_checkpoint(cfg)
    tasks = build_tasks(cfg)
    names = [task.name for task in tasks]
    module = METHODS[cfg.method](cfg, checkpoint, tasks)
    evaluation = MultiTaskEvaluation(
        tasks, run_dir, cfg.data.template, cfg.eval.batch_size, cfg.eval.max_new_tokens,
        general=general_set(cfg) if cfg.eval.general else None, progress=cfg.trainer.enable_progress_bar,
    )
    callbacks: list[Callback] = [TaskSwitching(names, cfg.optim.reset_per_task), evaluation]
    if cfg.save_checkpoints:
        callbacks.append(TaskCheckpoint(run_dir, names))
    if cfg.trainer.enable_progress_bar:
        callbacks.append(TaskProgressBar(names))
    if cfg.logger != "none":
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    callbacks += [load_callback(path) for path in cfg.callbacks] + list(extra_callbacks)
    t = cfg.trainer
    trainer = L.Trainer(
        max_epochs=len(tasks),  # one epoch per task, each exactly steps_per_task steps long
        reload_dataloaders_every_n_epochs=1, use_distributed_sampler=False,  # TaskSequenceData shards itself
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=build_strategy(cfg),
        precision=t.precision, accumulate_grad_batches=t.accumulate_grad_batches,
        # A module that steps its optimizer itself (RFT) clips its gradients itself.
        gradient_clip_val=t.gradient_clip_val if module.automatic_optimization else None,
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=t.enable_progress_bar, logger=build_logger(cfg, run_dir), callbacks=callbacks,
        enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=run_dir,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=TaskSequenceData(cfg, tasks, module.processor, module.trains_on_answers))
    return evaluation.summary
