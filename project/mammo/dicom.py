"""DICOM reading: header through pydicom, pixels through NVIDIA DALI where it is exact, else pydicom.

The encoded bytes of each frame come from ``pydicom.encaps.generate_frames`` (the Basic or
Extended Offset Table, or one frame per fragment run; never a search for JPEG markers). DALI
decodes them in batches with a thread pool: ``fn.decoders.image`` with
``output_type=types.ANY_DATA`` and ``dtype`` UINT8 or UINT16 as the header's Bits Allocated
says (DALI rescales to the requested type's range, so an 8-bit image must not be asked for
as UINT16), on ``device="mixed"`` (nvJPEG2000 / nvJPEG on the GPU) when torch sees a GPU, or
``device="cpu"`` in a pipeline with ``device_id=None`` otherwise.

DALI is only asked for what it is known to decode exactly like pydicom: JPEG 2000 (.90, .91)
and lossless JPEG (.57, .70) with unsigned samples, one sample per pixel (or RGB / YBR_RCT /
YBR_ICT JPEG 2000 colour), 8 or 16 bits allocated; on the CPU lossless JPEG only up to
8 bits (DALI's CPU decoder fails above). Anything else, any DALI failure, and any output
whose shape or dtype is not the one the header implies, is decoded by pydicom
(``Dataset.pixel_array`` with pylibjpeg / openjpeg / libjpeg / RLE plugins), so the pixels
always equal pydicom's ``pixel_array``. Each :class:`DicomResult` says which backend
decoded it (``dali-cpu``, ``dali-mixed`` or ``pydicom``) and why DALI was not used.

The reference corpus is pydicom's own test files and the installed pydicom-data package
(:func:`pydicom_testdata_paths`); ``python -m project.mammo.survey`` decodes all of it and
compares with pydicom.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from pydicom.dataset import Dataset

BACKENDS = ("auto", "dali", "pydicom")

JPEG2000_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})
JPEG_LOSSLESS_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"})
DALI_SYNTAXES = JPEG2000_SYNTAXES | JPEG_LOSSLESS_SYNTAXES


class DicomReadError(RuntimeError):
    """A file that could not be read or decoded by any backend."""


# --------------------------------------------------------------------------- DALI import

_DALI_LOCK = threading.Lock()
_DALI_STATE: dict[str, Any] = {}


def dali_status() -> tuple[bool, str]:
    """(available, reason): whether ``nvidia.dali`` imports here, and the error if not."""
    with _DALI_LOCK:
        if "ok" not in _DALI_STATE:
            # DALI's CPU JPEG 2000 path goes through OpenCV, which warns on every DICOM
            # codestream ("unknown color space"); keep those out of the logs.
            os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    import nvidia.dali  # noqa: F401
                    import nvidia.dali.fn  # noqa: F401
                    import nvidia.dali.types  # noqa: F401
                _DALI_STATE.update(ok=True, reason=f"nvidia-dali {nvidia.dali.__version__}")
            except Exception as exc:  # ImportError, missing CUDA libraries, ...
                _DALI_STATE.update(ok=False, reason=f"{type(exc).__name__}: {exc}")
        return bool(_DALI_STATE["ok"]), str(_DALI_STATE["reason"])


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def require_dali(backend: str) -> None:
    """Raise DicomReadError when `backend` is ``dali`` and DALI does not import."""
    ok, reason = dali_status()
    if backend == "dali" and not ok:
        raise DicomReadError(f"backend 'dali' requested but DALI does not import: {reason}")


def decodes_on_gpu(backend: str, cuda: bool) -> bool:
    """Whether `backend` decodes with DALI on the GPU (`mixed`), which only the process owning the GPU can drive.

    Otherwise decoding is on the CPU, where pydicom's decoders hold Python's global interpreter lock:
    callers then decode in worker processes rather than threads.
    """
    return cuda and backend != "pydicom" and dali_status()[0]


class _DaliDecoder:
    """Batched DALI image decoding of encoded frames; one pipeline per output dtype.

    A pipeline that raised is no longer valid (DALI says so), so it is dropped and rebuilt;
    a batch that failed is retried one sample at a time so that only the bad samples fail.
    Building a pipeline takes milliseconds.
    """

    def __init__(self, device: str, num_threads: int, batch_size: int) -> None:
        if device not in ("cpu", "mixed"):
            raise ValueError(f"DALI device must be cpu or mixed, not {device!r}")
        self.device = device
        self.num_threads = max(1, int(num_threads))
        self.batch_size = max(1, int(batch_size))
        self._pipes: dict[str, Any] = {}
        self.device_id: int | None = None
        if device == "mixed":
            import torch

            self.device_id = torch.cuda.current_device()

    def _pipe(self, dtype: str) -> Any:
        pipe = self._pipes.get(dtype)
        if pipe is None:
            from nvidia.dali import fn, pipeline_def, types

            out_type = types.UINT8 if dtype == "uint8" else types.UINT16
            device = self.device

            @pipeline_def(
                batch_size=self.batch_size,
                num_threads=self.num_threads,
                device_id=self.device_id,
                prefetch_queue_depth=1,
            )
            def decode_pipeline():  # type: ignore[no-untyped-def]
                encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
                return fn.decoders.image(encoded, device=device, output_type=types.ANY_DATA, dtype=out_type)

            pipe = decode_pipeline()
            pipe.build()
            self._pipes[dtype] = pipe
        return pipe

    def _run(self, chunk: list[np.ndarray], dtype: str) -> list[Any]:
        pipe = self._pipe(dtype)
        pipe.feed_input("encoded", chunk)
        (images,) = pipe.run()
        if self.device == "cpu":
            # copy out: DALI reuses its buffers on the next run
            return [np.array(images[i]) for i in range(len(chunk))]
        return [_gpu_tensor_to_torch(images[i]) for i in range(len(chunk))]

    def decode(self, samples: Sequence[np.ndarray], dtype: str) -> list[Any]:
        """One decoded image (HWC numpy array, or torch CUDA tensor) or an exception per sample."""
        results: list[Any] = []
        for start in range(0, len(samples), self.batch_size):
            chunk = list(samples[start : start + self.batch_size])
            try:
                results.extend(self._run(chunk, dtype))
                continue
            except Exception as exc:
                self._pipes.pop(dtype, None)
                if len(chunk) == 1:
                    results.append(exc)
                    continue
            for sample in chunk:
                try:
                    results.extend(self._run([sample], dtype))
                except Exception as exc:
                    self._pipes.pop(dtype, None)
                    results.append(exc)
        return results


def _gpu_tensor_to_torch(tensor: Any) -> torch.Tensor:
    """Copy one DALI TensorGPU into a new torch CUDA tensor on torch's current stream."""
    import ctypes

    import torch
    from nvidia.dali import types

    dtypes = {types.UINT8: torch.uint8, types.UINT16: torch.uint16}
    out = torch.empty(tuple(tensor.shape()), dtype=dtypes[tensor.dtype], device="cuda")
    stream = torch.cuda.current_stream()
    tensor.copy_to_external(ctypes.c_void_p(out.data_ptr()), types._raw_cuda_stream_ptr(stream), non_blocking=True)
    return out


