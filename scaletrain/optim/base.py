"""What every Langevin optimizer shares: the ZeRO partition layout, per-element counter-based
noise, the temperature schedule and the diagnostics the trainer logs.

The engine hands a client optimizer its partition map through `set_param_slices` (see
`Engine.param_slices`): which (parameter name, element range) each of its tensors holds. Under
ZeRO 1-2 a param-group tensor is a flat fp32 partition holding pieces of several parameters;
at stage 0 it is the parameter itself. Noise for element j of parameter `name` at optimizer step
k is `counter_rng.normal(seed, k, name, j)`, so every world size and ZeRO stage draws the same
numbers for the same weights. Without a partition map (a plain `torch.optim` use) parameters are
named `param0`, `param1`, ... in order.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as tdist

from . import counter_rng
from .schedule import TemperatureSchedule


@dataclass
class Piece:
    """Elements [param_offset, param_offset + numel) of parameter `name`, stored at
    tensor.view(-1)[offset:offset + numel] of the param-group tensor that owns this piece."""
    name: str
    shape: Tuple[int, ...]
    offset: int
    param_offset: int
    numel: int

    @property
    def full(self) -> bool:
        return self.param_offset == 0 and self.numel == math.prod(self.shape)


def world_size() -> int:
    return tdist.get_world_size() if tdist.is_available() and tdist.is_initialized() else 1


class LangevinBase(torch.optim.Optimizer):
    """Base class: subclasses implement `step()` with `self.noise(...)` and `self.temperature(k)`."""

    def __init__(self, params, defaults: dict, seed: int = 0,
                 temperature: Optional[TemperatureSchedule] = None):
        super().__init__(params, defaults)
        self.seed = int(seed)
        self.schedule = temperature or TemperatureSchedule("constant", 0.0)
        self.last_temperature = self.schedule(0)
        self.max_violation = 0.0            # largest constraint violation seen (constrained variants)
        self.last_violation = 0.0
        self._pieces: Dict[int, List[Piece]] = {}
        self.param_order: List[str] = []     # every parameter of the model, in module order
        self.param_shapes: Dict[str, Tuple[int, ...]] = {}
        i = 0
        for g in self.param_groups:
            for p in g["params"]:
                name = f"param{i}"
                self._pieces[id(p)] = [Piece(name, tuple(p.shape), 0, 0, p.numel())]
                self.param_order.append(name)
                self.param_shapes[name] = tuple(p.shape)
                i += 1
        self.replicated = True               # every rank holds every element (no gathering needed)

    # ---- hooks the engine calls --------------------------------------------------------------
    def set_param_slices(self, slices: Sequence) -> None:
        """Learn which (parameter, element range) each param-group tensor holds on this rank."""
        pieces: Dict[int, List[Piece]] = {}
        local = []
        for s in slices:
            pieces.setdefault(id(s.tensor), []).append(
                Piece(s.name, tuple(s.shape), int(s.offset), int(s.param_offset), int(s.numel)))
            local.append((s.name, tuple(s.shape), int(s.numel)))
        self._pieces = pieces
        gathered = [local]
        if world_size() > 1:  # the full parameter list (a rank may own no element of some)
            gathered = [None] * world_size()
            tdist.all_gather_object(gathered, local)
        order, shapes, counts = [], {}, {}
        for rank_list in gathered:
            for name, shape, _ in rank_list:
                if name not in shapes:
                    order.append(name)
                    shapes[name] = shape
        for name, shape, n in local:
            counts[name] = counts.get(name, 0) + n
        self.param_order, self.param_shapes = order, shapes
        full_here = all(counts.get(n, 0) == math.prod(shapes[n]) for n in order)
        flag = torch.tensor([1.0 if full_here else 0.0])
        if world_size() > 1:
            tdist.all_reduce(flag, op=tdist.ReduceOp.MIN)
        self.replicated = bool(flag.item() == 1.0)

    def set_total_steps(self, total: int) -> None:
        """The run's optimizer steps (from the lr schedule): lays out the temperature schedule."""
        self.schedule.total_steps = int(total)

    # ---- helpers for subclasses ---------------------------------------------------------------
    def pieces(self, p: torch.Tensor) -> List[Piece]:
        return self._pieces.get(id(p), [])

    def temperature(self, step: int) -> float:
        return float(self.schedule(step))

    def piece_noise(self, piece: Piece, step: int, stream: int, device) -> torch.Tensor:
        return counter_rng.normal(self.seed, step, piece.name, piece.param_offset, piece.numel, stream, device)

    def noise_like(self, p: torch.Tensor, step: int, stream: int) -> torch.Tensor:
        """Noise shaped like `p`: counter-based normals where `p` holds model weights, 0 in padding."""
        z = torch.zeros(p.numel(), device=p.device, dtype=torch.float32)
        for pc in self.pieces(p):
            z[pc.offset:pc.offset + pc.numel] = self.piece_noise(pc, step, stream, p.device)
        return z.view_as(p).to(p.dtype)

    def step_count(self, p: torch.Tensor) -> int:
        return int(self.state[p].get("step", 0))

    def weight_names(self) -> List[str]:
        """Names of the weight matrices / conv kernels (>= 2 dims), in module order."""
        return [n for n in self.param_order if len(self.param_shapes[n]) >= 2]

    # ---- diagnostics ----------------------------------------------------------------------------
    def note_violation(self, v: float) -> None:
        self.last_violation = max(self.last_violation, float(v))
        self.max_violation = max(self.max_violation, float(v))

    def log_metrics(self) -> Dict[str, float]:
        """Scalars for the training log (collective when constrained: every rank calls it)."""
        out = {"temperature": self.last_temperature}
        if getattr(self, "constrained", False):
            v = torch.tensor([self.last_violation, self.max_violation], dtype=torch.float64)
            if world_size() > 1:
                tdist.all_reduce(v, op=tdist.ReduceOp.MAX)
            out["constraint_violation"] = float(v[0])
            out["constraint_violation_max"] = float(v[1])
            self.last_violation = 0.0
        return out

    def summary(self) -> Dict[str, object]:
        """For the run report: the temperature schedule and the largest violation (collective)."""
        out: Dict[str, object] = {"name": getattr(self, "registry_name", type(self).__name__),
                                  "temperature_schedule": self.schedule.describe(),
                                  "final_temperature": self.last_temperature, "noise_seed": self.seed}
        if getattr(self, "constrained", False):
            v = torch.tensor([self.max_violation], dtype=torch.float64)
            if world_size() > 1:
                tdist.all_reduce(v, op=tdist.ReduceOp.MAX)
            out["max_constraint_violation"] = float(v[0])
        return out

    def state_dict(self):
        sd = super().state_dict()
        sd["langevin"] = {"max_violation": self.max_violation, "last_temperature": self.last_temperature}
        return sd

    def load_state_dict(self, state_dict):
        extra = state_dict.get("langevin", {})
        state_dict = {k: v for k, v in state_dict.items() if k != "langevin"}
        super().load_state_dict(state_dict)
        self.max_violation = float(extra.get("max_violation", self.max_violation))
        self.last_temperature = float(extra.get("last_temperature", self.last_temperature))


