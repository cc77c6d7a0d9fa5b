"""Write WebDataset shards and their manifest; `prepare(cfg)`.

A shard is a plain POSIX tar (WebDataset format: files grouped by basename
key, https://github.com/webdataset/webdataset#the-webdataset-format). Each
sample is two members::

    000001234.img.npy   # uint8 HWC array, numpy .npy format   (encoding npy)
    000001234.img.png   # or a lossless PNG                     (encoding png)
    000001234.cls       # the label as ASCII digits

The key is the sample's index in the source (9 digits), unique across
splits. Members have mtime 0, so the same source and settings always give
byte-identical shards (and the same sha256).

The manifest (`manifest.json`, next to the shards) records shard names,
sample counts, byte sizes, sha256, class histograms, image shape, source and
split settings. `prepare()` writes into a temporary sibling folder and
renames it into place, so concurrent callers (several ranks) never see a
half-written folder: the first rename wins and the others read its manifest.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..errors import DataError
from .sources import Source, load_source

MANIFEST = "manifest.json"
FORMAT = "scaletrain-shards/1"
SPLITS = ("train", "val", "test")
# the settings that define a shard set: a manifest with equal values is reused
SETTING_KEYS = ("source", "path", "split", "split_seed", "test_fraction", "val_fraction",
                "shard_samples", "shard_bytes", "encoding")
SPLIT_KINDS = ("random", "official")
# settings added after the first manifests were written: what an older manifest meant
SETTING_DEFAULTS = {"split": "random"}


def encode_image(img: np.ndarray, encoding: str) -> bytes:
    if encoding == "npy":
        buf = io.BytesIO()
        np.save(buf, img, allow_pickle=False)
        return buf.getvalue()
    if encoding == "png":
        from PIL import Image

        a = img[..., 0] if img.shape[-1] == 1 else img
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        return buf.getvalue()
    raise DataError(f"unknown image encoding '{encoding}': expected npy or png")


def split_indices(n: int, seed: int, test_fraction: float, val_fraction: float) -> Dict[str, np.ndarray]:
    """A seeded permutation cut into test | val | train (in that order)."""
    if not (0 <= test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        raise DataError(f"split fractions must be in [0, 1) and sum to < 1 "
                        f"(test {test_fraction}, val {val_fraction})")
    perm = np.random.default_rng(seed).permutation(n)
    n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
    return {"test": perm[:n_test], "val": perm[n_test:n_test + n_val], "train": perm[n_test + n_val:]}


def official_indices(src: Source, seed: int, val_fraction: float) -> Dict[str, np.ndarray]:
    """The source's published split kept as it is: its test files in file order are the test
    split; a seeded `val_fraction` of its train files is held out as val (the rest, in file
    order, is train). `test_fraction` plays no part."""
    if not src.official or not src.official.get("test") or not src.official.get("train"):
        raise DataError(f"data.split=official: source {src.description} has no published train/test files "
                        "(only IDX folders with train-* and t10k-*/test-* files do); use data.split=random")
    if not 0 <= val_fraction < 1:
        raise DataError(f"split fractions must be in [0, 1) (val {val_fraction})")
    test = np.concatenate([np.arange(a, b) for a, b in src.official["test"]])
    train = np.concatenate([np.arange(a, b) for a, b in src.official["train"]])
    n_val = int(round(len(train) * val_fraction))
    held = np.zeros(len(train), bool)
    held[np.random.default_rng(seed).permutation(len(train))[:n_val]] = True
    return {"test": test, "val": train[held], "train": train[~held]}


def _pad(n: int, block: int) -> int:
    return -(-n // block) * block


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_split(src: Source, idx: np.ndarray, split: str, out: Path, *, shard_samples: int,
                shard_bytes: Optional[int], encoding: str, pbar=None) -> Dict[str, Any]:
    """Write samples `idx` of `src` as `<split>-NNNNNN.tar` shards; return the split's manifest entry.

    A shard is closed when it holds `shard_samples` samples or when adding the
    next sample would exceed `shard_bytes` (a shard always holds >= 1 sample)."""
    import webdataset as wds

    shards: List[Dict[str, Any]] = []
    num_classes = len(src.class_names)
    hist = np.bincount(src.labels[idx], minlength=num_classes).tolist() if len(idx) else [0] * num_classes
    writer, cur, cur_n, cur_bytes, cur_hist = None, None, 0, 0, None

    def close():
        nonlocal writer
        if writer is None:
            return
        writer.close()
        path = out / cur
        shards.append({"name": cur, "samples": cur_n, "bytes": path.stat().st_size,
                       "sha256": _sha256(path), "class_histogram": cur_hist.tolist()})
        writer = None

    for i in idx:
        img = encode_image(src.images[i], encoding)
        lab = int(src.labels[i])
        cls = str(lab).encode()
        # exact tar size: each member is a 512-byte header + data padded to 512;
        # the archive ends with two zero blocks and is padded to tarfile's
        # 10240-byte record (Python tarfile docs: RECORDSIZE = 20 * BLOCKSIZE)
        rec = 1024 + _pad(len(img), 512) + _pad(len(cls), 512)
        if writer is not None and (cur_n >= shard_samples or
                                   (shard_bytes and _pad(cur_bytes + rec + 1024, 10240) > shard_bytes)):
            close()
        if writer is None:
            cur = f"{split}-{len(shards):06d}.tar"
            # mtime=0 (an int: a float mtime makes tarfile add a 512-byte PAX
            # header per member): byte-identical shards for identical inputs
            writer = wds.TarWriter(str(out / cur), mtime=0, encoder=False)
            cur_n, cur_bytes, cur_hist = 0, 0, np.zeros(num_classes, np.int64)
        writer.write({"__key__": f"{int(i):09d}", f"img.{encoding}": img, "cls": cls})
        cur_n += 1
        cur_bytes += rec
        cur_hist[lab] += 1
        if pbar is not None:
            pbar.update(1)
    close()
    return {"num_samples": int(len(idx)), "class_histogram": hist, "shards": shards}


def settings_of(cfg, shard_bytes: Optional[int] = None) -> Dict[str, Any]:
    path = getattr(cfg, "path", None)
    return {
        "source": cfg.source,
        "path": str(Path(path).resolve()) if path else None,
        "split": getattr(cfg, "split", "random"),
        "split_seed": int(cfg.split_seed),
        "test_fraction": float(cfg.test_fraction),
        "val_fraction": float(cfg.val_fraction),
        "shard_samples": int(cfg.shard_samples),
        "shard_bytes": int(shard_bytes) if shard_bytes else None,
        "encoding": cfg.encoding,
    }


def write_shards(src: Source, out: Path, settings: Dict[str, Any], *, name: str,
                 progress: bool = True) -> Dict[str, Any]:
    """Write all splits and the manifest into the (existing, empty) folder `out`."""
    from tqdm.auto import tqdm

    if settings["shard_samples"] <= 0:
        raise DataError(f"shard size must be > 0 samples, got {settings['shard_samples']}")
    if settings.get("split", "random") == "official":
        parts = official_indices(src, settings["split_seed"], settings["val_fraction"])
    else:
        parts = split_indices(len(src.labels), settings["split_seed"], settings["test_fraction"],
                              settings["val_fraction"])
    n, h, w, c = src.images.shape
    manifest: Dict[str, Any] = {
        "format": FORMAT,
        "name": name,
        "source_description": src.description,
        "settings": settings,
        "image_shape": [c, h, w],
        "num_classes": len(src.class_names),
        "class_names": list(src.class_names),
        "splits": {},
    }
    # disable=None: tqdm shows the bar only on a terminal (no bar lines in logs)
    with tqdm(total=n, desc=f"writing shards ({name})", unit="img", disable=None if progress else True,
              leave=False) as pbar:
        for split in SPLITS:
            manifest["splits"][split] = write_split(
                src, parts[split], split, out, shard_samples=settings["shard_samples"],
                shard_bytes=settings["shard_bytes"], encoding=settings["encoding"], pbar=pbar)
    with open(out / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def read_manifest(root) -> Dict[str, Any]:
    path = Path(root) / MANIFEST
    try:
        with open(path) as f:
            m = json.load(f)
    except FileNotFoundError:
        raise DataError(f"no {MANIFEST} in {root} (write shards with `scaletrain shards` first)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT or "splits" not in m:
        raise DataError(f"{path} is not a scaletrain manifest (format {FORMAT})")
    return m


def _diff(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    old = {**SETTING_DEFAULTS, **old}
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in SETTING_KEYS if old.get(k) != new.get(k)]


def _atomic_publish(tmp: Path, root: Path, overwrite: bool) -> bool:
    """Rename `tmp` to `root`. Returns False if another writer got there first."""
    if overwrite and root.exists():
        trash = root.with_name(f".{root.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(root, trash)
        shutil.rmtree(trash, ignore_errors=True)
    if root.exists() and root.is_dir() and not any(root.iterdir()):
        try:
            root.rmdir()
        except OSError:
            pass
    try:
        os.rename(tmp, root)  # atomic on POSIX; fails if root exists and is non-empty
        return True
    except OSError:
        if (root / MANIFEST).exists():
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        raise


def write_dataset(source: str, path: Optional[str], root, *, split: str = "random", split_seed: int = 0,
                  test_fraction: float = 0.2, val_fraction: float = 0.0, shard_samples: int = 256,
                  shard_bytes: Optional[int] = None, encoding: str = "npy", name: Optional[str] = None,
                  overwrite: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Write shards of a source into `root` (refuses a non-empty folder unless `overwrite`)."""
    from types import SimpleNamespace

    if split not in SPLIT_KINDS:
        raise DataError(f"unknown split '{split}': expected {' or '.join(SPLIT_KINDS)}")
    cfg = SimpleNamespace(source=source, path=path, split=split, split_seed=split_seed, test_fraction=test_fraction,
                          val_fraction=val_fraction, shard_samples=shard_samples, encoding=encoding)
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"output path {root} exists and is not a folder")
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise DataError(f"output folder {root} is not empty; pass --overwrite (data: prepare(overwrite=True)) "
                        "or choose another folder")
    return _build(cfg, root, shard_bytes=shard_bytes, name=name, overwrite=overwrite, progress=progress)


