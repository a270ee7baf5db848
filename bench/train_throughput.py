"""Training throughput: the engine with its data pipeline against a bare forward/backward loop, per model."""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from project.fileio import atomic_write_csv  # noqa: E402
from project.phantom import generate_phantom  # noqa: E402
from project.runfolder import SUMMARY_FILE  # noqa: E402
from project.runtime import autocast_dtype, make_loader, resolve_device  # noqa: E402
from project.training import Setup, build_parser, loader_workers, prepare, run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# The CPU recipe's small MyDenseNet, so the bench and `make demo` agree on what "small" is.
SMALL_DENSENET_CONFIG = ROOT / "configs" / "fea_phantom_cpu.yaml"
GOAL = 0.9
CSV_HEADER = ("model", "backbone", "measurement", "images_per_s", "ratio_to_bare", "device", "img_size",
              "batch_size", "steps_per_epoch", "workers", "dtype", "channels_last")


@dataclass(frozen=True)
class ModelRow:
    title: str
    kind: str  # the trainer: 'cla' (train_cls) or 'fea' (train_fea)
    backbone: str
    model_kwargs: str  # JSON for --model-kwargs


@dataclass(frozen=True)
class Measurement:
    name: str
    images_per_s: float


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Bench options, and the remaining flags, which go to both trainers' command lines unchanged."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description="images/s of the training engine (real data pipeline) versus a bare training loop",
        epilog="Any other flag is passed to the trainers (flags both accept, e.g. --amp bf16, --cutmix 0, "
               "--no-channels-last); the bare loop follows the same dtype and memory format.",
    )
    add = parser.add_argument
    add("--models", default="convnext,densenet", help="comma-separated: convnext, densenet")
    add("--convnext", default="convnext_atto", help="MyConvNeXt backbone")
    add("--small", action=argparse.BooleanOptionalAction, default=None,
        help=f"MyDenseNet with the small backbone of {SMALL_DENSENET_CONFIG.name} instead of densenet121 "
             "(default: small on CPU, densenet121 on GPU)")
    add("--img-size", type=int, default=None, help="default 128 on CPU, 224 on GPU")
    add("--batch-size", type=int, default=32)
    add("--epochs", type=int, default=3, help="engine epochs; the first is warm-up and not counted")
    add("--steps", type=int, default=10, help="training steps per epoch (sets the phantom's size)")
    add("--warmup-steps", type=int, default=3, help="untimed bare-loop steps before timing")
    add("--workers", default="auto", help="DataLoader workers, as the trainers' --workers (auto: none on CPU)")
    add("--threads", type=int, default=None, help="torch threads of this process (default: torch's choice)")
    add("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add("--phantom-size", type=int, default=256, help="side of the phantom JPEGs on disk, in pixels")
    add("--out", type=Path, default=None, help="also write the table to this CSV")
    args, trainer_flags = parser.parse_known_args(argv)
    if args.epochs < 2 or args.steps < 1:
        parser.error("--epochs must be at least 2 (the first is warm-up) and --steps at least 1")
    on_gpu = resolve_device(args.device).type == "cuda"
    args.img_size = args.img_size or (224 if on_gpu else 128)
    args.small = (not on_gpu) if args.small is None else args.small
    return args, trainer_flags


def model_rows(args: argparse.Namespace) -> list[ModelRow]:
    small = yaml.safe_load(SMALL_DENSENET_CONFIG.read_text())["model_kwargs"] if args.small else {}
    available = {
        "convnext": ModelRow("MyConvNeXt", "cla", args.convnext, "{}"),
        "densenet": ModelRow("MyDenseNet" + (" (small)" if args.small else ""), "fea", "densenet121",
                             json.dumps(small)),
    }
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(names) - set(available))
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; choose from {sorted(available)}")
    return [available[name] for name in names]


def images_per_kind(args: argparse.Namespace) -> int:
    """Labelled images per trainer so that the training split fills `--steps` full batches."""
    val_fraction = build_parser("cla").get_default("val_fraction")
    # Stratified folds round per stratum; the slack keeps the last batch full.
    return math.ceil(args.steps * args.batch_size / (1 - val_fraction)) + args.batch_size // 2


