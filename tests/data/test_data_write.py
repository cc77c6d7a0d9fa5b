"""Writing shards: sources, manifest, round trips, idempotence, atomic concurrent prepare, CLI."""
from __future__ import annotations

import gzip
import json
import multiprocessing as mp
import tarfile
from pathlib import Path

import numpy as np
import pytest

from scaletrain.config import DataConfig
from scaletrain.data import dataset_info, eval_loader, prepare, read_manifest, write_dataset
from scaletrain.data.cli import shards_main
from scaletrain.data.sources import read_idx
from scaletrain.errors import DataError, UserError

from data_helpers import MNIST, digits_cfg, pixels_u8


def read_back(root, splits=("train", "val", "test"), **cfg_kw):
    """All samples of all splits as {key: (uint8 HWC image, label)} through the loader."""
    cfg = DataConfig(root=str(root), source="shards", eval_batch_size=97, **cfg_kw)
    out = {}
    for split in splits:
        if not read_manifest(root)["splits"][split]["shards"]:
            continue
        for x, y, keys in eval_loader(cfg, split).iter_with_keys():
            for xi, yi, k in zip(pixels_u8(x), y.tolist(), keys):
                assert k not in out
                out[k] = (xi.transpose(1, 2, 0), yi)
    return out


def assert_round_trip(root, images, labels):
    got = read_back(root)
    assert len(got) == len(labels)
    for k, (img, lab) in got.items():
        i = int(k)
        assert lab == labels[i]
        np.testing.assert_array_equal(img, images[i])


def test_default_digits_manifest_and_round_trip(digits_root, digits_source):
    m = read_manifest(digits_root)
    assert m["image_shape"] == [1, 8, 8] and m["num_classes"] == 10
    counts = {s: m["splits"][s]["num_samples"] for s in m["splits"]}
    assert counts == {"train": 1438, "val": 0, "test": 359}
    assert sum(counts.values()) == 1797
    for split in ("train", "test"):
        e = m["splits"][split]
        assert sum(s["samples"] for s in e["shards"]) == e["num_samples"]
        assert max(s["samples"] for s in e["shards"]) == 100
        assert np.sum(e["class_histogram"]) == e["num_samples"]
        assert np.sum([s["class_histogram"] for s in e["shards"]], axis=0).tolist() == e["class_histogram"]
        assert all(len(s["sha256"]) == 64 for s in e["shards"])
    # 0..16 scaled to 0..255
    from sklearn.datasets import load_digits

    raw = load_digits().images
    assert digits_source.images.dtype == np.uint8 and digits_source.images.max() == 255
    np.testing.assert_array_equal(digits_source.images[..., 0], np.rint(raw * 255 / 16).astype(np.uint8))
    assert_round_trip(digits_root, digits_source.images, digits_source.labels)
    info = dataset_info(digits_cfg(digits_root))
    assert info["num_classes"] == 10 and info["image_shape"] == (1, 8, 8)
    assert info["num_samples"] == counts and info["num_train"] == 1438


def test_split_is_seeded_and_disjoint(tmp_path):
    a = prepare(digits_cfg(tmp_path / "a", split_seed=1, val_fraction=0.1), progress=False)
    b = prepare(digits_cfg(tmp_path / "b", split_seed=2, val_fraction=0.1), progress=False)
    ka = read_back(tmp_path / "a", ("test",))
    kb = read_back(tmp_path / "b", ("test",))
    assert len(ka) == len(kb) == 359 and set(ka) != set(kb)
    assert a["splits"]["val"]["num_samples"] == 180
    tr, va, te = (set(read_back(tmp_path / "a", (s,))) for s in ("train", "val", "test"))
    assert not (tr & va) and not (tr & te) and not (va & te) and len(tr | va | te) == 1797