def _build(cfg, root: Path, *, shard_bytes, name, overwrite, progress) -> Dict[str, Any]:
    settings = settings_of(cfg, shard_bytes)
    if settings["encoding"] not in ("npy", "png"):
        raise DataError(f"unknown image encoding '{settings['encoding']}': expected npy or png")
    src = load_source(cfg.source, getattr(cfg, "path", None))
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the published folder is a normal one
    try:
        manifest = write_shards(src, tmp, settings, name=name or root.name, progress=progress)
        if not _atomic_publish(tmp, root, overwrite):
            return read_manifest(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def prepare(cfg, *, overwrite: bool = False, progress: bool = True, shard_bytes: Optional[int] = None,
            name: Optional[str] = None) -> Dict[str, Any]:
    """Ensure shards for `cfg.source` exist under `cfg.root`; return the manifest.

    Idempotent: a manifest written with the same settings is returned as is.
    A folder holding shards of *different* settings is an error unless
    `overwrite`. For `source: shards` nothing is written: the manifest in
    `cfg.root` (if any) is read, and the shard URLs are checked to resolve.
    """
    root = Path(cfg.root)
    if cfg.source == "shards":
        from .reader import resolve_urls

        manifest = read_manifest(root) if (root / MANIFEST).exists() else None
        if manifest is None and not cfg.train_urls:
            raise DataError(f"data.source=shards: no {MANIFEST} in data.root={root} and no data.train_urls")
        resolve_urls(cfg, "train", manifest)  # raises DataError if nothing is found
        return manifest if manifest is not None else {"format": FORMAT, "splits": {}, "settings": None}
    want = settings_of(cfg, shard_bytes)
    if (root / MANIFEST).exists() and not overwrite:
        m = read_manifest(root)
        diff = _diff(m.get("settings") or {}, want)
        if not diff:
            return m
        raise DataError(f"{root} holds shards written with other settings ({'; '.join(diff)}); "
                        "use another data.root or overwrite")
    if root.exists() and root.is_dir() and any(root.iterdir()) and not overwrite:
        raise DataError(f"data.root {root} is not empty and has no {MANIFEST}; "
                        "use an empty folder or overwrite")
    return _build(cfg, root, shard_bytes=shard_bytes, name=name, overwrite=overwrite, progress=progress)
