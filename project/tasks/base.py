"""The Task interface: everything that differs between tasks, the Evaluation it returns, and the registry by name."""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import Dataset, Sampler

from project.data.layout import Sample, Scan

BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Evaluation:
    """Validation result: `metrics['score']` selects the best epoch; `thresholds` go into the checkpoint."""

    metrics: dict[str, float]
    confusion: dict[str, np.ndarray] = field(default_factory=dict)
    confusion_labels: dict[str, list[str]] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)


@dataclass
class TaskDatasets:
    """A task's own training and validation datasets, and the preprocessing its checkpoint records."""

    train: Dataset
    val: Dataset
    preprocess: dict


@dataclass(frozen=True)
class AuxiliaryColumn:
    """An auxiliary head's classes: the values of a metadata column in the training images.

    The head's logits follow the task's own; its target is the class index, -1 where the column is
    empty or holds a value the training images lack. Decisions read the task's logits alone;
    prediction reports the head's probabilities beside them.
    """

    column: str | None = None
    classes: tuple[str, ...] = ()

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser, examples: str) -> None:
        add = parser.add_argument
        add("--aux-column", default=None,
            help=f"metadata column ({examples}) learnt by an auxiliary head beside the task's logits")
        add("--aux-weight", type=float, default=0.3, help="weight of the auxiliary head's cross-entropy")

    @classmethod
    def from_args(cls, args: argparse.Namespace, train: Sequence[Sample]) -> AuxiliaryColumn:
        """None asked for: no head; else the column's values, checked to be there and to be at least two."""
        column = getattr(args, "aux_column", None)
        if not column:
            return cls()
        if any(column not in s.extra for s in train):
            raise SystemExit(f"{args.data}: --aux-column {column!r} is not a metadata column of every image")
        classes = tuple(sorted({s.extra[column] for s in train} - {""}))
        if len(classes) < 2:
            raise SystemExit(f"{args.data}: column {column!r} has fewer than two values to learn")
        return cls(column, classes)

    def index(self, sample: Sample) -> int:
        value = sample.extra.get(self.column, "")
        return self.classes.index(value) if value in self.classes else -1

    def to_dict(self) -> dict:
        return {"column": self.column, "classes": list(self.classes)} if self.classes else {}

    @classmethod
    def from_dict(cls, recorded: Mapping) -> AuxiliaryColumn:
        return cls(recorded["column"], tuple(recorded["classes"])) if recorded else cls()

    def metrics(self, logits: torch.Tensor, indices: torch.Tensor) -> dict[str, float]:
        """Accuracy of the head where its class is known; with two classes, also the AUC of the second."""
        known = indices >= 0
        if not known.any():
            return {}
        logits, indices = logits[known].float(), indices[known]
        metrics = {"aux_accuracy": float((logits.argmax(dim=1) == indices).float().mean())}
        if len(self.classes) == 2 and len(indices.unique()) == 2:
            positive = torch.softmax(logits, dim=1)[:, 1]
            metrics["aux_auc"] = float(roc_auc_score(indices.numpy(), positive.numpy()))
        return metrics


