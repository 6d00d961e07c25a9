"""Single-process Wan 2.2 pipeline: ``load_pipeline(source).generate(...)``.

Argument names follow diffusers' Wan pipelines. Defaults come from the variant (WAN22_FACTS.md) and
the checkpoint layout decides the default schedule: a reference-layout checkpoint reproduces the
reference schedule and shift, a diffusers-layout one diffusers' pipeline.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from wan_dist.models.vae import video_to_frames
from wan_dist.models.checkpoint import CheckpointInfo, detect_checkpoint, load_dit, load_text_encoder, load_vae
from wan_dist.sampling import conditioning as cond
from wan_dist.sampling.denoise import (FirstFrameToVideo, ImageToVideo, StepPlan, TextToVideo, denoise,
                                       guided_prediction, plan_steps, sequential_guided_prediction)
from wan_dist.sampling.schedules import diffusers_schedule, reference_schedule
from wan_dist.sampling.sdedit import noise_to, start_step, tail_schedule
from wan_dist.sampling.solvers import make_solver
from wan_dist.engine.camera import CameraPlan, camera_prompt, plan_camera
from wan_dist.engine.images import i2v_image_latents, image_size, prepare_image
from wan_dist.engine.loras import LoraAdapters, lora_specs
from wan_dist.engine.settings import RenderSettings, resolve_settings
from wan_dist.engine.style_pull import StylePull, style_guide, style_pull

__all__ = ["WanPipeline", "WanOutput", "PreparedRender", "load_local_pipeline"]


@dataclass
class WanOutput:
    """``frames``: uint8 [B, F, H, W, 3] for output_type "np", latents [B, C, f, h, w] for "latent".
    ``camera``: the render's CameraPlan (engine/camera.py) when the request had a camera path."""

    frames: Any
    settings: RenderSettings
    timings: dict[str, float] = field(default_factory=dict)
    camera: CameraPlan | None = None
    loras: list[dict] = field(default_factory=list)  # the request's LoRAs: uri, sha256, scale, transformer, experts
    post_inputs: Any = None  # engine.post.PostInputs: what the publisher's post pass needs (set by generate_for)
    step_cache: dict | None = None  # with a step cache: its mode, settings and what it skipped (StepCache.stats)

    @property
    def seed(self) -> int:
        return self.settings.seed


