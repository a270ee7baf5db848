"""Merge a second classification dataset into a first: its classes mapped by BI-RADS category, coarse ones declared.

``python -m project.adapters.merge --primary data/breast --extra data/busbra --out data/breast+busbra``

The primary dataset (e.g. BrEaST: 2, 3, 4A, 4B, 4C, 5) keeps its class list, its feature labels
(train/fea is linked as it is) and its folds. Every classification image of the extra dataset (e.g.
BUS-BRA: 2, 3, 4, 5) goes into the class of the same name or, where the primary splits its BI-RADS
category (4 into 4A/4B/4C), into a coarse folder that dataset.yaml declares as
`coarse_labels: {"4": ["4A", "4B", "4C"]}`. The other way round (BrEaST into BUS-BRA), an extra 4A,
4B or 4C goes into the primary's 4, a fine label. Extra images get no fold number, so they always train
and cross-validation folds stay those of the primary. metadata.csv gets a `source` column and
patient groups prefixed by the source, so patients of two datasets never merge.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from project.adapters.common import (
    AdapterError,
    add_link_arguments,
    check_out,
    dataset_yaml,
    place_image,
    run_conversion,
)
from project.data.classes import birads_number, normalise_class_name
from project.data.layout import DatasetConfig, Sample, class_folder_name, label_line, load_split
from project.fileio import atomic_write_text


def extra_folders(extra_classes: Sequence[str], classes: Sequence[str]) -> dict[str, tuple[str, list[str]]]:
    """For each extra class: (folder name in the merged set, the primary classes it allows)."""
    folders = {}
    for name in extra_classes:
        same = [c for c in classes if normalise_class_name(c) == normalise_class_name(name)]
        finer = [c for c in classes if birads_number(c) == birads_number(name)] if birads_number(name) else []
        if same or len(finer) == 1:  # a finer extra class (4A) joins the primary's one class of its category (4)
            folders[name] = (class_folder_name((same or finer)[0]), same or finer)
        elif finer:
            folders[name] = (class_folder_name(name), finer)
        else:
            raise AdapterError(f"extra class {name!r} matches no class of {list(classes)} by name or BI-RADS category")
    return folders


def _write_sample(sample: Sample, folder: str, class_id: int, out: Path, link: str) -> None:
    split = out / "train" / "cla" / folder
    place_image(sample.path, split / "images" / sample.path.name, link)
    box = sample.box or (0.5, 0.5, 1.0, 1.0)
    atomic_write_text(split / "labels" / f"{sample.path.stem}.txt", label_line(class_id, box))


def _metadata(root: Path, config: DatasetConfig, source: str, keep_folds: bool) -> pd.DataFrame:
    table = pd.read_csv(root / config.metadata, dtype=str, keep_default_na=False) if config.metadata else None
    if table is None:
        return pd.DataFrame(columns=["image", "patient", "fold", "source"])
    table = table.rename(columns={config.group_column or "": "patient", config.fold_column or "": "fold"})
    table["patient"] = f"{source}:" + table.get("patient", table["image"])
    table["fold"] = table["fold"] if keep_folds and "fold" in table else ""
    table["source"] = source
    return table


def merge(primary: Path, extra: Path, out: Path, link: str = "symlink") -> str:
    """Write the merged dataset; returns a line with the image count per merged folder."""
    check_out(out)
    (primary_scan, config), (extra_scan, extra_config) = load_split(primary), load_split(extra)
    folders = extra_folders(extra_config.classes, config.classes)
    clashes = sorted({s.path.name for s in primary_scan.samples} & {s.path.name for s in extra_scan.samples})
    if clashes:
        raise AdapterError(f"image names in both datasets: {clashes[:5]}; rename one set first")
    counts: dict[str, int] = {}
    for sample in primary_scan.samples:
        folder = class_folder_name(config.classes[sample.label])
        _write_sample(sample, folder, sample.label + 1, out, link)
        counts[folder] = counts.get(folder, 0) + 1
    for sample in extra_scan.samples:
        folder, allowed = folders[extra_config.classes[sample.label]]
        _write_sample(sample, folder, config.classes.index(allowed[0]) + 1, out, link)
        counts[folder] = counts.get(folder, 0) + 1
    if (primary / "train" / "fea").is_dir():
        (out / "train" / "fea").symlink_to((primary / "train" / "fea").resolve(), target_is_directory=True)
    metadata = pd.concat([_metadata(primary, config, primary.name, True), _metadata(extra, extra_config, extra.name,
                                                                                      False)], ignore_index=True)
    atomic_write_text(out / "metadata.csv", metadata.fillna("").to_csv(index=False))
    coarse = {name: allowed for name, (folder, allowed) in folders.items() if len(allowed) > 1}
    yaml_config = {"classes": list(config.classes), "tasks": list(config.tasks), "coarse_labels": coarse,
                   "metadata": "metadata.csv", "group_column": "patient", "fold_column": "fold"}
    header = f"{primary.name} with {extra.name} merged in by project.adapters.merge; cite both datasets."
    atomic_write_text(out / "dataset.yaml", dataset_yaml(yaml_config, header))
    return f"{out}: " + ", ".join(f"{folder} {n}" for folder, n in counts.items())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m project.adapters.merge", description=__doc__.splitlines()[0])
    parser.add_argument("--primary", type=Path, required=True, help="dataset whose classes, features and folds stay")
    parser.add_argument("--extra", type=Path, required=True, help="dataset whose classification images join")
    parser.add_argument("--out", type=Path, required=True, help="new, empty folder")
    add_link_arguments(parser)
    args = parser.parse_args(argv)
    return run_conversion(lambda: merge(args.primary, args.extra, args.out, args.link))


if __name__ == "__main__":
    sys.exit(main())
