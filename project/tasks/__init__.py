"""Tasks by name: the registry, ultrasound 'cla' (birads.py) and 'fea' (features.py), mammography 'mammo' (mammo.py)."""

from project.tasks.base import (
    TASKS,
    Evaluation,
    Task,
    TaskDatasets,
    UnknownTask,
    create_task,
    register_task,
    task_class,
)
from project.tasks.birads import ClassificationTask
from project.tasks.features import FeatureTask
from project.tasks.mammo import MammoTask

__all__ = ["TASKS", "ClassificationTask", "Evaluation", "FeatureTask", "MammoTask", "Task", "TaskDatasets",
           "UnknownTask", "create_task", "register_task", "task_class"]
