"""Atomic file writing and the numeric file ordering used by every output."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path


def read_csv_rows(path: str | os.PathLike, required: Sequence[str], error: type[Exception]) -> list[dict[str, str]]:
    """The rows of a CSV whose header holds every `required` column; else `error` naming the file."""
    with Path(path).open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise error(f"{path}: missing column(s) {missing}; header is {reader.fieldnames}")
        return list(reader)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old or the whole new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_csv(
    path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[object]]
) -> None:
    """CSV with '\\n' line endings, written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def numeric_order_key(name: str) -> tuple[int, int, str]:
    """Numeric stems first in numeric order ('2.jpg' < '10.jpg'), then the rest lexically."""
    stem = Path(name).stem
    if stem.isdigit():
        return (0, int(stem), name)
    return (1, 0, name)
