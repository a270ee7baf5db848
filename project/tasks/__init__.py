"""Tasks by name: the registry; ultrasound 'cla' and 'fea'; mammography 'mammo' and 'mammo_patch'."""

from project.tasks.base import (
    TASKS,
    AuxiliaryColumn,
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
from project.tasks.mammo_patch import PatchTask

__all__ = ["TASKS", "AuxiliaryColumn", "ClassificationTask", "Evaluation", "FeatureTask", "MammoTask", "PatchTask",
           "Task", "TaskDatasets", "UnknownTask", "create_task", "register_task", "task_class"]
