"""`ShardLoader`: the per-rank loader over WebDataset shards (see reader.py for the splitting).

Resume guarantee (`state_dict` / `load_state_dict`): the state is the epoch
and the number of batches each loader worker has delivered. Loading it into
a loader with the same (seed, world_size, workers, batch_size, mode) and the
same shards makes the next iteration yield exactly the not-yet-delivered
batches of that epoch, bit-identical: nothing is repeated or skipped. With
workers=0 the order is identical too; with workers>0 the same batches come
in the loader's round-robin order restarted at worker 0. The skipped prefix
is re-read (cheap: no collation or augmentation). If the layout changed
(e.g. a different world size), the epoch restarts with that layout after
skipping the same fraction of it: in resampled mode this is statistically
equivalent; in exact mode samples of the interrupted epoch may repeat or be
skipped (a warning says so).
"""
from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import DataError
from .augment import augment_batch
from .jpeg import decode_batch, device_batches, read_raw
from .reader import Stats, collate, read_shard, shuffle_buffer

log = logging.getLogger("scaletrain.data")


class _SlotStream(torch.utils.data.IterableDataset):
    """Batches of one (rank, worker) slot. With workers>0 torch runs one copy per worker."""

    def __init__(self, loader: "ShardLoader"):
        super().__init__()
        self.L = loader
        self.skip: List[int] = [0]

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w = 0 if info is None else info.id
        yield from self.L._worker_batches(w, self.skip[w] if w < len(self.skip) else 0)


