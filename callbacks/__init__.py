"""Lightning callbacks that turn one `Trainer.fit` into a continual post-training run and its experiments.

Each is usable from a config by import path (`callbacks.<module>:<Class>`).
"""

from callbacks.accuracy_matrix import AccuracyMatrix
from callbacks.analysis import ForgettingAnalysis
from callbacks.der import DarkExperienceReplay
from callbacks.kl_schedule import KLSchedule
from callbacks.lwf import LearningWithoutForgetting
from callbacks.merging import ModelMerging
from callbacks.olora import OrthogonalLoRA
from callbacks.online_filter import OnlineFiltering
from callbacks.regularizer import ParameterRegularizer
from callbacks.replay import ExperienceReplay
from callbacks.rollout_filter import RolloutFiltering
from callbacks.task_checkpoint import TaskCheckpoint
from callbacks.task_progress import TaskProgressBar
from callbacks.task_switching import TaskSwitching

__all__ = ["AccuracyMatrix", "DarkExperienceReplay", "ExperienceReplay", "ForgettingAnalysis", "KLSchedule",
           "LearningWithoutForgetting", "ModelMerging", "OnlineFiltering", "OrthogonalLoRA", "ParameterRegularizer",
           "RolloutFiltering", "TaskCheckpoint", "TaskProgressBar", "TaskSwitching"]
