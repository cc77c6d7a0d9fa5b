"""Forward+backward training throughput of every zoo model (samples/s), CPU or GPU.

    python bench/model_throughput.py                                   # CPU, fp32, all models
    python bench/model_throughput.py --models preact_resnet18,node_cnn --batch 16
    python bench/model_throughput.py --device cuda --bf16 --channels-last --batch 256   # GPU path

One step = forward, cross-entropy, backward, SGD step on random [0, 1] inputs of the model's
native size (MNIST nets 28x28x1, ResNets 32x32x3, continuous-depth nets 28x28x1). Every model is
measured `--repeats` times, interleaved with the reference (digits_cnn at the same batch) in
the same run, so a shared machine's load hits both alike: the table reports the median
samples/s and the median ratio to the reference. GFLOP/s counts 3x the forward FLOPs of
`describe()` (forward + backward ~ 3 forwards). On a GPU, `--bf16` runs under bf16 autocast and
`--channels-last` converts model and inputs to channels_last memory format.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scaletrain.config import load_config  # noqa: E402
from scaletrain.models import create_model  # noqa: E402
from scaletrain.models.common import describe  # noqa: E402

# name -> (channels, side, extra overrides): published sizes unless noted
MODELS = {
    "mlp": (1, 28, ["model.width=256"]),
    "wong_mnist": (1, 28, []),
    "madry_mnist": (1, 28, []),
    "trades_smallcnn": (1, 28, []),
    "preact_resnet18": (3, 32, []),
    "wrn_28_10": (3, 32, []),
    "wrn_34_10": (3, 32, []),
    "node_cnn": (1, 28, ["model.kwargs={solver: rk4, steps: 4}"]),
    "resnet_ode": (1, 28, ["model.kwargs={depth: 8, antisymmetric: true}"]),
    "sde_cnn": (1, 28, ["model.kwargs={sigma: 0.1, steps: 4}"]),
    "deq_cnn": (1, 28, ["model.kwargs={solver: anderson, max_iter: 15, backward_max_iter: 15}"]),
}
REFERENCE = ("digits_cnn", 1, 28, [])


def build(name, c, side, over, device, channels_last):
    cfg = load_config(None, [f"model.name={name}", f"model.in_channels={c}", f"model.image_size={side}", *over])
    torch.manual_seed(0)
    m = create_model(cfg.model).to(device).train()
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    return m


def step_time(model, x, y, opt, device, bf16, iters):
    def one():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    one()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        one()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters


def inputs(c, side, batch, device, channels_last):
    x = torch.rand(batch, c, side, side, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 10, (batch,), device=device)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=2, help="timed steps per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0 = all cores)")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    names = [n for n in a.models.split(",") if n]
    ref = build(REFERENCE[0], REFERENCE[1], REFERENCE[2], REFERENCE[3], a.device, a.channels_last)
    rx, ry = inputs(1, 28, a.batch, a.device, a.channels_last)
    ropt = torch.optim.SGD(ref.parameters(), lr=1e-3)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, device {a.device}, "
          f"threads {torch.get_num_threads()}, batch {a.batch}, bf16 {a.bf16}, channels_last {a.channels_last}")
    print("# load before: " + subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    print("| model | input | params | GFLOPs fwd/sample | samples/s | x digits_cnn | GFLOP/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in names:
        c, side, over = MODELS[name]
        m = build(name, c, side, over, a.device, a.channels_last)
        d = describe(m, side, c)
        x, y = inputs(c, side, a.batch, a.device, a.channels_last)
        opt = torch.optim.SGD(m.parameters(), lr=1e-3)
        times, ratios = [], []
        for _ in range(a.repeats):  # interleaved with the reference
            t = step_time(m, x, y, opt, a.device, a.bf16, a.iters)
            tr = step_time(ref, rx, ry, ropt, a.device, a.bf16, a.iters)
            times.append(t)
            ratios.append(tr / t)
        t = statistics.median(times)
        sps = a.batch / t
        gflops = 3 * d["flops_per_sample"] * sps / 1e9
        print(f"| {name} | {c}x{side}x{side} | {d['params'] / 1e6:.3f}M | {d['flops_per_sample'] / 1e9:.4f} | "
              f"{sps:.1f} | {statistics.median(ratios):.3f} | {gflops:.1f} |", flush=True)
    print("# load after: " + subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
