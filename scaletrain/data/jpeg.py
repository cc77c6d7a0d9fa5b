"""Encoded-image shards at ImageNet-like sizes: decode + random-resized crop + flip in the loader
workers, straight into one uint8 batch array; float conversion on the device.

Per sample (in a worker process):
  1. read the header only (PIL is lazy) to get the full size W x H;
  2. pick the crop box: random-resized crop in training (Szegedy et al. 2015, "Going Deeper with
     Convolutions", sec. 6: area fraction in `scale`, log-uniform aspect ratio in `ratio`, 10
     tries, then a centre crop), or the standard evaluation crop (the centre square of 0.875 of
     the shorter side, i.e. resize to side/0.875 then centre crop);
  3. JPEG DCT-domain downscaling (`Image.draft`): the decoder skips up to 7/8 of the work when
     the crop is much larger than the output (the usual case for ImageNet photos at 224 or less);
  4. one `Image.resize(box=...)` does crop and resize together (bilinear, area-aware when
     reducing); a flip is a `transpose`;
  5. the pixels are written into a preallocated (N, S, S, 3) uint8 array: no per-sample tensors
     and no collate (4x less inter-process traffic than float32).
The random choices of a sample come from a generator seeded by (seed, epoch, sample key)
(augment.sample_random), so they do not depend on the rank, worker or batch it lands in.

In the training process, `device_batches` turns uint8 NHWC batches into float [0, 1] NCHW on the
device: pinned host memory and a non-blocking copy on a side CUDA stream one batch ahead (the
copy of batch k+1 overlaps the step on batch k), conversion on the GPU. On CPU it converts in place.
"""
from __future__ import annotations

import io
import math
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .augment import sample_random

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def read_raw(url: str, on_error: str = "raise") -> Iterator[Tuple[str, bytes, int]]:
    """(key, encoded image bytes, label) of every sample of a shard, undecoded."""
    import webdataset as wds
    for s in wds.tarfile_samples([{"url": url}]):
        img = next((v for k, v in s.items() if k.rsplit(".", 1)[-1].lower() in IMAGE_EXTS), None)
        cls = s.get("cls", s.get("label"))
        if img is None or cls is None:
            msg = (f"shard {url}: sample '{s.get('__key__')}' has members "
                   f"{sorted(k for k in s if not k.startswith('__'))}, expected an image (jpg|png|webp) and cls")
            if on_error != "skip":
                raise DataError(msg)
            continue
        yield s["__key__"], img, int(cls)


def rrc_box(w: int, h: int, u: np.ndarray, scale: Sequence[float], ratio: Sequence[float]):
    """(left, top, width, height) of a random-resized crop from 40 uniforms `u` (10 tries x 4)."""
    area, lr = w * h, (math.log(ratio[0]), math.log(ratio[1]))
    for t in range(10):
        a = area * (scale[0] + (scale[1] - scale[0]) * u[4 * t])
        ar = math.exp(lr[0] + (lr[1] - lr[0]) * u[4 * t + 1])
        cw, ch = int(round(math.sqrt(a * ar))), int(round(math.sqrt(a / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(u[4 * t + 2] * (w - cw + 1)), int(u[4 * t + 3] * (h - ch + 1)), cw, ch
    r = w / h  # fallback: the largest centre crop with the aspect ratio clamped into `ratio`
    cw, ch = (w, int(round(w / ratio[0]))) if r < ratio[0] else \
        ((int(round(h * ratio[1])), h) if r > ratio[1] else (w, h))
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def center_box(w: int, h: int, frac: float = 0.875):
    side = max(1, int(round(min(w, h) * frac)))
    return (w - side) // 2, (h - side) // 2, side, side


def decode_crop(data: bytes, size: int, box_fn, flip: bool) -> np.ndarray:
    """Decode one image into a size x size x 3 uint8 array through the crop `box_fn(w, h)`."""
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        left, top, cw, ch = box_fn(w, h)
        # DCT scaling: ask for an image at least size/crop times the full size (JPEG only)
        im.draft("RGB", (max(1, math.ceil(w * size / cw)), max(1, math.ceil(h * size / ch))))
        fx, fy = w / im.size[0], h / im.size[1]
        if im.mode != "RGB":
            im = im.convert("RGB")
        box = (left / fx, top / fy, (left + cw) / fx, (top + ch) / fy)
        out = im.resize((size, size), Image.BILINEAR, box=box, reducing_gap=None)
        if flip:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        return np.asarray(out)


def decode_batch(items: Sequence[Tuple[str, bytes, int]], size: int, *, train: bool, seed: int, epoch: int,
                 scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 hflip: bool = True) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """uint8 (N, size, size, 3) pixels, int64 labels and keys of one batch of encoded samples."""
    keys = [k for k, _, _ in items]
    out = np.empty((len(items), size, size, 3), np.uint8)
    seeds = sample_random(keys, seed, epoch, 3) if train else None
    for i, (key, data, _) in enumerate(items):
        if train:
            u = np.random.default_rng(int(seeds[i])).random(41)
            box_fn = lambda w, h, u=u: rrc_box(w, h, u, scale, ratio)  # noqa: E731
            flip = hflip and u[40] < 0.5
        else:
            box_fn, flip = center_box, False
        try:
            out[i] = decode_crop(data, size, box_fn, flip)
        except Exception as e:  # a damaged image: name it
            raise DataError(f"sample '{key}': cannot decode image ({type(e).__name__}: {e})") from None
    y = torch.tensor([lab for _, _, lab in items], dtype=torch.int64)
    return torch.from_numpy(out), y, keys


def to_float(x: torch.Tensor, device: Optional[torch.device] = None, non_blocking: bool = False) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [0, 1] on `device` (the conversion runs there)."""
    x = x.to(device or x.device, non_blocking=non_blocking)
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def device_batches(batches: Iterator, device: Optional[torch.device]) -> Iterator:
    """(x_uint8_nhwc, y, *rest) -> (x_float_nchw, y, *rest) on `device`, one batch ahead on CUDA."""
    if device is None or torch.device(device).type != "cuda":
        for x, y, *rest in batches:
            yield ((to_float(x) if x.dtype == torch.uint8 else x), y, *rest)
        return
    stream = torch.cuda.Stream(device)
    pending = None
    for x, y, *rest in batches:
        with torch.cuda.stream(stream):  # copy k+1 while the default stream computes on k
            xd = to_float(x.pin_memory(), device, True) if x.dtype == torch.uint8 else x.to(device, non_blocking=True)
            nxt = (xd, y.pin_memory().to(device, non_blocking=True), *rest)
        if pending is not None:
            yield pending
        torch.cuda.current_stream(device).wait_stream(stream)
        for t in nxt[:2]:
            t.record_stream(torch.cuda.current_stream(device))
        pending = nxt
    if pending is not None:
        yield pending
