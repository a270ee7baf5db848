"""Ensemble prediction straight from DICOM: a test CSV, its DICOMs and mammography checkpoints -> submission.csv.

``python -m project.mammo.predict --csv test.csv --dicom-dir test_images --weights A.safetensors
B.safetensors [--weights-ratio 0.5 0.5] [--out submission.csv] [--binarize] [--aggregate mean|max]
[--strict] [--backend auto|dali|pydicom] [--batch-size 8] [--workers 2] [--device auto]``

Each CSV row (``patient_id``, ``image_id``, ``laterality``; ``prediction_id`` when present, else
``<patient_id>_<laterality>``) names ``<dicom-dir>/<patient_id>/<image_id>.dcm``. The files are
decoded in batches by :mod:`project.mammo.dicom` (DALI where it is exact, pydicom otherwise; in
``--workers`` processes, or threads beside DALI's GPU decoder, while the models run), each image
goes through its checkpoint's preprocessing (:mod:`project.mammo.preprocess`: the window and breast crop of
``project.mammo.prepare``, then normalisation), and the models' cancer probabilities are averaged
with the ``--weights-ratio`` weights (normalised to sum to 1; equal by default). A breast's value
is the mean (or max) of its images' probabilities (the checkpoints' ``aggregate`` unless
``--aggregate``); ``--binarize`` turns it into 1 where it reaches the weighted mean of the
checkpoints' ``cancer`` thresholds, else 0. Rows follow the CSV's order of first appearance.

A file that cannot be read or processed never stops the run: it is listed with the reason on
stderr and in the errors CSV (``predict_errors.csv`` beside ``--out`` unless ``--errors``; always
written), and its breast is predicted from its other images. A breast none of whose images could
be used gets the checkpoints' prior (the weighted mean of their ``positive_rate`` metric, 0 where
absent) and is listed as well. Exit status 0: done; 1: some file failed and ``--strict``; 2: bad
arguments, CSV or checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from project.fileio import atomic_write_csv, read_csv_rows
from project.mammo.dicom import BACKENDS, DicomReader, DicomReadError, decodes_on_gpu, require_dali
from project.mammo.metrics import AGGREGATIONS, aggregate, prediction_id
from project.mammo.preprocess import MammoPreprocess, dicom_image, to_tensor
from project.models.checkpoint import CheckpointConfig, CheckpointError, load_checkpoint, read_config
from project.runtime import autocast_dtype, resolve_device

TASK = "mammo"  # the `task` of a mammography checkpoint
LABEL = "cancer"  # its label, and the key of its binarisation threshold
PRIOR_METRIC = "positive_rate"  # the checkpoint metric used for breasts without a usable image
ERRORS_FILE = "predict_errors.csv"
ERROR_COLUMNS = ("prediction_id", "image_id", "path", "reason")
REQUIRED_COLUMNS = ("patient_id", "image_id", "laterality")
SUBMISSION_COLUMNS = ("prediction_id", LABEL)


class UsageError(Exception):
    """Bad arguments, CSV or checkpoint: one line on stderr, exit status 2."""


@dataclass(frozen=True)
class ImageRow:
    """One CSV row: the DICOM to read and the breast it belongs to."""

    prediction_id: str
    image_id: str
    laterality: str
    path: Path


@dataclass
class Member:
    """One checkpoint of the ensemble and its share of the average."""

    model: torch.nn.Module
    config: CheckpointConfig
    pre: MammoPreprocess
    path: Path
    weight: float


@dataclass
class Prediction:
    """Per-breast values in CSV order, per-image probabilities (NaN where the image failed), what failed."""

    breast_ids: list[str]
    values: np.ndarray
    image_probs: np.ndarray
    errors: list[tuple[str, str, str, str]] = field(default_factory=list)  # ERROR_COLUMNS
    prior_breasts: list[str] = field(default_factory=list)
    backends: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


# --------------------------------------------------------------------------- inputs


def read_rows(csv_path: Path, dicom_dir: Path) -> list[ImageRow]:
    """The CSV's images; names the file and line of a row that cannot be used."""
    try:
        raw_rows = read_csv_rows(csv_path, REQUIRED_COLUMNS, UsageError)
    except OSError as exc:
        raise UsageError(f"{csv_path}: cannot read ({exc.strerror})") from None
    rows, seen = [], set()
    for line, raw in enumerate(raw_rows, start=2):
        patient, image, side = (str(raw.get(c) or "").strip() for c in REQUIRED_COLUMNS)
        if not (patient and image and side):
            raise UsageError(f"{csv_path}:{line}: empty patient_id, image_id or laterality")
        if image in seen:
            raise UsageError(f"{csv_path}:{line}: image_id {image} repeated")
        seen.add(image)
        breast = str(raw.get("prediction_id") or "").strip() or prediction_id(patient, side)
        rows.append(ImageRow(breast, image, side, dicom_dir / patient / f"{image}.dcm"))
    if not rows:
        raise UsageError(f"{csv_path}: no rows")
    return rows


