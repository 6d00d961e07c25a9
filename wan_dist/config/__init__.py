"""Typed, validated configuration: one kw-only dataclass per component.

This package imports nothing from the rest of wan_dist. Every dataclass validates itself in
``__post_init__`` and raises ``ValueError`` naming the field and the reason. A function receives
its own sub-config, never the root.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "DiTConfig",
    "VAEConfig",
    "TextEncoderConfig",
    "SamplingConfig",
    "ParallelConfig",
    "OutputConfig",
    "GroupSpec",
    "BatchConfig",
    "GalleryConfig",
    "from_dict",
]


def _require(condition: bool, owner: str, field_name: str, reason: str) -> None:
    if not condition:
        raise ValueError(f"{owner}.{field_name}: {reason}")


@dataclass(frozen=True, kw_only=True)
class DiTConfig:
    """Architecture of one Wan 2.2 diffusion transformer (one expert)."""

    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_channels: int
    out_channels: int
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    rope_max_seq_len: int = 1024

    def __post_init__(self) -> None:
        name = "DiTConfig"
        for f in ("dim", "ffn_dim", "num_heads", "num_layers", "in_channels", "out_channels",
                  "freq_dim", "text_dim", "text_len", "rope_max_seq_len"):
            _require(int(getattr(self, f)) > 0, name, f, f"must be a positive integer, got {getattr(self, f)!r}")
        _require(self.dim % self.num_heads == 0, name, "num_heads",
                 f"must divide dim={self.dim}, got {self.num_heads}")
        _require(self.head_dim % 2 == 0 and self.head_dim >= 6, name, "dim",
                 f"head_dim {self.head_dim} must be even and >= 6 for the 3-axis RoPE")
        _require(self.freq_dim % 2 == 0, name, "freq_dim", "must be even")
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        _require(len(self.patch_size) == 3 and all(p > 0 for p in self.patch_size), name, "patch_size",
                 f"must be three positive integers (t, h, w), got {self.patch_size!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Head-dim channels given to the (t, h, w) RoPE axes: 44/42/42 for head_dim 128."""
        hw = 2 * (self.head_dim // 6)
        return (self.head_dim - 2 * hw, hw, hw)


@dataclass(frozen=True, kw_only=True)
class VAEConfig:
    """Wan 2.1 (z16, 4x8x8) or Wan 2.2 (z48, 4x16x16) VAE, in diffusers' AutoencoderKLWan terms."""

    version: Literal["2.1", "2.2"]
    z_dim: int
    base_dim: int
    decoder_base_dim: int | None = None
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    patch_size: int | None = None
    is_residual: bool = False
    latents_mean: tuple[float, ...] = ()
    latents_std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        name = "VAEConfig"
        _require(self.version in ("2.1", "2.2"), name, "version", f"must be '2.1' or '2.2', got {self.version!r}")
        _require(self.z_dim > 0 and self.base_dim > 0, name, "z_dim", "z_dim and base_dim must be positive")
        for f in ("dim_mult", "temporal_downsample", "latents_mean", "latents_std"):
            object.__setattr__(self, f, tuple(getattr(self, f)))
        _require(len(self.latents_mean) == self.z_dim, name, "latents_mean",
                 f"needs z_dim={self.z_dim} values, got {len(self.latents_mean)}")
        _require(len(self.latents_std) == self.z_dim, name, "latents_std",
                 f"needs z_dim={self.z_dim} values, got {len(self.latents_std)}")
        _require(all(s > 0 for s in self.latents_std), name, "latents_std", "must be positive")

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(bool(t) for t in self.temporal_downsample)

    @property
    def spatial_stride(self) -> int:
        return 2 ** (len(self.dim_mult) - 1) * (self.patch_size or 1)


@dataclass(frozen=True, kw_only=True)
class TextEncoderConfig:
    """UMT5 encoder, in transformers' UMT5Config terms."""

    vocab_size: int = 256384
    d_model: int = 4096
    d_ff: int = 10240
    d_kv: int = 64
    num_heads: int = 64
    num_layers: int = 24
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    text_len: int = 512

    def __post_init__(self) -> None:
        for f in ("vocab_size", "d_model", "d_ff", "d_kv", "num_heads", "num_layers", "text_len"):
            _require(getattr(self, f) > 0, "TextEncoderConfig", f, "must be positive")


Schedule = Literal["reference", "diffusers"]
Solver = Literal["unipc", "dpm++", "euler"]
StepCacheMode = Literal["off", "magcache", "teacache"]


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """How to denoise. ``None`` fields take the variant's default (see models.presets)."""

    solver: Solver = "unipc"
    schedule: Schedule | None = None  # None: chosen by the checkpoint layout
    num_inference_steps: int | None = None
    shift: float | None = None
    guidance_scale: float | None = None  # high-noise expert (diffusers' `transformer`)
    guidance_scale_2: float | None = None  # low-noise expert (diffusers' `transformer_2`)
    boundary_ratio: float | None = None
    # step caching (wan_dist/sampling/step_cache.py): skip the blocks on steps whose residual barely changes;
    # threshold and retention None: the mode's defaults (off: they do not apply)
    cache: StepCacheMode = "off"
    cache_threshold: float | None = None
    cache_retention: float | None = None  # share of each expert's first steps always computed

    def __post_init__(self) -> None:
        name = "SamplingConfig"
        _require(self.cache in ("off", "magcache", "teacache"), name, "cache",
                 f"must be one of off, magcache, teacache; got {self.cache!r}")
        if self.cache_threshold is not None:
            _require(self.cache_threshold > 0, name, "cache_threshold", f"must be > 0, got {self.cache_threshold}")
        if self.cache_retention is not None:
            _require(0.0 <= self.cache_retention <= 1.0, name, "cache_retention",
                     f"must be in [0, 1], got {self.cache_retention}")
        _require(self.solver in ("unipc", "dpm++", "euler"), name, "solver",
                 f"must be one of unipc, dpm++, euler; got {self.solver!r}")
        _require(self.schedule in (None, "reference", "diffusers"), name, "schedule",
                 f"must be 'reference' or 'diffusers', got {self.schedule!r}")
        if self.num_inference_steps is not None:
            _require(int(self.num_inference_steps) >= 1, name, "num_inference_steps",
                     f"must be >= 1, got {self.num_inference_steps}")
        if self.shift is not None:
            _require(self.shift > 0, name, "shift", f"must be > 0, got {self.shift}")
        for f in ("guidance_scale", "guidance_scale_2"):
            value = getattr(self, f)
            _require(value is None or value >= 0, name, f, f"must be >= 0, got {value}")
        if self.boundary_ratio is not None:
            _require(0.0 <= self.boundary_ratio <= 1.0, name, "boundary_ratio",
                     f"must be in [0, 1], got {self.boundary_ratio}")


@dataclass(frozen=True, kw_only=True)
class ParallelConfig:
    """Degrees of each parallel axis; their product is the render group size."""

    data: int = 1
    cfg: int = 1
    ulysses: int = 1
    ring: int = 1
    placement: Literal["colocated", "disaggregated"] = "colocated"
    fsdp: bool = False
    vae_parallel: bool = False
    attention: str = "auto"
    ulysses_backend: Literal["native", "deepspeed"] = "native"

    def __post_init__(self) -> None:
        name = "ParallelConfig"
        for f in ("data", "cfg", "ulysses", "ring"):
            _require(int(getattr(self, f)) >= 1, name, f, f"degree must be >= 1, got {getattr(self, f)}")
        _require(self.cfg in (1, 2), name, "cfg", f"must be 1 or 2 (cond/uncond), got {self.cfg}")
        _require(self.placement in ("colocated", "disaggregated"), name, "placement",
                 f"must be 'colocated' or 'disaggregated', got {self.placement!r}")
        _require(self.ulysses_backend in ("native", "deepspeed"), name, "ulysses_backend",
                 f"must be 'native' or 'deepspeed', got {self.ulysses_backend!r}")

    @property
    def world_size(self) -> int:
        return self.data * self.cfg * self.ulysses * self.ring


@dataclass(frozen=True, kw_only=True)
class OutputConfig:
    """Where and how a clip is written."""

    uri: str = "outputs"
    codec: str = "libx264"
    crf: int = 18
    preset: str = "medium"
    write_sidecar: bool = True

    def __post_init__(self) -> None:
        _require(bool(self.uri), "OutputConfig", "uri", "must not be empty")
        _require(0 <= self.crf <= 51, "OutputConfig", "crf", f"must be in [0, 51], got {self.crf}")


@dataclass(frozen=True, kw_only=True)
class GroupSpec:
    """How the render groups of a front door are laid out and placed: ``batch.group`` of a batch run,
    ``serve.app.renderer.group`` of each renderer replica. The engine's ``GroupConfig`` is a GroupSpec plus
    what one group loads (its checkpoint source, ...).

    ``parallel``: the layout of one group (its degrees multiply to the number of ranks). Each rank gets a
    placement-group bundle of ``cpus_per_rank`` CPUs and, with ``use_gpus``, one GPU (None: GPUs when the
    cluster has them, see :meth:`for_cluster`). ``threads_per_rank``: torch threads of each rank process.
    ``dtype``: "auto" (float32 on CPU, bfloat16 on GPU) or a dtype name. ``step_hook``:
    ``"package.module:name"`` of a step-control factory run for every render (wan_dist.engine.control), "" none.
    ``memory_limit_mb``: the private memory (heap and anonymous mappings) each rank process may hold, 0 for none,
    so that a render past it fails alone (retried and failed like any render failure) instead of the kernel's OOM
    killer taking other processes of the node. CPU ranks: ``RLIMIT_DATA``, an allocation past it fails. GPU ranks:
    the CUDA driver's own mappings would count against that limit, so a watch of the resident private memory
    (engine.memory_watch) ends the rank past it and its group is rebuilt.
    """

    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    use_gpus: bool | None = None
    cpus_per_rank: float = 1.0
    threads_per_rank: int = 1
    dtype: str = "auto"
    step_hook: str = ""
    memory_limit_mb: int = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        _require(isinstance(self.parallel, ParallelConfig), name, "parallel",
                 f"must be a ParallelConfig, got {type(self.parallel).__name__}")
        _require(self.use_gpus in (None, True, False), name, "use_gpus",
                 f"must be true, false or null, got {self.use_gpus!r}")
        _require(self.cpus_per_rank > 0, name, "cpus_per_rank", f"must be > 0, got {self.cpus_per_rank}")
        _require(int(self.threads_per_rank) >= 1, name, "threads_per_rank",
                 f"must be >= 1, got {self.threads_per_rank}")
        _require(int(self.memory_limit_mb) >= 0, name, "memory_limit_mb",
                 f"must be >= 0 (0: no limit), got {self.memory_limit_mb}")

    @property
    def world_size(self) -> int:
        return self.parallel.world_size

    def for_cluster(self, resources: Mapping[str, float]):
        """This spec with ``use_gpus`` decided for a cluster of ``resources`` (``ray.cluster_resources()``):
        an explicit value is kept; None becomes "the cluster has a GPU"."""
        if self.use_gpus is not None:
            return self
        return dataclasses.replace(self, use_gpus=resources.get("GPU", 0) >= 1)

    def rank_bundle(self) -> dict[str, float]:
        """The placement-group bundle of one rank."""
        return {"CPU": self.cpus_per_rank, **({"GPU": 1} if self.use_gpus else {})}


@dataclass(frozen=True, kw_only=True)
class GalleryConfig:
    """The HTML gallery of a batch output (``gallery.html``: a thumbnail, the prompt, status and links per row).

    ``enabled``: a batch run writes ``{output}/gallery.html`` when it ends (``wan-dist gallery`` writes it anyway).
    ``thumbnail_frames``: frames of each animated WebP thumbnail (1: a still poster frame); ``thumbnail_size``: its
    longest side in pixels (never enlarged); ``thumbnail_quality``: WebP quality, 1-100.
    ``links``: ``auto`` (relative links for local outputs and stores that cannot sign; presigned https URLs where
    the store signs them), ``relative`` or ``presigned``; presigned URLs last ``presign_expires_s``.
    ``workers``: clips read and decoded at once; ``progress``: a tqdm bar over the rows.
    """

    enabled: bool = True
    thumbnail_frames: int = 6
    thumbnail_size: int = 192
    thumbnail_quality: int = 75
    links: Literal["auto", "relative", "presigned"] = "auto"
    presign_expires_s: int = 7 * 24 * 3600
    workers: int = 4
    progress: bool = True

    def __post_init__(self) -> None:
        name = "GalleryConfig"
        _require(isinstance(self.enabled, bool), name, "enabled", f"must be true or false, got {self.enabled!r}")
        for f in ("thumbnail_frames", "thumbnail_size", "workers", "presign_expires_s"):
            value = getattr(self, f)
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name, f,
                     f"must be an integer >= 1, got {value!r}")
        _require(isinstance(self.thumbnail_quality, int) and 1 <= self.thumbnail_quality <= 100, name,
                 "thumbnail_quality", f"must be an integer in [1, 100], got {self.thumbnail_quality!r}")
        _require(self.links in ("auto", "relative", "presigned"), name, "links",
                 f"must be auto, relative or presigned, got {self.links!r}")