class ConstraintRule:
    """Which parameters a constraint applies to: weights (>= 2 dims; biases too if asked), minus
    names matching `exclude` (fnmatch patterns) and, unless `constrain_output`, the last weight
    (the classifier head). `first_value` applies to the first weight (the first layer)."""

    def __init__(self, exclude: Sequence[str] = (), constrain_biases: bool = False,
                 constrain_output: bool = False):
        self.exclude, self.biases, self.output = list(exclude), bool(constrain_biases), bool(constrain_output)

    def constrained(self, opt: LangevinBase, name: str) -> bool:
        shape = opt.param_shapes.get(name, ())
        if len(shape) < 2 and not (self.biases and len(shape) == 1):
            return False
        if any(fnmatch.fnmatch(name, pat) for pat in self.exclude):
            return False
        weights = opt.weight_names()
        if not self.output and weights and name == weights[-1]:
            return False
        if not self.output and len(shape) == 1 and weights and name.rsplit(".", 1)[0] == weights[-1].rsplit(".", 1)[0]:
            return False   # the head's bias goes with the head
        return True

    @staticmethod
    def is_first(opt: LangevinBase, name: str) -> bool:
        weights = opt.weight_names()
        return bool(weights) and (name == weights[0] or name.rsplit(".", 1)[0] == weights[0].rsplit(".", 1)[0])
