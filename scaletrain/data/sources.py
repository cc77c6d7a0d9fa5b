"""Read a raw dataset into memory: images as uint8 NHWC, labels as int64.

Every reader returns a `Source`; mistakes in the input raise `DataError`
naming the file. Sources are small enough to hold in memory on the machine
that writes the shards (MNIST: 55 MB); the *reading* side streams.
"""
from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import DataError

SOURCES = ("digits", "idx", "npz", "imagefolder")
IMAGE_EXTS = (".png", ".jpg", ".jpeg")


@dataclass
class Source:
    images: np.ndarray            # uint8, (N, H, W, C)
    labels: np.ndarray            # int64, (N,)
    class_names: List[str]
    description: str              # where it came from, for the manifest
    # the source's own train/test files, as index ranges into images/labels: {"train": [(start, stop)],
    # "test": [...]}; None where the source has no published split (digits, npz, imagefolder)
    official: Optional[Dict[str, List[Tuple[int, int]]]] = None

    def __post_init__(self):
        assert self.images.dtype == np.uint8 and self.images.ndim == 4, self.images.shape
        assert self.labels.shape == (len(self.images),)


def load_source(kind: str, path: Optional[str] = None) -> Source:
    if kind == "digits":
        return load_digits()
    if kind not in SOURCES:
        raise DataError(f"unknown data source '{kind}': expected one of {', '.join(SOURCES)}")
    if not path:
        raise DataError(f"data source '{kind}' needs a path (key 'data.path' or --path)")
    p = Path(path)
    if not p.exists():
        raise DataError(f"data source '{kind}': path not found: {path}")
    return {"idx": load_idx, "npz": load_npz, "imagefolder": load_imagefolder}[kind](p)


def load_digits() -> Source:
    """scikit-learn's bundled 8x8 digits (1797 samples, no download).

    Pixel values are integers 0..16 (sklearn docs, "Optical recognition of
    handwritten digits dataset"); we scale them to 0..255 with rounding so
    that x / 255 lies in [0, 1] like every other source.
    """
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # (1797, 8, 8, 1)
    return Source(x, d.target.astype(np.int64), [str(i) for i in range(10)], "sklearn.datasets.load_digits")


# ---------------------------------------------------------------- IDX (MNIST)
# Format (LeCun, "THE MNIST DATABASE", file formats section): big-endian
# magic 0x00 0x00 <dtype code> <ndim>, then ndim int32 sizes, then the data.
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    n = int(np.prod(shape)) if shape else 0
    body = raw[4 + 4 * ndim:]
    if len(body) != n * dtype.itemsize:
        raise DataError(f"{path}: IDX header says shape {shape} ({n * dtype.itemsize} bytes) "
                        f"but the file holds {len(body)} bytes (truncated?)")
    return np.frombuffer(body, dtype, count=n).reshape(shape)


_IMG_RE = re.compile(r"^(?P<prefix>.*?)[-_.]?images[-_.]idx3[-_.]ubyte(?P<gz>\.gz)?$")


def _idx_pairs(folder: Path) -> List[Tuple[Path, Path]]:
    pairs = []
    for img in sorted(folder.iterdir()):
        m = _IMG_RE.match(img.name)
        if not m:
            continue
        stem = img.name.replace("images", "labels").replace("idx3", "idx1")
        cands = [folder / stem, folder / (stem[:-3] if stem.endswith(".gz") else stem + ".gz")]
        lab = next((c for c in cands if c.exists()), None)
        if lab is None:
            raise DataError(f"IDX images file {img} has no matching labels file ({cands[0].name})")
        pairs.append((img, lab))
    return pairs


