"""Real processes: 2 gloo ranks, each with 2 DataLoader worker processes (6 processes in all)."""
from __future__ import annotations

import json
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from data_helpers import digits_cfg

pytestmark = pytest.mark.dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, root, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from scaletrain.data import eval_loader, prepare, train_loader

    cfg = digits_cfg(root, workers=2, batch_size=40)
    prepare(cfg, progress=False)  # both ranks at once: atomic, one copy wins
    result = {}
    # exact, unpadded (the evaluation loader; and the training loader with padding off)
    train_nopad = train_loader(cfg, rank=rank, world_size=world, epoch=1)
    train_nopad.pad_ranks = False
    for name, loader in [("exact", train_nopad),
                         ("eval", eval_loader(cfg, rank=rank, world_size=world, batch_size=30))]:
        keys = [k for _, _, ks in loader.iter_with_keys() for k in ks]
        gathered = [None] * world
        dist.all_gather_object(gathered, keys)
        result[name] = gathered
    # exact training loader (padded): one all_reduce per batch must not hang
    L = train_loader(cfg, rank=rank, world_size=world, epoch=1)
    n, steps, keys = len(L), 0, set()
    for x, y, ks in L.iter_with_keys():
        dist.all_reduce(torch.ones(1))
        steps += 1
        keys.update(ks)
    gathered = [None] * world
    dist.all_gather_object(gathered, (steps, n, sorted(keys)))
    result["exact_padded"] = gathered
    # resampled: an odd epoch size, every rank must run the same number of steps;
    # a collective per batch would hang if one rank had fewer
    rcfg = digits_cfg(root, workers=2, batch_size=40, mode="resampled", epoch_size=999)
    L = train_loader(rcfg, rank=rank, world_size=world)
    steps = 0
    for x, y in L:
        t = torch.tensor([float(len(y))])
        dist.all_reduce(t)
        assert t.item() == 80.0
        steps += 1
    counts = [None] * world
    dist.all_gather_object(counts, (steps, len(L)))
    result["resampled"] = counts
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


def test_two_ranks_two_workers_exact_and_resampled(tmp_path):
    root = tmp_path / "digits"
    out = tmp_path / "result.json"
    mp.start_processes(_rank_main, args=(2, _free_port(), str(root), str(out)), nprocs=2,
                       start_method="fork", join=True)
    r = json.loads(out.read_text())
    for name, total in [("exact", 1438), ("eval", 359)]:
        per_rank = r[name]
        union = [k for keys in per_rank for k in keys]
        assert len(union) == len(set(union)) == total, name  # every sample exactly once
        assert all(len(keys) > 0 for keys in per_rank)
    assert r["resampled"] == [[13, 13], [13, 13]] == [[math.ceil(999 / 80)] * 2] * 2
    (s0, n0, k0), (s1, n1, k1) = r["exact_padded"]
    assert s0 == n0 == s1 == n1  # equal batch counts on both ranks
    assert not set(k0) & set(k1) and len(k0) + len(k1) == 1438  # padding only repeats a rank's own samples