class WanPipeline:
    """Text encoder, one or two DiT experts (high-noise first) and the VAE of one checkpoint."""

    def __init__(self, *, info: CheckpointInfo, experts: list[torch.nn.Module], vae, text_encoder,
                 device: torch.device, dtype: torch.dtype):
        self.info = info
        self.spec = info.spec
        self.experts = experts
        self.vae = vae
        self.text_encoder = text_encoder
        self.device = torch.device(device)
        self.dtype = dtype
        # "sequential" (default): cond then uncond, two forwards, half the activation memory (the
        # reference's way); "batched": one forward of both (fewer, larger kernels). Same math. Measured on
        # CPU (benchmarks/RESULTS.md) sequential is as fast and 0.6x the peak; batching can pay off where
        # one sample leaves the device idle (small sizes on a GPU).
        self.cfg_mode = "sequential"
        self.prompt_cache = None  # a PromptCache (engine/prompt_cache.py) where prompts are encoded ahead
        # a render group's layout sets a wan_dist.parallel.text.SharedText: one rank encodes, the others receive
        self.text_share = None
        self.loras = LoraAdapters(self)  # LoRAs of the experts (engine/loras.py); files cached per pipeline
        # how a request's image and LoRA URLs are read: None, the operator's (any path, any fsspec URL); a
        # storage.fetch.FetchPolicy, a tenant's (http(s) only, every hop's address checked as it is fetched)
        self.fetch_policy = None
        # the step cache's calibration (engine/step_cache.py): read from beside the checkpoint on first use;
        # set it to a CacheProfile to use another
        self.cache_profile = None

    @classmethod
    def from_folder(cls, folder, *, device="cpu", dtype=torch.bfloat16, expert_loader=None,
                    text_encoder: bool = True) -> "WanPipeline":
        """``expert_loader(expert_dir, info) -> module`` replaces the plain ``load_dit`` (e.g. FSDP shards).
        ``text_encoder`` False: its weights are not read (a rank that receives its embeddings from another)."""
        info = detect_checkpoint(folder)
        if expert_loader is None:
            experts = [load_dit(d, info.spec.dit, layout=info.layout, device=device, dtype=dtype)
                       for d in info.expert_dirs]
        else:
            experts = [expert_loader(d, info) for d in info.expert_dirs]
        vae = load_vae(info, device=device)
        encoder = load_text_encoder(info, device=device, dtype=dtype) if text_encoder else None
        return cls(info=info, experts=experts, vae=vae, text_encoder=encoder, device=device, dtype=dtype)

    # ------------------------------------------------------------------------------------------
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """[B, text_len, text_dim] embeddings, trimmed to true length and zero padded. With ``text_share``
        set, collective over its ranks: only its source rank encodes (see wan_dist.parallel.text)."""
        if self.text_share is not None:
            return self.text_share(self._encode_here, list(prompts))
        return self._encode_here(prompts)

    def _encode_here(self, prompts: list[str]) -> torch.Tensor:
        if self.text_encoder is None:
            raise ValueError("prompt: this pipeline has no text encoder; pass prompt_embeds")
        if self.prompt_cache is not None:
            return self.prompt_cache.get(list(prompts))
        return self.encode_prompt_uncached(prompts)

    def encode_prompt_uncached(self, prompts: list[str]) -> torch.Tensor:
        return self.text_encoder.encode(prompts, device=self.device, dtype=self.dtype)

    def text_contexts(self, settings: RenderSettings, batch: int | None = None, prompt_embeds=None,
                      negative_prompt_embeds=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The render's text contexts [B, T, text_dim] on the pipeline's device, in its dtype (``batch``: the
        settings' batch size by default); a caller rendering many windows of one prompt encodes them once.

        Encoded prompts have text_len rows (true rows, then zeros). Given embeddings keep their rows in the
        diffusers layout, whose pipeline attends what it is given, and are zero padded to text_len in the
        reference layout, whose model pads every prompt so; the DiT attends the rows it gets.
        """
        batch = settings.batch_size if batch is None else batch
        if prompt_embeds is None:
            prompt_embeds = self.encode_prompt(settings.prompts)
        if negative_prompt_embeds is None:
            negative_prompt_embeds = self.encode_prompt(settings.negative_prompts)
        if prompt_embeds.shape[0] != batch or negative_prompt_embeds.shape[0] != batch:
            raise ValueError(f"negative_prompt_embeds: batch {negative_prompt_embeds.shape[0]} does not match "
                             f"prompt_embeds batch {prompt_embeds.shape[0]}")
        return (self._layout_context("prompt_embeds", prompt_embeds),
                self._layout_context("negative_prompt_embeds", negative_prompt_embeds))

    def _layout_context(self, name: str, embeds: torch.Tensor) -> torch.Tensor:
        text_len, text_dim = self.spec.dit.text_len, self.spec.dit.text_dim
        if embeds.ndim != 3 or not 1 <= embeds.shape[1] <= text_len or embeds.shape[2] != text_dim:
            raise ValueError(f"{name}: expected [batch, 1..{text_len}, {text_dim}], got {list(embeds.shape)}")
        embeds = embeds.to(self.device, self.dtype)
        if self.info.layout == "reference":
            embeds = torch.nn.functional.pad(embeds, (0, 0, 0, text_len - embeds.shape[1]))
        return embeds

    def _schedule(self, settings: RenderSettings):
        if settings.schedule == "reference":
            return reference_schedule(settings.num_inference_steps, settings.shift, solver=settings.solver)
        return diffusers_schedule(settings.num_inference_steps, settings.shift, solver=settings.solver)

    def _conditioning(self, settings: RenderSettings, image, latent_shape, batch: int,
                      proxy: torch.Tensor | None = None):
        """(the task's conditioning, ``proxy``'s latents or None). ``proxy``: a camera's proxy clip [B, 3, F, H, W]
        to encode too; an I2V condition video has its shape, so both go through the VAE as one batch (on CPU at
        toy size one call of two clips costs about what one clip does)."""
        if proxy is not None and self.spec.task != "i2v":  # TI2V encodes one frame: the proxy goes alone
            return self._conditioning(settings, image, latent_shape, batch)[0], self.vae.encode(proxy.to(self.device))
        z, f, h, w = latent_shape
        if self.spec.task == "t2v":
            return TextToVideo(), None
        if self.spec.task == "i2v":
            pixels = prepare_image(image, width=settings.width, height=settings.height, mode="i2v", batch=batch)
            if proxy is None:
                return (ImageToVideo.from_image_latents(i2v_image_latents(self.vae, pixels, settings.num_frames),
                                                        temporal_stride=self.vae.temporal_stride), None)
            video = cond.i2v_condition_video(pixels, settings.num_frames)
            both = self.vae.encode(torch.cat([video, proxy.to(video)]).to(self.device))
            return (ImageToVideo.from_image_latents(both[:len(video)], temporal_stride=self.vae.temporal_stride),
                    both[len(video):])
        if image is None:  # text-only TI2V: every token gets t (diffusers' expand_timesteps)
            return FirstFrameToVideo(mask=torch.ones(1, 1, f, h, w, device=self.device), image_latents=None,
                                     patch_size=self.spec.dit.patch_size), None
        pixels = prepare_image(image, width=settings.width, height=settings.height, mode="ti2v", batch=batch)
        image_latents = self.vae.encode(pixels.unsqueeze(2).to(self.device))
        mask = cond.ti2v_first_frame_mask((1, 1, f, h, w), device=self.device)
        return FirstFrameToVideo(mask=mask, image_latents=image_latents, patch_size=self.spec.dit.patch_size), None

    # -- LoRAs, diffusers' spelling (engine/loras.py) ------------------------------------------------
    @property
    def lora_mode(self) -> str:
        """``"runtime"`` (a branch beside each touched layer; weights never written) or ``"merged"``."""
        return self.loras.mode

    @lora_mode.setter
    def lora_mode(self, mode: str) -> None:
        self.loras.set_mode(mode)

    def load_lora_weights(self, path_or_state_dict, adapter_name: str | None = None,
                          load_into_transformer_2: bool = False, *, weight_name: str | None = None,
                          image_branch: str = "error") -> str:
        """Load a LoRA (a file path / URL, a folder + ``weight_name``, or a state dict in any format of
        ``models.lora``) into the high-noise expert, or the low-noise one with ``load_into_transformer_2``, and
        make it active at weight 1; it applies from the next render on. Returns the adapter name."""
        if weight_name is not None and isinstance(path_or_state_dict, str):
            from wan_dist.storage.objects import join

            path_or_state_dict = join(path_or_state_dict, weight_name)
        return self.loras.load(path_or_state_dict, adapter_name=adapter_name,
                               expert=1 if load_into_transformer_2 else 0, image_branch=image_branch)

    def set_adapters(self, adapter_names, adapter_weights=None) -> None:
        """Only ``adapter_names`` are active, at ``adapter_weights`` (one number per adapter, or a dict with
        ``transformer`` / ``transformer_2``; default 1), as in diffusers."""
        self.loras.set_active(adapter_names, adapter_weights)

    def get_active_adapters(self) -> list[str]:
        return list(self.loras.active)

    def unload_lora_weights(self) -> None:
        """Forget every loaded adapter; the experts get their base weights back now."""
        self.loras.unload()

    def default_predict(self):
        """The guided prediction of this pipeline's ``cfg_mode`` (see __init__)."""
        if self.cfg_mode not in ("batched", "sequential"):
            raise ValueError(f"cfg_mode: must be 'batched' or 'sequential', got {self.cfg_mode!r}")
        return guided_prediction if self.cfg_mode == "batched" else sequential_guided_prediction

    def _expert_fn(self, model: torch.nn.Module):
        """``expert(x, t, context) -> fp32 v`` for one generate call.

        The text context is fixed for a render and denoise passes the same tensor at every step, so
        the model's text embedding and cross-attention keys and values are prepared on first use
        of each context tensor and reused; they live as long as this closure (one generate call).
        """
        prepare = getattr(model, "prepare_context", None)
        prepared: dict[int, tuple[torch.Tensor, Any]] = {}  # id(context) -> (context, prepared)

        def expert(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, *, blocks=None) -> torch.Tensor:
            if prepare is not None:
                entry = prepared.get(id(context))
                if entry is None or entry[0] is not context:  # holding context keeps its id unique
                    entry = prepared[id(context)] = (context, prepare(context))
                context = entry[1]
            if blocks is None:
                return model(x, t, context).float()
            return model(x, t, context, blocks=blocks).float()

        return expert

    # -- the stages of a render: resolve -> prepare -> denoise -> finish -------------------------
    def resolve(self, prompt: str | list[str] | None = None, negative_prompt: str | list[str] | None = None, *,
                image=None, height: int | None = None, width: int | None = None, num_frames: int | None = None,
                num_inference_steps: int | None = None, guidance_scale: float | None = None,
                guidance_scale_2: float | None = None, boundary_ratio: float | None = None,
                shift: float | None = None, seed: int | None = None, solver: str | None = None,
                schedule: str | None = None, prompt_embeds: torch.Tensor | None = None,
                output_type: str = "np", camera=None, recipe: str | None = None, cache: str | None = None,
                cache_threshold: float | None = None, cache_retention: float | None = None) -> RenderSettings:
        """The request's settings with this checkpoint's defaults (a seed drawn when None); bad values raise
        ValueError naming the argument. Nothing is computed: every rank of a group can check a request first.
        ``camera``: a camera path (dict or ``controls.CameraPath``): the prompt gains its camera phrases.
        ``recipe``: a sampling recipe (engine.settings.RECIPES, e.g. "lightning") for the fields left None.
        ``cache``: step caching, off (None) | magcache | teacache, with ``cache_threshold`` and
        ``cache_retention`` (sampling/step_cache.py; defaults per mode)."""
        if seed is None:
            seed = random.randrange(2**31)
        if cache == "magcache":  # its profile is read now, so a checkpoint without one fails before any work
            from wan_dist.engine.step_cache import profile_of

            profile_of(self, required=True)
        return resolve_settings(
            self.spec, layout=self.info.layout, prompt=camera_prompt(prompt, camera), negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds, height=height, width=width, num_frames=num_frames,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            guidance_scale_2=guidance_scale_2, boundary_ratio=boundary_ratio, shift=shift, seed=seed,
            solver=solver, schedule=schedule, output_type=output_type, has_image=image is not None,
            checkpoint_id=self.info.checkpoint_id, image_size=image_size(image), recipe=recipe, cache=cache,
            cache_threshold=cache_threshold, cache_retention=cache_retention)

    def step_plan(self, settings: RenderSettings) -> tuple[Any, list[StepPlan]]:
        """(schedule, one StepPlan per denoising step: expert, timestep, guidance) of resolved settings."""
        schedule = self._schedule(settings)
        return schedule, plan_steps(schedule.timesteps, boundary_ratio=settings.boundary_ratio,
                                    guidance_scale=settings.guidance_scale, guidance_scale_2=settings.guidance_scale_2)

    def latent_shape(self, settings: RenderSettings) -> tuple[int, int, int, int]:
        """(z, f, h, w) of one clip's latents."""
        return cond.latent_shape(settings.num_frames, settings.height, settings.width, z_dim=self.spec.vae.z_dim,
                                 temporal_stride=self.vae.temporal_stride, spatial_stride=self.vae.spatial_stride)

    @torch.no_grad()
    def prepare(self, settings: RenderSettings, *, image=None, prompt_embeds: torch.Tensor | None = None,
                negative_prompt_embeds: torch.Tensor | None = None, latents: torch.Tensor | None = None,
                data_shard: tuple[int, int] | None = None,
                contexts: tuple[torch.Tensor, torch.Tensor] | None = None, camera=None, layers=None,
                fps: int | None = None, handoff: bool = False, loras=None, style_lock=None) -> "PreparedRender":
        """Text contexts, image conditioning, step plan and initial latents of a resolved request.

        ``latents``: the initial noise of the whole batch (else drawn from the seed on the CPU, so a row gets
        the same noise wherever it renders). ``data_shard=(index, count)``: keep only that shard's rows.
        ``contexts``: (context, negative context) already encoded and laid out by a ``prepare`` elsewhere
        (a disaggregated hand-off); the prompt is not encoded again.
        ``camera``, ``layers``, ``fps``: the request's camera path (engine/camera.py): guided text-to-video warps
        the initial noise along it; guided image-to-video starts part-way from a proxy clip at the camera's
        strength; the exact mode's crop is checked now and applied by :meth:`finish`.
        ``handoff``: ``latents`` are a trajectory another stage began (disaggregated placement): the camera's
        start (noise warp, proxy clip) is not applied to them again; its step plan (a part-way start) is.
        ``loras``: this render's LoRAs (``[{path, scale, transformer}]`` or :class:`~wan_dist.engine.loras.LoraSpec`),
        added to the adapters loaded with :meth:`load_lora_weights`; the experts this process holds are brought to
        that set here.
        ``style_lock``: the request field (a strength, a dict or ``controls.StyleLock``): with an input image and
        ``latent`` on, every step's clean estimate is pulled toward the image latent's statistics (:meth:`denoise`).
        """
        started = time.perf_counter()
        lora_records = self.loras.sync(lora_specs(loras))
        timings_lora = time.perf_counter() - started
        batch = settings.batch_size
        if contexts is None:
            contexts = self.text_contexts(settings, batch, prompt_embeds, negative_prompt_embeds)
        context, negative_context = (c.to(self.device, self.dtype) for c in contexts)
        rows = _rows_of(batch, data_shard)
        timings = {"lora_s": timings_lora, "text_encode_s": time.perf_counter() - started - timings_lora}
        shape = self.latent_shape(settings)
        plan = None if camera is None else plan_camera(
            camera, layers, num_frames=settings.num_frames, width=settings.width, height=settings.height,
            fps=fps or self.spec.defaults.fps, seed=settings.seed)
        if latents is None:
            generator = torch.Generator("cpu").manual_seed(settings.seed)
            latents = torch.randn((batch, *shape), generator=generator, dtype=torch.float32)
        elif tuple(latents.shape) != (batch, *shape):
            raise ValueError(f"latents: shape {list(latents.shape)} does not match {[batch, *shape]}")
        if plan is not None and not handoff and plan.warps_noise(self.spec.task, image is not None):
            tick = time.perf_counter()
            latents = plan.warp(latents, temporal_stride=self.vae.temporal_stride,
                                spatial_stride=self.vae.spatial_stride)
            plan.timings["noise_warp_s"] = time.perf_counter() - tick
        latents = latents[rows].to(self.device, torch.float32)
        schedule, steps = self.step_plan(settings)
        proxy = None
        if plan is not None and plan.uses_proxy(self.spec.task, image is not None):
            schedule, steps, proxy = self._start_from_proxy(plan, settings, image, schedule, rows, encode=not handoff)
        tick = time.perf_counter()
        conditioning, proxy_latents = self._conditioning(settings, image, shape, latents.shape[0], proxy)
        timings["image_encode_s"] = time.perf_counter() - tick  # with the proxy clip's encode, if any
        if proxy_latents is not None:
            latents = noise_to(proxy_latents.to(latents.dtype), latents, float(schedule.sigmas[0]))
        if plan is not None:  # what the camera cost, beside the other phases (and in the sidecar's camera_path)
            timings.update({f"camera_{name}": seconds for name, seconds in plan.timings.items()})
        return PreparedRender(settings=settings, context=context[rows], negative_context=negative_context[rows],
                              latents=conditioning.after_step(latents), conditioning=conditioning,
                              schedule=schedule, steps=steps, timings=timings, started=started, camera=plan,
                              loras=lora_records, style=style_pull(style_lock, conditioning))

    def _start_from_proxy(self, plan: CameraPlan, settings: RenderSettings, image, schedule, rows: slice, *,
                          encode: bool = True):
        """SDEdit from the proxy clip: the schedule and step plan from step ``start_step(strength)`` on, and the
        proxy clip [B, 3, F, H, W] whose VAE latents, noised to that step, start the render (:meth:`prepare`
        encodes it with the image's condition); (schedule, steps, proxy or None). ``encode`` False: only the
        plan (the latents are a trajectory already under way)."""
        tick = time.perf_counter()
        start = start_step(schedule.num_steps, plan.path.strength)
        if start == 0:  # strength high enough that no step is skipped: the proxy would be drowned anyway
            return schedule, self.step_plan(settings)[1], None
        tail = tail_schedule(schedule, start)
        steps = plan_steps(tail.timesteps, boundary_ratio=settings.boundary_ratio,
                           guidance_scale=settings.guidance_scale, guidance_scale_2=settings.guidance_scale_2)
        plan.start_step = start
        if not encode:
            return tail, steps, None
        pixels = prepare_image(image, width=settings.width, height=settings.height, mode=self.spec.task,
                               batch=settings.batch_size)[rows]
        proxy = plan.proxy_video(pixels)
        plan.timings["proxy_s"] = time.perf_counter() - tick  # the clip; its encode is in image_encode_s
        return tail, steps, proxy

    @torch.no_grad()
    def denoise(self, prepared: "PreparedRender", latents: torch.Tensor | None = None, *,
                steps: Sequence[StepPlan] | None = None, solver=None, experts: list[Callable] | None = None,
                predict: Callable | None = None, callback: Callable[..., None] | None = None,
                cache=None) -> torch.Tensor:
        """Run ``steps`` (default: all of ``prepared.steps``) from ``latents`` (default: the initial ones).

        ``solver``: one made by ``prepared.make_solver()`` and carried across calls (its multistep state
        continues); a fresh one by default. ``experts`` replace the local expert callables (high-noise first;
        an expert a step range never uses may be a stub), ``predict`` the guided prediction.
        ``callback(step_index, num_steps, latents, estimate)`` after every step, ``num_steps`` counting the
        whole plan, so a stage running part of it reports the step's place in the render.
        ``cache``: the step cache of these steps (default: the settings' one, made by :meth:`step_cache`); its
        counts are added to ``prepared.step_cache``.
        """
        tick = time.perf_counter()
        total = len(prepared.steps)
        solver = solver or prepared.make_solver()
        on_step = None if callback is None else (lambda plan, x, estimate: callback(plan.index, total, x, estimate))
        if cache is None:
            cache = self.step_cache(prepared)
        latents = denoise(prepared.latents if latents is None else latents,
                          steps=prepared.steps if steps is None else steps,
                          solver=solver,
                          experts=experts or [self._expert_fn(m) for m in self.experts], context=prepared.context,
                          negative_context=prepared.negative_context if prepared.settings.use_cfg else None,
                          conditioning=prepared.conditioning, model_dtype=self.dtype, on_step=on_step,
                          predict=predict or self.default_predict(), cache=cache,
                          guide=style_guide(prepared, solver))
        prepared.timings["denoise_s"] = prepared.timings.get("denoise_s", 0.0) + time.perf_counter() - tick
        if cache is not None and hasattr(cache, "stats"):
            prepared.add_cache_stats(cache.stats())
        return latents

    def step_cache(self, prepared: "PreparedRender"):
        """The step cache of ``prepared``'s settings over its whole plan (engine/step_cache.py), None when off."""
        from wan_dist.engine.step_cache import make_step_cache

        return make_step_cache(self, prepared)

    @torch.no_grad()
    def finish(self, prepared: "PreparedRender", latents: torch.Tensor) -> WanOutput:
        """The WanOutput: latents as they are for output_type "latent", else decoded uint8 frames."""
        timings = prepared.timings
        if prepared.settings.output_type != "latent":
            tick = time.perf_counter()
            latents = video_to_frames(self.vae.decode(latents))  # already contiguous uint8
            timings["decode_s"] = time.perf_counter() - tick
            latents = self.post_pass(prepared.camera, latents, timings)
        timings["total_s"] = time.perf_counter() - prepared.started
        return WanOutput(frames=latents, settings=prepared.settings, timings=timings, camera=prepared.camera,
                         loras=list(prepared.loras), step_cache=prepared.step_cache)

    @staticmethod
    def post_pass(camera: CameraPlan | None, frames, timings: dict[str, float]):
        """The controls' passes over decoded frames [B, F, H, W, 3] uint8 (the exact mode's virtual camera);
        a group that decodes elsewhere calls it after its own decode."""
        if camera is None or not camera.exact:
            return frames
        tick = time.perf_counter()
        frames = camera.post_pass(frames)
        timings["camera_post_s"] = time.perf_counter() - tick
        return frames

    @torch.no_grad()
    def generate(self, prompt: str | list[str] | None = None, negative_prompt: str | list[str] | None = None, *,
                 image=None, height: int | None = None, width: int | None = None, num_frames: int | None = None,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 guidance_scale_2: float | None = None, boundary_ratio: float | None = None,
                 shift: float | None = None, seed: int | None = None, solver: str | None = None,
                 schedule: str | None = None, prompt_embeds: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None, latents: torch.Tensor | None = None,
                 output_type: str = "np", callback: Callable[..., None] | None = None,
                 experts: list[Callable] | None = None, predict: Callable | None = None,
                 data_shard: tuple[int, int] | None = None, camera=None, layers=None,
                 fps: int | None = None, loras=None, recipe: str | None = None, style_lock=None,
                 cache: str | None = None, cache_threshold: float | None = None,
                 cache_retention: float | None = None) -> WanOutput:
        """Render a batch of clips: :meth:`resolve`, :meth:`prepare`, :meth:`denoise`, :meth:`finish`.
        See INTERFACES.md for the arguments.

        ``callback(step_index, num_steps, latents, estimate)`` runs after every denoising step; ``estimate()``
        gives that step's clean-latent estimate x0 (for previews; computed only when called).
        ``loras``: ``[{"path", "scale", "transformer"}]`` for this call (see :meth:`prepare`); the output's ``loras``
        records each one's uri, sha256, scale and expert.
        Returns WanOutput with frames uint8 [B, F, H, W, 3] ("np") or latents [B, C, f, h, w] ("latent").

        Hooks for a rank of a render group (wan_dist.engine.parallel_generate): ``experts`` replace
        the local expert callables (``expert(x, t, context) -> v``, high-noise first), ``predict`` the
        guided prediction of :func:`~wan_dist.sampling.denoise.denoise`, and ``data_shard=(index, count)``
        renders only rows ``[index * B / count, (index + 1) * B / count)`` of the batch (B must divide
        evenly; the initial latents are still drawn for the whole batch, so a row gets the same noise
        wherever it is rendered).

        ``camera`` / ``layers``: the request fields of those names (INTERFACES.md; dicts or ``controls``
        objects), ``fps`` the clip's rate (the shake's frequency is in Hz; default: the variant's).
        ``style_lock``: keep the input image's statistics while sampling (see :meth:`prepare`); the colour
        transfer after decoding is the publisher's (engine/post.py).
        ``cache`` / ``cache_threshold`` / ``cache_retention``: step caching (see :meth:`resolve`); the output's
        ``step_cache`` records what it skipped.
        """
        settings = self.resolve(prompt, negative_prompt, image=image, height=height, width=width,
                                num_frames=num_frames, num_inference_steps=num_inference_steps,
                                guidance_scale=guidance_scale, guidance_scale_2=guidance_scale_2,
                                boundary_ratio=boundary_ratio, shift=shift, seed=seed, solver=solver,
                                schedule=schedule, prompt_embeds=prompt_embeds, output_type=output_type,
                                camera=camera, recipe=recipe, cache=cache, cache_threshold=cache_threshold,
                                cache_retention=cache_retention)
        prepared = self.prepare(settings, image=image, prompt_embeds=prompt_embeds,
                                negative_prompt_embeds=negative_prompt_embeds, latents=latents, data_shard=data_shard,
                                camera=camera, layers=layers, fps=fps, loras=loras, style_lock=style_lock)
        latents = self.denoise(prepared, experts=experts, predict=predict, callback=callback)
        return self.finish(prepared, latents)


@dataclass
class PreparedRender:
    """A request made ready to denoise (:meth:`WanPipeline.prepare`): what every stage of a render shares.

    ``latents``: the initial latents of the rows this process renders (conditioning imposed);
    ``steps``: the plan of every step (``steps[:boundary]`` are the high-noise expert's);
    ``timings``: seconds per phase so far (``denoise`` and ``finish`` add theirs); ``started``: perf_counter
    at prepare.
    """

    settings: RenderSettings
    context: torch.Tensor
    negative_context: torch.Tensor
    latents: torch.Tensor
    conditioning: Any
    schedule: Any
    steps: list[StepPlan]
    timings: dict[str, float]
    started: float
    camera: CameraPlan | None = None  # the request's camera path, sampled (engine/camera.py)
    loras: list[dict] = field(default_factory=list)
    style: StylePull | None = None  # the style lock's sampling-time pull (image-conditioned renders)
    step_cache: dict | None = None  # the step cache's counts over the steps denoised so far

    def add_cache_stats(self, stats: dict) -> None:
        """Add one denoise call's step-cache counts (a stage may denoise part of the plan)."""
        if self.step_cache is None:
            self.step_cache = {**stats, "skipped_steps": list(stats["skipped_steps"])}
            return
        for key in ("steps", "forwards", "forwards_skipped"):
            self.step_cache[key] += stats[key]
        self.step_cache["skipped_steps"] = sorted(self.step_cache["skipped_steps"] + list(stats["skipped_steps"]))

    @property
    def boundary(self) -> int:
        """How many steps (the first ones) the high-noise expert runs."""
        return sum(1 for plan in self.steps if plan.expert == 0)

    def make_solver(self):
        return make_solver(self.settings.solver, self.schedule)


def _rows_of(batch: int, data_shard: tuple[int, int] | None) -> slice:
    """Rows of a batch of ``batch`` that data shard ``(index, count)`` renders."""
    if data_shard is None:
        return slice(0, batch)
    index, count = data_shard
    if batch % count or not 0 <= index < count:
        raise ValueError(f"data_shard: a batch of {batch} does not split into {count} equal shards "
                         f"(shard {index}); use a batch divisible by the data degree")
    size = batch // count
    return slice(index * size, (index + 1) * size)


def load_local_pipeline(source, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16,
                        cache_dir=None, layout: str = "diffusers", cfg_mode: str = "sequential",
                        expert_loader=None, text_encoder: bool = True) -> WanPipeline:
    """A pipeline in this process, on one device (see ``wan_dist.engine.loading.load_pipeline``, the public
    entry, for the arguments); a render group's ranks load theirs with it (``text_encoder`` on one rank only)."""
    from wan_dist.engine.sources import resolve_source

    folder = resolve_source(source, cache_dir=cache_dir, layout=layout)
    pipe = WanPipeline.from_folder(folder, device=device, dtype=dtype, expert_loader=expert_loader,
                                   text_encoder=text_encoder)
    pipe.cfg_mode = cfg_mode
    pipe.default_predict()  # validates cfg_mode now rather than at the first generate
    return pipe
