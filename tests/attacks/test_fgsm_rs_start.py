"""fgsm_rs clip_start=false: the gradient is taken at the unclipped random start (Wong et al.'s MNIST
code); the result still lies in the eps ball and in [0, 1]."""
import torch
import torch.nn.functional as F

from scaletrain.attacks import create_attack


def test_unclipped_start_matches_hand_computation():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = torch.rand(6, 1, 4, 4)
    x[:, :, :2] = 0.0                                   # dark pixels: the clip would move the start
    y = torch.randint(0, 3, (6,))
    eps, alpha = 0.3, 0.375
    ours = create_attack("fgsm_rs", eps=eps, alpha=alpha, clip_start=False)(model, x, y, torch.Generator().manual_seed(1))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    x0 = (x + (2 * u - 1) * eps).requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x0), y, reduction="sum"), x0)
    ref = torch.min(torch.max(x0.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    assert torch.allclose(ours, ref)
    clipped = create_attack("fgsm_rs", eps=eps, alpha=alpha)(model, x, y, torch.Generator().manual_seed(1))
    assert not torch.equal(ours, clipped)
    for a in (ours, clipped):
        assert (a - x).abs().max() <= eps + 1e-6 and a.min() >= 0 and a.max() <= 1
