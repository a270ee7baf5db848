"""Dataset doctor: `python -m project.doctor DIR` checks a challenge-layout dataset and reports."""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from project.data.imageio import ImageReadError, read_image
from project.data.layout import (
    DatasetConfig,
    Problem,
    Sample,
    list_images,
    load_config,
    scan_classification,
    scan_features,
)

LAYOUT_SPLITS = ("train", "testA")
FLAT_SPLITS = ("testB",)
MAX_LISTED = 20


@dataclass
class Report:
    class_counts: dict[str, Counter] = field(default_factory=dict)
    feature_counts: dict[str, dict[str, Counter]] = field(default_factory=dict)
    flat_counts: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def _content_hash(path: Path) -> tuple[Path, str | None, str | None]:
    """Hash of the decoded pixels, so one image re-saved with other metadata still matches."""
    try:
        pixels = read_image(path, max_side=None)
    except ImageReadError as exc:
        return path, None, exc.cause
    digest = hashlib.sha1(str(pixels.shape).encode() + pixels.tobytes()).hexdigest()
    return path, digest, None


def _collect(root: Path, config: DatasetConfig, report: Report) -> dict[str, list[Path]]:
    """Scan every split present; returns the image paths per split and task ('train/cla', 'testB/fea')."""
    images: dict[str, list[Path]] = {}
    for split in LAYOUT_SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        cla = scan_classification(split_dir, config.classes, config.coarse_labels)
        fea = scan_features(split_dir, config.tasks)
        report.class_counts[split] = Counter(config.class_name(s) for s in cla.samples)
        report.feature_counts[split] = _feature_counts(fea.samples, config.tasks)
        report.problems += cla.problems + fea.problems
        images[f"{split}/cla"] = [s.path for s in cla.samples]
        images[f"{split}/fea"] = [s.path for s in fea.samples]
    for split in FLAT_SPLITS:
        for kind in ("cla", "fea"):
            folder = root / split / kind
            if folder.is_dir():
                images[f"{split}/{kind}"] = list_images(folder)
                report.flat_counts[f"{split}/{kind}"] = len(images[f"{split}/{kind}"])
    return images


def _feature_counts(samples: Sequence[Sample], tasks: Sequence[str]) -> dict[str, Counter]:
    counts = {task: Counter() for task in tasks}
    for sample in samples:
        for task in tasks:
            value = sample.features.get(task)
            counts[task]["unknown" if value is None else str(value)] += 1
    return counts


def _check_images(images: dict[str, list[Path]], report: Report, workers: int) -> None:
    owners = {path: split for split, paths in images.items() for path in paths}
    by_hash: dict[str, list[Path]] = defaultdict(list)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_content_hash, owners)
        for path, digest, error in tqdm(results, total=len(owners), desc="reading images", leave=False):
            if error is not None:
                report.problems.append(Problem(path, "unreadable image", error))
            else:
                by_hash[digest].append(path)
    for paths in by_hash.values():
        kind = _duplicate_kind([owners[p] for p in paths])
        if kind is not None:
            names = ", ".join(str(p) for p in paths[1:])
            report.problems.append(Problem(paths[0], kind, f"same pixels as {names}"))


def _duplicate_kind(owners: Sequence[str]) -> str | None:
    """What copies of one image in these split/task folders mean; None for no problem.

    One copy per task of one split is one image labelled for both tasks (cla and fea), which
    leaks nothing: each task trains and validates on its own folder.
    """
    per_folder = Counter(owners)
    splits = {owner.split("/")[0] for owner in per_folder}
    if len(splits) == 1 and max(per_folder.values()) == 1:
        return None
    if "train" in splits and len(splits) > 1:
        return "duplicate across train and test"
    return "duplicate within train" if splits == {"train"} else "duplicate within test"


def examine(root: Path, workers: int = 4) -> Report:
    """Everything the doctor knows about the dataset at `root`."""
    root = Path(root)
    report = Report()
    images = _collect(root, load_config(root), report)
    if not images:
        raise NotADirectoryError(f"{root}: no train/, testA/ or testB/ in the challenge layout")
    _check_images(images, report, workers)
    return report


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(report: Report, config: DatasetConfig) -> str:
    parts = []
    for split, counts in report.class_counts.items():
        rows = [(cls, counts.get(cls, 0)) for cls in (*config.classes, *config.coarse_labels)]
        parts.append(f"[{split}] classification\n" + _table(("BI-RADS", "images"), rows))
    for split, per_task in report.feature_counts.items():
        rows = [(t, c.get("0", 0), c.get("1", 0), c.get("unknown", 0)) for t, c in per_task.items()]
        parts.append(f"[{split}] features\n" + _table(("feature", "0", "1", "unknown"), rows))
    if report.flat_counts:
        parts.append("[test] " + ", ".join(f"{k}: {v} images" for k, v in report.flat_counts.items()))
    by_kind: dict[str, list[Problem]] = defaultdict(list)
    for problem in report.problems:
        by_kind[problem.kind].append(problem)
    if by_kind:
        summary = _table(("problem", "files"), [(k, len(v)) for k, v in by_kind.items()])
        listed = []
        for problems in by_kind.values():
            listed += [f"  {p}" for p in problems[:MAX_LISTED]]
            if len(problems) > MAX_LISTED:
                listed.append(f"  ... and {len(problems) - MAX_LISTED} more")
        parts.append("PROBLEMS\n" + summary + "\n" + "\n".join(listed))
    else:
        parts.append("No problems found.")
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check a dataset in the challenge layout. Exit 0: clean, 1: problems, 2: not a dataset."
    )
    parser.add_argument("root", type=Path, help="folder holding train/, testA/ and/or testB/")
    parser.add_argument("--workers", type=int, default=4, help="threads reading images")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.root)
        report = examine(args.root, args.workers)
    except (NotADirectoryError, FileNotFoundError, ValueError) as exc:
        print(f"doctor: {exc}", file=sys.stderr)
        return 2
    print(render(report, config))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