@dataclass(frozen=True, kw_only=True)
class BatchConfig:
    """How a batch job runs a manifest (clips are written as OutputConfig says).

    ``group``: the layout and placement of every render group (GroupSpec).
    ``groups``: render groups to start (None: as many as the cluster's GPUs, or CPUs, hold).
    ``queue_depth``: requests queued on each group, so the next one starts the moment the current one ends.
    ``publishers``: clips encoded and uploaded at once, outside the groups, while they render on.
    ``max_attempts`` / ``retry_backoff_s``: transient failures (a rank died, storage failed) retry with
    exponential backoff and jitter; a row still failing after ``max_attempts`` is recorded failed.
    ``fail_on_row_errors``: the batch command (``wan-dist batch``, ``python -m wan_dist.cli.batch``) exits non-zero
    when a row failed, so a Ray job with failed rows shows FAILED; False exits 0 once every row has an outcome
    (failed rows are in the results table either way).
    ``only_models``: render only the rows of these variants (empty: every row's); rows of other variants are left
    to another run over the same manifest and output (no result, not counted in this run's total). Runs that
    split one manifest this way must share ``default_model`` (it decides the variant of rows whose model is null).
    ``record_invalid_rows``: record the manifest's invalid rows as failed; False in all but one of the runs that
    split a manifest, so each invalid row is recorded once.
    ``gallery``: the ``gallery.html`` written beside the clips when the run ends (GalleryConfig).
    """

    manifest: str
    default_model: str = "tiny"
    sources: dict[str, str] = dataclasses.field(default_factory=dict)  # model name -> checkpoint source
    layout: str = "diffusers"
    group: GroupSpec = dataclasses.field(default_factory=GroupSpec)
    groups: int | None = None
    queue_depth: int = 2
    publishers: int = 2
    publish_cpus: float = 0.0
    max_attempts: int = 3
    retry_backoff_s: float = 2.0
    resume: bool = True
    results_flush_rows: int = 25
    results_flush_s: float = 15.0
    presign_expires_s: int = 7 * 24 * 3600
    progress_interval_s: float = 10.0
    group_ready_timeout_s: float = 600.0
    run_id: str | None = None
    fail_on_row_errors: bool = True
    only_models: tuple[str, ...] = ()
    record_invalid_rows: bool = True
    gallery: GalleryConfig = dataclasses.field(default_factory=GalleryConfig)

    def __post_init__(self) -> None:
        name = "BatchConfig"
        _require(isinstance(self.only_models, tuple) and all(isinstance(m, str) and m for m in self.only_models),
                 name, "only_models", f"must be a tuple of variant names, got {self.only_models!r}")
        _require(len(set(self.only_models)) == len(self.only_models), name, "only_models",
                 f"names a variant twice: {list(self.only_models)}")
        _require(isinstance(self.record_invalid_rows, bool), name, "record_invalid_rows",
                 f"must be true or false, got {self.record_invalid_rows!r}")
        _require(isinstance(self.fail_on_row_errors, bool), name, "fail_on_row_errors",
                 f"must be true or false, got {self.fail_on_row_errors!r}")
        _require(bool(self.manifest), name, "manifest", "must name a Parquet file (path or URL)")
        _require(isinstance(self.group, GroupSpec), name, "group",
                 f"must be a GroupSpec, got {type(self.group).__name__}")
        _require(self.groups is None or self.groups >= 1, name, "groups", f"must be >= 1, got {self.groups}")
        for f in ("queue_depth", "publishers", "max_attempts", "results_flush_rows"):
            _require(int(getattr(self, f)) >= 1, name, f, f"must be >= 1, got {getattr(self, f)}")
        for f in ("retry_backoff_s", "publish_cpus", "results_flush_s", "progress_interval_s"):
            _require(float(getattr(self, f)) >= 0, name, f, f"must be >= 0, got {getattr(self, f)}")


