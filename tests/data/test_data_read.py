"""Reading shards: splitting, determinism, lengths, augmentation, resume, bad input."""
from __future__ import annotations

import math
import os
import shutil

import numpy as np
import pytest
import torch

from data_helpers import all_keys, digits_cfg
from scaletrain.config import DataConfig
from scaletrain.config.schema import AugmentConfig
from scaletrain.data import ShardLoader, eval_loader, read_manifest, train_loader
from scaletrain.errors import DataError

TRAIN = 1438


def test_exact_single_rank_reads_every_sample_once_and_reshuffles(digits_root):
    cfg = digits_cfg(digits_root)
    L = train_loader(cfg)
    assert len(L) == math.ceil(TRAIN / 64) == 23
    e0 = all_keys(L)
    e1 = all_keys(L)  # iterating again = next epoch
    assert len(e0) == len(set(e0)) == TRAIN and set(e0) == set(e1)
    assert e0 != e1
    assert L.state_dict()["epoch"] == 2
    # same seed -> same stream; another seed -> another
    assert all_keys(train_loader(cfg)) == e0
    assert all_keys(train_loader(cfg, epoch=1)) == e1
    assert all_keys(train_loader(cfg, seed=7)) != e0
    batches = [(x, y) for x, y in train_loader(cfg)]
    assert len(batches) == 23 and [len(y) for _, y in batches][-1] == TRAIN - 22 * 64
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (64, 1, 8, 8) and y.dtype == torch.int64
    assert 0.0 <= x.min() and x.max() <= 1.0


@pytest.mark.parametrize("world,workers", [(2, 1), (3, 2), (2, 0)])
def test_exact_split_by_rank_and_worker_in_process(digits_root, world, workers):
    """Ranks simulated in one process; workers are real DataLoader worker processes."""
    cfg = digits_cfg(digits_root, workers=workers)
    # without padding: every sample exactly once across ranks and workers
    keys = []
    for r in range(world):
        L = train_loader(cfg, rank=r, world_size=world, epoch=3)
        L.pad_ranks = False
        keys += all_keys(L)
    assert len(keys) == len(set(keys)) == TRAIN
    # train_loader pads ranks to equal batch counts (shards of 100 and one of 38 -> uneven)
    per_rank, lens = [], []
    for r in range(world):
        L = train_loader(cfg, rank=r, world_size=world, epoch=3)
        lens.append(len(L))  # before iterating: afterwards the loader is at the next epoch
        natural = sum(L.counts[i] for v in range(max(1, workers)) for i in L._worker_shards(3, v))
        batches = [k for _, _, k in L.iter_with_keys()]
        assert len(batches) == lens[-1]
        ks = [k for b in batches for k in b]
        # padding repeats samples of the rank's own shards: its distinct keys are exactly its share
        assert len(set(ks)) == natural and len(ks) >= natural
        per_rank.append(set(ks))
    assert len(set(lens)) == 1
    assert sum(len(k) for k in per_rank) == TRAIN and set().union(*per_rank) == set(keys)
    if workers == 0:  # same union in the eval split, in fixed order
        ev = [all_keys(eval_loader(cfg, rank=r, world_size=world)) for r in range(world)]
        assert sum(len(e) for e in ev) == 359 and len(set(sum(ev, []))) == 359


def test_exact_padding_is_minimal_and_deterministic(digits_root):
    cfg = digits_cfg(digits_root, batch_size=50)
    loaders = [train_loader(cfg, rank=r, world_size=2, epoch=0) for r in range(2)]
    natural = [L._natural_batches(L.rank, 0) for L in loaders]
    assert natural[0] != natural[1]  # this epoch's shard split is uneven
    assert len(loaders[0]) == len(loaders[1]) == max(natural)
    short = int(np.argmin(natural))
    ks = all_keys(loaders[short])
    n_first = sum(loaders[short].counts[i] for i in loaders[short]._worker_shards(0, 0))
    assert len(ks) == max(natural) * 50  # padded batches are full
    assert len(set(ks[:n_first])) == n_first  # the complete first pass comes first
    assert all_keys(train_loader(cfg, rank=short, world_size=2, epoch=0)) == ks


