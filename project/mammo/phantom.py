"""Synthetic screening mammograms in the RSNA layout, for tests and the demo.

``python -m project.mammo.phantom --out DIR [--n-patients N] [--seed K] [--size HxW]`` writes

- ``DIR/train.csv`` with ``site_id,patient_id,image_id,laterality,view,age,cancer``;
- ``DIR/train_images/<patient_id>/<image_id>.dcm``: four views per patient (L/R x CC/MLO);
- ``DIR/phantom_truth.csv``: per image the true breast, lesion and label boxes (x0, y0, x1, y1,
  end-exclusive) and the encoding chosen, for tests.

Each image is a half-ellipse breast against the chest wall (left edge for L, right edge for R,
as the image would be hung), with smooth tissue texture, a skin fall-off, a pectoral muscle
in MLO views, a burnt-in label rectangle in a top corner away from the breast, and for
``cancer = 1`` a dense spiculated lesion. The files cycle through MONOCHROME1 and
MONOCHROME2, 12 to 16 stored bits, Window Center/Width with and without VOI LUT Function
(LINEAR, LINEAR_EXACT, SIGMOID) and these transfer syntaxes: explicit and implicit VR little
endian, deflated explicit VR little endian, RLE Lossless (pydicom's encoder), JPEG 2000
Lossless (pylibjpeg-openjpeg's encoder) and JPEG Lossless SV1 (process 14, first-order
prediction: the RSNA format, written by the small encoder in this module since pydicom has
none). Everything is deterministic for a seed.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SOP_CLASS_MG_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"

SYNTAXES = (
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless (RSNA)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1 (RSNA)
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
)
VOI_FUNCTIONS = ("LINEAR", None, "LINEAR_EXACT", "SIGMOID")
BITS = (12, 16, 14, 13, 15)
VIEWS = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))

TRUTH_COLUMNS = (
    "image_id",
    "patient_id",
    "laterality",
    "view",
    "cancer",
    "breast_x0",
    "breast_y0",
    "breast_x1",
    "breast_y1",
    "lesion_x0",
    "lesion_y0",
    "lesion_x1",
    "lesion_y1",
    "label_x0",
    "label_y0",
    "label_x1",
    "label_y1",
    "photometric",
    "bits_stored",
    "transfer_syntax",
    "voi_function",
)


# --------------------------------------------------------------------------- image


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    import cv2

    noise = rng.standard_normal(shape).astype(np.float32)
    sigma = max(0.5, scale)
    smooth = cv2.GaussianBlur(noise, (0, 0), sigmaX=sigma, sigmaY=sigma)
    smooth -= smooth.mean()
    std = float(smooth.std())
    return smooth / std if std > 0 else smooth


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (0, 0, 0, 0)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


@dataclass
class SyntheticMammogram:
    """A display-oriented image in [0, 1] (bright = dense) and where things are."""

    image: np.ndarray  # float32 HxW in [0, 1]; background ~0
    breast_mask: np.ndarray  # bool HxW
    breast_box: tuple[int, int, int, int]  # x0, y0, x1, y1 (end-exclusive)
    lesion_box: tuple[int, int, int, int] | None
    label_box: tuple[int, int, int, int]


def synthetic_mammogram(
    rng: np.random.Generator,
    height: int,
    width: int,
    laterality: str,
    view: str,
    cancer: bool,
) -> SyntheticMammogram:
    """One synthetic breast image; the breast touches the left edge for L, the right for R."""
    h, w = int(height), int(width)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # half-ellipse against the chest wall at x = 0 (flipped for R at the end)
    cy = h * rng.uniform(0.46, 0.54)
    ry = h * rng.uniform(0.36, 0.42)
    rx = w * rng.uniform(0.55, 0.72)
    r = np.sqrt(((yy - cy) / ry) ** 2 + (xx / rx) ** 2)
    breast = r <= 1.0
    thickness = np.clip((1.0 - r) * 6.0, 0.0, 1.0)  # skin fall-off towards the edge
    texture = 0.5 * _smooth_noise(rng, (h, w), max(h, w) / 60) + 0.5 * _smooth_noise(rng, (h, w), max(h, w) / 20)
    density = rng.uniform(0.35, 0.55)
    tissue = np.clip(density + 0.12 * texture, 0.05, 0.95) * (0.35 + 0.65 * thickness)
    image = np.where(breast, tissue, 0.0).astype(np.float32)
    if view.upper() == "MLO":  # pectoral muscle: a bright triangle in the top chest-wall corner
        depth = w * rng.uniform(0.25, 0.35)
        length = h * rng.uniform(0.35, 0.45)
        muscle = (xx / depth + yy / length) <= 1.0
        image = np.where(muscle & breast, np.maximum(image, 0.75 + 0.05 * texture), image)
    lesion_box = None
    if cancer:
        for _ in range(100):
            ly, lx = rng.uniform(cy - 0.6 * ry, cy + 0.6 * ry), rng.uniform(0.15 * rx, 0.6 * rx)
            if ((ly - cy) / ry) ** 2 + (lx / rx) ** 2 < 0.5:
                break
        radius = max(3.0, min(h, w) * rng.uniform(0.04, 0.07))
        angle = np.arctan2(yy - ly, xx - lx)
        spikes = 1.0 + 0.25 * np.sin(7 * angle + rng.uniform(0, np.pi)) ** 8
        dist = np.sqrt((yy - ly) ** 2 + (xx - lx) ** 2) / (radius * spikes)
        blob = np.clip(1.2 - dist, 0.0, 1.0) ** 0.7
        image = np.where(breast, np.maximum(image, blob * 0.98), image)
        lesion_box = _box((blob > 0) & breast)
    image = np.clip(image, 0.0, 1.0)
    # burnt-in label in the top corner away from the chest wall
    lw, lh = max(6, int(w * 0.18)), max(4, int(h * 0.06))
    lx0, ly0 = w - lw - max(2, int(w * 0.03)), max(2, int(h * 0.03))
    image[ly0 : ly0 + lh, lx0 : lx0 + lw] = 1.0
    for k in range(1, lh - 1, 3):  # dark "text" lines
        image[ly0 + k, lx0 + 2 : lx0 + lw - 2 : 2] = 0.2
    label_box = (lx0, ly0, lx0 + lw, ly0 + lh)
    if laterality.upper() == "R":
        image = image[:, ::-1].copy()
        breast = breast[:, ::-1].copy()
        lesion_box = None if lesion_box is None else _mirror(lesion_box, w)
        label_box = _mirror(label_box, w)
    return SyntheticMammogram(image, breast, _box(breast), lesion_box, label_box)


def _mirror(box: tuple[int, int, int, int], width: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return (width - x1, y0, width - x0, y1)


# --------------------------------------------------------------------------- lossless JPEG


def _huffman_code_lengths(freq: np.ndarray) -> dict[int, int]:
    """JPEG Annex K.2 code sizes (max 16 bits) for symbols with nonzero frequency."""
    symbols = [int(s) for s in np.nonzero(freq)[0]]
    counts = {s: int(freq[s]) for s in symbols}
    reserved = 1 << 20  # Annex K: a dummy symbol keeps the all-ones code unused
    counts[reserved] = 1
    sizes = dict.fromkeys(counts, 0)
    groups = {s: [s] for s in counts}
    live = dict(counts)
    while len(live) > 1:
        a = min(live, key=lambda s: (live[s], -s))
        fa = live.pop(a)
        b = min(live, key=lambda s: (live[s], -s))
        fb = live.pop(b)
        for s in groups[a] + groups[b]:
            sizes[s] += 1
        groups[b] = groups[a] + groups[b]
        live[b] = fa + fb
    bits = [0] * 33
    for n in sizes.values():
        bits[n] += 1
    for i in range(32, 16, -1):  # Annex K.3: limit to 16 bits
        while bits[i] > 0:
            j = i - 2
            while bits[j] == 0:
                j -= 1
            bits[i] -= 2
            bits[i - 1] += 1
            bits[j + 1] += 2
            bits[j] -= 1
    i = 16
    while bits[i] == 0:
        i -= 1
    bits[i] -= 1  # remove the reserved symbol from the longest length
    ordered = sorted(counts, key=lambda s: (sizes[s], s))
    ordered = [s for s in ordered if s != reserved]
    lengths: dict[int, int] = {}
    pos = 0
    for size in range(1, 17):
        for _ in range(bits[size]):
            lengths[ordered[pos]] = size
            pos += 1
    return lengths


def encode_jpeg_lossless_sv1(image: np.ndarray, precision: int) -> bytes:
    """A grey-scale image as a JPEG process 14 (lossless, predictor 1) codestream."""
    if image.ndim != 2:
        raise ValueError("only single-component images")
    if not 2 <= precision <= 16:
        raise ValueError("precision must be 2..16")
    x = image.astype(np.int64)
    if x.min() < 0 or x.max() >= 1 << precision:
        raise ValueError(f"values outside {precision}-bit range")
    h, w = x.shape
    pred = np.empty_like(x)
    pred[0, 0] = 1 << (precision - 1)
    pred[0, 1:] = x[0, :-1]
    pred[1:, 0] = x[:-1, 0]
    pred[1:, 1:] = x[1:, :-1]
    diff = ((x - pred + 32768) % 65536 - 32768).ravel()
    mag = np.abs(diff)
    ssss = np.zeros(mag.shape, np.int64)
    nz = mag > 0
    ssss[nz] = np.floor(np.log2(mag[nz])).astype(np.int64) + 1
    ssss = np.minimum(ssss, 16)
    extra_len = np.where(ssss == 16, 0, ssss)
    extra = np.where(diff >= 0, diff, diff + (1 << extra_len) - 1) & ((1 << extra_len) - 1)
    lengths = _huffman_code_lengths(np.bincount(ssss, minlength=17))
    # canonical codes (Annex C)
    order = sorted(lengths, key=lambda s: (lengths[s], s))
    codes: dict[int, int] = {}
    code, prev = 0, lengths[order[0]]
    for s in order:
        code <<= lengths[s] - prev
        prev = lengths[s]
        codes[s] = code
        code += 1
    code_of = np.zeros(17, np.int64)
    len_of = np.zeros(17, np.int64)
    for s in order:
        code_of[s], len_of[s] = codes[s], lengths[s]
    value = (code_of[ssss] << extra_len) | extra
    nbits = len_of[ssss] + extra_len
    total = int(nbits.sum())
    ends = np.cumsum(nbits)
    owner = np.repeat(np.arange(len(nbits)), nbits)
    offset = np.arange(total) - (ends - nbits)[owner]
    bitstream = ((value[owner] >> (nbits[owner] - 1 - offset)) & 1).astype(np.uint8)
    pad = (-total) % 8
    bitstream = np.concatenate([bitstream, np.ones(pad, np.uint8)])
    entropy = np.packbits(bitstream).tobytes().replace(b"\xff", b"\xff\x00")

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    sof = bytes([precision]) + h.to_bytes(2, "big") + w.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    bits_count = [sum(1 for s in order if lengths[s] == n) for n in range(1, 17)]
    dht = bytes([0x00]) + bytes(bits_count) + bytes(order)
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # Ns, Cs/Td, Ss = predictor 1, Se, Ah/Al
    return b"\xff\xd8" + segment(0xC3, sof) + segment(0xC4, dht) + segment(0xDA, sos) + entropy + b"\xff\xd9"


# --------------------------------------------------------------------------- DICOM


def _stored_values(
    rng: np.random.Generator, image: np.ndarray, bits: int, monochrome1: bool
) -> tuple[np.ndarray, tuple[float, float]]:
    """Display image -> stored integers; and the (centre, width) of a window that shows it."""
    top = (1 << bits) - 1
    lo = rng.uniform(0.01, 0.04) * top  # detector offset
    span = rng.uniform(0.75, 0.9) * top
    noise = rng.normal(0.0, 0.002 * top, image.shape)
    values = lo + image * span + noise
    values = np.clip(np.rint(values), 0, top)
    if monochrome1:
        values = top - values
    stored = values.astype(np.uint16)
    # a window covering the tissue range (in stored values, before any inversion)
    center = float(top - (lo + 0.5 * span)) if monochrome1 else float(lo + 0.5 * span)
    width = float(span * 1.05)
    return stored, (round(center, 1), round(width, 1))


def write_dicom(
    path: str | os.PathLike,
    stored: np.ndarray,
    *,
    bits_stored: int,
    photometric: str,
    transfer_syntax: str,
    window: tuple[float, float] | None,
    voi_function: str | None,
    patient_id: str,
    image_id: str,
    laterality: str,
    view: str,
    age: int,
    extra_window: tuple[float, float] | None = None,
) -> None:
    """Write one mammogram DICOM with the given pixel encoding."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (
        JPEG2000Lossless,
        JPEGLosslessSV1,
        RLELossless,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASS_MG_PRESENTATION
    # deterministic UIDs from the ids (generate_uid with entropy sources is reproducible)
    sop_uid = generate_uid(entropy_srcs=["phantom", patient_id, image_id])
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SOP_CLASS_MG_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["phantom-study", patient_id])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["phantom-series", patient_id, laterality])
    ds.PatientID = str(patient_id)
    ds.PatientName = f"Phantom^{patient_id}"
    ds.PatientAge = f"{int(age):03d}Y"
    ds.Modality = "MG"
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BodyPartExamined = "BREAST"
    ds.Rows, ds.Columns = (int(v) for v in stored.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = int(bits_stored)
    ds.HighBit = int(bits_stored) - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    if window is not None:
        if extra_window is not None:
            ds.WindowCenter = [window[0], extra_window[0]]
            ds.WindowWidth = [window[1], extra_window[1]]
        else:
            ds.WindowCenter = window[0]
            ds.WindowWidth = window[1]
        if voi_function:
            ds.VOILUTFunction = voi_function
    arr = np.ascontiguousarray(stored.astype(np.uint16))
    ds.PixelData = arr.tobytes()
    ds["PixelData"].VR = "OW"
    little_explicit = "1.2.840.10008.1.2.1"
    if transfer_syntax == str(RLELossless):
        ds.compress(RLELossless, arr, generate_instance_uid=False)
    elif transfer_syntax == str(JPEG2000Lossless):
        ds.compress(JPEG2000Lossless, arr, generate_instance_uid=False)
    elif transfer_syntax == str(JPEGLosslessSV1):
        frame = encode_jpeg_lossless_sv1(arr, int(bits_stored))
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.LossyImageCompression = "00"
    elif transfer_syntax in (little_explicit, "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"):
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    else:
        raise ValueError(f"no encoder for transfer syntax {transfer_syntax}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


@dataclass
class PhantomImage:
    site_id: int
    patient_id: int
    image_id: int
    laterality: str
    view: str
    age: int
    cancer: int


def generate(
    out: str | os.PathLike,
    n_patients: int = 4,
    seed: int = 0,
    size: tuple[int, int] = (320, 256),
) -> Path:
    """Write the phantom dataset under `out`; returns the path of ``train.csv``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    height, width = size
    rows: list[PhantomImage] = []
    truth: list[list[object]] = []
    n_cancer = max(1, round(n_patients / 3)) if n_patients >= 2 else 0
    cancer_patients = set(rng.choice(n_patients, size=n_cancer, replace=False).tolist())
    patient_ids = rng.choice(np.arange(10_000, 65_000), size=n_patients, replace=False)
    counter = 0
    for p in range(n_patients):
        patient_id = int(patient_ids[p])
        site_id = 1 + int(rng.integers(0, 2))
        age = int(rng.integers(40, 81))
        cancer_side = rng.choice(["L", "R"]) if p in cancer_patients else None
        for laterality, view in VIEWS:
            image_id = int(rng.integers(10_000_000, 2_000_000_000))
            cancer = int(laterality == cancer_side)
            picture = synthetic_mammogram(rng, height, width, laterality, view, bool(cancer))
            # cycles of co-prime lengths so that every syntax meets every bit depth
            # and both photometric interpretations
            bits = BITS[counter % len(BITS)]
            mono1 = (counter + counter // len(SYNTAXES)) % 2 == 1
            syntax = SYNTAXES[counter % len(SYNTAXES)]
            function = VOI_FUNCTIONS[counter % len(VOI_FUNCTIONS)]
            stored, window = _stored_values(rng, picture.image, bits, mono1)
            extra = (window[0], round(window[1] * 0.6, 1)) if counter % 3 == 0 else None
            photometric = "MONOCHROME1" if mono1 else "MONOCHROME2"
            write_dicom(
                out / "train_images" / str(patient_id) / f"{image_id}.dcm",
                stored,
                bits_stored=bits,
                photometric=photometric,
                transfer_syntax=syntax,
                window=window,
                voi_function=function,
                patient_id=str(patient_id),
                image_id=str(image_id),
                laterality=laterality,
                view=view,
                age=age,
                extra_window=extra,
            )
            rows.append(PhantomImage(site_id, patient_id, image_id, laterality, view, age, cancer))
            lesion = picture.lesion_box or ("", "", "", "")
            truth.append(
                [image_id, patient_id, laterality, view, cancer, *picture.breast_box, *lesion]
                + [*picture.label_box, photometric, bits, syntax, function or ""]
            )
            counter += 1
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "train.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["site_id", "patient_id", "image_id", "laterality", "view", "age", "cancer"])
        for r in rows:
            writer.writerow([r.site_id, r.patient_id, r.image_id, r.laterality, r.view, r.age, r.cancer])
    with open(out / "phantom_truth.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(TRUTH_COLUMNS)
        writer.writerows(truth)
    return csv_path


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 320x256, not {text!r}") from exc
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError("size must be at least 32x32")
    return h, w


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m project.mammo.phantom",
        description="Write synthetic RSNA-style mammography DICOMs and train.csv.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n-patients", type=int, default=4, help="patients (4 images each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=_parse_size, default=(320, 256), help="image HxW")
    args = parser.parse_args(argv)
    if args.n_patients < 1:
        parser.error("--n-patients must be at least 1")
    csv_path = generate(args.out, args.n_patients, args.seed, args.size)
    print(f"wrote {4 * args.n_patients} DICOMs and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
