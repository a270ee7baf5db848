"""run.py throughput and memory: end-to-end images/s against a bare forward; peak RSS at 1k vs 10k images."""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from project.data.classes import BIRADS_CLASSES, FEATURE_TASKS  # noqa: E402
from project.data.layout import list_images  # noqa: E402
from project.data.transforms import Preprocess  # noqa: E402
from project.fileio import atomic_write_csv  # noqa: E402
from project.models.checkpoint import CheckpointConfig, save_checkpoint  # noqa: E402
from project.models.densenet import TINY_DENSENET  # noqa: E402
from project.models.factory import create_model  # noqa: E402
from project.phantom import generate_phantom  # noqa: E402
from project.predict import Member, load_members, predict_folder, write_predictions  # noqa: E402
from project.runtime import autocast_dtype, resolve_device  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOAL = 0.9
MEM_CLS_BACKBONE = "convnext_atto"
CSV_HEADER = ("measurement", "model", "images", "images_per_s", "ratio_to_bare", "peak_rss_main_mib",
              "peak_rss_workers_mib", "device", "img_size", "batch_size", "workers", "dtype")
# Runs run.py as __main__ in this child and reports its own peak RSS and that of its reaped children
# (the DataLoader workers); ru_maxrss is in KiB on Linux.
RSS_PROBE = """\
import resource, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    own, children = (resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print(f"peak_rss_kib main={own} workers={children}", file=sys.stderr)
"""


@dataclass(frozen=True)
class ModelSpec:
    title: str
    kind: str  # the testB folder and checkpoint task: 'cla' or 'fea'
    name: str
    kwargs: dict
    labels: list[str]


@dataclass
class Timing:
    """Images counted and the seconds they took, summed over rounds."""

    images: int = 0
    seconds: float = 0.0

    def add(self, images: int, seconds: float) -> None:
        self.images += images
        self.seconds += seconds

    @property
    def rate(self) -> float:
        return self.images / self.seconds


