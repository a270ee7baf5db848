"""Windowing: equal to pydicom's apply_modality_lut / apply_voi_lut; torch equals numpy; MONOCHROME1."""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.pixels import apply_modality_lut as pd_modality
from pydicom.pixels import apply_voi_lut as pd_voi

from project.mammo import voi
from project.mammo.dicom import DicomReader, pydicom_reference, pydicom_testdata_paths
from project.mammo.phantom import synthetic_mammogram, write_dicom


def _windowed_files() -> list[tuple[str, np.ndarray, pydicom.Dataset]]:
    """Grey-scale test files with a window, a VOI LUT or a modality LUT (decoded once)."""
    out = []
    for path in pydicom_testdata_paths():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:
            continue
        tagged = any(k in header for k in ("WindowCenter", "VOILUTSequence", "ModalityLUTSequence"))
        if not tagged or "MONOCHROME" not in str(header.get("PhotometricInterpretation", "")):
            continue
        arr, ds = pydicom_reference(path)
        if arr is not None:
            out.append((path, arr, ds))
    return out


@pytest.fixture(scope="module")
def windowed() -> list[tuple[str, np.ndarray, pydicom.Dataset]]:
    files = _windowed_files()
    assert len(files) >= 10
    return files


def _n_views(ds: pydicom.Dataset) -> int:
    if ds.get("VOILUTSequence"):
        return len(ds.VOILUTSequence)
    if "WindowCenter" in ds:
        return ds["WindowCenter"].VM
    return 1


def test_modality_and_voi_equal_pydicom(windowed) -> None:  # type: ignore[no-untyped-def]
    checked = 0
    for path, arr, ds in windowed:
        params = voi.voi_params(ds)
        mine = voi.apply_modality_lut(arr, params)
        ref = pd_modality(arr, copy.deepcopy(ds))
        assert mine.dtype == ref.dtype, path
        np.testing.assert_array_equal(mine, ref, err_msg=path)
        for index in range(_n_views(ds)):
            ref_voi = pd_voi(ref, copy.deepcopy(ds), index=index)
            mine_voi = voi.apply_voi_lut(mine, params, index=index)
            np.testing.assert_allclose(mine_voi, ref_voi, rtol=0, atol=1e-9, err_msg=f"{path} [{index}]")
            checked += 1
    print(f"\n{checked} window / LUT views on {len(windowed)} files equal to pydicom")


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_voi_functions_equal_pydicom(windowed, function: str) -> None:  # type: ignore[no-untyped-def]
    for path, arr, ds in windowed:
        if "WindowCenter" not in ds:
            continue
        ds = copy.deepcopy(ds)
        ds.VOILUTFunction = function
        params = voi.voi_params(ds)
        assert params.voi_function == function
        modality = voi.apply_modality_lut(arr, params)
        ref = pd_voi(pd_modality(arr, ds), ds)
        np.testing.assert_allclose(voi.apply_voi_lut(modality, params), ref, rtol=1e-12, atol=1e-9, err_msg=path)


def test_window_override_and_errors() -> None:
    arr = np.arange(0, 4096, dtype=np.uint16).reshape(64, 64)
    params = voi.VOIParams(bits_stored=12, windows=((2048.0, 4096.0),))
    wide = voi.apply_voi_lut(arr, params)
    narrow = voi.apply_voi_lut(arr, params, window=(1000.0, 200.0))
    assert narrow.min() == 0 and narrow.max() == 4095
    assert not np.array_equal(wide, narrow)
    with pytest.raises(ValueError):
        voi.apply_voi_lut(arr, params, window=(10.0, 0.5))  # LINEAR needs width >= 1
    with pytest.raises(ValueError):
        voi.apply_voi_lut(arr, params, function="CUBIC")