# --------------------------------------------------------------------------- results


@dataclass
class DicomResult:
    """One file: its pixels as pydicom's ``pixel_array`` would give them, and how they came."""

    path: str
    pixels: Any = None  # np.ndarray, or a torch CUDA tensor from dali-mixed with keep_on_gpu
    backend: str | None = None  # "dali-cpu", "dali-mixed" or "pydicom"
    dataset: Any = None  # the header (pydicom Dataset, pixel data dropped)
    error: str | None = None
    note: str = ""  # why DALI was not used for this file, when it was not

    @property
    def ok(self) -> bool:
        return self.error is None and self.pixels is not None

    def numpy(self) -> np.ndarray:
        """Pixels as a numpy array (copied from the GPU when needed)."""
        if self.pixels is None:
            raise DicomReadError(f"{self.path}: {self.error}")
        if isinstance(self.pixels, np.ndarray):
            return self.pixels
        tensor = self.pixels.detach().cpu()
        import torch

        if tensor.dtype == torch.uint16:
            return tensor.view(torch.int16).numpy().view(np.uint16)
        return tensor.numpy()


@dataclass
class _Loaded:
    index: int
    path: str
    ds: Any = None
    frames: list[bytes] = field(default_factory=list)
    dali_reason: str | None = "not tried"
    error: str | None = None


