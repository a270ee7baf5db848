"""`python -m project.mammo.survey`: decode the DICOM reference corpus and check every file against pydicom."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from project.mammo.dicom import (
    BACKENDS,
    DicomReader,
    dali_status,
    pydicom_reference,
    pydicom_testdata_paths,
    same_pixels,
)


@dataclass
class SurveyRow:
    """One decoded file: its transfer syntax, who decoded it and whether the pixels equal pydicom's."""

    path: str
    syntax: str
    backend: str
    equal: bool
    note: str


def survey(paths: Sequence[str], reader: DicomReader | None = None) -> list[SurveyRow]:
    """Decode each file that pydicom decodes with `reader` and compare with pixel_array."""
    reader = reader or DicomReader("auto")
    rows: list[SurveyRow] = []
    for path in paths:
        ref, ds = pydicom_reference(path)
        if ref is None:
            continue
        (result,) = reader.read([path])
        equal = result.ok and same_pixels(ref, result.pixels)
        rows.append(
            SurveyRow(
                path=path,
                syntax=ds.file_meta.TransferSyntaxUID.name
                if "TransferSyntaxUID" in getattr(ds, "file_meta", {})
                else "?",
                backend=result.backend or "error",
                equal=bool(equal),
                note=result.error or result.note,
            )
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m project.mammo.survey", description=__doc__)
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    parser.add_argument("--max-mb", type=float, default=None, help="skip larger corpus files")
    parser.add_argument("paths", nargs="*", help="DICOM files to decode (default: pydicom's and pydicom-data's)")
    args = parser.parse_args(argv)
    reader = DicomReader(args.backend, verify=False)  # DALI's own pixels are compared
    print(f"DALI: {dali_status()[1]}; DALI device: {reader.dali_device or 'none'}")
    max_bytes = None if args.max_mb is None else int(args.max_mb * 1e6)
    paths = args.paths or pydicom_testdata_paths(max_bytes)
    start = time.perf_counter()
    rows = survey(paths, reader)
    for row in rows:
        mark = "equal" if row.equal else "DIFFERENT"
        print(f"{os.path.basename(row.path):48s} {row.syntax[:40]:40s} {row.backend:10s} {mark:9s} {row.note}")
    counts = Counter(row.backend for row in rows)
    n_equal = sum(row.equal for row in rows)
    print(
        f"\n{len(rows)} files that pydicom decodes (of {len(paths)} listed); "
        f"{n_equal} equal to pixel_array; by backend: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + f"; {time.perf_counter() - start:.1f} s"
    )
    return 0 if n_equal == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
