"""The method contract: declared events, misspelled hooks, state, composition, per-sample RNG,
the open attack objective, and config validation at load."""
import pytest
import torch
import torch.nn.functional as F

from scaletrain.attacks import create_attack
from scaletrain.config import load_config
from scaletrain.errors import ConfigError
from scaletrain.methods import Composed, Event, Method, MethodOutput, create_method
from scaletrain.rng import SampleRNG


def test_misspelled_hook_is_an_error_at_class_creation():
    with pytest.raises(TypeError, match="after_stpe.*did you mean after_step"):
        class Bad(Method):  # noqa: F841
            events = (Event.LOSS,)

            def loss(self, model, x, y, ctx):
                return None

            def after_stpe(self, ctx):
                pass
    with pytest.raises(TypeError, match="on_batch_start.*looks like an event handler"):
        class Bad2(Method):  # noqa: F841
            events = ()

            def on_batch_start(self, ctx):
                pass


def test_declared_event_without_handler_and_handler_without_declaration_raise():
    with pytest.raises(TypeError, match="declares Event.AFTER_STEP but does not define after_step"):
        class NoHandler(Method):  # noqa: F841
            events = (Event.LOSS, Event.AFTER_STEP)

            def loss(self, model, x, y, ctx):
                return None
    with pytest.raises(TypeError, match="defines after_backward.*does not declare"):
        class Undeclared(Method):  # noqa: F841
            events = (Event.LOSS,)

            def loss(self, model, x, y, ctx):
                return None

            def after_backward(self, ctx):
                pass
    with pytest.raises(TypeError, match="not a scaletrain.methods.Event"):
        class StringEvent(Method):  # noqa: F841
            events = ("loss",)


def test_trainer_rejects_an_object_that_is_not_a_method(tmp_path):
    from scaletrain.engine.trainer import _as_method

    class Duck:
        def loss(self, model, x, y, ctx):
            pass
    with pytest.raises(TypeError, match="takes a scaletrain.methods.Method"):
        _as_method(Duck())


class _Noise(Method):
    name = "noise_t"
    events = (Event.BEFORE_FORWARD, Event.AFTER_LOSS, Event.EPOCH_END)
    state_attrs = ("epochs",)

    def __init__(self):
        super().__init__()
        self.epochs = 0

    def before_forward(self, x, y, ctx):
        return x + 1.0, y

    def after_loss(self, out, x, y, ctx):
        return MethodOutput(out.loss + 10.0, out.logits, dict(out.info, reg=10.0))

    def epoch_end(self, ctx):
        self.epochs += 1


class _CE(Method):
    name = "ce_t"
    events = (Event.LOSS,)

    def loss(self, model, x, y, ctx):
        logits = model(x)
        return MethodOutput(F.cross_entropy(logits, y), logits, {})


def test_composed_method_dispatches_in_order_and_saves_member_state():
    c = Composed([_CE(), _Noise()])
    assert set(c.events) == {Event.BEFORE_FORWARD, Event.LOSS, Event.AFTER_LOSS, Event.EPOCH_END}
    assert not c.handles(Event.AFTER_STEP) and c.replays == 1
    x, y = torch.zeros(2, 3), torch.tensor([0, 1])
    lin = torch.nn.Linear(3, 2)
    x2, _ = c.before_forward(x, y, None)
    assert torch.equal(x2, x + 1)
    out = c.after_loss(c.loss(lin, x2, y, None), x2, y, None)
    assert float(out.loss) == pytest.approx(float(F.cross_entropy(lin(x + 1), y)) + 10.0)
    c.epoch_end(None)
    assert c.state_dict() == {"0": {}, "1": {"epochs": 1}}
    d = Composed([_CE(), _Noise()])
    d.load_state_dict(c.state_dict())
    assert d.methods[1].epochs == 1
    with pytest.raises(ValueError, match="exactly one"):
        Composed([_Noise()])


