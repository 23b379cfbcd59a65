"""Lightning callbacks that turn one `Trainer.fit` into a continual post-training run and its experiments.

Installed as the package `cpt.callbacks`; each is usable from a config by import path
(`cpt.callbacks.<module>:<Class>`, or `callbacks.<module>:<Class>` as configs have always named them).
"""

from cpt.callbacks.accuracy_matrix import AccuracyMatrix
from cpt.callbacks.analysis import ForgettingAnalysis
from cpt.callbacks.der import DarkExperienceReplay
from cpt.callbacks.interpolation import StageInterpolation
from cpt.callbacks.kl_schedule import KLSchedule
from cpt.callbacks.lwf import LearningWithoutForgetting
from cpt.callbacks.magmax import MagMaX
from cpt.callbacks.olora import OrthogonalLoRA
from cpt.callbacks.online_filter import OnlineFiltering
from cpt.callbacks.regularizer import ParameterRegularizer
from cpt.callbacks.replay import ExperienceReplay
from cpt.callbacks.rollout_filter import RolloutFiltering
from cpt.callbacks.task_checkpoint import TaskCheckpoint
from cpt.callbacks.task_progress import TaskProgressBar
from cpt.callbacks.task_switching import TaskSwitching

__all__ = ["AccuracyMatrix", "DarkExperienceReplay", "ExperienceReplay", "ForgettingAnalysis", "KLSchedule",
           "LearningWithoutForgetting", "MagMaX", "OnlineFiltering", "OrthogonalLoRA", "ParameterRegularizer",
           "RolloutFiltering", "StageInterpolation", "TaskCheckpoint", "TaskProgressBar", "TaskSwitching"]
