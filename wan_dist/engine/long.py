"""Long clips, method ``continue``: window after window, each conditioned on the end of the one before.

The window plan, seeds and seam blend are :mod:`wan_dist.controls.long`'s. Per window ``k``:

1. settings resolved as for a one-window render of ``window.frames`` frames with seed ``window_seed(seed, k)``;
2. ``k > 0``: the previous window's last ``P`` frames (kept from its decode) are VAE-encoded to ``o`` clean latent
   frames; :class:`ImposedSeam` writes them, noised to the level of each step with the window's own noise, over
   the window's first ``o`` latent frames for the first ``impose`` share of the steps. Why this for text-to-video:
   a T2V model has no input to condition on, but its trajectory can be steered (SDEdit/RePaint): the seam's
   content is what the model denoises through the high-noise steps, where layout and motion are decided, and the
   model then refines it freely so it joins the new frames. Image-to-video and text+image models also take the
   first shared frame as their input image (the model's own conditioning);
3. denoise, decode, the camera's post pass; the ``P`` shared frames are cross-faded (``blend_seam``) and every
   finished frame is handed on at once: only the last ``P`` frames are held for the next seam, so memory does
   not grow with the clip's length.

:func:`render_long` keeps every finished window in storage (engine/windows.py: a stopped render resumes after the
last one), encodes the clip from them one window at a time (``video.Mp4Writer`` on a local temporary file)
and publishes it with a sidecar that records every window (frames, overlap, seed, steps imposed).
"""

from __future__ import annotations

import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from wan_dist.controls.long import LongSpec, Window, plan_windows, window_seed
from wan_dist.controls.storyboard import apply_transition, sub_path
from wan_dist.engine.long_checks import (check_long, is_windowed, long_layout_problem, window_count,  # noqa: F401
                                         window_frames)
from wan_dist.sampling.sdedit import noise_to

__all__ = ["check_long", "long_layout_problem", "window_count", "is_windowed", "window_frames", "ImposedSeam", "LongClip",
           "render_long"]  # the checks live in engine/long_checks.py (engine/request.py reads them)

class ImposedSeam:
    """A step's conditioning (``sampling.denoise.Conditioning``) that also imposes the seam: latent frames
    ``[:o]`` become ``noise_to(clean, noise, sigma)`` after every step ``i < until`` (``sigma`` the level the
    step ends at), and in the initial latents (:meth:`start`). Everything else is the task's ``inner``
    conditioning's (an image's frame imposed by TI2V stays imposed: it is applied last).

    The step is known from the timestep :meth:`model_timestep` is given (denoise calls it once per step,
    before the step's ``after_step``).
    """

    def __init__(self, inner, clean: torch.Tensor, noise: torch.Tensor, schedule, until: int):
        self.inner, self.clean, self.noise, self.until = inner, clean, noise, until
        self.sigmas = [float(s) for s in schedule.sigmas]
        self.timesteps = [float(t) for t in schedule.timesteps]
        self._index = -1
        self._sigma: float | None = self.sigmas[0] if until > 0 else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _impose(self, latents: torch.Tensor, sigma: float) -> torch.Tensor:
        frames = self.clean.shape[2]
        latents = latents.clone()
        latents[:, :, :frames] = noise_to(self.clean, self.noise, sigma).to(latents.dtype)
        return latents

    def start(self, latents: torch.Tensor) -> torch.Tensor:
        """The initial latents with the seam at the schedule's first level."""
        if self._sigma is None:
            return latents
        return self.inner.after_step(self._impose(latents, self.sigmas[0]))

    def model_input(self, latents: torch.Tensor) -> torch.Tensor:
        return self.inner.model_input(latents)

    def model_timestep(self, timestep: torch.Tensor, batch: int) -> torch.Tensor:
        value = float(timestep.reshape(-1)[0])
        later = range(self._index + 1, len(self.timesteps))  # monotone: the first match after the last step
        self._index = min(later, key=lambda i: (abs(self.timesteps[i] - value), i), default=self._index)
        self._sigma = self.sigmas[self._index + 1] if self._index < self.until else None
        return self.inner.model_timestep(timestep, batch)

    def after_step(self, latents: torch.Tensor) -> torch.Tensor:
        if self._sigma is not None:
            latents = self._impose(latents, self._sigma)
        return self.inner.after_step(latents)


