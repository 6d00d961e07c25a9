"""Which expert serves a step, with which guidance scale, and classifier-free guidance itself.

Expert 0 is the high-noise expert (diffusers' ``transformer``), expert 1 the low-noise one
(``transformer_2``). Both implementations switch on the model timestep: high-noise while
``t >= boundary_ratio * num_train_timesteps``. The choice depends on the schedule only, so every rank
computes the same answer without communication.
"""

from __future__ import annotations

import torch

from wan_dist.sampling.schedules import Schedule

__all__ = ["HIGH_NOISE", "LOW_NOISE", "select_expert", "expert_schedule", "guidance_scale_for",
           "guidance_from_reference", "apply_cfg", "join_cfg_batch", "split_cfg_batch"]

HIGH_NOISE = 0
LOW_NOISE = 1


def select_expert(timestep: int | float | torch.Tensor, boundary_ratio: float | None,
                  num_train_timesteps: int = 1000) -> int:
    """0 (high-noise) if ``timestep >= boundary_ratio * num_train_timesteps`` or there is no boundary, else 1."""
    if boundary_ratio is None:
        return HIGH_NOISE
    if isinstance(timestep, torch.Tensor):
        if timestep.numel() != 1:
            raise ValueError(f"select_expert: timestep must be a scalar, got shape {tuple(timestep.shape)}")
        timestep = timestep.item()
    return HIGH_NOISE if timestep >= boundary_ratio * num_train_timesteps else LOW_NOISE


def expert_schedule(schedule: Schedule, boundary_ratio: float | None) -> list[int]:
    """The expert of every step of ``schedule``: a list of 0/1, one per step.

    Reference schedules give T2V (40 steps, shift 12, boundary 0.875) 26 high + 14 low steps and
    I2V (40 steps, shift 5, boundary 0.9) 15 + 25.
    """
    return [select_expert(t, boundary_ratio, schedule.num_train_timesteps) for t in schedule.timesteps.tolist()]


def guidance_scale_for(expert_index: int, guidance_scale: float, guidance_scale_2: float | None) -> float:
    """The CFG scale of ``expert_index``; the low-noise expert falls back to ``guidance_scale`` (as diffusers)."""
    if expert_index == HIGH_NOISE:
        return guidance_scale
    if expert_index == LOW_NOISE:
        return guidance_scale if guidance_scale_2 is None else guidance_scale_2
    raise ValueError(f"expert_index must be 0 (high-noise) or 1 (low-noise), got {expert_index}")


def guidance_from_reference(guide_scale: float | tuple[float, float]) -> tuple[float, float]:
    """Reference ``guide_scale`` (a float, or the tuple ``(low_noise, high_noise)``) as
    ``(guidance_scale, guidance_scale_2)`` = (high-noise, low-noise)."""
    if isinstance(guide_scale, (int, float)):
        return float(guide_scale), float(guide_scale)
    low, high = guide_scale
    return float(high), float(low)


def apply_cfg(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance ``v_uncond + scale * (v_cond - v_uncond)``, evaluated in this order as both
    implementations do. Shapes: any, equal; ``scale`` a float or broadcastable tensor."""
    if v_cond.shape != v_uncond.shape:
        raise ValueError(f"apply_cfg: v_cond {tuple(v_cond.shape)} and v_uncond {tuple(v_uncond.shape)} differ")
    return v_uncond + scale * (v_cond - v_uncond)


def join_cfg_batch(cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
    """``[cond; uncond]`` along dim 0, for one batched forward: ``[B, ...]`` twice -> ``[2B, ...]``."""
    if cond.shape != uncond.shape:
        raise ValueError(f"join_cfg_batch: cond {tuple(cond.shape)} and uncond {tuple(uncond.shape)} differ")
    return torch.cat([cond, uncond], dim=0)


def split_cfg_batch(pred: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`join_cfg_batch`: ``[2B, ...]`` -> ``(cond [B, ...], uncond [B, ...])``."""
    if pred.shape[0] != 2 * batch:
        raise ValueError(f"split_cfg_batch: expected dim 0 of 2*batch={2 * batch}, got {pred.shape[0]}")
    return pred[:batch], pred[batch:]
