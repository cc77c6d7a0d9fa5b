"""The method contract: events a method declares, its state, and how methods compose.

In the spirit of Composer's Event/Algorithm split (kept simpler): a method is an object that
acts at named points of the training step. It DECLARES the events it handles; the trainer
calls exactly those, nothing is probed with `hasattr`, and a misspelled hook is an error when
the class is defined (never a silent no-op).

    event            handler signature                                   when
    BEFORE_FORWARD   before_forward(x, y, ctx) -> (x, y)                 batch transform (mixing, noise)
    LOSS             loss(model, x, y, ctx) -> MethodOutput              the loss (one method owns it)
    AFTER_LOSS       after_loss(out, x, y, ctx) -> MethodOutput          add a regulariser / reshape the loss
    AFTER_BACKWARD   after_backward(ctx)                                 input gradients of the same backward
    AFTER_STEP       after_step(ctx)                                     after the optimizer step
    EPOCH_END        epoch_end(ctx)                                      after each epoch

`y` after a batch transform may be class indices (int64, [N]) or soft targets (float, [N, C]);
`hard_labels(y)` gives indices for attacks. `replays` (class attribute or set in __init__) is a
declared property: the trainer trains on each batch that many times (Free AT).

State: `state_dict()` / `load_state_dict(sd)` hold everything that changes during training
(a Free-AT perturbation, guard statistics, ...); the trainer saves them in every checkpoint
(per rank) and restores them on resume. Values must be tensors, numbers, strings, None, or
lists/dicts of those (checkpoints are read with `weights_only=True`). By default the
attributes named in `state_attrs` are saved.

Randomness: use `ctx.rng` (a `scaletrain.rng.SampleRNG` keyed by global sample index), never
the global torch RNG, so 1 and N ranks give the same numbers for the same samples.
"""
from __future__ import annotations

import difflib
import enum
from typing import Any, Dict, List, NamedTuple, Sequence, Tuple

import torch


class Event(str, enum.Enum):
    BEFORE_FORWARD = "before_forward"
    LOSS = "loss"
    AFTER_LOSS = "after_loss"
    AFTER_BACKWARD = "after_backward"
    AFTER_STEP = "after_step"
    EPOCH_END = "epoch_end"


HANDLERS = {e.value for e in Event}
_HOOKISH = ("on_", "before_", "after_", "epoch_")
# public methods of Method itself that are not event handlers
_API = {"state_dict", "load_state_dict", "handles", "check_config", "rollback_state", "load_rollback_state",
        "replays_for"}


class MethodOutput(NamedTuple):
    loss: torch.Tensor
    logits: torch.Tensor                         # logits used for training accuracy
    info: Dict[str, Any]                         # extra scalars to log


def hard_labels(y: torch.Tensor) -> torch.Tensor:
    """Class indices of `y` (soft targets [N, C] -> argmax)."""
    return y.argmax(1) if y.dim() == 2 else y


def _check_events(cls) -> None:
    """Class-creation check: declared events exist and are implemented; no stray hook names."""
    name = cls.__name__
    events = cls.__dict__.get("events", getattr(cls, "events", ()))
    if isinstance(events, (str, Event)):
        raise TypeError(f"{name}.events must be a tuple of Event, got a single {events!r}")
    for e in events:
        if not isinstance(e, Event):
            close = difflib.get_close_matches(str(e).lower(), HANDLERS, n=1)
            hint = f" (did you mean Event.{close[0].upper()}?)" if close else ""
            raise TypeError(f"{name}.events: {e!r} is not a scaletrain.methods.Event{hint}")
        if getattr(cls, e.value, None) is getattr(Method, e.value, None):
            raise TypeError(f"{name} declares {e} but does not define {e.value}()")
    declared = {e.value for e in events}
    for attr, val in vars(cls).items():
        if attr.startswith("_") or not callable(val) or attr in _API:
            continue
        if attr in HANDLERS and attr not in declared:
            raise TypeError(f"{name} defines {attr}() but does not declare Event.{attr.upper()} in `events` "
                            f"(the trainer would never call it)")
        if attr not in HANDLERS:
            close = difflib.get_close_matches(attr, HANDLERS, n=1, cutoff=0.75)
            if attr.startswith(_HOOKISH) or close:
                hint = f"; did you mean {close[0]}()?" if close else ""
                raise TypeError(f"{name}.{attr}() looks like an event handler but no event has that name "
                                f"(events: {', '.join(sorted(HANDLERS))}){hint}")


