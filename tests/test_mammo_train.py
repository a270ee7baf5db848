"""The mammography task: phantom DICOMs -> prepare -> train -> checkpoint -> predict from DICOM; its parts."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from project.data.layout import Sample
from project.data.samplers import OversamplingSampler
from project.mammo import prepare
from project.mammo.cv import Breasts, fold_row
from project.mammo.cv import main as cv_main
from project.mammo.data import mammo_augment
from project.mammo.metrics import aggregate
from project.mammo.phantom import generate
from project.mammo.predict import main as predict_main
from project.mammo.sampling import NegativeDownsampler
from project.mammo.train import main as train_main
from project.models.checkpoint import CheckpointConfig, load_checkpoint, read_config, save_checkpoint
from project.models.factory import create_model
from project.models.whole_image import main as convert_main
from project.tasks import MammoTask, create_task
from project.tasks.mammo import CancerLoss, Judging, breast_positive_rate, mammo_preprocess

SIZE = (64, 32)
ROOT = Path(__file__).resolve().parents[1]


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(phantom folder with train.csv and train_images/, the folder prepared from it at SIZE)."""
    root = tmp_path_factory.mktemp("mammo_train")
    generate(root / "phantom", n_patients=8, seed=2, size=(160, 128))
    prepare.run(root / "phantom" / "train.csv", root / "phantom" / "train_images", root / "prepared", size=SIZE,
                backend="pydicom", progress=False)
    return root / "phantom", root / "prepared"


def _sample(breast: str, label: int) -> Sample:
    return Sample(Path(f"{breast}.png"), label=label, extra={"prediction_id": breast})


def _args(**overrides: object) -> argparse.Namespace:
    defaults = {"model": "resnet10t", "model_kwargs": {}, "oversample": False, "positive_share": 0.5,
                "negative_fraction": 0.1, "seed": 0, "aggregate": "mean", "beta": 1.0, "score": "pf1_binarised",
                "mean": None, "std": None, "size": None, "aux_column": None, "aux_weight": 0.3, "pos_weight": 1.0,
                "data": Path("d")}
    return argparse.Namespace(**{**defaults, **overrides})


