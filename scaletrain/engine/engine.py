"""The training engine: DeepSpeed (ZeRO 0-3, bf16/fp16, accumulation, clipping) or plain PyTorch.

`build_engine(cfg, model, dist)` returns an `Engine` whose surface is the same
for both backends, so the trainer never branches on the backend:

    logits = engine.forward(x)            # the training forward (through DeepSpeed's hooks)
    engine.backward(loss)                 # scaled by 1/grad_accum, reduced across ranks at boundaries
    engine.step()                         # lr from the schedule, optimizer step, zero grad (at boundaries)
    engine.module                         # the unwrapped nn.Module: attacks run on it (GUIDE pitfall)

DeepSpeed references: config keys https://www.deepspeed.ai/docs/config-json/ ,
`deepspeed.initialize` https://deepspeed.readthedocs.io/en/latest/initialize.html ,
checkpoints https://deepspeed.readthedocs.io/en/latest/model-checkpointing.html .
"""
from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as tdist
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from .dist import DistInfo, ensure_ds_accelerator
from .optim import LRSchedule, Segment, create_optimizer, param_groups, requires_closure
from .sync_bn import convert_sync_batchnorm

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ParamSlice:
    """Which part of which model parameter an optimizer tensor holds on this rank.

    `tensor.view(-1)[offset:offset+numel]` is `param.view(-1)[param_offset:param_offset+numel]`
    of the parameter `name`. Under ZeRO 1-3 `tensor` is a flat fp32 partition (what the client
    optimizer's param_groups hold); at stage 0 / torch it is the parameter (or its fp32 master).
    """
    name: str
    shape: Tuple[int, ...]
    tensor: torch.Tensor
    offset: int
    param_offset: int
    numel: int


def _plain(d) -> Dict[str, Any]:
    if isinstance(d, DictConfig):
        return OmegaConf.to_container(d, resolve=True)
    return copy.deepcopy(dict(d or {}))


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def grad_accum_steps(cfg, world_size: int) -> int:
    """Micro-batches per optimizer step on each rank.

    With `engine.global_batch_size` set, accumulation is derived from it so the
    same config gives the same global batch at any world size.
    """
    e, bs = cfg.engine, cfg.data.batch_size
    if e.global_batch_size is None:
        return int(e.grad_accum)
    per_step = bs * world_size
    if e.global_batch_size % per_step:
        raise ConfigError(f"key 'engine.global_batch_size': {e.global_batch_size} is not a multiple of "
                          f"data.batch_size x workers = {bs} x {world_size}")
    ga = e.global_batch_size // per_step
    if e.grad_accum not in (1, ga):
        raise ConfigError(f"keys 'engine.grad_accum'={e.grad_accum} and 'engine.global_batch_size'="
                          f"{e.global_batch_size} disagree (accumulation would be {ga}); set only one")
    return ga


