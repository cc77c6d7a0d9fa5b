"""The WebDataset read pipeline: split -> read -> decode -> shuffle -> batch -> augment.

One *slot* is one (rank, loader worker) pair; every slot runs its own
pipeline, built from explicit `rank`, `world_size`, `worker`, `workers`
(never from environment variables), so the split is exactly what the caller
asked for, under torchrun, Ray or plain multiprocessing alike.

exact mode (finite epochs, evaluation)
    Shards are split first by rank then by worker -- the same
    `islice(shards, rank, None, world_size)` then `islice(., worker, None,
    workers)` as WebDataset's `split_by_node` / `split_by_worker`
    (webdataset/shardlists.py) -- after an optional per-epoch shard
    permutation that all ranks compute identically. Every sample is read
    exactly once per epoch across all ranks and workers. Ranks can get
    different batch counts (different shard sizes), so multi-rank *training*
    should use resampled mode (WebDataset FAQ: "uneven batch counts hang
    collectives").
resampled mode (training at scale)
    Each slot draws shards with replacement from its own seeded generator
    (like `wds.ResampledShards`) and stops after a fixed number of full
    batches: ceil(epoch_size / (world_size * batch_size)) per rank, split
    over workers. Every rank yields the same number of batches, so
    collectives never wait on a missing batch. This is `with_epoch` applied
    on the loader side (not per worker), as the WebDataset docs advise.

Determinism: for a given (seed, epoch, world_size, workers, batch_size) the
batches are bit-identical between runs. Augmentation is seeded per sample
key (augment.py) and does not depend on the layout at all.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import DataError

log_prefix = "scaletrain.data"


# ------------------------------------------------------------------ URLs
def _is_local(url: str) -> bool:
    return not (url.startswith("pipe:") or "://" in url) or url.startswith("file://")


def _local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def expand(pattern: str) -> List[str]:
    """Brace patterns (`train-{000000..000031}.tar`), `::`-separated lists, and
    local globs (`data/x/train-*.tar`), via WebDataset's own expander."""
    from webdataset.shardlists import expand_urls

    out: List[str] = []
    for u in expand_urls(pattern):
        if _is_local(u) and any(ch in u for ch in "*?["):
            import glob

            out.extend(sorted(glob.glob(_local_path(u))))
        else:
            out.append(u)
    return out


def resolve_urls(cfg, split: str, manifest: Optional[Dict[str, Any]]):
    """Return (urls, per-shard sample counts or None, per-shard sha256 or None)."""
    pattern = {"train": getattr(cfg, "train_urls", None), "test": getattr(cfg, "test_urls", None)}.get(split)
    entries = None
    if manifest is not None and split in manifest.get("splits", {}):
        entries = manifest["splits"][split]["shards"]
    if pattern:
        urls = expand(pattern)
        if not urls:
            raise DataError(f"no shards found for data.{split}_urls={pattern!r}")
        missing = [u for u in urls if _is_local(u) and not os.path.exists(_local_path(u))]
        if missing:
            raise DataError(f"shard not found: {missing[0]} (data.{split}_urls={pattern!r}, "
                            f"{len(missing)} of {len(urls)} missing)")
        by_name = {e["name"]: e for e in entries} if entries else {}
        names = [os.path.basename(u.rstrip("/").split()[-1]) for u in urls]
        if by_name and all(n in by_name for n in names):
            return urls, [by_name[n]["samples"] for n in names], [by_name[n]["sha256"] for n in names]
        return urls, None, None
    if entries is None:
        raise DataError(f"no shards for split '{split}': no manifest in data.root={cfg.root} "
                        f"and no data.{split}_urls")
    if not entries:
        raise DataError(f"split '{split}' has no samples in {Path(cfg.root) / 'manifest.json'} "
                        f"(check data.{'val' if split == 'val' else 'test'}_fraction)")
    urls = [str(Path(cfg.root) / e["name"]) for e in entries]
    for u in urls:
        if not os.path.exists(u):
            raise DataError(f"shard listed in the manifest is missing: {u}")
    return urls, [e["samples"] for e in entries], [e["sha256"] for e in entries]


_VERIFIED: Dict[Tuple[str, int, int], str] = {}


def verify_shards(urls: Sequence[str], shas: Optional[Sequence[str]], on_error: str) -> int:
    """Check local shards against the manifest's sha256 (cached per file
    size+mtime, so once per process). Returns the number of mismatches (only
    non-zero with on_error=skip, which warns instead of raising)."""
    if not shas:
        return 0
    bad = 0
    for url, want in zip(urls, shas):
        if not _is_local(url):
            continue  # remote shards are not hashed; reading checks counts and decoding
        path = _local_path(url)
        st = os.stat(path)
        sig = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
        got = _VERIFIED.get(sig)
        if got is None:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            got = _VERIFIED[sig] = h.hexdigest()
        if got != want:
            msg = (f"shard {path}: sha256 {got[:16]}... does not match the manifest ({want[:16]}...); "
                   "the shard is corrupt or was changed after writing")
            if on_error != "skip":
                raise DataError(msg)
            warnings.warn(f"{log_prefix}: {msg} (data.on_error=skip: reading it anyway)", stacklevel=3)
            bad += 1
    return bad


