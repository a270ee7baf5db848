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
they make the exit status 1 only with ``--strict``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from project.fileio import atomic_write_bytes, atomic_write_csv, atomic_write_text
from project.mammo.dicom import DicomReadError

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
    from tqdm import tqdm

    from project.mammo.dicom import DicomReader

    if bits not in (8, 16):
        raise ValueError("bits must be 8 or 16")
    out = Path(out)
    dicom_dir = Path(dicom_dir)
    settings = Settings(tuple(size), int(bits), flip, bool(clean), int(window_index))
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / "prepare.json"
    manifest_path = out / "manifest.csv"
    errors_path = out / "errors.csv"
    if settings_path.exists() and not overwrite:
        previous = json.loads(settings_path.read_text())
        if previous != settings.as_json():
            raise ValueError(f"{out} was prepared with other settings ({previous}); use a new --out or --overwrite")
    if overwrite and manifest_path.exists():
        manifest_path.unlink()
    atomic_write_text(settings_path, json.dumps(settings.as_json(), indent=1) + "\n")

    rows = read_rows(Path(csv_path))
    if limit is not None:
        rows = rows[:limit]
    done = {} if overwrite else load_manifest(manifest_path, out)
    jobs: list[Job] = []
    skipped = 0
    for row in rows:
        image, patient = str(row["image_id"]).strip(), str(row["patient_id"]).strip()
        if image in done:
            skipped += 1
            continue
        rel = f"images/{patient}/{image}.png"
        jobs.append(Job(row, dicom_dir / patient / f"{image}.dcm", out / rel, rel))

    # rewrite the manifest with the finished rows only (drops cut lines), then append
    atomic_write_csv(manifest_path, MANIFEST_COLUMNS, [list(r.values()) for r in done.values()])
    lock = threading.Lock()
    errors: list[list[str]] = []
    written: dict[str, dict[str, str]] = {}
    manifest_handle = open(manifest_path, "a", newline="", encoding="utf-8")
    manifest_writer = csv.writer(manifest_handle, lineterminator="\n")

    def record_error(job: Job, message: str) -> None:
        image, patient = str(job.row["image_id"]).strip(), str(job.row["patient_id"]).strip()
        with lock:
            errors.append([image, patient, str(job.dicom), message])
            tqdm.write(f"error: {job.dicom}: {message}", file=sys.stderr)

    def finish(job: Job, result: Any) -> None:
        try:
            image_out, info = process_one(result, settings, str(job.row.get("laterality", "") or ""))
            atomic_write_bytes(job.png, encode_png(image_out))
        except Exception as exc:
            record_error(job, f"{type(exc).__name__}: {exc}")
            return
        x0, y0, x1, y1 = info.box
        entry = {
            "image": str(job.row["image_id"]).strip(),
            "patient": str(job.row["patient_id"]).strip(),
            "laterality": str(job.row.get("laterality", "") or ""),
            "view": str(job.row.get("view", "") or ""),
            "label": str(job.row.get("cancer", "") or ""),
            "backend": str(result.backend),
            "crop_x0": str(x0),
            "crop_y0": str(y0),
            "crop_x1": str(x1),
            "crop_y1": str(y1),
            "flipped": str(int(info.flipped)),
            "png": job.png_rel,
        }
        with lock:
            manifest_writer.writerow([entry[c] for c in MANIFEST_COLUMNS])
            manifest_handle.flush()
            written[entry["image"]] = entry

    reader = DicomReader(
        backend,
        batch_size=batch_size,
        num_threads=workers,
        keep_on_gpu=True,
    )
    disable = (not sys.stderr.isatty()) if progress is None else not progress
    bar = tqdm(total=len(jobs), desc="prepare", unit="img", disable=disable)
    pending: deque[Future[None]] = deque()
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for start in range(0, len(jobs), reader.batch_size):
                batch = jobs[start : start + reader.batch_size]
                results = reader.read([job.dicom for job in batch])
                for job, result in zip(batch, results, strict=True):
                    if not result.ok:
                        record_error(job, result.error or "unreadable")
                        bar.update(1)
                        continue
                    future = pool.submit(finish, job, result)
                    future.add_done_callback(lambda _f: bar.update(1))
                    pending.append(future)
                while len(pending) > 2 * reader.batch_size:  # bound the memory in flight
                    pending.popleft().result()
            for future in pending:
                future.result()
    finally:
        bar.close()
        manifest_handle.close()

    # final manifest in CSV order; errors of this run
    finished = {**done, **written}
    order = [str(r["image_id"]).strip() for r in rows]
    final_rows = [[finished[i][c] for c in MANIFEST_COLUMNS] for i in order if i in finished]
    atomic_write_csv(manifest_path, MANIFEST_COLUMNS, final_rows)
    atomic_write_csv(errors_path, ERROR_COLUMNS, errors)
    backends: dict[str, int] = {}
    for entry in written.values():
        backends[entry["backend"]] = backends.get(entry["backend"], 0) + 1
    return {
        "written": len(written),
        "skipped": skipped,
        "errors": errors,
        "backends": backends,
        "dali_device": reader.dali_device,
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
    parser.add_argument("--workers", type=int, default=2, help="decode and processing threads")
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
