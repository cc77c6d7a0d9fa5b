"""Value checks the type system cannot express. Each error names the key path."""
from __future__ import annotations

from omegaconf import DictConfig

from ..errors import ConfigError
from .ranges import check_ranges

CHOICES = {
    "resume": None,  # free-form: never | auto | path
    "data.mode": ("exact", "resampled"),
    "data.on_error": ("raise", "skip"),
    "data.encoding": ("npy", "png"),
    "data.source": ("digits", "idx", "npz", "imagefolder", "shards"),
    "data.split": ("random", "official"),
    "method.attack.norm": ("linf", "l2"),
    "method.attack.loss": ("ce", "cw"),
    "method.attack.model_mode": ("eval", "train"),
    "optim.schedule": ("constant", "cosine", "linear", "onecycle"),
    "engine.backend": ("deepspeed", "torch"),
    "engine.launcher": ("local", "torchrun", "ray"),
    "engine.device": ("auto", "cpu", "cuda"),
    "engine.precision": ("fp32", "bf16", "fp16"),
    "eval.norm": ("linf", "l2"),
    "eval.model_mode": ("eval", "train"),
    "model.pni": ("off", "layer", "channel"),
    "tracking.mode": ("auto", "offline", "online", "disabled"),
    "engine.placement": ("PACK", "SPREAD", "STRICT_SPREAD", "STRICT_PACK"),
}

POSITIVE = ("data.batch_size", "data.eval_batch_size", "data.shard_samples", "engine.workers",
            "engine.grad_accum", "eval.pgd_steps", "eval.batch_size", "eval.restarts", "eval.autoattack_steps", "eval.eot_samples",
            "method.attack.restarts", "model.num_classes", "model.in_channels", "model.image_size",
            "train.eval_samples", "ensemble.size")
NON_NEGATIVE = ("train.epochs", "train.log_every", "train.ckpt_every", "data.workers",
                "optim.lr", "optim.weight_decay", "engine.grad_clip", "optim.warmup_steps",
                "method.attack.eps", "method.attack.steps", "train.keep_last", "model.pni_init",
                "model.vib_dim", "train.eval_every_epochs", "train.eval_steps", "ensemble.concurrency",
                "train.ckpt_every_minutes", "train.preempt_grace_s")


def _get(cfg: DictConfig, path: str):
    node = cfg
    for part in path.split("."):
        node = node[part]
    return node


def validate(cfg: DictConfig) -> None:
    for key, choices in CHOICES.items():
        if choices is None:
            continue
        val = _get(cfg, key)
        if val not in choices:
            raise ConfigError(f"key '{key}': value '{val}' is not one of {', '.join(choices)}")
    for key in POSITIVE:
        if _get(cfg, key) <= 0:
            raise ConfigError(f"key '{key}': must be > 0, got {_get(cfg, key)}")
    for key in NON_NEGATIVE:
        if _get(cfg, key) < 0:
            raise ConfigError(f"key '{key}': must be >= 0, got {_get(cfg, key)}")
    if cfg.engine.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"key 'engine.zero_stage': must be 0, 1, 2 or 3, got {cfg.engine.zero_stage}")
    if not 0.0 <= cfg.data.test_fraction < 1.0 or not 0.0 <= cfg.data.val_fraction < 1.0:
        raise ConfigError("key 'data.test_fraction'/'data.val_fraction': must be in [0, 1)")
    if cfg.data.val_fraction + cfg.data.test_fraction >= 1.0:
        raise ConfigError("keys 'data.val_fraction' + 'data.test_fraction' must sum to < 1")
    sc, ra = cfg.data.augment.rrc_scale, cfg.data.augment.rrc_ratio
    if len(sc) != 2 or not 0 < sc[0] <= sc[1] <= 1 or len(ra) != 2 or not 0 < ra[0] <= ra[1]:
        raise ConfigError(f"keys 'data.augment.rrc_scale'/'rrc_ratio': need [lo, hi] with 0 < lo <= hi "
                          f"(scale <= 1), got {list(sc)} / {list(ra)}")
    for key in ("data.epoch_size", "data.augment.resize", "data.augment.crop_size"):
        if _get(cfg, key) is not None and _get(cfg, key) <= 0:
            raise ConfigError(f"key '{key}': must be > 0 (or null), got {_get(cfg, key)}")
    if cfg.train.eval_eps is not None and cfg.train.eval_eps < 0:
        raise ConfigError(f"key 'train.eval_eps': must be >= 0 (or null), got {cfg.train.eval_eps}")
    for key in ("data.shuffle_buffer", "data.augment.crop_padding"):
        if _get(cfg, key) < 0:
            raise ConfigError(f"key '{key}': must be >= 0, got {_get(cfg, key)}")
    if len(cfg.model.mean) != len(cfg.model.std):
        raise ConfigError("keys 'model.mean' and 'model.std' must have the same length")
    if any(s <= 0 for s in cfg.model.std):
        raise ConfigError("key 'model.std': every entry must be > 0")
    check_ranges(cfg)   # attack budgets within the pixel range, evaluation settings (ranges.py)
    _validate_langevin(cfg)
    if cfg.model.width is not None and cfg.model.width <= 0:
        raise ConfigError(f"key 'model.width': must be > 0 (or null), got {cfg.model.width}")
    from ..models import check_config as check_model_config  # imports torch: only when validating
    check_model_config(cfg.model)
    from ..models import randomized_at_test
    if randomized_at_test(cfg.model) and cfg.eval.eot_samples < 2:
        raise ConfigError(f"key 'eval.eot_samples': model '{cfg.model.name}' draws noise at test "
                          "(model.kwargs.test_noise); attack it with expectation over transformation, "
                          "eval.eot_samples >= 2 (Athalye et al. 2018), or set test_noise: false")
    from ..engine.optim import requires_closure
    if requires_closure(cfg.optim.name):
        if cfg.engine.backend != "torch":
            raise ConfigError(f"key 'engine.backend': optimizer '{cfg.optim.name}' steps with a closure (line "
                              "search), which DeepSpeed's engine.step() cannot pass; use engine.backend=torch")
        if cfg.engine.grad_accum != 1 or cfg.engine.global_batch_size is not None or cfg.engine.precision == "fp16":
            raise ConfigError(f"key 'optim.name': '{cfg.optim.name}' line-searches one micro-batch: needs "
                              "engine.grad_accum=1, no engine.global_batch_size, and no fp16 loss scaling")
    if cfg.engine.precision != "fp32" and cfg.engine.device == "cpu" and cfg.engine.precision == "fp16":
        raise ConfigError("key 'engine.precision': fp16 needs a GPU; use fp32 or bf16 on CPU")
    for k, v in cfg.engine.worker_resources.items():
        if not isinstance(v, (int, float)) or v <= 0:
            raise ConfigError(f"key 'engine.worker_resources.{k}': must be a number > 0, got {v}")
    from .stages import validate_stages
    validate_stages(cfg)   # each stage's merged method/attack (values named stages[i].*), lengths, tokens
    _validate_methods(cfg)


