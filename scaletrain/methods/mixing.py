"""Mixing and erasing augmentations, as functional forms on a batch (plain PyTorch).

    x_mix, y_soft = cutmix_batch(x, y, num_classes, alpha=1.0, generator=g)
    x_mix, y_soft = mixup_batch(x, y, num_classes, alpha=1.0, generator=g)
    x_cut         = cutout_batch(x, size=4, generator=g)

`y_soft` is a (N, C) matrix of class probabilities; `F.cross_entropy` takes it as
a target directly, so any method's CE loss trains on mixed labels unchanged.

Randomness: `generator` is one `torch.Generator` (draws for the whole batch in
order) or a sequence of N generators, one per sample (the trainer's generators
keyed by global sample index: then every sample's box / lambda does not depend on
how the global batch is split over ranks).

Partners: sample i is mixed with sample i ^ 1 of the batch (0<->1, 2<->3, ...; an
odd last sample is its own partner, i.e. left unmixed). Training streams are
shuffled, so neighbours are random pairs; and because a rank's micro-batch is an
even-sized contiguous slice of the global batch, the pairs are the same whatever
the number of ranks (a batch-wide permutation would not be).

References
* CutMix: Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers
  with Localizable Features", ICCV 2019, eq. (1)-(2): lambda ~ Beta(a, a); a box of
  side (W sqrt(1-lambda), H sqrt(1-lambda)) centred at a uniform point, clipped to the
  image; x~ = M * x_A + (1 - M) * x_B; y~ = lambda' y_A + (1 - lambda') y_B with
  lambda' = 1 - (box area / image area) after clipping (the patch's exact share).
* Mixup: Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018:
  x~ = lambda x_i + (1 - lambda) x_j, y~ = lambda y_i + (1 - lambda) y_j, lambda ~ Beta(a, a).
* Cutout: DeVries & Taylor, "Improved Regularization of Convolutional Neural Networks
  with Cutout", 2017: a size x size square at a uniform centre (it may hang over the
  border, so the erased area can be smaller) is set to `fill` (0 in [0, 1] pixel space).
"""
from __future__ import annotations

from typing import Any, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

# None | a torch.Generator | a sequence of per-sample generators | a scaletrain.rng.SampleRNG
GeneratorLike = Union[None, torch.Generator, Sequence[torch.Generator], Any]


# ----------------------------------------------------------------- random draws
def is_sample_rng(generator) -> bool:
    """A `scaletrain.rng.SampleRNG` (per-sample streams keyed by global sample index)."""
    return hasattr(generator, "fork") and hasattr(generator, "randn") and not isinstance(generator, torch.Generator)


def _uniform(n: int, k: int, generator: GeneratorLike) -> torch.Tensor:
    """(n, k) float64 uniforms in [0, 1): from a SampleRNG (per global sample index), one
    torch.Generator for the batch, or a sequence of n generators (one per sample)."""
    if is_sample_rng(generator):
        return generator.rand((n, k)).double()
    if generator is None or isinstance(generator, torch.Generator):
        dev = generator.device if generator is not None else None
        return torch.rand((n, k), generator=generator, device=dev, dtype=torch.float64).cpu()
    if len(generator) != n:
        raise ValueError(f"{len(generator)} generators for {n} samples")
    return torch.stack([torch.rand((k,), generator=g, device=g.device, dtype=torch.float64).cpu()
                        for g in generator])


def beta_from_uniform(alpha: float, u: torch.Tensor) -> torch.Tensor:
    """Beta(alpha, alpha) draws by inversion: the regularised incomplete beta function's inverse at u
    (exact, one uniform per draw; scipy comes with scikit-learn)."""
    from scipy.special import betaincinv
    return torch.from_numpy(betaincinv(alpha, alpha, u.double().numpy())).double()


def beta_draws(alpha: float, n: int, generator: GeneratorLike) -> torch.Tensor:
    """n draws of Beta(alpha, alpha) (float64) from the given generator(s)."""
    return beta_from_uniform(alpha, _uniform(n, 1, generator)[:, 0])


def partners(n: int, device=None) -> torch.Tensor:
    """Index of each sample's partner: i ^ 1, an odd last sample being its own partner."""
    idx = torch.arange(n, device=device) ^ 1
    if n % 2:
        idx[-1] = n - 1
    return idx


