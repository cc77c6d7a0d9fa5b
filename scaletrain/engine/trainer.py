"""The training loop: stages -> epochs -> steps, with checkpoints, resume and rollback.

    for stage in stages:                         # cfg.stages, or one implicit stage
        for epoch in stage:
            for x, y in data.train_loader(epoch, stage):
                for replay in range(method.replays):                  # Free AT: m > 1
                    [BEFORE_FORWARD] x, y = method.before_forward(x, y, ctx)
                    [LOSS]           out = method.loss(engine.forward, x, y, ctx)   # ctx.attack_model = engine.module
                    [AFTER_LOSS]     out = method.after_loss(out, x, y, ctx)
                    engine.backward(out.loss); [AFTER_BACKWARD]; engine.step(); [AFTER_STEP]
                log every train.log_every steps; checkpoint every train.ckpt_every steps
            [EPOCH_END]
        checkpoint at the stage end

A method (scaletrain.methods.Method) declares its events; only declared events are called.
`ctx.rng` gives per-sample random numbers keyed by (method seed, step, replay, global sample
index), the same on 1 and N ranks; the model's random layers (DropBlock, VIB, SDE: rng.SampleKeyedLayer)
draw from forks of the same streams, bound for the step (`bind_sample_rng`) and unbound after it.
`ctx.request_rollback()` reloads the newest checkpoint and continues from it (a
catastrophic-overfitting guard); `request_rollback(reason, at_most_step=S)` reloads the newest
checkpoint of step <= S instead (the last state the method judged sound; the newest one if no
such checkpoint is left); with several ranks every rank must request it at the same
step (decide on an all-reduced metric: `ctx.all_reduce_sum`). Method state
(`state_dict`) is saved in every checkpoint (per rank) and restored on resume and rollback
(except the keys the method lists in `rollback_keep`).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
from omegaconf import OmegaConf

from . import dist as D
from .checkpoint import (CheckpointManager, latest_checkpoint, load_buffers, module_buffers, resolve_resume,
                         rng_state, set_rng_state)
from .guards import FiniteLossGuard
from .hooks import active_hooks, call
from .optim import LRSchedule, Segment
from .preempt import Preempted, StopCoordinator
from .stages import Stage, StageRuntime, plan_stages, resolve_lengths  # noqa: F401 (Stage re-exported)
from ..methods.base import Event, Method
from ..rng import SampleRNG, bind_sample_rng


@dataclass
class StepContext:
    """What a method sees besides the batch."""
    attack_model: torch.nn.Module
    engine: Any
    stage: int = 0
    epoch: int = 0
    step: int = 0
    state: Dict[str, Any] = field(default_factory=dict)   # a method's own scratch space
    rollback_reason: Optional[str] = None
    rollback_at_most: Optional[int] = None   # reload the newest checkpoint of step <= this (None: newest)
    replay: int = 0                  # replay index of this batch (Free AT), 0..replays-1
    sample_index: Optional[torch.Tensor] = None   # global sample index of each row of the batch
    rng: Optional[SampleRNG] = None  # per-sample random numbers (module scaletrain.rng)
    rollbacks: int = 0               # rollbacks so far in this run
    alert_fn: Optional[Callable] = None

    @property
    def device(self):
        return self.engine.device

    def request_rollback(self, reason: str = "requested", at_most_step: Optional[int] = None) -> None:
        self.rollback_reason, self.rollback_at_most = reason, at_most_step

    def all_reduce_sum(self, values: List[float]) -> List[float]:
        """Sum of plain numbers over ranks (every rank must call, in the same order)."""
        return D.all_reduce_sum(list(values))

    def alert(self, title: str, text: str, **metrics: float) -> None:
        """A warning for the user: console, <run_dir>/alerts.jsonl and W&B (rank 0)."""
        if self.alert_fn is not None:
            self.alert_fn(title, text, metrics)


class _Rollback(Exception):
    pass


def _as_method(method) -> Method:
    if not isinstance(method, Method):
        raise TypeError(f"the trainer takes a scaletrain.methods.Method (declared events), got "
                        f"{type(method).__name__}")
    return method


@dataclass
class Position:
    stage: int = 0
    epoch: int = 0        # within the stage
    batch: int = 0        # micro-batches consumed in the epoch


class Trainer:
    def __init__(self, cfg, engine, method, data, tracker=None, run_dir: Optional[str] = None,
                 hooks=None, method_factory: Optional[Callable] = None, eval_fn: Optional[Callable] = None):
        self.cfg, self.engine, self.method, self.data, self.tracker = cfg, engine, _as_method(method), data, tracker
        self.run_dir = run_dir or os.path.join(cfg.out_dir, cfg.name)
        self.hooks = list(hooks) if hooks is not None else active_hooks()
        if cfg.train.stop_on_nonfinite and not any(isinstance(h, FiniteLossGuard) for h in self.hooks):
            self.hooks.append(FiniteLossGuard())
        self.method_factory, self.eval_fn = method_factory, eval_fn
        self.stages = plan_stages(cfg)
        self.stage_rt = StageRuntime(cfg, engine, self.stages)
        self.ckpt = CheckpointManager(os.path.join(self.run_dir, "checkpoints"), cfg.train.keep_last)
        self.pos = Position()
        self.best: Dict[str, float] = {}
        self.last_metrics: Dict[str, float] = {}
        self.last_checkpoint: Optional[str] = None
        self.resumed_from: Optional[str] = None
        self.rollbacks = 0
        self._methods: Dict[int, Any] = {}
        self._method_states: Dict[str, Any] = {}   # restored states of methods not built yet
        self._pending_rng: Optional[dict] = None
        self._loader_state = None
        self._meter = self._new_meter()
        self.is_rank0 = engine.rank == 0
        # read every step: plain ints (OmegaConf attribute access costs ~0.05 ms a key)
        self._log_every, self._ckpt_every = int(cfg.train.log_every or 0), int(cfg.train.ckpt_every or 0)
        self._micro_batch = int(cfg.data.batch_size)
        self._seeds: Dict[int, int] = {}
        for s in self.stages:  # `epochs` counts gradient passes: replaying methods (Free AT) run epochs / m
            s.replays = int(self._method(s.index).replays)
            s.epochs = -(-s.epochs // s.replays)
        if self.is_rank0:
            os.makedirs(self.run_dir, exist_ok=True)

    # ---- the loop ---------------------------------------------------------------------------
    def fit(self) -> Dict[str, Any]:
        t0 = time.time()
        self._set_schedule()
        path = resolve_resume(self.cfg.resume, self.run_dir)
        if path:
            self.restore(path)
        t = self.cfg.train
        self.stopper = StopCoordinator(self.run_dir, t.ckpt_every_minutes, t.preempt_grace_s,
                                       self.engine.rank, self.engine.world_size)
        try:
            while True:
                try:
                    self._run()
                    break
                except _Rollback as r:
                    self.rollbacks += 1
                    target = self._rollback_target(*r.args)
                    keep = {k: m.rollback_state() for k, m in self._live_methods().items()}
                    self.restore(target)
                    for k, m in self._live_methods().items():
                        m.load_rollback_state(keep.get(k, {}))
        finally:
            self.stopper.close()
        result = self._finish(time.time() - t0)
        call(self.hooks, "on_fit_end", self, result)
        return result

    def _run(self) -> None:
        eng, cfg = self.engine, self.cfg
        for si in range(self.pos.stage, len(self.stages)):
            stage, method = self.stages[si], self._method(si)
            self.stage_rt.enter(si, fresh=self.pos.epoch == 0 and self.pos.batch == 0)
            for ep in range(self.pos.epoch, stage.epochs):
                loader = self.data.train_loader(self._data_epoch(si, ep), si)
                limit = stage.batches(ep, None)  # a stage measured in samples cuts its last epoch
                batches = self._resume_iterator(loader)
                eng.train()
                for x, y in self._progress(batches, si, ep, loader):
                    if limit is not None and self.pos.batch >= limit:
                        break
                    self.stage_rt.before_batch(si, x, self._sample_index(x.shape[0]))
                    before = eng.global_step
                    self._train_step(method, x, y, si, ep)
                    self.stage_rt.after_batch(si, x.shape[0], int(getattr(method, "replays", 1)))
                    self.pos.batch += 1
                    if eng.last_was_boundary:
                        self._at_boundary(loader, before)
                if self._bar is not None:
                    self._bar.close()
                self.pos = Position(si, ep + 1, 0)
                self._end_epoch(si, ep)
            self.stage_rt.leave(si)
            self.pos = Position(si + 1, 0, 0)
            self.save_checkpoint(None)

    def _train_step(self, method, x, y, si: int, ep: int) -> None:
        eng = self.engine
        x0, y0 = x.to(eng.device, non_blocking=True), y.to(eng.device, non_blocking=True)
        ctx = self._ctx(si, ep)
        index = self._sample_index(x0.shape[0])
        step0 = eng.global_step
        for replay in range(method.replays):
            ctx.replay, ctx.step, ctx.sample_index = replay, eng.global_step, index
            ctx.rng = SampleRNG(self._method_seed(si), index, "step", step0, "replay", replay)
            bind_sample_rng(eng.module, ctx.rng.fork("model"))
            x, y = x0, y0
            with eng.autocast():
                if method.handles(Event.BEFORE_FORWARD):
                    x, y = method.before_forward(x, y, ctx)
                out = method.loss(eng.forward, x, y, ctx)
                if method.handles(Event.AFTER_LOSS):
                    out = method.after_loss(out, x, y, ctx)
            loss, logits, info = out
            eng.backward(loss)
            if method.handles(Event.AFTER_BACKWARD):
                method.after_backward(ctx)
            if eng.needs_closure:  # line-search optimizers re-evaluate this batch's loss (optim/ncg.py)
                eng.set_closure(self._loss_closure(method, x, y, ctx, si, index, step0, replay))
            moved = eng.step()  # at a boundary: sets the scheduled lr, then steps
            if method.handles(Event.AFTER_STEP):
                method.after_step(ctx)
            self._accumulate(loss, logits, y0, info)
            if moved and self._log_every and eng.global_step % self._log_every == 0:
                self._log(si, ep, eng.lr)
        bind_sample_rng(eng.module, None)
        if ctx.rollback_reason:
            reason, at_most, ctx.rollback_reason, ctx.rollback_at_most = \
                ctx.rollback_reason, ctx.rollback_at_most, None, None
            raise _Rollback(reason, at_most)

    def _rollback_target(self, reason: str, at_most: Optional[int] = None) -> str:
        """The checkpoint a rollback reloads: the newest one, or with `at_most` the newest of step
        <= at_most (a guard's last sound probe: the newest checkpoint may hold the very weights it
        judged collapsed). Every rank lists the same step folders, so all pick the same step."""
        latest = self.last_checkpoint or resolve_resume("auto", self.run_dir)
        if latest is None:
            raise RuntimeError(f"rollback requested ({reason}) but no checkpoint exists yet")
        if at_most is None:
            return latest
        sound = latest_checkpoint(self.ckpt.root, at_most_step=at_most)
        if sound is not None:
            return sound
        if self.is_rank0:
            print(f"[scaletrain] rollback ({reason}): no checkpoint of step <= {at_most} is left "
                  f"(train.keep_last={self.cfg.train.keep_last}); reloading the newest, {os.path.basename(latest)}",
                  flush=True)
        return latest

    def _loss_closure(self, method, x, y, ctx, si, index, step0, replay):
        """The method's loss of (x, y) at the current weights, with the same per-sample random numbers."""
        def closure():
            ctx.rng = SampleRNG(self._method_seed(si), index, "step", step0, "replay", replay)
            bind_sample_rng(self.engine.module, ctx.rng.fork("model"))
            with self.engine.autocast():
                return method.loss(self.engine.forward, x, y, ctx)[0].detach()
        return closure

    # ---- metrics ----------------------------------------------------------------------------
    @staticmethod
    def _new_meter():
        return {"loss": 0.0, "correct": 0.0, "n": 0.0, "info": {}, "t": time.time()}

    def _accumulate(self, loss, logits, y, info) -> None:
        m, n = self._meter, float(y.shape[0])
        m["loss"] += float(loss.detach()) * n
        m["n"] += n
        if logits is not None and logits.dim() == 2 and logits.shape[0] == y.shape[0] and y.dim() == 1:
            m["correct"] += float((logits.detach().argmax(1) == y).sum())
        for k, v in (info or {}).items():
            if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1):
                m["info"][k] = m["info"].get(k, 0.0) + float(v) * n

    def _log(self, si: int, ep: int, lr: float) -> None:
        m = self._meter
        keys = sorted(m["info"])
        sums = D.all_reduce_sum([m["loss"], m["correct"], m["n"]] + [m["info"][k] for k in keys])
        n = max(sums[2], 1.0)
        dt = max(time.time() - m["t"], 1e-9)
        row = {"step": self.engine.global_step, "stage": si, "epoch": ep, "loss": sums[0] / n,
               "acc": sums[1] / n, "lr": lr, "samples_per_s": sums[2] / dt}
        row.update({k: v / n for k, v in zip(keys, sums[3:])})
        opt_metrics = getattr(self.engine.optimizer, "log_metrics", None)  # temperature, constraint violation
        if callable(opt_metrics):
            row.update(opt_metrics())   # collective for constrained optimizers: every rank logs here
        self.last_metrics = row
        self._meter = self._new_meter()
        if self.is_rank0:
            with open(os.path.join(self.run_dir, "train_log.jsonl"), "a") as f:
                f.write(json.dumps(row) + "\n")
            if self.tracker is not None:
                self.tracker.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=row["step"])
                self.tracker.log(dict({f"{self.stages[si].name}/{k}": row[k] for k in ("loss", "acc", "lr")},
                                      **self.stage_rt.log_row(si)), step=row["step"])
            if self._bar is not None:
                self._bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['acc']:.3f}", lr=f"{lr:.2e}")
        call(self.hooks, "on_log", self, row, row["step"])

    def _end_epoch(self, si: int, ep: int) -> None:
        method = self._method(si)
        if method.handles(Event.EPOCH_END):
            ctx = self._ctx(si, ep)
            ctx.step = self.engine.global_step
            method.epoch_end(ctx)
        metrics = dict(self.last_metrics)
        if self.eval_fn is not None and self.cfg.train.eval_every_epochs and \
                (ep + 1) % self.cfg.train.eval_every_epochs == 0:
            was_training = self.engine.module.training
            self.engine.eval()
            with torch.no_grad():
                ev = self.eval_fn(self.engine.module)
            if was_training:
                self.engine.train()
            metrics.update({f"val_{k}" if not k.startswith("val_") else k: float(v) for k, v in ev.items()})
            for k, v in metrics.items():
                if k.startswith("val_"):
                    better = min if "loss" in k else max
                    self.best[k] = better(self.best.get(k, v), v)
            if self.is_rank0 and self.tracker is not None:
                self.tracker.log({f"eval/{k[4:]}": v for k, v in metrics.items() if k.startswith("val_")},
                                 step=self.engine.global_step)
        metrics.update(stage=si, epoch=ep, step=self.engine.global_step)
        call(self.hooks, "on_epoch_end", self, metrics)

    # ---- checkpoints ------------------------------------------------------------------------
    def _at_boundary(self, loader, before: int) -> None:
        """Checkpoint by steps, by time (train.ckpt_every_minutes) or on a stop request; the
        time and stop decisions are all-reduced, so every rank saves (and stops) at the same step.
        By steps: when the batch crossed a multiple of ckpt_every (a replaying method such as
        Free AT makes m steps per batch; checkpoints fall at batch ends)."""
        every, step = self._ckpt_every, self.engine.global_step
        stop, due = self.stopper.poll() if self.stopper is not None else (False, False)
        if (every and step // every > before // every) or due or stop:
            self.save_checkpoint(loader, interrupted=self.stopper.reason if stop else None)
        if stop:
            raise Preempted(self.stopper.reason, step, self.last_checkpoint)

    def save_checkpoint(self, loader=None, interrupted: Optional[str] = None) -> str:
        # buffers (BatchNorm statistics) are rank-local: DeepSpeed saves rank 0's only
        rank_state = {"rng": rng_state(), "loader": None, "buffers": module_buffers(self.engine.module),
                      "stages": self.stage_rt.state_dict(),
                      "methods": {k: m.state_dict() for k, m in self._live_methods().items()}}
        if loader is not None and self.pos.batch > 0 and hasattr(loader, "state_dict"):
            rank_state["loader"] = loader.state_dict()
        meta = {"step": self.engine.global_step, "micro_step": self.engine.micro_step,
                "stage": self.pos.stage, "epoch": self.pos.epoch, "batch": self.pos.batch,
                "best": self.best, "last_metrics": self.last_metrics, "rollbacks": self.rollbacks,
                "stages": len(self.stages), "stage_epochs": [int(st.epochs) for st in self.stages]}
        if interrupted:
            meta["interrupted"] = interrupted
        path = self.ckpt.save(self.engine, meta, rank_state, OmegaConf.to_yaml(self.cfg))
        self.last_checkpoint = path
        if self.stopper is not None:
            self.stopper.saved()
        call(self.hooks, "on_checkpoint", self, path, dict(self.last_metrics, step=self.engine.global_step))
        return path

    def restore(self, path: str) -> None:
        meta, rank_state = self.ckpt.load(self.engine, path)
        self.engine.set_counters(meta["step"], meta["micro_step"])
        self.pos = self._extend_finished(Position(meta["stage"], meta["epoch"], meta["batch"]), meta)
        self.best = dict(meta.get("best", {}))
        self.last_metrics = dict(meta.get("last_metrics", {}))
        self.rollbacks = max(self.rollbacks, int(meta.get("rollbacks", 0)))
        self.last_checkpoint = self.resumed_from = path
        self._pending_rng, self._loader_state = rank_state["rng"], rank_state.get("loader")
        self.stage_rt.load_state_dict(rank_state.get("stages"))
        load_buffers(self.engine.module, rank_state.get("buffers"))
        self._method_states = dict(rank_state.get("methods") or {})
        for k, m in self._live_methods().items():
            if k in self._method_states:
                m.load_state_dict(self._method_states.pop(k))
        self._meter = self._new_meter()
        set_rng_state(self._pending_rng)
        self._truncate_log(meta["step"])

    def _extend_finished(self, pos: Position, meta: Dict[str, Any]) -> Position:
        """A finished run resumed with more epochs in its last stage (`resume=auto train.epochs=20`
        after 10) continues from the end of the epochs it trained, on the new plan's learning-rate
        schedule; a finished run with nothing left to train says so instead of silently training
        nothing."""
        saved = meta.get("stage_epochs")
        if pos.stage < len(self.stages) or saved is None:
            return pos
        now = [int(st.epochs) for st in self.stages]
        last = len(now) - 1
        if len(saved) == len(now) and saved[:last] == now[:last] and now[last] > saved[last]:
            if self.is_rank0:
                print(f"resume: the run finished {saved[last]} epoch(s) of stage {last}; extending it to "
                      f"{now[last]} (the learning-rate schedule is the new plan's, so the rate jumps to "
                      f"its value at step {meta['step']})", flush=True)
            return Position(last, saved[last], 0)
        if self.is_rank0:
            print(f"resume: the run already finished its plan ({saved} epochs per stage; now {now}): "
                  "nothing left to train, evaluating the saved model. Only the last stage can be extended; "
                  "start a new run (another name) to train a different plan.", flush=True)
        return pos

    def _truncate_log(self, step: int) -> None:
        """Drop log rows written after the checkpoint we resume from (they will be redone)."""
        path = os.path.join(self.run_dir, "train_log.jsonl")
        if self.is_rank0 and os.path.exists(path):
            with open(path) as f:
                rows = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
            with open(path + ".tmp", "w") as f:
                f.writelines(rows)
            os.replace(path + ".tmp", path)
    def _resume_iterator(self, loader):
        """Iterate `loader` from the saved position (its `load_state_dict`, else by skipping)."""
        skip = self.pos.batch
        if skip and self._loader_state is not None and hasattr(loader, "load_state_dict"):
            loader.load_state_dict(self._loader_state)
            skip = 0
        it = iter(loader)
        for _ in range(skip):
            next(it)
        if self._pending_rng is not None and self.pos.batch:
            # mid-epoch: the uninterrupted run had built the loader and drawn these batches
            # before the checkpoint, so its RNG state applies from here on
            set_rng_state(self._pending_rng)
        self._pending_rng, self._loader_state = None, None
        return it

    # ---- helpers ----------------------------------------------------------------------------
    _bar = None
    stopper: Optional[StopCoordinator] = None

    def _progress(self, batches, si: int, ep: int, loader):
        if not (self.is_rank0 and self.cfg.train.progress):
            self._bar = None
            return batches
        from tqdm.auto import tqdm
        total = len(loader) if hasattr(loader, "__len__") else None
        self._bar = tqdm(batches, total=total, initial=self.pos.batch, leave=False, dynamic_ncols=True,
                         desc=f"stage {si} ({self.stages[si].name}) epoch {ep + 1}/{self.stages[si].epochs}")
        return self._bar

    def _ctx(self, si: int, ep: int) -> StepContext:
        if getattr(self, "_ctx_obj", None) is None:
            self._ctx_obj = StepContext(attack_model=self.engine.module, engine=self.engine,
                                        alert_fn=self._alert)
        c = self._ctx_obj
        c.stage, c.epoch, c.step, c.rollbacks = si, ep, self.engine.global_step, self.rollbacks
        return c

    def _sample_index(self, n: int) -> torch.Tensor:
        """Global sample index of each row of this micro-batch: the global batch of optimizer step
        `global_step` holds samples [step * B, (step + 1) * B); rank r's k-th accumulated
        micro-batch is its slice (r * grad_accum + k) (the loaders' layout), so 1 rank with
        accumulation and N ranks give each sample the same index."""
        e, mbs = self.engine, self._micro_batch
        ga = e.grad_accum
        gbs = mbs * ga * e.world_size
        start = e.global_step * gbs + (e.rank * ga + e.micro_step % ga) * mbs
        return torch.arange(start, start + n, dtype=torch.int64)

    def _method_seed(self, si: int) -> int:
        if si not in self._seeds:
            spec = self.stages[si].method or self.cfg.method
            seed = spec.get("seed", None)
            self._seeds[si] = int(self.cfg.seed if seed is None else seed)
        return self._seeds[si]

    def _alert(self, title: str, text: str, metrics: Dict[str, float]) -> None:
        step = self.engine.global_step
        if not self.is_rank0:
            return
        print(f"[scaletrain] ALERT step {step}: {title}: {text}", flush=True)
        with open(os.path.join(self.run_dir, "alerts.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, "alert": title, "text": text, **metrics}) + "\n")
        if self.tracker is not None:
            self.tracker.alert(title, text, step=step, metrics=metrics)

    def _method(self, si: int):
        spec = self.stages[si].method
        if spec is None:
            return self.method
        if si not in self._methods:
            factory = self.method_factory
            if factory is None:
                from ..methods import create_method as factory
            m = self._methods[si] = _as_method(factory(spec))
            if f"stage{si}" in self._method_states:
                m.load_state_dict(self._method_states.pop(f"stage{si}"))
        return self._methods[si]

    def _live_methods(self) -> Dict[str, Method]:
        """The method objects built so far, by checkpoint key ('run', 'stage<i>')."""
        out = {"run": self.method}
        out.update({f"stage{i}": m for i, m in self._methods.items()})
        return out

    def _data_epoch(self, si: int, ep: int) -> int:
        """Epoch number handed to the loader: counts across stages (distinct shuffles)."""
        return sum(s.epochs for s in self.stages[:si]) + ep

    def steps_per_epoch(self, si: int) -> Optional[int]:
        fn = getattr(self.data, "steps_per_epoch", None)
        if fn is not None:
            return int(fn(si))
        loader = self.data.train_loader(self._data_epoch(si, 0), si)
        return len(loader) if hasattr(loader, "__len__") else None

    def _set_schedule(self) -> None:
        o, ga = self.cfg.optim, self.engine.grad_accum
        resolve_lengths(self.stages, int(self.cfg.data.batch_size), self.engine.world_size,
                        self.steps_per_epoch)
        segments = []
        for s in self.stages:
            n = self.steps_per_epoch(s.index)
            if n is None:  # unknown length: the schedule cannot be laid out; keep the peak lr
                segments = None
                break
            micro = sum(s.batches(e, n) for e in range(s.epochs)) * s.replays
            segments.append(Segment(steps=max(-(-micro // ga), 1), lr=s.lr, kind=s.schedule,
                                    warmup=s.warmup_steps))
        kind = o.schedule if segments is not None else "constant"
        if segments is None:
            segments = [Segment(steps=1, lr=s.lr) for s in self.stages]
        kw = {k: v for k, v in dict(o.kwargs).items() if k in ("pct_start", "div_factor", "final_div_factor",
                                                                 "min_lr")}
        self.engine.set_schedule(LRSchedule(kind, segments, o.warmup_steps, **kw))

    def _finish(self, elapsed: float) -> Dict[str, Any]:
        sd = self.engine.consolidated_state_dict()  # collective under ZeRO
        model_path = os.path.join(self.run_dir, "model.pt")
        if self.is_rank0:
            tmp = model_path + ".tmp"
            torch.save(sd, tmp)
            os.replace(tmp, model_path)
        D.barrier()
        return {"global_step": self.engine.global_step, "stages": len(self.stages),
                "train": dict(self.last_metrics), "best": dict(self.best), "model_path": model_path,
                "checkpoint": self.last_checkpoint, "resumed_from": self.resumed_from,
                "rollbacks": self.rollbacks, "time_s": elapsed, "world_size": self.engine.world_size,
                "stages_detail": self.stage_rt.summary()}