class ShardLoader:
    """Iterable of `(x, y)` batches for one rank; see module and reader.py docs."""

    def __init__(self, urls: Sequence[str], counts: Optional[Sequence[int]], *, batch_size: int,
                 mode: str = "exact", shuffle: bool = True, seed: int = 0, epoch: int = 0,
                 rank: int = 0, world_size: int = 1, workers: int = 0, shuffle_buffer: int = 2000,
                 epoch_size: Optional[int] = None, on_error: str = "raise",
                 image_hwc: Optional[Tuple[int, int, int]] = None, crop_padding: int = 0,
                 hflip: bool = False, resize: Optional[int] = None, drop_last: bool = False,
                 split: str = "train", pad_ranks: bool = False, crop_size: Optional[int] = None,
                 rrc_scale: Sequence[float] = (0.08, 1.0), rrc_ratio: Sequence[float] = (3 / 4, 4 / 3),
                 device: Optional[torch.device] = None):
        if mode not in ("exact", "resampled"):
            raise DataError(f"key 'data.mode': unknown mode '{mode}' (exact | resampled)")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in [0, world_size={world_size})")
        if batch_size <= 0:
            raise DataError(f"batch size must be > 0, got {batch_size}")
        self.urls, self.counts = list(urls), (list(counts) if counts is not None else None)
        self.batch_size, self.mode, self.shuffle, self.seed = int(batch_size), mode, shuffle, int(seed)
        self.rank, self.world_size, self.workers = int(rank), int(world_size), int(workers)
        self.buffer, self.on_error, self.image_hwc = int(shuffle_buffer), on_error, image_hwc
        self.crop_padding, self.hflip, self.resize = int(crop_padding), bool(hflip), resize
        self.drop_last, self.split, self.pad_ranks = drop_last, split, bool(pad_ranks)
        self.epoch = int(epoch)
        # encoded images of any size decoded to crop_size x crop_size in the workers (jpeg.py)
        self.crop_size, self.rrc_scale, self.rrc_ratio = crop_size, tuple(rrc_scale), tuple(rrc_ratio)
        self.device = device
        self._consumed = [0] * max(1, self.workers)  # batches delivered per worker, this epoch
        self._skipped: Dict[str, int] = {"skipped_shards": 0, "skipped_samples": 0}
        slots = self.world_size * max(1, self.workers)
        if len(self.urls) < slots and mode == "exact":
            raise DataError(f"{split} split has {len(self.urls)} shard(s) but {self.world_size} rank(s) x "
                            f"{max(1, self.workers)} worker(s) = {slots} readers need at least one each; "
                            "write smaller shards (data.shard_samples) or use fewer workers")
        if mode == "resampled":
            if epoch_size is None:
                if self.counts is None:
                    raise DataError("key 'data.epoch_size': needed in resampled mode when the shards "
                                    "have no manifest with sample counts")
                epoch_size = sum(self.counts)
            if epoch_size <= 0:
                raise DataError(f"key 'data.epoch_size': must be > 0, got {epoch_size}")
        self.epoch_size = epoch_size
        if mode == "exact" and pad_ranks and self.world_size > 1 and self.counts is None:
            warnings.warn(f"scaletrain.data: {split}: exact mode on {self.world_size} ranks without a manifest "
                          "(no sample counts): ranks may yield different numbers of batches and hang a "
                          "collective; use data.mode=resampled", stacklevel=3)

    # ----------------------------------------------------------- layout
    def _worker_shards(self, epoch: int, w: int, rank: Optional[int] = None) -> List[int]:
        """Shard indices read by worker `w` of `rank` (default: this rank) in exact mode."""
        order = np.arange(len(self.urls))
        if self.shuffle:  # identical on all ranks: seeded by (seed, epoch) only
            order = np.random.default_rng([self.seed, epoch, 101]).permutation(len(self.urls))
        mine = order[(self.rank if rank is None else rank)::self.world_size]
        return [int(i) for i in mine[w::max(1, self.workers)]]

    def _natural_batches(self, rank: int, w: int) -> int:
        """Batches of one pass over the shards of worker `w` of `rank` (exact mode, counts known)."""
        n = sum(self.counts[i] for i in self._worker_shards(self.epoch, w, rank))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _worker_quota(self, w: int) -> Optional[int]:
        """Batches worker `w` yields this epoch (None = unknown)."""
        W = max(1, self.workers)
        if self.mode == "resampled":
            nb = self.batches_per_rank_resampled()
            return nb // W + (1 if w < nb % W else 0)
        if self.counts is None:
            return None
        natural = self._natural_batches(self.rank, w)
        if not self.pad_ranks or self.world_size == 1:
            return natural
        # pad to the largest rank's batch count (as torch's DistributedSampler pads):
        # the extra batches go to this rank's workers round-robin
        totals = [sum(self._natural_batches(r, v) for v in range(W)) for r in range(self.world_size)]
        extra = max(totals) - totals[self.rank]
        return natural + extra // W + (1 if w < extra % W else 0)

    def batches_per_rank_resampled(self) -> int:
        return max(1, math.ceil(self.epoch_size / (self.world_size * self.batch_size)))

    def __len__(self) -> int:
        q = [self._worker_quota(w) for w in range(max(1, self.workers))]
        if any(v is None for v in q):
            raise TypeError("length unknown: shards without a manifest (no per-shard sample counts)")
        return sum(q)

    # ----------------------------------------------------------- streams
    def _read(self, i: int, stats: Stats) -> Iterator:
        if self.crop_size:  # undecoded: decoding happens per batch, at the crop (jpeg.py)
            return read_raw(self.urls[i], self.on_error)
        return read_shard(self.urls[i], expected=self.counts[i] if self.counts else None,
                          hwc=self.image_hwc, on_error=self.on_error, stats=stats)

    def _samples(self, w: int, stats: Stats) -> Iterator:
        if self.mode == "exact":
            for i in self._worker_shards(self.epoch, w):
                yield from self._read(i, stats)
            return
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, w, 202])
        empty = 0
        while True:  # resampled: shards with replacement, forever (the quota stops it)
            i = int(rng.integers(len(self.urls)))
            n = 0
            for item in self._read(i, stats):
                n += 1
                yield item
            empty = 0 if n else empty + 1
            if empty > 3 * len(self.urls) + 10:
                raise DataError(f"{self.split}: no readable samples in {len(self.urls)} shard(s) "
                                f"(first: {self.urls[0]})")

    def _worker_batches(self, w: int, skip: int) -> Iterator[Dict[str, Any]]:
        stats = Stats()
        quota = self._worker_quota(w)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, w, 303])

        def one_pass():
            items = self._samples(w, stats)
            return shuffle_buffer(items, self.buffer, rng) if self.shuffle else items

        # exact mode, several ranks: when this worker's pass ends before its quota
        # (padding, or samples lost to on_error=skip) it starts another pass over
        # its own shards, so every rank yields the same number of batches
        pad = self.mode == "exact" and self.pad_ranks and self.world_size > 1 and quota is not None
        done, batch = 0, []
        reported = {"skipped_shards": 0, "skipped_samples": 0}

        def delta():
            d = {k: v - reported[k] for k, v in stats.as_dict().items()}
            reported.update(stats.as_dict())
            return d

        def emit(b):
            if self.crop_size:
                x, y, keys = decode_batch(b, int(self.crop_size), train=self.split == "train" and self.shuffle,
                                          seed=self.seed, epoch=self.epoch, scale=self.rrc_scale,
                                          ratio=self.rrc_ratio, hflip=self.hflip)
                return {"x": x, "y": y, "keys": keys, "worker": w, "stats": delta()}
            x, y, keys = collate(b)
            x = augment_batch(x, keys, seed=self.seed, epoch=self.epoch, crop_padding=self.crop_padding,
                              hflip=self.hflip, resize=self.resize)
            return {"x": x, "y": y, "keys": keys, "worker": w, "stats": delta()}

        source, passes = one_pass(), 1
        while True:
            n_items, cut = 0, False
            for item in source:
                if quota is not None and done >= quota:
                    cut = True
                    break
                n_items += 1
                batch.append(item)
                if len(batch) == self.batch_size:
                    if done >= skip:
                        yield emit(batch)
                    done += 1
                    batch = []
            if cut:
                break
            if pad and done + (1 if batch else 0) < quota:  # a further pass completes the quota
                if n_items == 0:
                    raise DataError(f"{self.split}: no readable samples in the shards of rank {self.rank} "
                                    f"worker {w} (pass {passes})")
                source, passes = one_pass(), passes + 1
                continue
            if batch and not self.drop_last and (quota is None or done < quota):
                if done >= skip:
                    yield emit(batch)
                done += 1
            break
        yield {"worker": w, "stats": delta(), "end": True}

    # ----------------------------------------------------------- iteration
    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self._consumed = [0] * max(1, self.workers)

    def _raw(self) -> Iterator[Dict[str, Any]]:
        skip = list(self._consumed)
        if self.workers <= 0:
            yield from self._worker_batches(0, skip[0])
            return
        ds = _SlotStream(self)
        ds.skip = skip
        dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=self.workers,
                                         persistent_workers=False)
        yield from dl

    def iter_with_keys(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor, List[str]]]:
        """Like iterating the loader, but also yields each batch's sample keys. uint8 batches of
        encoded images become float [0, 1] NCHW on `device` (pinned, one batch ahead on CUDA);
        a batch counts as delivered (state_dict) when it is handed out, not when prefetched."""
        for x, y, keys, w in device_batches(self._batches(), self.device):
            self._consumed[w] += 1
            yield x, y, keys
        if self._skipped["skipped_shards"] or self._skipped["skipped_samples"]:
            log.warning("%s epoch %d done: skipped %d damaged shard(s), %d sample(s) so far (data.on_error=skip)",
                        self.split, self.epoch, self._skipped["skipped_shards"], self._skipped["skipped_samples"])
        self.epoch += 1
        self._consumed = [0] * max(1, self.workers)

    def _batches(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor, List[str], int]]:
        for item in self._raw():
            for k, v in item["stats"].items():
                self._skipped[k] += v
            if item.get("end"):
                continue
            yield item["x"], item["y"], item["keys"], item["worker"]

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for x, y, _ in self.iter_with_keys():
            yield x, y

    @property
    def skipped(self) -> Dict[str, int]:
        """Damaged shards / samples skipped so far (data.on_error=skip), summed over epochs."""
        return dict(self._skipped)

    # ----------------------------------------------------------- resume
    def _layout(self) -> Dict[str, Any]:
        return {"seed": self.seed, "world_size": self.world_size, "workers": self.workers,
                "batch_size": self.batch_size, "mode": self.mode, "num_shards": len(self.urls)}

    def state_dict(self) -> Dict[str, Any]:
        return {"epoch": self.epoch, "consumed": list(self._consumed), "skipped": dict(self._skipped),
                **self._layout()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self._skipped = dict(state.get("skipped", self._skipped))
        consumed = [int(c) for c in state["consumed"]]
        same = all(state.get(k) == v for k, v in self._layout().items())
        if same:
            self._consumed = consumed
            return
        # different layout: skip the same fraction of this rank's epoch
        old_batches = sum(consumed) * int(state.get("world_size", 1)) * int(state.get("batch_size", 1))
        try:
            total = len(self)
        except TypeError:
            total = None
        mine = old_batches // (self.world_size * self.batch_size)
        if total is not None:
            mine = min(mine, total)
        W = max(1, self.workers)
        self._consumed = [mine // W + (1 if w < mine % W else 0) for w in range(W)]
        if self.mode == "exact" and sum(consumed):
            warnings.warn("scaletrain.data: resuming an exact-mode epoch with a different loader layout "
                          f"({state.get('world_size')}x{state.get('workers')} -> "
                          f"{self.world_size}x{self.workers}); samples of this epoch may repeat or be skipped")
