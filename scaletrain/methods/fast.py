"""Fast adversarial training with a catastrophic-overfitting guard.

Fast AT (Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial training",
ICLR 2020): PGD-AT with a single FGSM step from a uniform random start in the eps-ball,
step alpha = 1.25 eps (`method.attack.name=fgsm_rs`, `method.attack.alpha`):

    delta_0 ~ U[-eps, eps];  delta = clip_eps(delta_0 + alpha * sign(grad_x CE(f(x + delta_0), y)))

Catastrophic overfitting (same paper, section 5.3): during FGSM training, robustness to PGD can
collapse to ~0 within a few steps while accuracy against FGSM stays high (the model becomes
locally non-linear so a single step misses). The guard probes for it every `guard.every`
optimizer steps on the current training batch: PGD (`guard.pgd_steps`, random start, step
2.5 eps / steps) accuracy a_pgd and FGSM-RS accuracy a_fgsm (the training attack), summed over
ranks. It fires when

    a_pgd < guard.collapse * best a_pgd so far   and   a_fgsm >= a_pgd + guard.gap

and then alerts (console, train_log.jsonl, W&B) and responds (`guard.response`):
* `step_size`: the FGSM step is multiplied by `guard.step_factor` from the next step on;
* `rollback`: the run reloads the newest checkpoint at or before the last probe that did not fire
  (`ctx.request_rollback(..., at_most_step=)`: the newest checkpoint may hold the very weights the
  probe judged collapsed, when checkpoints and probes fall on the same steps) and continues with the
  step multiplied by `guard.step_factor` (the lowered step survives the rollback; replaying the
  same steps unchanged would collapse again, since the run is deterministic).
After `guard.max_responses` responses the guard only alerts. (`fired_at` holds `ctx.step` of the
probed batches, i.e. optimizer steps completed before them; alerts carry the train-log step,
one more.) Its statistics (best and last
probe accuracies, probes, responses, step scale) are method state, saved in checkpoints.
"""
from __future__ import annotations

from typing import Tuple

import torch

from . import register_method
from .adversarial import AdversarialMethod, attack_labels, pgd_at_loss, plain_section, soft_ce
from .base import Event, MethodOutput, hard_labels
from ..attacks import create_attack
from ..errors import ConfigError

RESPONSES = ("step_size", "rollback")


def fast_at_loss(model, x, y, attack, **kw) -> MethodOutput:
    """Functional fast AT: `pgd_at_loss` with an FGSM-RS attack (e.g. create_attack('fgsm_rs', eps=...))."""
    return pgd_at_loss(model, x, y, attack, **kw)


def probe_accuracy(model, x, y, attacks, generator=None) -> Tuple[int, ...]:
    """Correct counts of `model` on x under each attack (plain function; the guard sums them over ranks)."""
    out = []
    for i, atk in enumerate(attacks):
        g = generator.fork(f"probe{i}") if generator is not None else None
        x_adv = atk(model, x, y, generator=g)
        with torch.no_grad():
            was = model.training
            model.eval()
            out.append(int((model(x_adv).argmax(1) == y).sum()))
            model.train(was)
    return tuple(out)


def collapsed(pgd_acc: float, fgsm_acc: float, best_pgd: float, collapse: float, gap: float) -> bool:
    """Catastrophic overfitting: PGD accuracy fell below `collapse` x its best while FGSM stays high."""
    return pgd_acc < collapse * best_pgd and fgsm_acc >= pgd_acc + gap