def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Hard labels (N,) -> probabilities (N, C); a (N, C) input is returned as is (already soft)."""
    return y.float() if y.dim() == 2 else F.one_hot(y, num_classes).float()


# ----------------------------------------------------------------- CutMix
def cutmix_boxes(lam: torch.Tensor, centre: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Integer boxes (N, 4) = (top, bottom, left, right), half-open, clipped to the image:
    side sqrt(1 - lam) * (H, W) (rounded down) centred at `centre` (N, 2) uniforms scaled to (H, W)."""
    cut = torch.sqrt(1.0 - lam)
    ch, cw = (cut * height).floor(), (cut * width).floor()
    cy, cx = (centre[:, 0] * height).floor(), (centre[:, 1] * width).floor()
    top = (cy - ch / 2).floor().clamp(0, height)
    bottom = (cy + ch / 2).floor().clamp(0, height)
    left = (cx - cw / 2).floor().clamp(0, width)
    right = (cx + cw / 2).floor().clamp(0, width)
    return torch.stack([top, bottom, left, right], 1).long()


def box_masks(boxes: torch.Tensor, height: int, width: int, device=None) -> torch.Tensor:
    """(N, 1, H, W) float masks, 1 inside each box."""
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    b = boxes.to(device)
    inside = ((rows >= b[:, 0, None, None]) & (rows < b[:, 1, None, None]) &
              (cols >= b[:, 2, None, None]) & (cols < b[:, 3, None, None]))
    return inside.unsqueeze(1).float()


def cutmix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, alpha: float = 1.0,
                 generator: GeneratorLike = None, prob: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """CutMix (Yun et al. 2019) with a box per sample, pasted from the sample's partner; labels mixed in the
    patch's exact area share. With `prob` < 1 each sample is mixed with that probability."""
    n, _, h, w = x.shape
    u = _uniform(n, 4, generator)                       # lambda, centre (2), the apply coin
    lam = beta_from_uniform(alpha, u[:, 3]) if alpha > 0 else torch.ones(n, dtype=torch.float64)
    lam = torch.where(u[:, 2] < prob, lam, torch.ones_like(lam))
    boxes = cutmix_boxes(lam, u[:, :2], h, w)
    mask = box_masks(boxes, h, w, x.device).to(x.dtype)
    j = partners(n, x.device)
    x_mix = x * (1 - mask) + x[j] * mask
    share = mask.flatten(1).mean(1)                     # area of the pasted patch / image area
    t = one_hot(y, num_classes)
    y_mix = (1 - share)[:, None].to(t.dtype) * t + share[:, None].to(t.dtype) * t[j]
    return x_mix, y_mix


# ----------------------------------------------------------------- Mixup
def mixup_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, alpha: float = 1.0,
                generator: GeneratorLike = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018) with a lambda per sample and the i ^ 1 partner."""
    n = x.shape[0]
    lam = beta_draws(alpha, n, generator).to(x.device)
    j = partners(n, x.device)
    lx = lam.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    t = one_hot(y, num_classes)
    lt = lam.to(t.dtype)[:, None]
    return lx * x + (1 - lx) * x[j], lt * t + (1 - lt) * t[j]


# ----------------------------------------------------------------- Cutout
def cutout_boxes(centre: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """(N, 4) half-open boxes of side `size` centred at `centre` (N, 2) uniforms, clipped to the image."""
    cy, cx = (centre[:, 0] * height).floor(), (centre[:, 1] * width).floor()
    half = size // 2
    top, left = (cy - half).clamp(0, height), (cx - half).clamp(0, width)
    bottom, right = (cy - half + size).clamp(0, height), (cx - half + size).clamp(0, width)
    return torch.stack([top, bottom, left, right], 1).long()


def cutout_batch(x: torch.Tensor, size: int, generator: GeneratorLike = None, fill: float = 0.0,
                 prob: float = 1.0) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): each sample (with probability `prob`) gets a size x size square,
    uniformly centred, set to `fill`."""
    n, _, h, w = x.shape
    u = _uniform(n, 3, generator)
    boxes = cutout_boxes(u[:, :2], int(size), h, w)
    mask = box_masks(boxes, h, w, x.device) * (u[:, 2] < prob).to(x.device).view(-1, 1, 1, 1).float()
    mask = mask.to(x.dtype)
    return x * (1 - mask) + fill * mask


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0,
                       reduction: str = "mean") -> torch.Tensor:
    """CE against hard (N,) or soft (N, C) targets (what `F.cross_entropy` does for both)."""
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing, reduction=reduction)


__all__ = ["cutmix_batch", "mixup_batch", "cutout_batch", "beta_draws", "partners", "one_hot",
           "cutmix_boxes", "cutout_boxes", "box_masks", "soft_cross_entropy"]
