"""`scaletrain shards --source idx --split official` (data.split=official) keeps MNIST's published
files: train = the 60,000 train-* images, test = the 10,000 t10k-* images in file order."""
from __future__ import annotations

import numpy as np
import pytest

from scaletrain.config import DataConfig
from scaletrain.data import dataset_info, eval_loader, prepare, read_manifest
from scaletrain.data.cli import shards_main
from scaletrain.data.shards import official_indices
from scaletrain.data.sources import Source, read_idx
from scaletrain.errors import DataError

from data_helpers import MNIST, pixels_u8

needs_mnist = pytest.mark.skipif(not (MNIST / "t10k-images-idx3-ubyte.gz").exists(),
                                 reason="no ../shared/data/mnist")


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    out = tmp_path_factory.mktemp("mnist") / "official"
    assert shards_main(["--source", "idx", "--path", str(MNIST), "--out", str(out), "--split", "official",
                        "--shard-samples", "10000", "--no-progress"]) == 0
    return out


@needs_mnist
def test_cli_official_split_keeps_the_published_test_set(official):
    m = read_manifest(official)
    assert m["settings"]["split"] == "official"
    assert {s: e["num_samples"] for s, e in m["splits"].items()} == {"train": 60000, "val": 0, "test": 10000}
    x = read_idx(MNIST / "t10k-images-idx3-ubyte.gz")
    y = read_idx(MNIST / "t10k-labels-idx1-ubyte.gz")
    cfg = DataConfig(root=str(official), source="shards", eval_batch_size=2500)
    xs, ys = zip(*eval_loader(cfg, "test"))
    assert np.array_equal(np.concatenate([pixels_u8(b) for b in xs])[:, 0], x)   # the t10k file, in order
    assert np.array_equal(np.concatenate([b.numpy() for b in ys]), y)
    train_hist = np.bincount(read_idx(MNIST / "train-labels-idx1-ubyte.gz"), minlength=10)
    assert m["splits"]["train"]["class_histogram"] == train_hist.tolist()


@needs_mnist
def test_config_official_split_60000_10000(official):
    """data.split=official in a config finds the same shard set (same settings: nothing rewritten);
    the pooled random split of the same files is another shard set."""
    cfg = DataConfig(source="idx", path=str(MNIST), root=str(official), split="official",
                     shard_samples=10000, test_fraction=0.2)          # test_fraction plays no part
    mtime = (official / "manifest.json").stat().st_mtime_ns
    prepare(cfg, progress=False)
    assert (official / "manifest.json").stat().st_mtime_ns == mtime
    info = dataset_info(cfg)
    assert (info["num_train"], info["num_test"], info["num_val"]) == (60000, 10000, 0)
    other = DataConfig(source="idx", path=str(MNIST), root=str(official), shard_samples=10000)
    with pytest.raises(DataError, match="split"):
        prepare(other, progress=False)


def test_official_indices_val_from_train_only():
    src = Source(np.zeros((10, 2, 2, 1), np.uint8), np.arange(10) % 3, ["0", "1", "2"], "fake",
                 {"train": [(3, 10)], "test": [(0, 3)]})
    parts = official_indices(src, seed=0, val_fraction=0.3)
    assert parts["test"].tolist() == [0, 1, 2]
    assert len(parts["val"]) == 2 and set(parts["val"]) | set(parts["train"]) == set(range(3, 10))
    assert not set(parts["val"]) & set(parts["train"])


def test_official_split_needs_published_files(tmp_path):
    cfg = DataConfig(source="digits", root=str(tmp_path / "d"), split="official")
    with pytest.raises(DataError, match="published"):
        prepare(cfg, progress=False)


def test_old_manifests_without_split_still_match(tmp_path):
    """Shards written before data.split existed are the random split: prepare reuses them."""
    import json
    cfg = DataConfig(source="digits", root=str(tmp_path / "d"))
    prepare(cfg, progress=False)
    path = tmp_path / "d" / "manifest.json"
    m = json.loads(path.read_text())
    del m["settings"]["split"]
    path.write_text(json.dumps(m))
    assert "split" not in prepare(cfg, progress=False)["settings"]
