"""Krotov-Hopfield local (Hebbian) plasticity for a first layer, dense and convolutional.

Krotov & Hopfield, "Unsupervised learning by competing hidden units", PNAS 116 (2019); the
convolutional form: Grinberg, Hopfield & Krotov, "Local unsupervised learning for image
analysis", arXiv:1908.08993 (2019). For hidden unit mu with weights W_mu (a row of W) and input v:

    currents   I_mu = sum_i sign(W_mu,i) |W_mu,i|^(p-1) v_i
    ranking    over hidden units per sample: g = 1 for the largest current, -Delta for the k-th
    plasticity ds_mu,i = sum_batch g_mu (v_i - I_mu W_mu,i)
    update     W <- W + eps * ds / max|ds|,   eps decaying linearly to 0 over the phase

The fixed point has sum_i |W_mu,i|^p = 1 (unit p-norm) for every unit that keeps winning, so
`unconverged_fraction` (units whose p-norm is off 1 by more than a tolerance) measures how much
of the layer the competition never trained. Convolutional form: every image patch (unfolded
with the layer's kernel, stride, padding) is a sample, so the ranking is over channels at each
patch position. Under data parallelism the caller sums ds over ranks before `apply_update`
normalises by its maximum, so 1 and N ranks take the same step on the same global batch.
Plain PyTorch; no distributed code here.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F


def currents(w: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
    """I[b, mu] for w (K x N) and v (B x N)."""
    return v @ (torch.sign(w) * w.abs().pow(p - 1)).t()


def plasticity(w: torch.Tensor, v: torch.Tensor, p: float = 2.0, k: int = 2, delta: float = 0.4) -> torch.Tensor:
    """The summed minibatch update ds (K x N) of the dense rule (before normalisation)."""
    cur = currents(w, v, p)                                   # B x K
    order = torch.argsort(cur, dim=1, descending=True)
    g = torch.zeros_like(cur)
    rows = torch.arange(cur.shape[0], device=cur.device)
    g[rows, order[:, 0]] = 1.0                                # the winner
    if k >= 2 and cur.shape[1] >= k:
        g[rows, order[:, k - 1]] = -delta                     # the k-th ranked unit is pushed away
    return g.t() @ v - (g * cur).sum(0).unsqueeze(1) * w


def conv_patches(x: torch.Tensor, kernel: Tuple[int, int], stride=1, padding=0, dilation=1) -> torch.Tensor:
    """All patches of x (B x C x H x W) as rows (B*L x C*kh*kw): the samples of the conv rule."""
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)   # B x C*kh*kw x L
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def conv_plasticity(weight: torch.Tensor, x: torch.Tensor, p: float = 2.0, k: int = 2, delta: float = 0.4,
                    stride=1, padding=0, dilation=1) -> torch.Tensor:
    """ds for a conv weight (out x in x kh x kw): the dense rule over patches, ranking over channels."""
    v = conv_patches(x, tuple(weight.shape[2:]), stride, padding, dilation)
    return plasticity(weight.reshape(weight.shape[0], -1), v, p, k, delta).view_as(weight)


def apply_update(w: torch.Tensor, ds: torch.Tensor, eps: float, precision: float = 1e-30) -> None:
    """W += eps * ds / max|ds| (in place; ds already summed over ranks)."""
    nc = float(ds.abs().max())
    w.add_(ds, alpha=eps / max(nc, precision))


def linear_eps(eps0: float, done: int, total: int) -> float:
    """Linearly decaying learning rate: eps0 at the start, 0 after `total` updates."""
    return eps0 * max(0.0, 1.0 - done / max(total, 1))


def unit_norms(w: torch.Tensor, p: float) -> torch.Tensor:
    """sum_i |W_mu,i|^p per unit (1 at the fixed point)."""
    return w.reshape(w.shape[0], -1).abs().pow(p).sum(1)


def convergence(w: torch.Tensor, p: float, tol: float = 0.1) -> Dict[str, float]:
    """Fraction of units whose p-norm^p is off 1 by more than `tol`, and the norms' range."""
    n = unit_norms(w.detach().float(), p)
    return {"unconverged_fraction": float(((n - 1).abs() > tol).float().mean()),
            "pnorm_min": float(n.min()), "pnorm_max": float(n.max())}


def filter_grid(weight: torch.Tensor, path: str, max_filters: int = 100) -> str:
    """Save the filters (conv kernels, or dense rows reshaped to square images) as a PNG grid."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    w = weight.detach().float().cpu()
    n = min(w.shape[0], max_filters)
    if w.dim() == 4:
        imgs = w[:n].mean(1) if w.shape[1] != 3 else w[:n].permute(0, 2, 3, 1)
    else:
        side = int(round(w.shape[1] ** 0.5))
        imgs = w[:n, :side * side].reshape(n, side, side)
    cols = int(n ** 0.5 + 0.999)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols, rows), squeeze=False)
    vmax = float(w.abs().max()) or 1.0
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(imgs[i].numpy(), cmap="bwr", vmin=-vmax, vmax=vmax)
    fig.tight_layout(pad=0.1)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
