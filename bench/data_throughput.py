"""Throughput of the WebDataset reader vs an in-memory loader vs the default training step.

    python bench/data_throughput.py [--samples 10000] [--batch 256] [--repeats 3] [--markdown]

1. MNIST-size records (28x28x1 uint8; MNIST t10k from ../shared/data/mnist if
   present, else random pixels) written as shards of 1000 samples (npy and
   png encodings), read one full epoch by `train_loader` (exact mode,
   shuffled) with 0, 1 and 2 loader workers, decoded-sample cache off (every
   epoch parses the tars) and, for 0 workers, on (later epochs). Worker
   start-up is inside the timing: it is paid every epoch.
2. The same data as a uint8 tensor through `torch.utils.data.DataLoader(
   TensorDataset, shuffle=True)`, converted to float [0, 1] like the reader.
3. The default job (sklearn digits, batch 64): the reader's samples/s against
   the samples/s the default training step consumes (PGD-7 adversarial
   training of digits_cnn, Adam), and the share of an epoch spent waiting
   for data.

Each figure is the best of `--repeats` runs (the machine is shared), in samples/s.
`--threads` sets torch's intra-op threads for everything (default 1).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scaletrain.config import DataConfig  # noqa: E402
from scaletrain.data import clear_cache, prepare, train_loader, write_dataset  # noqa: E402
from scaletrain.data.sources import read_idx  # noqa: E402

MNIST = REPO.parent / "shared" / "data" / "mnist"


def best_rate(fn, n_samples, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        got = fn()
        times.append(time.perf_counter() - t)
        assert got == n_samples, (got, n_samples)
    return n_samples / min(times)


def epoch_of(loader):
    return sum(len(y) for _, y in loader)


def mnist_like(n):
    if (MNIST / "t10k-images-idx3-ubyte.gz").exists():
        x = read_idx(MNIST / "t10k-images-idx3-ubyte.gz")[:n]
        y = read_idx(MNIST / "t10k-labels-idx1-ubyte.gz")[:n]
        return x, y.astype(np.int64), "MNIST t10k"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n), "random 28x28"


def reader_rates(root, n, batch, repeats):
    rows = []
    for workers in (0, 1, 2):
        os.environ["SCALETRAIN_DATA_CACHE_MB"] = "0"
        clear_cache()
        cfg = DataConfig(source="shards", root=str(root), batch_size=batch, workers=workers)
        L = train_loader(cfg)
        rows.append((f"workers={workers}, cache off", best_rate(lambda: epoch_of(L), n, repeats)))
    os.environ["SCALETRAIN_DATA_CACHE_MB"] = "1024"
    clear_cache()
    L = train_loader(DataConfig(source="shards", root=str(root), batch_size=batch, workers=0))
    epoch_of(L)  # first epoch fills the cache
    rows.append(("workers=0, cache on (epoch >= 2)", best_rate(lambda: epoch_of(L), n, repeats)))
    return rows


def in_memory_rate(x, y, batch, repeats):
    ds = torch.utils.data.TensorDataset(torch.from_numpy(np.array(x[:, None])), torch.from_numpy(np.array(y)))
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=0)

    def run():
        n = 0
        for xb, yb in dl:
            xb = xb.float().div_(255)
            n += len(yb)
        return n

    return best_rate(run, len(y), repeats)


def default_step_rate(repeats, steps=20):
    """Samples/s consumed by the default training step: PGD-7 AT (eps 0.2), digits_cnn, Adam, batch 64."""
    import torch.nn.functional as F

    from scaletrain.config.schema import ModelConfig
    from scaletrain.models import create_model

    torch.manual_seed(0)
    model = create_model(ModelConfig())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.rand(64, 1, 8, 8)
    y = torch.randint(0, 10, (64,))
    eps, alpha, k = 0.2, 2.5 * 0.2 / 7, 7

    def step():
        model.eval()
        delta = ((x + (torch.rand_like(x) * 2 - 1) * eps).clamp(0, 1) - x).requires_grad_(True)
        for _ in range(k):
            g, = torch.autograd.grad(F.cross_entropy(model(x + delta), y), delta)
            delta = (delta + alpha * g.sign()).clamp(-eps, eps)
            delta = ((x + delta).clamp(0, 1) - x).detach().requires_grad_(True)
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model((x + delta).detach()), y).backward()
        opt.step()

    for _ in range(3):
        step()

    def run():
        for _ in range(steps):
            step()
        return steps * 64

    return best_rate(run, steps * 64, repeats)


def digits_reader_rates(tmp, repeats):
    cfg = DataConfig(root=str(tmp / "digits"))
    m = prepare(cfg, progress=False)
    n = m["splits"]["train"]["num_samples"]
    os.environ["SCALETRAIN_DATA_CACHE_MB"] = "0"
    clear_cache()
    cold = best_rate(lambda: epoch_of(train_loader(cfg)), n, repeats)
    os.environ["SCALETRAIN_DATA_CACHE_MB"] = "1024"
    clear_cache()
    # as the trainer does it: a new loader every epoch (the cache is per process)
    epoch_of(train_loader(cfg))
    warm = best_rate(lambda: epoch_of(train_loader(cfg, epoch=1)), n, repeats)
    return n, cold, warm


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=10000, help="MNIST-size records to write and read")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on 2 busy cores more threads made the training step "
                         "~8x slower, and a faster step is the harder target for the reader)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp(prefix="scaletrain-bench-"))
    try:
        x, y, what = mnist_like(args.samples)
        n = len(y)
        np.savez(tmp / "mnist.npz", x=x, y=y)
        rows = []
        for enc in ("npy", "png"):
            write_dataset("npz", str(tmp / "mnist.npz"), tmp / enc, shard_samples=1000, test_fraction=0.0,
                          encoding=enc, progress=False)
            for name, r in reader_rates(tmp / enc, n, args.batch, args.repeats):
                rows.append((f"WebDataset reader, {enc}, {name}", r))
        rows.append(("in-memory TensorDataset + DataLoader, workers=0", in_memory_rate(x, y, args.batch,
                                                                                     args.repeats)))
        dn, cold, warm = digits_reader_rates(tmp, args.repeats)
        step = default_step_rate(args.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    sep = "|" if args.markdown else " "
    print(f"# {what}: {n} records of 28x28x1 uint8, shards of 1000, batch {args.batch}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    if args.markdown:
        print("| reader (MNIST-size records) | samples/s |\n|---|---:|")
    for name, r in rows:
        print(f"{sep} {name:62s} {sep} {r:10,.0f} {sep}" if args.markdown else f"{name:64s} {r:12,.0f}")
    print()
    print(f"# default job: sklearn digits ({dn} train samples), batch 64, workers=0")
    if args.markdown:
        print("| default job | samples/s | per epoch |\n|---|---:|---:|")
    table = [("reader, first epoch (tar parsing + decode)", cold),
             ("reader, later epochs (decoded-sample cache)", warm),
             ("training step consumes (PGD-7 AT, digits_cnn, Adam)", step)]
    for name, r in table:
        per_epoch = dn / r
        print(f"{sep} {name:62s} {sep} {r:10,.0f} {sep} {per_epoch:7.3f} s {sep}" if args.markdown
              else f"{name:64s} {r:12,.0f} {per_epoch:9.3f} s/epoch")
    print(f"\nreader / step throughput: {cold / step:.1f}x (first epoch), {warm / step:.1f}x (later epochs); "
          f"data share of an epoch: {100 * step / (cold + step):.1f}% (first), {100 * step / (warm + step):.2f}% (later)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
