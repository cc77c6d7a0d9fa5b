"""The functional forms of the mixing / noise / regulariser methods and the model options
(PNI, DropBlock, VIB, EOT attack gradients) do exactly what their formulas say."""
import math

import pytest
import torch
import torch.nn.functional as F

from scaletrain.attacks import create_attack
from scaletrain.engine.optim import param_groups
from scaletrain.methods.mixing import beta_draws, cutmix_batch, cutout_batch, mixup_batch, partners
from scaletrain.methods.noise import gaussian_noise_batch
from scaletrain.methods.regularisers import confidence_penalty, entropy, huber_loss
from scaletrain.models.cnn import DigitsCNN
from scaletrain.models.dropblock import DropBlock2d, dropblock_mask
from scaletrain.models.pni import apply_pni, pni_layers
from scaletrain.models.vib import VIBHead, apply_vib, gaussian_kl


def gens(n, seed=0):
    return [torch.Generator().manual_seed(seed * 1000 + i) for i in range(n)]


def labelled_batch(n=16, side=12):
    """Sample i is the constant image (i + 1) / (n + 1), label i % 10, so every pixel says its source."""
    x = ((torch.arange(n, dtype=torch.float32) + 1) / (n + 1)).view(n, 1, 1, 1).expand(n, 1, side, side).clone()
    return x, torch.arange(n) % 10


def test_cutmix_labels_mix_in_the_patch_area_proportion():
    x, y = labelled_batch(16)
    y = torch.arange(16)  # 16 classes: partners have distinct labels
    x_mix, y_mix = cutmix_batch(x, y, 16, alpha=1.0, generator=torch.Generator().manual_seed(3))
    j = partners(16)
    shares = []
    for i in range(16):
        from_partner = (x_mix[i] == x[j[i]]).float().mean()          # pixels pasted from the partner
        assert torch.all((x_mix[i] == x[i]) | (x_mix[i] == x[j[i]]))
        assert y_mix[i, y[j[i]]].item() == pytest.approx(from_partner.item(), abs=1e-6)
        assert y_mix[i, y[i]].item() == pytest.approx(1 - from_partner.item(), abs=1e-6)
        assert y_mix[i].sum().item() == pytest.approx(1.0, abs=1e-6)
        shares.append(from_partner.item())
    assert 0 < min(max(shares), 1) and len(set(shares)) > 3       # real, varied patches
    # the patch is one axis-aligned rectangle
    i = max(range(16), key=lambda k: shares[k])
    rows, cols = (x_mix[i, 0] == x[j[i], 0]).nonzero().unbind(1)
    assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) == len(rows)


def test_mixing_is_keyed_per_sample_so_a_split_batch_gives_the_same_result():
    x, y = labelled_batch(8)
    full = cutmix_batch(x, y, 10, alpha=0.5, generator=gens(8))
    halves = [cutmix_batch(x[:4], y[:4], 10, alpha=0.5, generator=gens(8)[:4]),
              cutmix_batch(x[4:], y[4:], 10, alpha=0.5, generator=gens(8)[4:])]
    assert torch.equal(full[0], torch.cat([h[0] for h in halves]))
    assert torch.equal(full[1], torch.cat([h[1] for h in halves]))
    a, b = mixup_batch(x, y, 10, 0.4, gens(8)), mixup_batch(x[4:], y[4:], 10, 0.4, gens(8)[4:])
    assert torch.equal(a[0][4:], b[0]) and torch.equal(a[1][4:], b[1])


def test_mixup_pixels_and_labels_use_the_same_lambda():
    x, _ = labelled_batch(10)
    y = torch.arange(10)
    x_mix, y_mix = mixup_batch(x, y, 10, alpha=0.4, generator=torch.Generator().manual_seed(1))
    j = partners(10)
    lam = y_mix[torch.arange(10), y]
    torch.testing.assert_close(x_mix, lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[j])
    torch.testing.assert_close(y_mix[torch.arange(10), y[j]], 1 - lam)


def test_beta_draws_have_the_beta_moments():
    a = 0.4
    d = beta_draws(a, 4000, torch.Generator().manual_seed(0))
    assert d.min() >= 0 and d.max() <= 1
    assert d.mean().item() == pytest.approx(0.5, abs=0.02)
    assert d.var().item() == pytest.approx(1 / (4 * (2 * a + 1)), rel=0.08)   # Var Beta(a, a)


