"""Command-line training of any registered task: arguments → the task's data, model and loss → the engine."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from timm.data import resolve_data_config
from torch.utils.data import Dataset, Sampler

from project.config import comma_floats, parse_with_config, save_args
from project.data.cache import UnreadableImages, cache_bytes, fits_in_memory
from project.data.datasets import CutMixConfig, LesionDataset
from project.data.layout import NotADataset, Sample
from project.data.splits import kfold_indices, train_val_indices
from project.data.transforms import AugmentConfig, CutBlackConfig, Preprocess
from project.engine import EngineConfig, Stage, Trainer
from project.losses import LesionMapLoss
from project.models.checkpoint import CheckpointConfig
from project.models.factory import PretrainedWeightsUnavailable, create_model, load_init_weights
from project.runfolder import ARGS_FILE, VALIDATION_FILE, write_validation_split
from project.runtime import default_workers, init_distributed, is_main_process, resolve_device, seed_everything
from project.tasks import Task, task_class
from project.tasks.base import BatchTransform, TaskDatasets


def _workers(text: str) -> int | str:
    return text if text == "auto" else int(text)


def build_parser(name: str) -> argparse.ArgumentParser:
    """Arguments shared by every trainer, then those of the task registered as `name`."""
    task = task_class(name)
    parser = argparse.ArgumentParser(description=f"Train the {task.title}.")
    add = parser.add_argument
    add("--config", type=Path, help="YAML file whose keys are defaults for the flags below")
    add("--data", type=Path, required=True,
        help="dataset root as the task reads it (ultrasound tasks: train/ in the challenge layout, dataset.yaml)")
    add("--out", type=Path, required=True, help="run folder; an existing one is resumed")
    add("--model", default=task.default_model, help="backbone or timm model name")
    add("--model-kwargs", type=json.loads, default={}, help="extra model kwargs as JSON")
    add("--img-size", type=int, default=224)
    add("--epochs", type=int, default=30)
    add("--batch-size", type=int, default=32)
    add("--lr", type=float, default=task.default_lr)
    add("--weight-decay", type=float, default=0.05)
    add("--warmup-epochs", type=float, default=1.0)
    add("--min-lr", type=float, default=1e-6)
    add("--restarts", type=int, default=1, help="cosine cycles (more than 1: warm restarts)")
    add("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
        help="auto: bf16/fp16 on CUDA, fp32 on CPU; bf16 also works on CPU")
    add("--no-channels-last", dest="channels_last", action="store_false")
    add("--grad-clip", type=float, default=1.0, help="max gradient norm; 0 switches clipping off")
    add("--ema-decay", type=float, default=0.0, help="EMA of weights (e.g. 0.999); 0 = off")
    add("--layer-decay", type=float, default=1.0,
        help="layer-wise lr decay: each parameter group below the head (stages, then stem) trains at this "
             "multiple of the one above, e.g. 0.7; 1 = off")
    add("--patience", type=int, default=0, help="early stopping after this many epochs without a better score")
    add("--select", choices=("best", "last"), default="best",
        help="checkpoint of the best validation epoch, or of the last (unbiased figures for cross-validation)")
    add("--seed", type=int, default=0)
    add("--deterministic", action=argparse.BooleanOptionalAction, default=False)
    add("--workers", type=_workers, default="auto",
        help="DataLoader workers; auto: none on CPU (the model uses every core), up to 8 with a GPU")
    add("--cache", choices=("ram", "none"), default="ram",
        help="ram: decode, CutBlack and resize every image once and keep it in memory (skipped with a "
             "message when it would take more than half the available memory); none: every epoch")
    add("--device", default="auto")
    add("--folds", type=int, default=0, help="k-fold cross-validation: number of folds (0: one hold-out split)")
    add("--fold", type=int, default=0, help="which fold validates (0-based)")
    add("--val-fraction", type=float, default=0.2)
    add("--init-weights", type=Path, help="local weights file (.safetensors or a state dict)")
    add("--pretrained", action=argparse.BooleanOptionalAction, default=False,
        help="ImageNet weights: from the installed package for tf_efficientnet_lite0/1/2 (offline), else timm's hub")
    add("--stages", type=json.loads, default=None,
        help='staged unfreezing, JSON list of {"epochs": N, "lr": X, "train": ["head", ...] or "all"}')
    add("--no-cut-black", dest="cut_black", action="store_false")
    add("--cut-black-threshold", type=int, default=10)
    add("--cut-black-fraction", type=float, default=0.8)
    add("--clahe", action=argparse.BooleanOptionalAction, default=False,
            help="CLAHE on every image (training and prediction)")
    add("--remove-marks", action=argparse.BooleanOptionalAction, default=False,
        help="inpaint burnt-in callipers, text and coloured overlays (training and prediction)")
    add("--keep-aspect", action=argparse.BooleanOptionalAction, default=False,
        help="letterbox to img_size (longer side scaled, black padding) instead of stretching to a square")
    add("--lesion-crop", type=float, default=None, metavar="GROW",
        help="train on each image cropped to its lesion box grown GROW times (e.g. 2); prediction then needs "
             "a localiser (run.py --localiser) for the box")
    add("--lesion-crop-jitter", type=float, default=0.0, metavar="AMOUNT",
        help="with --lesion-crop: scale each training box's sides by up to 1 + AMOUNT either way and move it by up "
             "to AMOUNT / 4 of a side, drawn anew every time (as a localiser errs); the training images are then "
             "preprocessed every epoch, not cached")
    add("--whole-view", action=argparse.BooleanOptionalAction, default=False,
        help="with --lesion-crop and --model two_view: the whole image beside the lesion crop, both seen by one "
             "network (no CutMix: a pasted lesion would sit in one view only)")
    add("--mean", type=comma_floats, default=None,
        help="per-channel normalisation mean (default: the model's pretrained one)")
    add("--std", type=comma_floats, default=None,
        help="per-channel normalisation std (default: the model's pretrained one)")
    add("--no-augment", dest="augment", action="store_false")
    add("--augment-options", type=json.loads, default={}, help="AugmentConfig fields as JSON")
    add("--cutmix", type=float, default=0.5, help="probability of lesion-box CutMix")
    if task.lesion_maps:
        add("--lesion-map", type=float, default=0.0,
            help="weight of an auxiliary lesion-map head's loss, learnt from the images' masks/ (else their "
                 "lesion boxes); 0 = no such head")
        add("--lesion-map-stride", type=int, default=32, choices=(8, 16, 32),
            help="the lesion map's cell in pixels: 16 or 8 add the trunk's features at that stride to the "
                 "stride-32 ones (FCN skips), for a finer map and a localiser's tighter boxes")
    task.add_arguments(parser)
    return parser


def split_samples(samples: list[Sample], args: argparse.Namespace) -> tuple[list[Sample], list[Sample]]:
    if args.folds:
        if not 0 <= args.fold < args.folds:
            raise SystemExit(f"--fold must be in 0..{args.folds - 1}, got {args.fold}")
        train, val = kfold_indices(samples, args.folds, args.seed)[args.fold]
    else:
        train, val = train_val_indices(samples, args.val_fraction, args.seed)
    return [samples[i] for i in train], [samples[i] for i in val]


def _preprocess(args: argparse.Namespace, model: torch.nn.Module) -> Preprocess:
    """Preprocessing as the flags say; mean and std are the model's pretrained ones unless given."""
    cut = CutBlackConfig(args.cut_black_threshold, args.cut_black_fraction) if args.cut_black else None
    data_config = resolve_data_config({}, model=model)
    mean = tuple(args.mean or data_config["mean"])
    std = tuple(args.std or data_config["std"])
    preprocess = Preprocess(img_size=args.img_size, mean=mean, std=std, cut_black=cut, clahe=args.clahe,
                            remove_marks=args.remove_marks, keep_aspect=args.keep_aspect, lesion_crop=args.lesion_crop,
                            whole_view=args.whole_view)
    views = getattr(model, "views", 1)
    if preprocess.channels != 3 * views:
        raise SystemExit(f"model {type(model).__name__} takes {views} view(s) and the preprocessing gives "
                         f"{preprocess.channels // 3}: --whole-view goes with --model two_view, and only with it")
    return preprocess


