"""The one training loop every task shares: optimisation, validation, logging, checkpoints, resume, DDP."""

from __future__ import annotations

import csv
import io
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Sampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from project.fileio import atomic_write_bytes, atomic_write_text
from project.models.checkpoint import CheckpointConfig, save_checkpoint
from project.models.factory import param_groups
from project.plots import plot_confusion_matrices, plot_learning_curves
from project.runfolder import BEST_CHECKPOINT, RESUME_STATE, SUMMARY_FILE
from project.runtime import (
    ShardSampler,
    autocast_dtype,
    gather,
    init_distributed,
    is_main_process,
    make_loader,
    resolve_device,
    seed_everything,
    unshard,
)
from project.tasks.base import Evaluation

PROGRESS_EVERY = 10  # training steps between progress-bar updates
Judge = Callable[[torch.Tensor, torch.Tensor], Evaluation]


@dataclass
class Stage:
    """One phase of staged unfreezing: which parameter groups train, at what rate, how long."""

    epochs: int
    lr: float
    train: Sequence[str] | str = "all"


@dataclass
class EngineConfig:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr: float = 1e-6
    restarts: int = 1
    amp: str = "auto"
    channels_last: bool = True
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    layer_decay: float = 1.0  # below 1: layer-wise learning-rate decay from the head down
    patience: int = 0
    select: str = "best"  # "last": the checkpoint holds the final epoch, no selection on the validation set
    seed: int = 0
    deterministic: bool = False
    workers: int = 2
    stages: list[Stage] | None = None
    device: str = "auto"

    def plan(self) -> list[Stage]:
        return self.stages or [Stage(epochs=self.epochs, lr=self.lr)]


def _trainable(model: nn.Module, stage: Stage) -> list[nn.Parameter]:
    if stage.train == "all":
        for param in model.parameters():
            param.requires_grad_(True)
        return list(model.parameters())
    groups = param_groups(model)
    names = list(stage.train)
    unknown = set(names) - set(groups)
    if unknown:
        raise ValueError(f"unknown parameter group(s) {sorted(unknown)}; this model has {list(groups)}")
    chosen = {id(p) for name in names for p in groups[name]}
    for param in model.parameters():
        param.requires_grad_(id(param) in chosen)
    return [p for p in model.parameters() if p.requires_grad]


def layer_lr_scales(model: nn.Module, layer_decay: float) -> dict[int, float]:
    """Layer-wise learning-rate decay: id(parameter) -> layer_decay ** depth, where depth counts the
    parameter groups of `param_groups` from the head (0) down to the stem; empty when decay is 1."""
    if layer_decay >= 1.0:
        return {}
    return {id(p): layer_decay**depth for depth, params in enumerate(param_groups(model).values()) for p in params}


def _optimizer(
    params: list[nn.Parameter], lr: float, weight_decay: float, lr_scales: dict[int, float] | None = None
) -> torch.optim.Optimizer:
    """AdamW with one group per (weight decay, lr scale); timm's schedulers multiply a group's rate by
    its `lr_scale`. Norm weights and biases (1-d tensors) are not decayed, as in timm's recipes. The
    head's group (scale 1) comes first, so the logged rate is the head's."""
    scales = lr_scales or {}
    buckets: dict[tuple[float, float], list[nn.Parameter]] = {}
    for param in params:
        key = (scales.get(id(param), 1.0), weight_decay if param.ndim > 1 else 0.0)
        buckets.setdefault(key, []).append(param)
    groups = [{"params": group, "lr_scale": scale, "weight_decay": decay}
              for (scale, decay), group in sorted(buckets.items(), key=lambda item: (-item[0][0], -item[0][1]))]
    return torch.optim.AdamW(groups, lr=lr)


def to_device(targets: torch.Tensor | Sequence[torch.Tensor], device: torch.device) -> torch.Tensor | tuple:
    """A batch's targets on the device: one tensor, or a tuple of them (a task's targets with lesion maps)."""
    if isinstance(targets, torch.Tensor):
        return targets.to(device, non_blocking=True)
    return tuple(target.to(device, non_blocking=True) for target in targets)