def expected_shape(ds: Dataset) -> tuple[int, ...]:
    """The shape of pydicom's ``pixel_array`` for this header."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    shape: tuple[int, ...] = (rows, cols) if spp == 1 else (rows, cols, spp)
    return (frames, *shape) if frames > 1 else shape


def expected_dtype(ds: Dataset) -> str:
    """The dtype name of pydicom's ``pixel_array`` for integer pixel data of this header."""
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    bits = int(ds.get("BitsAllocated", 16) or 16)
    bits = 8 if bits <= 8 else 16 if bits <= 16 else 32 if bits <= 32 else 64
    return f"{'int' if signed else 'uint'}{bits}"


def _dali_dtype(ds: Dataset) -> str:
    return "uint8" if int(ds.get("BitsAllocated", 16) or 16) <= 8 else "uint16"


def dali_ineligibility(ds: Dataset, device: str) -> str | None:
    """Why DALI should not decode this dataset on `device` ("cpu" or "mixed"); None if it may."""
    meta = getattr(ds, "file_meta", None)
    tsyntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if tsyntax is None:
        return "no transfer syntax"
    if str(tsyntax) not in DALI_SYNTAXES:
        return f"transfer syntax {tsyntax.name} is not given to DALI"
    if "PixelData" not in ds:
        return "no Pixel Data"
    if int(ds.get("PixelRepresentation", 0) or 0) != 0:
        return "signed pixel data"
    bits_allocated = int(ds.get("BitsAllocated", 0) or 0)
    if bits_allocated not in (8, 16):
        return f"{bits_allocated} bits allocated"
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if spp == 3:
        colour_ok = (str(tsyntax) in JPEG2000_SYNTAXES and photometric in ("RGB", "YBR_RCT", "YBR_ICT")) or (
            str(tsyntax) in JPEG_LOSSLESS_SYNTAXES and photometric == "RGB"
        )
        if not colour_ok:
            return f"{spp} samples per pixel in {photometric}"
    elif spp != 1:
        return f"{spp} samples per pixel"
    if device == "cpu" and str(tsyntax) in JPEG_LOSSLESS_SYNTAXES and bits_allocated > 8:
        return "lossless JPEG above 8 bits (DALI's CPU decoder fails on it)"
    return None


