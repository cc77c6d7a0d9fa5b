"""Stages of a multi-stage recipe (AdvXL-style weak-then-strong), planned and run.

    stages = plan_stages(cfg)                  # cfg.stages, unset fields inherited; or one stage
    resolve_lengths(stages, cfg, batches_per_epoch, world_size)   # samples -> epochs + last-epoch cut
    rt = StageRuntime(cfg, engine, stages)     # the trainer owns one
    rt.enter(si, fresh)                        # tokens, optimizer reset, FLOPs per pass, timer
    rt.before_batch(si, x)                     # the ViT's token mask of this micro-batch
    rt.after_batch(si, n, replays)             # compute accounting
    rt.leave(si)

What a stage sets (docs/recipes.md): its length (epochs, or samples seen), input resolution,
ViT token keep ratio and mask kind, its method/attack as a partial section merged over the run's
(config/stages.py), peak lr, schedule and warm-up, and whether the optimizer state carries over.
Model weights always carry over.

Compute accounting: a forward pre-hook on the module counts every gradient-enabled forward
(attack iterations and training forwards; evaluation runs under no_grad and is not counted).
Each such forward is followed by one backward, so it is one "forward+backward pass"; the attack's
passes are all passes minus the training forwards (samples x replays). FLOPs per pass are measured
once per stage with `torch.utils.flop_counter.FlopCounterMode` on one sample at the stage's
resolution and token count, times 3 for forward+backward (the usual 1:2 forward:backward ratio,
Kaplan et al. 2020, "Scaling Laws for Neural Language Models", sec. 2.1). The counts are saved in
checkpoints, so a resumed run reports the same compute as an uninterrupted one.
"""
from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch

from ..attacks import attack_from_config
from ..config.stages import stage_method
from ..errors import ConfigError
from ..rng import SampleRNG


@dataclass
class Stage:
    index: int
    name: str
    epochs: int
    lr: float
    image_size: Optional[int] = None
    method: Any = None               # the merged method section, or None = the run's method
    samples: Optional[int] = None    # length in samples seen (all ranks); sets epochs/last_batches
    last_batches: Optional[int] = None  # micro-batches per rank of the last epoch (None = all)
    token_keep: float = 1.0
    token_mask: str = "random"
    schedule: Optional[str] = None   # None = optim.schedule
    warmup_steps: Optional[int] = None
    optimizer_state: str = "carry"
    replays: int = 1                 # method.replays of the stage's method (set by the Trainer: Free AT)

    def batches(self, epoch: int, per_epoch: Optional[int]) -> Optional[int]:
        """Micro-batches of `epoch` of this stage (None = the whole loader)."""
        if self.last_batches is not None and epoch == self.epochs - 1:
            return self.last_batches
        return per_epoch


def plan_stages(cfg) -> List[Stage]:
    """`cfg.stages`, unset fields inherited from the run; else one stage from `train.epochs`."""
    if not cfg.stages:
        return [Stage(0, "main", int(cfg.train.epochs), float(cfg.optim.lr))]
    out = []
    for i, s in enumerate(cfg.stages):
        out.append(Stage(
            i, s.name or f"stage{i}", int(s.epochs if s.epochs is not None else cfg.train.epochs),
            float(s.lr if s.lr is not None else cfg.optim.lr), s.image_size, stage_method(cfg, i),
            samples=s.samples, token_keep=float(s.token_keep if s.token_keep is not None else 1.0),
            token_mask=s.token_mask, schedule=s.schedule, warmup_steps=s.warmup_steps,
            optimizer_state=s.optimizer_state))
    return out


def resolve_lengths(stages: List[Stage], batch_size: int, world_size: int,
                    batches_per_epoch: Callable[[int], Optional[int]]) -> None:
    """Stages measured in samples: epochs = ceil(micro-batches / per-epoch), the last one cut."""
    for s in stages:
        if s.samples is None:
            continue
        per_epoch = batches_per_epoch(s.index)
        if not per_epoch:
            raise ConfigError(f"key 'stages[{s.index}].samples': the training loader has no known length "
                              "(shards without a manifest); give the stage in epochs")
        total = max(1, math.ceil(s.samples / (batch_size * world_size)))
        s.epochs = math.ceil(total / per_epoch)
        s.last_batches = total - (s.epochs - 1) * per_epoch


