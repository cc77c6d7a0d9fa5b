"""Cost of keyed random layers (scaletrain.rng.SampleKeyedLayer: DropBlock, VIB, the SDE block):
a training forward + backward with the trainer's per-sample streams bound, against the same
step unbound (global torch RNG / the SDE's own generator), interleaved in the same run, medians;
prints the load average (the machine may be shared).

    python bench/keyed_layers_cost.py [--batch 100] [--reps 20]
"""
import argparse
import os
import statistics
import time

import torch

from scaletrain.models.cnn import DigitsCNN
from scaletrain.models.sde import SDEClassifier
from scaletrain.models.vib import apply_vib
from scaletrain.rng import SampleRNG, bind_sample_rng


def step(model, x, bound: bool, k: int) -> float:
    rng = SampleRNG(0, torch.arange(k * len(x), (k + 1) * len(x)), "step", k).fork("model") if bound else None
    bind_sample_rng(model, rng)
    t = time.perf_counter()
    model(x).float().logsumexp(1).mean().backward()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cases = {
        "digits_cnn + DropBlock 0.2 + VIB 32, 8x8": (apply_vib(DigitsCNN(width=16, dropblock_prob=0.2), 32),
                                                       torch.rand(a.batch, 1, 8, 8)),
        "sde_cnn width 64, 4 Euler-Maruyama steps, 28x28": (SDEClassifier(image_size=28),
                                                              torch.rand(a.batch, 1, 28, 28)),
    }
    print(f"load average before {os.getloadavg()}")
    for name, (model, x) in cases.items():
        model.train()
        keyed, plain = [], []
        for k in range(a.reps + 2):
            kt, pt = step(model, x, True, k), step(model, x, False, k)
            if k >= 2:  # warm-up
                keyed.append(kt)
                plain.append(pt)
        mk, mp = statistics.median(keyed) * 1e3, statistics.median(plain) * 1e3
        print(f"{name}: keyed {mk:.1f} ms, unbound {mp:.1f} ms per step of {a.batch} (medians of {a.reps}); "
              f"ratio {mk / mp:.2f}")
    model = cases["sde_cnn width 64, 4 Euler-Maruyama steps, 28x28"][0]
    t = time.perf_counter()
    for _ in range(1000):
        bind_sample_rng(model, None)
    print(f"bind_sample_rng over sde_cnn's modules: {(time.perf_counter() - t) * 1e3:.1f} us per call")
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
