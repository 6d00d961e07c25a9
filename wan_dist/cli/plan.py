"""Hydra task of ``wan-dist plan``: print the chosen layout, the best candidates and the reasons."""

from __future__ import annotations

from omegaconf import DictConfig

from wan_dist.models.presets import PRESETS
from wan_dist.parallel.planner import A100, ENGINE, H100, REFERENCE, Plan, plan

__all__ = ["plan_main", "preset_name", "format_plan"]

_GPUS = {"h100": H100, "a100": A100}
_PROFILES = {"engine": ENGINE, "reference": REFERENCE}


def preset_name(choice: str | None, source: str | None) -> str:
    """The preset a ``model=`` choice names: the option itself, or the variant a checkpoint source names."""
    for name in (choice, source):
        if name in PRESETS:
            return name
    text = str(source or "").lower()
    for name in sorted(PRESETS, key=len, reverse=True):  # "tiny-i2v" before "tiny"
        if name in text:
            return name
    raise ValueError(f"model: cannot tell the variant of {source or choice!r}; name a preset: {sorted(PRESETS)}")


def format_plan(result: Plan, top: int = 8) -> str:
    """The chosen layout, a markdown table of the ``top`` candidates and the reasons, as printed."""
    wl, chosen = result.workload, result.ranked[0]
    stages = "; ".join(f"{s.experts}: cfg={s.cfg} ulysses={s.ulysses} ring={s.ring} fsdp={s.fsdp}"
                       for s in result.stages)
    lines = [f"plan for {wl.spec.name} {wl.width}x{wl.height} {wl.frames} frames {wl.steps} steps "
             f"(L={wl.tokens} tokens) on {result.gpus} x {result.gpu_memory_gb:g} GB, objective {result.objective}",
             f"chosen: {chosen.label}",
             f"  parallel: {result.parallel}",
             f"  stages: {stages}; offload idle expert: {result.offload}",
             f"  predicted: {result.memory_gib:.1f} GiB peak per GPU, {result.comm_gb_per_step:.1f} GB comm per GPU "
             f"per step, {result.time_s:.0f} s per clip, {result.clips_per_hour:.1f} clips/h",
             "", result.table(top), "", "reasons:"]
    return "\n".join(lines + [f"- {reason}" for reason in result.reasons])


def _choice() -> str | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get("model") if HydraConfig.initialized() else None


def plan_main(cfg: DictConfig) -> None:
    for key, table in (("gpu", _GPUS), ("profile", _PROFILES)):
        if cfg[key] not in table:
            raise ValueError(f"{key}: must be one of {', '.join(table)}; got {cfg[key]!r}")
    name = preset_name(_choice(), cfg.model.get("source"))
    result = plan(name, gpus=int(cfg.gpus), gpu_memory_gb=float(cfg.gpu_memory_gb), resolution=str(cfg.resolution),
                  frames=cfg.frames, steps=cfg.steps, objective=cfg.objective, gpu=_GPUS[cfg.gpu],
                  profile=_PROFILES[cfg.profile])
    print(format_plan(result, int(cfg.top)))