def _build_model(args: argparse.Namespace, name: str, kwargs: dict) -> torch.nn.Module:
    try:
        model = create_model(name, pretrained=args.pretrained, **kwargs)
    except PretrainedWeightsUnavailable as exc:
        raise SystemExit(str(exc)) from None
    if args.init_weights is not None:
        report = load_init_weights(model, args.init_weights)
        if is_main_process():
            print(f"init weights: {report.summary()}", flush=True)
    return model


def cache_images(datasets: Sequence[LesionDataset], data_root: Path) -> None:
    """Fill each dataset's RAM cache if all of them (on every local rank) fit; else say why not."""
    img_size = datasets[0].preprocess.img_size
    needed = sum(cache_bytes(len(dataset), img_size, dataset.lesion_maps, dataset.preprocess.channels)
                 for dataset in datasets)
    count = sum(len(dataset) for dataset in datasets)
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    fits, sizes = fits_in_memory(needed * ranks_here)
    if not fits:
        if is_main_process():
            print(f"image cache off: it would take {sizes}; images are preprocessed every epoch "
                  "(--cache none skips this check)", file=sys.stderr)
        return
    try:
        seconds = sum(dataset.cache_images().seconds for dataset in datasets)
    except UnreadableImages as exc:
        raise SystemExit(f"{data_root}: {exc}") from None
    if is_main_process():
        print(f"image cache: {count} images at {img_size} px, {sizes}, filled in {seconds:.1f} s", flush=True)