def _fix_mmap_threshold(size: int = 8 << 20) -> None:
    """Have glibc serve every allocation of ``size`` bytes or more by mmap, returned to the system when freed.

    Why: glibc raises its mmap threshold each time a large mmapped block is freed, so after the first window the
    VAE's decode buffers (~150 MB at 64x64) come from the heap, whose freed memory stays resident and fragments:
    the peak RSS of a toy clip then crept from 530 MB to 900 MB over its first 20 windows. A fixed threshold
    (which also turns the adjustment off) keeps it flat, at a price in page faults: on the 2-core CPU a 60 s toy
    clip peaked at 537 / 585 / 749 MB with 1 / 8 / 32 MB thresholds (852 MB adaptive) for 1.7x / 1.5x / 1.2x the
    wall time of a 20 s clip; 8 MB kept a 60 s clip within 3% of a 5 s one (32 MB: 17% above). Process-wide and
    idempotent; a no-op where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, size)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _pixels(frames: np.ndarray, device) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> [1, 3, F, H, W] float32 in [-1, 1] (what the VAE encodes)."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).to(torch.float32) / 127.5 - 1.0
    return video.permute(3, 0, 1, 2).unsqueeze(0).to(device)


class LongClip:
    """The windows of one long ``request`` on ``pipe`` (a WanPipeline in this process): a storyboard's shots
    (engine/storyboard.py) or one shot of the request's prompt.

    :meth:`frames` yields ``(record, frames)`` per window: its record for the sidecar and its finished frames
    ``[n, H, W, 3]`` uint8, in clip order (their concatenation is the clip). ``settings`` (after the first
    window) is the first window's resolved settings; ``timings`` sums every window's phases.
    """

    def __init__(self, pipe, request, *, experts: list | None = None, predict=None):
        from wan_dist.engine.storyboard import ShotPlan, plan_shots

        self.pipe, self.request = pipe, request
        self.experts, self.predict = experts, predict  # a parallel layout's (every rank runs the windows), or None
        self.spec = LongSpec.from_dict(request.long or {})
        stride = pipe.vae.temporal_stride
        self.window = window_frames(request.long, pipe.spec)
        self.spec.check_model(window=self.window, temporal_stride=stride)
        self.fps = request.render_fps(pipe.spec.defaults.fps)  # the model's frames (converted when published)
        if request.shots:
            self.shots = plan_shots(request.shots, fps=self.fps, window=self.window, overlap=self.spec.overlap,
                                    temporal_stride=stride)
            self.num_frames = 1 + sum(shot.own for shot in self.shots)
        else:
            self.num_frames = request.num_frames or pipe.spec.defaults.num_frames
            windows = plan_windows(self.num_frames, window=self.window, overlap=self.spec.overlap,
                                   temporal_stride=stride)
            self.shots = [ShotPlan(index=0, prompt=request.prompt, camera=None, transition="cut",
                                   own=self.num_frames - 1, shared=1, entry_latents=0, frames=self.num_frames,
                                   windows=tuple(windows))]
        self.windows = [w for shot in self.shots for w in shot.windows]
        self.seed = request.seed if request.seed is not None else int(torch.randint(0, 2**31, ()).item())
        self.settings = None
        self.timings: dict[str, float] = {}
        self.records: list[dict] = []
        self.loras: list[dict] = []
        self._contexts: dict[tuple, tuple] = {}

    # ------------------------------------------------------------------------------------------
    @property
    def sliding(self) -> bool:
        return self.spec.method == "sliding" and len(self.windows) > 1 and not self.request.shots

    def frames(self, *, callback: Callable[..., None] | None = None, resume=None) -> Iterator[tuple[dict, np.ndarray]]:
        """``resume``: an ``engine.windows.Resumed``: its windows are not rendered again; their held frames,
        settings, records and timings continue. ``self.tail`` holds the frames kept for the next seam."""
        _fix_mmap_threshold()
        if self.sliding:
            yield from self._sliding(callback)
            return
        self.tail = None  # the last frames the next window shares, not yet handed on
        done = 0
        if resume is not None:
            from wan_dist.engine.settings import RenderSettings

            done, self.tail = resume.count, resume.tail
            settings = dict(resume.settings)
            settings["prompts"], settings["negative_prompts"] = (tuple(settings["prompts"]),
                                                                 tuple(settings["negative_prompts"]))
            self.settings = RenderSettings(**settings)
            self.records, self.timings, self.loras = list(resume.records), dict(resume.timings), list(resume.loras)
        source = self._input_image()
        count = 0
        for shot, after in zip(self.shots, self.shots[1:] + [None]):
            for window in shot.windows:
                if count < done:
                    count += 1
                    continue
                if callback is not None and hasattr(callback, "on_window"):  # a job reports where it is
                    callback.on_window({"index": count + 1, "count": len(self.windows), "shot": shot.index + 1,
                                        "shots": len(self.shots)})
                tail = self.tail
                first = window.index == 0
                kind = shot.transition if first else "continue"
                conditioned = tail is not None and kind != "cut"
                image = self._seam_image(tail, source) if conditioned else source
                span = shot.frames - 1
                camera = sub_path(shot.camera, window.start / span, (window.start + window.frames - 1) / span)
                record, frames = self._render_window(count, window, shot.prompt, camera, image,
                                                     tail if conditioned else None, callback)
                record.update({"shot": shot.index, "transition": kind if first and shot.index else None})
                if conditioned:
                    frames = np.concatenate([apply_transition(kind, tail, frames[:len(tail)]), frames[len(tail):]])
                elif first and shot.index > 0:  # after a cut the shot's first frame is never shown
                    frames = frames[1:]
                if window.index + 1 < len(shot.windows):
                    keep = shot.windows[window.index + 1].overlap
                else:
                    keep = after.shared if after is not None and after.transition != "cut" else 0
                self.tail = frames[len(frames) - keep:].copy() if keep else None
                self.records.append(record)
                count += 1
                yield record, frames[:len(frames) - keep]

    def _input_image(self):
        """The request's input image (read once, under the pipeline's fetch policy), or None."""
        if not hasattr(self, "_image"):
            from wan_dist.engine.images import load_image

            self._image = load_image(self.request.image, getattr(self.pipe, "fetch_policy", None))
        return self._image

    def _seam_image(self, tail: np.ndarray, source):
        """The input image of a continuing window: the first shared frame, for models that take one."""
        if self.pipe.spec.task == "t2v" or (self.pipe.spec.task == "ti2v" and source is None):
            return None
        from PIL import Image

        return Image.fromarray(tail[0])

    def _render_window(self, count: int, window: Window, prompt: str, camera, image, tail, callback):
        pipe, request = self.pipe, self.request
        s = request.sampling
        seed = window_seed(self.seed, count)
        size = {} if self.settings is None else {"height": self.settings.height, "width": self.settings.width}
        settings = pipe.resolve(prompt, request.negative_prompt, image=image,
                                height=size.get("height", request.height), width=size.get("width", request.width),
                                num_frames=window.frames, num_inference_steps=s.num_inference_steps,
                                guidance_scale=s.guidance_scale, guidance_scale_2=s.guidance_scale_2,
                                boundary_ratio=s.boundary_ratio, shift=s.shift, seed=seed, solver=s.solver,
                                schedule=s.schedule, camera=camera, cache=s.cache,
                                cache_threshold=s.cache_threshold, cache_retention=s.cache_retention)
        if self.settings is None:
            self.settings = settings
        prepared = pipe.prepare(settings, image=image, contexts=self._context(settings),
                                loras=list(request.loras) or None, camera=camera, fps=self.fps,
                                style_lock=request.style_lock)
        self.loras = list(prepared.loras)
        until = 0
        if tail is not None:
            until = min(round(self.spec.impose * len(prepared.steps)), len(prepared.steps) - 1)
        if until > 0:
            tick = time.perf_counter()
            clean = pipe.vae.encode(_pixels(tail, pipe.device)).to(torch.float32)
            frames_o = clean.shape[2]
            seam = ImposedSeam(prepared.conditioning, clean, prepared.latents[:, :, :frames_o].clone(),
                               prepared.schedule, until)
            prepared.conditioning = seam
            prepared.latents = seam.start(prepared.latents)
            prepared.timings["seam_encode_s"] = time.perf_counter() - tick
        total = len(prepared.steps)
        windows = len(self.windows)
        on_step = None if callback is None else (
            lambda step, _total, x, estimate: callback(count * total + step, windows * total, x, estimate))
        latents = pipe.denoise(prepared, callback=on_step, experts=self.experts, predict=self.predict)
        out = pipe.finish(prepared, latents)
        for name, seconds in out.timings.items():
            self.timings[name] = self.timings.get(name, 0.0) + seconds
        record = {**window.to_dict(), "index": count, "shot_window": window.index, "seed": seed,
                  "impose_steps": until, "num_inference_steps": total, "prompt": settings.prompts[0],
                  "camera": camera, "image": None if image is None else ("seam" if tail is not None else "request")}
        if out.step_cache is not None:  # the steps and forwards the window's step cache skipped
            record["step_cache"] = out.step_cache
        return record, out.frames[0]

    def _sliding(self, callback) -> Iterator[tuple[dict, np.ndarray]]:
        """One long latent, windows fused at every step (engine/sliding.py); decoded and handed on in segments."""
        from wan_dist.engine.sliding import decode_segments, fused_prediction, latent_windows, reschedule_noise

        pipe, request, s = self.pipe, self.request, self.request.sampling
        stride = pipe.vae.temporal_stride
        settings = pipe.resolve(request.prompt, request.negative_prompt, height=request.height, width=request.width,
                                num_frames=self.num_frames, num_inference_steps=s.num_inference_steps,
                                guidance_scale=s.guidance_scale, guidance_scale_2=s.guidance_scale_2,
                                boundary_ratio=s.boundary_ratio, shift=s.shift, seed=self.seed, solver=s.solver,
                                schedule=s.schedule)
        self.settings = settings
        shape = pipe.latent_shape(settings)
        window, overlap = (self.window - 1) // stride + 1, self.spec.overlap
        noise = torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(self.seed), dtype=torch.float32)
        noise = reschedule_noise(noise, window=window, stride=window - overlap, seed=self.seed)
        prepared = pipe.prepare(settings, latents=noise, contexts=self._context(settings),
                                loras=list(request.loras) or None)
        self.loras = list(prepared.loras)
        windows = latent_windows(shape[1], window=window, overlap=overlap)
        predict = fused_prediction(self.predict or pipe.default_predict(), windows, overlap=overlap,
                                   kind=self.spec.fuse)
        latents = pipe.denoise(prepared, predict=predict, callback=callback, experts=self.experts)
        tick = time.perf_counter()
        self.records = [{"index": i, "latent_start": a, "latent_end": b, "start": max(0, stride * (a - 1) + 1) if a
                         else 0, "frames": stride * (b - a - 1) + 1 if a == 0 else stride * (b - a), "seed": self.seed}
                        for i, (a, b) in enumerate(windows)]
        for frames in decode_segments(pipe.vae, latents, segment=window - overlap):
            yield {}, frames
        for name, seconds in prepared.timings.items():
            self.timings[name] = self.timings.get(name, 0.0) + seconds
        self.timings["decode_s"] = time.perf_counter() - tick

    def _context(self, settings):
        """The window's text contexts, encoded once per prompt pair for the whole clip."""
        key = (settings.prompts, settings.negative_prompts)
        if key not in self._contexts:
            self._contexts[key] = self.pipe.text_contexts(settings)
        return self._contexts[key]

    def sidecar_section(self) -> dict:
        """What the sidecar records of the windows (``long``): the settings and every window's record."""
        section = {**self.spec.to_dict(), "window": self.window, "windows": list(self.records)}
        if self.request.shots:
            section["shots"] = [{k: v for k, v in shot.record().items() if k != "windows"} for shot in self.shots]
        if self.spec.method == "sliding":
            section["noise"] = "freenoise"  # rescheduled from the seed (engine/sliding.py)
        return section


