"""Command-line training for both ultrasound trainers: arguments → data, model, loss → the engine."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.data import Mixup, resolve_data_config

from project.config import parse_with_config, save_args
from project.data.cache import UnreadableImages, cache_bytes, fits_in_memory
from project.data.datasets import CutMixConfig, LesionDataset
from project.data.layout import NotADataset, Sample, load_split
from project.data.samplers import OversamplingSampler, class_draw_weights
from project.data.splits import kfold_indices, train_val_indices
from project.data.transforms import AugmentConfig, CutBlackConfig, Preprocess
from project.engine import (
    EngineConfig,
    Stage,
    Trainer,
    default_workers,
    init_distributed,
    is_main_process,
    resolve_device,
)
from project.losses import ClassificationLoss, MultiTaskLoss, inverse_frequency_weights
from project.models.checkpoint import CheckpointConfig
from project.models.factory import PretrainedWeightsUnavailable, create_model, load_init_weights
from project.tasks import ClassificationTask, FeatureTask


def _floats(text: str) -> list[float]:
    return [float(v) for v in str(text).split(",")]


def _workers(text: str) -> int | str:
    return text if text == "auto" else int(text)


def build_parser(kind: str) -> argparse.ArgumentParser:
    """Arguments shared by both trainers, then the ones of `kind` ('cla' or 'fea')."""
    what = "BI-RADS classifier (MyConvNeXt)" if kind == "cla" else "lesion-feature recogniser (MyDenseNet)"
    parser = argparse.ArgumentParser(description=f"Train the {what} on a dataset in the challenge layout.")
    add = parser.add_argument
    add("--config", type=Path, help="YAML file whose keys are defaults for the flags below")
    add("--data", type=Path, required=True, help="dataset root holding train/ (and dataset.yaml)")
    add("--out", type=Path, required=True, help="run folder; an existing one is resumed")
    add("--model", default="convnext_tiny" if kind == "cla" else "densenet121", help="backbone or timm model name")
    add("--model-kwargs", type=json.loads, default={}, help="extra model kwargs as JSON")
    add("--img-size", type=int, default=224)
    add("--epochs", type=int, default=30)
    add("--batch-size", type=int, default=32)
    add("--lr", type=float, default=1e-3 if kind == "fea" else 4e-4)
    add("--weight-decay", type=float, default=0.05)
    add("--warmup-epochs", type=float, default=1.0)
    add("--min-lr", type=float, default=1e-6)
    add("--restarts", type=int, default=1, help="cosine cycles (more than 1: warm restarts)")
    add("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
        help="auto: bf16/fp16 on CUDA, fp32 on CPU; bf16 also works on CPU")
    add("--no-channels-last", dest="channels_last", action="store_false")
    add("--grad-clip", type=float, default=1.0, help="max gradient norm; 0 switches clipping off")
    add("--ema-decay", type=float, default=0.0, help="EMA of weights (e.g. 0.999); 0 = off")
    add("--patience", type=int, default=0, help="early stopping after this many epochs without a better score")
    add("--select", choices=("best", "last"), default="best",
        help="checkpoint of the best validation epoch, or of the last (unbiased figures for cross-validation)")
    add("--seed", type=int, default=0)
    add("--deterministic", action="store_true")
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
    add("--pretrained", action="store_true",
        help="ImageNet weights: from the installed package for tf_efficientnet_lite0/1/2 (offline), else timm's hub")
    add("--stages", type=json.loads, default=None,
        help='staged unfreezing, JSON list of {"epochs": N, "lr": X, "train": ["head", ...] or "all"}')
    add("--no-cut-black", dest="cut_black", action="store_false")
    add("--cut-black-threshold", type=int, default=10)
    add("--cut-black-fraction", type=float, default=0.8)
    add("--clahe", action="store_true", help="CLAHE on every image (training and prediction)")
    add("--mean", type=_floats, default=None, help="per-channel normalisation mean (default: the model's pretrained one)")
    add("--std", type=_floats, default=None, help="per-channel normalisation std (default: the model's pretrained one)")
    add("--no-augment", dest="augment", action="store_false")
    add("--augment-options", type=json.loads, default={}, help="AugmentConfig fields as JSON")
    add("--cutmix", type=float, default=0.5, help="probability of lesion-box CutMix")
    if kind == "cla":
        add("--p-block", type=float, default=0.05)
        add("--sd-max", type=float, default=0.6)
        add("--p-head", type=float, default=0.5)
        add("--label-smoothing", type=float, default=0.2)
        add("--oversample", action="store_true", help="WeightedRandomSampler over classes")
        add("--class-weights", type=_floats, default=None,
            help="relative draw rates per class for --oversample, e.g. 1,1,10,5,5,2 (default: equal)")
        add("--weighted-loss", action="store_true", help="inverse-frequency class weights in the loss")
        add("--mixup", type=float, default=0.0, help="mixup alpha (0 = off)")
    else:
        add("--p-layer", type=float, default=0.03)
        add("--p-head", type=float, default=0.5)
        add("--label-smoothing", type=float, default=0.1)
        add("--task-weights", type=_floats, default=None, help="per-task loss weights (default 1.2,1.5,1,1)")
        add("--f1-weight", type=float, default=0.5, help="weight of the soft-F1 loss")
    return parser


def model_spec(args: argparse.Namespace, kind: str, labels: Sequence[str]) -> tuple[str, dict]:
    """(factory name, kwargs): ConvNeXt / DenseNet names get our models, other names are timm baselines."""
    if kind == "cla" and args.model.startswith("convnext"):
        kwargs = {"backbone": args.model, "num_classes": len(labels), "p_block": args.p_block,
                  "sd_max": args.sd_max, "p_head": args.p_head}
        return "my_convnext", {**kwargs, **args.model_kwargs}
    if kind == "cla":
        return args.model, {"num_classes": len(labels), **args.model_kwargs}
    if not args.model.startswith("densenet"):
        raise SystemExit(f"train_binary: --model must be a DenseNet (densenet121, ...), got {args.model!r}")
    kwargs = {"backbone": args.model, "tasks": list(labels), "p_layer": args.p_layer, "p_head": args.p_head}
    return "my_densenet", {**kwargs, **args.model_kwargs}


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
    return Preprocess(img_size=args.img_size, mean=mean, std=std, cut_black=cut, clahe=args.clahe)


def _criterion(args: argparse.Namespace, kind: str, train: list[Sample], labels: Sequence[str]) -> torch.nn.Module:
    if kind == "fea":
        weights = args.task_weights or ((1.2, 1.5, 1.0, 1.0) if len(labels) == 4 else (1.0,) * len(labels))
        return MultiTaskLoss(task_weights=weights, label_smoothing=args.label_smoothing, f1_weight=args.f1_weight)
    class_weights = inverse_frequency_weights([s.label for s in train], len(labels)) if args.weighted_loss else None
    return ClassificationLoss(class_weights=class_weights, label_smoothing=args.label_smoothing)


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


def labelled_samples(scan_samples: Sequence[Sample]) -> list[Sample]:
    """Samples with a class or at least one known feature value."""
    return [s for s in scan_samples if s.label is not None or any(v is not None for v in s.features.values())]


def cache_images(datasets: Sequence[LesionDataset], data_root: Path) -> None:
    """Fill each dataset's RAM cache if all of them (on every local rank) fit; else say why not."""
    count = sum(len(dataset) for dataset in datasets)
    img_size = datasets[0].preprocess.img_size
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    fits, sizes = fits_in_memory(cache_bytes(count, img_size) * ranks_here)
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

    labels: list[str]
    train_samples: list[Sample]
    val_samples: list[Sample]
    train_data: LesionDataset
    val_data: LesionDataset
    task: ClassificationTask | FeatureTask
    model: torch.nn.Module
    sampler: OversamplingSampler | None
    batch_transform: Mixup | None
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
        patience=args.patience, select=args.select, seed=args.seed, deterministic=args.deterministic,
        workers=loader_workers(args),
        stages=[Stage(**stage) for stage in args.stages] if args.stages else None, device=args.device,
    )