def load_members(paths: Sequence[Path], ratios: Sequence[float] | None, device: torch.device) -> list[Member]:
    """The checkpoints in eval mode on `device`, with their weights normalised to sum to 1."""
    ratios = [1.0] * len(paths) if ratios is None else list(ratios)
    if len(ratios) != len(paths):
        raise UsageError(f"--weights-ratio has {len(ratios)} value(s) for {len(paths)} checkpoint(s)")
    if any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise UsageError(f"--weights-ratio must be non-negative with a positive sum, got {ratios}")
    members = []
    for path, ratio in zip(paths, ratios, strict=True):
        try:
            if (task := read_config(path).task) != TASK:
                raise UsageError(f"{path}: a {task!r} checkpoint, not a mammography ({TASK!r}) one")
            model, config = load_checkpoint(path, device)
        except CheckpointError as exc:
            raise UsageError(str(exc)) from None
        try:
            pre = MammoPreprocess.from_dict(config.preprocess)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{path}: preprocess {config.preprocess}: {exc}") from None
        members.append(Member(model, config, pre, Path(path), ratio / sum(ratios)))
    return members


def weighted(members: Sequence[Member], values: Sequence[float]) -> float:
    return float(sum(m.weight * v for m, v in zip(members, values, strict=True)))


def ensemble_threshold(members: Sequence[Member]) -> float:
    """The weighted mean of the members' tuned ``cancer`` thresholds (0.5 where a member has none)."""
    return weighted(members, [m.config.thresholds.get(LABEL, 0.5) for m in members])


def ensemble_prior(members: Sequence[Member]) -> float:
    """The weighted mean of the members' training positive rates (0 where a member has none)."""
    return weighted(members, [float(m.config.metrics.get(PRIOR_METRIC, 0.0)) for m in members])


def ensemble_aggregation(members: Sequence[Member], override: str | None) -> str:
    if override is not None:
        return override
    found = {m.pre.aggregate for m in members}
    if len(found) > 1:
        raise UsageError(f"the checkpoints aggregate breasts differently ({sorted(found)}); pass --aggregate")
    return found.pop()


def cancer_logits(member: Member, logits: torch.Tensor) -> torch.Tensor:
    """The cancer logit of a 'mammo' checkpoint (auxiliary heads' logits follow it); other models' as they are."""
    return logits[:, :1] if member.config.task == TASK else logits


def positive_probability(logits: torch.Tensor) -> torch.Tensor:
    """Cancer probability [B] from one logit (sigmoid) or two classes (softmax, class 1)."""
    if logits.ndim == 2 and logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    if logits.ndim == 2 and logits.shape[1] == 2:
        return torch.softmax(logits, dim=1)[:, 1]
    raise ValueError(f"a mammography model must give [B, 1] or [B, 2] logits, not {tuple(logits.shape)}")


# --------------------------------------------------------------------------- images