def test_prepare_idempotent_deterministic_and_guarded(tmp_path, digits_root):
    cfg = digits_cfg(tmp_path / "d")
    m1 = prepare(cfg, progress=False)
    shard = tmp_path / "d" / "train-000000.tar"
    mtime = shard.stat().st_mtime_ns
    assert prepare(cfg, progress=False) == m1 and shard.stat().st_mtime_ns == mtime  # not rewritten
    # identical settings give byte-identical shards (mtime 0 in the tar)
    assert [s["sha256"] for s in m1["splits"]["train"]["shards"]] == \
        [s["sha256"] for s in read_manifest(digits_root)["splits"]["train"]["shards"]]
    with pytest.raises(DataError, match="other settings.*split_seed"):
        prepare(digits_cfg(tmp_path / "d", split_seed=5), progress=False)
    m2 = prepare(digits_cfg(tmp_path / "d", split_seed=5), overwrite=True, progress=False)
    assert m2["settings"]["split_seed"] == 5 and read_manifest(tmp_path / "d")["settings"]["split_seed"] == 5
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        prepare(digits_cfg(tmp_path / "junk"), progress=False)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def _prepare_in_process(root, q):
    try:
        m = prepare(digits_cfg(root), progress=False)
        q.put([s["sha256"] for s in m["splits"]["train"]["shards"]])
    except Exception as e:  # pragma: no cover - reported to the parent
        q.put(repr(e))


def test_concurrent_prepare_is_atomic(tmp_path):
    root = tmp_path / "race" / "digits"
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_prepare_in_process, args=(root, q)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(isinstance(r, list) for r in results), results
    assert results[0] == results[1] == results[2]
    assert sorted(p.name for p in (tmp_path / "race").iterdir()) == ["digits"]  # temp folders cleaned
    assert read_manifest(root)["splits"]["train"]["num_samples"] == 1438