class Method:
    """A robust-training method (see the module docstring). Subclasses set `events` and define
    the matching handlers; the checks run when the subclass is created."""

    name = "method"
    events: Tuple[Event, ...] = ()
    replays: int = 1
    state_attrs: Tuple[str, ...] = ()
    rollback_keep: Tuple[str, ...] = ()      # state kept across a rollback (e.g. a guard's response)

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        _check_events(cls)

    def __init__(self, cfg=None):
        self.cfg = cfg

    def handles(self, event: Event) -> bool:
        return event in self.events

    # ---- state ----------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in self.state_attrs}

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        unknown = set(sd) - set(self.state_attrs)
        if unknown:
            raise KeyError(f"{type(self).__name__}: unexpected state keys {sorted(unknown)}")
        for k, v in sd.items():
            setattr(self, k, v)

    def rollback_state(self) -> Dict[str, Any]:
        """The part of the state that survives a rollback (the trainer re-applies it after
        reloading the checkpoint, so e.g. a lowered step size is not rolled back too)."""
        sd = self.state_dict()
        return {k: sd[k] for k in self.rollback_keep}

    def load_rollback_state(self, sd: Dict[str, Any]) -> None:
        for k, v in sd.items():
            setattr(self, k, v)

    # ---- config checks (at load, before anything is built) ---------------------
    @classmethod
    def replays_for(cls, cfg) -> int:
        """`replays` of the method this config builds (without building it)."""
        return int(cls.replays)

    @classmethod
    def check_config(cls, cfg, key: str) -> None:
        """Raise ConfigError naming `key`.<field> for impossible settings of this method."""

    # ---- default handlers (never called unless declared and overridden) ---------
    def before_forward(self, x, y, ctx):
        raise NotImplementedError

    def loss(self, model, x, y, ctx) -> MethodOutput:
        raise NotImplementedError

    def after_loss(self, out: MethodOutput, x, y, ctx) -> MethodOutput:
        raise NotImplementedError

    def after_backward(self, ctx) -> None:
        raise NotImplementedError

    def after_step(self, ctx) -> None:
        raise NotImplementedError

    def epoch_end(self, ctx) -> None:
        raise NotImplementedError


class Composed(Method):
    """Several methods acting as one: exactly one handles LOSS; the others transform the batch,
    adjust the loss, or act after backward/step/epoch, in list order. `replays` is the
    main (LOSS) method's. State is saved per member."""

    name = "composed"
    events = tuple(Event)

    def __init__(self, methods: Sequence[Method]):
        super().__init__(None)
        self.methods: List[Method] = list(methods)
        owners = [m for m in self.methods if m.handles(Event.LOSS)]
        if len(owners) != 1:
            raise ValueError(f"exactly one composed method must handle Event.LOSS, got "
                             f"{[m.name for m in owners]}")
        self.main = owners[0]
        self.replays = int(self.main.replays)
        self.events = tuple(e for e in Event if any(m.handles(e) for m in self.methods))
        self.name = "+".join(m.name for m in self.methods)
        self._by = {e: [m for m in self.methods if m.handles(e)] for e in Event}

    def before_forward(self, x, y, ctx):
        for m in self._by[Event.BEFORE_FORWARD]:
            x, y = m.before_forward(x, y, ctx)
        return x, y

    def loss(self, model, x, y, ctx) -> MethodOutput:
        return self.main.loss(model, x, y, ctx)

    def after_loss(self, out, x, y, ctx) -> MethodOutput:
        for m in self._by[Event.AFTER_LOSS]:
            out = m.after_loss(out, x, y, ctx)
        return out

    def after_backward(self, ctx) -> None:
        for m in self._by[Event.AFTER_BACKWARD]:
            m.after_backward(ctx)

    def after_step(self, ctx) -> None:
        for m in self._by[Event.AFTER_STEP]:
            m.after_step(ctx)

    def epoch_end(self, ctx) -> None:
        for m in self._by[Event.EPOCH_END]:
            m.epoch_end(ctx)

    def state_dict(self) -> Dict[str, Any]:
        return {str(i): m.state_dict() for i, m in enumerate(self.methods)}

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        for i, m in enumerate(self.methods):
            if str(i) in sd:
                m.load_state_dict(sd[str(i)])

    def rollback_state(self) -> Dict[str, Any]:
        return {str(i): m.rollback_state() for i, m in enumerate(self.methods)}

    def load_rollback_state(self, sd: Dict[str, Any]) -> None:
        for i, m in enumerate(self.methods):
            if str(i) in sd:
                m.load_rollback_state(sd[str(i)])