def _scheduler(optimizer, config: EngineConfig, stage: Stage, steps_per_epoch: int) -> CosineLRScheduler:
    total = max(stage.epochs * steps_per_epoch, 1)
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)
    return CosineLRScheduler(
        optimizer,
        t_initial=max((total - warmup) // config.restarts, 1),
        lr_min=config.min_lr,
        cycle_limit=config.restarts,
        warmup_t=warmup,
        warmup_lr_init=stage.lr * 0.01,
        warmup_prefix=True,
        t_in_epochs=False,
    )


class Trainer:
    """Fits `model` to minimise `criterion` on `train_data`, judging each epoch on `val_data`, into `out_dir`.

    `judge(logits, targets)` evaluates the whole validation set, its rows in `val_data`'s order. Without
    `val_data` (a final model trained on every labelled image) nothing is judged and the checkpoint holds
    the last epoch, so `config.select` must be "last".
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module,
        judge: Judge,
        train_data: Dataset,
        val_data: Dataset | None,
        out_dir: Path,
        config: EngineConfig,
        checkpoint_config: CheckpointConfig,
        train_sampler: Sampler | None = None,
        batch_transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        if val_data is None and config.select != "last":
            raise ValueError(f"select={config.select!r} needs validation data to select by; use select='last'")
        self.rank, self.world_size = init_distributed()
        seed_everything(config.seed + self.rank, config.deterministic)
        self.config, self.criterion, self.judge, self.out_dir = config, criterion, judge, Path(out_dir)
        self.checkpoint_config = checkpoint_config
        self.device = resolve_device(config.device)
        self.dtype = autocast_dtype(config.amp, self.device)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.criterion = criterion.to(self.device)  # class weights and other buffers live with the logits
        self.ddp = DistributedDataParallel(self.model) if self.world_size > 1 else None
        self.ema = ModelEmaV3(self.model, decay=config.ema_decay, use_warmup=True) if config.ema_decay > 0 else None
        if train_sampler is None and self.world_size > 1:
            train_sampler = torch.utils.data.DistributedSampler(train_data, seed=config.seed)
        self.train_sampler = train_sampler
        per_rank_batch = max(config.batch_size // self.world_size, 1)
        self.train_loader = make_loader(train_data, per_rank_batch, config.workers, train_sampler, train=True,
                                        persistent=True)
        self.val_loader = None if val_data is None else make_loader(
            val_data, per_rank_batch, config.workers, ShardSampler(len(val_data), self.rank, self.world_size),
            persistent=True)
        self.batch_transform = batch_transform
        self.scaler = torch.amp.GradScaler(enabled=self.dtype == torch.float16)
        self.history: list[dict[str, float]] = []
        self.best_score = -math.inf
        self.stale_epochs = 0
        self.epoch = 0
        self.stage_index: int | None = None
        self.writer = SummaryWriter(str(self.out_dir / "tensorboard")) if is_main_process() else None

    # The model whose weights are judged and saved: the EMA copy when EMA is on.
    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _stage_at(self, epoch: int) -> tuple[int, Stage]:
        start = 0
        for index, stage in enumerate(self.config.plan()):
            if epoch < start + stage.epochs:
                return index, stage
            start += stage.epochs
        raise IndexError(epoch)

    def _stage_start(self, index: int) -> int:
        return sum(stage.epochs for stage in self.config.plan()[:index])

    def _begin_stage(self, index: int, stage: Stage) -> None:
        """Fresh optimizer and schedule for a stage; called once per stage, not per epoch."""
        self.stage_index = index
        params = _trainable(self.model, stage)
        scales = layer_lr_scales(self.model, self.config.layer_decay)
        self.optimizer = _optimizer(params, stage.lr, self.config.weight_decay, scales)
        self.scheduler = _scheduler(self.optimizer, self.config, stage, len(self.train_loader))

    def fit(self) -> dict[str, float]:
        """Train to the end of the plan or early stop; returns the metrics of the epoch the checkpoint holds
        (the best one, or the last with select='last')."""
        total_epochs = sum(stage.epochs for stage in self.config.plan())
        self._resume()
        while self.epoch < total_epochs:
            index, stage = self._stage_at(self.epoch)
            if index != self.stage_index:
                self._begin_stage(index, stage)
            started = time.perf_counter()
            train_loss, images = self._train_epoch(index)
            speed = images * self.world_size / (time.perf_counter() - started)
            evaluation, val_loss = self._evaluate()
            self.epoch += 1
            stop = self._end_epoch(train_loss, speed, val_loss, evaluation)
            if stop:
                break
        if self.writer:
            self.writer.close()
        if dist.is_initialized():
            dist.barrier()
        if not self.history:
            return {}
        if self.config.select == "last":
            return self.history[-1]
        return max(self.history, key=lambda row: row["val_score"])

    def _train_epoch(self, stage_index: int) -> tuple[float, int]:
        """Mean training loss and the number of images this rank saw."""
        network = self.ddp or self.model
        network.train()
        if hasattr(self.train_sampler, "set_epoch"):
            self.train_sampler.set_epoch(self.epoch)
        steps_per_epoch = len(self.train_loader)
        step = (self.epoch - self._stage_start(stage_index)) * steps_per_epoch
        total, count = torch.zeros((), device=self.device), 0
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1} train", disable=not is_main_process(),
                   leave=False, mininterval=2.0)
        for batch, (images, targets) in enumerate(bar):
            images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
            targets = to_device(targets, self.device)
            if self.batch_transform is not None:
                images, targets = self.batch_transform(images, targets)
            loss = self._step(network, images, targets)
            if self.ema is not None:
                # The run's step count turns on the EMA warm-up: its decay rises from 0 towards ema_decay
                # (without it, a 0.999 average over a few hundred steps would stay near the initial weights).
                self.ema.update(self.model, step=self.epoch * steps_per_epoch + batch)
            step += 1
            self.scheduler.step_update(step)
            total += loss * len(images)
            count += len(images)
            if step % PROGRESS_EVERY == 0:  # reading the loss waits for the device, so not every step
                bar.set_postfix(loss=f"{float(total) / count:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                                refresh=False)
        return float(total) / max(count, 1), count

    def _step(self, network: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            loss = self.criterion(network(images), targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach().float()

    @torch.inference_mode()
    def _evaluate(self) -> tuple[Evaluation | None, float | None]:
        """The judge's evaluation and the validation loss on rank 0 (None, 0.0 elsewhere); without validation
        data, an empty evaluation and no loss."""
        if self.val_loader is None:
            return Evaluation(metrics={}), None
        model = self.eval_model.eval()
        logits, targets = [], []
        for images, target in self.val_loader:
            images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
            with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                logits.append(model(images).float().cpu())
            targets.append(target)
        logits, targets = unshard(gather([torch.cat(logits), torch.cat(targets)]), self.world_size)
        if not is_main_process():
            return None, 0.0
        val_loss = float(self.criterion(logits, targets))
        return self.judge(logits, targets), val_loss

    def _end_epoch(
        self, train_loss: float, speed: float, val_loss: float | None, evaluation: Evaluation | None
    ) -> bool:
        """Log, checkpoint and decide early stopping on rank 0; every rank learns the decision."""
        stop = [False]
        if is_main_process():
            row = {"epoch": self.epoch, "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train_loss,
                   "train_images_per_s": speed, **({} if val_loss is None else {"val_loss": val_loss}),
                   **{f"val_{k}": v for k, v in evaluation.metrics.items()}}
            self.history.append(row)
            self._log(row)
            improved = "val_score" in row and row["val_score"] > self.best_score
            if improved:
                self.best_score, self.stale_epochs = row["val_score"], 0
            elif "val_score" in row:  # without validation nothing goes stale: patience never stops the run
                self.stale_epochs += 1
            if improved or self.config.select == "last":
                self._save_checkpoint(evaluation)
            self._save_resume_state()
            stop[0] = 0 < self.config.patience <= self.stale_epochs
        if dist.is_initialized():
            dist.broadcast_object_list(stop, src=0)
        return stop[0]

    def _log(self, row: dict[str, float]) -> None:
        for key, value in row.items():
            if key != "epoch":
                self.writer.add_scalar(key, value, self.epoch)
        self.writer.flush()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(row), lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_text(self.out_dir / SUMMARY_FILE, buffer.getvalue())
        plot_learning_curves(self.history, self.out_dir / "learning_curves.png")
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)

    def _save_checkpoint(self, evaluation: Evaluation) -> None:
        config = self.checkpoint_config
        config.metrics = {k: float(v) for k, v in evaluation.metrics.items()}
        config.thresholds = dict(evaluation.thresholds)
        config.epoch = self.epoch
        save_checkpoint(self.out_dir / BEST_CHECKPOINT, self.eval_model, config)
        if evaluation.confusion:
            plot_confusion_matrices(evaluation.confusion, evaluation.confusion_labels,
                                    self.out_dir / "confusion_matrix.png")

    def _save_resume_state(self) -> None:
        state = {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_score": self.best_score,
            "stale_epochs": self.stale_epochs,
            "history": self.history,
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(self.out_dir / RESUME_STATE, buffer.getvalue())

    def _resume(self) -> None:
        """Continue from `last_state.pt` when the run folder has one (loaded without pickle)."""
        path = self.out_dir / RESUME_STATE
        if not path.is_file():
            return
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.best_score = state["epoch"], state["best_score"]
        self.stale_epochs, self.history = state["stale_epochs"], state["history"]
        torch.set_rng_state(state["torch_rng"].cpu())
        random.setstate(state["python_rng"])
        total_epochs = sum(stage.epochs for stage in self.config.plan())
        if self.epoch < total_epochs:
            index, stage = self._stage_at(self.epoch)
            self._begin_stage(index, stage)
            if self.epoch > self._stage_start(index):
                self.optimizer.load_state_dict(state["optimizer"])
                self.scheduler.load_state_dict(state["scheduler"])
                self.scaler.load_state_dict(state["scaler"])
        if is_main_process():
            print(f"resumed from {path} after epoch {self.epoch}", flush=True)

