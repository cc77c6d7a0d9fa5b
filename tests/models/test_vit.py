"""ViT: resolution change by position-embedding interpolation, token masking that keeps
input gradients on kept patches, determinism from a generator, the attack suite on a
masked model, and ZeRO-3 on 2 CPU ranks (real processes)."""
import json
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from scaletrain.attacks import available as attacks_available, create_attack
from scaletrain.config.schema import ModelConfig
from scaletrain.errors import ConfigError
from scaletrain.models import create_model

HERE = os.path.dirname(__file__)


def tiny_vit(**kw):
    cfg = ModelConfig(name="vit", in_channels=1, image_size=16, mean=[0.5], std=[0.5],
                      kwargs=dict(dict(dim=32, depth=2, heads=2, patch_size=4), **kw))
    torch.manual_seed(0)
    return create_model(cfg).eval()


def test_presets_and_config_errors():
    m = create_model(ModelConfig(name="vit_tiny", in_channels=3, image_size=32, kwargs={"patch_size": 16}))
    assert (m.dim, len(m.blocks), m.blocks[0].heads) == (192, 12, 3)
    assert sum(p.numel() for p in m.parameters()) > 5_000_000      # ViT-Ti is ~5.5M parameters
    with pytest.raises(ConfigError, match="model.kwargs.preset"):
        create_model(ModelConfig(name="vit", kwargs={"preset": "gigantic"}))
    with pytest.raises(ConfigError, match="model.image_size"):
        create_model(ModelConfig(name="vit", image_size=10, kwargs={"patch_size": 4}))


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_runs_at_another_resolution(pool):
    m = tiny_vit(pool=pool)
    x = torch.rand(3, 1, 16, 16)
    # the identity interpolation is exact: at the built grid the embedding is used as is
    pe = m.pos_embed.reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    same = F.interpolate(pe, size=(4, 4), mode="bicubic", align_corners=False)
    assert torch.allclose(same, pe, atol=1e-6)
    out16 = m(x)
    for side in (8, 24, 32):
        xs = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
        out = m(xs)
        assert out.shape == (3, 10) and torch.isfinite(out).all()
    # upsampling the image by 2 and the embedding by 2 keeps the prediction close (smooth interpolation)
    up = m(F.interpolate(x, size=(32, 32), mode="nearest"))
    assert (up - out16).abs().max() < 5 * out16.abs().max()
    with pytest.raises(ValueError, match="multiple of 4"):
        m(torch.rand(1, 1, 18, 18))


@pytest.mark.parametrize("mode", ["random", "block"])
def test_masking_keeps_gradients_to_kept_patches(mode):
    m = tiny_vit()
    m.set_token_keep(0.5, mode, torch.Generator().manual_seed(3))
    x = torch.rand(4, 1, 16, 16, requires_grad=True)
    idx = m.draw_token_mask(4)
    assert idx.shape == (4, 8)                                   # 0.5 of 16 patches
    loss = F.cross_entropy(m(x), torch.arange(4))
    (g,) = torch.autograd.grad(loss, x)
    per_patch = g.abs().reshape(4, 1, 4, 4, 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(4, 16, -1).sum(-1)
    kept = torch.zeros(4, 16, dtype=torch.bool).scatter_(1, idx, True)
    assert (per_patch[kept] > 0).all()                           # every kept patch gets gradient
    assert (per_patch[~kept] == 0).all()                         # dropped patches get none
    if mode == "block":                                          # one contiguous 2x4 / 4x2 rectangle
        rows, cols = idx // 4, idx % 4
        spans = (rows.amax(1) - rows.amin(1) + 1) * (cols.amax(1) - cols.amin(1) + 1)
        assert (spans == 8).all()


def test_masks_are_deterministic_and_held_until_redrawn():
    m = tiny_vit()
    m.set_token_keep(0.25, "random")
    a = m.draw_token_mask(5, generator=torch.Generator().manual_seed(11)).clone()
    b = m.draw_token_mask(5, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a, b)
    x = torch.rand(5, 1, 16, 16)
    assert torch.equal(m(x), m(x))                               # the held mask is reused
    c = m.draw_token_mask(5, generator=torch.Generator().manual_seed(12))
    assert not torch.equal(a, c)
    m.set_token_keep(1.0)
    full = m(x)
    m2 = tiny_vit()
    assert torch.allclose(full, m2(x), atol=1e-6)                # keep 1.0 is the unmasked model


def test_attack_suite_on_masked_vit():
    m = tiny_vit()
    m.set_token_keep(0.5, "random", torch.Generator().manual_seed(0))
    x, y = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(0)), torch.arange(6)
    m.draw_token_mask(6)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(40):                                          # fit the 6 samples through the mask
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    with torch.no_grad():
        clean = F.cross_entropy(m(x), y, reduction="none")
        assert (m(x).argmax(1) == y).all()
    for name in attacks_available():
        kw = dict(eps=0.3, steps=5)
        if name == "deepfool":
            kw = dict(eps=float("inf"), norm="l2", steps=5)
        atk = create_attack(name, **kw)
        x_adv = atk(m, x, y, generator=torch.Generator().manual_seed(1))
        assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1, name
        if name != "deepfool":
            assert (x_adv - x).abs().max() <= 0.3 + 1e-6, name
        with torch.no_grad():
            adv = F.cross_entropy(m(x_adv), y, reduction="none")
        assert adv.mean() > clean.mean() + 0.1, name             # the attack found worse points


@pytest.mark.dist
@pytest.mark.timeout(420)
def test_vit_under_zero3_on_two_ranks(tmp_path):
    sys.path.insert(0, os.path.join(HERE, "..", "engine"))
    from engine_launch import run_ranks
    run_ranks(os.path.join(os.path.abspath(HERE), "vit_zero3_worker.py"), [str(tmp_path / "res")], 2)
    res = [json.loads((tmp_path / f"res.rank{r}.json").read_text()) for r in range(2)]
    for r in res:
        assert r["partitioned"]                                  # ZeRO-3 really partitioned
        assert r["pgd_max_abs_diff"] <= 1e-5                     # masked attack on engine.module = plain copy
        assert r["loss_abs_diff"] <= 1e-5
        assert r["grad_kept_nonzero"] and r["grad_dropped_zero"]
        assert r["loss_after"] < r["loss_before"]                # steps at 16 px and 8 px moved the weights
    assert res[0]["loss_after"] == res[1]["loss_after"]