def test_sample_rng_depends_only_on_seed_key_index_and_draw():
    a = SampleRNG(0, torch.arange(8), "step", 3)
    b = SampleRNG(0, torch.arange(4, 8), "step", 3)
    ua, ub = a.rand((8, 5)), b.rand((4, 5))
    assert torch.equal(ua[4:], ub)                       # the same sample gets the same numbers
    assert not torch.equal(a.rand((8, 5)), ua)           # the next draw differs
    assert not torch.equal(SampleRNG(0, torch.arange(8), "step", 4).rand((8, 5)), ua)
    assert not torch.equal(a.fork("x").rand((8, 5))[:4], ua[:4])
    sub = SampleRNG(1, torch.arange(6), "k").subset(torch.tensor([1, 3]))
    full = SampleRNG(1, torch.arange(6), "k").randn((6, 2))
    assert torch.equal(sub.randn((2, 2)), full[[1, 3]])


def test_attack_accepts_sample_rng_and_an_open_objective():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    atk = create_attack("pgd", eps=0.1, steps=3)
    a = atk(model, x, y, generator=SampleRNG(0, torch.arange(6)))
    b = atk(model, x[3:], y[3:], generator=SampleRNG(0, torch.arange(3, 6)))
    torch.testing.assert_close(a[3:], b, rtol=0, atol=1e-6)   # same samples, same starts
    seen = {}

    def kl(logits, yy, clean):                            # TRADES' inner objective
        seen["clean"] = clean
        return F.kl_div(F.log_softmax(logits, 1), F.softmax(clean, 1), reduction="none").sum(1)
    adv = atk(model, x, y, generator=SampleRNG(0, torch.arange(6)), objective=kl)
    torch.testing.assert_close(seen["clean"], model(x).detach())
    assert float(kl(model(adv), y, model(x)).sum()) > float(kl(model(x), y, model(x)).sum())
    assert atk._custom is None and float((adv - x).abs().max()) <= 0.1 + 1e-6


@pytest.mark.parametrize("overrides, key", [
    (["method.name=nope"], "method.name"),
    (["method.clean_weight=1.5"], "method.clean_weight"),
    (["method.attack_target=own"], "method.attack_target"),
    (["method.attack.eps=2"], "method.attack.eps"),
    (["method.kwargs.clean_fraction=0.5"], "method.kwargs"),
    (["method.extra=[{name: pgd_at}]"], "method.extra.0.name"),
    (["method.extra=[{name: nope}]"], "method.extra.0.name"),
    (["stages=[{epochs: 1, method: {name: nope}}]"], "stages.0.method.name"),
])
def test_bad_method_config_is_rejected_at_load_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        load_config(None, overrides)


def test_default_method_is_still_pgd_at():
    m = create_method(load_config(None, []).method)
    assert m.name == "pgd_at" and m.events == (Event.LOSS,) and m.replays == 1


@pytest.mark.parametrize("args, needle", [
    (["method.name=free_at"], "'method.attack.steps'"),                          # Free AT + multi-step attack
    (["method.name=free_at", "method.attack.steps=1", "method.attack.name=fgsm", "engine.grad_accum=2"],
     "'engine.grad_accum'"),
    (["method.name=trades", "method.beta=0"], "'method.beta'"),
    (["method.name=mart", "method.beta=500"], "'method.beta'"),
    (["method.name=pgd_at", "method.beta=6"], "'method.beta'"),
    (["method.name=fast_at"], "'method.attack.name'"),
    (["method.name=fast_at", "method.attack.name=fgsm_rs", "method.guard.every=5",
      "method.guard.response=restart"], "'method.guard.response'"),
    (["method.name=fast_at", "method.attack.name=fgsm_rs", "method.guard.every=5",
      "method.guard.response=rollback"], "'train.ckpt_every'"),
    (["method.name=pgd_at", "method.guard.every=5"], "'method.guard.every'"),
    (["method.name=tradse"], "'method.name'"),
])
def test_cli_exits_2_naming_the_key(args, needle, capsys):
    from scaletrain.cli import main
    rc = main(["train", *args, "--print-config"])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