def test_cutout_zeroes_a_size_by_size_square_clipped_at_the_border():
    x = torch.ones(400, 1, 16, 16)
    out = cutout_batch(x, 6, generator=torch.Generator().manual_seed(0))
    zeros = (out == 0).flatten(1).sum(1)
    assert zeros.max().item() == 36 and zeros.min().item() >= 9     # 6x6, at worst a 3x3 corner
    for i in range(20):                                             # each erased region is one rectangle
        r, c = (out[i, 0] == 0).nonzero().unbind(1)
        assert (r.max() - r.min() + 1) * (c.max() - c.min() + 1) == len(r)
    # expected erased area of a uniform centre: E[rows] * E[cols], rows = min(c+3,16)-max(c-3,0)
    e = sum(min(c + 3, 16) - max(c - 3, 0) for c in range(16)) / 16
    assert zeros.float().mean().item() == pytest.approx(e * e, rel=0.05)
    assert torch.equal(cutout_batch(x, 6, torch.Generator().manual_seed(0), prob=0.0), x)


def test_gaussian_noise_has_the_configured_std_and_is_keyed_per_sample():
    x = torch.full((64, 1, 28, 28), 0.5)
    out = gaussian_noise_batch(x, 0.25, gens(64))
    assert (out - x).std().item() == pytest.approx(0.25, rel=0.01)
    assert (out - x).mean().abs().item() < 0.005
    assert torch.equal(out[32:], gaussian_noise_batch(x[32:], 0.25, gens(64)[32:]))
    assert out.min() < 0                                              # not clipped (Cohen et al.)
    assert gaussian_noise_batch(x, 0.25, gens(64), clip=True).min() >= 0


def test_entropy_confidence_penalty_and_huber_follow_their_formulas():
    torch.manual_seed(0)
    z, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    p = z.softmax(1)
    torch.testing.assert_close(entropy(z), -(p * p.log()).sum(1))
    torch.testing.assert_close(confidence_penalty(z, 0.3), -0.3 * entropy(z).mean())
    t = F.one_hot(y, 4).float()
    r = (p - t).abs()
    h = torch.where(r <= 0.5, 0.5 * r ** 2, 0.5 * (r - 0.25)).sum(1).mean()
    torch.testing.assert_close(huber_loss(z, y, delta=0.5), h)
    torch.testing.assert_close(huber_loss(z, t, delta=0.5), h)        # soft targets too


def test_pni_noise_is_alpha_times_std_w_alpha_gets_gradients_and_no_weight_decay():
    torch.manual_seed(0)
    model = apply_pni(DigitsCNN(width=8), "channel", init=0.25)
    layers = pni_layers(model)
    assert len(layers) == 4 and layers[0].pni_alpha.shape == (8, 1, 1, 1)
    lin = layers[-1]
    calls = int(lin.pni_calls)
    eta = lin.noise()                                                  # the next draw, replayed below
    lin.pni_calls.fill_(calls)
    w_noisy = lin.noisy_weight().detach()
    torch.testing.assert_close(w_noisy - lin.weight.detach(), 0.25 * lin.weight.detach().std() * eta)
    assert eta.std().item() == pytest.approx(1.0, abs=0.05)
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8)
    F.cross_entropy(model(x), y).backward()
    assert all(m.pni_alpha.grad is not None and m.pni_alpha.grad.abs().sum() > 0 for m in layers)
    groups = param_groups(model)
    assert {id(p) for p in groups[1]["params"]} == {id(m.pni_alpha) for m in layers}
    assert groups[1]["weight_decay"] == 0.0 and "weight_decay" not in groups[0]
    opt = torch.optim.SGD(groups, lr=0.0, weight_decay=0.5)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]
    model.eval()                                                       # noise kept at test time
    assert not torch.equal(model(x), model(x))


def test_pni_layerwise_keeps_weights_and_state_dict_round_trips():
    torch.manual_seed(0)
    plain = DigitsCNN(width=8)
    sd = {k: v.clone() for k, v in plain.state_dict().items()}
    model = apply_pni(plain, "layer", init=0.1, seed=5)
    assert all(m.pni_alpha.numel() == 1 for m in pni_layers(model))
    for k, v in sd.items():
        assert torch.equal(model.state_dict()[k], v)
    x = torch.rand(4, 1, 8, 8)
    model.eval()
    twin = apply_pni(DigitsCNN(width=8), "layer", init=0.3, seed=99)
    twin.load_state_dict(model.state_dict())
    twin.eval()
    assert torch.equal(model(x), twin(x))          # same weights, alphas, seed and counters: same noise


