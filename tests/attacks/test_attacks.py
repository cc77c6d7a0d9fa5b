"""The attack contract, for every registered attack, on a trained digits CNN."""
import pytest
import torch
from torch import nn

from scaletrain.attacks import (APGD, PGD, attack_from_config, available, create_attack, deepfool, fgsm, pgd)
from scaletrain.attacks.base import step_sizes
from scaletrain.config.schema import AttackConfig
from scaletrain.errors import ConfigError



def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()

EPS = {"linf": 0.1, "l2": 1.0}


def _make(name, norm, **kw):
    # DeepFool is a minimum-norm attack: unbounded here, projected in test_deepfool_projected
    eps = EPS[norm] if name != "deepfool" else float("inf")
    return create_attack(name, eps=eps, norm=norm, steps=kw.pop("steps", 10), **kw), eps


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", available())
def test_bounded_and_effective(name, norm, digits_model, digits_test):
    x, y = digits_test[0][:48], digits_test[1][:48]
    # DeepFool needs more steps on digits (most pixels sit on the box boundary)
    atk, eps = _make(name, norm, steps=20 if name == "deepfool" else 5)
    x_adv = atk(digits_model, x, y, torch.Generator().manual_seed(0))
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    d = (x_adv - x).flatten(1)
    if eps != float("inf"):
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert size.max() <= eps + 1e-5
    clean, adv = accuracy(digits_model, x, y), accuracy(digits_model, x_adv, y)
    assert clean > 0.9
    # every attack must hurt a standard-trained model clearly at these budgets
    assert adv < clean - 0.2, (name, norm, clean, adv)