def test_eval_order_is_deterministic_manifest_order(digits_root):
    cfg = digits_cfg(digits_root)
    a = all_keys(eval_loader(cfg, batch_size=50))
    b = all_keys(eval_loader(cfg, batch_size=128))
    assert a == b and len(a) == 359
    m = read_manifest(digits_root)
    import tarfile

    expected = []
    for s in m["splits"]["test"]["shards"]:
        with tarfile.open(digits_root / s["name"]) as t:
            expected += sorted({n.split(".")[0] for n in t.getnames()}, key=lambda n: t.getnames().index(n + ".cls"))
    assert a == expected
    # evaluation never augments even if training does
    cfg2 = digits_cfg(digits_root, augment=AugmentConfig(crop_padding=2, hflip=True))
    x1 = torch.cat([x for x, _ in eval_loader(cfg)])
    x2 = torch.cat([x for x, _ in eval_loader(cfg2)])
    assert torch.equal(x1, x2)
    L = eval_loader(cfg, batch_size=100)
    assert len(L) == sum(math.ceil(s["samples"] / 100) for s in m["splits"]["test"]["shards"]) == 4


@pytest.mark.parametrize("world", [1, 2, 3])
def test_resampled_equal_batch_counts_with_odd_sizes(digits_root, world):
    cfg = digits_cfg(digits_root, mode="resampled", epoch_size=1001, batch_size=50)
    expected = math.ceil(1001 / (world * 50))
    counts, keys0 = [], None
    for r in range(world):
        L = train_loader(cfg, rank=r, world_size=world)
        sizes = [len(y) for _, y in L]
        assert len(L) == len(sizes) == expected
        assert set(sizes) == {50}  # only full batches
        counts.append(len(sizes))
    assert len(set(counts)) == 1
    # default epoch_size = the train split size
    L = train_loader(digits_cfg(digits_root, mode="resampled", batch_size=64))
    assert len(L) == math.ceil(TRAIN / 64) == len(list(L))


def test_resampled_with_workers_equal_counts_and_deterministic(digits_root):
    cfg = digits_cfg(digits_root, mode="resampled", epoch_size=777, batch_size=32, workers=2)
    runs = []
    for r in range(2):
        L = train_loader(cfg, rank=r, world_size=2)
        k = all_keys(L)
        assert len(k) == len(L) * 32 and len(L) == math.ceil(777 / 64)
        runs.append(k)
    assert all_keys(train_loader(cfg, rank=0, world_size=2)) == runs[0]
    assert runs[0] != runs[1]
    # duplicates are possible (sampling with replacement) but the draws cover many shards
    assert len(set(runs[0])) > 200


def test_augmentation_is_per_sample_and_layout_invariant(digits_root):
    aug = AugmentConfig(crop_padding=2, hflip=True)
    base = {}
    for x, _, keys in train_loader(digits_cfg(digits_root)).iter_with_keys():
        base.update({k: xi for k, xi in zip(keys, x)})
    per_layout = []
    for world, bs in [(1, 64), (2, 17)]:
        d = {}
        for r in range(world):
            L = train_loader(digits_cfg(digits_root, augment=aug, batch_size=bs), rank=r, world_size=world)
            for x, _, keys in L.iter_with_keys():
                d.update({k: xi for k, xi in zip(keys, x)})
        per_layout.append(d)
    assert per_layout[0].keys() == per_layout[1].keys() == base.keys()
    changed = flipped_only = 0
    for k in base:
        a, b = per_layout[0][k], per_layout[1][k]
        assert torch.equal(a, b)  # same sample -> same crop/flip whatever the layout or batch
        if not torch.equal(a, base[k]):
            changed += 1
        # an augmented image is a shifted (and maybe flipped) window of the zero-padded original
        padded = torch.nn.functional.pad(base[k], (2, 2, 2, 2))
        found = any(torch.equal(a, cand[:, i:i + 8, j:j + 8])
                    for cand in (padded, padded.flip(-1)) for i in range(5) for j in range(5))
        assert found, k
    assert changed > 0.8 * len(base)
    # a different epoch gives different crops
    L = train_loader(digits_cfg(digits_root, augment=aug), epoch=1)
    d1 = {k: xi for x, _, keys in L.iter_with_keys() for k, xi in zip(keys, x)}
    assert sum(not torch.equal(d1[k], per_layout[0][k]) for k in base) > 0.5 * len(base)


