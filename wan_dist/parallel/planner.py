"""Layout planner: data / CFG / Ulysses / ring degrees, expert placement, FSDP and offload for a GPU budget.

``plan(model, gpus=8, gpu_memory_gb=80, resolution="720p", frames=81, objective="latency")`` enumerates
layouts, predicts for each the peak memory per GPU, the communication per denoising step per GPU and
the time per clip, drops what does not fit and returns the best as a :class:`Plan` with the reasons.
Arithmetic only (no torch.distributed); the expert split of the steps comes from ``wan_dist.sampling``.

Units: bytes, FLOP, seconds; memory is reported in GiB, communication in GB (1e9). The cost model
(parameter counts, weight and activation bytes, FLOPs, communication) and every assumption about the
hardware live in :mod:`wan_dist.parallel.costs` (:class:`GpuSpec`, H100 SXM defaults, its named
constants); its public names are re-exported here. This module combines them per stage and layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from wan_dist.config import ParallelConfig
from wan_dist.models.presets import VariantSpec, get_preset
from wan_dist.parallel.costs import (A100, COMPUTE_BYTES, CPU_FLOPS_PER_S, CUDA_RESERVED_BYTES, ENGINE, GB, GIB,
                                     GPUS_PER_NODE, H100, PCIE_BYTES_PER_S, REFERENCE, RESIDUAL_SLABS_FP32,
                                     RING_ATTENTION_EFFICIENCY, RING_SLABS, SELF_ATTENTION_SLABS, ULYSSES_SLABS,
                                     USABLE_FRACTION, VAE_DECODE_BYTES_PER_PIXEL_CHANNEL, VAE_DECODE_FLOPS_PER_PIXEL,
                                     VAE_PARAMS, EngineProfile, GpuSpec, dit_activation_bytes, dit_block_param_count,
                                     dit_param_count, dit_weight_bytes, forward_flops, step_comm_bytes,
                                     text_encoder_param_count)

__all__ = ["GpuSpec", "H100", "A100", "EngineProfile", "ENGINE", "REFERENCE", "Workload", "make_workload",
           "Stage", "Estimate", "Plan", "plan", "estimate", "dit_param_count", "dit_block_param_count",
           "dit_weight_bytes", "text_encoder_param_count", "dit_activation_bytes", "forward_flops",
           "step_comm_bytes", "candidates"]

# ----------------------------------------------------------------------------- workload

@dataclass(frozen=True, kw_only=True)
class Workload:
    """One clip: the variant, its pixel size, frames and steps, and each expert's share of the steps."""

    spec: VariantSpec
    width: int
    height: int
    frames: int
    stage_steps: tuple[int, ...]  # (high-noise, low-noise) for two experts, (steps,) for one

    @property
    def steps(self) -> int:
        return sum(self.stage_steps)

    @property
    def tokens(self) -> int:
        """Sequence length L after patchify: 75,600 for A14B at 1280x720, 81 frames."""
        vae, (pt, ph, pw), stride = self.spec.vae, self.spec.dit.patch_size, self.spec.vae.spatial_stride
        latent_frames = (self.frames - 1) // vae.temporal_stride + 1
        return (latent_frames // pt) * (self.height // stride // ph) * (self.width // stride // pw)


def _size(resolution: str, spec: VariantSpec) -> tuple[int, int]:
    text = str(resolution).lower().replace("*", "x")
    if "x" in text:
        return tuple(int(v) for v in text.split("x"))  # type: ignore[return-value]
    target = {"720p": 720, "480p": 480}.get(text)
    if target is None:
        raise ValueError(f"resolution: must be 720p, 480p or WxH, got {resolution!r}")
    for width, height in spec.defaults.sizes:  # the variant's own landscape size of that class
        if width >= height and abs(height - target) <= 16:
            return width, height
    return (1280, 720) if target == 720 else (832, 480)


def _stage_steps(spec: VariantSpec, steps: int) -> tuple[int, ...]:
    """Steps per expert with the reference schedule (T2V 26:14, I2V 15:25 at 40 steps)."""
    if not spec.two_experts:
        return (steps,)
    from wan_dist.sampling import expert_schedule
    from wan_dist.sampling.schedules import reference_schedule

    experts = expert_schedule(reference_schedule(steps, spec.defaults.shift), spec.defaults.boundary_ratio)
    high = sum(1 for e in experts if e == 0)
    return (high, steps - high)


def make_workload(model: str | VariantSpec, *, resolution: str = "720p", frames: int | None = None,
                  steps: int | None = None) -> Workload:
    """A :class:`Workload` from a preset name, "720p" / "480p" / "WxH" and optional frames and steps."""
    spec = get_preset(model) if isinstance(model, str) else model
    frames = int(frames or spec.defaults.num_frames)
    steps = int(steps or spec.defaults.num_inference_steps)
    if (frames - 1) % spec.vae.temporal_stride or frames < 1:
        raise ValueError(f"frames: must be {spec.vae.temporal_stride}k+1, got {frames}")
    width, height = _size(resolution, spec)
    unit = spec.vae.spatial_stride * spec.dit.patch_size[1]
    if width % unit or height % unit:
        raise ValueError(f"resolution: {width}x{height} is not a multiple of {unit} for {spec.name}")
    return Workload(spec=spec, width=width, height=height, frames=frames, stage_steps=_stage_steps(spec, steps))


# ----------------------------------------------------------------------------- one layout

Objective = Literal["latency", "throughput"]


@dataclass(frozen=True, kw_only=True)
class Stage:
    """GPUs serving a set of experts within one replica: ``experts`` "both" (colocated), "high", "low" or
    "single" (one-expert variant); its own CFG / Ulysses / ring degrees and FSDP over its GPUs."""

    experts: Literal["both", "high", "low", "single"]
    cfg: int = 1
    ulysses: int = 1
    ring: int = 1
    fsdp: bool = False

    @property
    def gpus(self) -> int:
        return self.cfg * self.ulysses * self.ring

    def label(self) -> str:
        parts = [f"cfg{self.cfg}" if self.cfg > 1 else "", f"u{self.ulysses}" if self.ulysses > 1 else "",
                 f"r{self.ring}" if self.ring > 1 else ""]
        return ("x".join(p for p in parts if p) or "1gpu") + ("+fsdp" if self.fsdp else "")


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """Predictions for one layout. ``memory``: peak bytes per GPU by part (the worst stage and phase);
    ``comm``: bytes per GPU per denoising step by kind (the busiest stage)."""

    parallel: ParallelConfig
    stages: tuple[Stage, ...]
    offload: bool
    memory: dict[str, float]
    peak_phase: str  # "text", "denoise" or "decode"
    peak_bytes: float
    comm: dict[str, float]
    time_s: float  # one clip, request to decoded frames
    clips_per_hour: float  # all replicas of the node together
    fits: bool

    @property
    def label(self) -> str:
        body = " | ".join(s.label() for s in self.stages)
        if self.parallel.placement == "disaggregated":
            body = f"disagg {'+'.join(str(s.gpus) for s in self.stages)} [{body}]"
        return (f"{self.parallel.data}x " if self.parallel.data > 1 else "") + body + (" +offload" if self.offload else "")

    @property
    def memory_gib(self) -> float:
        return self.peak_bytes / GIB

    @property
    def comm_gb(self) -> float:
        return sum(self.comm.values()) / GB


def _t5_bytes(wl: Workload, stage: Stage, profile: EngineProfile, *, holds_t5: bool) -> float:
    """Text encoder bytes on the stage's GPU that holds it: whole on one GPU (this engine encodes once per group
    and broadcasts), or an FSDP shard on every GPU of the stage with ``profile.t5_sharded`` (the reference)."""
    if not holds_t5 or not profile.t5_on_gpu:
        return 0.0
    shard = stage.gpus if stage.fsdp and profile.t5_sharded else 1
    return text_encoder_param_count(wl.spec.text_encoder) * COMPUTE_BYTES / shard


def _stage_memory(wl: Workload, stage: Stage, profile: EngineProfile, *, offload: bool, holds_t5: bool,
                  decodes: bool) -> tuple[dict[str, float], str]:
    """(bytes per GPU by part, phase) at the worst of a stage's phases: text encoding, denoising, decoding.
    With ``offload`` only the module in use is on the GPU; otherwise both experts and the text encoder stay.
    ``holds_t5``: the stage's first GPU holds the text encoder (whole, unless ``profile.t5_sharded``), so the
    worst GPU is that one."""
    spec, dit, group = wl.spec, wl.spec.dit, stage.gpus
    shard = group if stage.fsdp else 1
    expert = dit_weight_bytes(dit, profile.sharded_weight_bytes if stage.fsdp else COMPUTE_BYTES) / shard
    experts_on_gpu = 2 if stage.experts == "both" and not offload else 1
    t5 = _t5_bytes(wl, stage, profile, holds_t5=holds_t5)
    vae = VAE_PARAMS[spec.vae.version] * 4 if decodes else 0
    batch = 2 if profile.cfg_batched and stage.cfg == 1 else 1
    local = math.ceil(wl.tokens / (stage.ulysses * stage.ring))
    act = dit_activation_bytes(dit, tokens_per_rank=local, batch=batch, seq_tokens=wl.tokens, ulysses=stage.ulysses,
                               ring=stage.ring, full_sequence_time_embedding=profile.full_sequence_time_embedding,
                               extra_slab_bytes=profile.extra_slab_bytes)
    gather = 2 * dit_block_param_count(dit) * COMPUTE_BYTES if stage.fsdp else 0  # current + prefetched block
    decode = 0.0
    if decodes:
        base = spec.vae.decoder_base_dim or spec.vae.base_dim
        chunk = VAE_DECODE_BYTES_PER_PIXEL_CHANNEL * base * wl.width * wl.height
        split = group if profile.vae_parallel else 1
        decode = chunk / split + 2 * wl.frames * wl.width * wl.height * 3 * 4  # + decoded chunks and their concat
    resident_t5, dit_idle = (0, 0) if offload else (t5, experts_on_gpu * expert)
    phases = {"text": {"dit_weights": dit_idle, "text_encoder": t5},
              "denoise": {"dit_weights": experts_on_gpu * expert, "text_encoder": resident_t5, "fsdp_gather": gather,
                          "activations": act},
              "decode": {"dit_weights": dit_idle, "text_encoder": resident_t5, "vae_decode": decode}}
    worst = max(phases, key=lambda name: sum(phases[name].values()))
    return {"reserved": CUDA_RESERVED_BYTES, "vae_weights": vae, **phases[worst]}, worst


def _stage_time(wl: Workload, stage: Stage, profile: EngineProfile, gpu: GpuSpec, *, steps: int, offload: bool,
                holds_t5: bool, decodes: bool) -> tuple[float, dict[str, float]]:
    """(busy seconds of the stage per clip, comm bytes per step per GPU).

    step = forwards * (matmul / gemm_flops + attention / attention_flops [/ RING_ATTENTION_EFFICIENCY])
    + ulysses and cfg comm / link
    + ring comm not hidden under attention + FSDP gathers not hidden under compute (prefetch overlaps them).
    clip = text encoding + steps * step + offload copies over PCIe + VAE decode (split when vae_parallel).
    """
    spec, dit = wl.spec, wl.spec.dit
    forwards = 1 if profile.cfg_batched or stage.cfg == 2 else 2
    batch = 2 if profile.cfg_batched and stage.cfg == 1 else 1
    local = math.ceil(wl.tokens / (stage.ulysses * stage.ring))
    matmul, attention = forward_flops(dit, query_tokens=local, seq_tokens=wl.tokens, batch=batch)
    t_matmul, t_attention = forwards * matmul / gpu.gemm_flops, forwards * attention / gpu.attention_flops
    t_attention /= RING_ATTENTION_EFFICIENCY if stage.ring > 1 else 1.0
    comm = step_comm_bytes(dit, seq_tokens=wl.tokens, batch=batch, forwards=forwards, cfg=stage.cfg,
                           ulysses=stage.ulysses, ring=stage.ring, fsdp_group=stage.gpus if stage.fsdp else 1)
    link = gpu.link_bytes_per_s if stage.gpus <= GPUS_PER_NODE else gpu.internode_bytes_per_s
    compute = t_matmul + t_attention
    step = (compute + (comm["ulysses"] + comm["cfg"]) / link + max(0.0, comm["ring"] / link - t_attention)
            + max(0.0, comm["fsdp"] / link - compute))
    shard = stage.gpus if stage.fsdp else 1
    t5_params = text_encoder_param_count(spec.text_encoder)
    text = 0.0
    if holds_t5:  # prompt and negative prompt, text_len tokens each
        text = 2 * 2 * t5_params * spec.text_encoder.text_len / (gpu.gemm_flops if profile.t5_on_gpu
                                                                  else CPU_FLOPS_PER_S)
    moved = 0.0
    if offload:  # each expert and the text encoder copied in once per clip; the host copy stays
        moved = 2 * dit_weight_bytes(dit) / shard + _t5_bytes(wl, stage, profile, holds_t5=holds_t5)
    decode = 0.0
    if decodes:
        flops = VAE_DECODE_FLOPS_PER_PIXEL[spec.vae.version] * wl.frames * wl.width * wl.height
        decode = flops / gpu.vae_flops / (stage.gpus if profile.vae_parallel else 1)
    return text + steps * step + moved / PCIE_BYTES_PER_S + decode, comm


def estimate(wl: Workload, stages: tuple[Stage, ...], *, data: int = 1, offload: bool = False,
             gpu_memory_gb: float = 80, gpu: GpuSpec = H100, profile: EngineProfile = ENGINE) -> Estimate:
    """Predict one layout: one stage (colocated or one expert) or two ("high", "low": disaggregated,
    pipelined over clips: a clip takes the sum of the stages, a replica finishes one clip per slowest stage)."""
    split = len(stages) == 2
    memory, busy, comms = [], [], []
    for index, stage in enumerate(stages):
        holds_t5, decodes = index == 0, index == len(stages) - 1
        steps = wl.stage_steps[index] if split else wl.steps
        memory.append(_stage_memory(wl, stage, profile, offload=offload, holds_t5=holds_t5, decodes=decodes))
        seconds, comm = _stage_time(wl, stage, profile, gpu, steps=steps, offload=offload, holds_t5=holds_t5,
                                    decodes=decodes)
        busy.append(seconds)
        comms.append(comm)
    worst, phase = max(memory, key=lambda m: sum(m[0].values()))
    first = stages[0]
    parallel = ParallelConfig(data=data, cfg=first.cfg, ulysses=first.ulysses, ring=first.ring, fsdp=first.fsdp,
                              placement="disaggregated" if split else "colocated",
                              vae_parallel=profile.vae_parallel and stages[-1].gpus > 1)
    peak = sum(worst.values())
    return Estimate(parallel=parallel, stages=stages, offload=offload, memory=worst, peak_phase=phase, peak_bytes=peak,
                    comm=max(comms, key=lambda c: sum(c.values())), time_s=sum(busy),
                    clips_per_hour=data * 3600.0 / max(busy), fits=peak <= USABLE_FRACTION * gpu_memory_gb * GIB)


# ----------------------------------------------------------------------------- search

def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _stage_options(wl: Workload, gpus: int, experts: str, rejected: dict[str, None]) -> list[Stage]:
    """Every (cfg, ulysses, ring, fsdp) on ``gpus`` GPUs; Ulysses degrees must divide the heads."""
    heads, options = wl.spec.dit.num_heads, []
    for cfg in (1, 2):
        for ulysses in _divisors(gpus // cfg) if gpus % cfg == 0 else []:
            if heads % ulysses:
                rejected[f"ulysses={ulysses} rejected: {heads} heads not divisible by {ulysses} "
                         f"(a ring covers that split instead)"] = None
                continue
            for fsdp in (False, True) if gpus > 1 else (False,):
                options.append(Stage(experts=experts, cfg=cfg, ulysses=ulysses, ring=gpus // cfg // ulysses,
                                     fsdp=fsdp))
    return options


def _sort_key(objective: Objective):
    if objective == "latency":
        return lambda e: (not e.fits, e.time_s, -e.clips_per_hour, e.peak_bytes)
    return lambda e: (not e.fits, -e.clips_per_hour, e.time_s, e.peak_bytes)


def candidates(wl: Workload, *, gpus: int, gpu_memory_gb: float, objective: Objective = "latency",
               gpu: GpuSpec = H100, profile: EngineProfile = ENGINE) -> tuple[list[Estimate], list[str]]:
    """All layouts of ``gpus`` GPUs, ranked for ``objective`` (fitting ones first), and the rejections made
    before estimating. Replicas of a group of g GPUs (g divides gpus) render different clips. Disaggregated
    layouts split a group into a high-noise and a low-noise stage of every size; per split only the best
    pair of stage layouts is kept."""
    rejected: dict[str, None] = {}
    key, out = _sort_key(objective), []
    kw = dict(gpu_memory_gb=gpu_memory_gb, gpu=gpu, profile=profile)
    for group in _divisors(gpus):
        data = gpus // group
        if not wl.spec.two_experts:
            out += [estimate(wl, (s,), data=data, **kw) for s in _stage_options(wl, group, "single", rejected)]
            continue
        for offload in (False, True):
            out += [estimate(wl, (s,), data=data, offload=offload, **kw)
                    for s in _stage_options(wl, group, "both", rejected)]
        for high in range(1, group):
            pairs = [estimate(wl, (h, low), data=data, **kw)
                     for h in _stage_options(wl, high, "high", rejected)
                     for low in _stage_options(wl, group - high, "low", rejected)]
            out.append(min(pairs, key=key))
    if not wl.spec.two_experts:
        rejected[f"disaggregated placement not considered: {wl.spec.name} has one expert"] = None
    return sorted(out, key=key), list(rejected)


_FAMILIES = (
    ("FSDP", lambda e: any(s.fsdp for s in e.stages)),
    ("ring attention", lambda e: any(s.ring > 1 for s in e.stages)),
    ("CFG parallel", lambda e: any(s.cfg > 1 for s in e.stages)),
    ("disaggregated experts", lambda e: e.parallel.placement == "disaggregated"),
    ("data replicas", lambda e: e.parallel.data > 1),
    ("idle expert offloaded to CPU", lambda e: e.offload),
)


def _reasons(ranked: list[Estimate], rejected: list[str], objective: Objective, gpu_memory_gb: float) -> list[str]:
    best, usable = ranked[0], USABLE_FRACTION * gpu_memory_gb
    parts = ", ".join(f"{k} {v / GIB:.1f}" for k, v in best.memory.items() if v)
    out = [f"chosen {best.label} for {objective}: {best.time_s:.0f} s per clip, {best.clips_per_hour:.1f} clips/h; "
           f"peak {best.memory_gib:.1f} GiB per GPU of {usable:.0f} usable, while {best.peak_phase} ({parts}); "
           f"{best.comm_gb:.1f} GB sent per GPU per step"]
    if not best.fits:
        out.insert(0, f"NOTHING FITS: the smallest layout needs {min(e.memory_gib for e in ranked):.1f} GiB "
                      f"> {usable:.0f} GiB usable")
    metric = ((lambda e: f"{e.time_s:.0f} s/clip") if objective == "latency"
              else (lambda e: f"{e.clips_per_hour:.1f} clips/h"))
    better = [e for e in ranked if not e.fits and _sort_key(objective)(replace(e, fits=True)) < _sort_key(objective)(best)]
    if best.fits and better:
        alt = min(better, key=_sort_key(objective))
        out.append(f"{alt.label} rejected: {metric(alt)} but needs {alt.memory_gib:.1f} GiB > {usable:.0f} GiB")
    for name, member in _FAMILIES:
        chosen_in = member(best)
        others = [e for e in ranked if member(e) != chosen_in]
        if not others:
            continue
        label = f"without {name}" if chosen_in else f"with {name}"
        fitting = [e for e in others if e.fits]
        if not fitting:
            lightest = min(others, key=lambda e: e.peak_bytes)
            out.append(f"{label} rejected: even {lightest.label} needs {lightest.memory_gib:.1f} GiB > {usable:.0f} GiB")
        else:
            alt = fitting[0]
            out.append(f"best {label}, {alt.label}: {metric(alt)} vs {metric(best)} "
                       f"(peak {alt.memory_gib:.1f} GiB, {alt.comm_gb:.1f} GB/step)")
    return out + sorted(rejected)


@dataclass(frozen=True, kw_only=True)
class Plan:
    """The chosen layout and its predictions. ``parallel`` carries the degrees of the (first) stage, the
    placement and the replica count; ``stages`` each stage's degrees (a disaggregated replica has two,
    possibly of different sizes, which one ParallelConfig cannot express) and ``offload`` whether the idle
    expert and the text encoder wait in CPU memory. ``ranked``: every layout estimated, best first."""

    workload: Workload
    gpus: int
    gpu_memory_gb: float
    objective: Objective
    parallel: ParallelConfig
    stages: tuple[Stage, ...]
    offload: bool
    memory_gib: float
    comm_gb_per_step: float
    time_s: float
    clips_per_hour: float
    reasons: tuple[str, ...]
    ranked: tuple[Estimate, ...]

    def table(self, top: int = 8) -> str:
        """Markdown table of the ``top`` best layouts (fitting ones first)."""
        rows = ["| # | layout | GPUs/replica | replicas | peak GiB/GPU | comm GB/step/GPU | s/clip | clips/h | fits |",
                "|---|---|---|---|---|---|---|---|---|"]
        for rank, e in enumerate(self.ranked[:top], 1):
            rows.append(f"| {rank} | {e.label} | {sum(s.gpus for s in e.stages)} | {e.parallel.data} | "
                        f"{e.memory_gib:.1f} | {e.comm_gb:.1f} | {e.time_s:.0f} | {e.clips_per_hour:.1f} | "
                        f"{'yes' if e.fits else 'no'} |")
        return "\n".join(rows)


def plan(model: str | VariantSpec | Workload, *, gpus: int = 8, gpu_memory_gb: float = 80, resolution: str = "720p",
         frames: int | None = None, steps: int | None = None, objective: Objective = "latency",
         gpu: GpuSpec = H100, profile: EngineProfile = ENGINE) -> Plan:
    """Choose the layout of ``gpus`` GPUs of ``gpu_memory_gb`` each for ``model`` at ``resolution``.

    objective "latency": least time per clip; "throughput": most clips per hour on all ``gpus``.
    """
    if objective not in ("latency", "throughput"):
        raise ValueError(f"objective: must be 'latency' or 'throughput', got {objective!r}")
    if int(gpus) < 1 or gpu_memory_gb <= 0:
        raise ValueError(f"gpus and gpu_memory_gb must be positive, got {gpus} and {gpu_memory_gb}")
    wl = model if isinstance(model, Workload) else make_workload(model, resolution=resolution, frames=frames,
                                                                 steps=steps)
    ranked, rejected = candidates(wl, gpus=int(gpus), gpu_memory_gb=gpu_memory_gb, objective=objective, gpu=gpu,
                                  profile=profile)
    best = ranked[0]
    return Plan(workload=wl, gpus=int(gpus), gpu_memory_gb=gpu_memory_gb, objective=objective,
                parallel=best.parallel, stages=best.stages, offload=best.offload, memory_gib=best.memory_gib,
                comm_gb_per_step=best.comm_gb, time_s=best.time_s, clips_per_hour=best.clips_per_hour,
                reasons=tuple(_reasons(ranked, rejected, objective, gpu_memory_gb)), ranked=tuple(ranked))
