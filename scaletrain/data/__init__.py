"""Data layer: WebDataset shards written once, streamed by every job.

    prepare(cfg.data)                       -> manifest (writes shards once; idempotent, atomic)
    train_loader(cfg.data, rank=, world_size=, epoch=, image_size=, seed=) -> ShardLoader
    eval_loader(cfg.data, split="test", rank=, world_size=, batch_size=)   -> ShardLoader
    dataset_info(cfg.data)                  -> {num_classes, image_shape, num_samples, ...}

Loaders yield `(x, y)`: x float32 NCHW in [0, 1], y int64. See docs/data.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import DataError
from .loader import ShardLoader
from .reader import clear_cache, resolve_urls, verify_shards
from .shards import MANIFEST, prepare, read_manifest, write_dataset

__all__ = ["prepare", "train_loader", "eval_loader", "dataset_info", "ShardLoader", "write_dataset",
           "read_manifest", "clear_cache"]


def _manifest_or_none(cfg) -> Optional[Dict[str, Any]]:
    root = Path(cfg.root)
    if (root / MANIFEST).exists():
        return read_manifest(root)
    if cfg.source != "shards":
        raise DataError(f"no shards in data.root={root}: call scaletrain.data.prepare(cfg.data) "
                        f"(or `scaletrain shards`) first")
    return None


def _hwc(manifest) -> Optional[tuple]:
    if not manifest or "image_shape" not in manifest:
        return None
    c, h, w = manifest["image_shape"]
    return (h, w, c)


def _first_sample_hwc(url: str):
    """Shape (H, W, C) of the first sample of a local shard (None if unreadable: reading reports it)."""
    import itertools

    from .reader import Stats, _is_local, read_shard

    if not _is_local(url):
        return None
    try:
        first = next(itertools.islice(read_shard(url, expected=None, hwc=None, on_error="raise",
                                                 stats=Stats(), use_cache=False), 1), None)
    except DataError:
        return None
    return None if first is None else first[1].shape


def _build(cfg, split: str, **kw) -> ShardLoader:
    manifest = _manifest_or_none(cfg)
    urls, counts, shas = resolve_urls(cfg, split, manifest)
    verify_shards(urls, shas, cfg.on_error)
    aug = cfg.augment
    if aug.crop_size:  # encoded images of varying size, decoded at the crop in the workers (jpeg.py)
        return ShardLoader(urls, counts, on_error=cfg.on_error, shuffle_buffer=cfg.shuffle_buffer,
                           workers=cfg.workers, split=split, rrc_scale=list(aug.rrc_scale),
                           rrc_ratio=list(aug.rrc_ratio), **kw)
    kw.pop("crop_size", None)
    hwc = _hwc(manifest)
    # shape check before training starts: the first image must have the expected
    # shape (the manifest's; without one, it sets the shape every later image must match)
    seen = _first_sample_hwc(urls[0])
    if hwc is None:
        hwc = seen
    elif seen is not None and tuple(seen) != tuple(hwc):
        raise DataError(f"shard {urls[0]}: images have shape (H, W, C) {tuple(seen)}, "
                        f"the manifest in data.root={cfg.root} says {tuple(hwc)}")
    return ShardLoader(urls, counts, image_hwc=hwc, on_error=cfg.on_error,
                       shuffle_buffer=cfg.shuffle_buffer, workers=cfg.workers, split=split, **kw)


def train_loader(cfg, *, rank: int = 0, world_size: int = 1, epoch: int = 0,
                 image_size: Optional[int] = None, seed: Optional[int] = None, device=None) -> ShardLoader:
    """The training stream of this rank: shuffled, augmented, `cfg.mode` exact or resampled.

    `image_size` overrides `cfg.augment.resize` (a later stage may change
    resolution). Iterating it again continues with the next epoch (reshuffled);
    `set_epoch(e)` jumps to epoch e. In exact mode on several ranks, ranks with
    fewer batches pad with samples of a second pass so that all ranks yield
    the same number of batches (see docs/data.md). With `data.augment.crop_size` (encoded images
    of any size) `image_size` is the side of the random-resized crop, and `device` receives the
    batches (uint8 to float conversion there; pinned and prefetched on CUDA)."""
    aug = cfg.augment
    crop = (image_size or aug.crop_size) if aug.crop_size else None
    return _build(cfg, "train", batch_size=cfg.batch_size, mode=cfg.mode, shuffle=True,
                  seed=cfg.seed if seed is None else seed, epoch=epoch, rank=rank, world_size=world_size,
                  epoch_size=cfg.epoch_size, crop_padding=aug.crop_padding, hflip=aug.hflip,
                  resize=None if crop else (image_size if image_size is not None else aug.resize),
                  pad_ranks=True, crop_size=crop, device=device)


def eval_loader(cfg, split: str = "test", *, rank: int = 0, world_size: int = 1,
                batch_size: Optional[int] = None, image_size: Optional[int] = None) -> ShardLoader:
    """Exact mode, no shuffle, no random augmentation, deterministic order: the
    shards of `split` in manifest order, rank r reading shards r, r+world_size, ...
    Images are resized to `image_size` (default `cfg.augment.resize`) if set."""
    if split not in ("train", "val", "test"):
        raise DataError(f"unknown split '{split}': expected train, val or test")
    crop = (image_size or cfg.augment.crop_size) if cfg.augment.crop_size else None
    return _build(cfg, split, batch_size=batch_size or cfg.eval_batch_size, mode="exact", shuffle=False,
                  seed=0, epoch=0, rank=rank, world_size=world_size, crop_size=crop,
                  resize=None if crop else (image_size if image_size is not None else cfg.augment.resize))


def dataset_info(cfg) -> Dict[str, Any]:
    """num_classes, image_shape (C, H, W), class_names and per-split sample counts, from the manifest."""
    manifest = _manifest_or_none(cfg)
    if manifest is None and cfg.augment.crop_size:  # e.g. ImageNet shards on object storage
        side = int(cfg.augment.crop_size)
        return {"name": None, "num_classes": 0, "class_names": [], "image_shape": (3, side, side),
                "num_samples": {}, "num_shards": {}}
    if manifest is None or "image_shape" not in manifest:
        raise DataError(f"data.source=shards: dataset_info needs a {MANIFEST} in data.root={cfg.root}")
    return {
        "name": manifest.get("name"),
        "num_classes": int(manifest["num_classes"]),
        "class_names": list(manifest.get("class_names", [])),
        "image_shape": tuple(manifest["image_shape"]),
        "num_samples": {s: int(v["num_samples"]) for s, v in manifest["splits"].items()},
        "num_shards": {s: len(v["shards"]) for s, v in manifest["splits"].items()},
        **{f"num_{s}": int(v["num_samples"]) for s, v in manifest["splits"].items()},
    }