def test_display_outputs_and_minmax_fallback() -> None:
    arr = np.array([[0, 100], [200, 400]], dtype=np.uint16)
    params = voi.VOIParams(bits_stored=12)  # no window: the image's min-max
    as_float = voi.to_display(arr, params)
    assert as_float.dtype == np.float32
    np.testing.assert_allclose(as_float, [[0, 0.25], [0.5, 1.0]])
    assert voi.to_display(arr, params, output="uint8").tolist() == [[0, 64], [128, 255]]
    assert voi.to_display(arr, params, output="uint16").dtype == np.uint16
    mono1 = voi.VOIParams(photometric="MONOCHROME1", bits_stored=12)
    np.testing.assert_allclose(voi.to_display(arr, mono1), 1.0 - as_float)


@pytest.mark.parametrize("output", ["float", "uint8", "uint16"])
def test_torch_equals_numpy(windowed, output: str) -> None:  # type: ignore[no-untyped-def]
    for path, arr, ds in windowed:
        if arr.ndim != 2:
            arr = arr[0]
        step = max(1, max(arr.shape) // 192)  # a subsample keeps the values and the time small
        arr = arr[::step, ::step].astype(arr.dtype.newbyteorder("="))  # torch wants native order
        params = voi.voi_params(ds)
        for function in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            want = voi.to_display(arr, params, output=output, function=function)
            tensor = torch.from_numpy(arr.astype(np.int32) if arr.dtype == np.uint16 else arr)
            got64 = voi.to_display_torch(tensor, params, output=output, function=function).numpy()
            np.testing.assert_array_equal(got64, want, err_msg=f"{os.path.basename(path)} {function}")
            got32 = voi.to_display_torch(
                tensor, params, output=output, function=function, compute_dtype=torch.float32
            ).numpy()
            tol = {"float": 1e-5, "uint8": 1, "uint16": 3}[output]
            diff = np.abs(got32.astype(np.float64) - want.astype(np.float64)).max()
            assert diff <= tol, f"{path} {function}: float32 differs by {diff}"


def test_torch_accepts_uint16_tensors() -> None:
    arr = (np.arange(64 * 64, dtype=np.uint32) * 16 % 65536).astype(np.uint16).reshape(64, 64)
    params = voi.VOIParams(bits_stored=16, windows=((30000.0, 40000.0),), photometric="MONOCHROME1")
    got = voi.to_display_torch(torch.from_numpy(arr), params, output="uint16")
    assert got.dtype == torch.uint16
    want = voi.to_display(arr, params, output="uint16")
    np.testing.assert_array_equal(got.view(torch.int16).numpy().view(np.uint16), want)


def test_monochrome1_comes_out_inverted(tmp_path: Path) -> None:
    """The same picture stored as MONOCHROME1 and MONOCHROME2 displays the same way round."""
    picture = synthetic_mammogram(np.random.default_rng(0), 96, 80, "L", "CC", cancer=False)
    top = (1 << 14) - 1
    mono2 = np.rint(100 + picture.image * 12000).astype(np.uint16)
    mono1 = (top - mono2).astype(np.uint16)
    kwargs = dict(
        bits_stored=14,
        transfer_syntax="1.2.840.10008.1.2.1",
        voi_function=None,
        patient_id="1",
        laterality="L",
        view="CC",
        age=60,
    )
    write_dicom(tmp_path / "m2.dcm", mono2, photometric="MONOCHROME2", window=(6100, 12100), image_id="2", **kwargs)
    write_dicom(
        tmp_path / "m1.dcm", mono1, photometric="MONOCHROME1", window=(top - 6100, 12100), image_id="1", **kwargs
    )
    r1, r2 = DicomReader("auto").read([tmp_path / "m1.dcm", tmp_path / "m2.dcm"])
    d1 = voi.to_display(r1.pixels, voi.voi_params(r1.dataset))
    d2 = voi.to_display(r2.pixels, voi.voi_params(r2.dataset))
    assert np.abs(d1 - d2).max() < 1e-3
    breast = picture.breast_mask
    assert d1[breast].mean() > 0.3 > d1[~breast].mean()  # tissue bright, air dark
    # without the inversion MONOCHROME1 would be the other way round
    raw = voi.to_display(r1.pixels, voi.voi_params(r1.dataset), invert=False)
    assert raw[breast].mean() < raw[~breast].mean()