def test_resize_and_image_size_override(digits_root):
    cfg = digits_cfg(digits_root, augment=AugmentConfig(resize=16))
    x, _ = next(iter(train_loader(cfg)))
    assert x.shape[1:] == (1, 16, 16) and 0 <= x.min() and x.max() <= 1
    x, _ = next(iter(train_loader(cfg, image_size=12)))
    assert x.shape[1:] == (1, 12, 12)
    x, _ = next(iter(eval_loader(cfg)))
    assert x.shape[1:] == (1, 16, 16)
    # resize is deterministic: equal to bilinear interpolation of the stored pixels
    xe, _ = next(iter(eval_loader(digits_cfg(digits_root))))
    ref = torch.nn.functional.interpolate(xe, size=(16, 16), mode="bilinear", align_corners=False).clamp(0, 1)
    torch.testing.assert_close(x, ref)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_without_repeat_or_skip(digits_root, workers):
    cfg = digits_cfg(digits_root, workers=workers, batch_size=50,
                     augment=AugmentConfig(crop_padding=1, hflip=True))
    full = [(x, keys) for x, _, keys in train_loader(cfg, epoch=2).iter_with_keys()]
    L = train_loader(cfg, epoch=2)
    it = L.iter_with_keys()
    head = [next(it) for _ in range(7)]
    state = L.state_dict()
    del it
    assert state["epoch"] == 2 and sum(state["consumed"]) == 7
    R = train_loader(cfg)  # fresh loader, as after a restart
    R.load_state_dict(state)
    assert len(R) == len(full)
    tail = [(x, keys) for x, _, keys in R.iter_with_keys()]
    assert len(head) + len(tail) == len(full)
    got = {tuple(k): x for x, k in [(h[0], h[2]) for h in head] + tail}
    want = {tuple(k): x for x, k in full}
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    if workers == 0:  # exact order too
        assert [k for _, k in tail] == [k for _, k in full[7:]]
        # the abandoned loader itself also continues where it stopped
        assert [k for _, _, k in L.iter_with_keys()] == [k for _, k in full[7:]]
    assert R.state_dict()["epoch"] == 3 and sum(R.state_dict()["consumed"]) == 0


def test_resume_with_other_world_size_skips_proportionally(digits_root):
    cfg = digits_cfg(digits_root, mode="resampled", epoch_size=1200, batch_size=20)
    L = train_loader(cfg, rank=0, world_size=1)
    it = iter(L)
    for _ in range(30):
        next(it)
    R = train_loader(cfg, rank=0, world_size=2)
    R.load_state_dict(L.state_dict())
    assert len(list(R)) == 30 - 15  # 30 of 60 global batches done -> 15 of 30 per rank remain


def _copy(root, dst):
    shutil.copytree(root, dst)
    return dst


def test_sha_mismatch_names_shard(digits_root, tmp_path):
    root = _copy(digits_root, tmp_path / "d")
    shard = root / "train-000003.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF  # flip a byte inside the first member's data
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"train-000003\.tar: sha256"):
        train_loader(digits_cfg(root))
    eval_loader(digits_cfg(root))  # the test split is intact