@pytest.fixture(scope="module")
def trained(phantom: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """A run folder trained on the prepared phantom, and its best epoch's metrics."""
    run = tmp_path_factory.mktemp("mammo_run") / "run"
    best = train_main(["--data", str(phantom[1]), "--out", str(run), "--model", "resnet10t", "--epochs", "2",
                       "--batch-size", "4", "--negative-fraction", "0.5", "--aggregate", "max"])
    return run, best


def test_phantom_dicoms_train_into_a_checkpoint_that_predicts_a_submission(
    phantom: tuple[Path, Path], trained: tuple[Path, dict[str, float]], tmp_path: Path
) -> None:
    dicoms, _ = phantom
    run, best = trained
    config = read_config(run / "best.safetensors")
    assert (config.task, config.labels, config.model_kwargs) == ("mammo", ["cancer"], {"in_chans": 1, "num_classes": 1})
    assert config.preprocess["size"] == list(SIZE) and config.preprocess["aggregate"] == "max"
    assert config.preprocess["mean"] == pytest.approx(0.449, abs=1e-3)  # ImageNet's channel means, averaged
    assert set(config.thresholds) == {"cancer"} and best["val_threshold"] == config.thresholds["cancer"]
    # the prior is the cancer rate of the training breasts: every breast not in val.csv
    val_breasts = {row["prediction_id"] for row in _csv(run / "val.csv")}
    train_rows = [r for r in _csv(dicoms / "train.csv") if f"{r['patient_id']}_{r['laterality']}" not in val_breasts]
    _, labels = aggregate([f"{r['patient_id']}_{r['laterality']}" for r in train_rows],
                          [int(r["cancer"]) for r in train_rows], "max")
    assert config.metrics["positive_rate"] == pytest.approx(labels.mean())
    assert config.metrics["breasts"] == len(val_breasts)

    out = tmp_path / "submission.csv"
    code = predict_main(["--csv", str(dicoms / "train.csv"), "--dicom-dir", str(dicoms / "train_images"),
                         "--weights", str(run / "best.safetensors"), "--out", str(out), "--backend", "pydicom",
                         "--binarize"])
    assert code == 0
    rows = _csv(out)
    breasts = list(dict.fromkeys(f"{r['patient_id']}_{r['laterality']}" for r in _csv(dicoms / "train.csv")))
    assert [r["prediction_id"] for r in rows] == breasts
    assert {r["cancer"] for r in rows} <= {"0", "1"}


def test_the_cross_validation_table_repeats_the_engines_validation(
    trained: tuple[Path, dict[str, float]], tmp_path: Path
) -> None:
    run, _ = trained
    assert cv_main(["--cv", str(run), "--out", str(tmp_path)]) == 0
    (row,) = _csv(tmp_path / "folds.csv")
    metrics = read_config(run / "best.safetensors").metrics
    assert int(row["breasts"]) == metrics["breasts"] and int(row["positives"]) == metrics["positives"]
    assert float(row["pf1"]) == pytest.approx(metrics["pf1"], abs=1e-4)
    assert float(row["pf1_binarised_val_tuned"]) == pytest.approx(metrics["pf1_binarised"], abs=1e-4)
    assert "| 1 |" in (tmp_path / "cv.md").read_text()


def test_the_fold_threshold_comes_from_the_training_breasts() -> None:
    train = Breasts(["a", "b", "c", "d"], np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.7, 0.2]))
    val = Breasts(["e", "f", "g"], np.array([1, 0, 0]), np.array([0.6, 0.4, 0.1]))
    row = fold_row("f0", train, val)
    assert 0.7 < row["threshold"] <= 0.8  # every training breast right, the validation cancer (0.6) missed
    assert row["pf1_binarised"] == 0.0
    assert row["pf1_binarised_val_tuned"] == 1.0 and 0.4 < row["val_tuned_threshold"] <= 0.6
    assert row["auc"] == 1.0 and row["train_auc"] == 1.0 and (row["breasts"], row["positives"]) == (3, 1)


