"""Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021),
plain PyTorch, built for cheap adversarial-training stages (AdvXL: Wang et al., "Revisiting
Adversarial Training at Scale with a Budget", CVPR 2024).

* Normalisation inside the model: inputs are [0, 1] pixels, so attacks work in pixel space.
* Built for `image_size`, runs at any other side that is a multiple of the patch size: the
  learned position embeddings are bicubically interpolated to the new grid (as in DeiT /
  FlexiViT fine-tuning at another resolution).
* Token reduction (`set_token_keep`): only a `keep` fraction of the patch tokens enters the
  encoder, chosen by
    - `random`: a uniformly random subset per sample (FLIP / MAE-style random masking),
    - `block`:  one contiguous rectangle of patches per sample at a random place.
  The kept tokens are gathered with `torch.gather`, so the input gradient flows to the pixels
  of kept patches (zero on dropped ones) and attacks work on the masked model. The mask is
  drawn from an explicit `torch.Generator` (`draw_token_mask`) and held until the next draw,
  so the attack's forwards and the training forward of one step see the same tokens.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import register_model
from .common import Normalize

# (embed dim, depth, heads); larger ones (large 1024/24/16, huge 1280/32/16) are
# configs: model.name=vit with model.kwargs {dim, depth, heads} (configs/imagenet/)
PRESETS = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12)}
MASK_MODES = ("random", "block")


class Block(nn.Module):
    """Pre-norm transformer block: x + MHSA(LN(x)); x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)          # softmax(q k^T / sqrt(d_h)) v
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


def random_keep_indices(noise: torch.Tensor, grid: int, keep: int) -> torch.Tensor:
    """(n, keep) indices of a uniformly random subset of grid*grid patches per sample, sorted:
    the `keep` smallest of each row of `noise` (n, grid*grid) uniform numbers (MAE's shuffle)."""
    return noise.argsort(dim=1)[:, :keep].sort(dim=1).values


def block_keep_indices(noise: torch.Tensor, grid: int, keep: int) -> torch.Tensor:
    """(n, h*w) indices of one h x w rectangle of patches per sample at a random offset (from
    the first two uniform numbers of each row of `noise`), h*w the rectangle area closest to
    `keep` that fits the grid (same shape for the batch)."""
    n = noise.shape[0]
    shapes = [(h, max(1, min(grid, round(keep / h)))) for h in range(1, grid + 1)]
    h, w = min(shapes, key=lambda s: (abs(s[0] * s[1] - keep), abs(s[0] - s[1])))
    oy = (noise[:, 0] * (grid - h + 1)).long().clamp_(max=grid - h)
    ox = (noise[:, 1] * (grid - w + 1)).long().clamp_(max=grid - w)
    rows = oy[:, None, None] + torch.arange(h)[None, :, None]
    cols = ox[:, None, None] + torch.arange(w)[None, None, :]
    return (rows * grid + cols).reshape(n, h * w)