def _truncate(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def test_truncated_shard_error_and_skip_count(digits_root, tmp_path):
    root = _copy(digits_root, tmp_path / "d")
    _truncate(root / "train-000005.tar", 30_000)  # mid-member
    # without sha256 checks (urls given directly, no manifest in root) the read itself must catch it
    os.remove(root / "manifest.json")
    pattern = str(root / "train-{000000..000014}.tar")
    cfg = DataConfig(source="shards", root=str(root), train_urls=pattern, epoch_size=TRAIN)
    with pytest.raises(DataError, match=r"train-000005\.tar"):
        list(train_loader(cfg))
    cfg.on_error = "skip"
    L = train_loader(cfg)
    with pytest.warns(UserWarning, match=r"train-000005\.tar"):
        keys = all_keys(L)
    assert L.skipped["skipped_shards"] == 1
    assert len(keys) == len(set(keys)) == TRAIN - 100  # detected up front: the whole shard is skipped


def test_short_but_wellformed_shard_caught_by_manifest_count(digits_root, tmp_path):
    """A shard re-written with fewer samples is a valid tar: only the manifest reveals it."""
    import tarfile

    root = _copy(digits_root, tmp_path / "d")
    shard = root / "train-000002.tar"
    with tarfile.open(shard) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()[:40]]  # 20 samples
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as t:
        import io

        for m, data in members:
            t.addfile(m, io.BytesIO(data))
    cfg = digits_cfg(root, on_error="skip")
    with pytest.warns(UserWarning):
        L = train_loader(cfg)  # sha mismatch is a warning in skip mode
        keys = all_keys(L)
    assert len(keys) == TRAIN - 80 and len(set(keys)) == len(keys)
    assert L.skipped == {"skipped_shards": 1, "skipped_samples": 80}
    assert L.state_dict()["skipped"]["skipped_shards"] == 1
    cfg.on_error = "raise"
    with pytest.raises(DataError, match=r"train-000002\.tar: sha256"):
        train_loader(cfg)
    from scaletrain.data.reader import Stats, read_shard

    with pytest.raises(DataError, match=r"train-000002\.tar: read 20 samples, the manifest says 100"):
        list(read_shard(str(shard), expected=100, hwc=(8, 8, 1), on_error="raise", stats=Stats()))


def test_bad_sample_shape_is_named(tmp_path):
    import webdataset as wds

    root = tmp_path / "s"
    root.mkdir()
    with wds.TarWriter(str(root / "train-000000.tar"), encoder=False) as w:
        for i in range(5):
            shape = (8, 8, 1) if i != 3 else (9, 8, 1)
            import io

            b = io.BytesIO()
            np.save(b, np.zeros(shape, np.uint8))
            w.write({"__key__": f"{i:09d}", "img.npy": b.getvalue(), "cls": b"1"})
    L = ShardLoader([str(root / "train-000000.tar")], [5], batch_size=2, image_hwc=(8, 8, 1))
    with pytest.raises(DataError, match=r"train-000000\.tar: sample '000000003'.*shape"):
        list(L)
    L = ShardLoader([str(root / "train-000000.tar")], [5], batch_size=2, image_hwc=(8, 8, 1),
                    on_error="skip")
    with pytest.warns(UserWarning, match="000000003"):
        assert sum(len(y) for _, y in L) == 4
    assert L.skipped["skipped_samples"] == 1


def test_wrong_image_shape_is_caught_before_training(digits_root, tmp_path):
    """Shards of another dataset behind a manifest: the loader refuses to start."""
    from scaletrain.data import write_dataset

    np.savez(tmp_path / "a.npz", x=np.zeros((30, 9, 9), np.uint8), y=np.arange(30) % 3)
    write_dataset("npz", str(tmp_path / "a.npz"), tmp_path / "nine", shard_samples=10, progress=False)
    for f in (tmp_path / "nine").glob("train-*.tar"):  # names unknown to the digits manifest
        f.rename(f.with_name("nine" + f.name[5:]))
    cfg = DataConfig(source="shards", root=str(digits_root), train_urls=str(tmp_path / "nine" / "nine-*.tar"))
    with pytest.raises(DataError, match=r"nine-000000\.tar: images have shape \(H, W, C\) \(9, 9, 1\).*\(8, 8, 1\)"):
        train_loader(cfg)
    # without a manifest the first image fixes the shape for the rest
    cfg = DataConfig(source="shards", root=str(tmp_path / "none"), train_urls=str(tmp_path / "nine" / "nine-*.tar"))
    assert train_loader(cfg).image_hwc == (9, 9, 1)


