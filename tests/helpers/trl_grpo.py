"""TRL 1.16's GRPOTrainer loss on given log-probabilities: its own `_compute_loss`, on a trainer whose model
forward is replaced by the tensors a test chooses (and one process, no accumulation), so that cpt's objectives
are compared with TRL's code rather than with a reading of it."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import torch


class OneProcess:
    """The accelerator calls `_compute_loss` makes, for a single process."""
    num_processes = 1
    sync_gradients = True  # every call ends an optimizer step: no gradient accumulation

    def gather(self, tensor):
        return tensor

    gather_for_metrics = gather

    def reduce(self, tensor, reduction="sum"):
        return tensor

    def pad_across_processes(self, tensor, dim=0, pad_index=0):
        return tensor


class TRLLoss:
    """`GRPOTrainer._compute_loss` with `GRPOConfig(**settings)`; one instance keeps its adaptive-entropy state
    from call to call, as the trainer does from step to step."""

    def __init__(self, tmp_path, **settings):
        from trl import GRPOConfig, GRPOTrainer

        self.compute = GRPOTrainer._compute_loss
        args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], **settings)
        trainer = object.__new__(GRPOTrainer)  # the attributes __init__ would set from args, nothing else
        trainer.args = args
        for name in ("loss_type", "importance_sampling_level", "top_entropy_quantile", "entropy_coef",
                     "use_adaptive_entropy", "max_completion_length", "beta"):
            setattr(trainer, name, getattr(args, name))
        trainer.epsilon_low = args.epsilon
        trainer.epsilon_high = args.epsilon if args.epsilon_high is None else args.epsilon_high
        trainer.off_policy_mask_threshold = None
        trainer.use_vllm = False
        trainer._entropy_bonus_enabled = args.entropy_coef != 0.0 or args.use_adaptive_entropy
        trainer._last_world_entropy = math.inf
        trainer._entropy_window_stats = None
        trainer.aux_loss_enabled = False
        trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        trainer.current_gradient_accumulation_steps = 1
        trainer.accelerator = OneProcess()
        trainer.model = SimpleNamespace(training=True)
        self.trainer = trainer

    def __call__(self, logp, old_logp, advantages, mask, entropy=None, ref_logp=None) -> torch.Tensor:
        rows, tokens = mask.shape
        self.trainer._get_per_token_logps_and_entropies = lambda *args, **kwargs: (logp, entropy, None)
        inputs = {"prompt_ids": torch.zeros(rows, 1, dtype=torch.long),
                  "prompt_mask": torch.ones(rows, 1, dtype=torch.long),
                  "completion_ids": torch.zeros(rows, tokens, dtype=torch.long),
                  "completion_mask": mask.long(), "advantages": advantages, "old_per_token_logps": old_logp,
                  "num_items_in_batch": mask.sum()}
        if ref_logp is not None:
            inputs["ref_per_token_logps"] = ref_logp
        return self.compute(self.trainer, None, inputs)

    @property
    def entropy_coef(self) -> float:
        return self.trainer.entropy_coef
