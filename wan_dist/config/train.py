"""Configuration of a training run (``wan-dist train``): one kw-only dataclass per part, validated here.

Kept in its own module so ``wan_dist.config`` stays short; it imports nothing from the rest of wan_dist.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["WorkerConfig", "TrainDataConfig", "OptimConfig", "FlowConfig", "TrainConfig", "train_config_from_dict",
           "nested_from_dict"]

Stage = Literal["vae", "experts", "all"]
STAGES = ("vae", "experts", "all")


def _require(condition: bool, owner: str, field_name: str, reason: str) -> None:
    if not condition:
        raise ValueError(f"{owner}.{field_name}: {reason}")


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    """The Ray Train workers of a run, shared by ``TrainConfig`` and ``LoraTrainConfig`` (their fields stay at the
    top level, as the YAML and CLI overrides name them): ``num_workers`` workers (DDP), each reserving
    ``cpus_per_worker`` CPUs (and a GPU with ``use_gpu``) and running ``threads_per_worker`` torch threads.
    ``keep_checkpoints``: the newest checkpoints a stage keeps on disk (older ones are deleted as new ones land;
    a resume needs only the newest). Errors name the run's own config class (``TrainConfig.cpus_per_worker``)."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    threads_per_worker: int = 1
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        name = type(self).__name__
        _require(self.keep_checkpoints >= 1, name, "keep_checkpoints", f"must be >= 1, got {self.keep_checkpoints}")
        _require(self.num_workers >= 1, name, "num_workers", f"must be >= 1, got {self.num_workers}")
        _require(self.threads_per_worker >= 1, name, "threads_per_worker",
                 f"must be >= 1, got {self.threads_per_worker}")
        _require(self.cpus_per_worker > 0, name, "cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}")