@dataclass
class Setup:
    """Everything a training run is built from; `prepare` makes it, `run` hands it to the engine."""

    task: Task
    train_samples: list[Sample]
    val_samples: list[Sample]
    train_data: Dataset
    val_data: Dataset
    model: torch.nn.Module
    criterion: torch.nn.Module
    sampler: Sampler | None
    batch_transform: BatchTransform | None
    engine_config: EngineConfig
    checkpoint_config: CheckpointConfig


def loader_workers(args: argparse.Namespace) -> int:
    """--workers as a number, 'auto' resolved for the run's device."""
    return default_workers(resolve_device(args.device)) if args.workers == "auto" else args.workers


def _engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, min_lr=args.min_lr, restarts=args.restarts, amp=args.amp,
        channels_last=args.channels_last, grad_clip=args.grad_clip, ema_decay=args.ema_decay,
        layer_decay=args.layer_decay, patience=args.patience, select=args.select, seed=args.seed,
        deterministic=args.deterministic,
        workers=loader_workers(args),
        stages=[Stage(**stage) for stage in args.stages] if args.stages else None, device=args.device,
    )


def load_task_data(args: argparse.Namespace, name: str) -> tuple[Task, list[Sample]]:
    """The task registered as `name`, bound to the dataset's labels, and the labelled training samples."""
    task_type = task_class(name)
    try:
        scan, labels = task_type.load(args.data, "train")
    except NotADataset as exc:
        raise SystemExit(str(exc)) from None
    if not scan.samples:
        raise SystemExit(f"{args.data}: no labelled {name} images found")
    if scan.problems and is_main_process():
        print(f"{len(scan.problems)} dataset problem(s); run `python -m project.doctor {args.data}`. First:",
              *scan.problems[:5], sep="\n  ", file=sys.stderr)
    return task_type(labels), scan.samples


def _lesion_datasets(
    args: argparse.Namespace, task: Task, train: Sequence[Sample], val: Sequence[Sample], model: torch.nn.Module
) -> TaskDatasets:
    """The shared datasets: LesionDataset with CutMix and augmentation for training, cached in RAM if asked."""
    preprocess = _preprocess(args, model)
    augment = AugmentConfig(**args.augment_options) if args.augment else None
    train_data = LesionDataset(train, preprocess, task, augment, CutMixConfig(p=args.cutmix), seed=args.seed,
                               lesion_maps=_lesion_map_weight(args) > 0, box_jitter=args.lesion_crop_jitter)
    val_data = LesionDataset(val, preprocess, task)
    if args.cache == "ram":
        cache_images([data for data in (train_data, val_data) if data.cacheable], args.data)
    return TaskDatasets(train_data, val_data, preprocess.to_dict())


def _lesion_map_weight(args: argparse.Namespace) -> float:
    return getattr(args, "lesion_map", 0.0)