# ---------------------------------------------------------------- decoding
_NPY_HEADERS: Dict[bytes, Tuple[Tuple[int, ...], np.dtype, int]] = {}


def decode_npy(data: bytes) -> np.ndarray:
    """np.load, with the parsed header memoised: all samples of a dataset share
    one header, and parsing it (ast.literal_eval) costs more than the pixels.
    Format: https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html"""
    if data[:6] == b"\x93NUMPY" and data[6] == 1:
        hlen = int.from_bytes(data[8:10], "little")
        head = data[:10 + hlen]
        parsed = _NPY_HEADERS.get(head)
        if parsed is None:
            d = np.lib.format.read_array_header_1_0(io.BytesIO(data[8:10 + hlen]))
            shape, fortran, dtype = d
            if fortran or dtype.hasobject:
                return np.load(io.BytesIO(data), allow_pickle=False)
            parsed = _NPY_HEADERS[head] = (shape, dtype, 10 + hlen)
        shape, dtype, off = parsed
        n = int(np.prod(shape)) if shape else 1
        if len(data) - off != n * dtype.itemsize:
            raise ValueError(f"npy payload of {len(data) - off} bytes, header says {n * dtype.itemsize}")
        return np.frombuffer(data, dtype, count=n, offset=off).reshape(shape)
    return np.load(io.BytesIO(data), allow_pickle=False)


def decode_image(data: bytes, ext: str) -> np.ndarray:
    if ext == "npy":
        a = decode_npy(data)
    elif ext == "png" or ext in ("jpg", "jpeg"):
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            a = np.asarray(im)
    else:
        raise ValueError(f"unknown image member '.img.{ext}'")
    if a.dtype != np.uint8:
        raise ValueError(f"image dtype {a.dtype}, expected uint8")
    return a[..., None] if a.ndim == 2 else a


def decode_sample(s: Dict[str, Any]) -> Tuple[str, np.ndarray, int]:
    img_key = next((k for k in s if k.startswith("img.")), None)
    if img_key is None or "cls" not in s:
        raise ValueError(f"sample has members {sorted(k for k in s if not k.startswith('__'))}, "
                         "expected img.npy|img.png and cls")
    return s["__key__"], decode_image(s[img_key], img_key[4:]), int(s["cls"])


class Stats:
    """Counts of skipped input, reported with batches to the main process."""

    def __init__(self):
        self.skipped_shards = 0
        self.skipped_samples = 0

    def as_dict(self):
        return {"skipped_shards": self.skipped_shards, "skipped_samples": self.skipped_samples}


# Decoded-sample cache: a local shard decoded once per process is kept (up
# to SCALETRAIN_DATA_CACHE_MB, default 1024 MB) keyed by path, size and
# mtime, so later epochs skip tar parsing and decoding.
_CACHE: Dict[Tuple[str, int, int], List[Tuple[str, np.ndarray, int]]] = {}
_CACHE_BYTES = [0]


def _cache_budget() -> int:
    return int(float(os.environ.get("SCALETRAIN_DATA_CACHE_MB", "1024")) * 2**20)


def read_shard(url: str, *, expected: Optional[int], hwc: Optional[Tuple[int, int, int]], on_error: str,
               stats: Stats, use_cache: bool = True) -> Iterator[Tuple[str, np.ndarray, int]]:
    """Yield (key, uint8 HWC image, label) of one shard through WebDataset's tar reader."""
    import webdataset as wds

    sig = None
    if use_cache and _is_local(url):
        st = os.stat(_local_path(url))
        sig = (os.path.abspath(_local_path(url)), st.st_size, st.st_mtime_ns)
        if sig in _CACHE:
            yield from _CACHE[sig]
            return
    items: List[Tuple[str, np.ndarray, int]] = []
    n = 0
    damaged = None
    if _is_local(url):
        # Python's tarfile (and so WebDataset) ends a truncated stream silently
        # at the damage; a complete tar ends with two zero 512-byte blocks
        # (POSIX ustar), which a local file lets us check up front.
        damaged = _tar_end_problem(_local_path(url))
        if damaged is not None:
            msg = f"corrupt or truncated shard {url}: {damaged}"
            if on_error != "skip":
                raise DataError(msg)
            warnings.warn(f"{log_prefix}: skipping {msg}", stacklevel=2)
            stats.skipped_shards += 1
            stats.skipped_samples += expected or 0
            return
    samples = _plain_tar_samples(_local_path(url)) if _is_local(url) else None
    try:
        for s in (samples if samples is not None else wds.tarfile_samples([{"url": url}])):
            try:
                item = decode_sample(s)
                if hwc is not None and item[1].shape != tuple(hwc):
                    raise ValueError(f"image shape (H, W, C) {item[1].shape}, expected {tuple(hwc)}")
            except Exception as e:  # a bad sample inside an intact tar
                msg = f"shard {url}: sample '{s.get('__key__')}': {e}"
                if on_error != "skip":
                    raise DataError(msg) from None
                warnings.warn(f"{log_prefix}: skipping {msg}", stacklevel=2)
                stats.skipped_samples += 1
                damaged = damaged or "bad sample"
                continue
            n += 1
            if sig is not None:
                items.append(item)
            yield item
    except DataError:
        raise
    except Exception as e:  # tar-level damage: truncated, not a tar, unreadable
        damaged = f"{type(e).__name__}: {str(e.args[0]) if e.args else e}"
    if damaged is None and expected is not None and n != expected:
        damaged = f"read {n} samples, the manifest says {expected} (truncated?)"
    if damaged is not None and not damaged == "bad sample":
        msg = f"corrupt or truncated shard {url}: {damaged}"
        if on_error != "skip":
            raise DataError(msg)
        warnings.warn(f"{log_prefix}: skipping the rest of {msg}", stacklevel=2)
        stats.skipped_shards += 1
        if expected is not None and expected > n:
            stats.skipped_samples += expected - n
        return
    if sig is not None and damaged is None:
        size = sum(a.nbytes + 100 for _, a, _ in items)
        if _CACHE_BYTES[0] + size <= _cache_budget():
            _CACHE[sig] = items
            _CACHE_BYTES[0] += size