def test_dropblock_drops_blocks_at_the_configured_rate_and_is_identity_in_eval():
    m = dropblock_mask((400, 4, 12, 12), 0.15, 1, generator=torch.Generator().manual_seed(0))
    assert (1 - m.mean()).item() == pytest.approx(0.15, abs=0.005)     # block 1 = dropout of the rate
    m3 = dropblock_mask((400, 4, 12, 12), 0.15, 3, generator=torch.Generator().manual_seed(0))
    assert 0.12 < (1 - m3.mean()).item() <= 0.15                       # overlapping blocks: a bit below
    db = DropBlock2d(0.2, 3)
    x = torch.ones(64, 8, 10, 10)
    out = db(x)
    per_sample = out.flatten(1)
    torch.testing.assert_close(per_sample.mean(1), torch.ones(64))       # each sample rescaled to keep its mean
    assert per_sample.min(1).values.max() == 0.0                         # every sample lost a block
    kept = per_sample.max(1, keepdim=True).values
    assert bool(((per_sample == 0) | (per_sample == kept)).all())        # one scale per sample
    db.eval()
    assert torch.equal(db(x), x)


def test_dropblock_blocks_are_block_size_squares():
    for bs in (2, 3, 4):
        g, keep = torch.Generator(), None
        for seed in range(3000):       # find a draw with exactly one block centre
            g.manual_seed(seed)
            k = dropblock_mask((1, 1, 20, 20), 0.02, bs, generator=g)
            if 0 < (k == 0).sum() <= bs * bs:
                keep = k
                break
        assert keep is not None and (keep == 0).sum() == bs * bs
        r, c = (keep[0, 0] == 0).nonzero().unbind(1)
        assert r.max() - r.min() + 1 == bs and c.max() - c.min() + 1 == bs


def test_vib_kl_matches_torch_distributions_and_eval_is_deterministic():
    torch.manual_seed(0)
    mu, sigma = torch.randn(6, 3), torch.rand(6, 3) + 0.1
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu, sigma),
                                            torch.distributions.Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(gaussian_kl(mu, sigma), ref)
    model = apply_vib(DigitsCNN(width=8), 4)
    assert isinstance(model.head[-1], VIBHead) and model.head[-1].decoder.out_features == 10
    x = torch.rand(5, 1, 8, 8)
    model.train()
    model(x)
    assert model.head[-1].last_kl.item() > 0
    model.eval()
    assert torch.equal(model(x), model(x))


def test_eot_averages_the_gradient_over_forwards():
    torch.manual_seed(0)
    model = apply_pni(DigitsCNN(width=8), "layer", init=0.5).eval()
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    atk = create_attack("pgd", eps=0.1, steps=1, eot=5)
    assert atk.eot_samples == 5
    start = {id(m): int(m.pni_calls) for m in pni_layers(model)}
    loss, grad, _ = atk.loss_and_grad(model, x, y)
    for m in pni_layers(model):
        assert int(m.pni_calls) == start[id(m)] + 5                     # five forwards
        m.pni_calls.fill_(start[id(m)])
    grads = []
    for _ in range(5):
        xr = x.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)[0])
    torch.testing.assert_close(grad, torch.stack(grads).mean(0))
    assert not torch.allclose(grads[0], grads[1])                     # the draws differ
    with pytest.raises(Exception, match="eot"):
        create_attack("pgd", eps=0.1, eot=0)


def test_the_evaluation_suite_passes_eot_to_its_attacks():
    from scaletrain.config import load_config
    from scaletrain.evaluate.suite import build_eval_attack
    cfg = load_config(None, ["eval.eot_samples=3"]).eval
    assert build_eval_attack("pgd", 0.1, cfg).eot_samples == 3
    assert build_eval_attack("pgd:eot=2", 0.1, cfg).eot_samples == 2      # the spec's own option wins
    assert build_eval_attack("fgsm", 0.1, cfg).eot_samples == 3