def render_long(pipe, request, output, *, model: dict, versions: dict, callback: Callable[..., None] | None = None,
                experts: list | None = None, predict=None, publishes: bool = True,
                barrier: Callable[[], None] | None = None) -> dict | None:
    """Render the long ``request`` window by window into ``{output.uri}/{name}/clip.mp4`` + ``clip.json``.

    Each finished window is kept under ``{name}/windows/`` (engine/windows.py) before the next one starts, so a
    render of the same request that was stopped resumes after its last finished window; the clip is then
    encoded from the windows one at a time (``sliding``, one latent, encodes as it decodes). ``model``: the
    sidecar's model section (``engine.render.model_record``), ``versions`` its versions. Returns the fields of a
    RenderResult (``engine.render.render_windowed`` makes it; storage failures: a failed one).

    On a render group every rank calls it together with its layout's ``experts`` and ``predict`` and the
    request's seed set: the windows run in lockstep, and only the rank that ``publishes`` stores windows and the
    clip (the others return None). ``barrier()``: waits for every rank, once each has read the stored windows,
    so all resume after the same window.

    The published frames are the kept windows, regraded by a style lock and converted to ``fps``, made afresh for
    each pass over them (engine/long_post.py): the clip's encode (which also tracks the renditions' subject), then
    the renditions' cut; a style lock's statistics are read in a pass before both."""
    from wan_dist.engine.clips import publish_clip_file
    from wan_dist.engine.long_post import StyleRegrade
    from wan_dist.engine.windows import WindowStore
    from wan_dist.storage.objects import join
    from wan_dist.video.mp4 import Mp4Writer

    started = time.perf_counter()
    clip = LongClip(pipe, request, experts=experts, predict=predict)
    fps = request.fps or clip.fps  # the published rate: the model's frames are converted to it as they are written
    style = None if clip.sliding else StyleRegrade.of(request, clip._input_image(), clip.fps)
    prefix = join(output.uri, request.clip_name(clip.seed))
    store = WindowStore(prefix, f"{request.digest()}-{clip.seed}")  # a request without a seed drew its own
    resumed = None if clip.sliding else store.load()
    if barrier is not None:
        barrier()
    if not publishes:  # another rank of the group: the same windows, kept and published by the result rank
        for _ in clip.frames(callback=callback, resume=resumed):
            pass
        return None
    logo = _logo(pipe, request)  # before any window renders: a refused logo URL costs no render time
    with tempfile.TemporaryDirectory(prefix="wan-dist-long-") as folder:
        path = Path(folder) / "clip.mp4"
        spent = {"encode_s": 0.0, "fps_conversion_s": 0.0}
        first_pass: dict = {}  # the first pass's Retimer: its record goes in the sidecar
        if not clip.sliding:
            for record, frames in clip.frames(callback=callback, resume=resumed):
                store.save(record["index"], frames, clip.tail, record=record, settings=clip.settings.to_dict(),
                           timings=clip.timings, loras=clip.loras)
            if style is not None:  # the colour pass needs every frame's statistics first: a pass over the store
                style.measure(store.segments(len(clip.windows)))

        def published(first: bool = True):
            return _published(clip, store, style, fps, spent, first_pass, callback=callback, first=first)

        renditions = _renditions(request, clip, fps, logo) if request.renditions else None

        with Mp4Writer(str(path), fps, codec=output.codec, crf=output.crf, preset=output.preset) as writer:
            for frames in published():
                tick = time.perf_counter()
                writer.write(frames)
                spent["encode_s"] += time.perf_counter() - tick
                if renditions is not None:
                    renditions.observe(frames)
        timings = {**clip.timings, "encode_s": spent["encode_s"]}
        if "retimer" in first_pass:
            timings["fps_conversion_s"] = spent["fps_conversion_s"]
        sidecar = _sidecar(clip, request, model=model, versions=versions, fps=fps, timings=timings,
                           retimer=first_pass.get("retimer"), style=style)
        try:
            if renditions is not None:  # a second pass over the kept windows, published before the sidecar
                tick = time.perf_counter()
                sidecar["renditions"] = renditions.publish(published(first=False), prefix, output)
                timings["renditions_s"] = time.perf_counter() - tick
            timings["total_s"] = time.perf_counter() - started
            uris = publish_clip_file(path, prefix_uri=prefix, sidecar=sidecar)
            store.clear()
        except Exception as error:  # storage failures are results, not crashes: the caller may retry
            return {"status": "failed", "seed": clip.seed, "timings": timings,
                    "error": f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=3)}"}
    entries = sidecar.get("renditions", [])
    return {"status": "completed", "seed": clip.seed, "clip_uri": uris.clip_uri, "sidecar_uri": uris.sidecar_uri,
            "timings": timings, "renditions": {entry["profile"]: entry["uri"] for entry in entries},
            "rendition_guides": {entry["profile"]: entry["guides_uri"] for entry in entries if "guides_uri" in entry}}