def dcmread_tolerant(path: str | os.PathLike) -> Dataset:
    """``pydicom.dcmread``; a file without the preamble / File Meta is read with ``force=True``,
    and one that names no Transfer Syntax is given the encoding pydicom detected reading it."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            ds = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = getattr(ds, "original_encoding", (True, True))
        if implicit is None:
            raise InvalidDicomError(f"{path}: neither DICOM nor a bare dataset")
        if implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        else:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    return ds


def encoded_frames(ds: Dataset) -> list[bytes]:
    """Each frame's encoded bytes, through pydicom's encapsulation parser."""
    from pydicom.encaps import generate_frames

    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    frames = list(generate_frames(ds.PixelData, number_of_frames=n_frames, extended_offsets=extended))
    if len(frames) != n_frames:
        raise ValueError(f"{len(frames)} encoded frames for Number of Frames {n_frames}")
    return frames


def _short_error(exc: BaseException) -> str:
    text = str(exc).strip()
    if "encountered:" in text:  # DALI's long pipeline trace: keep the reason
        text = text.split("encountered:", 1)[1].strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(exc).__name__}: {line}"[:300]


# --------------------------------------------------------------------------- reader


class DicomReader:
    """Decode DICOM files in batches, with DALI where it is exact and pydicom elsewhere.

    backend: ``auto`` uses DALI when it imports and pydicom otherwise; ``dali`` requires DALI
    (raises if it does not import; unsupported files still fall back to pydicom per file);
    ``pydicom`` never uses DALI. device: ``cpu`` or ``mixed`` for DALI, default mixed when
    torch sees a GPU. keep_on_gpu: return dali-mixed pixels as torch CUDA tensors (for GPU
    windowing) instead of numpy.

    verify: ``"first"`` (default) decodes the first DALI-decoded file of each kind (transfer
    syntax, bits allocated and stored, samples per pixel, photometric interpretation) with
    pydicom as well; if they differ, that file gets pydicom's pixels and DALI is not used for
    that kind again by this reader. ``True`` checks every file (slow: for surveys and
    debugging), ``False`` none. Independently of it, DALI output whose shape or dtype is not
    the header's, or whose values exceed Bits Stored, is replaced by pydicom's.
    """

    def __init__(
        self,
        backend: str = "auto",
        *,
        device: str | None = None,
        batch_size: int = 8,
        num_threads: int | None = None,
        keep_on_gpu: bool = False,
        verify: bool | str = "first",
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        self.backend = backend
        self.batch_size = max(1, int(batch_size))
        self.num_threads = max(1, int(num_threads or min(4, os.cpu_count() or 1)))
        self.keep_on_gpu = keep_on_gpu
        if verify not in (True, False, "first"):
            raise ValueError(f"verify must be True, False or 'first', not {verify!r}")
        self.verify = verify
        self._kinds: dict[tuple[object, ...], bool] = {}  # kind -> DALI agreed with pydicom
        self.dali_reason = "backend pydicom"
        self._dali: _DaliDecoder | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._dali_lock = threading.Lock()  # DALI pipelines are not for concurrent use
        if backend != "pydicom":
            ok, reason = dali_status()
            require_dali(backend)
            if ok:
                dev = device or ("mixed" if cuda_available() else "cpu")
                self._dali = _DaliDecoder(dev, self.num_threads, self.batch_size)
            self.dali_reason = reason if not ok else ""

    @classmethod
    def for_worker(cls, backend: str, batch_size: int) -> DicomReader:
        """A reader for one worker process of a pool: decoding on the CPU, one thread (the pool is the parallelism)."""
        return cls(backend, device="cpu", batch_size=batch_size, num_threads=1)

    @property
    def dali_device(self) -> str | None:
        return self._dali.device if self._dali is not None else None

    def _map(self, fn: Any, *iterables: Iterable[Any]) -> list[Any]:
        """map over a persistent thread pool (plain map with one thread or one item)."""
        items = [list(it) for it in iterables]
        if self.num_threads == 1 or len(items[0]) <= 1:
            return list(map(fn, *items))
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="dicom")
        return list(self._pool.map(fn, *items))

    def close(self) -> None:
        """Stop the reader's thread pool (DALI pipelines go with the object)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> DicomReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- loading

    def _load(self, index: int, path: str) -> _Loaded:
        item = _Loaded(index, path)
        try:
            ds = dcmread_tolerant(path)
            item.ds = ds
            if "PixelData" not in ds:
                item.error = "no Pixel Data element"
                return item
        except Exception as exc:
            item.error = _short_error(exc)
            return item
        if self._dali is None:
            item.dali_reason = self.dali_reason or "DALI not available"
            return item
        reason = dali_ineligibility(ds, self._dali.device)
        if reason is None and self._kinds.get(_kind(ds)) is False:
            reason = "DALI disabled for this kind of file: it differed from pydicom on an earlier one"
        if reason is None:
            try:
                item.frames = encoded_frames(ds)
            except Exception as exc:
                reason = f"encapsulation: {_short_error(exc)}"
        item.dali_reason = reason
        return item

    # ---- decoding

    def _pydicom_pixels(self, item: _Loaded) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return item.ds.pixel_array

    def _assemble(self, item: _Loaded, outputs: list[Any]) -> tuple[Any, str | None]:
        """Stack DALI's per-frame HWC outputs into pixel_array's shape; (pixels, problem)."""
        for out in outputs:
            if isinstance(out, BaseException):
                return None, f"DALI failed: {_short_error(out)}"
        ds = item.ds
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        want_dtype = expected_dtype(ds)
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = []
        for out in outputs:
            shape = tuple(out.shape)
            if shape != (rows, cols, spp):
                return None, f"DALI gave shape {shape}, header says {(rows, cols, spp)}"
            if str(out.dtype).replace("torch.", "") != want_dtype:
                return None, f"DALI gave {out.dtype}, header implies {want_dtype}"
            frames.append(out[..., 0] if spp == 1 else out)
        if len(frames) == 1:
            pixels = frames[0]
        elif isinstance(frames[0], np.ndarray):
            pixels = np.stack(frames)
        else:
            import torch

            pixels = torch.stack(frames)
        if isinstance(pixels, np.ndarray):
            pixels = np.ascontiguousarray(pixels)
            peak = int(pixels.max()) if pixels.size else 0
        else:
            pixels = pixels.contiguous()
            peak = int(_torch_peak(pixels)) if pixels.numel() else 0
        bits_stored = int(ds.get("BitsStored", 0) or 0)
        container_bits = 8 * (pixels.itemsize if isinstance(pixels, np.ndarray) else pixels.element_size())
        if 0 < bits_stored < container_bits and peak >= 1 << bits_stored:
            # e.g. a decoder that rescaled to the container's range; pydicom decides
            return None, f"DALI values reach {peak}, above {bits_stored} bits stored"
        return pixels, None

    def read(self, paths: Iterable[str | os.PathLike]) -> list[DicomResult]:
        """Decode `paths`; one result per path, in order. Never raises for a bad file."""
        path_list = [os.fspath(p) for p in paths]
        if not path_list:
            return []
        loaded: list[_Loaded] = self._map(self._load, range(len(path_list)), path_list)
        results = [DicomResult(path=item.path, dataset=item.ds) for item in loaded]
        fallback: list[_Loaded] = []
        dali_items: list[_Loaded] = []
        for item in loaded:
            if item.error is not None:
                results[item.index].error = item.error
            elif item.dali_reason is not None:
                results[item.index].note = item.dali_reason
                fallback.append(item)
            else:
                dali_items.append(item)
        if dali_items and self._dali is not None:
            with self._dali_lock:
                fallback.extend(self._decode_dali(dali_items, results))
        if self.verify:
            checks = [it for it in dali_items if results[it.index].backend is not None]
            if self.verify == "first":
                first: dict[tuple[object, ...], _Loaded] = {}
                for it in checks:
                    if _kind(it.ds) not in self._kinds:
                        first.setdefault(_kind(it.ds), it)
                checks = list(first.values())
            refs = self._map(self._verify_one, checks, [results[it.index].pixels for it in checks])
            for it, ref in zip(checks, refs, strict=True):
                self._kinds[_kind(it.ds)] = ref is None
                if ref is not None:
                    results[it.index].note = "DALI pixels differ from pydicom's"
                    results[it.index].pixels = ref
                    results[it.index].backend = "pydicom"

        def decode_fallback(item: _Loaded) -> None:
            result = results[item.index]
            try:
                result.pixels = self._pydicom_pixels(item)
                result.backend = "pydicom"
            except Exception as exc:
                result.error = _short_error(exc)
                result.pixels = None

        self._map(decode_fallback, fallback)
        for item in loaded:
            result = results[item.index]
            if item.ds is not None and "PixelData" in item.ds:
                del item.ds.PixelData  # the header stays, the encoded bytes go
            if result.ok and not self.keep_on_gpu and not isinstance(result.pixels, np.ndarray):
                result.pixels = result.numpy()
        return results

    def _decode_dali(self, items: list[_Loaded], results: list[DicomResult]) -> list[_Loaded]:
        """Decode `items` with DALI into `results`; returns the items that need pydicom."""
        assert self._dali is not None
        failed: list[_Loaded] = []
        for dtype in ("uint8", "uint16"):
            # DALI rescales to the range of the type asked for: ask for the container's
            group = [it for it in items if _dali_dtype(it.ds) == dtype]
            if not group:
                continue
            samples = [np.frombuffer(f, np.uint8) for it in group for f in it.frames]
            outputs = self._dali.decode(samples, dtype)
            pos = 0
            for it in group:
                mine = outputs[pos : pos + len(it.frames)]
                pos += len(it.frames)
                it.frames = []
                pixels, problem = self._assemble(it, mine)
                result = results[it.index]
                if problem is not None:
                    result.note = problem
                    failed.append(it)
                    continue
                result.pixels = pixels
                result.backend = f"dali-{self._dali.device}"
        return failed

    def _verify_one(self, item: _Loaded, pixels: Any) -> np.ndarray | None:
        """pydicom's pixels when they differ from DALI's `pixels` for this item, else None."""
        try:
            ref = self._pydicom_pixels(item)
        except Exception:
            return None
        return None if same_pixels(ref, pixels) else ref

    def read_one(self, path: str | os.PathLike) -> DicomResult:
        """Decode one file; raises :class:`DicomReadError` when no backend can."""
        (result,) = self.read([path])
        if not result.ok:
            raise DicomReadError(f"{os.fspath(path)}: {result.error}")
        return result

    def iter_batches(self, paths: Sequence[str | os.PathLike]) -> Iterable[list[DicomResult]]:
        """Results in batches of `batch_size` files, in order."""
        for start in range(0, len(paths), self.batch_size):
            yield self.read(paths[start : start + self.batch_size])