class ViT(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 224, width: int = 0,
                 mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,), *, preset: Optional[str] = None,
                 dim: Optional[int] = None, depth: Optional[int] = None, heads: Optional[int] = None,
                 patch_size: int = 16, pool: str = "cls", mlp_ratio: float = 4.0):
        super().__init__()
        from ..errors import ConfigError
        if preset is not None and preset not in PRESETS:
            raise ConfigError(f"key 'model.kwargs.preset': unknown ViT preset '{preset}'; "
                              f"available: {', '.join(PRESETS)}")
        p_dim, p_depth, p_heads = PRESETS[preset] if preset else (width or 192, 12, None)
        dim, depth = dim or p_dim, depth or p_depth
        heads = heads or p_heads or max(1, dim // 64)
        if pool not in ("cls", "mean"):
            raise ConfigError(f"key 'model.kwargs.pool': '{pool}' is not one of cls, mean")
        if image_size % patch_size:
            raise ConfigError(f"key 'model.image_size': {image_size} is not a multiple of the patch "
                              f"size {patch_size} (model.kwargs.patch_size)")
        if dim % heads:
            raise ConfigError(f"key 'model.kwargs.dim': {dim} is not divisible by heads={heads}")
        self.patch_size, self.pool, self.dim, self.grid = patch_size, pool, dim, image_size // patch_size
        self.normalize = Normalize(mean, std, in_channels)
        self.patch = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid * self.grid, dim) * 0.02)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.keep, self.mask_mode = 1.0, "random"
        self._mask: Optional[torch.Tensor] = None
        self._mask_grid = 0
        self._generator: Optional[torch.Generator] = None

    # ---- token reduction -----------------------------------------------------------------
    def set_token_keep(self, keep: float = 1.0, mode: str = "random",
                       generator: Optional[torch.Generator] = None) -> None:
        """Keep a `keep` fraction of patch tokens from now on (1.0 = all; no masking)."""
        if not 0.0 < keep <= 1.0 or mode not in MASK_MODES:
            raise ValueError(f"token keep {keep} must be in (0, 1] and mode one of {MASK_MODES}")
        self.keep, self.mask_mode, self._generator, self._mask = float(keep), mode, generator, None

    def kept_tokens(self, grid: int) -> int:
        return max(1, round(self.keep * grid * grid))

    def draw_token_mask(self, n: int, grid: Optional[int] = None, generator: Optional[torch.Generator] = None,
                        noise: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """Draw (and hold) the kept-token indices of the next `n` samples, from `noise` ((n, grid^2)
        uniform numbers, e.g. per-sample streams of scaletrain.rng) or else from `generator`."""
        if self.keep >= 1.0:
            self._mask = None
            return None
        g = grid or self.grid
        if noise is None:
            noise = torch.rand(n, g * g, generator=generator if generator is not None else self._generator)
        fn = random_keep_indices if self.mask_mode == "random" else block_keep_indices
        self._mask = fn(noise.cpu(), g, self.kept_tokens(g))
        self._mask_grid = g
        return self._mask

    # ---- forward ---------------------------------------------------------------------------
    def _pos_embed(self, grid: int) -> torch.Tensor:
        if grid == self.grid:
            return self.pos_embed
        pe = self.pos_embed.reshape(1, self.grid, self.grid, self.dim).permute(0, 3, 1, 2)
        pe = F.interpolate(pe.float(), size=(grid, grid), mode="bicubic", align_corners=False)
        return pe.to(self.pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, grid * grid, self.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if h != w or h % self.patch_size:
            raise ValueError(f"ViT input {h}x{w}: needs a square side that is a multiple of {self.patch_size}")
        grid = h // self.patch_size
        t = self.patch(self.normalize(x)).flatten(2).transpose(1, 2)     # (n, grid^2, dim)
        t = t + self._pos_embed(grid).to(t.dtype)
        if self.keep < 1.0:
            m = self._mask
            if m is None or m.shape[0] != n or self._mask_grid != grid:
                m = self.draw_token_mask(n, grid)
            t = t.gather(1, m.to(t.device)[:, :, None].expand(-1, -1, self.dim))
        if self.cls_token is not None:
            t = torch.cat([self.cls_token.expand(n, -1, -1).to(t.dtype), t], dim=1)
        for blk in self.blocks:
            t = blk(t)
        t = self.norm(t)
        return self.head(t[:, 0] if self.cls_token is not None else t.mean(1))


def _check_kwargs(kw) -> None:
    """Load-time check (models.check_config): build the model on the meta device (no memory)."""
    with torch.device("meta"):
        ViT(**kw)


@register_model("vit")
def vit(**kw):
    """ViT with dims from model.kwargs {dim, depth, heads} (or model.width as dim)."""
    return ViT(**kw)


vit.check_kwargs = _check_kwargs


def _preset(name):
    def build(**kw):
        kw.setdefault("preset", name)
        return ViT(**kw)
    build.__doc__ = f"ViT-{name[0].upper()}: dim/depth/heads {PRESETS[name]}"
    build.check_kwargs = lambda kw: _check_kwargs(dict({"preset": name}, **kw))
    return build


for _name in PRESETS:
    register_model(f"vit_{_name}")(_preset(_name))
