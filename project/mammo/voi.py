"""Intensity pipeline for DICOM grey-scale images: modality LUT, VOI LUT, MONOCHROME1 inversion.

The order is the one of DICOM PS3.3 C.11 (modality LUT -> VOI LUT -> presentation): stored
values go through the Modality LUT Sequence or Rescale Slope/Intercept, then through a VOI LUT
Sequence or a window (centre/width with the VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID).
The window formulas, the output range and the LUT clipping are the ones of
``pydicom.pixels.apply_modality_lut`` / ``apply_voi_lut``, so that :func:`apply_modality_lut`
and :func:`apply_voi_lut` here return the same values as pydicom's (tests compare them).

:func:`to_display` then scales the VOI output to [0, 1] using the output range of the
transform that was applied, inverts MONOCHROME1 and returns float32, uint8 or uint16.
:func:`to_display_torch` does the same on a torch tensor (CPU or GPU); it agrees with the
numpy version exactly in float64 and to float32 precision otherwise.

Everything the transforms need is taken from the header once into a small picklable
:class:`VOIParams`, so that worker processes and the GPU path need no pydicom dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from struct import unpack_from
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from pydicom.dataset import Dataset

OutputKind = Literal["float", "uint8", "uint16"]
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


@dataclass(frozen=True)
class LUT:
    """A Modality or VOI LUT: `data[clip(x - first_map, 0, len - 1)]`."""

    data: np.ndarray  # uint8 or uint16, one entry per input value
    first_map: int
    depth: int  # third value of the LUT Descriptor (nominal bits per entry)


@dataclass(frozen=True)
class VOIParams:
    """The header fields that the intensity pipeline uses."""

    photometric: str = "MONOCHROME2"
    bits_stored: int = 16
    pixel_representation: int = 0
    rescale_slope: float | None = None
    rescale_intercept: float | None = None
    modality_lut: LUT | None = None
    windows: tuple[tuple[float, float], ...] = ()  # (centre, width) pairs, in header order
    voi_function: str = "LINEAR"
    voi_luts: tuple[LUT, ...] = field(default=())

    @property
    def is_monochrome1(self) -> bool:
        return self.photometric == "MONOCHROME1"

    @property
    def has_rescale(self) -> bool:
        return self.rescale_slope is not None and self.rescale_intercept is not None

    def modality_range(self) -> tuple[float, float]:
        """Range of the modality LUT output, computed as pydicom's windowing does."""
        if self.modality_lut is not None:
            return 0.0, float(2**self.modality_lut.depth - 1)
        if self.pixel_representation == 0:
            y_min, y_max = 0.0, float(2**self.bits_stored - 1)
        else:
            y_min = float(-(2 ** (self.bits_stored - 1)))
            y_max = float(2 ** (self.bits_stored - 1) - 1)
        if self.has_rescale:
            y_min = y_min * self.rescale_slope + self.rescale_intercept  # type: ignore[operator]
            y_max = y_max * self.rescale_slope + self.rescale_intercept  # type: ignore[operator]
        return y_min, y_max


def _values(ds: Any, keyword: str) -> list[float]:
    if keyword not in ds or ds[keyword].value is None or ds[keyword].value == "":
        return []
    elem = ds[keyword]
    value = elem.value
    if elem.VM > 1:
        return [float(v) for v in value]
    return [float(value)]


def _read_lut(item: Any, ds: Any) -> LUT:
    from pydicom.valuerep import VR

    descriptor = [int(v) for v in item.LUTDescriptor]
    nr_entries = descriptor[0] or 2**16
    first_map = descriptor[1]
    depth = descriptor[2]
    elem = item["LUTData"]
    if elem.VR == VR.OW or isinstance(elem.value, bytes | bytearray):
        little = True
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "TransferSyntaxUID" in meta:
            little = meta.TransferSyntaxUID.is_little_endian
        elif getattr(ds, "original_encoding", None) is not None:
            little = ds.original_encoding[1] is not False
        values = unpack_from(f"{'><'[little]}{nr_entries}H", elem.value)
    else:
        values = elem.value if isinstance(elem.value, list | tuple) else [elem.value]
        values = list(values)
    dtype = np.uint8 if depth <= 8 else np.uint16
    return LUT(np.asarray(values, dtype=dtype), int(first_map), int(depth))