def _kind(ds: Dataset) -> tuple[object, ...]:
    """What decides whether DALI decodes a file like pydicom does."""
    meta = getattr(ds, "file_meta", None)
    return (
        str(getattr(meta, "TransferSyntaxUID", "")),
        int(ds.get("BitsAllocated", 0) or 0),
        int(ds.get("BitsStored", 0) or 0),
        int(ds.get("SamplesPerPixel", 1) or 1),
        str(ds.get("PhotometricInterpretation", "")).strip().upper(),
    )


def _torch_peak(tensor: Any) -> int:
    import torch

    if tensor.dtype == torch.uint16:
        return int((tensor.view(torch.int16).to(torch.int32) & 0xFFFF).max())
    return int(tensor.max())


def same_pixels(a: Any, b: Any) -> bool:
    """Whether decoded pixels `b` (array or torch tensor) equal the reference array `a`, dtype included."""
    if a is None or b is None:
        return False
    if not isinstance(b, np.ndarray):
        b = DicomResult(path="", pixels=b).numpy()
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)


# --------------------------------------------------------------------------- conveniences

_DEFAULT_READERS: dict[str, DicomReader] = {}
_DEFAULT_LOCK = threading.Lock()


def _default_reader(backend: str) -> DicomReader:
    with _DEFAULT_LOCK:
        reader = _DEFAULT_READERS.get(backend)
        if reader is None:
            # a single file needs no GPU pipeline; the CPU one is as exact
            reader = DicomReader(backend, device="cpu", batch_size=1, num_threads=1)
            _DEFAULT_READERS[backend] = reader
        return reader