def test_the_whole_image_recipe_trains_head_first_from_a_converted_patch_classifier(
    phantom: tuple[Path, Path], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    patch_kwargs = {"in_chans": 1, "num_classes": 3}
    save_checkpoint(tmp_path / "patch.safetensors", create_model("resnet10t", **patch_kwargs),
                    CheckpointConfig("patch", "resnet10t", patch_kwargs, ["background", "benign", "malignant"], {}))
    assert convert_main(["--patch", str(tmp_path / "patch.safetensors"), "--out", str(tmp_path / "w.safetensors")]) == 0
    run = tmp_path / "run"
    train_main(["--config", str(ROOT / "configs" / "mammo_whole_image_cpu.yaml"), "--data", str(phantom[1]),
                "--out", str(run), "--init-weights", str(tmp_path / "w.safetensors"), "--batch-size", "4",
                "--negative-fraction", "0.5", "--stages",
                '[{"epochs": 1, "lr": 0.001, "train": ["head"]}, {"epochs": 1, "lr": 0.0001, "train": "all"}]'])
    config = read_config(run / "best.safetensors")
    assert (config.model_name, config.model_kwargs["backbone"], config.epoch) == ("whole_image", "resnet10t", 2)
    start, _ = load_checkpoint(tmp_path / "w.safetensors")
    trained, _ = load_checkpoint(run / "best.safetensors")
    assert not torch.equal(start.backbone.conv1[0].weight, trained.backbone.conv1[0].weight)  # stage 2 trained all
    assert len(_csv(run / "summary.csv")) == 2


def test_a_folder_that_was_not_prepared_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no manifest.csv; prepare the images first"):
        train_main(["--data", str(tmp_path), "--out", str(tmp_path / "run")])


def test_validation_is_per_breast_with_the_training_prior() -> None:
    task = create_task("mammo", ["cancer"])
    train = [_sample("1_L", 1), _sample("1_L", 0), _sample("1_R", 0), _sample("2_L", 0)]
    task.configure(_args(aggregate="max"), train)
    assert task.judging == Judging("max", 1.0, "pf1_binarised", 1 / 3)
    val = [_sample("3_L", 1), _sample("3_L", 0), _sample("3_R", 0), _sample("4_L", 0)]
    probs = torch.tensor([0.9, 0.1, 0.3, 0.2])
    evaluation = task.evaluate(torch.logit(probs)[:, None], torch.tensor([1.0, 0.0, 0.0, 0.0]), val)
    # by max, the breasts are 0.9 (cancer), 0.3, 0.2: AUC 1, and a threshold between 0.3 and 0.9 is perfect
    assert evaluation.metrics["auc"] == 1.0 and evaluation.metrics["pf1_binarised"] == 1.0
    assert 0.3 < evaluation.thresholds["cancer"] <= 0.9
    assert evaluation.metrics["pf1"] == pytest.approx(0.75)  # precision 0.9 / 1.4, recall 0.9
    assert evaluation.metrics["positive_rate"] == pytest.approx(1 / 3)
    assert evaluation.metrics["breasts"] == 3 and evaluation.confusion["cancer"].tolist() == [[2, 0], [0, 1]]

    task.configure(_args(aggregate="mean", score="auc"), train)
    one_class = task.evaluate(torch.zeros(2, 1), torch.zeros(2), val[2:])
    assert np.isnan(one_class.metrics["auc"]) and one_class.metrics["score"] == 0.0


def test_breast_positive_rate_counts_breasts_not_images() -> None:
    assert breast_positive_rate([_sample("1_L", 1), _sample("1_L", 1), _sample("1_R", 0), _sample("2_R", 0)]) == 1 / 3


def test_negatives_are_down_sampled_unless_positives_are_oversampled() -> None:
    task = MammoTask(["cancer"])
    train = [_sample(f"{i}_L", int(i < 5)) for i in range(105)]
    sampler = task.train_sampler(_args(), train, rank=0, world_size=1)
    assert isinstance(sampler, NegativeDownsampler) and len(sampler) == 5 + 10
    oversampler = task.train_sampler(_args(oversample=True, positive_share=0.5), train, 0, 1)
    assert isinstance(oversampler, OversamplingSampler) and len(oversampler) == 105
    drawn = [train[i].label for i in oversampler]
    assert 0.35 < np.mean(drawn) < 0.65  # 5 positives of 105, drawn half the time


def test_one_channel_model_and_its_normalisation() -> None:
    task = MammoTask(["cancer"])
    assert task.model_spec(_args()) == ("resnet10t", {"in_chans": 1, "num_classes": 1})
    whole = task.model_spec(_args(model="whole_image", model_kwargs={"backbone": "resnet10t"}))
    assert whole == ("whole_image", {"num_classes": 1, "backbone": "resnet10t"})
    model = create_model("whole_image", **whole[1])
    assert model(torch.zeros(2, 1, 64, 32)).shape == (2, 1)


def test_the_preprocessing_takes_the_prepared_settings_and_the_models_normalisation(
    phantom: tuple[Path, Path]
) -> None:
    _, prepared = phantom
    lite0 = create_model("tf_efficientnet_lite0", in_chans=1, num_classes=1)
    pre = mammo_preprocess(_args(data=prepared, aggregate="max"), lite0)
    assert (pre.size, pre.mean, pre.std, pre.aggregate) == (SIZE, 0.5, 0.5, "max")
    given = mammo_preprocess(_args(data=prepared, size=(32, 16), mean=[0.4], std=[0.2]), lite0)
    assert (given.size, given.mean, given.std) == ((32, 16), 0.4, 0.2)


def test_the_loss_weights_positives() -> None:
    logits, targets = torch.tensor([[0.5], [-1.0]]), torch.tensor([1.0, 0.0])
    plain, weighted = CancerLoss()(logits, targets), CancerLoss(pos_weight=3.0)(logits, targets)
    positive = -torch.nn.functional.logsigmoid(torch.tensor(0.5))
    assert float(weighted - plain) == pytest.approx(float(positive), rel=1e-6)  # (3 - 1) x positive's, mean of 2


def test_augmentation_keeps_the_chest_wall_on_the_left_and_reseeds() -> None:
    image = np.zeros((32, 16), np.uint8)
    image[:, :4] = 200  # chest wall
    augment = mammo_augment({"affine": 0.0, "brightness_contrast": 0.0, "vflip": 1.0}, seed=1)
    np.testing.assert_array_equal(augment(image), image[::-1])
    noisy = mammo_augment({}, seed=3)
    first = [noisy(image) for _ in range(4)]
    noisy.reseed(3)
    assert all(np.array_equal(a, noisy(image)) for a in first)
    assert all(a[:, :4].mean() > a[:, 12:].mean() for a in first)


def test_an_auxiliary_head_learns_a_manifest_column_beside_the_cancer_logit() -> None:
    task = create_task("mammo", ["cancer"])
    train = [Sample(Path(f"{i}.png"), label=i % 2, extra={"prediction_id": f"{i}_L", "tissue": t})
             for i, t in enumerate(["G", "F", "D", "G", ""])]
    task.configure(_args(aux_column="tissue", aux_weight=0.5), train)
    assert task.aux.classes == ("D", "F", "G") and task.model_spec(_args())[1]["num_classes"] == 4
    assert task.target(train[2]).tolist() == [0.0, 0.0] and task.target(train[4]).tolist() == [0.0, -1.0]
    logits = torch.tensor([[0.5, 2.0, 0.0, 0.0], [-1.0, 0.0, 3.0, 0.0]])
    targets = torch.stack([task.target(train[1]), task.target(train[4])])  # F known, the other unknown
    loss = task.loss(_args(aux_column="tissue", aux_weight=0.5), train)(logits, targets)
    cancer = CancerLoss()(logits[:, :1], targets[:, 0])
    aux = torch.nn.functional.cross_entropy(logits[:1, 1:], torch.tensor([1]))
    assert float(loss) == pytest.approx(float(cancer + 0.5 * aux), rel=1e-6)  # the unknown row adds nothing
    assert task.probabilities(logits).shape == (2, 1)  # prediction sees the cancer logit only
    evaluation = task.evaluate(logits, torch.stack([task.target(s) for s in train[:2]]), train[:2])
    assert evaluation.metrics["aux_accuracy"] == 0.5 and evaluation.metrics["auc"] == 0.0
    with pytest.raises(SystemExit, match="'density' is not a metadata column"):
        task.configure(_args(aux_column="density"), train)


def test_phantom_training_with_an_auxiliary_head_predicts_from_dicom(
    phantom: tuple[Path, Path], tmp_path: Path
) -> None:
    dicoms, prepared = phantom
    run = tmp_path / "run"
    best = train_main(["--data", str(prepared), "--out", str(run), "--model", "resnet10t", "--epochs", "1",
                       "--batch-size", "4", "--negative-fraction", "0.5", "--aux-column", "view"])
    assert 0.0 <= best["val_aux_accuracy"] <= 1.0
    assert read_config(run / "best.safetensors").model_kwargs["num_classes"] == 3  # cancer + CC / MLO
    out = tmp_path / "submission.csv"
    assert predict_main(["--csv", str(dicoms / "train.csv"), "--dicom-dir", str(dicoms / "train_images"),
                         "--weights", str(run / "best.safetensors"), "--out", str(out), "--backend", "pydicom"]) == 0
    assert all(0.0 <= float(r["cancer"]) <= 1.0 for r in _csv(out))