def from_dict(cls: type, data: Mapping[str, Any] | None, *, path: str | None = None):
    """Build dataclass ``cls`` from plain data (Hydra, YAML, JSON), naming unknown fields in the error.

    A mapping given for a field typed with a config dataclass (``GroupSpec``, ``ParallelConfig | None``, ...)
    becomes that dataclass, recursively; a list given for a tuple field becomes a tuple. With ``path`` (the
    name of ``cls``'s block, e.g. ``"serve"``), a ValueError names the bad field by its full dotted path:
    ``serve.webhooks.max_attempts: must be >= 1, got 0``.
    """
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{path or cls.__name__}: unknown field(s) {unknown}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        config_type = _config_type(hints[name])
        if config_type is not None and isinstance(value, Mapping):
            data[name] = from_dict(config_type, value, path=f"{path or cls.__name__}.{name}")
        elif isinstance(value, list) and _is_tuple(hints[name]):
            data[name] = tuple(value)
    try:
        return cls(**data)
    except ValueError as error:
        if path is None:
            raise
        raise ValueError(_at_path(str(error), path, cls, names)) from None


def _at_path(message: str, path: str, cls: type, names: set[str]) -> str:
    """``Owner.field: reason`` or ``field: reason`` as ``{path}.field: reason``; other messages as ``{path}: ...``."""
    if message.startswith(f"{path}.") or message.startswith(f"{path}:"):
        return message  # named by its path already (a nested block of cls)
    rest = message.removeprefix(f"{cls.__name__}.")
    head = rest.split(":", 1)[0]
    return f"{path}.{rest}" if head.split(".")[0] in names else f"{path}: {rest}"


def _config_type(hint: Any) -> type | None:
    """The config dataclass a field is typed with (alone or ``| None``), else None."""
    found = [t for t in _members(hint) if isinstance(t, type) and dataclasses.is_dataclass(t)]
    return found[0] if len(found) == 1 else None


def _is_tuple(hint: Any) -> bool:
    return any(t is tuple or typing.get_origin(t) is tuple for t in _members(hint))


def _members(hint: Any) -> tuple:
    """The types of a union hint (``A | B``, ``Optional[A]``), or the hint alone."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)