def _logo(pipe, request):
    """The overlays' logo of a long clip's renditions (None without one), fetched under the pipeline's policy."""
    if not request.renditions:
        return None
    from wan_dist.engine.post import post_inputs

    inputs = post_inputs(request, None, getattr(pipe, "fetch_policy", None))
    return None if inputs is None else inputs.logo


def _renditions(request, clip: LongClip, fps: int, logo):
    """The long clip's renditions (engine/long_post.py), once its windows have rendered (they set its size)."""
    from wan_dist.engine.long_post import LongRenditions
    from wan_dist.video.interpolate import retimed_count

    return LongRenditions(request, fps=fps, num_frames=retimed_count(clip.num_frames, clip.fps, fps),
                          size=(clip.settings.width, clip.settings.height), logo=logo)


def _published(clip: LongClip, store, style, fps: int, spent: dict, first_pass: dict, *, callback=None,
               first: bool = True):
    """A long clip's frames as published, part by part: its kept windows (a sliding clip's, rendered afresh),
    regraded by ``style``, converted to ``fps``. The first pass counts the style's statistics and keeps its
    Retimer in ``first_pass["retimer"]`` (for the sidecar); ``spent["fps_conversion_s"]`` adds up the conversion."""
    from wan_dist.video.interpolate import Retimer

    parts = ((frames for _, frames in clip.frames(callback=callback)) if clip.sliding
             else store.segments(len(clip.windows)))
    retime = None if fps == clip.fps else Retimer(clip.num_frames, clip.fps, fps)
    start = 0
    for frames in parts:
        if style is not None:
            frames = style.regrade(frames, start, count=first)
        start += len(frames)
        if retime is not None:
            tick = time.perf_counter()
            frames = retime.push(frames)
            spent["fps_conversion_s"] += time.perf_counter() - tick
            if first:
                first_pass["retimer"] = retime
        if len(frames):  # (a window whose frames all wait for the next seam has none)
            yield frames


def _sidecar(clip: LongClip, request, *, model: dict, versions: dict, fps: int, timings: dict, retimer, style) -> dict:
    """A long clip's sidecar (its renditions are added once published)."""
    settings = {**clip.settings.to_dict(), "num_frames": clip.num_frames, "seed": clip.seed}
    sidecar = {"request": request.to_dict(), "request_digest": request.digest(), "settings": settings,
               "model": {k: v for k, v in model.items() if k != "default_fps"},
               "fps": fps, "render_fps": clip.fps, "timings": timings, "loras": clip.loras, "versions": versions,
               "created_at": time.time(), "long": clip.sidecar_section()}
    if retimer is not None:
        sidecar["fps_conversion"] = retimer.record()
    if style is not None:
        sidecar["style_lock"] = style.record()
    return sidecar
