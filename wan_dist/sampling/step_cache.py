"""Step caching: skip a transformer's blocks on steps where their residual barely changes.

A DiT forward is ``x -> blocks(x) -> head``. The blocks' residual ``r = blocks(x) - x`` (tokens [B, L, dim])
changes slowly between neighbouring steps, so on a skipped step the expert embeds its input, adds an estimate
of the residual from its last computed steps, and runs only the head. The estimate is the last computed
residual (``order`` 0, as MagCache and TeaCache reuse it) or, for an expert whose calibration found its residual
to move smoothly with the timestep, the line through the last two computed residuals at the step's timestep
(``order`` 1). Two rules decide which steps skip:

- ``magcache`` (MagCache): calibrated per-step ratios ``||r_i|| / ||r_{i-1}||`` (mean over tokens) of
  each expert (:class:`CacheProfile`). Over a run of skipped steps the ratio product drifts from 1;
  the step skips while the accumulated error ``sum |1 - prod ratio|`` stays at most ``threshold`` and
  at most ``max_skips`` steps in a row are skipped. The decisions depend on the step plan and the
  profile only, so :func:`magcache_skips` computes all of them before the first step.
- ``teacache`` (TeaCache): the relative L1 change of the timestep embedding (the block modulation
  ``e0`` of the step's scalar timestep), mapped by a calibrated polynomial to an estimated change of
  the residual, is accumulated; the step skips while the sum stays below ``threshold``.

Each expert's segment of the plan is cached on its own: residuals and accumulators reset where the
expert changes, and the first ``ceil(retention * n)`` steps of a segment of ``n`` (at least one) are
always computed, as is the plan's last step (:func:`retained_steps`).

Every rank of a render group makes the same decisions: they read the step plan, the profile, the
threshold and (teacache) an embedding of the replicated scalar timestep by the replicated time
embedding weights; never a rank's shard of tokens. Each rank keeps the residuals of its own shard and
its own CFG branches (one per expert call of a step, in call order: cond then uncond, or one batched
call), so a skipped step runs no collective on any rank and the collectives of computed steps line up.

How an expert takes part: the denoise loop calls ``expert(x, t, context, blocks=hook)`` and the
expert's forward calls ``hook(model, tokens, run)`` in place of ``run(tokens)`` (running every block;
``run`` may overwrite ``tokens``); see :meth:`StepCache.hook`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

__all__ = ["CACHE_MODES", "DEFAULT_THRESHOLDS", "DEFAULT_RETENTION", "DEFAULT_MAX_SKIPS", "ExpertProfile",
           "CacheProfile", "retained_steps", "segments", "magcache_skips", "polynomial", "relative_l1",
           "StepCache", "CacheRecorder", "fit_profile"]

CACHE_MODES = ("off", "magcache", "teacache")
# Defaults when a request names a mode without them: the published settings for Wan (MagCache 0.06 with retention
# 0.2; TeaCache 0.14-0.2 for the 14B), which keep PSNR high. toy's curve (benchmarks/RESULTS.md) reaches 2x fewer
# forwards at >= 30 dB with retention 0.1 (magcache 0.1, teacache 0.3).
DEFAULT_THRESHOLDS = {"magcache": 0.06, "teacache": 0.2}
DEFAULT_RETENTION = 0.2
DEFAULT_MAX_SKIPS = 2  # MagCache's K for Wan: at most this many skipped steps in a row
PROFILE_FORMAT = 1

BlockRunner = Callable[[torch.Tensor], torch.Tensor]


def segments(steps: Sequence) -> list[list]:
    """``steps`` (StepPlans) split into runs of the same expert, in order."""
    runs: list[list] = []
    for plan in steps:
        if runs and runs[-1][-1].expert == plan.expert:
            runs[-1].append(plan)
        else:
            runs.append([plan])
    return runs


def retained_steps(steps: Sequence, retention: float) -> set[int]:
    """Indices of the steps always computed: the first ``max(1, ceil(retention * n))`` of each expert's
    segment of ``n`` steps, and the last step of ``steps`` (the whole plan of a render)."""
    if not 0.0 <= retention <= 1.0:
        raise ValueError(f"retention: must be in [0, 1], got {retention}")
    kept = set()
    for run in segments(steps):
        count = max(1, math.ceil(retention * len(run) - 1e-9))  # 0.2 * 15 is 3, not 3.0000000000000004
        kept.update(plan.index for plan in run[:count])
    if steps:
        kept.add(steps[-1].index)
    return kept


def magcache_skips(steps: Sequence, ratios: Sequence[float], *, threshold: float, max_skips: int,
                   retained: set[int]) -> list[bool]:
    """MagCache's decision for each of ``steps`` (True: skip), ``ratios[i]`` the magnitude ratio of step i.

    From a computed step on, each following step multiplies the accumulated ratio by its own and adds
    ``|1 - accumulated ratio|`` to the accumulated error; it skips while that error is at most ``threshold``
    and at most ``max_skips`` steps were skipped in a row, else it is computed and the accumulators reset.
    """
    skips = []
    acc_ratio, acc_err, acc_steps = 1.0, 0.0, 0
    for plan, ratio in zip(steps, ratios, strict=True):
        skip = False
        if plan.index not in retained:
            acc_ratio *= ratio
            acc_err += abs(1.0 - acc_ratio)
            acc_steps += 1
            skip = acc_err <= threshold and acc_steps <= max_skips
        if not skip:
            acc_ratio, acc_err, acc_steps = 1.0, 0.0, 0
        skips.append(skip)
    return skips


def polynomial(coefficients: Sequence[float], x: float) -> float:
    """``coefficients`` (highest power first, numpy's polyval order) at ``x``."""
    value = 0.0
    for c in coefficients:
        value = value * x + c
    return value


def relative_l1(current: torch.Tensor, previous: torch.Tensor) -> float:
    """``mean |current - previous| / mean |previous|`` as a Python float (fp64 sums)."""
    current, previous = current.detach().double(), previous.detach().double()
    return float((current - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12))


def _time_embedding(model, timestep: torch.Tensor) -> torch.Tensor:
    """The block modulation ``e0`` [6 * dim] (fp32) of one scalar timestep under ``model``'s time embedding."""
    with torch.no_grad():
        _, e0 = model.embed_time(timestep.reshape(1), 1)
    return e0.reshape(-1).float()


@dataclass(frozen=True)
class ExpertProfile:
    """One expert's calibration: at calibration step k (timestep ``timesteps[k]``, its predecessor in the
    expert's segment at ``previous[k]``) the residual magnitude ratio ``ratios[k]``; ``teacache``: the
    polynomial (highest power first) from the embedding's relative change to the residual's; ``order``: how a
    skipped step estimates the residual (0: the last computed one; 1: extrapolated linearly in the timestep
    from the last two computed ones)."""

    timesteps: tuple[float, ...]
    previous: tuple[float, ...]
    ratios: tuple[float, ...]
    teacache: tuple[float, ...] = (1.0, 0.0)
    order: int = 0

    def __post_init__(self) -> None:
        if not len(self.timesteps) == len(self.previous) == len(self.ratios):
            raise ValueError("ExpertProfile: timesteps, previous and ratios must have the same length")
        if any(not (r > 0 and math.isfinite(r)) for r in self.ratios):
            raise ValueError("ExpertProfile: ratios must be positive finite numbers")
        if self.order not in (0, 1):
            raise ValueError(f"ExpertProfile: order must be 0 or 1, got {self.order}")

    def ratio(self, timestep: float, previous: float) -> float:
        """The magnitude ratio of a step at ``timestep`` after one at ``previous`` (same expert).

        At a calibrated pair of timesteps, the calibrated ratio. Elsewhere (another step count or shift)
        the log-ratio per unit of timestep, interpolated linearly in the timestep, times the step's span:
        twice the steps in a range give the square root of the ratio each.
        """
        for t, p, r in zip(self.timesteps, self.previous, self.ratios):
            if abs(t - timestep) < 1e-6 and abs(p - previous) < 1e-6:
                return r
        span = previous - timestep
        if not self.timesteps or span <= 0:
            return 1.0
        rates = sorted((t, math.log(r) / (p - t)) for t, p, r in zip(self.timesteps, self.previous, self.ratios)
                       if p > t)
        if not rates:
            return 1.0
        rate = _interp(timestep, [t for t, _ in rates], [v for _, v in rates])
        return math.exp(rate * span)

    def to_dict(self) -> dict:
        return {"timesteps": list(self.timesteps), "previous": list(self.previous), "ratios": list(self.ratios),
                "teacache": list(self.teacache), "order": self.order}

    @classmethod
    def from_dict(cls, data: dict) -> "ExpertProfile":
        return cls(timesteps=tuple(float(x) for x in data["timesteps"]),
                   previous=tuple(float(x) for x in data["previous"]),
                   ratios=tuple(float(x) for x in data["ratios"]),
                   teacache=tuple(float(x) for x in data.get("teacache", (1.0, 0.0))),
                   order=int(data.get("order", 0)))


def _interp(x: float, points: list[float], values: list[float]) -> float:
    """Piecewise-linear interpolation through sorted ``points``, constant beyond the ends."""
    if x <= points[0]:
        return values[0]
    if x >= points[-1]:
        return values[-1]
    for (x0, y0), (x1, y1) in zip(zip(points, values), zip(points[1:], values[1:])):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return values[-1]


@dataclass(frozen=True)
class CacheProfile:
    """A model's step-cache calibration (written beside its checkpoint by ``wan-dist calibrate-cache``).

    ``experts``: one :class:`ExpertProfile` per expert, high-noise first. ``fingerprint``: of the experts'
    weight files it was measured on (a stale profile is refused). ``calibration``: how it was measured.
    """

    variant: str
    experts: tuple[ExpertProfile, ...]
    max_skips: int = DEFAULT_MAX_SKIPS
    fingerprint: str | None = None
    calibration: dict = field(default_factory=dict)

    def step_ratios(self, steps: Sequence) -> list[float]:
        """The magnitude ratio of every step of a plan: 1 where a segment starts (no earlier step of its
        expert), else the expert's ratio from the step before."""
        ratios = []
        for run in segments(steps):
            profile = self.experts[min(run[0].expert, len(self.experts) - 1)]
            ratios.append(1.0)
            ratios += [profile.ratio(float(plan.timestep), float(before.timestep))
                       for before, plan in zip(run, run[1:])]
        return ratios

    def to_dict(self) -> dict:
        return {"format": PROFILE_FORMAT, "variant": self.variant, "fingerprint": self.fingerprint,
                "max_skips": self.max_skips, "calibration": dict(self.calibration),
                "experts": [e.to_dict() for e in self.experts]}

    @classmethod
    def from_dict(cls, data: dict) -> "CacheProfile":
        if data.get("format") != PROFILE_FORMAT:
            raise ValueError(f"step-cache profile: format {data.get('format')!r}, this version reads {PROFILE_FORMAT}")
        return cls(variant=data["variant"], experts=tuple(ExpertProfile.from_dict(e) for e in data["experts"]),
                   max_skips=int(data.get("max_skips", DEFAULT_MAX_SKIPS)), fingerprint=data.get("fingerprint"),
                   calibration=dict(data.get("calibration") or {}))


class StepCache:
    """One render's step cache in one process: decisions, this process's residuals, counts.

    ``steps``: the render's whole step plan (retention and segments are taken from it, so a stage that
    runs part of the plan decides as the whole render would). ``profile``: needed by ``magcache``; for
    ``teacache`` it supplies each expert's polynomial (identity without one). Use: :meth:`begin_step`
    before each step's prediction, then call the step's expert through :meth:`wrap`.
    """

    def __init__(self, mode: str, steps: Sequence, *, threshold: float, retention: float,
                 profile: CacheProfile | None = None):
        if mode not in ("magcache", "teacache"):
            raise ValueError(f"cache: must be magcache or teacache here, got {mode!r}")
        if mode == "magcache" and profile is None:
            raise ValueError("cache: magcache needs the model's calibration profile (wan-dist calibrate-cache)")
        if not threshold > 0:
            raise ValueError(f"cache_threshold: must be > 0, got {threshold}")
        self.mode, self.threshold, self.retention, self.profile = mode, float(threshold), float(retention), profile
        self.retained = retained_steps(steps, retention)
        self._skip_at: dict[int, bool] = {}
        if mode == "magcache":
            flags = magcache_skips(steps, profile.step_ratios(steps), threshold=threshold,
                                   max_skips=profile.max_skips, retained=self.retained)
            self._skip_at = {plan.index: flag for plan, flag in zip(steps, flags)}
        self.decisions: dict[int, bool] = {}  # step index -> skipped, for the steps run here
        self.forwards = 0  # expert calls that ran the blocks
        self.forwards_skipped = 0  # expert calls that reused a residual
        self._expert: int | None = None
        self._plan = None
        self._reset()

    def _reset(self) -> None:
        self._residuals: dict[int, list[tuple[float, torch.Tensor]]] = {}  # call -> last computed (t, residual)s
        self._embedding: torch.Tensor | None = None  # teacache: e0 of the previous step of this segment
        self._accumulated = 0.0

    def begin_step(self, plan) -> None:
        """Step ``plan`` (a StepPlan) is next: a new expert starts its segment afresh."""
        if plan.expert != self._expert:
            self._expert = plan.expert
            self._reset()
        self._plan, self._call, self._skip = plan, 0, None

    def wrap(self, expert: Callable) -> Callable:
        """``expert`` as called by the denoise loop, with this cache's hook for the current step."""
        def call(x: torch.Tensor, t: torch.Tensor, context: Any) -> torch.Tensor:
            return expert(x, t, context, blocks=self.hook)
        return call

    def _decide(self, model) -> bool:
        plan = self._plan
        if self.mode == "magcache":
            return self._skip_at[plan.index]
        embedding = _time_embedding(model, plan.timestep)
        previous, self._embedding = self._embedding, embedding
        if previous is None or plan.index in self.retained:
            self._accumulated = 0.0
            return False
        coefficients = self._teacache_coefficients()
        self._accumulated += max(polynomial(coefficients, relative_l1(embedding, previous)), 0.0)
        if self._accumulated < self.threshold:
            return True
        self._accumulated = 0.0
        return False

    def _expert_profile(self) -> ExpertProfile | None:
        if self.profile is None or not self.profile.experts:
            return None
        return self.profile.experts[min(self._expert, len(self.profile.experts) - 1)]

    def _teacache_coefficients(self) -> tuple[float, ...]:
        profile = self._expert_profile()
        return (1.0, 0.0) if profile is None else profile.teacache

    def _estimate(self, slot: int, shape: torch.Size) -> torch.Tensor:
        """The residual of call ``slot`` at the current step, from this segment's computed steps."""
        kept = self._residuals.get(slot)
        if not kept or kept[-1][1].shape != shape:
            raise RuntimeError(f"StepCache: step {self._plan.index} skips, but call {slot} has no residual of "
                               f"shape {tuple(shape)} from an earlier step of this expert")
        profile = self._expert_profile()
        (t1, last) = kept[-1]
        if profile is None or profile.order == 0 or len(kept) < 2 or kept[0][0] == t1:
            return last
        t0, before = kept[0]
        return last + (last - before) * ((float(self._plan.timestep) - t1) / (t1 - t0))

    def hook(self, model, tokens: torch.Tensor, run: BlockRunner) -> torch.Tensor:
        """The blocks of one expert call: ``run(tokens)`` and keep the residual, or estimate it from the residuals
        kept by the same call (same position in the step) of this segment's last computed steps.

        tokens: this rank's tokens fp32 [B, L(shard), dim]. Returns the blocks' output, same shape.
        The step's decision is made once, on its first call (so every branch of a step agrees).
        """
        if self._plan is None:
            raise RuntimeError("StepCache: begin_step was not called before the expert")
        slot, self._call = self._call, self._call + 1
        if self._skip is None:
            self._skip = self._decide(model)
            self.decisions[self._plan.index] = self._skip
        if self._skip:
            residual = self._estimate(slot, tokens.shape)
            self.forwards_skipped += 1
            return tokens + residual
        before = tokens.clone()  # run may update tokens in place
        out = run(tokens)
        kept = self._residuals.setdefault(slot, [])
        kept.append((float(self._plan.timestep), out - before))
        del kept[:-2]  # an order-1 estimate needs the last two
        self.forwards += 1
        return out

    def stats(self) -> dict:
        """What the render's metadata records: mode, threshold, retention, steps run here and skipped, calls."""
        return {"mode": self.mode, "threshold": self.threshold, "retention": self.retention,
                "steps": len(self.decisions), "skipped_steps": sorted(i for i, s in self.decisions.items() if s),
                "forwards": self.forwards, "forwards_skipped": self.forwards_skipped}


class CacheRecorder:
    """Runs every step (never skips) and records what a profile is fitted from: per step and call, the
    residual's magnitude ratio and relative L1 change against the same call of the step before (same
    expert), the relative change of the time embedding ``e0``, and how far from the residual its order-0 and
    order-1 estimates from the steps before land (relative L2). Same interface as :class:`StepCache`."""

    def __init__(self):
        self.records: list[dict] = []
        self._expert: int | None = None
        self._plan = None
        self._previous_plan = None
        self._residuals: dict[int, list[tuple[float, torch.Tensor]]] = {}  # call -> the last two (t, residual)
        self._embedding: torch.Tensor | None = None

    def begin_step(self, plan) -> None:
        if plan.expert != self._expert:
            self._expert, self._residuals, self._embedding, self._previous_plan = plan.expert, {}, None, None
        elif self._plan is not None:
            self._previous_plan = self._plan
        self._plan, self._call, self._step_embedding = plan, 0, None

    def wrap(self, expert: Callable) -> Callable:
        def call(x, t, context):
            return expert(x, t, context, blocks=self.hook)
        return call

    def hook(self, model, tokens: torch.Tensor, run: BlockRunner) -> torch.Tensor:
        slot, self._call = self._call, self._call + 1
        if slot == 0:
            embedding = _time_embedding(model, self._plan.timestep)
            self._step_embedding = (None if self._embedding is None else relative_l1(embedding, self._embedding))
            self._embedding = embedding
        before = tokens.clone()
        out = run(tokens)
        residual = (out - before).float()
        timestep = float(self._plan.timestep)
        kept = self._residuals.setdefault(slot, [])
        if kept and self._previous_plan is not None:
            previous = kept[-1][1]
            ratio = (residual.norm(dim=-1) / previous.norm(dim=-1).clamp_min(1e-12)).mean()
            extrapolated = None
            if len(kept) == 2 and kept[0][0] != kept[1][0]:
                (t0, r0), (t1, r1) = kept
                extrapolated = _relative_l2(r1 + (r1 - r0) * ((timestep - t1) / (t1 - t0)), residual)
            self.records.append({"expert": self._plan.expert, "index": self._plan.index, "timestep": timestep,
                                 "previous": float(self._previous_plan.timestep), "call": slot,
                                 "ratio": float(ratio), "residual_change": relative_l1(residual, previous),
                                 "embedding_change": self._step_embedding,
                                 "reuse_error": _relative_l2(previous, residual),
                                 "extrapolation_error": extrapolated})
        kept.append((timestep, residual))
        del kept[:-2]
        return out


def _relative_l2(estimate: torch.Tensor, target: torch.Tensor) -> float:
    target = target.detach().double()
    return float((estimate.detach().double() - target).norm() / target.norm().clamp_min(1e-12))


def fit_profile(records: Sequence[dict], *, variant: str, num_experts: int, max_skips: int = DEFAULT_MAX_SKIPS,
                fingerprint: str | None = None, calibration: dict | None = None) -> CacheProfile:
    """A :class:`CacheProfile` from :class:`CacheRecorder` records (of one or several renders of the same plan).

    Per expert and step: the mean magnitude ratio over calls (cond, uncond) and renders. TeaCache's polynomial:
    a least-squares line from the embedding's relative change to the residual's (a proportional one when the
    embedding changes alike at every step; the identity without records). ``order`` 1 where extrapolating the
    last two residuals predicted the next one better on average than reusing the last (a smooth residual), else 0.
    """
    experts = []
    for expert in range(num_experts):
        mine = [r for r in records if r["expert"] == expert]
        by_step: dict[tuple[float, float], list[float]] = {}
        for r in mine:
            by_step.setdefault((r["timestep"], r["previous"]), []).append(r["ratio"])
        keys = sorted(by_step, reverse=True)
        pairs = [(r["embedding_change"], r["residual_change"]) for r in mine if r["embedding_change"] is not None]
        both = [(r["reuse_error"], r["extrapolation_error"]) for r in mine
                if r.get("extrapolation_error") is not None]
        order = int(bool(both) and sum(e for _, e in both) < sum(e for e, _ in both))
        experts.append(ExpertProfile(timesteps=tuple(t for t, _ in keys), previous=tuple(p for _, p in keys),
                                     ratios=tuple(sum(by_step[k]) / len(by_step[k]) for k in keys),
                                     teacache=_fit_line(pairs), order=order))
    return CacheProfile(variant=variant, experts=tuple(experts), max_skips=max_skips, fingerprint=fingerprint,
                        calibration=dict(calibration or {}))


def _fit_line(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    if not pairs:
        return (1.0, 0.0)
    x = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    y = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    if len(pairs) >= 3 and float(x.std()) > 1e-3 * float(x.abs().mean().clamp_min(1e-12)):
        design = torch.stack([x, torch.ones_like(x)], dim=1)
        slope, intercept = torch.linalg.lstsq(design, y.unsqueeze(1)).solution.squeeze(1).tolist()
        return (float(slope), float(intercept))
    return (float((x * y).sum() / (x * x).sum().clamp_min(1e-24)), 0.0)
