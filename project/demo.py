"""`make demo`: phantom data → train both models briefly on the CPU → run.py on testB → challenge score."""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from project.evaluate import evaluate_folders, format_report
from project.phantom import generate_phantom
from project.runfolder import BEST_CHECKPOINT
from project.testb import main as run_testb
from project.training import run as train

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# Task name -> (the CPU recipe it trains with, the prefix run.py looks for in weights/).
RECIPES = {"cla": ("cls_phantom_lite0_cpu.yaml", "cls"), "fea": ("fea_phantom_cpu.yaml", "fea")}


def _phantom(data: Path, n_train: int, n_test: int, size: int, seed: int) -> None:
    if (data / "testB_gt").is_dir():
        print(f"[demo] phantom data already in {data}")
        return
    print(f"[demo] writing phantom data to {data}")
    generate_phantom(data, n_train=n_train, n_test=n_test, size=size, seed=seed)


def _train(task: str, recipe: str, data: Path, run_dir: Path, epochs: int | None) -> Path:
    config = CONFIGS / recipe
    argv = ["--config", str(config), "--data", str(data), "--out", str(run_dir)]
    if epochs is not None:
        argv += ["--epochs", str(epochs)]
    print(f"[demo] training {task} with {config.name} into {run_dir}")
    train(argv, task)
    return run_dir / BEST_CHECKPOINT


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("demo_run"))
    parser.add_argument("--weights-dir", type=Path, default=REPO / "weights",
                        help="where the trained checkpoints are copied for run.py")
    parser.add_argument("--n-train", type=int, default=2400, help="phantom training images (half cla, half fea)")
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--size", type=int, default=96, help="phantom image size in pixels")
    parser.add_argument("--epochs", type=int, help="override the recipes' epoch counts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    data = args.workdir / "data"
    _phantom(data, args.n_train, args.n_test, args.size, args.seed)
    args.weights_dir.mkdir(parents=True, exist_ok=True)
    weights = {}
    for task, (recipe, prefix) in RECIPES.items():
        best = _train(task, recipe, data, args.workdir / "runs" / task, args.epochs)
        weights[prefix] = args.weights_dir / f"{prefix}_demo.safetensors"
        shutil.copyfile(best, weights[prefix])
    predictions = args.workdir / "predictions"
    predictions.mkdir(parents=True, exist_ok=True)
    print(f"[demo] python run.py --data {data / 'testB'} --cls-weights {weights['cls']} "
          f"--fea-weights {weights['fea']} --out-dir {predictions}")
    code = run_testb(["--data", str(data / "testB"), "--cls-weights", str(weights["cls"]),
                      "--fea-weights", str(weights["fea"]), "--out-dir", str(predictions)])
    if code != 0:
        return code
    result = evaluate_folders(predictions, data / "testB_gt")
    print(format_report(result))
    print(f"[demo] chance level: cla about {0.6 / 6 + 0.4 / 6:.2f} for six balanced classes; "
          f"finished in {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
