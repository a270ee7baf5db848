"""Mammography prediction from DICOM: end-to-end images/s against the bare model forward on the same batch."""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from project.fileio import atomic_write_csv  # noqa: E402
from project.mammo.dicom import dali_status  # noqa: E402
from project.mammo.phantom import generate  # noqa: E402
from project.mammo.predict import (  # noqa: E402
    TASK,
    Member,
    cpu_threads,
    load_members,
    loaded_batches,
    predict,
    read_rows,
    write_submission,
)
from project.mammo.prepare import parse_size  # noqa: E402
from project.mammo.preprocess import MammoPreprocess  # noqa: E402
from project.models.checkpoint import CheckpointConfig, save_checkpoint  # noqa: E402
from project.models.factory import create_model  # noqa: E402
from project.runtime import autocast_dtype, resolve_device  # noqa: E402

GOAL = 0.9
COLUMNS = ("model", "input", "images", "end_to_end_per_s", "bare_forward_per_s", "ratio", "decode_preprocess_per_s",
           "taking_turns_per_s", "decoders")


@dataclass(frozen=True)
class Row:
    model: str
    input: str
    images: int
    end_to_end: float
    bare: float
    pipeline: float
    decoders: str

    @property
    def ratio(self) -> float:
        return self.end_to_end / self.bare

    @property
    def taking_turns(self) -> float:
        """Images/s if decoding and the model ran one after the other on the same cores."""
        return 1 / (1 / self.bare + 1 / self.pipeline)

    def cells(self) -> list[str]:
        return [self.model, self.input, str(self.images), f"{self.end_to_end:.1f}", f"{self.bare:.1f}",
                f"{self.ratio:.2f}", f"{self.pipeline:.1f}", f"{self.taking_turns:.1f}", self.decoders]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    add = parser.add_argument
    add("--models", default="resnet10t,tf_efficientnet_lite0", help="comma-separated timm names (in_chans=1)")
    add("--img-size", type=parse_size, default=(512, 256), help="model input HxW")
    add("--dicom-size", type=parse_size, default=(1024, 832), help="phantom DICOM HxW")
    add("--n-images", type=int, default=48, help="DICOMs predicted per model (a multiple of 4)")
    add("--batch-size", type=int, default=8)
    add("--workers", type=int, default=2, help="decode and preprocessing processes, as predict --workers")
    add("--backend", choices=("auto", "dali", "pydicom"), default="auto")
    add("--device", default="auto")
    add("--threads", type=int, default=0, help="torch CPU threads (default: as predict, cores minus workers)")
    add("--out", type=Path, help="also write the table to this CSV")
    args = parser.parse_args(argv)
    if args.n_images < 2 * args.batch_size:
        parser.error("--n-images must be at least two batches")
    return args


def save_random_checkpoint(name: str, size: tuple[int, int], path: Path) -> Path:
    """A randomly initialised one-channel model: speed does not depend on the weights."""
    kwargs = {"in_chans": 1, "num_classes": 1}
    config = CheckpointConfig(TASK, name, kwargs, ["cancer"], MammoPreprocess(size=size).to_dict())
    save_checkpoint(path, create_model(name, **kwargs), config)
    return path


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def bare_rate(member: Member, images: torch.Tensor, n_images: int, device: torch.device) -> float:
    """Images/s of the model alone on one preprocessed batch, repeated to `n_images`, after one untimed call."""
    dtype = autocast_dtype("auto", device)
    images = images.to(device, memory_format=torch.channels_last)
    batches = math.ceil(n_images / len(images))
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        member.model(images)
        synchronize(device)
        started = time.perf_counter()
        for _ in range(batches):
            member.model(images)
        synchronize(device)
    return batches * len(images) / (time.perf_counter() - started)


def pipeline_rate(rows: list, member: Member, args: argparse.Namespace, device: torch.device) -> tuple[float, object]:
    """Images/s of decoding and preprocessing alone (no model), as predict runs them; and the first batch."""
    chunks = [list(range(s, min(s + args.batch_size, len(rows)))) for s in range(0, len(rows), args.batch_size)]
    first = None
    started = time.perf_counter()
    for batch in loaded_batches(rows, [member.pre], chunks, device, args.backend, args.batch_size, args.workers):
        first = batch if first is None else first
    return len(rows) / (time.perf_counter() - started), first


def measure(name: str, rows: list, args: argparse.Namespace, device: torch.device, folder: Path) -> Row:
    path = save_random_checkpoint(name, args.img_size, folder / f"{name}.safetensors")
    (member,) = load_members([path], None, device)
    predict(rows[: args.batch_size], [member], device, backend=args.backend, batch_size=args.batch_size,
            workers=args.workers)  # warm-up: decoder set-up, first-call allocations
    started = time.perf_counter()
    prediction = predict(rows, [member], device, backend=args.backend, batch_size=args.batch_size,
                         workers=args.workers)
    write_submission(folder / "submission.csv", prediction, binarize=False)
    end_to_end = len(rows) / (time.perf_counter() - started)
    if prediction.errors:
        raise SystemExit(f"{len(prediction.errors)} phantom DICOM(s) failed: {prediction.errors[:3]}")
    pipeline, first = pipeline_rate(rows, member, args, device)
    bare = bare_rate(member, first.tensors[member.pre], len(rows), device)
    decoders = " ".join(f"{k}:{v}" for k, v in sorted(prediction.backends.items()))
    height, width = args.img_size
    return Row(name, f"{height}x{width}", len(rows), end_to_end, bare, pipeline, decoders)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(args.threads, args.workers))
    with tempfile.TemporaryDirectory(prefix="mammo_bench_") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        csv_path = generate(folder / "phantom", n_patients=math.ceil(args.n_images / 4), seed=0, size=args.dicom_size)
        rows = read_rows(csv_path, folder / "phantom" / "train_images")[: args.n_images]
        print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
              f"{os.cpu_count()} cores; DALI: {dali_status()[1]}; backend {args.backend}, batch {args.batch_size}, "
              f"{args.workers} workers; {len(rows)} phantom DICOMs of {args.dicom_size[0]}x{args.dicom_size[1]} "
              f"(six transfer syntaxes) written in {time.perf_counter() - started:.1f} s")
        table = [measure(name.strip(), rows, args, device, folder) for name in args.models.split(",") if name.strip()]
    widths = [max(len(c), *(len(r.cells()[i]) for r in table)) for i, c in enumerate(COLUMNS)]
    print("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)))
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row.cells(), widths, strict=True)))
    print(f"goal: end-to-end at least {GOAL:.0%} of the bare forward; "
          + ", ".join(f"{r.model} {'meets' if r.ratio >= GOAL else 'misses'} it ({r.ratio:.2f})" for r in table))
    if args.out:
        atomic_write_csv(args.out, COLUMNS, [r.cells() for r in table])
    return 0


if __name__ == "__main__":
    sys.exit(main())
