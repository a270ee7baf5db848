"""DICOM reader: pixels equal pydicom's on every test file, DALI and fallback paths, phantom files."""

from __future__ import annotations

import collections
import csv
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

from project.mammo import dicom
from project.mammo.dicom import (
    DicomReader,
    DicomReadError,
    dali_status,
    pydicom_testdata_paths,
    read_dicom,
    read_dicom_display,
)
from project.mammo.phantom import encode_jpeg_lossless_sv1, generate, write_dicom
from project.mammo.survey import survey

DALI_OK, DALI_REASON = dali_status()
needs_dali = pytest.mark.skipif(not DALI_OK, reason=f"DALI does not import here: {DALI_REASON}")


def _testfile(name: str) -> str:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not installed (pydicom-data) and is not downloaded")
    return path


def _reference(path: str) -> np.ndarray:
    ref, _ = dicom.pydicom_reference(path)
    assert ref is not None
    return ref


def _assert_same(ref: np.ndarray, pixels: np.ndarray) -> None:
    assert pixels.shape == ref.shape
    assert pixels.dtype == ref.dtype
    assert np.array_equal(pixels, ref)


def test_every_testdata_file_equals_pydicom() -> None:
    """Every pydicom / pydicom-data file that pydicom decodes comes out equal to pixel_array."""
    paths = pydicom_testdata_paths()
    rows = survey(paths, DicomReader("auto", batch_size=4, num_threads=2, verify=False))
    by_backend = collections.Counter(row.backend for row in rows)
    print(f"\n{len(rows)} files decoded by pydicom (of {len(paths)} listed); by backend: {dict(by_backend)}")
    different = [(os.path.basename(r.path), r.backend, r.note) for r in rows if not r.equal]
    assert not different
    assert len(rows) >= 80, "pydicom's own test files alone hold more than 80 decodable images"
    if DALI_OK:
        assert by_backend["dali-cpu"] >= 3


@needs_dali
@pytest.mark.parametrize(
    ("name", "backend", "note"),
    [
        ("RG1_J2KR.dcm", "dali-cpu", ""),
        ("US1_J2KR.dcm", "dali-cpu", ""),
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", "dali-cpu", ""),
        ("emri_small_jpeg_2k_lossless.dcm", "dali-cpu", ""),  # 10 frames, one DALI sample each
        ("JPEG-LL.dcm", "pydicom", "signed"),
        ("bad_sequence.dcm", "pydicom", "above 8 bits"),  # 12-bit lossless JPEG
        ("JPEGLSNearLossless_16.dcm", "pydicom", "not given to DALI"),
        ("MR_small_RLE.dcm", "pydicom", "not given to DALI"),
    ],
)
def test_backend_taken(name: str, backend: str, note: str) -> None:
    path = _testfile(name)
    result = DicomReader("auto", device="cpu", verify=False).read_one(path)
    assert result.backend == backend, result.note
    assert note in result.note
    _assert_same(_reference(path), result.pixels)


