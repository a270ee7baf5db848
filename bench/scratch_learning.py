"""From-scratch learning on phantom data: validation score per backbone and per MyConvNeXt ablation."""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from project.config import parse_with_config  # noqa: E402
from project.data.layout import load_split  # noqa: E402
from project.fileio import atomic_write_csv  # noqa: E402
from project.metrics import classification_score  # noqa: E402
from project.phantom import generate_phantom  # noqa: E402
from project.runfolder import SUMMARY_FILE  # noqa: E402
from project.training import build_parser, run, split_samples  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHANTOM_CONFIG = ROOT / "configs" / "cls_phantom_cpu.yaml"
NO_REGULARISATION = ["--sd-max", "0", "--p-block", "0", "--p-head", "0"]


def _augment(affine: float, brightness_contrast: float) -> list[str]:
    return ["--augment-options", json.dumps({"coarse_dropout": 0.0, "blur": 0.0, "affine": affine,
                                             "brightness_contrast": brightness_contrast})]


# name -> trainer flags on top of configs/cls_phantom_cpu.yaml
ROWS: dict[str, list[str]] = {
    "resnet10t": ["--model", "resnet10t"],
    "convnext_atto": ["--model", "convnext_atto", "--lr", "1e-3"],
    "convnext_atto-noreg": ["--model", "convnext_atto", "--lr", "1e-3", *NO_REGULARISATION],
    "convnext_atto-noreg-lr3e-4": ["--model", "convnext_atto", "--lr", "3e-4", *NO_REGULARISATION],
    "convnext_atto-overlap-stem": ["--model", "convnext_atto", "--lr", "1e-3", *NO_REGULARISATION,
                                   "--model-kwargs", '{"stem_type": "overlap_act"}'],
    "convnext_atto-layerscale1": ["--model", "convnext_atto", "--lr", "1e-3", *NO_REGULARISATION,
                                  "--model-kwargs", '{"ls_init_value": 1.0}'],
    "convnext_atto-batchnorm": ["--model", "convnext_atto", "--lr", "1e-3", *NO_REGULARISATION,
                                "--model-kwargs", '{"norm_layer": "batchnorm2d", "conv_mlp": true}'],
    "convnext_atto-patch2": ["--model", "convnext_atto", "--lr", "1e-3", "--model-kwargs", '{"patch_size": 2}'],
    "convnext_atto-patch2-noreg": ["--model", "convnext_atto", "--lr", "1e-3", *NO_REGULARISATION,
                                   "--model-kwargs", '{"patch_size": 2}'],
    # configs/cls_convnext_phantom_cpu.yaml (convnext_atto-noreg above plus no brightness/contrast), and without affine
    "convnext_atto-noreg-nobc": ["--model", "convnext_atto", "--lr", "1e-3", *NO_REGULARISATION, *_augment(0.3, 0.0)],
    "convnext_atto-noreg-noaffine-nobc": ["--model", "convnext_atto", "--lr", "1e-3", *NO_REGULARISATION,
                                          *_augment(0.0, 0.0)],
}
CSV_HEADER = ("row", "best_val_score", "best_epoch", "last_val_score", "first_train_loss", "last_train_loss",
              "majority_baseline", "chance", "seconds")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from: {', '.join(ROWS)}")
    parser.add_argument("--n-train", type=int, default=2000, help="phantom training images (half of them cla)")
    parser.add_argument("--phantom-size", type=int, default=96, help="side of the phantom images on disk")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=3, help="phantom seed (the learning tests use 3)")
    parser.add_argument("--out", type=Path, help="also write the table as CSV")
    args = parser.parse_args(argv)
    unknown = set(args.rows.split(",")) - set(ROWS)
    if unknown:
        parser.error(f"unknown row(s) {sorted(unknown)}; choose from {', '.join(ROWS)}")
    return args


def baselines(data: Path) -> tuple[float, float]:
    """(majority-class score, expected score of uniform random guesses) on the trainer's validation split."""
    scan, _ = load_split(data, "train", "cla")
    trainer_args = parse_with_config(build_parser("cla"), ["--config", str(PHANTOM_CONFIG), "--data", str(data),
                                                           "--out", str(data.parent / "unused")])
    train, val = split_samples(scan.samples, trainer_args)
    truth = np.array([s.label for s in val])
    majority = classification_score(truth, np.full_like(truth, np.bincount([s.label for s in train]).argmax()))
    rng = np.random.default_rng(0)
    n_classes = int(max(s.label for s in train)) + 1
    chance = np.mean([classification_score(truth, rng.integers(0, n_classes, len(truth))) for _ in range(200)])
    return float(majority), float(chance)


def train_row(flags: list[str], data: Path, out: Path, args: argparse.Namespace) -> tuple[list[dict], float]:
    argv = ["--config", str(PHANTOM_CONFIG), "--data", str(data), "--out", str(out),
            "--img-size", str(args.img_size), "--epochs", str(args.epochs), *flags]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        run(argv, "cla")
    with (out / SUMMARY_FILE).open() as handle:
        return list(csv.DictReader(handle)), time.perf_counter() - start


def table_row(name: str, history: list[dict], majority: float, chance: float, seconds: float) -> dict:
    scores = [float(row["val_score"]) for row in history]
    best = int(np.argmax(scores))
    return {"row": name, "best_val_score": scores[best], "best_epoch": best + 1, "last_val_score": scores[-1],
            "first_train_loss": float(history[0]["train_loss"]), "last_train_loss": float(history[-1]["train_loss"]),
            "majority_baseline": majority, "chance": chance, "seconds": seconds}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads; phantom n_train={args.n_train} "
          f"at {args.phantom_size} px, trained at {args.img_size} px for {args.epochs} epochs "
          f"({PHANTOM_CONFIG.name} plus the row's flags)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "phantom"
        with contextlib.redirect_stderr(io.StringIO()):
            generate_phantom(data, n_train=args.n_train, n_test=0, size=args.phantom_size, seed=args.seed)
        majority, chance = baselines(data)
        print(f"{'row':<34} {'best':>6} {'epoch':>5} {'last':>6} {'loss first→last':>16} {'s':>5}")
        for name in args.rows.split(","):
            history, seconds = train_row(ROWS[name], data, Path(tmp) / name, args)
            row = table_row(name, history, majority, chance, seconds)
            rows.append(row)
            print(f"{name:<34} {row['best_val_score']:6.3f} {row['best_epoch']:5d} {row['last_val_score']:6.3f} "
                  f"{row['first_train_loss']:7.3f}→{row['last_train_loss']:.3f} {seconds:5.0f}", flush=True)
    print(f"validation score = 0.6·accuracy + 0.4·macro-F1; majority-class baseline {majority:.3f}, "
          f"uniform random guessing {chance:.3f}")
    if args.out:
        atomic_write_csv(args.out, CSV_HEADER, [[row[k] for k in CSV_HEADER] for row in rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
