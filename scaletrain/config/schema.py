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

from omegaconf import II


@dataclass
class AugmentConfig:
    crop_padding: int = 0          # random crop after zero padding by this many pixels (0 = off)
    hflip: bool = False            # random horizontal flip
    resize: Optional[int] = None   # resize images to this square side (None = keep)
    crop_size: Optional[int] = None # encoded images of any size (JPEG/PNG shards, ImageNet-style): decode to this side with a random-resized crop in training, a 0.875 centre crop in evaluation (docs/data.md)
    rrc_scale: List[float] = field(default_factory=lambda: [0.08, 1.0]) # random-resized crop: range of the crop's area fraction
    rrc_ratio: List[float] = field(default_factory=lambda: [0.75, 1.3333333]) # random-resized crop: range of the crop's aspect ratio (log-uniform)


@dataclass
class DataConfig:
    source: str = "digits"         # digits | idx | npz | imagefolder | shards (urls given below)
    path: Optional[str] = None     # source location for idx / npz / imagefolder
    root: str = "data/digits"      # where shards are written / read
    train_urls: Optional[str] = None   # shard URLs (brace patterns, pipe:); None = <root>/train-*.tar
    test_urls: Optional[str] = None    # test shard URLs; None = <root>/test-*.tar
    val_fraction: float = 0.0      # fraction of samples held out for validation
    test_fraction: float = 0.2     # fraction held out for the test split (the evaluation set)
    split: str = "random"          # random (pool, seeded cut by the fractions) | official (keep the source's train/test files, e.g. MNIST's 60000/10000)
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
    augment: AugmentConfig = field(default_factory=AugmentConfig) # training-time augmentation


@dataclass
class ModelConfig:
    name: str = "digits_cnn"       # registered model (scaletrain.models.available(); docs/models.md)
    num_classes: int = 10          # output classes (>= classes in the data)
    in_channels: int = 1           # image channels (must match the data)
    image_size: int = 8            # input side in pixels (for models that need it)
    width: Optional[int] = None    # model-specific width knob (first conv channels; WRN: widening factor); null = the model's published default
    # normalisation lives inside the model: attacks work in [0, 1] pixel space
    mean: List[float] = field(default_factory=lambda: [0.0]) # per-channel mean subtracted inside the model
    std: List[float] = field(default_factory=lambda: [1.0]) # per-channel std divided inside the model
    kwargs: Dict[str, Any] = field(default_factory=dict) # extra model-specific arguments, e.g. {batchnorm: false}; checked against the model at load; digits_cnn: dropblock_prob, dropblock_size
    sync_bn: bool = False          # BatchNorm statistics synchronised across ranks (converted by the engine when world size > 1)
    pni: str = "off"               # Parametric Noise Injection on every conv/linear weight: off | layer | channel (one trainable alpha per layer / output channel; docs/methods.md)
    pni_init: float = 0.25         # initial PNI alpha (Rakin et al. 2019 use 0.25), >= 0
    vib_dim: int = 0               # variational information bottleneck head of this many latent dims replacing the classifier (0 = off; train with method vib)


@dataclass
class AttackConfig:
    name: str = "pgd"              # see scaletrain.attacks.available()
    eps: float = 0.25              # perturbation budget in [0, 1] pixel units
    alpha: Optional[float] = None  # step size (None = attack default, e.g. 2.5*eps/steps)
    steps: int = 5                 # attack iterations
    norm: str = "linf"             # linf | l2
    random_start: bool = True      # start from a uniform point in the eps ball
    restarts: int = 1              # random restarts, worst case per sample kept
    loss: str = "ce"               # ce | cw
    model_mode: str = "eval"       # eval | train: the mode the model is in while attacked
    kwargs: Dict[str, Any] = field(default_factory=dict) # attack-specific options (docs/attacks.md)


@dataclass
class GuardConfig:
    """Catastrophic-overfitting guard of fast_at (docs/methods.md)."""
    every: int = 0                 # optimizer steps between PGD probes on the training batch (0 = guard off)
    pgd_steps: int = 10            # PGD iterations of the probe (step 2.5 eps / steps, random start)
    collapse: float = 0.5          # fires when probe PGD accuracy < collapse x its best so far ...
    gap: float = 0.3               # ... and probe FGSM accuracy >= PGD accuracy + gap
    response: str = "step_size"    # step_size (multiply the attack step by step_factor) | rollback (reload the last checkpoint)
    step_factor: float = 0.5       # step_size response: the new attack step is the old one times this
    max_responses: int = 3         # responses allowed per run; after that the guard only alerts


@dataclass
class AddOnConfig:
    """A further method composed with the main one (batch transform, regulariser, ...)."""
    name: str = ""                 # registered method name (its events must not include the loss)
    kwargs: Dict[str, Any] = field(default_factory=dict) # options of that method


