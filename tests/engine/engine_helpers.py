"""Small fakes for engine tests: digits in memory and a resumable loader; the methods are the
shipped ones (`shipped_method`), so the engine tests exercise the product's methods."""
from __future__ import annotations

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from scaletrain.config import load_config  # noqa: E402


def digits_tensors(n: int = 256):
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images[:n] / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target[:n], dtype=torch.int64)
    return x, y


class ShardedLoader:
    """Global batches of `global_bs`, shuffled per epoch by its own seed, each rank taking its
    contiguous slice: rank r of w sees samples [r*B/w, (r+1)*B/w) of every global batch, so
    1 rank x accumulation and N ranks see the same global batch. Resumable via state_dict."""

    def __init__(self, x, y, global_bs, micro_bs, rank, world, epoch, seed=0):
        self.x, self.y, self.gbs, self.mbs, self.rank, self.world = x, y, global_bs, micro_bs, rank, world
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        self.order = torch.randperm(len(x), generator=g)
        self.n_global = len(x) // global_bs
        per_rank = global_bs // world
        self.micro = []  # (start, end) indices into order
        for b in range(self.n_global):
            base = b * global_bs + rank * per_rank
            for m in range(per_rank // micro_bs):
                self.micro.append((base + m * micro_bs, base + (m + 1) * micro_bs))
        self.pos = 0

    def __len__(self):
        return len(self.micro)

    def __iter__(self):
        while self.pos < len(self.micro):
            s, e = self.micro[self.pos]
            self.pos += 1
            idx = self.order[s:e]
            yield self.x[idx], self.y[idx]

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, sd):
        self.pos = int(sd["pos"])


class Data:
    def __init__(self, cfg, rank, world, n=256, global_bs=None):
        self.x, self.y = digits_tensors(n)
        self.cfg, self.rank, self.world = cfg, rank, world
        self.gbs = global_bs or cfg.engine.global_batch_size or cfg.data.batch_size * world

    def train_loader(self, epoch, stage):
        return ShardedLoader(self.x, self.y, self.gbs, self.cfg.data.batch_size, self.rank, self.world, epoch,
                             self.cfg.data.seed)


def shipped_method(*overrides):
    """A registered method built from a config section, as `scaletrain train` builds it."""
    from scaletrain.methods import create_method
    return create_method(load_config(None, list(overrides)).method)


def CEMethod():
    return shipped_method("method.name=standard")


def PGDATMethod(eps=0.2, steps=3):
    """The shipped pgd_at (random starts from the trainer's per-sample generator)."""
    return shipped_method("method.name=pgd_at", f"method.attack.eps={eps}", f"method.attack.steps={steps}")


def force_collapse_at(*steps):
    """Forced catastrophic overfitting for the fast_at guard: the guard's probe runs for real, then
    at the given optimizer steps its counts are replaced by a collapse (PGD accuracy 0 while FGSM
    accuracy 1). Returns a function that undoes the patch."""
    from scaletrain.methods.fast import FastAT
    real = FastAT._probe

    left = set(steps)  # each forced once (a rollback re-runs the step with a real probe)

    def probe(self, x, y, ctx):
        real(self, x, y, ctx)
        if ctx.step in left:
            left.discard(ctx.step)
            self._counts = [0, self._counts[2], self._counts[2]]
    FastAT._probe = probe
    return lambda: setattr(FastAT, "_probe", real)


def make_cfg(tmp, *overrides):
    base = ["data.batch_size=16", "train.epochs=1", "train.log_every=1", "train.progress=false",
            "optim.name=sgd", "optim.lr=0.05", "optim.schedule=constant", "model.width=8",
            f"out_dir={tmp}", "name=run", "tracking.wandb=false"]
    return load_config(None, base + list(overrides))


def read_log(run_dir):
    import json
    with open(os.path.join(run_dir, "train_log.jsonl")) as f:
        return [json.loads(line) for line in f]


def np_seed_all(seed):
    import random
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Killer:
    """Trainer hook: SIGKILL this process right after the checkpoint of global step `step`."""

    def __init__(self, step):
        self.step = step

    def on_checkpoint(self, trainer, path, metrics):
        if trainer.engine.global_step == self.step:
            import signal
            os.kill(os.getpid(), signal.SIGKILL)
