"""DICOM decode speed: pydicom versus the DALI reader (CPU batched, and GPU when present).

    python bench/decode.py [--batch 8] [--min-seconds 2] [--files NAME ...] [--json OUT]

For each pydicom-data file, ms per image from the path to the pixel array:

- pydicom: ``dcmread(path).pixel_array``, one file after another;
- DALI CPU: :class:`project.mammo.dicom.DicomReader` (``device="cpu"``) reading a batch of
  ``--batch`` copies of the path (header parse, ``pydicom.encaps`` frames, one batched DALI
  ``fn.decoders.image`` call with ``--threads`` threads, copy out);
- DALI mixed: the same with ``device="mixed"`` and the pixels left on the GPU, only when
  torch sees a GPU.

The columns are measured in interleaved rounds (pydicom, then each reader, on the same batch)
and reported as medians, so that other work on the machine slows them alike; "speedup" is the
median of the per-round ratios.

"backend" is what actually decoded the file (``pydicom`` where the reader fell back, e.g.
16-bit lossless JPEG on the CPU), and "exact" whether the reader's pixels equal pydicom's
``pixel_array`` (shape, dtype and values). Goal: DALI CPU at least 1.0x pydicom.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from project.mammo.dicom import (  # noqa: E402
    DicomReader,
    cuda_available,
    dali_status,
    pydicom_reference,
)

FILES = (
    "RG1_J2KR.dcm",
    "RG1_J2KI.dcm",
    "RG3_J2KR.dcm",
    "MR2_J2KR.dcm",
    "US1_J2KR.dcm",
    "JPGLosslessP14SV1_1s_1f_8b.dcm",
    "JPEG-LL.dcm",
)


def _pydicom_once(path: str) -> None:
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmread(path).pixel_array  # noqa: B018


def _seconds(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_file(
    path: str,
    readers: dict[str, DicomReader],
    batch: int,
    min_seconds: float,
    min_rounds: int = 3,
) -> dict[str, object]:
    """Interleaved rounds (pydicom, then each reader, on the same `batch` files) so that a busy
    machine slows every column alike; medians over the rounds."""
    ref, ds = pydicom_reference(path)
    if ref is None:
        return {"file": os.path.basename(path), "error": "pydicom cannot decode it"}
    paths = [path] * batch

    def pydicom_batch() -> None:
        for p in paths:
            _pydicom_once(p)

    def reader_batch(reader: DicomReader) -> None:
        reader.read(paths)
        if reader.dali_device == "mixed":
            import torch

            torch.cuda.synchronize()

    pydicom_batch()  # warm-up: imports, plugin discovery, pipeline builds
    for reader in readers.values():
        reader_batch(reader)
    times: dict[str, list[float]] = {"pydicom": [], **{name: [] for name in readers}}
    start = time.perf_counter()
    while len(times["pydicom"]) < min_rounds or time.perf_counter() - start < min_seconds:
        times["pydicom"].append(_seconds(pydicom_batch))
        for name, reader in readers.items():
            times[name].append(_seconds(lambda reader=reader: reader_batch(reader)))
    row: dict[str, object] = {
        "file": os.path.basename(path),
        "syntax": ds.file_meta.TransferSyntaxUID.name,
        "shape": "x".join(str(v) for v in ref.shape),
        "bits": int(ds.BitsStored),
        "rounds": len(times["pydicom"]),
        "pydicom_ms": 1e3 * float(np.median(times["pydicom"])) / batch,
    }
    for name, reader in readers.items():
        ratios = [p / d for p, d in zip(times["pydicom"], times[name], strict=True)]
        (result,) = reader.read([path])
        pixels = result.numpy() if result.ok else None
        row[f"{name}_ms"] = 1e3 * float(np.median(times[name])) / batch
        row[f"{name}_speedup"] = float(np.median(ratios))
        row[f"{name}_backend"] = result.backend or "error"
        same_kind = pixels is not None and pixels.shape == ref.shape and pixels.dtype == ref.dtype
        row[f"{name}_exact"] = bool(same_kind and np.array_equal(pixels, ref))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="files per DALI batch")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--min-seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--files", nargs="*", default=list(FILES))
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)

    from pydicom.data import get_testdata_file

    ok, reason = dali_status()
    readers: dict[str, DicomReader] = {}
    if ok:
        readers["dali_cpu"] = DicomReader(
            "dali", device="cpu", batch_size=args.batch, num_threads=args.threads, verify=False
        )
        if cuda_available():
            readers["dali_mixed"] = DicomReader(
                "dali",
                device="mixed",
                batch_size=args.batch,
                num_threads=args.threads,
                keep_on_gpu=True,
                verify=False,
            )
    gpu = "none"
    if cuda_available():
        import torch

        gpu = torch.cuda.get_device_name(0)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"# DALI: {reason}; GPU: {gpu}; CPU: {affinity} cores ({platform.processor() or '?'}); "
        f"batch {args.batch}, {args.threads} threads"
    )
    rows = []
    for name in args.files:
        path = name if os.path.isfile(name) else get_testdata_file(name, download=False)
        if path is None:
            print(f"# {name}: not installed (pydicom-data), skipped")
            continue
        rows.append(bench_file(path, readers, args.batch, args.min_seconds))

    header = f"{'file':32s} {'shape':>12s} {'bits':>4s} {'pydicom ms':>10s}"
    for name in readers:
        label = name.replace("_", " ")
        header += f" | {label + ' ms':>13s} {'speedup':>7s} {'backend':>10s} {'exact':>5s}"
    print(header)
    print("-" * len(header))
    for row in rows:
        if "error" in row:
            print(f"{row['file']:32s} {row['error']}")
            continue
        line = f"{row['file']:32s} {row['shape']:>12s} {row['bits']:>4d} {row['pydicom_ms']:>10.1f}"
        for name in readers:
            line += (
                f" | {row[f'{name}_ms']:>13.1f} {row[f'{name}_speedup']:>6.2f}x"
                f" {row[f'{name}_backend']:>10s} {'yes' if row[f'{name}_exact'] else 'NO':>5s}"
            )
        print(line)
    if not readers:
        print(f"# DALI unavailable ({reason}): only pydicom measured")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if all(row.get(f"{n}_exact", True) for row in rows for n in readers) else 1


if __name__ == "__main__":
    sys.exit(main())