def load_idx(path: Path) -> Source:
    """One images/labels pair, or every pair in a folder (concatenated in
    sorted file-name order, e.g. MNIST's t10k then train). By default the
    train/val/test split is drawn from the pooled samples with the split seed;
    `official` records which file each sample came from (files whose name
    starts with t10k/test are the published test set, the others train), so
    that `data.split=official` keeps the published split."""
    if path.is_dir():
        pairs = _idx_pairs(path)
        if not pairs:
            raise DataError(f"no '*-images-idx3-ubyte[.gz]' files in IDX folder {path}")
    else:
        folder_pairs = _idx_pairs(path.parent)
        pairs = [p for p in folder_pairs if p[0] == path]
        if not pairs:
            raise DataError(f"{path} is not an '*-images-idx3-ubyte[.gz]' file with a labels file next to it")
    xs, ys, official, at = [], [], {"train": [], "test": []}, 0
    for img, lab in pairs:
        x, y = read_idx(img), read_idx(lab)
        if x.ndim not in (3, 4) or x.dtype != np.uint8:
            raise DataError(f"{img}: expected uint8 images of shape (N, H, W[, C]), got {x.dtype} {x.shape}")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{lab}: expected {len(x)} labels, got shape {y.shape}")
        xs.append(x if x.ndim == 4 else x[..., None])
        ys.append(y.astype(np.int64))
        part = "test" if img.name.lower().startswith(("t10k", "test")) else "train"
        official[part].append((at, at + len(x)))
        at += len(x)
    shapes = {x.shape[1:] for x in xs}
    if len(shapes) > 1:
        raise DataError(f"IDX files in {path} have different image shapes: {sorted(shapes)}")
    y = np.concatenate(ys)
    names = [str(i) for i in range(int(y.max()) + 1)] if len(y) else []
    return Source(np.ascontiguousarray(np.concatenate(xs)), y, names,
                  "idx:" + ",".join(p[0].name for p in pairs), official)


def _to_uint8_nhwc(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise DataError(f"{where}: images must be (N, H, W) or (N, H, W, C) with C in 1, 3, 4; got {x.shape}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if np.issubdtype(x.dtype, np.floating):
        if x.size and (np.nanmin(x) < 0 or np.nanmax(x) > 1 or np.isnan(x).any()):
            raise DataError(f"{where}: float images must lie in [0, 1]")
        return np.rint(x * 255.0).astype(np.uint8)
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"{where}: integer images must lie in 0..255")
        return x.astype(np.uint8)
    raise DataError(f"{where}: unsupported image dtype {x.dtype}")


def load_npz(path: Path) -> Source:
    """An .npz with arrays `x` (N,H,W[,C]; uint8 0..255 or float 0..1) and `y` (N,) ints."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z or "y" not in z:
                raise DataError(f"{path}: npz must hold arrays 'x' and 'y' (found {', '.join(z.files)})")
            x, y = z["x"], z["y"]
    except DataError:
        raise
    except Exception as e:  # zipfile / format errors
        raise DataError(f"cannot read npz file {path}: {e}") from None
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: 'y' must be {len(x)} integer labels, got {y.dtype} {y.shape}")
    if len(y) and y.min() < 0:
        raise DataError(f"{path}: labels must be >= 0")
    y = y.astype(np.int64)
    names = [str(i) for i in range(int(y.max()) + 1)] if len(y) else []
    return Source(_to_uint8_nhwc(x, str(path)), y, names, f"npz:{path.name}")


def load_imagefolder(path: Path) -> Source:
    """`root/<class>/*.png|jpg|jpeg`; class index = position in sorted folder names.

    Images keep their decoded pixels: grayscale (mode L) stays 1 channel,
    anything else is converted to RGB. All images must share one size."""
    from PIL import Image

    if not path.is_dir():
        raise DataError(f"image folder {path} is not a folder")
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"image folder {path} has no class sub-folders (expected root/<class>/*.png)")
    files, labels = [], []
    for ci, c in enumerate(classes):
        for f in sorted((path / c).iterdir()):
            if f.suffix.lower() in IMAGE_EXTS:
                files.append(f)
                labels.append(ci)
    if not files:
        raise DataError(f"image folder {path} holds no .png/.jpg/.jpeg files")
    arrays = []
    gray = True
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                if im.mode not in ("L", "1"):
                    gray = False
                arrays.append(im.copy())
        except Exception as e:
            raise DataError(f"cannot decode image {f}: {e}") from None
    out = []
    shape0 = None
    for f, im in zip(files, arrays):
        a = np.asarray(im.convert("L" if gray else "RGB"), dtype=np.uint8)
        if a.ndim == 2:
            a = a[..., None]
        if shape0 is None:
            shape0 = a.shape
        elif a.shape != shape0:
            raise DataError(f"image {f} has shape {a.shape[:2]} but the first image has {shape0[:2]}; "
                            "all images in a folder must have the same size")
        out.append(a)
    return Source(np.stack(out), np.asarray(labels, np.int64), classes, f"imagefolder:{path.name}")
