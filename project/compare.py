"""Paired comparison of cross-validation tables (project.report's cv.json): per-fold differences against a baseline."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from project.report import CV_COLUMNS


class CompareError(ValueError):
    """A cv.json that cannot be read or paired; the message names the file."""


def read_folds(report: Path) -> dict[str, dict]:
    """The per-fold rows of REPORT/cv.json (or of the file itself) by fold name, without mean and sd."""
    path = Path(report)
    path = path / "cv.json" if path.is_dir() else path
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        return {row["fold"]: row for row in rows if row["fold"] not in ("mean", "sd")}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CompareError(f"{path}: not a readable cv.json ({exc!r})") from None


def paired_differences(baseline: Mapping[str, Mapping], other: Mapping[str, Mapping]) -> dict[str, dict]:
    """Per column: the other's mean, the fold-by-fold differences (other − baseline), their mean ± sd, and wins.

    Folds are paired by name and must be the same set with the same image counts, so that both
    sides were scored on the same validation images.
    """
    if set(baseline) != set(other):
        raise CompareError(f"folds differ: baseline {sorted(baseline)}, other {sorted(other)}")
    unequal = [fold for fold in baseline if baseline[fold]["n"] != other[fold]["n"]]
    if unequal:
        raise CompareError(f"fold(s) {unequal} were scored on different image counts")
    result = {}
    for column in CV_COLUMNS:
        pairs = [(baseline[f].get(column), other[f].get(column)) for f in sorted(baseline)
                 if baseline[f].get(column) is not None and other[f].get(column) is not None]
        if not pairs:
            continue
        base, new = np.array(pairs, dtype=float).T
        diff = new - base
        result[column] = {
            "baseline": float(base.mean()), "other": float(new.mean()), "difference": float(diff.mean()),
            "sd": float(diff.std(ddof=1)) if len(diff) > 1 else None,
            "better": int((diff > 0).sum()), "folds": len(diff),
        }
    return result


def format_comparison(name: str, result: Mapping[str, Mapping]) -> str:
    """One Markdown row: per column 'mean (Δ ±sd, wins/folds)'."""
    cells = []
    for column in CV_COLUMNS:
        if column not in result:
            cells.append("n/a")
            continue
        r = result[column]
        spread = f" ± {r['sd']:.3f}" if r["sd"] is not None else ""
        cells.append(f"{r['other']:.3f} ({r['difference']:+.3f}{spread}, {r['better']}/{r['folds']})")
    return f"| {name} | " + " | ".join(cells) + " |"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m project.compare",
        description="Compare cross-validation reports fold by fold against a baseline: each cell is the mean, "
                    "then the mean paired difference ± its sd and the folds where the figure rose.",
    )
    parser.add_argument("baseline", type=Path, help="report folder (or cv.json) of the baseline")
    parser.add_argument("others", type=Path, nargs="+", help="report folders (or cv.json) to compare with it")
    args = parser.parse_args(argv)
    try:
        baseline = read_folds(args.baseline)
        rows = []
        for other in args.others:
            try:
                rows.append(format_comparison(str(other), paired_differences(baseline, read_folds(other))))
            except CompareError as exc:
                raise CompareError(f"{other} against {args.baseline}: {exc}") from None
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("| report | " + " | ".join(CV_COLUMNS.values()) + " |")
    print("|---|" + "---:|" * len(CV_COLUMNS))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
