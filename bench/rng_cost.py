"""Cost of the per-sample random numbers methods draw (scaletrain.rng.SampleRNG) against one
torch.Generator, for a fast-AT random start on an MNIST batch (100 x 1 x 28 x 28), interleaved
in the same run; prints the load average (the machine may be shared).

    python bench/rng_cost.py [--batch 100] [--reps 50]
"""
import argparse
import os
import time

import torch

from scaletrain.rng import SampleRNG


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--reps", type=int, default=50)
    a = ap.parse_args()
    torch.set_num_threads(1)
    shape, idx = (a.batch, 1, 28, 28), torch.arange(a.batch)
    g = torch.Generator().manual_seed(0)
    t_s, t_g = [], []
    for s in range(a.reps):
        t = time.perf_counter()
        SampleRNG(0, idx + s * a.batch, "step", s).rand(shape)
        t_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        torch.rand(shape, generator=g)
        t_g.append(time.perf_counter() - t)
    med = lambda v: sorted(v)[len(v) // 2] * 1e3  # noqa: E731
    print(f"load average {os.getloadavg()}")
    print(f"SampleRNG.rand {med(t_s):.2f} ms, torch.rand {med(t_g):.2f} ms (medians of {a.reps}); "
          f"ratio {med(t_s) / med(t_g):.2f}")


if __name__ == "__main__":
    main()
