"""Starting a trajectory part-way (SDEdit; diffusers' ``strength`` of its video-to-video pipelines).

A clean latent ``x0`` (a proxy clip's encoding) is noised to the level of step ``k`` of the schedule and the
solver runs only the remaining steps. ``strength`` is the share of the steps that run: 1 starts from pure
noise (the input is ignored), 0 runs only the last. The rest of the schedule is a schedule of its own, so a solver
starts on it fresh (first-order first step, as on any trajectory's first step) and its multistep history
never refers to steps that did not run.
"""

from __future__ import annotations

import torch

from wan_dist.sampling.schedules import Schedule

__all__ = ["start_step", "tail_schedule", "noise_to"]


def start_step(num_steps: int, strength: float) -> int:
    """The first step that runs at ``strength``: diffusers' ``num_steps - int(num_steps * strength)``, except
    that the last step always runs (a render returns a sample of the model, never the input as it is)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength: must be in [0, 1], got {strength}")
    return min(num_steps - int(num_steps * strength), num_steps - 1)


def tail_schedule(schedule: Schedule, start: int) -> Schedule:
    """Steps ``start..`` of ``schedule`` as a schedule of their own (same sigmas and model timesteps)."""
    if not 0 <= start < schedule.num_steps:
        raise ValueError(f"start: must be in [0, {schedule.num_steps}), got {start}")
    return Schedule(sigmas=schedule.sigmas[start:].clone(), timesteps=schedule.timesteps[start:].clone(),
                    num_train_timesteps=schedule.num_train_timesteps)


def noise_to(clean: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """The flow-matching sample at noise level ``sigma``: ``(1 - sigma) * clean + sigma * noise``."""
    return (1.0 - sigma) * clean + sigma * noise
