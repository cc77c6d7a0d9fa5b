"""Synchronised BatchNorm (`model.sync_bn: true`): batch statistics over all ranks' samples.

On GPUs this is `torch.nn.SyncBatchNorm` (https://pytorch.org/docs/stable/generated/torch.nn.SyncBatchNorm.html),
whose forward refuses CPU tensors. On CPU (gloo) `GlobalBatchNorm` computes the same thing:
per-channel sums, sums of squares and counts are all-reduced with the differentiable
`torch.distributed.nn.functional.all_reduce`, so the gradient also flows through the global
mean and variance (as in SyncBatchNorm), and unequal per-rank batch sizes are weighted
correctly. Running statistics use the unbiased global variance, like BatchNorm.

The engine converts the model when world size > 1, before DeepSpeed wraps it; the parameter
and buffer names do not change, so checkpoints load into the unconverted model.
"""
from __future__ import annotations

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import nn
from torch.distributed.nn.functional import all_reduce


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm over the union of every rank's batch (CPU / gloo). Works for 2-D and 4-D input."""

    def forward(self, x):
        if not (self.training and tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        count = torch.full((1,), xf.numel() / xf.shape[1], dtype=torch.float32, device=x.device)
        stats = all_reduce(torch.cat([xf.sum(dims), (xf * xf).sum(dims), count]))
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                unbiased = var.detach() * n / (n - 1).clamp_min(1.0)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.float().view(shape) + self.bias.float().view(shape)
        return y.to(x.dtype)

    def _check_input_dim(self, x):
        if x.dim() not in (2, 3, 4, 5):
            raise ValueError(f"expected 2D-5D input (got {x.dim()}D input)")


def _to_global(bn: nn.modules.batchnorm._BatchNorm) -> GlobalBatchNorm:
    new = GlobalBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                          device=bn.weight.device if bn.affine else None,
                          dtype=bn.weight.dtype if bn.affine else None)
    new.load_state_dict(bn.state_dict())
    new.train(bn.training)
    return new


def convert_sync_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Every BatchNorm layer of `module` synchronised across ranks (torch's on GPU, ours on CPU)."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        return _to_global(module)
    for name, child in module.named_children():
        new = convert_sync_batchnorm(child, device_type)
        if new is not child:
            setattr(module, name, new)
    return module


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