@dataclass
class LoadedBatch:
    """One batch of rows, decoded and preprocessed: a tensor per preprocessing, and what failed."""

    indices: list[int]  # rows whose image is in the tensors, in tensor order
    tensors: dict[MammoPreprocess, torch.Tensor]
    errors: dict[int, str]
    backends: Counter[str]


class BatchLoader:
    """Decode a batch of DICOMs and preprocess each image for every distinct preprocessing."""

    def __init__(self, rows: Sequence[ImageRow], pres: Sequence[MammoPreprocess], reader: DicomReader,
                 pool: ThreadPoolExecutor | None = None) -> None:
        self.rows, self.pres, self.reader, self.pool = rows, list(pres), reader, pool

    def _one(self, index: int, result: Any) -> list[torch.Tensor] | str:
        if not result.ok:
            return result.error or "unreadable"
        try:
            return [to_tensor(dicom_image(result, pre, self.rows[index].laterality)[0], pre) for pre in self.pres]
        except Exception as exc:  # any failure of one image is that image's error
            return f"cannot preprocess ({type(exc).__name__}: {exc})"

    def __call__(self, indices: list[int]) -> LoadedBatch:
        results = self.reader.read([self.rows[i].path for i in indices])
        outcomes = list((self.pool.map if self.pool is not None else map)(self._one, indices, results))
        good = [(i, out) for i, out in zip(indices, outcomes, strict=True) if not isinstance(out, str)]
        tensors = {pre: torch.stack([out[k] for _, out in good]) for k, pre in enumerate(self.pres)} if good else {}
        return LoadedBatch(
            indices=[i for i, _ in good],
            tensors=tensors,
            errors={i: out for i, out in zip(indices, outcomes, strict=True) if isinstance(out, str)},
            backends=Counter(r.backend for r in results if r.ok),
        )


def _prefetched(load: BatchLoader, chunks: Sequence[list[int]]) -> Iterator[LoadedBatch]:
    """The loaded batches in order, the next one loading while the caller works on the current one."""
    with ThreadPoolExecutor(1, thread_name_prefix="mammo-load") as loader:
        pending = loader.submit(load, chunks[0]) if chunks else None
        for k in range(len(chunks)):
            batch = pending.result()
            pending = loader.submit(load, chunks[k + 1]) if k + 1 < len(chunks) else None
            yield batch


class _Chunks(Dataset):
    """Item k: chunk k of the rows loaded by a `BatchLoader` of this process's own, decoding on the CPU."""

    def __init__(self, rows: Sequence[ImageRow], pres: Sequence[MammoPreprocess], chunks: Sequence[list[int]],
                 backend: str, batch_size: int) -> None:
        self.rows, self.pres, self.chunks, self.backend, self.batch_size = rows, pres, chunks, backend, batch_size
        self._load: BatchLoader | None = None

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, k: int) -> LoadedBatch:
        if self._load is None:  # built in the worker process, so that no reader crosses a fork
            self._load = BatchLoader(self.rows, self.pres, DicomReader.for_worker(self.backend, self.batch_size))
        return self._load(self.chunks[k])


def _as_loaded(batch: LoadedBatch) -> LoadedBatch:
    return batch


def loaded_batches(rows: Sequence[ImageRow], pres: Sequence[MammoPreprocess], chunks: Sequence[list[int]],
                   device: torch.device, backend: str = "auto", batch_size: int = 8,
                   workers: int = 2) -> Iterator[LoadedBatch]:
    """The chunks decoded and preprocessed, in order, while the caller works on the earlier ones.

    With DALI's GPU decoder the reader lives in this process and `workers` threads help it. Otherwise
    `workers` DataLoader processes each decode whole chunks (0: this process): pydicom's decoders hold
    Python's global interpreter lock, so threads would decode one image at a time.
    """
    if decodes_on_gpu(backend, device.type == "cuda"):
        with DicomReader(backend, batch_size=batch_size, num_threads=workers, keep_on_gpu=True) as reader, \
                ThreadPoolExecutor(max(1, workers), thread_name_prefix="mammo-pre") as pool:
            yield from _prefetched(BatchLoader(rows, pres, reader, pool), chunks)
        return
    require_dali(backend)
    yield from DataLoader(_Chunks(rows, pres, chunks, backend, batch_size), batch_size=None,
                          num_workers=max(0, workers), collate_fn=_as_loaded)