def _write_idx(path, arr):
    dtype_code = {np.uint8: 0x08}[arr.dtype.type]
    head = bytes([0, 0, dtype_code, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.tobytes())


@pytest.mark.skipif(not (MNIST / "t10k-images-idx3-ubyte.gz").exists(), reason="no ../shared/data/mnist")
@pytest.mark.parametrize("encoding", ["npy", "png"])
def test_idx_mnist_subset_round_trip(tmp_path, encoding):
    x = read_idx(MNIST / "t10k-images-idx3-ubyte.gz")
    y = read_idx(MNIST / "t10k-labels-idx1-ubyte.gz")
    assert x.shape == (10000, 28, 28) and y.shape == (10000,)
    src = tmp_path / "idx"
    src.mkdir()
    n = 500
    _write_idx(src / "sub-images-idx3-ubyte.gz", np.ascontiguousarray(x[:n]))
    _write_idx(src / "sub-labels-idx1-ubyte.gz", np.ascontiguousarray(y[:n]))
    m = write_dataset("idx", str(src), tmp_path / "out", shard_samples=128, encoding=encoding,
                      val_fraction=0.1, progress=False)
    assert m["image_shape"] == [1, 28, 28] and m["num_classes"] == 10
    assert sum(e["num_samples"] for e in m["splits"].values()) == n
    assert_round_trip(tmp_path / "out", x[:n, :, :, None], y[:n].astype(np.int64))


def test_idx_errors(tmp_path):
    bad = tmp_path / "bad-images-idx3-ubyte"
    bad.write_bytes(bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big") + (2).to_bytes(4, "big") * 2 + b"\0" * 7)
    with pytest.raises(DataError, match="truncated"):
        read_idx(bad)
    with pytest.raises(DataError, match="no matching labels"):
        write_dataset("idx", str(tmp_path), tmp_path / "o", progress=False)
    with pytest.raises(DataError, match="no '.*images-idx3-ubyte"):
        (tmp_path / "empty").mkdir()
        write_dataset("idx", str(tmp_path / "empty"), tmp_path / "o", progress=False)


def _make_imagefolder(root, rgb: bool, rng):
    from PIL import Image

    images, labels = [], []
    for ci, cname in enumerate(["cat", "dog", "emu"]):
        (root / cname).mkdir(parents=True)
        for j in range(7):
            a = rng.integers(0, 256, size=(6, 5, 3) if rgb else (6, 5), dtype=np.uint8)
            Image.fromarray(a).save(root / cname / f"{j:02d}.png")
            images.append(a if rgb else a[..., None])
            labels.append(ci)
    return np.stack(images), np.array(labels)


@pytest.mark.parametrize("rgb,encoding", [(False, "npy"), (True, "png")])
def test_imagefolder_round_trip(tmp_path, rgb, encoding):
    images, labels = _make_imagefolder(tmp_path / "src", rgb, np.random.default_rng(3))
    m = write_dataset("imagefolder", str(tmp_path / "src"), tmp_path / "out", shard_samples=4,
                      test_fraction=0.25, encoding=encoding, name="pets", progress=False)
    assert m["class_names"] == ["cat", "dog", "emu"] and m["name"] == "pets"
    assert m["image_shape"] == [3 if rgb else 1, 6, 5]
    # keys are indices in sorted (class, file) order
    assert_round_trip(tmp_path / "out", images, labels)


def test_imagefolder_wrong_shape_names_file(tmp_path):
    from PIL import Image

    _make_imagefolder(tmp_path / "src", False, np.random.default_rng(0))
    Image.fromarray(np.zeros((7, 5), np.uint8)).save(tmp_path / "src" / "dog" / "zz.png")
    with pytest.raises(DataError, match=r"dog/zz\.png.*same size"):
        write_dataset("imagefolder", str(tmp_path / "src"), tmp_path / "out", progress=False)


def test_npz_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((50, 4, 4, 3)).astype(np.float32)
    y = rng.integers(0, 4, 50)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    write_dataset("npz", str(tmp_path / "a.npz"), tmp_path / "out", shard_samples=16, progress=False)
    assert_round_trip(tmp_path / "out", np.rint(x * 255).astype(np.uint8), y)
    np.savez(tmp_path / "b.npz", images=x, y=y)
    with pytest.raises(DataError, match="b.npz.*'x' and 'y'"):
        write_dataset("npz", str(tmp_path / "b.npz"), tmp_path / "o2", progress=False)
    np.savez(tmp_path / "c.npz", x=x * 3, y=y)
    with pytest.raises(DataError, match=r"c.npz.*\[0, 1\]"):
        write_dataset("npz", str(tmp_path / "c.npz"), tmp_path / "o3", progress=False)


def test_shard_bytes_limit(tmp_path):
    m = write_dataset("digits", None, tmp_path / "o", shard_samples=10_000, shard_bytes=40_000, progress=False)
    shards = m["splits"]["train"]["shards"]
    assert len(shards) > 1
    assert all(s["bytes"] <= 40_000 for s in shards)
    assert sum(s["samples"] for s in shards) == 1438
    with tarfile.open(tmp_path / "o" / shards[0]["name"]) as t:
        names = t.getnames()
    assert len(names) == 2 * shards[0]["samples"]
    assert sorted(n.split(".", 1)[1] for n in names[:2]) == ["cls", "img.npy"]
    # the size estimate is exact: a shard is only closed when one more sample would not fit
    assert max(s["bytes"] for s in shards) > 40_000 - 10240


def test_cli_writes_checks_and_refuses(tmp_path, capsys):
    out = tmp_path / "cli"
    assert shards_main(["--source", "digits", "--out", str(out), "--shard-samples", "500",
                        "--val-fraction", "0.1", "--split-seed", "3", "--no-progress"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["settings"]["split_seed"] == 3 and len(m["splits"]["train"]["shards"]) == 3
    assert "train" in capsys.readouterr().out
    with pytest.raises(UserError, match="not empty"):
        shards_main(["--out", str(out), "--no-progress"])
    assert shards_main(["--check", str(out)]) == 0
    assert "1797 samples" in capsys.readouterr().out
    with pytest.raises(DataError, match="needs --path"):
        shards_main(["--source", "idx", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit) as e:
        shards_main(["--help"])
    assert e.value.code == 0
    assert "imagefolder" in capsys.readouterr().out


def test_cli_subprocess_exit_code(tmp_path):
    import subprocess
    import sys

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    r = subprocess.run([sys.executable, "-m", "scaletrain.data.cli", "--out", str(tmp_path / "full")],
                       capture_output=True, text=True, cwd=str(Path(__file__).resolve().parents[2]))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "not empty" in r.stderr
