"""Lesion crops: the crop in preprocessing, boxes from a lesion map or a box file, run.py and the report with them."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from project.data.imageio import ImageReadError
from project.data.layout import labelled_box
from project.data.transforms import (
    Preprocess,
    Preprocessor,
    crop_box,
    jitter_box,
    lesion_bounds,
    uncrop_box,
)
from project.localise import (
    box_from_map,
    box_iou,
    lesion_probability_maps,
    locate_lesions,
    peak_region,
    read_box_file,
    write_box_file,
)
from project.models.checkpoint import CheckpointConfig, load_checkpoint
from project.models.factory import create_model
from project.predict import Member, load_members, predict_folder
from project.report import ReportError, build_report
from project.testb import main as run_py
from project.training import run as train


def test_the_box_bounds_the_region_joined_to_the_peak() -> None:
    probs = np.zeros((7, 7))
    probs[1:3, 2:5] = 0.9  # the lesion: rows 1-2, columns 2-4
    probs[1, 2] = 1.0  # the peak
    probs[3, 2] = 0.3  # joined to the lesion but under 0.4 of the peak
    probs[6, 6] = 0.8  # a bright cell not joined to the peak
    assert box_from_map(probs) == pytest.approx((3.5 / 7, 2 / 7, 3 / 7, 2 / 7))
    assert box_from_map(np.zeros((7, 7))) == (0.5, 0.5, 1.0, 1.0)
    single = np.zeros((7, 7))
    single[3, 3] = 0.9
    assert box_from_map(single) == pytest.approx((3.5 / 7, 3.5 / 7, 1 / 7, 1 / 7))


def test_box_iou() -> None:
    box = (0.5, 0.5, 0.4, 0.2)
    assert box_iou(box, box) == pytest.approx(1.0)
    assert box_iou(box, (0.5, 0.5, 0.2, 0.2)) == pytest.approx(0.5)
    assert box_iou(box, (0.1, 0.1, 0.1, 0.1)) == 0.0


def test_uncrop_undoes_crop() -> None:
    box, bounds, shape = (0.3, 0.6, 0.2, 0.1), (10, 90, 20, 100), (120, 140)
    assert uncrop_box(crop_box(box, bounds, shape), bounds, shape) == pytest.approx(box)


def test_lesion_bounds_grow_the_box_and_stay_inside_the_image() -> None:
    shape = (100, 200)  # height, width
    assert lesion_bounds((0.5, 0.5, 0.2, 0.4), shape, 2.0) == (10, 90, 60, 140)
    assert lesion_bounds((0.02, 0.5, 0.01, 0.01), shape, 2.0) == (26, 74, 0, 28)  # 48 px at least, clipped left


def test_a_box_file_round_trips_in_name_order(tmp_path: Path) -> None:
    boxes = {"b.png": (0.5, 0.25, 0.125, 1.0), "a.png": (0.1234567, 0.5, 0.3, 0.2)}
    write_box_file(tmp_path / "boxes.csv", boxes)
    assert (tmp_path / "boxes.csv").read_bytes() == (
        b"img_name,x_center,y_center,width,height\n"
        b"a.png,0.123457,0.500000,0.300000,0.200000\n"
        b"b.png,0.500000,0.250000,0.125000,1.000000\n")
    read = read_box_file(tmp_path / "boxes.csv")
    assert list(read) == ["a.png", "b.png"] and read["b.png"] == boxes["b.png"]
    assert read["a.png"] == pytest.approx(boxes["a.png"], abs=1e-6)
    with pytest.raises(ValueError, match="absent.csv: cannot read: No such file"):
        read_box_file(tmp_path / "absent.csv")


@pytest.mark.parametrize(("rows", "message"), [
    ("a.png,0.5,0.5,0.2,x", "row 2 \\(a.png\\): the box is not four numbers"),
    ("a.png,0.5,0.5,0,0.2", "row 2 \\(a.png\\): a box needs its centre in \\[0, 1\\] and its width"),
    ("a.png,1.5,0.5,0.2,0.2", "row 2 \\(a.png\\): a box needs its centre"),
    ("a.png,0.5,0.5,0.2,nan", "row 2 \\(a.png\\): a box needs"),
    ("a.png,0.5,0.5,0.2,0.2\na.png,0.4,0.5,0.2,0.2", "row 3: a.png has a second box"),
])
def test_a_bad_box_file_row_is_named(tmp_path: Path, rows: str, message: str) -> None:
    (tmp_path / "boxes.csv").write_text(f"img_name,x_center,y_center,width,height\n{rows}\n")
    with pytest.raises(ValueError, match=f"boxes.csv, {message}"):
        read_box_file(tmp_path / "boxes.csv")
    (tmp_path / "short.csv").write_text("img_name,x_center,y_center,width\na.png,0.5,0.5,0.2\n")
    with pytest.raises(ValueError, match="short.csv: missing column\\(s\\) \\['height'\\]"):
        read_box_file(tmp_path / "short.csv")


def _picture(path: Path) -> None:
    """120 x 100 speckle with a bright 30 x 20 lesion at columns 40..69, rows 30..49."""
    image = np.random.default_rng(0).integers(60, 120, (100, 120), dtype=np.uint8)
    image[30:50, 40:70] = 250
    Image.fromarray(image).save(path)


def test_a_lesion_crop_preprocesses_the_grown_box_and_needs_one(tmp_path: Path) -> None:
    _picture(tmp_path / "a.png")
    box = (55 / 120, 40 / 100, 30 / 120, 20 / 100)
    cropped, xyxy = Preprocessor(Preprocess(img_size=32, cut_black=None, lesion_crop=2.0))(tmp_path / "a.png", box)
    image = np.asarray(Image.open(tmp_path / "a.png"))
    Image.fromarray(image[16:64, 25:85]).save(tmp_path / "by_hand.png")  # 60 x 40 grown to 60 x 48
    expected, _ = Preprocessor(Preprocess(img_size=32, cut_black=None))(tmp_path / "by_hand.png")
    assert np.array_equal(cropped, expected)
    assert xyxy == pytest.approx((0.25, 14 / 48, 0.75, 34 / 48), abs=1e-6)
    with pytest.raises(ImageReadError, match="a.png: no lesion box"):
        Preprocessor(Preprocess(img_size=32, lesion_crop=2.0))(tmp_path / "a.png")
    assert Preprocess.from_dict(Preprocess(lesion_crop=1.5).to_dict()).lesion_crop == 1.5
    assert Preprocess.from_dict(Preprocess().to_dict()).lesion_crop is None


def _framed_localiser(tmp_path: Path) -> Member:
    """framed.png: a 120 x 100 file whose 80 x 80 field (columns 40..119, rows 20..99) CutBlack keeps, and a
    localiser whose map is sure of the field's top row's right half (x 80..120, y 20..40 of the file)."""
    image = np.zeros((100, 120), np.uint8)
    image[20:100, 40:120] = np.random.default_rng(0).integers(60, 120, (80, 80), dtype=np.uint8)  # black borders
    Image.fromarray(image).save(tmp_path / "framed.png")
    model = create_model("convnext_atto", num_classes=4, lesion_map=True).eval()
    cells = torch.full((1, 4, 4), -20.0)
    cells[0, 0, 2:4] = 20.0
    model.lesion_map = lambda x: cells.expand(len(x), -1, -1)
    return Member(model, CheckpointConfig("cla", "convnext_atto", {}, ["2", "3", "4", "5"], {}),
                  Preprocess(img_size=128), tmp_path / "localiser.safetensors")


def test_a_localiser_box_maps_back_through_cut_black_onto_the_file(tmp_path: Path) -> None:
    member = _framed_localiser(tmp_path)
    boxes, errors = locate_lesions([tmp_path / "framed.png", tmp_path / "missing.png"], member, torch.device("cpu"))
    assert boxes[1] is None and list(errors) == [1]
    # cells 2-3 of row 0 in the field (columns 40..119, rows 20..99): x 80..120, y 20..40 of the file
    cx, cy, w, h = boxes[0]
    assert (cx * 120, cy * 100) == pytest.approx((100, 30))
    assert (w * 120, h * 100) == pytest.approx((40, 20))


def test_the_lesion_map_is_laid_back_onto_the_file_pixel_by_pixel(tmp_path: Path) -> None:
    member = _framed_localiser(tmp_path)
    maps, errors = lesion_probability_maps([tmp_path / "framed.png", tmp_path / "missing.png"], member,
                                           torch.device("cpu"))
    assert maps[1] is None and list(errors) == [1]
    probs = maps[0]
    assert probs.shape == (100, 120) and probs[:20].max() == 0 and probs[:, :40].max() == 0
    assert probs[30, 100] > 0.99 and probs[70, 60] < 0.01
    rows, cols = np.nonzero(peak_region(probs))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == pytest.approx((20, 39, 80, 119), abs=2)
    assert not peak_region(np.zeros((5, 5))).any()


def test_the_map_is_read_at_the_input_resolution_so_a_box_edge_can_fall_inside_a_cell(tmp_path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(60, 120, (128, 128), dtype=np.uint8)).save(tmp_path / "a.png")
    model = create_model("convnext_atto", num_classes=4, lesion_map=True).eval()
    cells = torch.full((1, 4, 4), -20.0)
    cells[0, :, 1] = 20.0  # a sure lesion column of cells (x 32..64) ...
    cells[0, :, 2] = 0.0  # ... beside one at probability 0.5: above 0.4 of the peak at its centre only
    model.lesion_map = lambda x: cells.expand(len(x), -1, -1)
    member = Member(model, CheckpointConfig("cla", "convnext_atto", {}, ["2", "3", "4", "5"], {}),
                    Preprocess(img_size=128), tmp_path / "localiser.safetensors")
    (cx, _, w, _), = locate_lesions([tmp_path / "a.png"], member, torch.device("cpu"))[0]
    # Read cell by cell the box would span x 32..96; bilinearly, the 0.4 share is crossed just past
    # the half-cell's centre (x 80), and near the cell edge (x 32) on the sure side.
    assert ((cx - w / 2) * 128, (cx + w / 2) * 128) == pytest.approx((32, 81), abs=1)


def test_only_a_lesion_map_model_locates(tmp_path: Path) -> None:
    member = Member(create_model("convnext_atto", num_classes=4).eval(),
                    CheckpointConfig("cla", "convnext_atto", {}, ["2", "3", "4", "5"], {}),
                    Preprocess(img_size=64), tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="plain.safetensors: not a localiser"):
        locate_lesions([], member, torch.device("cpu"))
    letterboxed = Member(create_model("convnext_atto", num_classes=4, lesion_map=True).eval(), member.config,
                         Preprocess(img_size=64, keep_aspect=True), tmp_path / "letterboxed.safetensors")
    with pytest.raises(ValueError, match="letterboxed.safetensors: a localiser must see the whole image stretched"):
        locate_lesions([], letterboxed, torch.device("cpu"))


@pytest.fixture(scope="module")
def crop_runs(phantom_small: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One epoch each on the phantoms: a localiser (--lesion-map) and a classifier of lesion crops."""
    out = tmp_path_factory.mktemp("crop_runs")
    common = ["--data", str(phantom_small), "--model", "convnext_atto", "--img-size", "64", "--epochs", "1",
              "--batch-size", "16", "--workers", "0", "--folds", "2", "--fold", "0", "--seed", "0"]
    train([*common, "--out", str(out / "localiser" / "fold0"), "--lesion-map", "1"], "cla")
    train([*common, "--out", str(out / "crops" / "fold0"), "--lesion-crop", "2"], "cla")
    return {"localiser": out / "localiser" / "fold0", "crops": out / "crops" / "fold0"}


