"""Model layers that draw noise in training (DropBlock, the VIB head) take per-sample streams keyed by
global sample index from the trainer (`scaletrain.rng.bind_sample_rng`): a sample's mask / noise does
not depend on which other samples share its micro-batch, layers draw independently, eval draws
nothing, and an unbound layer falls back to the global torch RNG (plain PyTorch use).
The trainer path (DeepSpeed, 1 vs 2 ranks) is tests/methods/test_noise_mixing_dist.py."""
import torch

from scaletrain.models.cnn import DigitsCNN
from scaletrain.models.dropblock import DropBlock2d
from scaletrain.models.vib import apply_vib
from scaletrain.rng import SampleRNG, bind_sample_rng


def model():
    torch.manual_seed(0)   # no BatchNorm: in training it mixes the samples of a batch
    return apply_vib(DigitsCNN(width=4, batchnorm=False, dropblock_prob=0.3, dropblock_size=2), 4).train()


def streams(index, step=7):
    return SampleRNG(11, torch.as_tensor(index), "step", step, "replay", 0).fork("model")


def test_a_sample_gets_the_same_draws_in_any_micro_batch():
    m, x = model(), torch.rand(8, 1, 8, 8)
    assert bind_sample_rng(m, streams(range(100, 108))) == 2          # the DropBlock layer and the VIB head
    whole = m(x)
    bind_sample_rng(m, streams(range(104, 108)))
    half = m(x[4:])                                                      # rank 1's half of the batch
    torch.testing.assert_close(half, whole[4:], rtol=0, atol=0)
    bind_sample_rng(m, streams(range(100, 108), step=8))
    assert (m(x) - whole).abs().amax(1).min() > 1e-4                     # another step: other draws, every sample


def test_layers_draw_from_their_own_streams_and_bound_draws_leave_the_global_rng_alone():
    net = torch.nn.Sequential(DropBlock2d(0.3, 2), DropBlock2d(0.3, 2)).train()
    x = torch.ones(6, 3, 8, 8)
    bind_sample_rng(net, streams(range(6)))
    state = torch.get_rng_state()
    a, b = net[0](x), net[1](x)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(a == 0, b == 0)                              # distinct stream per layer name
    bind_sample_rng(net, streams(range(6)))
    torch.testing.assert_close(net[0](x), a, rtol=0, atol=0)            # re-bound: the same draws again


def test_eval_draws_nothing_and_unbound_layers_use_the_global_rng():
    m, x = model(), torch.rand(5, 1, 8, 8)
    m.eval()
    plain = m(x)
    bind_sample_rng(m, streams(range(5)))
    torch.testing.assert_close(m(x), plain, rtol=0, atol=0)             # DropBlock identity, VIB mean
    assert all(layer._sample_rng._draw == 0 for layer in (m.features[6], m.head[-1]))
    bind_sample_rng(m, None)
    m.train()
    torch.manual_seed(3)
    a = m(x)
    torch.manual_seed(3)
    torch.testing.assert_close(m(x), a, rtol=0, atol=0)
    assert not torch.equal(m(x), a)


def test_a_forward_on_other_rows_is_keyed_by_the_bound_batch():
    m, x = model(), torch.rand(8, 1, 8, 8)
    bind_sample_rng(m, streams(range(100, 104)))
    a = m(x)                                             # 8 rows for 4 bound samples (e.g. clean + adversarial)
    bind_sample_rng(m, streams(range(100, 104)))
    torch.testing.assert_close(m(x), a, rtol=0, atol=0)
    bind_sample_rng(m, streams(range(104, 108)))
    assert not torch.equal(m(x), a)