def trainer_argv(args: argparse.Namespace, row: ModelRow, data: Path, out: Path, flags: list[str]) -> list[str]:
    return ["--data", str(data), "--out", str(out), "--model", row.backbone, "--model-kwargs", row.model_kwargs,
            "--img-size", str(args.img_size), "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
            "--workers", str(args.workers), "--device", args.device, *flags]


def median_after_warmup(rates: Sequence[float]) -> float:
    return statistics.median(rates[1:])


def measure_data_pipeline(trainer_args: argparse.Namespace, setup: Setup, epochs: int
                          ) -> tuple[Measurement, int, tuple[torch.Tensor, torch.Tensor]]:
    """Loader alone (model skipped): images/s per epoch, the steps per epoch and one batch to train on."""
    loader = make_loader(setup.train_data, trainer_args.batch_size, loader_workers(trainer_args), None, train=True,
                         persistent=True)
    rates, first_batch = [], None
    for _ in range(epochs):
        started, images_seen = time.perf_counter(), 0
        for images, targets in loader:
            if first_batch is None:
                first_batch = (images, targets)
            images_seen += len(images)
        rates.append(images_seen / (time.perf_counter() - started))
    steps = len(loader)
    del loader
    gc.collect()
    return Measurement("data pipeline alone", median_after_warmup(rates)), steps, first_batch