@torch.inference_mode()
def image_probabilities(
    rows: Sequence[ImageRow],
    members: Sequence[Member],
    device: torch.device,
    backend: str = "auto",
    batch_size: int = 8,
    workers: int = 2,
) -> tuple[np.ndarray, dict[int, str], Counter[str]]:
    """Ensemble probability per row (NaN where the image failed), the failures by row, decoders used."""
    dtype = autocast_dtype("auto", device)
    probs = np.zeros(len(rows), dtype=np.float64)
    errors: dict[int, str] = {}
    backends: Counter[str] = Counter()
    pres = list(dict.fromkeys(m.pre for m in members))
    chunks = [list(range(s, min(s + batch_size, len(rows)))) for s in range(0, len(rows), batch_size)]
    with tqdm(total=len(rows), desc="mammo predict", unit="img", disable=None) as bar:
        for batch in loaded_batches(rows, pres, chunks, device, backend, batch_size, workers):
            errors.update(batch.errors)
            backends.update(batch.backends)
            for index, reason in batch.errors.items():
                bar.write(f"error: {rows[index].path}: {reason}", file=sys.stderr)
            if batch.indices:
                for pre, images in batch.tensors.items():
                    images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
                    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                        for member in (m for m in members if m.pre == pre):
                            logits = cancer_logits(member, member.model(images).float())
                            probs[batch.indices] += member.weight * positive_probability(logits).cpu().numpy()
            bar.update(len(batch.indices) + len(batch.errors))
    probs[list(errors)] = np.nan
    return probs, errors, backends


def breast_values(
    rows: Sequence[ImageRow], probs: np.ndarray, how: str, prior: float
) -> tuple[list[str], np.ndarray, list[str]]:
    """(breast ids in CSV order, their values, the breasts that got the prior: no usable image)."""
    order = list(dict.fromkeys(r.prediction_id for r in rows))
    usable = ~np.isnan(probs)
    ids, values = aggregate([r.prediction_id for r, ok in zip(rows, usable, strict=True) if ok], probs[usable], how)
    found = dict(zip(ids, values.tolist(), strict=True))
    without = [b for b in order if b not in found]
    return order, np.array([found.get(b, prior) for b in order], dtype=np.float64), without


def predict(
    rows: Sequence[ImageRow],
    members: Sequence[Member],
    device: torch.device,
    *,
    how: str | None = None,
    binarize: bool = False,
    backend: str = "auto",
    batch_size: int = 8,
    workers: int = 2,
) -> Prediction:
    """Images -> per-breast values (probabilities, or 0/1 with `binarize`), with the failures listed."""
    how = ensemble_aggregation(members, how)
    started = time.perf_counter()
    probs, errors, backends = image_probabilities(rows, members, device, backend, batch_size, workers)
    prior = ensemble_prior(members)
    ids, values, without = breast_values(rows, probs, how, prior)
    if binarize:
        values = (values >= ensemble_threshold(members)).astype(np.float64)
    listed = [(rows[i].prediction_id, rows[i].image_id, str(rows[i].path), why) for i, why in sorted(errors.items())]
    listed += [(b, "", "", f"no image of this breast could be used; predicted the prior {prior:.6g}") for b in without]
    return Prediction(ids, values, probs, listed, without, backends, time.perf_counter() - started)


