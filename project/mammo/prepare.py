"""Prepare RSNA-style mammograms for training: decode, window, crop the breast, write PNGs.

``python -m project.mammo.prepare --csv train.csv --dicom-dir train_images --out DIR
--size 1024x512 [--backend auto|dali|pydicom] [--bits 8|16] [--workers N] [--strict]``

For each row of the CSV (``patient_id``, ``image_id``, ``laterality``, ``view`` and, when
present, ``cancer``) the DICOM ``<dicom-dir>/<patient_id>/<image_id>.dcm`` is decoded
(:mod:`project.mammo.dicom`: DALI where exact, pydicom otherwise), passed through the
modality LUT, the first VOI LUT or window of its header and MONOCHROME1 inversion
(:mod:`project.mammo.voi`; in torch on the GPU when DALI decoded there), cropped to the
breast with the chest wall on the left and fitted into the target size
(:mod:`project.mammo.roi`), and written to ``DIR/images/<patient_id>/<image_id>.png``
(8- or 16-bit grey).

``DIR/manifest.csv`` gets one row per written image: image, patient, laterality, view,
label, backend, the crop box in the source image (x0, y0, x1, y1), whether it was flipped,
and the PNG path relative to DIR. Rows are appended as images finish and the file is
rewritten in CSV order at the end, so an interrupted run resumes where it stopped: images
whose PNG and manifest row exist are skipped. ``DIR/prepare.json`` records the settings;
resuming with different ones is refused (use a new DIR or ``--overwrite``). Files that
cannot be read or processed are listed on stderr and in ``DIR/errors.csv`` and skipped;
they make the exit status 1 only with ``--strict``. On the CPU, ``--workers`` processes each decode
and write whole batches; with DALI's GPU decoder, this process decodes and ``--workers`` threads write.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import threading
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from project.fileio import atomic_write_bytes, atomic_write_csv, atomic_write_text
from project.mammo.dicom import (
    DicomReader,
    DicomReadError,
    DicomResult,
    cuda_available,
    decodes_on_gpu,
    require_dali,
)

MANIFEST_COLUMNS = (
    "image",
    "patient",
    "laterality",
    "view",
    "label",
    "backend",
    "crop_x0",
    "crop_y0",
    "crop_x1",
    "crop_y1",
    "flipped",
    "png",
)
ERROR_COLUMNS = ("image", "patient", "path", "error")
MANIFEST_FILE = "manifest.csv"
ERRORS_FILE = "errors.csv"
SETTINGS_FILE = "prepare.json"
REQUIRED_COLUMNS = ("patient_id", "image_id")


@dataclass(frozen=True)
class Settings:
    size: tuple[int, int]
    bits: int
    flip: str
    clean: bool
    window_index: int

    def as_json(self) -> dict[str, Any]:
        return {
            "size": list(self.size),
            "bits": self.bits,
            "flip": self.flip,
            "clean": self.clean,
            "window_index": self.window_index,
        }


@dataclass
class Job:
    row: dict[str, str]
    dicom: Path
    png: Path
    png_rel: str


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 1024x512, not {text!r}") from exc
    if h < 8 or w < 8:
        raise argparse.ArgumentTypeError("size must be at least 8x8")
    return h, w


def read_rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {', '.join(missing)}")
        return [dict(row) for row in reader]


def load_manifest(path: Path, out: Path) -> dict[str, dict[str, str]]:
    """Finished rows by image id: rows that are complete and whose PNG exists."""
    done: dict[str, dict[str, str]] = {}
    if not path.exists():
        return done
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if any(row.get(c) in (None, "") for c in ("image", "png", "backend")):
                continue  # a line cut short by an interrupted run
            if None in row or not (out / row["png"]).is_file():
                continue
            done[row["image"]] = {c: row.get(c, "") or "" for c in MANIFEST_COLUMNS}
    return done


def process_one(result: Any, settings: Settings, laterality: str) -> tuple[np.ndarray, Any]:
    """Decoded DICOM -> (output image uint8/uint16, CropInfo)."""
    from project.mammo.roi import crop_breast
    from project.mammo.voi import to_display, to_display_torch, voi_params

    ds = result.dataset
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1:
        raise ValueError(f"{spp} samples per pixel: not a grey-scale mammogram")
    params = voi_params(ds)
    pixels = result.pixels
    if isinstance(pixels, np.ndarray):
        if pixels.ndim == 3:
            pixels = pixels[0]
        display = to_display(pixels, params, output="uint16", index=settings.window_index)
    else:  # a torch CUDA tensor from dali-mixed: window on the GPU
        if pixels.ndim == 3:
            pixels = pixels[0]
        display16 = to_display_torch(pixels, params, output="uint16", index=settings.window_index)
        import torch

        display = display16.view(torch.int16).cpu().numpy().view(np.uint16)
    out, info = crop_breast(
        display, size=settings.size, laterality=laterality, flip=settings.flip, clean=settings.clean
    )
    if settings.bits == 8:
        out = np.rint(out.astype(np.float32) / 257.0).astype(np.uint8)
    return out, info


def encode_png(image: np.ndarray) -> bytes:
    import cv2

    ok, buffer = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()


def check_settings(out: Path, settings: Settings, overwrite: bool) -> None:
    """Refuse to resume a folder prepared with other settings (unless `overwrite`); record these ones."""
    path = out / SETTINGS_FILE
    if path.exists() and not overwrite:
        previous = json.loads(path.read_text())
        if previous != settings.as_json():
            raise ValueError(f"{out} was prepared with other settings ({previous}); use a new --out or --overwrite")
    atomic_write_text(path, json.dumps(settings.as_json(), indent=1) + "\n")


def plan(rows: Sequence[dict[str, str]], dicom_dir: Path, out: Path, done: Mapping[str, object]) -> list[Job]:
    """A job for every row whose image is not done yet."""
    jobs = []
    for row in rows:
        image, patient = _ids(row)
        if image not in done:
            rel = f"images/{patient}/{image}.png"
            jobs.append(Job(row, dicom_dir / patient / f"{image}.dcm", out / rel, rel))
    return jobs


def _ids(row: Mapping[str, str]) -> tuple[str, str]:
    """(image id, patient id) of a CSV row."""
    return str(row["image_id"]).strip(), str(row["patient_id"]).strip()


def manifest_entry(job: Job, backend: str, info: Any) -> dict[str, str]:
    """The manifest row of a written image; `info` is the crop (project.mammo.roi.CropInfo)."""
    image, patient = _ids(job.row)
    x0, y0, x1, y1 = info.box
    return {
        "image": image,
        "patient": patient,
        "laterality": str(job.row.get("laterality", "") or ""),
        "view": str(job.row.get("view", "") or ""),
        "label": str(job.row.get("cancer", "") or ""),
        "backend": backend,
        "crop_x0": str(x0),
        "crop_y0": str(y0),
        "crop_x1": str(x1),
        "crop_y1": str(y1),
        "flipped": str(int(info.flipped)),
        "png": job.png_rel,
    }


class Manifest:
    """manifest.csv and errors.csv of a run: rows appended as images finish (from any thread), so that an
    interrupted run can resume, then rewritten in CSV order by `close`."""

    def __init__(self, out: Path, done: dict[str, dict[str, str]]) -> None:
        self.path, self.errors_path = out / MANIFEST_FILE, out / ERRORS_FILE
        self.done = done
        self.written: dict[str, dict[str, str]] = {}
        self.errors: list[list[str]] = []
        self.lock = threading.Lock()
        # the finished rows only (drops lines cut short), then appended to
        atomic_write_csv(self.path, MANIFEST_COLUMNS, [list(r.values()) for r in done.values()])
        self.handle = open(self.path, "a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.handle, lineterminator="\n")

    def record(self, job: Job, outcome: tuple[dict[str, str] | None, str]) -> None:
        """One finished image: its manifest row, or (None, why) for the error list."""
        entry, why = outcome
        image, patient = _ids(job.row)
        with self.lock:
            if entry is None:
                self.errors.append([image, patient, str(job.dicom), why])
                tqdm.write(f"error: {job.dicom}: {why}", file=sys.stderr)
                return
            self.writer.writerow([entry[c] for c in MANIFEST_COLUMNS])
            self.handle.flush()
            self.written[entry["image"]] = entry

    def close(self, order: Sequence[str]) -> None:
        """The final manifest, rows in the order of the image ids `order`, and this run's errors."""
        self.handle.close()
        finished = {**self.done, **self.written}
        rows = [[finished[i][c] for c in MANIFEST_COLUMNS] for i in order if i in finished]
        atomic_write_csv(self.path, MANIFEST_COLUMNS, rows)
        atomic_write_csv(self.errors_path, ERROR_COLUMNS, self.errors)