def test_the_crop_checkpoint_says_it_crops_and_predicts_from_boxes(crop_runs: dict[str, Path]) -> None:
    _, config = load_checkpoint(crop_runs["crops"] / "best.safetensors")
    assert config.preprocess["lesion_crop"] == 2.0
    members = load_members([crop_runs["crops"] / "best.safetensors"], torch.device("cpu"))
    with pytest.raises(ValueError, match="trained on lesion crops.*give a localiser"):
        predict_folder([], members, torch.device("cpu"))


def test_run_py_crops_where_the_localiser_finds_the_lesion(
    crop_runs: dict[str, Path], phantom_small: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    crops, localiser = crop_runs["crops"] / "best.safetensors", crop_runs["localiser"] / "best.safetensors"
    shutil.copytree(phantom_small / "testB" / "cla", tmp_path / "testB" / "cla")
    base = ["--data", str(tmp_path / "testB"), "--cls-weights", str(crops), "--workers", "0"]
    (tmp_path / "without").mkdir()
    assert run_py([*base, "--out-dir", str(tmp_path / "without")]) == 2
    assert "trained on lesion crops" in capsys.readouterr().err
    (tmp_path / "with").mkdir()
    assert run_py([*base, "--localiser", str(localiser), "--out-dir", str(tmp_path / "with")]) == 0
    rows = (tmp_path / "with" / "cla_pre.csv").read_text().splitlines()
    images = list((tmp_path / "testB" / "cla").iterdir())
    assert rows[0] == "img_name,label" and len(rows) == 1 + len(images)
    (tmp_path / "not_a_localiser").mkdir()
    assert run_py([*base, "--localiser", str(crops), "--out-dir", str(tmp_path / "not_a_localiser")]) == 2
    assert "not a localiser" in capsys.readouterr().err


def test_the_report_crops_to_label_boxes_or_to_the_localiser_and_scores_it(
    crop_runs: dict[str, Path], tmp_path: Path
) -> None:
    labelled = build_report(crop_runs["crops"], tmp_path / "labels", label_boxes=True, cam_cases=1)
    assert labelled["lesion_boxes"] == "labels" and labelled["localisation"] is None
    located = build_report(crop_runs["crops"], tmp_path / "located", localiser_from=crop_runs["localiser"].parent,
                           cam_cases=1)
    figures = located["localisation"]
    assert figures["images"] == labelled["cla"]["n"] == located["cla"]["n"]
    assert 0.0 <= figures["iou_at_least_0_5"] <= 1.0 and 0.0 < figures["mean_iou"] <= 1.0
    assert located["lesion_boxes"].endswith("localiser/fold0/best.safetensors")
    assert "IoU with the labelled boxes" in (tmp_path / "located" / "index.html").read_text(encoding="utf-8")
    assert "cropped to the labelled lesion boxes" in (tmp_path / "labels" / "index.html").read_text(encoding="utf-8")


def test_run_py_crops_to_the_box_file_and_lists_an_image_without_a_box(
    crop_runs: dict[str, Path], phantom_small: Path, tmp_path: Path
) -> None:
    shutil.copytree(phantom_small / "testB" / "cla", tmp_path / "testB" / "cla")
    images = sorted(path.name for path in (tmp_path / "testB" / "cla").iterdir())
    base = ["--data", str(tmp_path / "testB"), "--cls-weights", str(crop_runs["crops"] / "best.safetensors"),
            "--workers", "0", "--probabilities"]
    probabilities = {}
    for name, box in (("left", (0.3, 0.5, 0.3, 0.4)), ("right", (0.7, 0.5, 0.3, 0.4))):
        write_box_file(tmp_path / f"{name}.csv", {image: box for image in images[1:]})
        (tmp_path / name).mkdir()
        assert run_py([*base, "--boxes", str(tmp_path / f"{name}.csv"), "--out-dir", str(tmp_path / name)]) == 0
        with (tmp_path / name / "cla_prob.csv").open() as handle:
            probabilities[name] = {row["img_name"]: row for row in csv.DictReader(handle)}
        assert sorted(probabilities[name]) == images[1:]
        errors = (tmp_path / name / "run_errors.csv").read_text()
        assert images[0] in errors and "no lesion box" in errors
    assert probabilities["left"] != probabilities["right"]  # the crops follow the boxes


def test_the_report_crops_to_a_box_file_as_to_the_boxes_it_holds(crop_runs: dict[str, Path], tmp_path: Path) -> None:
    labelled = build_report(crop_runs["crops"], tmp_path / "labels", label_boxes=True, cam_cases=0)
    with (crop_runs["crops"] / "val.csv").open() as handle:
        files = [row["file"] for row in csv.DictReader(handle)]
    boxes = {Path(file).name: labelled_box(Path(labelled["data"]) / file) for file in files}
    write_box_file(tmp_path / "boxes.csv", boxes)
    from_file = build_report(crop_runs["crops"], tmp_path / "file", box_files=[tmp_path / "boxes.csv"], cam_cases=0)
    predictions = [(tmp_path / name / "predictions.csv").read_bytes() for name in ("file", "labels")]
    assert predictions[0] == predictions[1]
    assert from_file["localisation"]["mean_iou"] == pytest.approx(1.0, abs=1e-4)
    assert from_file["lesion_boxes"] == str(tmp_path / "boxes.csv")
    del boxes[sorted(boxes)[0]]
    write_box_file(tmp_path / "fewer.csv", boxes)
    with pytest.raises(ReportError, match="fewer.csv: no box for 1 validation image"):
        build_report(crop_runs["crops"], tmp_path / "fewer", box_files=[tmp_path / "fewer.csv"], cam_cases=0)


def test_jittered_boxes_stay_within_their_bounds_and_vary() -> None:
    rng = np.random.default_rng(0)
    box = (0.5, 0.4, 0.2, 0.1)
    boxes = np.array([jitter_box(box, rng, 0.6) for _ in range(2000)])
    assert (boxes[:, 2] / 0.2).min() >= 1 / 1.6 - 1e-9 and (boxes[:, 2] / 0.2).max() <= 1.6 + 1e-9
    assert np.abs(boxes[:, 0] - 0.5).max() <= 0.15 * 0.2 + 1e-9 and np.abs(boxes[:, 1] - 0.4).max() <= 0.015 + 1e-9
    assert np.median(np.log(boxes[:, 3] / 0.1)) == pytest.approx(0, abs=0.05)  # as often smaller as larger
    assert len({tuple(b) for b in boxes}) == len(boxes)
    assert jitter_box(box, rng, 0.0) == pytest.approx(box)


def test_a_jittered_lesion_crop_dataset_is_not_cached_and_crops_anew(phantom_small: Path) -> None:
    from project.data.datasets import LesionDataset
    from project.data.layout import scan_classification
    from project.tasks import create_task

    samples = scan_classification(phantom_small / "train").samples[:4]
    task = create_task("cla", ["2", "3", "4A", "4B", "4C", "5"])
    steady = LesionDataset(samples, Preprocess(img_size=32, lesion_crop=2.0), task)
    jittered = LesionDataset(samples, Preprocess(img_size=32, lesion_crop=2.0), task, box_jitter=0.5)
    assert steady.cacheable and not jittered.cacheable
    assert np.array_equal(steady.preprocessed(0)[0], steady.preprocessed(0)[0])
    assert not np.array_equal(jittered.preprocessed(0)[0], jittered.preprocessed(0)[0])
    assert LesionDataset(samples, Preprocess(img_size=32), task, box_jitter=0.5).cacheable  # no crop, no jitter


def test_jitter_needs_a_lesion_crop(phantom_small: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--lesion-crop-jitter needs --lesion-crop"):
        train(["--data", str(phantom_small), "--out", str(tmp_path / "run"), "--model", "convnext_atto",
               "--lesion-crop-jitter", "0.5"], "cla")