def write_submission(path: Path, prediction: Prediction, binarize: bool) -> None:
    """``prediction_id,cancer`` rows (0/1 with `binarize`, else probabilities), atomically."""
    cells = [str(int(v)) if binarize else f"{v:.6f}" for v in prediction.values]
    atomic_write_csv(path, SUBMISSION_COLUMNS, zip(prediction.breast_ids, cells, strict=True))


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m project.mammo.predict",
        description="Predict per-breast cancer probabilities from DICOMs with an ensemble of mammography "
        "checkpoints. Exit 0: done; 1: some file failed and --strict; 2: bad arguments, CSV or checkpoint.",
    )
    parser.add_argument("--csv", type=Path, required=True, help="test.csv with patient_id, image_id, laterality")
    parser.add_argument("--dicom-dir", type=Path, required=True, help="folder with <patient_id>/<image_id>.dcm")
    parser.add_argument("--weights", type=Path, nargs="+", required=True, help="mammography checkpoint(s)")
    parser.add_argument("--weights-ratio", type=float, nargs="+", help="one weight per checkpoint (default equal)")
    parser.add_argument("--out", type=Path, default=Path("submission.csv"))
    parser.add_argument("--errors", type=Path, help=f"bad files (default {ERRORS_FILE} beside --out)")
    parser.add_argument("--binarize", action="store_true", help="0/1 at the checkpoints' tuned threshold")
    parser.add_argument("--aggregate", choices=AGGREGATIONS, help="per-breast mean or max (default: checkpoints')")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="DICOM decoder")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2,
                        help="decode and preprocessing processes (threads beside DALI on a GPU)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: the cores left over by the decode workers)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any file failed")
    return parser


def cpu_threads(threads: int, workers: int) -> int:
    """torch's CPU threads: `threads`, else the cores the decode workers leave (at least 1), as run.py.

    On a busy CPU, intra-op threads that compete with decoding slow the model down many times over.
    """
    return threads or max(1, (os.cpu_count() or 1) - workers)


def _summary(prediction: Prediction, out: Path, errors_path: Path) -> str:
    n_images = len(prediction.image_probs)
    used = int(np.count_nonzero(~np.isnan(prediction.image_probs)))
    rate = n_images / max(prediction.seconds, 1e-9)
    decoders = ", ".join(f"{k} {v}" for k, v in sorted(prediction.backends.items())) or "none"
    line = (f"mammo predict: {used}/{n_images} images used in {prediction.seconds:.1f} s ({rate:.1f} images/s; "
            f"decoded by {decoders}) -> {len(prediction.breast_ids)} breasts in {out}")
    failed = n_images - used
    if failed or prediction.prior_breasts:
        line += (f"; {failed} file(s) failed, {len(prediction.prior_breasts)} breast(s) given the prior, "
                 f"listed in {errors_path}")
    return line


def run(args: argparse.Namespace) -> int:
    if not args.csv.is_file():
        raise UsageError(f"--csv {args.csv}: no such file")
    if not args.dicom_dir.is_dir():
        raise UsageError(f"--dicom-dir {args.dicom_dir}: no such folder")
    missing = [str(p) for p in args.weights if not p.is_file()]
    if missing:
        raise UsageError(f"checkpoint not found: {', '.join(missing)}")
    if args.batch_size < 1 or args.workers < 1:
        raise UsageError("--batch-size and --workers must be at least 1")
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(args.threads, args.workers))
    rows = read_rows(args.csv, args.dicom_dir)
    members = load_members(args.weights, args.weights_ratio, device)
    try:
        prediction = predict(rows, members, device, how=args.aggregate, binarize=args.binarize,
                             backend=args.backend, batch_size=args.batch_size, workers=args.workers)
    except DicomReadError as exc:  # --backend dali without DALI
        raise UsageError(str(exc)) from None
    errors_path = args.errors or args.out.parent / ERRORS_FILE
    write_submission(args.out, prediction, args.binarize)
    for breast in prediction.prior_breasts:
        print(f"error: breast {breast}: no usable image; predicted the prior", file=sys.stderr)
    atomic_write_csv(errors_path, ERROR_COLUMNS, prediction.errors)
    print(_summary(prediction, args.out, errors_path))
    return 1 if args.strict and prediction.errors else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
