"""Shared fixtures: a tiny hand-built dataset in the challenge layout."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image


def trainer_args(task: str = "cla", **overrides) -> argparse.Namespace:
    """The trainer's parsed defaults for `task`, with keyword overrides (dashes as underscores)."""
    from project.training import build_parser

    args = build_parser(task).parse_args(["--data", "d", "--out", "o"])
    return argparse.Namespace(**{**vars(args), "data": Path("d"), **overrides})


def write_image(path: Path, seed: int, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_label(path: Path, *lines: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def write_cla_dataset(
    root: Path, classes: Sequence[str], per_class: int, seed: int = 0, folds: bool = True,
    columns: Mapping[str, Callable[[str], str]] | None = None,
) -> Path:
    """A classification set in the challenge layout with metadata.csv: image, patient (the image's number
    in its class), fold (1 or 2, or empty), and one column per `columns` entry, a function of the class."""
    columns = columns or {}
    rows = [",".join(["image", "patient", "fold", *columns])]
    for class_id, name in enumerate(classes, start=1):
        for i in range(per_class):
            stem = f"{root.name}_{name}_{i}"
            write_image(root / "train" / "cla" / f"{name}类" / "images" / f"{stem}.png", seed + 10 * class_id + i)
            write_label(root / "train" / "cla" / f"{name}类" / "labels" / f"{stem}.txt", f"{class_id} 0.5 0.5 0.4 0.4")
            rows.append(",".join([f"{stem}.png", str(i), str(i % 2 + 1) if folds else "",
                                  *(value(name) for value in columns.values())]))
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    config = {"classes": list(classes), "metadata": "metadata.csv", "group_column": "patient", "fold_column": "fold"}
    (root / "dataset.yaml").write_text(yaml.safe_dump(config))
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """Two classification classes with odd folder names, three feature images, a flat testB."""
    root = tmp_path / "data"
    cla = root / "train" / "cla"
    for folder, class_id, stems in (("2类", 1, ("1", "2")), ("4类a", 3, ("3",))):
        for stem in stems:
            write_image(cla / folder / "images" / f"{stem}.jpg", int(stem))
            write_label(cla / folder / "labels" / f"{stem}.txt", f"{class_id} 0.5 0.5 0.2 0.3")
    fea = root / "train" / "fea"
    for stem, values in (("10", (0, 1, 0, 1)), ("11", (1, 0, 0, 0)), ("12", (0, 0, 1, 0))):
        write_image(fea / "images" / f"{stem}.png", int(stem))
        for task, value in zip(("boundary", "calcification", "direction", "shape"), values):
            write_label(fea / f"{task}_labels" / f"{stem}.txt", f"{value} 0.4 0.5 0.2 0.2")
    for stem in ("1", "2", "10"):
        write_image(root / "testB" / "cla" / f"{stem}.jpg", 100 + int(stem))
    return root


@pytest.fixture(scope="session")
def phantom_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom dataset shared by the engine tests (read-only for them)."""
    from project.phantom import generate_phantom

    out = tmp_path_factory.mktemp("phantom") / "data"
    generate_phantom(out, n_train=96, n_test=12, size=64, seed=0)
    return out