@dataclass
class MethodConfig:
    name: str = "pgd_at"           # standard | pgd_at | fast_at | free_at | trades | mart | ... (scaletrain.methods.available())
    attack: AttackConfig = field(default_factory=AttackConfig) # the inner attack for adversarial methods
    beta: Optional[float] = None   # trades / mart: weight of the robust term (None = 6.0, the papers' value)
    huber_delta: Optional[float] = None  # huber: threshold delta of the Huber loss on p_c - t_c, > 0 (None = 1.0: half the Brier score)
    clean_weight: float = 0.0      # adversarial methods: loss = (1 - w) adversarial + w clean (0 = pure adversarial)
    label_smoothing: float = 0.0   # label smoothing of the cross-entropy terms (standard, pgd_at, fast_at, free_at)
    attack_target: str = "label"   # label | prediction: attack the model's own clean prediction (no label leaking)
    eps_warmup_steps: int = 0      # ramp the attack eps linearly from eps/W to eps over the first W optimizer steps
    steps_warmup_steps: int = 0    # ramp the attack iterations linearly from 1 to attack.steps over W optimizer steps
    replays: int = 4               # free_at: m, the times each batch is replayed (epochs are divided by m)
    guard: GuardConfig = field(default_factory=GuardConfig) # fast_at: catastrophic-overfitting guard
    extra: List[AddOnConfig] = field(default_factory=list) # further methods composed with this one, in order
    seed: Optional[int] = None     # seed of the methods' per-sample random draws (None = the run's seed)
    kwargs: Dict[str, Any] = field(default_factory=dict) # options of methods registered outside scaletrain


@dataclass
class LangevinConfig:
    """Langevin optimizers (sgld, baoab, circle, orthogonal): docs/methods.md."""
    temperature: float = 1.0e-5    # temperature T at the start (0 = deterministic)
    temperature_schedule: str = "constant"  # constant | linear | cosine | exponential | step (cooling to temperature_final)
    temperature_final: float = 0.0  # temperature reached on the last optimizer step
    cooling_start: float = 0.0     # fraction of the run after which cooling starts, in [0, 1)
    friction: float = 1.0          # friction gamma of underdamped Langevin (> 0); c = exp(-gamma * lr)
    noise_seed: int = II("seed")   # key of the counter-based noise (default: the run's seed)
    radius: float = 1.0            # circle constraint: |w| <= radius for all constrained layers but the first
    radius_first: Optional[float] = None  # circle radius of the first layer (None = radius)
    constrain_biases: bool = False  # constrain 1-d parameters (biases, norms) too
    constrain_output: bool = False  # constrain the last weight (the classifier head)
    exclude: List[str] = field(default_factory=list)  # fnmatch patterns of parameter names left unconstrained
    tolerance: float = 1.0e-8      # orthogonal: SHAKE stops when max|Q^T Q - I| < tolerance
    max_iterations: int = 100      # orthogonal: SHAKE iterations before falling back to a polar retraction


@dataclass
class OptimConfig:
    name: str = "adam"             # sgd | adam | adamw | (registered client optimizers)
    lr: float = 3.0e-3             # peak learning rate
    momentum: float = 0.9          # SGD momentum
    weight_decay: float = 0.0      # L2 / decoupled weight decay
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999]) # Adam betas
    schedule: str = "cosine"       # constant | cosine | linear | onecycle
    warmup_steps: int = 0          # linear warm-up optimizer steps
    kwargs: Dict[str, Any] = field(default_factory=dict) # schedule/optimizer extras: pct_start, div_factor, final_div_factor, min_lr
    langevin: LangevinConfig = field(default_factory=LangevinConfig) # temperature, friction, constraints of sgld/baoab/circle/orthogonal


@dataclass
class EngineConfig:
    backend: str = "deepspeed"     # deepspeed | torch (plain PyTorch loop, reference)
    launcher: str = "local"        # local | torchrun | ray
    workers: int = 1               # ranks (Ray workers or torchrun processes)
    gpus_per_worker: float = 0.0   # GPUs per Ray worker (0 = CPU)
    cpus_per_worker: float = 1.0   # logical CPUs per Ray worker
    device: str = "auto"           # auto | cpu | cuda
    cpu_threads: int = 1           # torch threads per rank on CPU (0 = cores / local ranks); see docs/engine.md
    zero_stage: int = 0            # DeepSpeed ZeRO stage 0-3
    precision: str = "fp32"        # fp32 | bf16 | fp16
    grad_accum: int = 1            # micro-batches per optimizer step
    grad_clip: float = 0.0         # max gradient norm (0 = off)
    global_batch_size: Optional[int] = None  # None = batch_size * workers * grad_accum
    ray_address: Optional[str] = None # existing Ray cluster (else RAY_ADDRESS, else a local one)
    max_failures: int = 0          # Ray Train: restarts from the last checkpoint after a worker dies
    ray_storage: Optional[str] = None  # Ray Train storage_path (shared FS / s3://; None = <run_dir>/ray)
    dist_backend: Optional[str] = None  # None = nccl on GPU, gloo on CPU
    placement: str = "PACK"        # Ray placement of the workers: PACK | SPREAD | STRICT_SPREAD (one per node) | STRICT_PACK
    worker_resources: Dict[str, float] = field(default_factory=dict)  # extra Ray resources per worker, e.g. {node_b: 1} (custom node resources)
    deepspeed: Dict[str, Any] = field(default_factory=dict)  # merged into the generated DS config


