"""Model layers that draw noise in training (DropBlock, the VIB head, the neural SDE block) take per-sample streams keyed by
global sample index from the trainer (`scaletrain.rng.bind_sample_rng`): a sample's mask / noise does
not depend on which other samples share its micro-batch, layers draw independently, eval draws
nothing, and an unbound layer falls back to the global torch RNG (plain PyTorch use).
The trainer path (DeepSpeed, 1 vs 2 ranks) is tests/methods/test_noise_mixing_dist.py."""
import torch

from scaletrain.models.cnn import DigitsCNN
from scaletrain.models.sde import SDEClassifier
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


def test_sde_training_noise_depends_on_the_key_only_so_a_restarted_run_draws_the_same():
    torch.manual_seed(0)
    run = SDEClassifier(image_size=8, width=4, sigma=0.5, steps=2).train()
    x = torch.rand(6, 1, 8, 8)
    for step in range(3):                                    # the run so far
        bind_sample_rng(run, streams(range(6 * step, 6 * step + 6), step=step))
        run(x)
    bind_sample_rng(run, streams(range(18, 24), step=3))
    out = run(x)
    restarted = SDEClassifier(image_size=8, width=4, sigma=0.5, steps=2).train()   # fresh process after a kill
    restarted.load_state_dict(run.state_dict())
    bind_sample_rng(restarted, streams(range(18, 24), step=3))
    torch.testing.assert_close(restarted(x), out, rtol=0, atol=0)
    bind_sample_rng(restarted, streams(range(21, 24), step=3))
    torch.testing.assert_close(restarted(x[3:]), out[3:], rtol=0, atol=0)   # per sample, as on rank 1
    bind_sample_rng(restarted, None)
    assert not torch.equal(restarted(x), out)                # unbound: the model's own noise generator