class Task(ABC):
    """One task over one label list: its data, model, targets, loss, judgement and submission file.

    The trainer, the dataset, prediction and run.py ask the task; none of them knows which task it
    is. Class attributes describe the trainer's command line; an instance is bound to the label list
    its data (or its checkpoint) names. Probabilities always have one column per label.
    """

    name: ClassVar[str]  # registry key; also the `task` a checkpoint records
    title: ClassVar[str]  # what the trainer trains, for --help
    default_model: ClassVar[str]
    default_lr: ClassVar[float]
    # Whether the trainer offers --lesion-map: an auxiliary lesion-map head learnt beside this task's
    # loss, from the shared dataset's masks or boxes (project.models.lesion_map).
    lesion_maps: ClassVar[bool] = False

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = list(labels)
        self.aux = AuxiliaryColumn()  # set by configure (training) or create_task (a checkpoint's)

    # Data --------------------------------------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The trainer's flags of this task, beside the shared ones (none by default)."""
        return None

    @classmethod
    @abstractmethod
    def load(cls, root: Path, split: str = "train") -> tuple[Scan, list[str]]:
        """The labelled samples of one split of the dataset at `root` (with the problems found) and its labels."""

    @abstractmethod
    def label_columns(self, sample: Sample) -> dict[str, str]:
        """A sample's truth as CSV columns (the run folder's val.csv)."""

    @abstractmethod
    def truth_from_columns(self, row: Mapping[str, str]) -> dict:
        """Sample fields (`label`, `features`) read back from the columns `label_columns` wrote."""

    def configure(self, args: argparse.Namespace, train: Sequence[Sample]) -> None:
        """Keep what this run's later calls (evaluate, ...) need from its arguments and training samples."""
        return None

    def datasets(
        self, args: argparse.Namespace, train: Sequence[Sample], val: Sequence[Sample], model: nn.Module
    ) -> TaskDatasets | None:
        """This task's own datasets (e.g. another channel count or preprocessing); None: the shared
        LesionDataset with the shared preprocessing flags."""
        return None

    # Training ----------------------------------------------------------------------------------

    @abstractmethod
    def model_spec(self, args: argparse.Namespace) -> tuple[str, dict]:
        """(factory name, kwargs) of the model the arguments ask for."""

    @abstractmethod
    def loss(self, args: argparse.Namespace, train: Sequence[Sample]) -> nn.Module:
        """The training criterion: loss(logits, targets) with targets as `target` and `mix` make them."""

    def train_sampler(
        self, args: argparse.Namespace, train: Sequence[Sample], rank: int, world_size: int
    ) -> Sampler | None:
        """A sampler over the training samples; None: shuffled (or DistributedSampler)."""
        return None

    def batch_transform(self, args: argparse.Namespace) -> BatchTransform | None:
        """A transform of each training batch on the device (e.g. mixup); None: none."""
        return None

    @abstractmethod
    def target(self, sample: Sample) -> torch.Tensor:
        """What the dataset yields as a sample's target."""

    @abstractmethod
    def mix(self, target: torch.Tensor, other: torch.Tensor, share: float) -> torch.Tensor:
        """The target of an image that got a `share` of its area from another one (CutMix without boxes)."""

    @abstractmethod
    def evaluate(self, logits: torch.Tensor, targets: torch.Tensor, samples: Sequence[Sample]) -> Evaluation:
        """Metrics (with 'score'), confusion matrices and tuned thresholds; `samples` in the order of `logits`."""

    # Inference ---------------------------------------------------------------------------------

    @abstractmethod
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits [B, ...] to probabilities [B, len(labels)]."""

    def auxiliary_logits(self, logits: torch.Tensor) -> torch.Tensor | None:
        """The auxiliary head's logits [B, len(aux.classes)], after the task's own; None without a head."""
        return None

    @abstractmethod
    def decide(self, probs: np.ndarray, thresholds: Mapping[str, float]) -> np.ndarray:
        """Probabilities [N, len(labels)] to the submitted values, with tuned thresholds by label."""

    def probability_columns(self, probs: np.ndarray) -> dict[str, np.ndarray]:
        """The columns of the probabilities file (run.py --probabilities): one per label by default."""
        return {label: probs[:, index] for index, label in enumerate(self.labels)}

    @abstractmethod
    def write_submission(
        self, out_dir: Path, names: Sequence[str], probs: np.ndarray, thresholds: Mapping[str, float], id_style: str
    ) -> Path:
        """Write the decisions for the images `names` into this task's submission file in `out_dir`; its path."""


class UnknownTask(ValueError):
    """A task name that no class registered."""


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: make `cls` available by its `name` (a name belongs to one class)."""
    registered = TASKS.get(cls.name)
    if registered is not None and registered is not cls:
        raise ValueError(f"task {cls.name!r} is already registered by {registered.__qualname__}")
    TASKS[cls.name] = cls
    return cls


def task_class(name: str) -> type[Task]:
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTask(f"unknown task {name!r}; registered: {', '.join(sorted(TASKS))}") from None


def create_task(name: str, labels: Sequence[str], aux: AuxiliaryColumn | None = None) -> Task:
    """The task registered as `name`, bound to `labels` (and a checkpoint's auxiliary head)."""
    task = task_class(name)(labels)
    if aux is not None:
        task.aux = aux
    return task
