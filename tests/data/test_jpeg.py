"""Encoded-image shards of varying sizes: decode at the crop in loader workers (data/jpeg.py)."""
import io

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from scaletrain.config.schema import AugmentConfig, DataConfig
from scaletrain.data import dataset_info, eval_loader, train_loader
from scaletrain.data.jpeg import center_box, decode_crop, rrc_box


@pytest.fixture(scope="module")
def jpeg_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpeg")
    rng = np.random.default_rng(0)
    urls, raw = [], {}
    for s in range(4):
        url = str(root / f"train-{s:06d}.tar")
        with wds.TarWriter(url) as sink:
            for i in range(s * 12, s * 12 + 12):
                w, h = int(rng.integers(40, 90)), int(rng.integers(40, 90))
                a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                buf = io.BytesIO()
                Image.fromarray(a).save(buf, format="JPEG" if i % 3 else "PNG", quality=95)
                raw[f"{i:06d}"] = buf.getvalue()
                sink.write({"__key__": f"{i:06d}", "jpg" if i % 3 else "png": buf.getvalue(), "cls": str(i % 5)})
        urls.append(url)
    return urls, raw


def _cfg(urls, **kw):
    return DataConfig(source="shards", train_urls="::".join(urls), test_urls="::".join(urls), batch_size=8,
                      shuffle_buffer=0, augment=AugmentConfig(crop_size=24, hflip=True), **kw)


def test_rrc_box_stays_inside_and_follows_the_scale_range():
    rng = np.random.default_rng(1)
    for _ in range(500):
        w, h = int(rng.integers(20, 600)), int(rng.integers(20, 600))
        left, top, cw, ch = rrc_box(w, h, rng.random(41), (0.08, 1.0), (3 / 4, 4 / 3))
        assert 0 <= left and 0 <= top and left + cw <= w and top + ch <= h and cw > 0 and ch > 0
        assert cw * ch >= 0.07 * w * h or cw in (w,) or ch in (h,)     # a try, or the fallback
    assert center_box(100, 80) == (15, 5, 70, 70)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_decodes_variable_sizes_to_float_batches(jpeg_shards, workers):
    urls, _ = jpeg_shards
    L = train_loader(_cfg(urls, workers=workers))
    seen = {}
    for x, y, keys in L.iter_with_keys():
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 24, 24) and 0 <= x.min() and x.max() <= 1
        for k, xi in zip(keys, x):
            seen[k] = xi
    assert len(seen) == 48
    # crops depend on (seed, epoch, key) only: the same with another worker count
    L1 = train_loader(_cfg(urls, workers=0 if workers else 2))
    for x, y, keys in L1.iter_with_keys():
        for k, xi in zip(keys, x):
            assert torch.equal(seen[k], xi), k
    info = dataset_info(_cfg(urls))                                  # no manifest: the crop sets the shape
    assert info["image_shape"] == (3, 24, 24)


def test_eval_crop_is_the_centre_crop_and_stage_side_changes_the_crop(jpeg_shards):
    urls, raw = jpeg_shards
    x, y, keys = next(eval_loader(_cfg(urls)).iter_with_keys())
    ref = decode_crop(raw[keys[0]], 24, center_box, flip=False)
    assert torch.equal(x[0], torch.from_numpy(ref).permute(2, 0, 1).float() / 255)
    x16, _ = next(iter(train_loader(_cfg(urls), image_size=16)))
    assert x16.shape[1:] == (3, 16, 16)                              # a stage's image_size is the crop side