class BareLoop:
    """Forward, loss, backward and AdamW step on one in-memory batch, with the engine's model, dtype and layout."""

    def __init__(self, trainer_args: argparse.Namespace, setup: Setup,
                 batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.device = resolve_device(trainer_args.device)
        self.dtype = autocast_dtype(trainer_args.amp, self.device)
        memory_format = torch.channels_last if trainer_args.channels_last else torch.contiguous_format
        self.model = setup.model.to(self.device, memory_format=memory_format).train()
        self.criterion = setup.criterion.to(self.device)  # class and task weights live with the logits
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=trainer_args.lr,
                                           weight_decay=trainer_args.weight_decay)
        self.scaler = torch.amp.GradScaler(enabled=self.dtype == torch.float16)
        self.images = batch[0].to(self.device, memory_format=memory_format)
        self.targets = batch[1].to(self.device)

    def step(self) -> None:
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            loss = self.criterion(self.model(self.images), self.targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def images_per_s(self, steps: int) -> float:
        """Throughput over `steps` steps, the device drained at both ends."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        started = time.perf_counter()
        for _ in range(steps):
            self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return steps * len(self.images) / (time.perf_counter() - started)


def measure_engine(argv: list[str], kind: str, run_dir: Path) -> Measurement:
    """The real trainer; the engine times only each epoch's training pass (validation excluded)."""
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            run(argv, kind)
    except BaseException:
        print(log.getvalue(), file=sys.stderr)
        raise
    gc.collect()
    with (run_dir / SUMMARY_FILE).open() as handle:
        rates = [float(row["train_images_per_s"]) for row in csv.DictReader(handle)]
    return Measurement("engine (data pipeline + Trainer)", median_after_warmup(rates))


def note(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ModelResult:
    row: ModelRow
    steps_per_epoch: int
    measurements: tuple[Measurement, Measurement, Measurement]  # bare loop, engine, data pipeline alone

    @property
    def bare(self) -> float:
        return self.measurements[0].images_per_s


@dataclass(frozen=True)
class Settings:
    """What the trainers will use, as their own parser reads the passed-through flags."""

    device: torch.device
    dtype: torch.dtype
    channels_last: bool
    augment: bool
    cutmix: float
    workers: int

    @classmethod
    def of(cls, args: argparse.Namespace, flags: list[str]) -> Settings:
        trainer_args = build_parser("cla").parse_args(["--data", ".", "--out", ".", "--device", args.device,
                                                       "--workers", args.workers, *flags])
        device = resolve_device(args.device)
        dtype = autocast_dtype(trainer_args.amp, device) or torch.float32
        return cls(device, dtype, trainer_args.channels_last, trainer_args.augment, trainer_args.cutmix,
                   loader_workers(trainer_args))


def bench_model(args: argparse.Namespace, row: ModelRow, data: Path, work: Path, flags: list[str]) -> ModelResult:
    """Data pipeline alone, then the engine with bare-loop timings before and after it.

    Splitting the bare loop's timed runs around the engine run exposes both to the same drift
    in machine load (other processes on a shared machine).
    """
    run_dir = work / f"run_{row.kind}"
    argv = trainer_argv(args, row, data, run_dir, flags)
    trainer_args = build_parser(row.kind).parse_args(argv)
    note(f"{row.title}: data pipeline alone, {args.epochs} epochs")
    setup = prepare(trainer_args, row.kind)  # data (with its image cache), model and loss, as the trainer builds them
    data_alone, steps, batch = measure_data_pipeline(trainer_args, setup, args.epochs)
    repeats = args.epochs - 1
    note(f"{row.title}: bare loop, {args.warmup_steps} warm-up + {(repeats + 1) // 2} x {steps} steps")
    bare = BareLoop(trainer_args, setup, batch)
    bare.images_per_s(args.warmup_steps)
    rates = [bare.images_per_s(steps) for _ in range((repeats + 1) // 2)]
    note(f"{row.title}: engine, {args.epochs} epochs of {steps} steps")
    engine = measure_engine(argv, row.kind, run_dir)
    note(f"{row.title}: bare loop, {repeats // 2} x {steps} steps")
    rates += [bare.images_per_s(steps) for _ in range(repeats // 2)]
    return ModelResult(row, steps, (Measurement("bare loop", statistics.median(rates)), engine, data_alone))


def environment_lines(args: argparse.Namespace, settings: Settings, flags: list[str]) -> list[str]:
    device = settings.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"device {device} ({name}); torch {torch.__version__}; {torch.get_num_threads()} torch threads; "
        f"{cores} CPU cores; {settings.workers} DataLoader workers",
        f"img {args.img_size} px from {args.phantom_size} px phantom JPEGs; batch {args.batch_size}; "
        f"{args.epochs} engine epochs (median of epochs 2..{args.epochs}); dtype {settings.dtype}; "
        f"channels_last {settings.channels_last}; augmentation {settings.augment}; "
        f"CutMix p {settings.cutmix}; trainer flags {' '.join(flags) or 'none'}",
    ]


def print_table(results: list[ModelResult]) -> None:
    header = f"{'model':<30} {'steps/ep':>8}  {'measurement':<34} {'images/s':>9} {'/ bare':>7}"
    print(header)
    print("-" * len(header))
    for result in results:
        for index, measurement in enumerate(result.measurements):
            title = f"{result.row.title} {result.row.backbone}" if index == 0 else ""
            steps = str(result.steps_per_epoch) if index == 0 else ""
            ratio = measurement.images_per_s / result.bare
            verdict = (" ok" if ratio >= GOAL else f" < {GOAL}") if measurement.name.startswith("engine") else ""
            print(f"{title:<30} {steps:>8}  {measurement.name:<34} {measurement.images_per_s:>9.1f}"
                  f" {ratio:>7.2f}{verdict}")
        data_alone = result.measurements[2].images_per_s
        print(f"{'':<40}(if data and compute took turns on the cores: 1/(1/bare + 1/data) = "
              f"{1 / (1 / result.bare + 1 / data_alone):.1f} images/s)")


def write_csv(path: Path, args: argparse.Namespace, settings: Settings, results: list[ModelResult]) -> None:
    rows = [
        (result.row.title, result.row.backbone, m.name, f"{m.images_per_s:.2f}", f"{m.images_per_s / result.bare:.3f}",
         str(settings.device), args.img_size, args.batch_size, result.steps_per_epoch, settings.workers,
         str(settings.dtype), settings.channels_last)
        for result in results for m in result.measurements
    ]
    atomic_write_csv(path, CSV_HEADER, rows)


def main(argv: Sequence[str] | None = None) -> int:
    args, flags = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = model_rows(args)
    settings = Settings.of(args, flags)
    with tempfile.TemporaryDirectory(prefix="train_throughput_") as tmp:
        work, data = Path(tmp), Path(tmp) / "phantom"
        n_train = 2 * images_per_kind(args)
        note(f"writing a phantom of {n_train} images ({n_train // 2} per trainer) at {args.phantom_size} px")
        with contextlib.redirect_stderr(io.StringIO()):
            generate_phantom(data, n_train=n_train, n_test=0, size=args.phantom_size, seed=0)
        results = [bench_model(args, row, data, work, flags) for row in rows]
    print("\n".join(environment_lines(args, settings, flags)))
    print_table(results)
    if args.out is not None:
        write_csv(args.out, args, settings, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
