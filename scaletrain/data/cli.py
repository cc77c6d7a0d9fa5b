"""`scaletrain shards`: write WebDataset shards from a source, or check existing ones."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from ..errors import DataError

EPILOG = """\
examples:
  scaletrain shards --source digits --out data/digits
  scaletrain shards --source idx --path ../shared/data/mnist --out data/mnist \\
      --shard-samples 4096 --val-fraction 0.1 --test-fraction 0.1
  scaletrain shards --source idx --path ../shared/data/mnist --out data/mnist-official \
      --split official --shard-samples 4096     # MNIST's own 60000/10000 files, test kept in order
  scaletrain shards --source imagefolder --path photos/ --out data/photos --encoding png
  scaletrain shards --source npz --path arrays.npz --out data/arrays --shard-bytes 64MB
  scaletrain shards --check data/mnist          # verify sha256 and sample counts

The output folder gets <split>-NNNNNN.tar shards (train, val, test) and a
manifest.json; train with data.source=shards data.root=<out>, or point
data.train_urls / data.test_urls at the shards (brace patterns, pipe: URLs).
"""


def _size(text: str) -> int:
    t = text.strip().upper()
    mult = 1
    for suffix, m in (("KB", 10**3), ("MB", 10**6), ("GB", 10**9), ("K", 10**3), ("M", 10**6), ("G", 10**9),
                      ("B", 1)):
        if t.endswith(suffix):
            t, mult = t[: -len(suffix)], m
            break
    try:
        v = int(float(t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 64MB, 1000000)") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"size must be > 0: {text!r}")
    return v


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scaletrain shards", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Write a dataset as WebDataset tar shards with a manifest.json "
                    "(shard names, sample counts, class histograms, image shape, sha256 per shard).")
    p.add_argument("--source", choices=["digits", "idx", "npz", "imagefolder"], default="digits",
                   help="digits: scikit-learn 8x8 digits (bundled); idx: MNIST-style IDX files "
                        "(gzipped or not; a folder of *-images-idx3-ubyte/*-labels-idx1-ubyte pairs, pooled unless --split official); "
                        "npz: arrays x (N,H,W[,C]) and y (N,); imagefolder: root/<class>/*.png|jpg "
                        "(class index = sorted folder names). Default: digits")
    p.add_argument("--path", help="source file or folder (idx, npz, imagefolder)")
    p.add_argument("--out", "-o", required=False, help="output folder (default data/<name or source>)")
    p.add_argument("--name", help="dataset name recorded in the manifest (default: output folder name)")
    p.add_argument("--shard-samples", type=_positive, default=256, help="max samples per shard (default 256)")
    p.add_argument("--shard-bytes", type=_size, default=None,
                   help="max bytes per shard, e.g. 64MB (a shard closes at whichever limit comes first)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="fraction of samples in test (default 0.2)")
    p.add_argument("--val-fraction", type=float, default=0.0, help="fraction of samples in val (default 0)")
    p.add_argument("--split", choices=["random", "official"], default="random",
                   help="random: pool all samples and cut a seeded permutation (--test-fraction); "
                        "official: keep the source's published train/test files (IDX: t10k-*/test-* = test, "
                        "in file order; --val-fraction is drawn from train; --test-fraction is unused)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/val/test permutation (default 0)")
    p.add_argument("--encoding", choices=["npy", "png"], default="npy",
                   help="npy: raw uint8 array (fast to decode); png: lossless, smaller (default npy)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--check", metavar="DIR",
                   help="instead of writing: verify the shards in DIR against its manifest "
                        "(sha256 and sample counts) and print a summary")
    return p


def _check(folder: str, progress: bool) -> int:
    from .reader import Stats, read_shard, verify_shards
    from .shards import read_manifest

    m = read_manifest(folder)
    c, h, w = m["image_shape"]
    total = 0
    for split, entry in m["splits"].items():
        urls = [str(Path(folder) / s["name"]) for s in entry["shards"]]
        for u in urls:
            if not Path(u).exists():
                raise DataError(f"shard listed in the manifest is missing: {u}")
        verify_shards(urls, [s["sha256"] for s in entry["shards"]], "raise")
        for u, s in zip(urls, entry["shards"]):
            n = sum(1 for _ in read_shard(u, expected=s["samples"], hwc=(h, w, c), on_error="raise",
                                          stats=Stats(), use_cache=False))
            total += n
        print(f"{split:5s} {entry['num_samples']:8d} samples in {len(urls):4d} shards: ok")
    print(f"{folder}: {total} samples, image shape {tuple(m['image_shape'])}, {m['num_classes']} classes: ok")
    return 0


def shards_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of `scaletrain shards`; returns the exit code (UserErrors propagate to the CLI)."""
    args = build_parser().parse_args(argv)
    progress = not args.no_progress and sys.stderr.isatty()
    if args.check:
        return _check(args.check, progress)
    from .shards import write_dataset

    if args.source != "digits" and not args.path:
        raise DataError(f"--source {args.source} needs --path")
    out = args.out or str(Path("data") / (args.name or args.source))
    m = write_dataset(args.source, args.path, out, split=args.split, split_seed=args.split_seed, test_fraction=args.test_fraction,
                      val_fraction=args.val_fraction, shard_samples=args.shard_samples,
                      shard_bytes=args.shard_bytes, encoding=args.encoding, name=args.name,
                      overwrite=args.overwrite, progress=progress)
    for split, e in m["splits"].items():
        print(f"{split:5s} {e['num_samples']:8d} samples in {len(e['shards']):4d} shards")
    print(f"wrote {out}/manifest.json: image shape {tuple(m['image_shape'])}, {m['num_classes']} classes")
    return 0


def main() -> None:  # `python -m scaletrain.data.cli`
    from ..errors import UserError

    try:
        sys.exit(shards_main(sys.argv[1:]))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