@dataclass(frozen=True, kw_only=True)
class TrainDataConfig:
    """Clips drawn from the procedural world (wan_dist.world). ``None`` sizes take the preset's defaults.

    Clip i of the train split is ``sample_scene(seed * 1_000_003 + i, split="train")``; held-out clips (for
    the VAE's PSNR) come from the ``heldout`` split the same way, so a run is reproducible from its config.
    ``fixed_batch``: every step sees the same first ``batch_size`` clips (and the same noise draws do not
    repeat): the smoke tests use it so the loss must fall.
    """

    num_clips: int = 256
    heldout_clips: int = 8
    seed: int = 0
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    fixed_batch: bool = False

    def __post_init__(self) -> None:
        name = "TrainDataConfig"
        _require(self.num_clips >= 1, name, "num_clips", f"must be >= 1, got {self.num_clips}")
        _require(self.heldout_clips >= 0, name, "heldout_clips", f"must be >= 0, got {self.heldout_clips}")
        for f in ("height", "width", "num_frames"):
            value = getattr(self, f)
            _require(value is None or int(value) >= 1, name, f, f"must be >= 1 or null, got {value}")


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW on one stage. ``steps`` is the stage's total: a rerun with more steps continues to it."""

    steps: int
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0  # 0: off
    checkpoint_every: int = 100
    # 0: off. Else checkpoints also hold an exponential moving average of the weights (diffusers' EMAModel:
    # decay min(ema_decay, (1 + n) / (10 + n)) at update n), and the average is what a run publishes
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        name = "OptimConfig"
        _require(0 <= self.ema_decay < 1, name, "ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        for f in ("steps", "warmup_steps"):
            _require(int(getattr(self, f)) >= 0, name, f, f"must be >= 0, got {getattr(self, f)}")
        for f in ("batch_size", "checkpoint_every"):
            _require(int(getattr(self, f)) >= 1, name, f, f"must be >= 1, got {getattr(self, f)}")
        _require(self.lr > 0, name, "lr", f"must be > 0, got {self.lr}")
        for f in ("weight_decay", "grad_clip"):
            _require(getattr(self, f) >= 0, name, f, f"must be >= 0, got {getattr(self, f)}")


@dataclass(frozen=True, kw_only=True)
class FlowConfig:
    """Rectified-flow training of the experts (see wan_dist/train/flow.py for the exact sampling).

    ``shift``: the timestep shift S (None: the preset's sampling shift, 12 for T2V as the reference samples).
    ``cfg_dropout``: probability that a clip's caption is replaced by the empty prompt (classifier-free guidance).
    ``loss_weighting``: "none" (plain MSE) or "bell" (DiffSynth-Studio's Wan weighting over timestep ids).
    """

    shift: float | None = None
    cfg_dropout: float = 0.1
    loss_weighting: Literal["none", "bell"] = "none"

    def __post_init__(self) -> None:
        name = "FlowConfig"
        _require(self.shift is None or self.shift > 0, name, "shift", f"must be > 0 or null, got {self.shift}")
        _require(0.0 <= self.cfg_dropout <= 1.0, name, "cfg_dropout", f"must be in [0, 1], got {self.cfg_dropout}")
        _require(self.loss_weighting in ("none", "bell"), name, "loss_weighting",
                 f"must be 'none' or 'bell', got {self.loss_weighting!r}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(WorkerConfig):
    """One training run (its workers: ``WorkerConfig``). ``out`` holds everything: checkpoints to resume from, the latent cache, loss
    curves and the published model (``out/model``, loadable with ``load_pipeline``).

    ``vae_frames``: the VAE trains on random windows of this many consecutive frames of each clip (1 + 4k;
    None: whole clips). Its convolutions are causal and run in 4-frame chunks after the first frame, each chunk
    reading the cached features of the chunk before: a 5-frame window (the first frame and one chunk) never
    trains a chunk that follows a 4-frame chunk, and a VAE trained so decoded frames 8 and 16 of a 17-frame clip
    with wrong colours (2026-12-06). 9 frames (first, chunk, chunk) train that steady state too, at about half
    the cost of whole clips.
    ``vae_crop``: and on random square crops of this side (a multiple of the VAE's stride; None: whole frames):
    the VAE is convolutional, so 32x32 crops of 64x64 clips train it at a quarter of the cost.
    ``vae_sample_posterior``: decode posterior samples instead of the mean (see ``VAEStage``).
    ``vae_decoder_only``: train the decoder only (resuming a trained VAE, e.g. on longer windows): the encoder,
    hence the latents, their statistics and experts trained on them, stay as they are.
    ``vae_from``: a trained VAE to use instead of training one (its VAE stage is skipped): a diffusers
    ``vae/`` folder (e.g. another run's ``<out>/vae``) or a checkpoint folder holding one. It is copied to
    ``<out>/vae`` and must have the preset's VAE architecture (``toy`` and ``toy-i2v`` share theirs).
    ``vae_init``: a trained VAE (the same kinds of folder) whose weights the VAE stage starts from instead of a
    random init, to train it on (e.g. the shipped ``toy``'s on whole 17-frame clips); a resumed run continues from
    its own checkpoint. Not with ``vae_from`` (which skips the stage).
    ``train_text``: train the text encoder with the experts (from the run's frozen random one; the experts'
    optimizer and learning rate), and publish it; off, it stays frozen random and captions are encoded once.
    """

    out: str
    preset: str = "toy"
    stage: Stage = "all"
    seed: int = 0
    progress: bool = True
    vae_frames: int | None = 9
    vae_crop: int | None = 32
    vae_sample_posterior: bool = False
    vae_decoder_only: bool = False
    vae_from: str | None = None
    vae_init: str | None = None
    train_text: bool = False
    data: TrainDataConfig = dataclasses.field(default_factory=TrainDataConfig)
    vae: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(steps=1000, lr=3e-4, batch_size=2))
    experts: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(steps=1000, lr=2e-4, batch_size=8))
    flow: FlowConfig = dataclasses.field(default_factory=FlowConfig)

    def __post_init__(self) -> None:
        name = "TrainConfig"
        _require(bool(self.out), name, "out", "must name the run's folder")
        _require(self.stage in STAGES, name, "stage", f"must be one of {', '.join(STAGES)}; got {self.stage!r}")
        super().__post_init__()
        _require(self.vae_frames is None or (self.vae_frames >= 1 and self.vae_frames % 4 == 1), name, "vae_frames",
                 f"must be 1 + 4k (the VAE's causal chunks) or null, got {self.vae_frames}")
        _require(not (self.vae_from and self.vae_init), name, "vae_init",
                 "not with vae_from (vae_from uses a VAE as it is and skips the VAE stage; vae_init trains one on)")


_NESTED = {"data": TrainDataConfig, "vae": OptimConfig, "experts": OptimConfig, "flow": FlowConfig}


def nested_from_dict(cls, nested: dict[str, type], data: dict[str, Any]):
    """``cls`` from plain nested dicts (Hydra's): ``nested`` maps a field to the dataclass its dict becomes;
    unknown fields, at either level, are named in the error."""
    data = dict(data)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(known)}")
    for key, part in nested.items():
        if isinstance(data.get(key), dict):
            fields = {f.name for f in dataclasses.fields(part)}
            extra = sorted(set(data[key]) - fields)
            if extra:
                raise ValueError(f"{cls.__name__}.{key}: unknown field(s) {extra}; known: {sorted(fields)}")
            data[key] = part(**data[key])
    return cls(**data)


def train_config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """TrainConfig from plain nested dicts (Hydra's), naming unknown fields in the error."""
    return nested_from_dict(TrainConfig, _NESTED, data)