def prepare(args: argparse.Namespace, kind: str, rank: int = 0, world_size: int = 1) -> Setup:
    """Data, split, datasets, loss, model and configs for `kind` as the parsed arguments say."""
    try:
        scan, dataset_config = load_split(args.data, "train", kind)
    except NotADataset as exc:
        raise SystemExit(str(exc)) from None
    labels = list(dataset_config.classes if kind == "cla" else dataset_config.tasks)
    samples = labelled_samples(scan.samples)
    if not samples:
        raise SystemExit(f"{args.data}: no labelled {kind} images found")
    if scan.problems and is_main_process():
        print(f"{len(scan.problems)} dataset problem(s); run `python -m project.doctor {args.data}`. First:",
              *scan.problems[:5], sep="\n  ", file=sys.stderr)
    train_samples, val_samples = split_samples(samples, args)
    name, kwargs = model_spec(args, kind, labels)
    model = _build_model(args, name, kwargs)
    preprocess = _preprocess(args, model)
    augment = AugmentConfig(**args.augment_options) if args.augment else None
    criterion = _criterion(args, kind, train_samples, labels)
    sampler, batch_transform = None, None
    if kind == "cla" and args.oversample:
        weights = class_draw_weights([s.label for s in train_samples], len(labels), args.class_weights)
        sampler = OversamplingSampler(weights, seed=args.seed, rank=rank, world_size=world_size)
    if kind == "cla" and args.mixup > 0:
        batch_transform = Mixup(mixup_alpha=args.mixup, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=len(labels))
    train_data = LesionDataset(train_samples, preprocess, kind, augment, CutMixConfig(p=args.cutmix), seed=args.seed)
    val_data = LesionDataset(val_samples, preprocess, kind)
    if args.cache == "ram":
        cache_images([train_data, val_data], args.data)
    return Setup(
        labels=labels,
        train_samples=train_samples,
        val_samples=val_samples,
        train_data=train_data,
        val_data=val_data,
        task=ClassificationTask(labels, criterion) if kind == "cla" else FeatureTask(labels, criterion),
        model=model,
        sampler=sampler,
        batch_transform=batch_transform,
        engine_config=_engine_config(args),
        checkpoint_config=CheckpointConfig(
            task=kind, model_name=name, model_kwargs=kwargs, labels=labels, preprocess=preprocess.to_dict()
        ),
    )


def run(argv: Sequence[str] | None, kind: str) -> dict[str, float]:
    """Train one model as the command line says; returns the best epoch's metrics."""
    args = parse_with_config(build_parser(kind), argv)
    rank, world_size = init_distributed()
    if is_main_process():
        args.out.mkdir(parents=True, exist_ok=True)
        save_args(args, args.out / "args.yaml")
    setup = prepare(args, kind, rank, world_size)
    if is_main_process():
        print(f"{kind}: {len(setup.train_samples)} train / {len(setup.val_samples)} validation images, "
              f"labels {setup.labels}, model {setup.checkpoint_config.model_name} "
              f"{setup.checkpoint_config.model_kwargs}, {setup.engine_config.workers} DataLoader workers", flush=True)
    trainer = Trainer(setup.model, setup.task, setup.train_data, setup.val_data, args.out, setup.engine_config,
                      setup.checkpoint_config, train_sampler=setup.sampler, batch_transform=setup.batch_transform)
    best = trainer.fit()
    if is_main_process() and best:
        print("best: " + " ".join(f"{k}={v:.4f}" for k, v in best.items()), flush=True)
    return best