@needs_dali
def test_dali_failures_and_mismatches_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give DALI everything: its failures and dtype mismatches must fall back, per file, in one batch."""
    names = [
        "MR2_J2KR.dcm",  # DALI decodes it
        "JPEG-LL.dcm",  # DALI fails (signed 16-bit lossless JPEG)
        "J2K_pixelrep_mismatch.dcm",  # DALI gives uint16, pixel_array is int16
        "bad_sequence.dcm",  # DALI CPU fails (12-bit lossless JPEG)
        "emri_small_jpeg_2k_lossless.dcm",  # multi-frame, DALI decodes it
    ]
    paths = [_testfile(n) for n in names]
    monkeypatch.setattr(dicom, "dali_ineligibility", lambda ds, device: None)
    results = DicomReader("dali", device="cpu", batch_size=8, num_threads=2, verify=False).read(paths)
    backends = {n: r.backend for n, r in zip(names, results, strict=True)}
    assert backends["MR2_J2KR.dcm"] == "dali-cpu"
    assert backends["emri_small_jpeg_2k_lossless.dcm"] == "dali-cpu"
    assert backends["JPEG-LL.dcm"] == "pydicom"
    assert "DALI failed" in results[1].note
    assert backends["J2K_pixelrep_mismatch.dcm"] == "pydicom"
    assert "int16" in results[2].note
    assert backends["bad_sequence.dcm"] == "pydicom"
    for path, result in zip(paths, results, strict=True):
        _assert_same(_reference(path), result.pixels)


@needs_dali
def test_verify_mode_replaces_wrong_dali_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    path = _testfile("MR2_J2KR.dcm")
    real = dicom._DaliDecoder.decode

    def corrupt(self, samples, dtype):  # type: ignore[no-untyped-def]
        outs = real(self, samples, dtype)
        return [o + 1 if isinstance(o, np.ndarray) else o for o in outs]

    monkeypatch.setattr(dicom._DaliDecoder, "decode", corrupt)
    result = DicomReader("dali", device="cpu", verify=True).read_one(path)
    assert result.backend == "pydicom"
    assert "differ" in result.note
    _assert_same(_reference(path), result.pixels)


@needs_dali
def test_first_file_of_each_kind_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """verify='first': a kind of file on which DALI disagrees once goes to pydicom from then on."""
    mr2, us1 = _testfile("MR2_J2KR.dcm"), _testfile("US1_J2KR.dcm")
    real = dicom._DaliDecoder.decode

    def corrupt_16bit(self, samples, dtype):  # type: ignore[no-untyped-def]
        outs = real(self, samples, dtype)
        return [o // 2 if isinstance(o, np.ndarray) and dtype == "uint16" else o for o in outs]

    monkeypatch.setattr(dicom._DaliDecoder, "decode", corrupt_16bit)
    reader = DicomReader("dali", device="cpu")
    first, colour = reader.read([mr2, us1])
    assert first.backend == "pydicom" and "differ" in first.note
    assert colour.backend == "dali-cpu"  # another kind, decoded right
    again = reader.read_one(mr2)
    assert again.backend == "pydicom" and "disabled" in again.note
    for path, result in ((mr2, first), (us1, colour), (mr2, again)):
        _assert_same(_reference(path), result.pixels)


@needs_dali
def test_values_beyond_bits_stored_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    path = _testfile("MR2_J2KR.dcm")  # 12 bits stored
    real = dicom._DaliDecoder.decode

    def rescale(self, samples, dtype):  # type: ignore[no-untyped-def]
        return [o * 16 if isinstance(o, np.ndarray) else o for o in real(self, samples, dtype)]

    monkeypatch.setattr(dicom._DaliDecoder, "decode", rescale)
    result = DicomReader("dali", device="cpu", verify=False).read_one(path)
    assert result.backend == "pydicom" and "bits stored" in result.note
    _assert_same(_reference(path), result.pixels)


def test_pydicom_backend_never_uses_dali() -> None:
    path = _testfile("MR2_J2KR.dcm")
    result = DicomReader("pydicom").read_one(path)
    assert result.backend == "pydicom"
    _assert_same(_reference(path), result.pixels)


def test_bad_files_are_reported_not_raised(tmp_path: Path) -> None:
    source = Path(_testfile("MR2_J2KR.dcm"))
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(source.read_bytes()[:-5000])
    not_dicom = tmp_path / "text.dcm"
    not_dicom.write_text("not a DICOM file")
    missing = tmp_path / "missing.dcm"
    results = DicomReader("auto").read([truncated, source, not_dicom, missing])
    assert [r.ok for r in results] == [False, True, False, False]
    assert all(r.error for r in (results[0], results[2], results[3]))
    with pytest.raises(DicomReadError):
        read_dicom(truncated)


def test_display_image() -> None:
    grey = read_dicom_display(_testfile("MR_small.dcm"))
    assert grey.dtype == np.uint8 and grey.ndim == 2 and grey.max() > grey.min()
    rgb = read_dicom_display(_testfile("SC_rgb.dcm"))
    assert rgb.dtype == np.uint8 and rgb.shape[-1] == 3
    palette = read_dicom_display(_testfile("OT-PAL-8-face.dcm"))
    assert palette.dtype == np.uint8 and palette.shape[-1] == 3
    multi = read_dicom_display(_testfile("emri_small.dcm"))
    assert multi.ndim == 2


@pytest.mark.parametrize("precision", [9, 12, 16])
def test_jpeg_lossless_encoder_round_trips(tmp_path: Path, precision: int) -> None:
    rng = np.random.default_rng(precision)
    top = (1 << precision) - 1
    image = rng.integers(0, top + 1, (37, 53)).astype(np.uint16)
    image[0, :4] = [0, top, 0, top]  # the largest jumps (category 16 at 16 bits)
    image[5:20, 5:30] = top // 3
    codestream = encode_jpeg_lossless_sv1(image, precision)
    path = tmp_path / "jll.dcm"
    write_dicom(
        path,
        image,
        bits_stored=precision,
        photometric="MONOCHROME2",
        transfer_syntax="1.2.840.10008.1.2.4.70",
        window=None,
        voi_function=None,
        patient_id="1",
        image_id="2",
        laterality="L",
        view="CC",
        age=50,
    )
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    assert np.array_equal(ds.pixel_array, image)
    assert codestream[:2] == b"\xff\xd8" and codestream[-2:] == b"\xff\xd9"


def test_phantom_files_decode_and_are_deterministic(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", n_patients=2, seed=3, size=(96, 80))
    b = generate(tmp_path / "b", n_patients=2, seed=3, size=(96, 80))
    assert a.read_text() == b.read_text()
    rows = list(csv.DictReader(open(a)))
    assert len(rows) == 8
    assert set(rows[0]) == {"site_id", "patient_id", "image_id", "laterality", "view", "age", "cancer"}
    paths = [a.parent / "train_images" / r["patient_id"] / f"{r['image_id']}.dcm" for r in rows]
    for path in paths:
        twin = tmp_path / "b" / path.relative_to(a.parent)
        assert path.read_bytes() == twin.read_bytes()
    results = DicomReader("auto").read(paths)
    syntaxes = set()
    photometrics = set()
    for path, result in zip(paths, results, strict=True):
        ds = pydicom.dcmread(path)
        syntaxes.add(str(ds.file_meta.TransferSyntaxUID))
        photometrics.add(ds.PhotometricInterpretation)
        assert 12 <= ds.BitsStored <= 16
        _assert_same(ds.pixel_array, result.pixels)
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}
    assert {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.5"} <= syntaxes
    assert len(syntaxes) >= 5
    if DALI_OK:
        assert {r.backend for r in results} == {"dali-cpu", "pydicom"}