@register_method("fast_at")
class FastAT(AdversarialMethod):
    name = "fast_at"
    events = (Event.LOSS, Event.AFTER_STEP)
    state_attrs = ("alpha_scale", "best_pgd", "last_pgd", "last_fgsm", "probes", "responses", "fired_at",
                   "sound_at")
    rollback_keep = ("alpha_scale", "responses", "fired_at")

    def __init__(self, cfg):
        super().__init__(cfg)
        self.guard = plain_section(cfg.guard)
        self.best_pgd, self.last_pgd, self.last_fgsm = 0.0, -1.0, -1.0
        self.probes, self.responses = 0, 0
        self.fired_at: list = []
        self.sound_at = -1                # step of the last probe that did not fire (-1: none yet)
        self._counts = [0, 0, 0]          # PGD correct, FGSM correct, samples of this step's probe

    @classmethod
    def check_config(cls, cfg, key):
        super().check_config(cfg, key)
        if cfg.attack.name not in ("fgsm_rs", "fgsm"):
            raise ConfigError(f"key '{key}.attack.name': fast_at trains with a single FGSM step; use fgsm_rs "
                              f"(random start, Wong et al. 2020) or fgsm, got '{cfg.attack.name}'")
        g, gk = cfg.guard, f"{key}.guard"
        if g.every < 0:
            raise ConfigError(f"key '{gk}.every': must be >= 0, got {g.every}")
        if g.pgd_steps < 1:
            raise ConfigError(f"key '{gk}.pgd_steps': must be >= 1, got {g.pgd_steps}")
        if g.response not in RESPONSES:
            raise ConfigError(f"key '{gk}.response': value '{g.response}' is not one of {', '.join(RESPONSES)}")
        if not 0.0 < g.collapse <= 1.0:
            raise ConfigError(f"key '{gk}.collapse': must be in (0, 1], got {g.collapse}")
        if not -1.0 <= g.gap <= 1.0:
            raise ConfigError(f"key '{gk}.gap': must be in [-1, 1], got {g.gap}")
        if not 0.0 < g.step_factor < 1.0:
            raise ConfigError(f"key '{gk}.step_factor': must be in (0, 1), got {g.step_factor}")
        if g.max_responses < 0:
            raise ConfigError(f"key '{gk}.max_responses': must be >= 0, got {g.max_responses}")
        if g.every and cfg.attack.name == "fgsm":
            raise ConfigError(f"key '{key}.attack.name': the guard's responses lower the FGSM step, but fgsm "
                              f"always steps by eps; use fgsm_rs (step method.attack.alpha, default 1.25 eps)")

    def _probing(self, step: int) -> bool:
        return bool(self.guard.every) and step % int(self.guard.every) == 0

    def loss(self, model, x, y, ctx):
        info = {}
        if self._probing(ctx.step):
            self._probe(x, y, ctx)
        x_adv = self.perturb(x, y, ctx)
        logits = model(x_adv)
        loss = self.mix_clean(model, x, y, soft_ce(logits, y, self.label_smoothing), info)
        info["alpha_scale"] = self.alpha_scale
        return MethodOutput(loss, logits, info)

    def after_step(self, ctx):
        if self._probing(ctx.step) and ctx.engine.last_was_boundary:
            self._decide(ctx)

    # ---- the guard ----------------------------------------------------------------------
    def _probe(self, x, y, ctx) -> None:
        """Probe this micro-batch; the counts of all micro-batches and ranks of the step are
        summed and judged after the optimizer step (so 1 rank x accumulation = N ranks)."""
        g, a = self.guard, self.attack_cfg
        labels = hard_labels(attack_labels(ctx.attack_model, x, y, self.target))
        pgd = create_attack("pgd", eps=a.eps, steps=int(g.pgd_steps), norm=a.norm, model_mode=a.model_mode,
                            track_best=True)
        # the FGSM of the probe takes the configured step, not the guard's lowered one: a weaker FGSM
        # would raise the probe's FGSM accuracy and fire again on the same weights (measured: MNIST
        # fast AT seed 2 fired five times at one checkpoint after rollbacks)
        fgsm = self.attack_for(ctx.step, alpha_scale=1.0)
        c_pgd, c_fgsm = probe_accuracy(ctx.attack_model, x, labels, [pgd, fgsm], ctx.rng.fork("guard"))
        self._counts = [self._counts[0] + c_pgd, self._counts[1] + c_fgsm, self._counts[2] + x.shape[0]]

    def _decide(self, ctx) -> None:
        g = self.guard
        s_pgd, s_fgsm, n = ctx.all_reduce_sum(self._counts)
        self._counts = [0, 0, 0]
        pgd_acc, fgsm_acc = s_pgd / max(n, 1), s_fgsm / max(n, 1)
        self.probes += 1
        self.last_pgd, self.last_fgsm = pgd_acc, fgsm_acc
        if not collapsed(pgd_acc, fgsm_acc, self.best_pgd, g.collapse, g.gap):
            self.best_pgd = max(self.best_pgd, pgd_acc)
            self.sound_at = int(ctx.step)
            return
        self.fired_at = list(self.fired_at) + [int(ctx.step)]
        act = self.responses < g.max_responses
        # the probe judged the weights after ctx.step updates, which the checkpoint of that step holds:
        # a rollback goes to the newest checkpoint at or before the last sound probe
        back = self.sound_at if self.sound_at >= 0 else int(ctx.step) - 1
        what = ("none (max_responses reached)" if not act else
                f"step x{g.step_factor}" + (f", rollback to the newest checkpoint of step <= {back} (the last "
                                            f"sound probe)" if g.response == "rollback" else ""))
        ctx.alert("catastrophic overfitting",
                  f"PGD-{g.pgd_steps} accuracy {pgd_acc:.3f} (best {self.best_pgd:.3f}) while FGSM accuracy "
                  f"{fgsm_acc:.3f} on the training batch; response: {what}",
                  pgd_acc=pgd_acc, fgsm_acc=fgsm_acc, best_pgd=self.best_pgd)
        if not act:
            return
        self.responses += 1
        self.alpha_scale *= float(g.step_factor)
        self.best_pgd = pgd_acc  # the baseline restarts: fire again only on a further collapse
        if g.response == "rollback":
            ctx.request_rollback(f"catastrophic overfitting at step {ctx.step}", at_most_step=back)