@dataclass(frozen=True)
class Row:
    measurement: str
    model: str
    images: int
    images_per_s: float | None = None
    ratio_to_bare: float | None = None
    peak_rss_main_mib: float | None = None
    peak_rss_workers_mib: float | None = None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="run.py's images/s against a bare forward, and its peak memory.")
    add = parser.add_argument
    add("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add("--batch-size", type=int, default=32)
    add("--workers", type=int, default=2, help="DataLoader workers, as run.py --workers")
    add("--cls-backbone", default="convnext_tiny", help="MyConvNeXt backbone of the classifier")
    add("--fea-backbone", default="densenet121", help="MyDenseNet backbone of the feature model")
    add("--threads", type=int, default=None,
        help="torch threads here and OMP_NUM_THREADS of the run.py runs (default: torch's choice, as run.py)")
    add("--img-size", type=int, default=None, help="model input size (default 224 on GPU, 128 on CPU)")
    add("--n-images", type=int, default=None, help="timed images per model (default 256 on CPU, 4096 on GPU)")
    add("--rounds", type=int, default=2, help="alternating end-to-end / bare rounds the timed images are split into")
    add("--phantom-size", type=int, default=256, help="side of the phantom JPEGs on disk, in pixels")
    add("--skip-memory", action="store_true", help="skip the peak-memory runs")
    add("--n-small", type=int, default=1000, help="testB images (half cla, half fea) of the small memory run")
    add("--n-large", type=int, default=10000, help="testB images of the large memory run")
    add("--mem-img-size", type=int, default=64, help="phantom and model size of the memory runs")
    add("--out", type=Path, default=None, help="also write the table to this CSV")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    on_gpu = resolve_device(args.device).type == "cuda"
    args.img_size = args.img_size or (224 if on_gpu else 128)
    args.n_images = args.n_images or (4096 if on_gpu else 256)
    if args.n_images < 2 * args.batch_size * args.rounds:
        parser.error("--n-images must give every round at least 2 batches (the first is not timed)")
    return args


def classifier_spec(backbone: str) -> ModelSpec:
    return ModelSpec(f"MyConvNeXt ({backbone})", "cla", "my_convnext",
                     {"backbone": backbone, "num_classes": len(BIRADS_CLASSES)}, list(BIRADS_CLASSES))


def feature_spec(backbone: str, extra: dict | None = None) -> ModelSpec:
    title = f"MyDenseNet ({backbone}{', tiny' if extra else ''})"
    return ModelSpec(title, "fea", "my_densenet", {"backbone": backbone, "tasks": list(FEATURE_TASKS), **(extra or {})},
                     list(FEATURE_TASKS))


def save_random_checkpoint(spec: ModelSpec, img_size: int, path: Path) -> Path:
    """A randomly initialised model as a self-describing checkpoint: speed does not depend on the weights."""
    model = create_model(spec.name, **spec.kwargs)
    config = CheckpointConfig(task=spec.kind, model_name=spec.name, model_kwargs=spec.kwargs, labels=spec.labels,
                              preprocess=Preprocess(img_size=img_size).to_dict())
    save_checkpoint(path, model, config)
    return path


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batch_sizes(n_images: int, batch_size: int) -> list[int]:
    return [batch_size] * (n_images // batch_size) + ([n_images % batch_size] if n_images % batch_size else [])


@torch.inference_mode()
def bare_forward_timing(model: nn.Module, n_images: int, args: argparse.Namespace,
                        device: torch.device) -> tuple[int, float]:
    """(images, seconds) of model(x) alone on a pre-made channels_last batch, after the first batch."""
    dtype = autocast_dtype("auto", device)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    first, *rest = batch_sizes(n_images, args.batch_size)
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        model(images[:first])
        synchronize(device)
        started = time.perf_counter()
        for size in rest:
            model(images[:size])
        synchronize(device)
    return n_images - first, time.perf_counter() - started


def run_py_timing(paths: list[Path], members: list[Member], kind: str, args: argparse.Namespace,
                  device: torch.device, out_dir: Path) -> tuple[int, float]:
    """(images, seconds) of what run.py does per folder (predict_folder, then the CSV), after the first batch.

    The clock starts at the second model call: worker start-up and the first batch are left out, as
    they are for the bare forward; the CSV writing at the end is counted.
    """
    calls: list[float] = []
    hooks = [m.model.register_forward_pre_hook(lambda *_: calls.append(time.perf_counter())) for m in members]
    try:
        predictions = predict_folder(paths, members, device, args.batch_size, args.workers, desc=kind)
        write_predictions(out_dir, predictions, members, "name")
        ended = time.perf_counter()
    finally:
        for hook in hooks:
            hook.remove()
    if len(predictions.names) != len(paths):
        raise SystemExit(f"{kind}: {len(paths) - len(predictions.names)} phantom image(s) unreadable")
    return len(paths) - min(len(paths), args.batch_size), ended - calls[len(members)]


class ZeroCostModel(nn.Module):
    """Returns zeros of the real model's output shape, so the run measures the data pipeline alone."""

    def __init__(self, output_shape: Sequence[int]) -> None:
        super().__init__()
        self.output_shape = tuple(output_shape)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.zeros((images.shape[0], *self.output_shape), device=images.device)


def pipeline_members(members: list[Member], args: argparse.Namespace, device: torch.device) -> list[Member]:
    probe = torch.zeros(1, 3, args.img_size, args.img_size, device=device)
    with torch.inference_mode():
        output_shape = members[0].model(probe).shape[1:]
    return [Member(ZeroCostModel(output_shape), m.config, m.preprocess, m.path) for m in members]


def throughput_rows(spec: ModelSpec, testb: Path, work: Path, args: argparse.Namespace,
                    device: torch.device) -> list[Row]:
    checkpoint = save_random_checkpoint(spec, args.img_size, work / f"{spec.kind}.safetensors")
    members = load_members([checkpoint], device)
    paths = list_images(testb / spec.kind)
    out_dir = work / f"out_{spec.kind}"
    out_dir.mkdir()
    # Warm-up pass: the first batches (oneDNN / cuDNN kernel choice, allocator) are not timed.
    run_py_timing(paths[: 2 * args.batch_size], members, spec.kind, args, device, out_dir)
    # Alternate rounds so that a change in the machine's load hits both columns alike.
    end_to_end, bare = Timing(), Timing()
    for chunk in (paths[i :: args.rounds] for i in range(args.rounds)):
        end_to_end.add(*run_py_timing(chunk, members, spec.kind, args, device, out_dir))
        bare.add(*bare_forward_timing(members[0].model, len(chunk), args, device))
    pipeline = Timing(*run_py_timing(paths, pipeline_members(members, args, device), spec.kind, args, device, out_dir))
    return [
        Row("run.py end-to-end", spec.title, len(paths), end_to_end.rate, end_to_end.rate / bare.rate),
        Row("bare forward", spec.title, len(paths), bare.rate, 1.0),
        Row("data pipeline only", spec.title, len(paths), pipeline.rate),
    ]


def memory_row(n_images: int, work: Path, args: argparse.Namespace) -> Row:
    """Peak RSS of `python run.py` on an n-image phantom testB, in a fresh process."""
    folder = work / f"mem_{n_images}"
    generate_phantom(folder, 0, n_images, args.mem_img_size, seed=0)
    command = [
        sys.executable, "-c", RSS_PROBE, str(ROOT / "run.py"), "--data", str(folder / "testB"),
        "--cls-weights", str(work / "mem_cls.safetensors"), "--fea-weights", str(work / "mem_fea.safetensors"),
        "--out-dir", str(folder), "--batch-size", str(args.batch_size), "--workers", str(args.workers),
        "--device", args.device,
    ]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    probe = re.search(r"peak_rss_kib main=(\d+) workers=(\d+)", done.stderr)
    summary = re.search(r"^run: \d+ images in [\d.]+ s \(([\d.]+) images/s\)", done.stdout, re.MULTILINE)
    if done.returncode != 0 or probe is None or summary is None:
        raise SystemExit(f"run.py failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr[-2000:]}")
    rows = sum(len((folder / name).read_text().splitlines()) - 1 for name in ("cla_pre.csv", "fea_pre.csv"))
    if rows != n_images:
        raise SystemExit(f"run.py wrote {rows} prediction rows for {n_images} images")
    main_kib, workers_kib = (int(value) for value in probe.groups())
    return Row("run.py peak RSS", f"{MEM_CLS_BACKBONE} + tiny densenet121", n_images, float(summary.group(1)), None,
               main_kib / 1024, workers_kib / 1024)


def memory_rows(work: Path, args: argparse.Namespace) -> list[Row]:
    save_random_checkpoint(classifier_spec(MEM_CLS_BACKBONE), args.mem_img_size, work / "mem_cls.safetensors")
    save_random_checkpoint(feature_spec("densenet121", TINY_DENSENET), args.mem_img_size,
                           work / "mem_fea.safetensors")
    return [memory_row(n, work, args) for n in (args.n_small, args.n_large)]


def dtype_name(device: torch.device) -> str:
    dtype = autocast_dtype("auto", device)
    return str(dtype).removeprefix("torch.") if dtype else "float32"


def format_value(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def print_table(rows: list[Row]) -> None:
    print(f"{'measurement':<20} {'model':<32} {'images':>7} {'images/s':>9} {'ratio':>6} "
          f"{'RSS main MiB':>12} {'RSS workers MiB':>15}")
    for row in rows:
        print(f"{row.measurement:<20} {row.model:<32} {row.images:>7} {format_value(row.images_per_s, 1):>9} "
              f"{format_value(row.ratio_to_bare, 2):>6} {format_value(row.peak_rss_main_mib, 0):>12} "
              f"{format_value(row.peak_rss_workers_mib, 0):>15}")


def print_verdicts(rows: list[Row]) -> None:
    rates = {(row.measurement, row.model): row.images_per_s for row in rows}
    for row in rows:
        if row.measurement != "run.py end-to-end":
            continue
        bare, pipeline = rates[("bare forward", row.model)], rates[("data pipeline only", row.model)]
        # What end-to-end would give if decoding and the model did not overlap at all.
        serial = 1 / (1 / bare + 1 / pipeline)
        verdict = "met" if row.ratio_to_bare >= GOAL else "NOT met"
        print(f"{row.model}: end-to-end / bare = {row.ratio_to_bare:.2f} (goal >= {GOAL}: {verdict}); "
              f"no-overlap estimate {serial:.1f} images/s = {serial / bare:.2f} of bare")
    memory = [row for row in rows if row.peak_rss_main_mib is not None]
    if len(memory) == 2:
        small, large = memory
        growth = large.peak_rss_main_mib / small.peak_rss_main_mib
        print(f"peak RSS of the main process, {large.images} vs {small.images} images: x{growth:.2f} (goal: flat)")


def write_csv(path: Path, rows: list[Row], args: argparse.Namespace, device: torch.device) -> None:
    def size_of(row: Row) -> int:
        return args.mem_img_size if row.peak_rss_main_mib is not None else args.img_size

    atomic_write_csv(path, CSV_HEADER, [
        (row.measurement, row.model, row.images, format_value(row.images_per_s, 2),
         format_value(row.ratio_to_bare, 3), format_value(row.peak_rss_main_mib, 1),
         format_value(row.peak_rss_workers_mib, 1), device.type, size_of(row), args.batch_size, args.workers,
         dtype_name(device))
        for row in rows
    ])


def print_setup(args: argparse.Namespace, device: torch.device) -> None:
    cpu_default = device.type == "cpu" and args.img_size == 128
    size_note = " (CPU default; --img-size 224 for the challenge size)" if cpu_default else ""
    print(f"device {device} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.workers} DataLoader workers")
    print(f"throughput: {args.n_images} phantom images ({args.phantom_size} px JPEG) per model at "
          f"{args.img_size} px{size_note}, batch {args.batch_size}, {dtype_name(device)}, channels_last, "
          f"random weights; a warm-up pass of 2 batches, then {args.rounds} alternating end-to-end / bare rounds, "
          "each timed after its first batch (end-to-end: to the CSV written; worker start-up excluded)")
    if not args.skip_memory:
        print(f"memory: fresh `python run.py` on phantom testB of {args.n_small} and {args.n_large} images "
              f"(half cla, half fea) at {args.mem_img_size} px; MyConvNeXt ({MEM_CLS_BACKBONE}) and a tiny "
              "MyDenseNet; RSS workers = largest DataLoader worker (includes pages shared with main)")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print_setup(args, device)
    specs = [classifier_spec(args.cls_backbone), feature_spec(args.fea_backbone)]
    with tempfile.TemporaryDirectory(prefix="infer_throughput_") as tmp:
        work = Path(tmp)
        generate_phantom(work / "speed", 0, 2 * args.n_images, args.phantom_size, seed=0)
        rows = [row for spec in specs for row in throughput_rows(spec, work / "speed" / "testB", work, args, device)]
        if not args.skip_memory:
            rows += memory_rows(work, args)
    print_table(rows)
    print_verdicts(rows)
    print(f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
          "(other processes slow single runs unevenly)")
    if args.out:
        write_csv(args.out, rows, args, device)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
