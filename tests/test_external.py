"""External validation: class mapping by BI-RADS category, figures, the CLI on a phantom with finer classes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from project.data.layout import Sample
from project.data.transforms import Preprocess
from project.descriptors import DESCRIPTORS, LexiconModel, describe_file
from project.external import COLUMNS, ClassMappingError, figures, main, map_classes
from project.models.checkpoint import CheckpointConfig, save_checkpoint
from project.models.factory import create_model
from project.predict import load_members, predict_folder


def test_finer_classes_map_onto_the_coarse_category_and_equal_names_onto_themselves() -> None:
    assert map_classes(["2", "3", "4A", "4b类", "4C", "5"], ["2", "3", "4", "5"]) == [0, 1, 2, 2, 2, 3]
    assert map_classes(["BI-RADS 4A", "5"], ["4A", "4B", "5"]) == [0, 2]
    with pytest.raises(ClassMappingError, match="'6' matches none"):
        map_classes(["6"], ["2", "3", "4", "5"])


def test_figures_score_the_malignancy_against_pathology_where_known() -> None:
    samples = [Sample(path=Path(f"{i}.png"), label=0, extra={"pathology": p})
               for i, p in enumerate(["benign", "malignant", "", "malignant"])]
    truth = np.array([0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])

    result = figures(samples, truth, probs, ["3", "4"])

    assert result["accuracy"] == pytest.approx(0.5)
    assert result["auc_birads"] == pytest.approx(1.0)  # 0.1 below 0.8, 0.4, 0.3
    assert result["auc_pathology"] == pytest.approx(1.0)  # the unknown one is left out


def test_the_cli_scores_each_checkpoint_and_their_ensemble(phantom_small: Path, tmp_path: Path) -> None:
    paths = []
    for seed in (0, 1):
        kwargs = {"num_classes": 4}
        path = tmp_path / f"cls{seed}.safetensors"
        save_checkpoint(path, create_model("resnet10t", **kwargs),
                        CheckpointConfig("cla", "resnet10t", kwargs, ["2", "3", "4", "5"], Preprocess(32).to_dict()))
        paths.append(path)

    assert main(["--weights", *map(str, paths), "--data", str(phantom_small), "--out", str(tmp_path / "ext")]) == 0

    table = (tmp_path / "ext" / "external.md").read_text()
    assert "mean ± sd of the single models" in table and "**ensemble**" in table
    with (tmp_path / "ext" / "cla_prob.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["img_name", "2", "3", "4", "5", "malignancy"] and len(rows) > 0
    cells = [line.split("|")[1:-1] for line in table[table.index("| the ensemble, per class |"):].splitlines()[2:]]
    given = np.bincount([int(np.argmax([float(row[c]) for c in "2345"])) for row in rows], minlength=4)
    assert [cell[0].strip() for cell in cells] == ["2", "3", "4", "5"]
    assert sum(int(cell[1]) for cell in cells) == len(rows)  # every image counted once, under its mapped class
    assert [int(cell[2]) for cell in cells] == given.tolist()


def test_a_lexicon_model_is_scored_on_the_labelled_outlines_alone_and_with_the_ensemble(
    phantom_small: Path, tmp_path: Path, capsys
) -> None:
    data = tmp_path / "outlined"
    rng = np.random.default_rng(0)
    (data / "train" / "cla").mkdir(parents=True)
    (data / "dataset.yaml").write_text("classes: ['2', '3', '4A', '4B', '4C', '5']\n")
    samples = []
    for index, folder in enumerate(["2类", "3类", "4A类", "4B类", "4C类", "5类"] * 2):
        for sub in ("images", "labels", "masks"):
            (data / "train" / "cla" / folder / sub).mkdir(parents=True, exist_ok=True)
        mask = np.zeros((64, 64), np.uint8)
        mask[10 + index:40, 12:30 + 2 * index] = 255
        image = rng.integers(80, 200, (64, 64)).astype(np.uint8)
        Image.fromarray(image).save(data / "train" / "cla" / folder / "images" / f"{index}.png")
        Image.fromarray(mask).save(data / "train" / "cla" / folder / "masks" / f"{index}.png")
        class_id = ["2类", "3类", "4A类", "4B类", "4C类", "5类"].index(folder) + 1
        (data / "train" / "cla" / folder / "labels" / f"{index}.txt").write_text(f"{class_id} 0.5 0.5 0.4 0.4\n")
        samples.append(Sample(path=data / "train" / "cla" / folder / "images" / f"{index}.png", label=class_id - 1,
                              mask=data / "train" / "cla" / folder / "masks" / f"{index}.png"))
    kwargs = {"num_classes": 4}
    weights = tmp_path / "cls.safetensors"
    save_checkpoint(weights, create_model("resnet10t", **kwargs),
                    CheckpointConfig("cla", "resnet10t", kwargs, ["2", "3", "4", "5"], Preprocess(32).to_dict()))
    lexicon = LexiconModel.fit(rng.normal(size=(40, len(DESCRIPTORS))), np.arange(40) % 4, ["2", "3", "4", "5"])
    lexicon.save(tmp_path / "lexicon.json")

    argv = ["--weights", str(weights), "--data", str(data), "--out", str(tmp_path / "ext"),
            "--lexicon", str(tmp_path / "lexicon.json")]
    assert main(argv) == 0

    lines = (tmp_path / "ext" / "external.md").read_text().split("\n\n")[0].splitlines()
    assert lines[-3].startswith("| **ensemble** |")
    assert lines[-2].startswith("| lexicon model (labelled outlines) |")
    with (tmp_path / "ext" / "cla_prob.csv").open() as handle:
        ensemble = {row["img_name"]: [float(row[c]) for c in "2345"] for row in csv.DictReader(handle)}
    ordered = sorted(samples, key=lambda s: int(s.path.stem))
    own = lexicon.predict_proba(np.stack([describe_file(s.path, s.mask) for s in ordered]))
    both = (np.array([ensemble[s.path.name] for s in ordered]) + own) / 2
    truth = np.array([[0, 1, 2, 2, 2, 3][s.label] for s in ordered])
    expected = figures(ordered, truth, both, ["2", "3", "4", "5"])
    assert lines[-1] == "| ensemble + lexicon model | " + " | ".join(
        "n/a" if expected[c] is None else f"{expected[c]:.3f}" for c in COLUMNS) + " |"

    assert main(["--weights", str(weights), "--data", str(phantom_small), "--out", str(tmp_path / "none"),
                 "--lexicon", str(tmp_path / "lexicon.json")]) == 2
    assert "without a labelled outline (masks/)" in capsys.readouterr().err


def test_tta_scores_each_image_as_the_mean_of_it_and_its_mirror_image(phantom_small: Path, tmp_path: Path) -> None:
    kwargs = {"num_classes": 4}
    weights = tmp_path / "cls.safetensors"
    save_checkpoint(weights, create_model("resnet10t", **kwargs),
                    CheckpointConfig("cla", "resnet10t", kwargs, ["2", "3", "4", "5"], Preprocess(32).to_dict()))
    images = sorted((phantom_small / "train" / "cla").glob("*/images/*.jpg"))
    mirrored = tmp_path / "mirrored"
    mirrored.mkdir()
    for index, image in enumerate(images):  # PNG: the mirror of the decoded pixels, without a second JPEG loss
        Image.open(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored / f"{index}.png")
    members = load_members([weights], torch.device("cpu"))
    plain = predict_folder(images, members, torch.device("cpu"), workers=0).probs
    mirror = predict_folder([mirrored / f"{i}.png" for i in range(len(images))], members, torch.device("cpu"),
                            workers=0).probs

    assert main(["--weights", str(weights), "--data", str(phantom_small), "--out", str(tmp_path / "tta"), "--tta"]) == 0

    with (tmp_path / "tta" / "cla_prob.csv").open() as handle:
        scored = {row["img_name"]: [float(row[c]) for c in "2345"] for row in csv.DictReader(handle)}
    assert len(images) > 0 and not np.allclose(plain, mirror, atol=1e-3)  # the model is not mirror-symmetric
    np.testing.assert_allclose([scored[image.name] for image in images], (plain + mirror) / 2, atol=1e-4)