def voi_params(ds: Dataset) -> VOIParams:
    """Collect what the intensity pipeline needs from a pydicom dataset."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    slope = ds.get("RescaleSlope", None)
    intercept = ds.get("RescaleIntercept", None)
    modality_lut = None
    if ds.get("ModalityLUTSequence"):
        modality_lut = _read_lut(ds.ModalityLUTSequence[0], ds)
    centres = _values(ds, "WindowCenter")
    widths = _values(ds, "WindowWidth")
    windows = tuple(zip(centres, widths, strict=False)) if centres and widths else ()
    voi_luts: tuple[LUT, ...] = ()
    if ds.get("VOILUTSequence"):
        items = [
            item
            for item in ds.VOILUTSequence
            if item.get("LUTDescriptor", None) is not None and item.get("LUTData", None) is not None
        ]
        if len(items) == len(ds.VOILUTSequence):  # pydicom's rule: all or nothing
            voi_luts = tuple(_read_lut(item, ds) for item in items)
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    return VOIParams(
        photometric=photometric,
        bits_stored=int(ds.get("BitsStored", 16) or 16),
        pixel_representation=int(ds.get("PixelRepresentation", 0) or 0),
        rescale_slope=None if slope is None or intercept is None else float(slope),
        rescale_intercept=None if slope is None or intercept is None else float(intercept),
        modality_lut=modality_lut,
        windows=windows,
        voi_function=function,
        voi_luts=voi_luts,
    )


def _as_params(source: VOIParams | Any) -> VOIParams:
    return source if isinstance(source, VOIParams) else voi_params(source)


# --------------------------------------------------------------------------- numpy


def _apply_lut_np(arr: np.ndarray, lut: LUT) -> np.ndarray:
    index = arr.astype(np.int64) - lut.first_map
    np.clip(index, 0, len(lut.data) - 1, out=index)
    return lut.data[index]


def apply_modality_lut(arr: np.ndarray, source: VOIParams | Dataset) -> np.ndarray:
    """Modality LUT Sequence, else Rescale Slope/Intercept (float64), else `arr` unchanged."""
    params = _as_params(source)
    if params.modality_lut is not None:
        return _apply_lut_np(arr, params.modality_lut)
    if params.has_rescale:
        out = arr.astype(np.float64) * params.rescale_slope
        out += params.rescale_intercept
        return out
    return arr


def _namespace(x: Any) -> Any:
    """numpy for an ndarray, torch for a tensor: the window and the output scaling are written once for both."""
    if isinstance(x, np.ndarray):
        return np
    import torch

    return torch


def _window_geometry(center: float, width: float, function: str) -> tuple[float, float]:
    """Validated (centre, width) as the window formula uses them (LINEAR shifts both by a half / one)."""
    if function == "LINEAR":
        if width < 1:
            raise ValueError("Window Width must be >= 1 for a LINEAR windowing operation")
        return center - 0.5, width - 1
    if function in ("LINEAR_EXACT", "SIGMOID"):
        if width <= 0:
            raise ValueError(f"Window Width must be > 0 for a {function} windowing operation")
        return center, width
    raise ValueError(f"Unsupported VOI LUT Function {function!r}")


def _window(x: Any, center: float, width: float, function: str, y_min: float, y_max: float) -> Any:
    """The VOI window on a float ndarray or tensor, mapping into [y_min, y_max]."""
    xp = _namespace(x)
    center, width = _window_geometry(center, width, function)
    y_range = y_max - y_min
    if function == "SIGMOID":
        return y_range / (1 + xp.exp(-4 * (x - center) / width)) + y_min
    out = ((x - center) / width + 0.5) * y_range + y_min if width > 0 else x
    out = xp.where(x <= center - width / 2, y_min, out)
    return xp.where(x > center + width / 2, y_max, out)


def _to_unit(y: Any, lo: float, hi: float, invert: bool) -> Any:
    """VOI output scaled from its range [lo, hi] to [0, 1], inverted for MONOCHROME1."""
    unit = (y - lo) / (hi - lo) if hi > lo else _namespace(y).zeros_like(y)
    return 1.0 - unit if invert else unit


def _finish(unit: Any, output: OutputKind) -> Any:
    """[0, 1] values as float32, or rounded to the full range of uint8 / uint16."""
    xp = _namespace(unit)
    if output == "float":
        return _cast(unit, "float32")
    if output not in ("uint8", "uint16"):
        raise ValueError(f"output must be float, uint8 or uint16, not {output!r}")
    top = 255.0 if output == "uint8" else 65535.0
    return _cast(xp.round(xp.clip(unit, 0.0, 1.0) * top), output)


def _cast(x: Any, dtype: str) -> Any:
    if isinstance(x, np.ndarray):
        return x.astype(dtype)
    import torch

    if dtype == "uint16":  # torch casts float to uint16 only through a wider integer
        return x.to(torch.int32).to(torch.uint16)
    return x.to(getattr(torch, dtype))


@dataclass(frozen=True)
class _VOIChoice:
    kind: Literal["lut", "window", "none"]
    lut: LUT | None = None
    center: float = 0.0
    width: float = 0.0
    function: str = "LINEAR"


def _choose(
    params: VOIParams,
    index: int,
    prefer_lut: bool,
    window: tuple[float, float] | None,
    function: str | None,
) -> _VOIChoice:
    func = (function or params.voi_function or "LINEAR").upper()
    if window is not None:
        return _VOIChoice("window", center=float(window[0]), width=float(window[1]), function=func)
    has_lut = bool(params.voi_luts)
    has_window = bool(params.windows)
    if has_lut and (prefer_lut or not has_window):
        return _VOIChoice("lut", lut=params.voi_luts[min(index, len(params.voi_luts) - 1)])
    if has_window:
        if params.photometric not in ("MONOCHROME1", "MONOCHROME2"):
            return _VOIChoice("none")
        # pydicom: with a single value, that value is used whatever the index
        center, width = params.windows[index] if len(params.windows) > 1 else params.windows[0]
        return _VOIChoice("window", center=center, width=width, function=func)
    return _VOIChoice("none")


def apply_voi_lut(
    arr: np.ndarray,
    source: VOIParams | Dataset,
    index: int = 0,
    prefer_lut: bool = True,
    *,
    window: tuple[float, float] | None = None,
    function: str | None = None,
) -> np.ndarray:
    """VOI LUT Sequence or windowing, as ``pydicom.pixels.apply_voi_lut`` (same values).

    `window` = (centre, width) overrides the header's window; `function` overrides its VOI
    LUT Function. Without a VOI LUT and a window, `arr` is returned unchanged.
    """
    out, _ = _apply_voi_np(arr, _as_params(source), index, prefer_lut, window, function)
    return out


def _apply_voi_np(
    arr: np.ndarray,
    params: VOIParams,
    index: int,
    prefer_lut: bool,
    window: tuple[float, float] | None,
    function: str | None,
) -> tuple[np.ndarray, tuple[float, float] | None]:
    choice = _choose(params, index, prefer_lut, window, function)
    if choice.kind == "lut":
        assert choice.lut is not None
        data = choice.lut.data
        return _apply_lut_np(arr, choice.lut), (float(data.min()), float(data.max()))
    if choice.kind == "window":
        y_min, y_max = params.modality_range()
        out = _window(arr.astype(np.float64), choice.center, choice.width, choice.function, y_min, y_max)
        return out, (y_min, y_max)
    return arr, None


def to_display(
    arr: np.ndarray,
    source: VOIParams | Dataset,
    *,
    output: OutputKind = "float",
    index: int = 0,
    prefer_lut: bool = True,
    window: tuple[float, float] | None = None,
    function: str | None = None,
    invert: bool | None = None,
    modality: bool = True,
) -> np.ndarray:
    """Stored pixel values -> display values in [0, 1] (float32) or full-range uint8/uint16.

    Modality LUT (unless `modality=False`), then VOI (LUT sequence, window, or the image's own
    min-max when the header has neither), scaled by the output range of that VOI step, then
    inverted for MONOCHROME1 (or as `invert` says).
    """
    params = _as_params(source)
    x = apply_modality_lut(arr, params) if modality else arr
    y, out_range = _apply_voi_np(x, params, index, prefer_lut, window, function)
    y = y.astype(np.float64, copy=False)
    if out_range is None:
        lo = float(y.min()) if y.size else 0.0
        hi = float(y.max()) if y.size else 1.0
    else:
        lo, hi = out_range
    return _finish(_to_unit(y, lo, hi, params.is_monochrome1 if invert is None else invert), output)


# --------------------------------------------------------------------------- torch


def _lut_torch(x: torch.Tensor, lut: LUT) -> torch.Tensor:
    import torch

    table = torch.as_tensor(lut.data.astype(np.int32), device=x.device)
    index = (_int_tensor(x) - lut.first_map).clamp_(0, len(lut.data) - 1)
    return table[index]


def _int_tensor(x: torch.Tensor) -> torch.Tensor:
    """Integer tensor as int64; uint16 (thin torch support) goes through its bit pattern."""
    import torch

    if x.dtype == torch.uint16:
        return x.view(torch.int16).to(torch.int64) & 0xFFFF
    return x.to(torch.int64)


def _float_tensor(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    import torch

    if x.dtype == torch.uint16:
        return _int_tensor(x).to(dtype)
    return x.to(dtype)


def to_display_torch(
    x: torch.Tensor,
    source: VOIParams | Dataset,
    *,
    output: OutputKind = "float",
    index: int = 0,
    prefer_lut: bool = True,
    window: tuple[float, float] | None = None,
    function: str | None = None,
    invert: bool | None = None,
    modality: bool = True,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """:func:`to_display` on a torch tensor, on whatever device it lives (GPU included).

    `compute_dtype` defaults to float64 on CPU (equal to the numpy version) and float32 on a
    GPU (equal to float32 precision; uint8/uint16 outputs may differ by one step where a value
    falls on a rounding boundary).
    """
    import torch

    params = _as_params(source)
    if compute_dtype is None:
        compute_dtype = torch.float64 if x.device.type == "cpu" else torch.float32

    # modality LUT: integer output for a LUT sequence, float for a rescale
    if modality and params.modality_lut is not None:
        y_int: torch.Tensor | None = _lut_torch(x, params.modality_lut)
        y = y_int.to(compute_dtype)
    elif modality and params.has_rescale:
        y_int = None
        y = _float_tensor(x, compute_dtype) * params.rescale_slope + params.rescale_intercept
    else:
        y_int = None if x.is_floating_point() else _int_tensor(x)
        y = _float_tensor(x, compute_dtype)

    choice = _choose(params, index, prefer_lut, window, function)
    if choice.kind == "lut":
        assert choice.lut is not None
        # a float input is truncated to an index, as numpy's (and pydicom's) cast does
        y = _lut_torch(y_int if y_int is not None else y, choice.lut).to(compute_dtype)
        lo, hi = float(choice.lut.data.min()), float(choice.lut.data.max())
    elif choice.kind == "window":
        lo, hi = params.modality_range()
        y = _window(y, choice.center, choice.width, choice.function, lo, hi)
    else:
        lo = float(y.min()) if y.numel() else 0.0
        hi = float(y.max()) if y.numel() else 1.0
    return _finish(_to_unit(y, lo, hi, params.is_monochrome1 if invert is None else invert), output)
