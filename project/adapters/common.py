"""What every dataset adapter shares: its error, the output check, image placement, YOLO boxes, dataset.yaml."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml
from PIL import Image, UnidentifiedImageError

from project.data.layout import Box
from project.fileio import atomic_write_bytes

LINK_MODES = ("symlink", "hardlink", "copy")


class AdapterError(ValueError):
    """A source dataset that cannot be converted; the message names the file and row."""


def check_out(out: Path) -> None:
    """Refuse an output that exists and is not an empty folder."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AdapterError(f"{out}: exists and is not an empty folder; choose a new --out")


def image_size(path: Path, listed_in: str) -> tuple[int, int]:
    """(width, height) from the file header; `listed_in` names the table that listed the image."""
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise AdapterError(f"{path}: image listed in {listed_in} not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise AdapterError(f"{path}: cannot read image ({exc})") from None


def yolo_box(bbox: Sequence[float], size: tuple[int, int], where: str, tolerance_px: float = 0.0) -> Box:
    """Pixel [x, y, width, height] to normalised (cx, cy, w, h), clipped to the image.

    A box reaching more than `tolerance_px` past the image raises AdapterError naming `where`.
    """
    x, y, w, h = bbox
    width, height = size
    if x < -tolerance_px or y < -tolerance_px or x + w > width + tolerance_px or y + h > height + tolerance_px:
        raise AdapterError(f"{where}: BBOX {list(bbox)} leaves the {width}x{height} image")
    x0, y0 = max(x, 0.0) / width, max(y, 0.0) / height
    x1, y1 = min(x + w, width) / width, min(y + h, height) / height
    return ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)


def place_image(source: Path, target: Path, mode: str) -> str:
    """Put `source` at `target` (replacing it atomically) without ever writing to `source`.

    Returns the mode used: a symlink or hard link that the file system refuses falls back to a copy.
    """
    if mode not in LINK_MODES:
        raise ValueError(f"link mode must be one of {LINK_MODES}, got {mode!r}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if mode != "copy":
        temporary = target.with_name(f".{target.name}.link.tmp")
        temporary.unlink(missing_ok=True)
        try:
            if mode == "symlink":
                temporary.symlink_to(source.resolve())
            else:
                os.link(source, temporary)
            os.replace(temporary, target)
            return mode
        except OSError:
            temporary.unlink(missing_ok=True)
    atomic_write_bytes(target, source.read_bytes())
    return "copy"


def dataset_yaml(config: dict, header: str) -> str:
    """`dataset.yaml` text: a comment line (what wrote it, the citation) and the config."""
    return f"# {header}\n" + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def add_link_arguments(parser: argparse.ArgumentParser) -> None:
    """--link MODE and --copy, as every adapter takes them."""
    parser.add_argument("--link", choices=LINK_MODES, default="symlink",
                        help="how images are placed (default symlink; copy where linking fails)")
    parser.add_argument("--copy", dest="link", action="store_const", const="copy", help="same as --link copy")


def run_conversion(convert: Callable[[], object]) -> int:
    """An adapter's exit status: print the conversion's summary (0) or its AdapterError (2)."""
    try:
        summary = convert()
    except AdapterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary)
    return 0