@pytest.mark.parametrize("name", ["fgsm", "pgd", "apgd_ce", "deepfool", "mim"])
def test_modes_restored_and_param_grads_untouched(name, digits_model, digits_test):
    model = digits_model
    x, y = digits_test[0][:32], digits_test[1][:32]
    model.train()
    model.head.eval()                       # a mixed state must come back exactly
    before = [m.training for m in model.modules()]
    sentinel = {n: torch.full_like(p, 7.0) for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = sentinel[n].clone()
    seen = []
    h = model.register_forward_hook(lambda m, i, o: seen.append(m.training))
    bn_before = model.features[1].running_mean.clone()
    bn_count = model.features[1].num_batches_tracked.clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        create_attack(name, eps=0.1, steps=3, model_mode="eval")(model, x, y)
        assert seen and not any(seen)       # attacked in eval mode
        assert [m.training for m in model.modules()] == before
        assert torch.equal(model.features[1].running_mean, bn_before)   # eval mode: BN stats untouched
        for n, p in model.named_parameters():
            assert torch.equal(p.grad, sentinel[n]), n
        seen.clear()
        create_attack(name, eps=0.1, steps=3, model_mode="train")(model, x, y)
        assert seen and all(seen)
        assert [m.training for m in model.modules()] == before
        # train-mode forwards would move BatchNorm statistics: they are restored
        assert torch.equal(model.features[1].running_mean, bn_before)
        assert int(model.features[1].num_batches_tracked) == int(bn_count)
    finally:
        h.remove()
        for p in model.parameters():
            p.grad = None
        model.eval()
    for k, v in model.state_dict().items():      # nothing in the model changed
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_deepfool_projected(norm, digits_model, digits_test):
    x, y = digits_test[0][:64], digits_test[1][:64]
    free = create_attack("deepfool", eps=float("inf"), norm=norm, steps=10)(digits_model, x, y)
    eps = EPS[norm] / 4
    x_adv = create_attack("deepfool", eps=eps, norm=norm, steps=10)(digits_model, x, y)
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert size.max() <= eps + 1e-5 and x_adv.min() >= 0 and x_adv.max() <= 1
    free_size = (free - x).flatten(1).abs().amax(1) if norm == "linf" else (free - x).flatten(1).norm(dim=1)
    small = free_size <= eps          # where the minimal perturbation fits, projection keeps it
    assert torch.allclose(x_adv[small], free[small])
    assert accuracy(digits_model, free, y) < 0.05


def test_no_param_grad_created(digits_model, digits_test):
    x, y = digits_test[0][:16], digits_test[1][:16]
    pgd(digits_model, x, y, 0.1, steps=2)
    assert all(p.grad is None for p in digits_model.parameters())


def test_generator_reproducible(digits_model, digits_test):
    x, y = digits_test[0][:64], digits_test[1][:64]
    for name in ["pgd", "fgsm_rs", "apgd_ce"]:
        atk = create_attack(name, eps=0.1, steps=3)
        a = atk(digits_model, x, y, torch.Generator().manual_seed(1))
        b = atk(digits_model, x, y, torch.Generator().manual_seed(1))
        c = atk(digits_model, x, y, torch.Generator().manual_seed(2))
        assert torch.equal(a, b), name
        assert not torch.equal(a, c), name


def test_restarts_keep_worst_case(digits_model, digits_test):
    x, y = digits_test[0][:150], digits_test[1][:150]
    one = PGD(eps=0.1, steps=5, restarts=1, track_best=True)(digits_model, x, y, torch.Generator().manual_seed(3))
    three = PGD(eps=0.1, steps=5, restarts=3)(digits_model, x, y, torch.Generator().manual_seed(3))
    with torch.no_grad():
        fooled1 = digits_model(one).argmax(1) != y
        fooled3 = digits_model(three).argmax(1) != y
    # restart 1 of the 3-restart run draws the same start as the 1-restart run
    assert bool((fooled3 | ~fooled1).all())
    assert fooled3.sum() >= fooled1.sum()
    # and tracking the best iterate is never weaker than the last iterate
    last = PGD(eps=0.1, steps=5)(digits_model, x, y, torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert bool(((digits_model(last).argmax(1) != y) <= fooled1).all())


def test_track_best_keeps_first_fooling_else_highest_objective_iterate(digits_model, digits_test):
    """PGD(track_best) per sample: the first iterate that fools the model, else the iterate of highest
    objective; the same with an objective given per call (every sample then stays in the walk)."""
    import torch.nn.functional as F
    from scaletrain.attacks.base import random_start
    x, y = digits_test[0][:120], digits_test[1][:120]
    eps, steps = 0.06, 4
    alpha = 2.5 * eps / steps
    xa = random_start(x, eps, "linf", torch.Generator().manual_seed(5))
    lo, hi = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
    best, best_loss, done = x.clone(), torch.full((x.shape[0],), float("-inf")), torch.zeros_like(y, dtype=torch.bool)
    for t in range(steps + 1):                      # the plain walk, every iterate evaluated
        xa.requires_grad_(True)
        logits = digits_model(xa)
        loss = F.cross_entropy(logits, y, reduction="none")
        (g,) = torch.autograd.grad(loss.sum(), xa)
        xa = xa.detach()
        fooled = logits.argmax(1) != y
        take = ~done & (fooled | (loss.detach() > best_loss))
        best[take], best_loss[take] = xa[take], loss.detach()[take]
        done |= fooled
        xa = torch.max(torch.min(xa + alpha * g.sign(), hi), lo)
    assert 0 < int(done.sum()) < x.shape[0]
    ce = lambda logits, y, clean: F.cross_entropy(logits, y, reduction="none")  # noqa: E731
    for objective in (None, ce):
        got = PGD(eps=eps, steps=steps, track_best=True)(digits_model, x, y, torch.Generator().manual_seed(5),
                                                          objective=objective)
        assert torch.allclose(got, best, atol=1e-6), objective


@pytest.mark.parametrize("name", ["fgsm", "pgd", "bim", "mim", "apgd"])
def test_targeted(name, digits_model, digits_test):
    x, y = digits_test[0][:64], digits_test[1][:64]
    target = (y + 1) % 10
    atk = create_attack(name, eps=0.3, steps=10, targeted=True)
    x_adv = atk(digits_model, x, target, torch.Generator().manual_seed(0))
    with torch.no_grad():
        hit = (digits_model(x_adv).argmax(1) == target).float().mean().item()
        base = (digits_model(create_attack(name, eps=0.3, steps=10)(digits_model, x, y)).argmax(1)
                == target).float().mean().item()
    floor = 0.4 if name == "fgsm" else 0.8
    assert hit > floor and hit > base + 0.2, (hit, base)


def test_cw_and_dlr_losses(digits_model, digits_test):
    x, y = digits_test[0][:100], digits_test[1][:100]
    clean = accuracy(digits_model, x, y)
    for loss in ["cw", "dlr"]:
        adv = accuracy(digits_model, pgd(digits_model, x, y, 0.1, steps=5, loss=loss), y)
        assert adv < clean - 0.2, loss


def test_bf16_autocast(digits_model, digits_test):
    x, y = digits_test[0][:100], digits_test[1][:100]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = pgd(digits_model, x, y, 0.1, steps=10, generator=torch.Generator().manual_seed(0))
    assert x_adv.dtype == torch.float32
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert accuracy(digits_model, x_adv, y) < accuracy(digits_model, x, y) - 0.2


def test_step_schedules():
    assert step_sizes(0.1, 4, "constant") == [0.1] * 4
    cos = step_sizes(1.0, 4, "cosine")
    assert cos[0] == 1.0 and all(a > b for a, b in zip(cos, cos[1:])) and cos[-1] > 0
    assert step_sizes(1.0, 8, "step") == [1.0] * 4 + [0.1] * 2 + [0.01] * 2
    with pytest.raises(ConfigError):
        step_sizes(1.0, 4, "linear-ish")


def test_schedule_in_pgd(digits_model, digits_test):
    x, y = digits_test[0][:100], digits_test[1][:100]
    adv = pgd(digits_model, x, y, 0.1, steps=10, schedule="cosine", generator=torch.Generator().manual_seed(0))
    assert accuracy(digits_model, adv, y) < accuracy(digits_model, x, y) - 0.2


def test_functional_equals_class(digits_model, digits_test):
    x, y = digits_test[0][:50], digits_test[1][:50]
    assert torch.equal(fgsm(digits_model, x, y, 0.1), create_attack("fgsm", eps=0.1)(digits_model, x, y))
    a = pgd(digits_model, x, y, 0.1, steps=3, generator=torch.Generator().manual_seed(0))
    b = PGD(eps=0.1, steps=3)(digits_model, x, y, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert torch.equal(deepfool(digits_model, x, y, steps=5),
                       create_attack("deepfool", eps=float("inf"), norm="l2", steps=5)(digits_model, x, y))


def test_eps_zero_is_identity(digits_model, digits_test):
    x, y = digits_test[0][:20], digits_test[1][:20]
    for name in available():
        assert torch.equal(create_attack(name, eps=0.0, steps=2)(digits_model, x, y), x), name


def test_from_config_and_errors():
    atk = attack_from_config(AttackConfig(name="pgd", eps=0.2, steps=7))
    assert isinstance(atk, PGD) and atk.steps == 7 and atk.alpha == pytest.approx(2.5 * 0.2 / 7)
    assert isinstance(attack_from_config(AttackConfig(name="apgd", eps=0.1, steps=5)), APGD)
    assert attack_from_config(AttackConfig(name="mim", kwargs={"decay": 0.5})).decay == 0.5
    bad = [dict(name="nope"), dict(name="pgd", norm="l1"), dict(name="pgd", eps=-1.0),
           dict(name="pgd", loss="hinge"), dict(name="pgd", model_mode="inference"),
           dict(name="pgd", kwargs={"stepz": 3}), dict(name="pgd", steps=0)]
    for b in bad:
        with pytest.raises(ConfigError) as e:
            attack_from_config(AttackConfig(**b))
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError):
        create_attack("deepfool", eps=1.0, targeted=True)


def test_works_without_batchnorm_and_on_plain_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x = torch.rand(8, 1, 8, 8)
    y = model(x).argmax(1)
    for name in available():
        x_adv = create_attack(name, eps=0.5, steps=5)(model, x, y, torch.Generator().manual_seed(0))
        assert x_adv.shape == x.shape


@pytest.mark.parametrize("name", ["pgd", "apgd_ce", "apgd_t", "deepfool", "fgsm_rs"])
def test_bf16_module(name, digits_model, digits_test):
    """A bf16 module (e.g. a DeepSpeed bf16 engine's) is fed bf16 inputs; the perturbation stays fp32."""
    import copy
    model = copy.deepcopy(digits_model).to(torch.bfloat16)
    x, y = digits_test[0][:64], digits_test[1][:64]
    eps = float("inf") if name == "deepfool" else 0.1
    for inp in (x, x.to(torch.bfloat16)):
        x_adv = create_attack(name, eps=eps, steps=10, norm="linf" if name != "deepfool" else "l2")(
            model, inp, y, torch.Generator().manual_seed(0))
        assert x_adv.dtype == inp.dtype and x_adv.min() >= 0 and x_adv.max() <= 1
        if eps != float("inf"):
            assert (x_adv.float() - inp.float()).abs().max() <= eps + 1e-2
        with torch.no_grad():
            acc = (model(x_adv.to(torch.bfloat16)).argmax(1) == y).float().mean().item()
            clean = (model(inp.to(torch.bfloat16)).argmax(1) == y).float().mean().item()
        assert acc < clean - 0.2, (name, inp.dtype, clean, acc)
