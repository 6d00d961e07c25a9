"""Configuration of a LoRA training run (``wan-dist train-lora``), validated here; imports nothing of wan_dist
but the training run's own small configs.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from wan_dist.config.train import FlowConfig, OptimConfig, WorkerConfig, nested_from_dict

__all__ = ["LoraDataConfig", "LoraTrainConfig", "lora_train_config_from_dict", "DEFAULT_TARGETS", "LORA_EXPERTS"]

# Every Linear of every block (self- and cross-attention projections, the feed-forward pair), as musubi-tuner
# and the Lightning LoRAs target them; module names are ours (the reference checkpoint's).
DEFAULT_TARGETS = (r"blocks\.\d+\.(self_attn|cross_attn)\.(q|k|v|o)", r"blocks\.\d+\.ffn\.(0|2)")
LORA_EXPERTS = ("high", "low", "both")  # the request's `loras[].transformer` words


def _require(condition: bool, owner: str, field_name: str, reason: str) -> None:
    if not condition:
        raise ValueError(f"{owner}.{field_name}: {reason}")


@dataclass(frozen=True, kw_only=True)
class LoraDataConfig:
    """What the LoRA learns from: ``path``, a folder of clips or images each with a caption in a sibling ``.txt``
    (``a.mp4`` + ``a.txt``, the kohya / musubi convention), or a Parquet manifest with a ``caption`` column and a
    ``video`` or ``image`` column (paths relative to the manifest's folder, or URLs). Any fsspec URL.

    Each item is scaled to cover ``height`` x ``width`` and centre-cropped (None: the base model's default size);
    a clip keeps its first ``num_frames`` frames (None: the model's default; a shorter clip is an error naming
    it); an image trains as a one-frame clip. One run holds clips or images, not both.
    """

    path: str
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    fixed_batch: bool = False  # every step the same first batch (smoke tests)

    def __post_init__(self) -> None:
        name = "LoraDataConfig"
        _require(bool(self.path), name, "path", "must name a folder or a Parquet manifest")
        for f in ("height", "width", "num_frames"):
            value = getattr(self, f)
            _require(value is None or int(value) >= 1, name, f, f"must be >= 1 or null, got {value}")


@dataclass(frozen=True, kw_only=True)
class LoraTrainConfig(WorkerConfig):
    """One LoRA training run on a frozen base model (its workers: ``WorkerConfig``); ``out`` holds checkpoints (resume), the latent cache,
    the loss curve and the LoRA files (``<out>/lora/high_noise_model.safetensors`` and/or
    ``low_noise_model.safetensors``, diffusers / PEFT format, one per trained expert as Wan2.2-Lightning ships).

    ``base``: the model (a preset name such as ``toy``, a folder or a URL: what ``load_pipeline`` takes).
    ``experts``: which experts get a LoRA: ``high`` (high-noise), ``low`` or ``both``.
    ``targets``: regular expressions; a Linear module whose name matches one in full gets a LoRA.
    ``rank``, ``alpha``: the factors' rank and diffusers' scale ``alpha / rank``.
    ``gradient_checkpointing``: recompute each block in the backward pass (memory for compute).
    ``dtype``: of the frozen base ("float32", or "bfloat16" on a GPU); the factors train in float32. With
    ``use_gpu`` each worker holds the base on its GPU.
    ``fsdp``: with several workers, shard the frozen experts over them with FSDP2 (each holds 1/N of every
    expert, gathered block by block as it runs); the factors stay replicated (DDP). Off: every worker holds all.
    """

    out: str
    data: LoraDataConfig
    base: str = "toy"
    experts: str = "both"
    rank: int = 16
    alpha: float = 16.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    gradient_checkpointing: bool = True
    dtype: str = "float32"
    fsdp: bool = False
    seed: int = 0
    progress: bool = True
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(steps=300, lr=1e-3, batch_size=4,
                                                                               checkpoint_every=50))
    flow: FlowConfig = dataclasses.field(default_factory=FlowConfig)

    def __post_init__(self) -> None:
        name = "LoraTrainConfig"
        _require(bool(self.out), name, "out", "must name the run's folder")
        _require(self.experts in LORA_EXPERTS, name, "experts",
                 f"must be one of {', '.join(LORA_EXPERTS)}; got {self.experts!r}")
        _require(int(self.rank) >= 1, name, "rank", f"must be >= 1, got {self.rank}")
        _require(self.alpha > 0, name, "alpha", f"must be > 0, got {self.alpha}")
        _require(len(self.targets) > 0, name, "targets", "name at least one module pattern")
        _require(self.dtype in ("float32", "bfloat16", "float16"), name, "dtype",
                 f"must be float32, bfloat16 or float16; got {self.dtype!r}")
        for pattern in self.targets:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"{name}.targets: {pattern!r} is not a regular expression ({error})") from None
        super().__post_init__()


_NESTED = {"data": LoraDataConfig, "optim": OptimConfig, "flow": FlowConfig}


def lora_train_config_from_dict(data: dict[str, Any]) -> LoraTrainConfig:
    """LoraTrainConfig from plain nested dicts (Hydra's), naming unknown fields in the error."""
    data = dict(data)
    if not data.get("data"):
        raise ValueError("LoraTrainConfig.data: give data.path (a folder or Parquet manifest of captioned clips)")
    if "targets" in data:
        data["targets"] = tuple(data["targets"])
    return nested_from_dict(LoraTrainConfig, _NESTED, data)