def _check_lesion_boxes(args: argparse.Namespace, samples: Sequence[Sample]) -> None:
    """The lesion-crop flags agree with each other, and --lesion-crop has every image's box (labels/<image>.txt)."""
    if getattr(args, "whole_view", False) and (getattr(args, "cutmix", 0.0) > 0 or _lesion_map_weight(args) > 0):
        raise SystemExit("--whole-view goes without --cutmix and --lesion-map: both follow one view, it has two")
    if not getattr(args, "lesion_crop", None):
        for flag, given in (("--lesion-crop-jitter", getattr(args, "lesion_crop_jitter", 0.0)),
                            ("--whole-view", getattr(args, "whole_view", False))):
            if given:
                raise SystemExit(f"{flag} needs --lesion-crop")
        return
    missing = [str(s.path) for s in samples if s.box is None]
    if missing:
        raise SystemExit(f"--lesion-crop needs a lesion box for every image; {len(missing)} have none, e.g. "
                         f"{', '.join(missing[:3])}")


def prepare(args: argparse.Namespace, name: str, rank: int = 0, world_size: int = 1) -> Setup:
    """Data, split, datasets, loss, model and configs for the task `name` as the parsed arguments say."""
    if getattr(args, "lesion_map_stride", 32) != 32 and _lesion_map_weight(args) <= 0:
        raise SystemExit("--lesion-map-stride shapes the lesion-map head: it needs --lesion-map W (W > 0)")
    task, samples = load_task_data(args, name)
    train_samples, val_samples = split_samples(samples, args)
    _check_lesion_boxes(args, samples)
    task.configure(args, train_samples)
    model_name, kwargs = task.model_spec(args)
    criterion, batch_transform = task.loss(args, train_samples), task.batch_transform(args)
    if _lesion_map_weight(args) > 0:
        if batch_transform is not None:
            raise SystemExit("--lesion-map cannot go with a batch transform such as --mixup: it mixes no maps")
        kwargs = {**kwargs, "lesion_map": True, "lesion_map_stride": args.lesion_map_stride}
        criterion = LesionMapLoss(criterion, _lesion_map_weight(args))
    seed_everything(args.seed + rank, args.deterministic)  # a new head's (or a scratch model's) initial weights
    model = _build_model(args, model_name, kwargs)
    data = (task.datasets(args, train_samples, val_samples, model)
            or _lesion_datasets(args, task, train_samples, val_samples, model))
    return Setup(
        task=task,
        train_samples=train_samples,
        val_samples=val_samples,
        train_data=data.train,
        val_data=data.val,
        model=model,
        criterion=criterion,
        sampler=task.train_sampler(args, train_samples, rank, world_size),
        batch_transform=batch_transform,
        engine_config=_engine_config(args),
        checkpoint_config=CheckpointConfig(
            task=task.name, model_name=model_name, model_kwargs=kwargs, labels=task.labels,
            preprocess=data.preprocess, auxiliary=task.aux.to_dict(),
        ),
    )


def run(argv: Sequence[str] | None, name: str) -> dict[str, float]:
    """Train a model for the task registered as `name` as the command line says; returns the metrics of the
    epoch its checkpoint holds (the best, or the last with --select last).

    The run folder gets args.yaml first and, once the data is split, val.csv: the validation samples.
    """
    args = parse_with_config(build_parser(name), argv)
    rank, world_size = init_distributed()
    if is_main_process():
        args.out.mkdir(parents=True, exist_ok=True)
        save_args(args, args.out / ARGS_FILE)
    setup = prepare(args, name, rank, world_size)
    if is_main_process():
        write_validation_split(args.out / VALIDATION_FILE, setup.val_samples, setup.task, args.data)
        print(f"{name}: {len(setup.train_samples)} train / {len(setup.val_samples)} validation images, "
              f"labels {setup.task.labels}, model {setup.checkpoint_config.model_name} "
              f"{setup.checkpoint_config.model_kwargs}, {setup.engine_config.workers} DataLoader workers", flush=True)
    judge = partial(setup.task.evaluate, samples=setup.val_samples)
    trainer = Trainer(setup.model, setup.criterion, judge, setup.train_data, setup.val_data, args.out,
                      setup.engine_config, setup.checkpoint_config, train_sampler=setup.sampler,
                      batch_transform=setup.batch_transform)
    best = trainer.fit()
    if is_main_process() and best:
        print(f"{args.select}: " + " ".join(f"{k}={v:.4f}" for k, v in best.items()), flush=True)
    return best