def reset_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Forget momenta / Adam moments and step counts; they are re-created at the next step.
    The client optimizer is what DeepSpeed steps at every ZeRO stage (its state is keyed by
    this rank's flat fp32 partitions), so clearing it resets the partitioned state too."""
    optimizer.state.clear()


_COUNTERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # module -> its pass-counting hook


class StageRuntime:
    """Per-stage effects on the model/optimizer, and per-stage compute and time accounting."""

    def __init__(self, cfg, engine, stages: List[Stage]):
        self.cfg, self.engine, self.stages = cfg, engine, stages
        self.stats: List[Dict[str, float]] = [
            {"samples": 0, "passes": 0, "attack_passes": 0, "seconds": 0.0, "pass_gflops": 0.0}
            for _ in stages]
        self._passes = 0
        self._t: Optional[float] = None
        self._current: Optional[int] = None
        module = engine.module
        if any(s.token_keep < 1.0 for s in stages) and not hasattr(module, "set_token_keep"):
            raise ConfigError(f"key 'stages': token_keep < 1 needs a model with token masking (a ViT), "
                              f"not {type(module).__name__}")
        old = _COUNTERS.pop(module, None)
        if old is not None:  # a later Trainer on the same module (tests, sweeps): one counter only
            old.remove()
        _COUNTERS[module] = module.register_forward_pre_hook(self._count)

    def _count(self, module, args) -> None:
        if torch.is_grad_enabled() and args and torch.is_tensor(args[0]):
            self._passes += int(args[0].shape[0])

    # ---- stage boundaries ------------------------------------------------------------------
    def enter(self, si: int, fresh: bool) -> None:
        st, module = self.stages[si], self.engine.module
        if hasattr(module, "set_token_keep"):
            module.set_token_keep(st.token_keep, st.token_mask)
        if fresh and si > 0 and st.optimizer_state == "reset":
            reset_optimizer_state(self.engine.optimizer)
        if not self.stats[si]["pass_gflops"]:
            self.stats[si]["pass_gflops"] = self._pass_gflops(st)
        self._current, self._t, self._passes = si, time.time(), 0

    def leave(self, si: int) -> None:
        self._flush_time()
        self._current = None
        if hasattr(self.engine.module, "set_token_keep"):
            self.engine.module.set_token_keep(1.0)

    def _flush_time(self) -> None:
        if self._current is not None and self._t is not None:
            now = time.time()
            self.stats[self._current]["seconds"] += now - self._t
            self._t = now

    def _pass_gflops(self, st: Stage) -> float:
        """Forward+backward GFLOPs of one sample at this stage's resolution and tokens."""
        from torch.utils.flop_counter import FlopCounterMode
        m, c = self.engine.module, int(self.cfg.model.in_channels)
        side = int(st.image_size or self.cfg.data.augment.resize or self.cfg.model.image_size)
        was = m.training
        m.eval()
        try:
            if hasattr(m, "draw_token_mask"):
                m.draw_token_mask(1, side // m.patch_size, generator=torch.Generator().manual_seed(0))
            x = torch.zeros(1, c, side, side, device=self.engine.device)
            with torch.no_grad(), self.engine.autocast(), FlopCounterMode(display=False) as fc:
                m(x)  # under the engine's autocast: bf16 weights take fp32 pixels as in training
            return 3.0 * fc.get_total_flops() / 1e9
        finally:
            m.train(was)

    # ---- per batch -------------------------------------------------------------------------
    def before_batch(self, si: int, x: torch.Tensor, index: torch.Tensor) -> None:
        """Draw this micro-batch's token mask (held for the attack and the training forward) from
        per-sample random numbers keyed by (seed, stage, global sample index) (scaletrain.rng):
        the same tokens for the same sample at any world size, and exact on resume."""
        m = self.engine.module
        if self.stages[si].token_keep < 1.0:
            grid = x.shape[-1] // m.patch_size
            noise = SampleRNG(self.cfg.seed, index, "tokens", si).rand((x.shape[0], grid * grid))
            m.draw_token_mask(x.shape[0], grid, noise=noise)

    def after_batch(self, si: int, n: int, replays: int = 1) -> None:
        s = self.stats[si]
        s["samples"] += n
        s["passes"] += self._passes
        s["attack_passes"] += max(self._passes - n * replays, 0)
        self._passes = 0

    # ---- reporting -------------------------------------------------------------------------
    def _method_cfg(self, si: int):
        return self.stages[si].method if self.stages[si].method is not None else self.cfg.method

    def describe(self, si: int) -> Dict[str, Any]:
        st, m = self.stages[si], self._method_cfg(si)
        side = int(st.image_size or self.cfg.data.augment.resize or self.cfg.model.image_size)
        try:    # iterations the attack runs (FGSM: 1, whatever `steps` the section holds)
            steps = int(getattr(attack_from_config(m.attack), "steps", 1))
        except ConfigError:   # an unused attack section (method standard) is not validated
            steps = int(m.attack.steps)
        out = {"name": st.name, "method": str(m.name), "attack": str(m.attack.name),
               "attack_eps": float(m.attack.eps), "attack_steps": steps,
               "image_size": side, "token_keep": st.token_keep, "token_mask": st.token_mask,
               "epochs": st.epochs, "lr": st.lr, "optimizer_state": st.optimizer_state}
        if m.attack.alpha is not None:
            out["attack_alpha"] = float(m.attack.alpha)
        return out

    def summary(self) -> List[Dict[str, Any]]:
        """Per stage: what it was, its time and its compute, summed over ranks."""
        from . import dist as D
        self._flush_time()
        out = []
        for si, s in enumerate(self.stats):
            samples, passes, attack = D.all_reduce_sum([s["samples"], s["passes"], s["attack_passes"]])
            out.append(dict(self.describe(si), seconds=round(s["seconds"], 3), samples=int(samples),
                            fwd_bwd_passes=int(passes), attack_fwd_bwd_passes=int(attack),
                            pass_gflops=s["pass_gflops"], attack_gflops=attack * s["pass_gflops"],
                            total_gflops=passes * s["pass_gflops"]))
        return out

    def log_row(self, si: int) -> Dict[str, float]:
        """W&B scalars of the running stage under its own name (rank 0's counts x world size)."""
        st, s, d = self.stages[si], self.stats[si], self.describe(si)
        self._flush_time()
        w = self.engine.world_size
        p = st.name
        return {f"{p}/attack_eps": d["attack_eps"], f"{p}/attack_steps": d["attack_steps"],
                f"{p}/image_size": d["image_size"], f"{p}/token_keep": d["token_keep"],
                f"{p}/seconds": s["seconds"], f"{p}/samples": s["samples"] * w,
                f"{p}/attack_fwd_bwd_passes": s["attack_passes"] * w,
                f"{p}/attack_gflops": s["attack_passes"] * w * s["pass_gflops"]}

    def state_dict(self) -> List[Dict[str, float]]:
        self._flush_time()
        return [dict(s) for s in self.stats]

    def load_state_dict(self, state: Optional[List[Dict[str, float]]]) -> None:
        if state:
            self.stats = [dict(s) for s in state]