def write_image(job: Job, result: DicomResult, settings: Settings) -> tuple[dict[str, str] | None, str]:
    """Window, crop and write one decoded image: its manifest row, or (None, why it failed)."""
    if not result.ok:
        return None, result.error or "unreadable"
    try:
        image, info = process_one(result, settings, str(job.row.get("laterality", "") or ""))
        atomic_write_bytes(job.png, encode_png(image))
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return manifest_entry(job, str(result.backend), info), ""


_worker_reader: DicomReader | None = None  # one per worker process, made by _start_worker


def _start_worker(backend: str, batch_size: int) -> None:
    global _worker_reader
    _worker_reader = DicomReader.for_worker(backend, batch_size)


def _prepare_batch(jobs: Sequence[Job], settings: Settings) -> list[tuple[dict[str, str] | None, str]]:
    """In a worker process: decode a batch with the process's reader and write its images."""
    if _worker_reader is None:
        raise RuntimeError("_prepare_batch runs only in a process started by _start_worker")
    results = _worker_reader.read([job.dicom for job in jobs])
    return [write_image(job, result, settings) for job, result in zip(jobs, results, strict=True)]


def decode_on_gpu(jobs: Sequence[Job], reader: DicomReader, settings: Settings, manifest: Manifest, workers: int,
                  bar: tqdm) -> None:
    """DALI decodes batch by batch on the GPU here; windowing, cropping and PNG writing run in `workers` threads."""

    def finish(job: Job, result: DicomResult) -> None:
        manifest.record(job, write_image(job, result, settings))

    pending: deque[Future[None]] = deque()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(jobs), reader.batch_size):
            batch = jobs[start : start + reader.batch_size]
            for job, result in zip(batch, reader.read([job.dicom for job in batch]), strict=True):
                future = pool.submit(finish, job, result)
                future.add_done_callback(lambda _f: bar.update(1))
                pending.append(future)
            while len(pending) > 2 * reader.batch_size:  # bound the memory in flight
                pending.popleft().result()
        for future in pending:
            future.result()