@dataclass
class StageConfig:
    """One stage of a multi-stage recipe (AdvXL-style weak-then-strong). Unset fields inherit
    from the run; model weights always carry over (docs/recipes.md)."""
    name: str = ""                 # stage name in logs, W&B keys and the report (default stage<i>)
    epochs: Optional[int] = None   # length in epochs (None = train.epochs, unless samples is set)
    samples: Optional[int] = None  # length in training samples seen, all ranks together (overrides epochs)
    image_size: Optional[int] = None # input side of this stage's training batches (None = native)
    token_keep: Optional[float] = None # ViTs: fraction of patch tokens kept in training (None/1.0 = all)
    token_mask: str = "random"     # ViTs: which tokens are kept: random | block (AdvXL's options)
    lr: Optional[float] = None     # peak lr of this stage (None = optim.lr)
    schedule: Optional[str] = None # lr schedule of this stage (None = optim.schedule)
    warmup_steps: Optional[int] = None # warm-up optimizer steps of this stage (None = optim.warmup_steps)
    optimizer_state: str = "carry" # carry (keep momenta/moments from the previous stage) | reset
    method: Optional[Dict[str, Any]] = None # partial method section merged over the run's `method` (None = same)


@dataclass
class TrainConfig:
    epochs: int = 30               # epochs of the single implicit stage
    log_every: int = 10            # steps between metric logs
    ckpt_every: int = 0            # steps between checkpoints (0 = stage ends only)
    keep_last: int = 2             # checkpoints kept
    ckpt_every_minutes: float = 30.0  # also checkpoint when this much wall time passed since the last one (0 = off)
    preempt_grace_s: float = 100.0 # on SIGTERM/SIGINT/SIGUSR1: max seconds to finish the step and checkpoint (0 = no limit)
    eval_every_epochs: int = 0     # quick eval every N epochs: clean and PGD accuracy on a fixed test batch, logged as eval/acc, eval/pgd_acc and reported to Ray Tune (0 = off)
    eval_samples: int = 256        # test samples in the quick eval's fixed batch (the first N of the test split)
    eval_eps: Optional[float] = None  # PGD budget of the quick eval (None = method.attack.eps; 0 = clean only)
    eval_steps: int = 5            # PGD iterations of the quick eval
    progress: bool = True          # tqdm progress bar on rank 0
    stop_on_nonfinite: bool = True # stop with an error (exit 1) when the training loss, the weights or the quick eval's loss turn NaN/inf; false trains on


@dataclass
class EvalConfig:
    attacks: List[str] = field(default_factory=lambda: ["fgsm", "pgd"]) # attacks to run; options allowed, e.g. 'pgd:loss=cw,restarts=5'
    eps: List[float] = field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.3]) # epsilon grid of the robustness curve
    norm: str = "linf"             # threat model of the grid
    pgd_steps: int = 20            # iterations of PGD (and BIM/MIM) in the evaluation
    pgd_alpha: Optional[float] = None # PGD step (None = 2.5 eps / steps)
    restarts: int = 1              # random restarts per attack
    nested: bool = True            # a sample broken at a smaller eps counts as broken at every larger one without a new attack (exact: the balls are nested); false = attack every eps independently
    model_mode: str = "eval"       # mode of the model while attacked
    max_samples: Optional[int] = None # evaluate only the first N test samples
    batch_size: int = 512          # evaluation batch size
    noise_sigmas: List[float] = field(default_factory=list) # Gaussian-noise accuracy at these sigmas (corruption measure)
    autoattack: bool = False       # APGD-CE + APGD-T preset (reported separately as report["autoattack"])
    autoattack_steps: int = 100    # iterations per APGD run of the preset
    eot_samples: int = 1           # expectation over transformation: attack gradients averaged over this many forwards (randomised models, e.g. model.pni); per attack: 'pgd:eot=10'
    certify: Dict[str, Any] = field(default_factory=dict)  # {sigma, n0, n, alpha, radii, max_samples}
    seed: int = 0                  # seed of attack starts, noise and certification
    cpu_threads: int = 0           # torch threads while evaluating on CPU (0 = every core of the machine; set 1..N on a shared machine)


