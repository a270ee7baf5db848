"""Tasks by name: the registry and the built-in ultrasound tasks ('cla' in birads.py, 'fea' in features.py)."""

from project.tasks.base import TASKS, Evaluation, Task, UnknownTask, create_task, register_task, task_class
from project.tasks.birads import ClassificationTask
from project.tasks.features import FeatureTask

__all__ = ["TASKS", "ClassificationTask", "Evaluation", "FeatureTask", "Task", "UnknownTask", "create_task",
           "register_task", "task_class"]