def decode_in_processes(jobs: Sequence[Job], backend: str, batch_size: int, settings: Settings, manifest: Manifest,
                        workers: int, bar: tqdm) -> None:
    """`workers` processes each decode and write whole batches (pydicom's decoders hold the interpreter lock)."""
    batches = [jobs[start : start + batch_size] for start in range(0, len(jobs), batch_size)]
    with ProcessPoolExecutor(max(1, workers), initializer=_start_worker, initargs=(backend, batch_size)) as pool:
        for batch, outcomes in zip(batches, pool.map(_prepare_batch, batches, repeat(settings)), strict=True):
            for job, outcome in zip(batch, outcomes, strict=True):
                manifest.record(job, outcome)
            bar.update(len(batch))


def run(
    csv_path: str | os.PathLike,
    dicom_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    size: tuple[int, int] = (1024, 512),
    backend: str = "auto",
    bits: int = 8,
    workers: int = 2,
    batch_size: int = 8,
    flip: str = "auto",
    clean: bool = True,
    window_index: int = 0,
    overwrite: bool = False,
    limit: int | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Prepare the images; returns counts and the error list. See the module docstring."""
    if bits not in (8, 16):
        raise ValueError("bits must be 8 or 16")
    out = Path(out)
    settings = Settings(tuple(size), int(bits), flip, bool(clean), int(window_index))
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, settings, overwrite)
    rows = read_rows(Path(csv_path))[:limit]
    done = {} if overwrite else load_manifest(out / MANIFEST_FILE, out)
    jobs = plan(rows, Path(dicom_dir), out, done)
    require_dali(backend)
    on_gpu = decodes_on_gpu(backend, cuda_available())
    manifest = Manifest(out, done)
    progress = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(jobs), desc="prepare", unit="img", disable=not progress)
    try:
        if on_gpu:
            with DicomReader(backend, batch_size=batch_size, num_threads=workers, keep_on_gpu=True) as reader:
                decode_on_gpu(jobs, reader, settings, manifest, workers, bar)
        else:
            decode_in_processes(jobs, backend, batch_size, settings, manifest, workers, bar)
    finally:
        bar.close()
        manifest.close([_ids(row)[0] for row in rows])
    backends = Counter(entry["backend"] for entry in manifest.written.values())
    return {
        "written": len(manifest.written),
        "skipped": len(rows) - len(jobs),
        "errors": manifest.errors,
        "backends": dict(backends),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m project.mammo.prepare",
        description="Decode, window, crop and resize mammograms into PNGs plus a manifest.",
    )
    parser.add_argument("--csv", required=True, help="RSNA-style train.csv / test.csv")
    parser.add_argument("--dicom-dir", required=True, help="folder with <patient>/<image>.dcm")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--size", type=parse_size, default=(1024, 512), help="HxW")
    parser.add_argument("--backend", default="auto", choices=("auto", "dali", "pydicom"))
    parser.add_argument("--bits", type=int, default=8, choices=(8, 16))
    parser.add_argument("--workers", type=int, default=2,
                        help="decode and processing processes (threads beside DALI on a GPU)")
    parser.add_argument("--batch-size", type=int, default=8, help="files per decode batch")
    parser.add_argument("--flip", default="auto", choices=("auto", "laterality", "none"))
    parser.add_argument("--no-clean", action="store_true", help="keep labels inside the crop")
    parser.add_argument("--window-index", type=int, default=0, help="which header window")
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows")
    parser.add_argument("--overwrite", action="store_true", help="redo everything")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any file failed")
    args = parser.parse_args(argv)
    if not Path(args.csv).is_file():
        parser.error(f"--csv {args.csv}: no such file")
    if not Path(args.dicom_dir).is_dir():
        parser.error(f"--dicom-dir {args.dicom_dir}: no such folder")
    try:
        summary = run(
            args.csv,
            args.dicom_dir,
            args.out,
            size=args.size,
            backend=args.backend,
            bits=args.bits,
            workers=max(1, args.workers),
            batch_size=max(1, args.batch_size),
            flip=args.flip,
            clean=not args.no_clean,
            window_index=args.window_index,
            overwrite=args.overwrite,
            limit=args.limit,
        )
    except (ValueError, DicomReadError) as exc:  # bad settings, CSV, or --backend dali without DALI
        print(f"error: {exc}", file=sys.stderr)
        return 2
    backends = ", ".join(f"{k} {v}" for k, v in sorted(summary["backends"].items())) or "none"
    n_errors = len(summary["errors"])
    print(
        f"{summary['written']} written ({backends}), {summary['skipped']} already done, "
        f"{n_errors} failed" + (f" (listed in {Path(args.out) / 'errors.csv'})" if n_errors else "")
    )
    return 1 if args.strict and n_errors else 0


if __name__ == "__main__":
    sys.exit(main())