def test_clear_errors_before_training(digits_root, tmp_path):
    with pytest.raises(DataError, match=r"3 shard\(s\) but 2 rank\(s\) x 2 worker\(s\) = 4 readers"):
        ShardLoader(["a", "b", "c"], [1, 1, 1], batch_size=1, world_size=2, workers=2)
    with pytest.raises(DataError, match="4 shard.*5 rank"):
        eval_loader(digits_cfg(digits_root), rank=0, world_size=5)
    with pytest.raises(DataError, match=r"no shards found for data.train_urls='.*nothing-\*\.tar'"):
        train_loader(DataConfig(source="shards", root=str(tmp_path), train_urls=str(tmp_path / "nothing-*.tar")))
    with pytest.raises(DataError, match=r"shard not found: .*x-000001\.tar"):
        (tmp_path / "x-000000.tar").write_bytes(b"")
        train_loader(DataConfig(source="shards", root=str(tmp_path),
                                train_urls=str(tmp_path / "x-{000000..000001}.tar")))
    with pytest.raises(DataError, match="prepare"):
        train_loader(digits_cfg(tmp_path / "never-written"))
    with pytest.raises(DataError, match="split 'val' has no samples"):
        eval_loader(digits_cfg(digits_root), "val")
    with pytest.raises(DataError, match="epoch_size"):
        ShardLoader(["a"], None, batch_size=1, mode="resampled")


def test_pipe_urls_and_manifest_counts(digits_root):
    """`pipe:` URLs (how s3:// and gs:// are read) go through the same pipeline."""
    pattern = "pipe:cat " + str(digits_root / "train-{000000..000014}.tar")
    cfg = DataConfig(source="shards", root=str(digits_root), train_urls=pattern)
    L = train_loader(cfg)
    assert len(L) == 23  # counts matched to the manifest by shard name
    keys = all_keys(L)
    assert len(keys) == len(set(keys)) == TRAIN


def test_skip_mode_keeps_ranks_equal(digits_root, tmp_path):
    """A shard lost to on_error=skip must not leave one rank short of batches."""
    root = _copy(digits_root, tmp_path / "d")
    _truncate(root / "train-000004.tar", 20_000)
    cfg = digits_cfg(root, on_error="skip", batch_size=50)
    lens, got, skipped = [], [], []
    with pytest.warns(UserWarning, match=r"train-000004\.tar"):
        for r in range(2):
            L = train_loader(cfg, rank=r, world_size=2)
            lens.append(len(L))
            got.append(sum(1 for _ in L))
            skipped.append(L.skipped["skipped_shards"])
    assert got == lens and lens[0] == lens[1]
    assert sorted(s > 0 for s in skipped) == [False, True]  # one rank lost the shard and made up for it


def test_failing_pipe_command_names_the_url(tmp_path):
    L = ShardLoader([f"pipe:cat {tmp_path}/missing-000000.tar"], None, batch_size=4, image_hwc=(8, 8, 1))
    with pytest.raises(DataError, match=r"shard pipe:cat .*missing-000000\.tar"):
        list(L)
    L = ShardLoader([f"pipe:cat {tmp_path}/missing-000000.tar"], None, batch_size=4, on_error="skip")
    with pytest.warns(UserWarning, match="missing-000000"):
        assert list(L) == []
    assert L.skipped["skipped_shards"] == 1


def test_gzipped_shards_are_read(digits_root, tmp_path):
    """WebDataset reads compressed tars; the truncation check must not reject them."""
    import gzip

    out = tmp_path / "gz"
    out.mkdir()
    for f in sorted(digits_root.glob("test-*.tar")):
        (out / (f.name + ".gz")).write_bytes(gzip.compress(f.read_bytes()))
    cfg = DataConfig(source="shards", root=str(tmp_path / "nomanifest"), train_urls=str(out / "test-*.tar.gz"))
    keys = all_keys(train_loader(cfg))
    assert sorted(keys) == sorted(all_keys(eval_loader(digits_cfg(digits_root))))
