"""Lightning callbacks that turn one `Trainer.fit` into a continual post-training run.

Each is usable from a config by import path (`callbacks.<module>:<Class>`).
"""

from callbacks.multitask_eval import MultiTaskEvaluation
from callbacks.task_checkpoint import TaskCheckpoint
from callbacks.task_progress import TaskProgressBar
from callbacks.task_switching import TaskSwitching

__all__ = ["MultiTaskEvaluation", "TaskCheckpoint", "TaskProgressBar", "TaskSwitching"]
