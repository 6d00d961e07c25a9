"""Flow-matching noise schedules: which sigma each step sits at and which timestep the model sees.

Two conventions exist for Wan 2.2 (see ../shared/WAN22_FACTS.md, "Two conventions"), and a checkpoint's
layout picks one:

* ``reference``: Wan-Video/Wan2.2's own schedulers. UniPC (the default solver) spaces sigmas linearly from
  ``float32(0.999)`` to 0; DPM++ from 1 to 0. Both shift by ``S*s / (1 + (S-1)*s)`` and give the model the
  truncated ``int64(sigma' * 1000)``.
* ``diffusers``: what diffusers' schedulers produce for the same solver (UniPC and DPM++ with
  ``use_flow_sigmas=True``, Euler with ``FlowMatchEulerDiscreteScheduler(shift=S)``).

Arithmetic follows each implementation step by step (numpy float64, then a float32 cast of the sigmas,
which is what their solvers compute with), so sigmas and timesteps match them exactly, not just closely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

__all__ = ["Schedule", "SolverName", "reference_schedule", "diffusers_schedule", "make_schedule",
           "shift_sigmas"]

SolverName = Literal["unipc", "dpm++", "euler"]
_SOLVERS = ("unipc", "dpm++", "euler")


@dataclass(frozen=True, eq=False)
class Schedule:
    """A sampling schedule.

    ``sigmas``: float64 ``[steps + 1]``, decreasing; ``sigmas[i]`` is the noise level of the sample entering
    step ``i`` and ``sigmas[-1]`` the final one (0 here). Values are float32-representable because the solvers
    of both implementations compute in float32.
    ``timesteps``: ``[steps]``, what the model receives at step ``i`` (int64 for UniPC/DPM++, float32 for
    diffusers' Euler), exactly as the respective implementation computes it.
    """

    sigmas: torch.Tensor
    timesteps: torch.Tensor
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        if self.sigmas.ndim != 1 or self.timesteps.ndim != 1:
            raise ValueError("Schedule: sigmas and timesteps must be 1-D")
        if self.sigmas.numel() != self.timesteps.numel() + 1:
            raise ValueError(f"Schedule: sigmas needs steps+1={self.timesteps.numel() + 1} values, "
                             f"got {self.sigmas.numel()}")
        object.__setattr__(self, "sigmas", self.sigmas.to(torch.float64))

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.numel())


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """The flow shift ``S*s / (1 + (S-1)*s)`` in float64, in the order both implementations evaluate it."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def _check(num_steps: int, shift: float, solver: str) -> None:
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    if solver not in _SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(_SOLVERS)}; got {solver!r}")


def _integer_schedule(shifted: np.ndarray, num_train_timesteps: int = 1000) -> Schedule:
    """Timesteps ``int64(sigma * T)`` (truncation) from float64 sigmas; sigmas cast to float32, final 0 appended."""
    timesteps = torch.from_numpy(shifted * num_train_timesteps).to(torch.int64)
    sigmas = np.concatenate([shifted, [0.0]]).astype(np.float32)
    return Schedule(sigmas=torch.from_numpy(sigmas), timesteps=timesteps,
                    num_train_timesteps=num_train_timesteps)


def _reference_sigma_max(num_train_timesteps: int) -> float:
    # The reference schedulers build 1 - linspace(1, 1/T, T)[::-1] in float32; its first entry is the maximum.
    alphas = np.linspace(1, 1 / num_train_timesteps, num_train_timesteps)[::-1]
    return float(np.float32(1.0 - alphas[0]))


def reference_schedule(num_steps: int, shift: float, *, solver: SolverName = "unipc") -> Schedule:
    """Wan-Video/Wan2.2's schedule for ``solver``.

    ``unipc`` (and ``euler``, which the reference lacks): ``linspace(float32(0.999), 0, steps+1)[:-1]``;
    ``dpm++``: ``linspace(1, 0, steps+1)[:-1]`` (its ``get_sampling_sigmas``). Then shifted, timesteps
    ``int64(sigma' * 1000)``, final sigma 0. T2V 40 steps shift 12 gives timesteps 999, 997, 995, ..., 235.
    """
    _check(num_steps, shift, solver)
    if solver == "dpm++":
        base = np.linspace(1, 0, num_steps + 1)[:num_steps]
    else:
        base = np.linspace(_reference_sigma_max(1000), 0.0, num_steps + 1)[:-1]
    return _integer_schedule(shift_sigmas(base, shift))


def _diffusers_unipc(num_steps: int, shift: float) -> Schedule:
    shifted = shift_sigmas(np.linspace(1, 1 / 1000, num_steps + 1)[:-1], shift)
    if np.fabs(shifted[0] - 1) < 1e-6:
        shifted[0] -= 1e-6  # diffusers keeps log(1 - sigma) finite this way
    return _integer_schedule(shifted)


def _diffusers_dpm(num_steps: int, shift: float) -> Schedule:
    rising = 1.0 - np.linspace(1, 1 / 1000, num_steps + 1)
    return _integer_schedule(np.flip(shift_sigmas(rising, shift))[:-1].copy())


def _diffusers_euler(num_steps: int, shift: float) -> Schedule:
    # FlowMatchEulerDiscreteScheduler: its training sigmas (float32, shifted once) bound a linspace of
    # timesteps, which is shifted again; the model gets float timesteps sigma * 1000.
    train = torch.tensor([1000.0, 1.0], dtype=torch.float32) / 1000
    train = shift * train / (1 + (shift - 1) * train)
    sigma_max, sigma_min = float(train[0]), float(train[1])
    timesteps = np.linspace(sigma_max * 1000, sigma_min * 1000, num_steps)
    sigmas = torch.from_numpy(shift_sigmas(timesteps / 1000, shift)).to(torch.float32)
    return Schedule(sigmas=torch.cat([sigmas, sigmas.new_zeros(1)]), timesteps=sigmas * 1000)


def diffusers_schedule(num_steps: int, shift: float, *, solver: SolverName = "unipc") -> Schedule:
    """diffusers' schedule for ``solver`` with ``num_train_timesteps=1000``.

    ``unipc``: ``UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
    flow_shift=shift)``, the scheduler diffusers' Wan 2.2 repos ship: ``linspace(1, 1/1000, steps+1)[:-1]``
    shifted, first sigma nudged to ``1 - 1e-6`` when it is 1. ``dpm++``: ``DPMSolverMultistepScheduler`` with
    the same flow options: ``1 - linspace(1, 1/1000, steps+1)`` shifted, reversed, last dropped.
    ``euler``: ``FlowMatchEulerDiscreteScheduler(shift=shift)`` (float timesteps).
    """
    _check(num_steps, shift, solver)
    build = {"unipc": _diffusers_unipc, "dpm++": _diffusers_dpm, "euler": _diffusers_euler}[solver]
    return build(int(num_steps), float(shift))


def make_schedule(convention: Literal["reference", "diffusers"], num_steps: int, shift: float, *,
                  solver: SolverName = "unipc") -> Schedule:
    """Dispatch on the checkpoint's convention (``SamplingConfig.schedule``)."""
    if convention == "reference":
        return reference_schedule(num_steps, shift, solver=solver)
    if convention == "diffusers":
        return diffusers_schedule(num_steps, shift, solver=solver)
    raise ValueError(f"schedule must be 'reference' or 'diffusers', got {convention!r}")
