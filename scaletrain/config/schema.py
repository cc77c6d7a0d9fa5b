"""Dataclass schema of a whole experiment.

The defaults ARE the default job (`scaletrain train` with no arguments):
PGD adversarial training of a small CNN on scikit-learn's digits.
`configs/default.yaml` spells the same values out; a test keeps them equal.

Every section is its own dataclass so that a component can be built from
its section alone (torchtitan-style), and new sections can be added
without touching the others.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class AugmentConfig:
    crop_padding: int = 0          # random crop after zero padding by this many pixels (0 = off)
    hflip: bool = False            # random horizontal flip
    resize: Optional[int] = None   # resize images to this square side (None = keep)


@dataclass
class DataConfig:
    source: str = "digits"         # digits | idx | npz | imagefolder | shards (urls given below)
    path: Optional[str] = None     # source location for idx / npz / imagefolder
    root: str = "data/digits"      # where shards are written / read
    train_urls: Optional[str] = None   # shard URLs (brace patterns, pipe:); None = <root>/train-*.tar
    test_urls: Optional[str] = None    # test shard URLs; None = <root>/test-*.tar
    val_fraction: float = 0.0      # fraction of samples held out for validation
    test_fraction: float = 0.2     # fraction held out for the test split (the evaluation set)
    split_seed: int = 0            # seed of the fixed train/val/test split
    shard_samples: int = 256       # samples per shard when writing
    encoding: str = "npy"          # npy (raw uint8) | png
    batch_size: int = 64           # micro-batch per rank
    eval_batch_size: int = 512     # batch size of evaluation loaders
    workers: int = 0               # loader worker processes per rank
    shuffle_buffer: int = 2000     # samples in the shuffle buffer of the training stream
    seed: int = 0                  # shuffle / augmentation seed
    mode: str = "exact"            # exact | resampled (training stream)
    epoch_size: Optional[int] = None   # samples per epoch in resampled mode (None = dataset size)
    on_error: str = "raise"        # raise | skip (corrupt shards)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ModelConfig:
    name: str = "digits_cnn"
    num_classes: int = 10
    in_channels: int = 1
    image_size: int = 8
    width: int = 16                # channels of the first conv (model-specific width knob)
    # normalisation lives inside the model: attacks work in [0, 1] pixel space
    mean: List[float] = field(default_factory=lambda: [0.0])
    std: List[float] = field(default_factory=lambda: [1.0])
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class AttackConfig:
    name: str = "pgd"              # see scaletrain.attacks.available()
    eps: float = 0.25
    alpha: Optional[float] = None  # step size (None = attack default, e.g. 2.5*eps/steps)
    steps: int = 5
    norm: str = "linf"             # linf | l2
    random_start: bool = True
    restarts: int = 1
    loss: str = "ce"               # ce | cw
    model_mode: str = "eval"       # eval | train: the mode the model is in while attacked
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodConfig:
    name: str = "pgd_at"           # standard | pgd_at | ... (scaletrain.methods.available())
    attack: AttackConfig = field(default_factory=AttackConfig)
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = "adam"             # sgd | adam | adamw | (registered client optimizers)
    lr: float = 3.0e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "cosine"       # constant | cosine | linear | onecycle
    warmup_steps: int = 0
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class EngineConfig:
    backend: str = "deepspeed"     # deepspeed | torch (plain PyTorch loop, reference)
    launcher: str = "local"        # local | torchrun | ray
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    device: str = "auto"           # auto | cpu | cuda
    cpu_threads: int = 1           # torch threads per rank on CPU (0 = cores / local ranks); see docs/engine.md
    zero_stage: int = 0
    precision: str = "fp32"        # fp32 | bf16 | fp16
    grad_accum: int = 1
    grad_clip: float = 0.0
    global_batch_size: Optional[int] = None  # None = batch_size * workers * grad_accum
    ray_address: Optional[str] = None
    max_failures: int = 0          # Ray Train: restarts from the last checkpoint after a worker dies
    ray_storage: Optional[str] = None  # Ray Train storage_path (shared FS / s3://; None = <run_dir>/ray)
    dist_backend: Optional[str] = None  # None = nccl on GPU, gloo on CPU
    deepspeed: Dict[str, Any] = field(default_factory=dict)  # merged into the generated DS config


@dataclass
class StageConfig:
    """One stage of a multi-stage recipe (AdvXL-style). Unset fields inherit."""
    name: str = ""
    epochs: Optional[int] = None
    lr: Optional[float] = None
    image_size: Optional[int] = None
    method: Optional[MethodConfig] = None


@dataclass
class TrainConfig:
    epochs: int = 30
    log_every: int = 10            # steps between metric logs
    ckpt_every: int = 0            # steps between checkpoints (0 = stage ends only)
    keep_last: int = 2
    eval_every_epochs: int = 0     # quick clean eval during training (0 = off)
    progress: bool = True


@dataclass
class EvalConfig:
    attacks: List[str] = field(default_factory=lambda: ["fgsm", "pgd"])
    eps: List[float] = field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.3])
    norm: str = "linf"
    pgd_steps: int = 20
    pgd_alpha: Optional[float] = None
    restarts: int = 1
    model_mode: str = "eval"
    max_samples: Optional[int] = None
    batch_size: int = 512
    noise_sigmas: List[float] = field(default_factory=list)
    autoattack: bool = False       # APGD-CE + APGD-T preset (reported separately as report["autoattack"])
    autoattack_steps: int = 100    # iterations per APGD run of the preset
    certify: Dict[str, Any] = field(default_factory=dict)  # {sigma, n0, n, alpha, radii, max_samples}
    seed: int = 0


@dataclass
class TrackConfig:
    wandb: bool = True
    mode: str = "auto"             # auto (online if logged in, else offline) | offline | online
    project: str = "scaletrain"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class ExperimentConfig:
    name: str = "default"          # run name: outputs go to <out_dir>/<name> (suffix -2, -3 if taken)
    seed: int = 0                  # seeds model init, attack starts and the trainer RNG
    out_dir: str = "runs"          # parent folder of run folders
    resume: str = "never"          # never | auto | <path to checkpoint>
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: List[StageConfig] = field(default_factory=list)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackConfig = field(default_factory=TrackConfig)