@dataclass
class TrackConfig:
    wandb: bool = True             # log to Weights & Biases (local files are always written)
    mode: str = "auto"             # auto (online if logged in, else offline) | offline | online
    project: str = "scaletrain"    # W&B project
    entity: Optional[str] = None   # W&B entity (team or user)
    group: Optional[str] = None    # W&B group (e.g. a sweep or an ensemble)
    tags: List[str] = field(default_factory=list)  # W&B tags
    job_type: str = "train"        # W&B job_type (sweeps set trial, ensembles member, their summaries summary)


@dataclass
class EnsembleConfig:
    size: int = 1                  # K > 1: train K seeds (seed, seed+1, ...) as Ray Tune trials, then evaluate the averaged-logit ensemble (docs/sweeps.md)
    concurrency: int = 0           # members trained at once (0 = as many as the logical CPUs allow)


@dataclass
class ExperimentConfig:
    name: str = "default"          # run name: outputs go to <out_dir>/<name> (suffix -2, -3 if taken)
    seed: int = 0                  # seeds model init, attack starts and the trainer RNG
    out_dir: str = "runs"          # parent folder of run folders
    resume: str = "never"          # never | auto | <path to checkpoint>
    data: DataConfig = field(default_factory=DataConfig) # shards to write/read, batch sizes, loaders (docs/data.md)
    model: ModelConfig = field(default_factory=ModelConfig) # which registered model
    method: MethodConfig = field(default_factory=MethodConfig) # robust-training method (docs/methods.md)
    optim: OptimConfig = field(default_factory=OptimConfig) # optimizer and lr schedule
    engine: EngineConfig = field(default_factory=EngineConfig) # DeepSpeed/PyTorch engine, launcher, precision (docs/engine.md)
    train: TrainConfig = field(default_factory=TrainConfig) # epochs, logging, checkpoints
    stages: List[StageConfig] = field(default_factory=list) # multi-stage recipe; empty = one stage from train/method
    eval: EvalConfig = field(default_factory=EvalConfig) # robustness suite run after training and by `scaletrain eval` (docs/evaluation.md)
    tracking: TrackConfig = field(default_factory=TrackConfig) # W&B
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig) # K-seed ensembles (docs/sweeps.md)


# ---- sweep files (configs/sweeps/*.yaml, `scaletrain sweep`; docs/sweeps.md) -----------------

@dataclass
class SchedulerConfig:
    name: str = "none"             # none | asha (asynchronous successive halving, Li et al. 2020, arXiv:1810.05934)
    metric: Optional[str] = None   # metric reported during training that ASHA compares, e.g. val_pgd_acc (needs train.eval_every_epochs)
    mode: str = "max"              # max | min for the scheduler's metric
    grace_period: int = 1          # epochs every trial runs before it may be stopped
    reduction_factor: int = 2      # at each rung only the best 1/reduction_factor go on
    max_t: Optional[int] = None    # epochs of a full trial (None = train.epochs of the base config)


@dataclass
class SweepResources:
    workers: int = 1               # Ray Train workers per trial (1 = the trial process trains itself)
    cpus_per_worker: float = 1.0   # logical CPUs per worker; fractions allowed (0.5 = two workers per core)
    gpus_per_worker: float = 0.0   # GPUs per worker (fractions allowed)


@dataclass
class SweepConfig:
    name: str = "sweep"            # sweep name: folder <out_dir>/<name>, W&B group
    base: Optional[str] = None     # experiment YAML the trials start from (relative to the sweep file; None = defaults)
    overrides: Dict[str, Any] = field(default_factory=dict)  # key path -> value applied to every trial
    space: Dict[str, Any] = field(default_factory=dict)  # key path -> {grid|choice: [..]} | {uniform|loguniform: [lo, hi]} | {randint: [lo, hi]}
    num_samples: int = 1           # samples of the random search (each grid point is sampled this many times); optuna: trials in all
    search: str = "random"         # random | grid (grid: only grid/choice parameters, every combination once) | optuna (TPE; no grid parameters; pip install optuna)
    seed: int = 0                  # seed of the random search / of Optuna's sampler
    metric: str = "robustness_score"  # metric ranking the trials: a name of the report's scalar metrics, e.g. pgd/acc@0.2
    mode: str = "max"              # max | min
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig) # optional ASHA early stopping
    concurrency: int = 0           # trials at once (0 = as many as the logical CPUs allow)
    resources: SweepResources = field(default_factory=SweepResources) # per trial
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig) # K seeds per configuration
    out_dir: str = "sweeps"        # parent of the sweep folder
    ray_address: Optional[str] = None  # existing Ray cluster (else RAY_ADDRESS, else a local one)
