"""Rectified-flow training targets for the Wan experts: timestep sampling, noising, loss.

Wan 2.2's own training code is not public; its samplers (../shared/WAN22_FACTS.md, "Sampling") and the
public Wan trainers (DiffSynth-Studio, by the same lab's partners) fix the convention we follow exactly:

1. A discrete training grid of N = 1000 shifted noise levels, the same formula the sampler uses:
   ``s_k = 1 - k / N`` for k = 0 .. N-1 (``linspace(1, 0, N + 1)[:-1]``), shifted
   ``sigma_k = S * s_k / (1 + (S - 1) * s_k)``, model timestep ``t_k = 1000 * sigma_k`` (a float; the
   model embeds it sinusoidally).
2. An expert owns the ids of its range: the high-noise expert ``{k : t_k >= boundary * 1000}``, the
   low-noise expert the rest (the sampler's rule: high-noise while ``t >= boundary * 1000``).
3. Per clip, k is drawn uniformly from the expert's ids, so the shift sets how often each noise level
   is seen (S > 1 favours high noise, as sampling does).
4. ``x_t = (1 - sigma) * x0 + sigma * noise`` with noise ~ N(0, I), target velocity ``v = noise - x0``
   (what the sampler integrates: x0 = x_t - sigma * v), loss = MSE(v_pred, v), optionally weighted per id
   by DiffSynth's bell ``exp(-2 * ((t_k - 500) / 1000) ** 2)`` normalised to mean 1 over the grid.
"""

from __future__ import annotations

import torch

__all__ = ["training_grid", "expert_ids", "sample_timesteps", "noised", "flow_loss", "NUM_TRAIN_TIMESTEPS"]

NUM_TRAIN_TIMESTEPS = 1000


def training_grid(shift: float, num: int = NUM_TRAIN_TIMESTEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas, timesteps), float64 [num], decreasing from sigma 1 (t = 1000)."""
    if shift <= 0:
        raise ValueError(f"shift: must be > 0, got {shift}")
    base = torch.linspace(1.0, 0.0, num + 1, dtype=torch.float64)[:-1]
    sigmas = shift * base / (1 + (shift - 1) * base)
    return sigmas, sigmas * NUM_TRAIN_TIMESTEPS


def expert_ids(timesteps: torch.Tensor, *, boundary_ratio: float | None, expert: int) -> torch.Tensor:
    """Grid ids expert ``expert`` trains on (0: high-noise, t >= boundary*1000; 1: low-noise, below).

    One expert (``boundary_ratio`` None) trains on every id. Raises when the range is empty.
    """
    if boundary_ratio is None:
        if expert != 0:
            raise ValueError(f"expert: a one-expert model has only expert 0, got {expert}")
        return torch.arange(timesteps.numel())
    high = timesteps >= boundary_ratio * NUM_TRAIN_TIMESTEPS
    ids = torch.nonzero(high if expert == 0 else ~high).flatten()
    if ids.numel() == 0:
        raise ValueError(f"boundary_ratio: {boundary_ratio} leaves expert {expert} no timesteps")
    return ids


def bell_weights(timesteps: torch.Tensor) -> torch.Tensor:
    """DiffSynth-Studio's Wan loss weights over the grid, mean 1."""
    weights = torch.exp(-2 * ((timesteps - NUM_TRAIN_TIMESTEPS / 2) / NUM_TRAIN_TIMESTEPS) ** 2)
    return weights / weights.mean()


def sample_timesteps(ids: torch.Tensor, sigmas: torch.Tensor, timesteps: torch.Tensor, batch: int, *,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``batch`` grid ids uniformly from ``ids``: (ids [B], sigma fp32 [B], timestep fp32 [B])."""
    pick = ids[torch.randint(ids.numel(), (batch,), generator=generator)]
    return pick, sigmas[pick].float(), timesteps[pick].float()


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, target v): x_t = (1 - sigma) x0 + sigma noise, v = noise - x0. sigma [B] broadcasts."""
    s = sigma.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise, noise - x0


def flow_loss(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per clip, weighted per clip by ``weights`` [B] (None: 1), averaged."""
    per_clip = (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    return (per_clip if weights is None else per_clip * weights.to(per_clip)).mean()