def _validate_methods(cfg: DictConfig) -> None:
    """Method names, options and combinations (each method's own `check_config`), run and stages."""
    from ..methods import check_method_config, replays_for
    from .stages import stage_method
    # stage sections are partial: check them merged over the run's method (config/stages.py)
    sections = [("method", cfg.method)] + [(f"stages[{i}].method", stage_method(cfg, i))
                                           for i, st in enumerate(cfg.stages) if st.method is not None]
    for key, m in sections:
        check_method_config(m, key)
        e = cfg.engine
        if replays_for(m) > 1 and (e.grad_accum != 1 or (e.global_batch_size is not None and
                                                          e.global_batch_size != cfg.data.batch_size * e.workers)):
            raise ConfigError(f"key 'engine.grad_accum': {key}.name={m.name} replays every batch as optimizer "
                              f"steps; it needs no gradient accumulation (grad_accum=1, global_batch_size null)")
        if m.name == "fast_at" and m.guard.every and m.guard.response == "rollback" and not cfg.train.ckpt_every:
            raise ConfigError(f"key 'train.ckpt_every': {key}.guard.response=rollback reloads the last "
                              f"checkpoint; set train.ckpt_every > 0 (e.g. a few times guard.every)")
    from ..methods.loss_terms import check_model_addons
    check_model_addons(cfg)


CONSTRAINED_OPTIMIZERS = ("circle", "orthogonal")


def _validate_langevin(cfg: DictConfig) -> None:
    """`optim.langevin`: checked whatever the optimizer, so a typo never waits for a later stage."""
    lc = cfg.optim.langevin
    kinds = ("constant", "linear", "cosine", "exponential", "step")
    if lc.temperature_schedule not in kinds:
        raise ConfigError(f"key 'optim.langevin.temperature_schedule': value '{lc.temperature_schedule}' "
                          f"is not one of {', '.join(kinds)}")
    for key in ("temperature", "temperature_final"):
        if not lc[key] >= 0:
            raise ConfigError(f"key 'optim.langevin.{key}': a temperature must be >= 0, got {lc[key]}")
    if lc.temperature_schedule == "exponential" and not (lc.temperature_final > 0 and lc.temperature > 0):
        raise ConfigError("key 'optim.langevin.temperature_final': exponential cooling needs temperature and "
                          "temperature_final > 0 (use linear or cosine to cool to 0)")
    if not 0.0 <= lc.cooling_start < 1.0:
        raise ConfigError(f"key 'optim.langevin.cooling_start': must be in [0, 1), got {lc.cooling_start}")
    if not lc.friction > 0:
        raise ConfigError(f"key 'optim.langevin.friction': friction gamma must be > 0, got {lc.friction}")
    if not lc.radius > 0:
        raise ConfigError(f"key 'optim.langevin.radius': must be > 0, got {lc.radius}")
    if lc.radius_first is not None and not lc.radius_first > 0:
        raise ConfigError(f"key 'optim.langevin.radius_first': must be > 0 (or null), got {lc.radius_first}")
    if not 0 < lc.tolerance < 1e-3:
        raise ConfigError(f"key 'optim.langevin.tolerance': must be in (0, 1e-3), got {lc.tolerance}")
    if lc.max_iterations < 1:
        raise ConfigError(f"key 'optim.langevin.max_iterations': must be >= 1, got {lc.max_iterations}")
    if cfg.method.name == "hebbian" and cfg.engine.backend == "deepspeed" and cfg.engine.zero_stage == 3:
        raise ConfigError("key 'engine.zero_stage': method 'hebbian' writes whole first-layer weights and "
                          "supports ZeRO 0-2, not 3")
    if cfg.optim.name in CONSTRAINED_OPTIMIZERS and cfg.engine.backend == "deepspeed" and cfg.engine.zero_stage == 3:
        raise ConfigError(f"key 'engine.zero_stage': optimizer '{cfg.optim.name}' needs whole weights and "
                          "supports ZeRO 0-2, not 3 (ZeRO-3 partitions every parameter across ranks)")