def deepspeed_config(cfg, world_size: int) -> Dict[str, Any]:
    """The DeepSpeed config generated from the `engine`/`data` sections, then `engine.deepspeed` merged in."""
    e, bs = cfg.engine, cfg.data.batch_size
    ga = grad_accum_steps(cfg, world_size)
    ds = {
        "train_micro_batch_size_per_gpu": int(bs),
        "gradient_accumulation_steps": ga,
        "train_batch_size": int(bs) * ga * world_size,
        "gradient_clipping": float(e.grad_clip),
        "zero_allow_untested_optimizer": True,  # our client optimizers (Langevin, ...) are "untested"
        "zero_optimization": {
            "stage": int(e.zero_stage),
            # GUIDE pitfall (DeepSpeed PR #8381): on CPU the gradient all-reduce can be skipped
            # unless both are on; tests/engine check the reduction really happens.
            "contiguous_gradients": True,
            "reduce_scatter": True,
            "overlap_comm": False,
        },
        "bf16": {"enabled": e.precision == "bf16"},
        "fp16": {"enabled": e.precision == "fp16", "initial_scale_power": 16},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    return _deep_merge(ds, _plain(e.deepspeed))


class Engine:
    """Backend-independent training engine (see module docstring)."""

    def __init__(self, cfg, module: torch.nn.Module, optimizer: torch.optim.Optimizer, dist: DistInfo,
                 grad_accum: int, ds_engine=None):
        self.cfg, self._module, self.optimizer, self.dist = cfg, module, optimizer, dist
        self.grad_accum = grad_accum
        self.ds = ds_engine
        self.backend = "deepspeed" if ds_engine is not None else "torch"
        self.precision = cfg.engine.precision
        self.grad_clip = float(cfg.engine.grad_clip)
        self.global_step = 0          # optimizer steps taken
        self.micro_step = 0           # micro-batches stepped
        self.last_was_boundary = True
        self._lr = float(cfg.optim.lr)
        self.schedule: Optional[LRSchedule] = None
        self._scaler = None
        self._closure: Optional[Callable[[], torch.Tensor]] = None
        if ds_engine is None and self.precision == "fp16":
            self._scaler = torch.amp.GradScaler("cuda")

    # ---- identity -------------------------------------------------------------
    @property
    def module(self) -> torch.nn.Module:
        return self.ds.module if self.ds is not None else self._module

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def rank(self) -> int:
        return self.dist.rank

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    @property
    def lr(self) -> float:
        return self._lr

    @property
    def zero_stage(self) -> int:
        return int(self.cfg.engine.zero_stage) if self.ds is not None else 0

    def train(self):
        (self.ds or self._module).train()
        return self

    def eval(self):
        (self.ds or self._module).eval()
        return self

    def autocast(self):
        """bf16/fp16 autocast (GPU, or bf16 on CPU); a no-op in fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])

    # ---- schedule -------------------------------------------------------------
    def set_schedule(self, schedule: LRSchedule) -> None:
        self.schedule = schedule
        self._apply_lr()
        fn = getattr(self.optimizer, "set_total_steps", None)  # e.g. a Langevin temperature schedule
        if callable(fn):
            fn(schedule.total_steps)

    def _apply_lr(self) -> None:
        if self.schedule is not None:
            self._lr = float(self.schedule(self.global_step))
        for g in self.optimizer.param_groups:
            g["lr"] = self._lr

    # ---- the step -------------------------------------------------------------
    def forward(self, x):
        return self.ds(x) if self.ds is not None else self._module(x)

    __call__ = forward

    def is_accumulation_boundary(self) -> bool:
        """Whether the *next* `step()` will update the weights."""
        return (self.micro_step + 1) % self.grad_accum == 0

    def backward(self, loss: torch.Tensor) -> None:
        if self.ds is not None:
            self.ds.backward(loss)  # DeepSpeed scales by 1/gradient_accumulation_steps itself
            return
        loss = loss / self.grad_accum
        (self._scaler.scale(loss) if self._scaler is not None else loss).backward()

    def step(self) -> bool:
        """Optimizer + schedule + zero grad at accumulation boundaries. Returns True if weights moved."""
        boundary = self.is_accumulation_boundary()
        if boundary:
            self._apply_lr()
        if self.ds is not None:
            self.ds.step()  # steps/zeroes only at its own boundary (same counter as ours)
        elif boundary:
            self._torch_step()
        self.micro_step += 1
        self.last_was_boundary = boundary
        if boundary:
            self.global_step += 1
        return boundary

    def _torch_step(self) -> None:
        params = [p for p in self._module.parameters() if p.grad is not None]
        if self._scaler is not None:
            self._scaler.unscale_(self.optimizer)
        if self.world_size > 1:  # explicit data-parallel mean: the reference for DeepSpeed
            for p in params:
                tdist.all_reduce(p.grad)
                p.grad.div_(self.world_size)
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if self._scaler is not None:
            self._scaler.step(self.optimizer)
            self._scaler.update()
        elif self.needs_closure:
            self.optimizer.step(self._global_closure)
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    # ---- closure-based optimizers (line searches: ncg) -----------------------------
    @property
    def needs_closure(self) -> bool:
        return bool(getattr(self.optimizer, "requires_closure", False))

    def set_closure(self, fn: Callable[[], torch.Tensor]) -> None:
        """The loss of the current batch at the current weights (no backward), for the next step."""
        self._closure = fn

    def _global_closure(self) -> torch.Tensor:
        """`set_closure`'s loss averaged over ranks, so every rank's line search decides alike."""
        loss = self._closure().detach().float().reshape(1)
        if self.world_size > 1:
            tdist.all_reduce(loss)
            loss /= self.world_size
        return loss[0]

    # ---- ZeRO partition awareness ------------------------------------------------
    def param_slices(self) -> List[ParamSlice]:
        """Map this rank's optimizer tensors to (parameter name, element range).

        Lets a client optimizer key per-element randomness by (parameter, element index), the
        same at any world size and ZeRO stage (counter-based Langevin noise)."""
        names = {id(p): n for n, p in self.module.named_parameters()}
        opt = self.ds.optimizer if self.ds is not None else self.optimizer
        out: List[ParamSlice] = []
        if self.zero_stage == 3:
            rank = tdist.get_rank() if tdist.is_initialized() else 0
            for group in opt.fp16_groups:
                for p in group:
                    gi, off, _ = opt.grad_position[opt.get_param_id(p)]
                    part = p.ds_tensor.ds_numel
                    start = rank * part
                    valid = max(0, min(part, p.ds_numel - start))
                    if valid:
                        out.append(ParamSlice(names[id(p)], tuple(p.ds_shape), opt.fp32_partitioned_groups_flat[gi],
                                              int(off), start, valid))
        elif self.zero_stage in (1, 2):
            for gi, group in enumerate(opt.bit16_groups):
                flat = opt.single_partition_of_fp32_groups[gi]
                for p in group:
                    m = getattr(p, "_hp_mapping", None)
                    if m is not None and m.lp_fragment_address.numel > 0:
                        out.append(ParamSlice(names[id(p)], tuple(p.shape), flat, int(m.hp_fragment_address.start),
                                              int(m.lp_fragment_address.start), int(m.lp_fragment_address.numel)))
        elif hasattr(opt, "fp32_groups") and hasattr(opt, "fp16_groups"):  # stage 0 with bf16/fp16 masters
            for lp_group, hp_group in zip(opt.fp16_groups, opt.fp32_groups):
                for p, hp in zip(lp_group, hp_group):
                    out.append(ParamSlice(names[id(p)], tuple(p.shape), hp, 0, 0, p.numel()))
        else:
            for p in self.module.parameters():
                out.append(ParamSlice(names[id(p)], tuple(p.shape), p, 0, 0, p.numel()))
        return out

    def write_param(self, name: str, value: torch.Tensor) -> None:
        """Overwrite parameter `name` (full value, every rank the same) wherever the engine keeps it:
        this rank's fp32 master pieces and the module's copy, so the next optimizer step neither
        undoes nor ignores the change (non-gradient updates: Hebbian plasticity, frozen layers).
        ZeRO 0-2 (a ZeRO-3 module holds no full parameter)."""
        if self.zero_stage == 3:
            raise RuntimeError("write_param needs whole module parameters (ZeRO 0-2)")
        flat = value.detach().reshape(-1)
        with torch.no_grad():
            for s in self.param_slices():
                if s.name == name:
                    piece = flat[s.param_offset:s.param_offset + s.numel]
                    s.tensor.view(-1)[s.offset:s.offset + s.numel].copy_(piece.to(s.tensor))
            p = dict(self.module.named_parameters())[name]
            p.copy_(value.detach().reshape(p.shape).to(p))

    def all_reduce_sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over the data-parallel ranks, in place (every rank must call)."""
        if self.world_size > 1:
            tdist.all_reduce(t)
        return t

    # ---- state ----------------------------------------------------------------
    def consolidated_state_dict(self) -> Dict[str, torch.Tensor]:
        """Full fp32 `state_dict` of the module from any ZeRO stage (fp32 master weights when
        they exist). Collective under ZeRO: every rank must call it; all ranks get it."""
        module = self.module
        params = dict(module.named_parameters(remove_duplicate=False))
        full_of: Callable = lambda p: None  # noqa: E731
        if self.ds is not None:
            from deepspeed.utils import safe_get_full_fp32_param
            full_of = safe_get_full_fp32_param
        out: Dict[str, torch.Tensor] = {}
        cache: Dict[int, torch.Tensor] = {}
        for name, p in params.items():
            if id(p) not in cache:
                full = full_of(p)
                if full is None:
                    full = p.detach()
                cache[id(p)] = full.detach().float().cpu().clone()
        sd = module.state_dict()
        for k, v in sd.items():
            if k in params:
                out[k] = cache[id(params[k])].reshape(params[k].ds_shape if hasattr(params[k], "ds_shape")
                                                      else v.shape)
            else:
                out[k] = v.detach().cpu().clone()
        return out

    def save_state(self, path: str) -> None:
        """Write model + optimizer state into folder `path` (every rank calls; shared filesystem)."""
        if self.ds is not None:
            # DeepSpeed writes one file per rank/partition; rank 0 the module states.
            self.ds.save_checkpoint(path, tag="engine", client_state={}, save_latest=False)
            return
        if self.rank == 0:
            os.makedirs(path, exist_ok=True)
            state = {"model": self._module.state_dict(), "optimizer": self.optimizer.state_dict()}
            if self._scaler is not None:
                state["scaler"] = self._scaler.state_dict()
            torch.save(state, os.path.join(path, "engine.pt"))

    def load_state(self, path: str) -> None:
        """Restore from `save_state`'s folder. Never unpickles arbitrary objects (weights_only)."""
        if self.ds is not None:
            from .safe_load import install_safe_checkpoint_engine
            install_safe_checkpoint_engine(self.ds)
            load_path, _ = self.ds.load_checkpoint(path, tag="engine", load_optimizer_states=True,
                                                   load_lr_scheduler_states=False)
            if load_path is None:
                raise RuntimeError(f"DeepSpeed could not load the checkpoint in {path}")
            return
        state = torch.load(os.path.join(path, "engine.pt"), map_location=self.device, weights_only=True)
        self._module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self._scaler is not None and "scaler" in state:
            self._scaler.load_state_dict(state["scaler"])

    def set_counters(self, global_step: int, micro_step: int) -> None:
        self.global_step, self.micro_step = int(global_step), int(micro_step)
        if self.ds is not None:
            self.ds.global_steps = int(global_step)
            self.ds.micro_steps = int(micro_step)
        self._apply_lr()


def build_engine(cfg, model: torch.nn.Module, dist: DistInfo,
                 optimizer_factory: Optional[Callable] = None) -> Engine:
    """Build the engine named by `cfg.engine.backend` around `model`.

    `optimizer_factory(params) -> Optimizer` overrides the registry lookup of `cfg.optim.name`.
    """
    backend = cfg.engine.backend
    ga = grad_accum_steps(cfg, dist.world_size)
    if cfg.engine.precision == "fp16" and dist.device.type != "cuda":
        raise ConfigError("key 'engine.precision': fp16 needs a GPU; use fp32 or bf16 on CPU")
    if cfg.model.sync_bn and dist.world_size > 1:  # before DeepSpeed wraps (and ZeRO-3 partitions) it
        model = convert_sync_batchnorm(model, dist.device.type)
    model = model.to(dist.device)
    make_opt = optimizer_factory or (lambda params: create_optimizer(cfg.optim, params))
    if backend == "torch":
        if dist.world_size > 1:  # same initial weights on every rank (DeepSpeed does this too)
            for t in list(model.parameters()) + list(model.buffers()):
                tdist.broadcast(t.data, src=0)
        opt = make_opt(param_groups(model))
        eng = Engine(cfg, model, opt, dist, ga)
        eng._apply_lr()
        _tell_partitions(eng)
        return eng
    if backend != "deepspeed":
        raise ConfigError(f"key 'engine.backend': unknown backend '{backend}'")
    if optimizer_factory is None and requires_closure(cfg.optim.name):
        raise ConfigError(f"key 'optim.name': '{cfg.optim.name}' steps with a closure (line search), which "
                          "DeepSpeed's engine.step() cannot pass; use engine.backend=torch")
    ensure_ds_accelerator(cfg.engine.device)
    import deepspeed  # after DS_ACCELERATOR is set
    opt = make_opt(param_groups(model))
    ds_engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=deepspeed_config(cfg, dist.world_size),
                                              dist_init_required=False)
    if dist.world_size == 1 and int(cfg.engine.zero_stage) == 0:
        # One rank without ZeRO: DeepSpeed would still flatten every gradient, all-reduce it over the one
        # process and copy it back after each backward (3 ms of a 72 ms fast-AT step on MNIST, cProfile,
        # docs/benchmarks.md); the mean over one rank is the identity. ZeRO keeps its path (its optimizer
        # moves the gradients into its partitions there).
        ds_engine.enable_backward_allreduce = False
    if cfg.engine.precision != "fp32":
        _cast_float_buffers(ds_engine.module, _DTYPES[cfg.engine.precision])
    eng = Engine(cfg, model, opt, dist, ga, ds_engine=ds_engine)
    eng._apply_lr()
    _tell_partitions(eng)
    return eng


def _cast_float_buffers(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """DeepSpeed's bf16/fp16 modes cast the parameters but leave the buffers fp32 (seen at every ZeRO
    stage with deepspeed on CPU); BatchNorm's eval forward then fails on bf16 weights with fp32
    running statistics ("expected scalar type BFloat16 but found Float"). Cast the float buffers
    to the parameters' dtype."""
    for buf in module.buffers():
        if buf.is_floating_point() and buf.dtype != dtype:
            buf.data = buf.data.to(dtype)


def _tell_partitions(eng: Engine) -> None:
    """Client optimizers that define `set_param_slices(slices)` learn their ZeRO partitions."""
    fn = getattr(eng.optimizer, "set_param_slices", None)
    if callable(fn):
        fn(eng.param_slices())
