"""Flow-matching ODE solvers with explicit, portable multistep state.

The model predicts a velocity ``v``; the clean-sample estimate is ``x0 = x - sigma * v`` and, in the
solvers' terms, ``alpha = 1 - sigma`` and ``lambda = log(alpha) - log(sigma)``.

* ``unipc``: UniPC predictor-corrector, order 2, B(h) = expm1(-h) ("bh2"), data prediction, lower order on
  the first and last step. The reference default (Wan-Video/Wan2.2 ``FlowUniPCMultistepScheduler``) and what
  diffusers' ``UniPCMultistepScheduler`` does with ``prediction_type="flow_prediction"``.
* ``dpm++``: DPM-Solver++ multistep, order 2, midpoint; first-order on the first and last step.
* ``euler``: ``x += (sigma_next - sigma) * v``.

Everything a solver remembers between steps lives in a :class:`SolverState` (step index, recent x0
predictions, the sample the last predictor started from), so a stage can hand latents and state to another
process mid-trajectory and the trajectory continues bit for bit. The per-step scalar coefficients come from
the schedule alone and are evaluated in float32 as both implementations do. Tensor math runs in float32
(float64 if the sample is float64; diffusers' DPM++/Euler would round that to float32) and the result has the
sample's dtype. The velocity is upcast before ``x0 = x - sigma * v``, as in the reference, whose DiT returns
float32 (diffusers multiplies ``sigma * v`` in the transformer's dtype). Every operation is elementwise, so a
rank that holds a shard of the latents can step its shard with the matching shard of the state.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from wan_dist.sampling.schedules import Schedule

__all__ = ["SolverState", "Solver", "UniPCSolver", "DPMSolverPlusPlus", "EulerSolver", "make_solver",
           "SOLVERS"]


@dataclass(frozen=True, eq=False)
class SolverState:
    """What a multistep solver carries from one step to the next.

    ``step_index``: the next step to run. ``history``: x0 predictions of the latest steps, oldest first,
    float32/float64, each shaped like the sample. ``last_sample``: UniPC's corrector input, the (corrected)
    sample its last predictor started from. ``last_order``: the order of that predictor.
    """

    step_index: int = 0
    history: tuple[torch.Tensor, ...] = ()
    last_sample: torch.Tensor | None = None
    last_order: int = 0

    def state_dict(self) -> dict[str, Any]:
        """Plain ints and tensors, for ``torch.save`` or a collective."""
        out: dict[str, Any] = {"step_index": self.step_index, "last_order": self.last_order,
                               "history": list(self.history)}
        if self.last_sample is not None:
            out["last_sample"] = self.last_sample
        return out

    @classmethod
    def from_state_dict(cls, data: dict[str, Any]) -> SolverState:
        return cls(step_index=int(data["step_index"]), history=tuple(data.get("history", ())),
                   last_sample=data.get("last_sample"), last_order=int(data.get("last_order", 0)))

    def to(self, device: torch.device | str) -> SolverState:
        """The same state with its tensors on ``device``."""
        last = None if self.last_sample is None else self.last_sample.to(device)
        return replace(self, history=tuple(h.to(device) for h in self.history), last_sample=last)


def _f32(value: torch.Tensor) -> float:
    """A float32 scalar as a Python float (exact: float64 holds every float32)."""
    return float(value.to(torch.float32))


def _compute_dtype(sample: torch.Tensor) -> torch.dtype:
    return torch.float64 if sample.dtype == torch.float64 else torch.float32


@dataclass(eq=False)
class Solver:
    """Base class: ``step`` mutates ``self.state``; ``advance`` is the same step as a pure function."""

    schedule: Schedule
    state: SolverState = field(default_factory=SolverState)
    name = "solver"
    order = 1

    def __post_init__(self) -> None:
        sigmas = self.schedule.sigmas.to(torch.float32)
        self._sigma32 = sigmas
        # Element by element: a vectorised log may round differently from the scalar one the
        # implementations use. +inf at sigma 0, -inf at sigma 1.
        with torch.no_grad():
            self._lambda32 = torch.stack([torch.log(1 - s) - torch.log(s) for s in sigmas])

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    def step(self, model_output: torch.Tensor, step_index: int, sample: torch.Tensor) -> torch.Tensor:
        """One step. ``model_output``: guided velocity, shaped like ``sample``; returns the next sample."""
        new_sample, self.state = self.advance(self.state, model_output, step_index, sample)
        return new_sample

    def advance(self, state: SolverState, model_output: torch.Tensor, step_index: int,
                sample: torch.Tensor) -> tuple[torch.Tensor, SolverState]:
        """Pure form of :meth:`step`: ``(next_sample, next_state)``; ``state`` is not modified."""
        if step_index != state.step_index:
            raise ValueError(f"{self.name}: step_index {step_index} out of order; the state expects "
                             f"{state.step_index}")
        if not 0 <= step_index < self.num_steps:
            raise ValueError(f"{self.name}: step_index {step_index} outside [0, {self.num_steps})")
        if model_output.shape != sample.shape:
            raise ValueError(f"{self.name}: model_output shape {tuple(model_output.shape)} != sample shape "
                             f"{tuple(sample.shape)}")
        dtype = _compute_dtype(sample)
        with torch.no_grad():
            out, new_state = self._advance(state, model_output.to(dtype), sample.to(dtype))
        return out.to(sample.dtype), new_state

    def _advance(self, state: SolverState, velocity: torch.Tensor,
                 sample: torch.Tensor) -> tuple[torch.Tensor, SolverState]:
        raise NotImplementedError

    def sigma(self, index: int) -> float:
        """The noise level at step ``index`` (float32, as the steps use it)."""
        return _f32(self._sigma32[index])

    def denoised(self, index: int, velocity: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The clean-sample estimate x0 = sample - sigma * velocity at step ``index`` (flow matching)."""
        return sample - _f32(self._sigma32[index]) * velocity

    def _push(self, state: SolverState, x0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (state.history + (x0,))[-self.order:]

    # Portable state -------------------------------------------------------------------------------------
    def get_state(self) -> SolverState:
        return self.state

    def set_state(self, state: SolverState) -> None:
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        return self.state.state_dict()

    def load_state_dict(self, data: dict[str, Any]) -> None:
        self.state = SolverState.from_state_dict(data)

    def reset(self) -> None:
        self.state = SolverState()


class UniPCSolver(Solver):
    """UniPC (bh2, data prediction, order 2, lower order on the first and final step)."""

    name = "unipc"
    order = 2

    def _order_at(self, index: int) -> int:
        # lower_order_final, then the warm-up limit (one more x0 than steps taken so far).
        return min(self.order, self.num_steps - index, index + 1)

    def _terms(self, s0: int, t: int) -> tuple[float, float, float, torch.Tensor, torch.Tensor]:
        """Scalars of one hop ``s0 -> t``: sigma ratio, alpha_t*h_phi_1, alpha_t*B(h), h, hh = -h."""
        h = self._lambda32[t] - self._lambda32[s0]
        hh = -h
        h_phi_1 = torch.expm1(hh)
        b_h = torch.expm1(hh)
        alpha_t = 1 - self._sigma32[t]
        ratio = self._sigma32[t] / self._sigma32[s0]
        return _f32(ratio), _f32(alpha_t * h_phi_1), _f32(alpha_t * b_h), h, hh

    def _rk(self, older: int, s0: int, h: torch.Tensor) -> float:
        return _f32((self._lambda32[older] - self._lambda32[s0]) / h)

    def _corrector_rhos(self, rk: float, hh: torch.Tensor) -> tuple[float, float]:
        """Solve the order-2 UniC system R rho = b (R = [[1, 1], [rk, 1]]) as the implementations do."""
        h_phi_1 = torch.expm1(hh)
        b_h = torch.expm1(hh)
        phi_k = h_phi_1 / hh - 1
        b1 = phi_k * 1 / b_h
        phi_k = phi_k / hh - 1 / 2
        b2 = phi_k * 2 / b_h
        matrix = torch.tensor([[1.0, 1.0], [rk, 1.0]], dtype=torch.float32)
        rhos = torch.linalg.solve(matrix, torch.stack([b1, b2]).to(torch.float32))
        return _f32(rhos[0]), _f32(rhos[1])

    def _correct(self, state: SolverState, x0: torch.Tensor, index: int) -> torch.Tensor:
        """UniC: refine the sample at ``sigmas[index]`` with the fresh x0 there (order = last predictor's)."""
        ratio, c_m0, c_res, h, hh = self._terms(index - 1, index)
        m0 = state.history[-1]
        base = ratio * state.last_sample - c_m0 * m0
        delta = x0 - m0
        if state.last_order == 1:
            return base - c_res * (0.5 * delta)
        rk = self._rk(index - 2, index - 1, h)
        rho_1, rho_2 = self._corrector_rhos(rk, hh)
        d1 = (state.history[-2] - m0) / rk
        return base - c_res * (rho_1 * d1 + rho_2 * delta)

    def _predict(self, history: tuple[torch.Tensor, ...], sample: torch.Tensor, index: int,
                 order: int) -> torch.Tensor:
        """UniP: from ``sigmas[index]`` to ``sigmas[index + 1]``."""
        ratio, c_m0, c_res, h, _ = self._terms(index, index + 1)
        m0 = history[-1]
        out = ratio * sample - c_m0 * m0
        if order == 2:
            d1 = (history[-2] - m0) / self._rk(index - 1, index, h)
            out = out - c_res * (0.5 * d1)
        return out

    def _advance(self, state, velocity, sample):
        index = state.step_index
        x0 = self.denoised(index, velocity, sample)
        if index > 0 and state.last_sample is not None:
            sample = self._correct(state, x0, index)
        history = self._push(state, x0)
        order = self._order_at(index)
        out = self._predict(history, sample, index, order)
        return out, SolverState(step_index=index + 1, history=history, last_sample=sample, last_order=order)


class DPMSolverPlusPlus(Solver):
    """DPM-Solver++ (2M, midpoint), data prediction; first order on the first and final step."""

    name = "dpm++"
    order = 2

    def _advance(self, state, velocity, sample):
        index = state.step_index
        x0 = self.denoised(index, velocity, sample)
        history = self._push(state, x0)
        lam, sig = self._lambda32, self._sigma32
        h = lam[index + 1] - lam[index]
        ratio = _f32(sig[index + 1] / sig[index])
        coef = (1 - sig[index + 1]) * (torch.exp(-h) - 1.0)
        out = ratio * sample - _f32(coef) * x0
        if index > 0 and index < self.num_steps - 1:
            r0 = (lam[index] - lam[index - 1]) / h
            d1 = _f32(1.0 / r0) * (x0 - history[-2])
            out = out - _f32(0.5 * coef) * d1
        return out, SolverState(step_index=index + 1, history=history)


class EulerSolver(Solver):
    """Explicit Euler on the probability-flow ODE; keeps no history."""

    name = "euler"
    order = 1

    def _advance(self, state, velocity, sample):
        index = state.step_index
        dt = _f32(self._sigma32[index + 1] - self._sigma32[index])
        return sample + dt * velocity, SolverState(step_index=index + 1)


SOLVERS: dict[str, type[Solver]] = {"unipc": UniPCSolver, "dpm++": DPMSolverPlusPlus, "euler": EulerSolver}


def make_solver(name: str, schedule: Schedule) -> Solver:
    """A fresh solver (state at step 0) for ``schedule``."""
    try:
        cls = SOLVERS[name]
    except KeyError:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}; got {name!r}") from None
    return cls(schedule=schedule)
