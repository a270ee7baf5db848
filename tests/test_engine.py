"""The shared engine: checkpoints, resume, run-folder contents, staged unfreezing, DDP on gloo."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from project.engine import EngineConfig, Stage, _optimizer, _scheduler, layer_lr_scales
from project.models.checkpoint import CheckpointConfig, CheckpointError, load_checkpoint, read_config, save_checkpoint
from project.models.factory import create_model, param_groups
from project.runtime import ShardSampler, make_loader, unshard
from project.training import run

ROOT = Path(__file__).resolve().parents[1]
TINY_CLS = ["--model", "convnext_atto", "--img-size", "32", "--batch-size", "16", "--workers", "0",
            "--lr", "0.002", "--warmup-epochs", "0.5"]


def _summary(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "summary.csv").open() as handle:
        return list(csv.DictReader(handle))


def _optimizer_steps(run_dir: Path) -> int:
    state = torch.load(run_dir / "last_state.pt", weights_only=True)["optimizer"]["state"]
    return int(next(iter(state.values()))["step"])


def test_checkpoint_round_trip_gives_identical_logits(tmp_path: Path) -> None:
    kwargs = {"backbone": "convnext_atto", "num_classes": 4}
    model = create_model("my_convnext", **kwargs).eval()
    config = CheckpointConfig(task="cla", model_name="my_convnext", model_kwargs=kwargs, labels=["2", "3", "4", "5"],
                              preprocess={"img_size": 32}, thresholds={"boundary": 0.37})
    save_checkpoint(tmp_path / "c.safetensors", model, config)
    loaded, loaded_config = load_checkpoint(tmp_path / "c.safetensors")
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))
    assert loaded_config.labels == ["2", "3", "4", "5"] and loaded_config.thresholds == {"boundary": 0.37}
    assert loaded_config.code_version.startswith("0.1.0")


def test_checkpoint_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        read_config(tmp_path / "absent.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        read_config(tmp_path / "junk.safetensors")


def test_gathered_validation_shards_return_to_dataset_order() -> None:
    size, world_size = 7, 3
    logits = torch.arange(size * 2).view(size, 2)
    gathered = torch.cat([logits[list(ShardSampler(size, rank, world_size))] for rank in range(world_size)])
    assert not torch.equal(gathered, logits)
    assert torch.equal(unshard([gathered], world_size)[0], logits)


def test_run_folder_and_resume_continue_the_schedule(phantom_small: Path, tmp_path: Path, monkeypatch) -> None:
    straight = tmp_path / "straight"
    run(["--data", str(phantom_small), "--out", str(straight), "--epochs", "3", *TINY_CLS], "cla")
    for name in ("args.yaml", "summary.csv", "best.safetensors", "learning_curves.png", "confusion_matrix.png"):
        assert (straight / name).stat().st_size > 0, name
    assert any((straight / "tensorboard").iterdir())
    scores = [float(row["val_score"]) for row in _summary(straight)]
    assert read_config(straight / "best.safetensors").epoch == 1 + scores.index(max(scores))

    from project.engine import Trainer

    original = Trainer._end_epoch

    def stop_after_first(self, *args):
        original(self, *args)
        if self.epoch == 1:
            raise KeyboardInterrupt

    interrupted = tmp_path / "interrupted"
    argv = ["--data", str(phantom_small), "--out", str(interrupted), "--epochs", "3", *TINY_CLS]
    monkeypatch.setattr(Trainer, "_end_epoch", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        run(argv, "cla")
    assert len(_summary(interrupted)) == 1
    steps_per_epoch = _optimizer_steps(interrupted)
    monkeypatch.setattr(Trainer, "_end_epoch", original)
    run(argv, "cla")
    resumed, reference = _summary(interrupted), _summary(straight)
    assert [row["epoch"] for row in resumed] == ["1", "2", "3"]
    assert [float(r["lr"]) for r in resumed] == pytest.approx([float(r["lr"]) for r in reference])
    # AdamW's state accumulates over epochs and survives the resume.
    assert _optimizer_steps(straight) == _optimizer_steps(interrupted) == 3 * steps_per_epoch


def test_select_last_keeps_the_final_epoch(phantom_small: Path, tmp_path: Path) -> None:
    out = tmp_path / "last"
    returned = run(["--data", str(phantom_small), "--out", str(out), "--epochs", "3", "--select", "last", *TINY_CLS],
                   "cla")
    config = read_config(out / "best.safetensors")
    assert config.epoch == 3
    assert config.metrics["score"] == pytest.approx(float(_summary(out)[-1]["val_score"]))
    assert returned["epoch"] == 3 and returned["val_score"] == config.metrics["score"]  # what the checkpoint holds


def test_ema_follows_the_training_from_its_warm_up(phantom_small: Path, tmp_path: Path, monkeypatch) -> None:
    """With decay 0.999 over a few dozen steps, the warm-up is what lets the average leave the initial weights."""
    from project.engine import Trainer

    distances = {}
    original = Trainer.fit

    def record(self):
        initial = [p.detach().clone() for p in self.model.parameters()]
        result = original(self)
        trained = [p.detach() for p in self.model.parameters()]
        averaged = [p.detach() for p in self.ema.module.parameters()]
        distances["to_trained"] = sum(float((a - t).norm()) for a, t in zip(averaged, trained))
        distances["to_initial"] = sum(float((a - i).norm()) for a, i in zip(averaged, initial))
        return result

    monkeypatch.setattr(Trainer, "fit", record)
    run(["--data", str(phantom_small), "--out", str(tmp_path / "ema"), "--epochs", "3", "--ema-decay", "0.999",
         *TINY_CLS], "cla")
    assert distances["to_trained"] < 0.5 * distances["to_initial"]


def test_staged_unfreezing_trains_only_the_named_groups(phantom_small: Path, tmp_path: Path, monkeypatch) -> None:
    from project.engine import Trainer

    seen = []
    original = Trainer._train_epoch

    def record(self, stage_index):
        before = {k: v.clone() for k, v in self.model.state_dict().items() if v.is_floating_point()}
        result = original(self, stage_index)
        changed = {k.split(".")[0] for k, v in before.items() if not torch.equal(v, self.model.state_dict()[k])}
        seen.append((stage_index, self.optimizer.param_groups[0]["initial_lr"], changed))
        return result

    monkeypatch.setattr(Trainer, "_train_epoch", record)
    stages = '[{"epochs": 1, "lr": 0.01, "train": ["head"]}, {"epochs": 1, "lr": 0.001, "train": "all"}]'
    run(["--data", str(phantom_small), "--out", str(tmp_path / "staged"), "--stages", stages, *TINY_CLS], "cla")
    assert seen[0][0] == 0 and seen[0][1] == pytest.approx(0.01) and seen[0][2] == {"head"}
    assert seen[1][0] == 1 and seen[1][1] == pytest.approx(0.001) and {"stem", "stages", "head"} <= seen[1][2]


@pytest.mark.slow
def test_two_process_gloo_ddp_run_writes_one_checkpoint(phantom_small: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               str(ROOT / "train_cls" / "train_cls.py"), "--data", str(phantom_small), "--out", str(out),
               "--epochs", "2", *TINY_CLS]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["best.safetensors"]
    assert len(_summary(out)) == 2


def test_a_sampler_drawing_less_than_a_batch_still_gives_a_training_step() -> None:
    dataset = torch.utils.data.TensorDataset(torch.arange(100))
    few = torch.utils.data.SubsetRandomSampler(range(3))
    assert len(make_loader(dataset, 8, 0, sampler=few, train=True)) == 1
    assert len(make_loader(dataset, 8, 0, train=True)) == 100 // 8


def test_layer_decay_scales_each_group_below_the_head() -> None:
    model = create_model("resnet10t", num_classes=3)
    depth = {id(p): d for d, params in enumerate(param_groups(model).values()) for p in params}
    optimizer = _optimizer(list(model.parameters()), 1e-3, 0.05, layer_lr_scales(model, 0.5))
    _scheduler(optimizer, EngineConfig(warmup_epochs=0), Stage(epochs=2, lr=1e-3), steps_per_epoch=10)
    for group in optimizer.param_groups:
        assert {depth[id(p)] for p in group["params"]} == {round(math.log(group["lr_scale"], 0.5))}
        assert group["lr"] == pytest.approx(1e-3 * group["lr_scale"])
        assert group["weight_decay"] == (0.05 if group["params"][0].ndim > 1 else 0.0)
    assert optimizer.param_groups[0]["lr_scale"] == 1.0 and optimizer.param_groups[-1]["lr_scale"] == 0.5**5
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    plain = _optimizer(list(model.parameters()), 1e-3, 0.05, layer_lr_scales(model, 1.0))
    assert [g["lr_scale"] for g in plain.param_groups] == [1.0, 1.0]  # off: decayed and not decayed only
