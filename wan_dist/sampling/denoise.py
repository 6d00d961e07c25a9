"""The denoising loop: a pure function with the experts passed in.

Nothing here knows about devices, processes or checkpoints. An expert is any callable
``expert(latent_model_input, timestep, context) -> v`` (the DiT, or a sequence-parallel wrapper of it).
How a guided prediction is computed is injectable too: the default batches cond and uncond in one
forward; a CFG-parallel group supplies one that splits them across ranks.

The text context is the same at every step, so :func:`denoise` builds the batched [cond; uncond]
context once and hands every step the same tensor object: an expert may prepare what it derives
from a context (text embedding, cross-attention keys and values) once per context it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch

from wan_dist.sampling.conditioning import i2v_condition, i2v_mask, ti2v_impose_first_frame, ti2v_token_timesteps
from wan_dist.sampling.guidance import guidance_scale_for, select_expert

__all__ = ["sequential_guided_prediction", "StepPlan", "plan_steps", "Conditioning", "TextToVideo", "ImageToVideo", "FirstFrameToVideo",
           "batch_contexts", "guided_prediction", "denoise"]

Expert = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class StepPlan:
    """What step ``index`` does: model timestep, which expert (0 high-noise, 1 low-noise), guidance."""

    index: int
    timestep: torch.Tensor  # scalar, the value the model sees
    expert: int
    guidance_scale: float


def plan_steps(timesteps: torch.Tensor, *, boundary_ratio: float | None, guidance_scale: float,
               guidance_scale_2: float | None, num_train_timesteps: int = 1000) -> list[StepPlan]:
    """One StepPlan per timestep. Every rank computes the same plan (a fixed schedule, no data)."""
    plans = []
    for index, t in enumerate(timesteps):
        expert = 0 if boundary_ratio is None else select_expert(t, boundary_ratio, num_train_timesteps)
        scale = guidance_scale_for(expert, guidance_scale, guidance_scale_2)
        plans.append(StepPlan(index=index, timestep=t, expert=expert, guidance_scale=float(scale)))
    return plans


class Conditioning(Protocol):
    """Task-specific parts of a step: what the model sees, its timesteps, what is re-imposed after."""

    def model_input(self, latents: torch.Tensor) -> torch.Tensor: ...

    def model_timestep(self, timestep: torch.Tensor, batch: int) -> torch.Tensor: ...

    def after_step(self, latents: torch.Tensor) -> torch.Tensor: ...


class TextToVideo:
    """T2V: the model sees the latents; one timestep per sample [B]."""

    def model_input(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def model_timestep(self, timestep: torch.Tensor, batch: int) -> torch.Tensor:
        return timestep.reshape(()).expand(batch)

    def after_step(self, latents: torch.Tensor) -> torch.Tensor:
        return latents


@dataclass
class ImageToVideo(TextToVideo):
    """I2V-A14B: the model input is [latents (16), y = mask (4) + image latents (16)] = 36 channels."""

    condition: torch.Tensor  # y [B, 20, f, h, w]

    @classmethod
    def from_image_latents(cls, image_latents: torch.Tensor, *, temporal_stride: int = 4) -> "ImageToVideo":
        """``y = [i2v_mask (4), image_latents (16)]`` from the normalised encoding ``[B, 16, f, h, w]`` of
        :func:`~wan_dist.sampling.conditioning.i2v_condition_video` (the pipeline's and the trainer's way)."""
        _, _, frames, height, width = image_latents.shape
        mask = i2v_mask(frames, height, width, temporal_stride=temporal_stride, device=image_latents.device)
        return cls(condition=i2v_condition(image_latents, mask))

    def model_input(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.cat([latents, self.condition.to(latents.dtype)], dim=1)


@dataclass
class FirstFrameToVideo:
    """TI2V-5B: latent frame 0 is the clean image latent; its tokens get timestep 0 (per-token [B, L]).

    ``image_latents`` [B, z, 1, h, w] may be None (text-only TI2V): then every token gets t, as in
    diffusers' WanPipeline with ``expand_timesteps``.
    """

    mask: torch.Tensor  # [1, 1, f, h, w]: 0 on frame 0 when an image conditions, else ones
    image_latents: torch.Tensor | None
    patch_size: tuple[int, int, int]

    def model_input(self, latents: torch.Tensor) -> torch.Tensor:
        return self.after_step(latents)

    def model_timestep(self, timestep: torch.Tensor, batch: int) -> torch.Tensor:
        return ti2v_token_timesteps(timestep, self.mask, self.patch_size).expand(batch, -1)

    def after_step(self, latents: torch.Tensor) -> torch.Tensor:
        if self.image_latents is None:
            return latents
        return ti2v_impose_first_frame(latents, self.image_latents, self.mask)


def batch_contexts(context: torch.Tensor, negative_context: torch.Tensor | None) -> torch.Tensor | None:
    """[context; negative_context] along the batch (what one batched CFG forward sees), or None without a
    negative context or when the two have different numbers of rows: the model attends every row it is
    given, so padding the shorter one would change its result; such a pair runs as two forwards."""
    if negative_context is None or negative_context.shape[1:] != context.shape[1:]:
        return None
    return torch.cat([context, negative_context])


def guided_prediction(expert: Expert, model_input: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                      negative_context: torch.Tensor | None, guidance_scale: float, *,
                      batched_context: torch.Tensor | None = None) -> torch.Tensor:
    """v = v_uncond + g (v_cond - v_uncond), cond and uncond batched in one forward [cond; uncond].

    Without a negative context, or at g == 1 (where the formula is v_cond), only the cond half runs.
    ``batched_context``: :func:`batch_contexts` of the two, made once by the caller so the expert
    sees the same tensor at every step; concatenated here when None. Contexts of different lengths
    cannot share a forward: they run as :func:`sequential_guided_prediction`.
    """
    if negative_context is None or guidance_scale == 1.0:
        return expert(model_input, timestep, context)
    if batched_context is None:
        batched_context = batch_contexts(context, negative_context)
    if batched_context is None:
        return sequential_guided_prediction(expert, model_input, timestep, context, negative_context, guidance_scale)
    both = expert(torch.cat([model_input, model_input]), torch.cat([timestep, timestep]), batched_context)
    cond, uncond = both.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


def sequential_guided_prediction(expert: Expert, model_input: torch.Tensor, timestep: torch.Tensor,
                                 context: torch.Tensor, negative_context: torch.Tensor | None,
                                 guidance_scale: float, *, batched_context: torch.Tensor | None = None
                                 ) -> torch.Tensor:
    """The same guided v as :func:`guided_prediction`, cond then uncond as two forwards (the reference).

    Half the activation memory of the batched forward at the same FLOPs: at 720p one sample already
    fills the device, so batching buys nothing there and costs a second copy of every activation.
    """
    del batched_context  # each half sees its own context tensor (prepared once per render by the expert)
    cond = expert(model_input, timestep, context)
    if negative_context is None or guidance_scale == 1.0:
        return cond
    uncond = expert(model_input, timestep, negative_context)
    return uncond + guidance_scale * (cond - uncond)


class Solver(Protocol):
    def step(self, model_output: torch.Tensor, step_index: int, sample: torch.Tensor) -> torch.Tensor: ...


def denoise(latents: torch.Tensor, *, steps: Sequence[StepPlan], solver: Solver, experts: Sequence[Expert],
            context: torch.Tensor, negative_context: torch.Tensor | None, conditioning: Conditioning,
            predict=guided_prediction, model_dtype: torch.dtype | None = None,
            on_step: Callable[[StepPlan, torch.Tensor, Callable[[], torch.Tensor]], None] | None = None,
            cache=None, guide: Callable[[StepPlan, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
            ) -> torch.Tensor:
    """Run ``steps`` (a contiguous slice of the plan) from ``latents`` [B, C, f, h, w] (fp32).

    The solver holds the multistep history, so a caller may stop after any step and hand latents plus
    ``solver`` state to another process, which continues with the remaining steps.
    ``on_step(plan, latents, estimate)`` runs after each step (progress, cancellation, previews);
    ``estimate()`` computes that step's clean-sample estimate x0 from the step's input and velocity (the
    solver's ``denoised``), only when called.
    ``predict`` is called as ``predict(expert, model_input, timestep, context, negative_context,
    guidance_scale, batched_context=...)`` (see :func:`guided_prediction`).
    ``guide(plan, latents, velocity) -> velocity`` adjusts the guided velocity before the solver steps (a
    style lock's pull on the clean estimate); it sees the same replicated tensors on every rank.
    ``cache``: a :class:`~wan_dist.sampling.step_cache.StepCache` (or its recorder): told each step before the
    prediction, it calls the experts as ``expert(x, t, context, blocks=hook)`` so a step may reuse the blocks'
    residual; ``on_step`` still runs after every step, skipped or not. None: the experts are called as they are.
    """
    batch = latents.shape[0]
    batched_context = batch_contexts(context, negative_context)  # once per call, not per step
    for plan in steps:
        model_input = conditioning.model_input(latents)
        if model_dtype is not None:
            model_input = model_input.to(model_dtype)
        timestep = conditioning.model_timestep(plan.timestep, batch)
        expert = experts[plan.expert]
        if cache is not None:
            cache.begin_step(plan)
            expert = cache.wrap(expert)
        velocity = predict(expert, model_input, timestep, context, negative_context,
                           plan.guidance_scale, batched_context=batched_context)
        if guide is not None:
            velocity = guide(plan, latents, velocity)
        previous = latents
        latents = solver.step(velocity, plan.index, latents)
        latents = conditioning.after_step(latents)
        if on_step is not None:
            on_step(plan, latents, lambda: conditioning.after_step(
                solver.denoised(plan.index, velocity.to(previous.dtype), previous)))
    return latents