def read_dicom(path: str | os.PathLike, backend: str = "auto") -> DicomResult:
    """Decode one file (see :class:`DicomReader`); raises :class:`DicomReadError` on failure."""
    return _default_reader(backend).read_one(path)


def read_dicom_display(path: str | os.PathLike, *, backend: str = "pydicom", frame: int = 0) -> np.ndarray:
    """An 8-bit display image: HxW for grey-scale, HxWx3 (RGB) for colour.

    Grey-scale: modality LUT, then the first VOI LUT or window of the header (the image's
    min-max when it has none), MONOCHROME1 inverted. Colour: palette colour through its
    LUT, RGB / YBR as pydicom converts them, scaled to 8 bits when stored deeper.
    Multi-frame files give frame `frame`.
    """
    from project.mammo.voi import to_display, voi_params

    result = _default_reader(backend).read_one(path)
    ds = result.dataset
    pixels = result.numpy()
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames > 1:
        pixels = pixels[min(frame, n_frames - 1)]
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        pixels = apply_color_lut(pixels, ds)
        spp = 3
    if spp == 1:
        return to_display(pixels, voi_params(ds), output="uint8")
    if pixels.dtype == np.uint8:
        return np.ascontiguousarray(pixels)
    values = pixels.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return np.rint(scaled * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------- reference corpus


def pydicom_testdata_paths(max_bytes: int | None = None) -> list[str]:
    """pydicom's own test files and the installed pydicom-data files; no download."""
    import pydicom.data

    root = Path(pydicom.data.__file__).parent / "test_files"
    paths = {os.fspath(p) for p in root.rglob("*") if p.is_file()}
    try:
        from pydicom.data.data_manager import external_data_sources

        for source in external_data_sources().values():
            for p in source.get_paths("**/*", 0):
                if os.path.isfile(p):
                    paths.add(os.fspath(p))
    except Exception:  # no pydicom-data installed
        pass
    out = []
    for p in sorted(paths, key=lambda s: (os.path.basename(s), s)):
        if p.endswith((".py", ".pyc", ".json", ".txt", ".md")) or "__pycache__" in p:
            continue
        if max_bytes is not None and os.path.getsize(p) > max_bytes:
            continue
        out.append(p)
    return out


def pydicom_reference(path: str) -> tuple[np.ndarray | None, Any]:
    """(pixel_array, dataset) as plain pydicom gives them, or (None, None) when it cannot."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread_tolerant(path)
            if "PixelData" not in ds:
                return None, None
            return ds.pixel_array, ds
    except Exception:
        return None, None