_META = re.compile(r"__[^/]*__($|/)")          # WebDataset's skip_meta (tariterators.py)
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # WebDataset's base_plus_ext: key, extension


def _plain_tar_samples(path: str) -> Optional[List[Dict[str, Any]]]:
    """The samples of a local uncompressed tar of plain ustar file members (what `scaletrain shards`
    writes), grouped as WebDataset groups them (`__key__` + one entry per extension), parsed straight
    from the 512-byte headers (POSIX ustar): 2-3x less CPU than Python's tarfile under WebDataset,
    which was 17 ms of every 100-sample batch in a first MNIST epoch (docs/benchmarks.md). None for
    anything else (compressed, links, long names, pax headers, damage, duplicates): WebDataset reads
    those, with its own error handling."""
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 1024 or buf[257:262] != b"ustar":
        return None
    out: List[Dict[str, Any]] = []
    cur: Optional[Dict[str, Any]] = None
    off = 0
    while off + 512 <= len(buf):
        h = buf[off:off + 512]
        if not any(h):                      # end-of-archive blocks
            break
        if h[156:157] not in (b"0", b"\0") or any(h[345:500]) or h[257:262] != b"ustar":
            return None                     # not a regular file, or a ustar name prefix
        try:
            name = h[:100].split(b"\0", 1)[0].decode("utf-8")
            size = int(h[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            return None
        if sum(h[:148]) + 256 + sum(h[156:512]) != int(h[148:156].split(b"\0", 1)[0].strip() or b"-1", 8):
            return None                     # header checksum mismatch: damage
        data = buf[off + 512:off + 512 + size]
        if len(data) != size:
            return None
        off += 512 + (size + 511) // 512 * 512
        if ("/" not in name and name.startswith("__") and name.endswith("__")) or _META.match(name):
            continue
        m = _KEY.match(name)
        if m is None:
            continue
        key, ext = m.group(1), m.group(2).lower()
        if cur is None or cur["__key__"] != key:
            if cur is not None:
                out.append(cur)
            cur = {"__key__": key, "__url__": path}
        if ext in cur:
            return None
        cur[ext] = data
    if cur is not None:
        out.append(cur)
    return out


def _tar_end_problem(path: str) -> Optional[str]:
    """Why an uncompressed tar file looks truncated, or None. Files without the
    ustar magic at offset 257 (compressed .tar.gz shards, old v7 tars) are not
    judged here; reading them checks what it can."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(512)
        if len(head) < 512 or head[257:262] != b"ustar":
            return None if len(head) else "empty file"
        if size < 1536 or size % 512:
            return f"size {size} bytes is not a whole number of 512-byte tar blocks (truncated?)"
        f.seek(size - 1024)
        if any(f.read(1024)):
            return "no end-of-archive marker (truncated?)"
    return None


def clear_cache() -> None:
    _CACHE.clear()
    _CACHE_BYTES[0] = 0
    _VERIFIED.clear()


def shuffle_buffer(items: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """Reservoir-style shuffle with a bounded buffer (as `wds.shuffle`), seeded explicitly."""
    if size <= 1:
        yield from items
        return
    buf: List[Any] = []
    for it in items:
        if len(buf) < size:
            buf.append(it)
            continue
        j = int(rng.integers(size))
        out, buf[j] = buf[j], it
        yield out
    order = rng.permutation(len(buf))
    for j in order:
        yield buf[j]


def collate(items: Sequence[Tuple[str, np.ndarray, int]]):
    keys = [k for k, _, _ in items]
    x = torch.from_numpy(np.stack([a for _, a, _ in items])).permute(0, 3, 1, 2)
    x = x.to(torch.float32).div_(255.0)
    y = torch.tensor([l for _, _, l in items], dtype=torch.int64)
    return x, y, keys
