"""One render request in, one clip + sidecar in object storage out.

``RenderRequest`` (``engine.request``) is the typed request every front door builds (CLI, manifest row, HTTP
job); ``RenderResult`` is what comes back. A sidecar records the request (its loose form and digest) and every
resolved setting, so ``RenderRequest.from_sidecar`` reproduces the clip.
"""

from __future__ import annotations

import platform
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from wan_dist.config import OutputConfig
from wan_dist.engine.request import RenderRequest

__all__ = ["RenderRequest", "RenderResult", "render", "render_windowed", "generate_for", "publish", "model_record", "versions"]


@dataclass(frozen=True, kw_only=True)
class RenderResult:
    status: str  # "completed" | "failed"
    seed: int | None = None
    clip_uri: str | None = None
    sidecar_uri: str | None = None
    renditions: dict[str, str] = field(default_factory=dict)  # profile name -> its MP4 (published beside the clip)
    rendition_guides: dict[str, str] = field(default_factory=dict)  # profile name -> its guides copy (overlays.guides)
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    step_cache: dict | None = None  # with a step cache: what it skipped (WanOutput.step_cache)


def versions() -> dict[str, str]:
    import cv2
    import diffusers
    import torch
    import transformers

    import wan_dist

    # opencv: frame-rate conversion's optical flow (video.interpolate)
    return {"wan_dist": wan_dist.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "opencv": cv2.__version__, "python": platform.python_version()}


def _load_image(uri: str | None, policy=None):
    """The request's image, read under the pipeline's fetch policy (storage.fetch.read_source)."""
    if uri is None:
        return None
    import io

    from PIL import Image

    from wan_dist.storage.fetch import read_source

    return Image.open(io.BytesIO(read_source(uri, policy=policy, field="image"))).convert("RGB")


def generate_for(pipe, request: RenderRequest, *, callback=None, generate=None):
    """Run ``request`` through ``generate`` (default ``pipe.generate``; a render group passes its SPMD one)."""
    from wan_dist.engine.post import post_inputs

    s = request.sampling
    generate = generate or pipe.generate
    # the camera's arguments only when there is a camera: a generate without camera support still renders the rest
    # the camera path is sampled at the rate the model renders (a shake's frequency is in Hz)
    camera = {} if request.camera is None else {"camera": request.camera, "layers": request.layers,
                                                "fps": request.render_fps(pipe.spec.defaults.fps)}
    policy = getattr(pipe, "fetch_policy", None)
    image = _load_image(request.image, policy)
    post = post_inputs(request, image, policy)  # before the render: a refused logo URL costs no GPU time
    # likewise the step cache's only when it is on
    cache = {} if s.cache == "off" else {"cache": s.cache, "cache_threshold": s.cache_threshold,
                                         "cache_retention": s.cache_retention}
    style = {} if request.style_lock is None else {"style_lock": request.style_lock}
    out = generate(request.prompt, request.negative_prompt, image=image,
                    height=request.height, width=request.width, num_frames=request.num_frames,
                    num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale,
                    guidance_scale_2=s.guidance_scale_2, boundary_ratio=s.boundary_ratio, shift=s.shift,
                    seed=request.seed, solver=s.solver, schedule=s.schedule, callback=callback, **camera, **cache,
                    **({"loras": list(request.loras)} if request.loras else {}), **style)
    if out is not None:  # None on the ranks of a group that do not hold the result
        out.post_inputs = post
    return out


def model_record(pipe, source: str | None = None) -> dict[str, Any]:
    """What a sidecar records about the model that rendered a clip (plain data: it travels between processes)."""
    return {"source": source, "checkpoint_id": pipe.info.checkpoint_id, "variant": pipe.spec.name,
            "layout": pipe.info.layout, "dtype": str(pipe.dtype).replace("torch.", ""), "device": str(pipe.device),
            "default_fps": pipe.spec.defaults.fps}


def publish(model: dict[str, Any], request: RenderRequest, out, output: OutputConfig) -> RenderResult:
    """Write ``out`` (a WanOutput of ``request``) as ``{output.uri}/{name}/clip.mp4`` + ``clip.json``.

    ``model`` is ``model_record(pipe, source)``: publishing needs no pipeline, so it can run in another
    process than the render. Failures while writing are returned as a failed RenderResult with the
    error (the caller may retry).
    """
    from wan_dist.engine.clips import write_clip
    from wan_dist.engine.post import PostInputs, lock_style, publish_renditions
    from wan_dist.storage.objects import join
    from wan_dist.video.interpolate import convert_fps

    fps = request.fps or model["default_fps"]  # a built request always has its fps
    render_fps = request.render_fps(model["default_fps"])
    prefix = join(output.uri, request.clip_name(out.seed))
    sidecar = {
        "request": request.to_dict(),
        "request_digest": request.digest(),
        "settings": out.settings.to_dict(),
        "model": {k: v for k, v in model.items() if k != "default_fps"},
        "fps": fps,
        "render_fps": render_fps,  # the model's frames; converted to fps when they differ (fps_conversion)
        "timings": dict(out.timings),
        "loras": list(getattr(out, "loras", None) or []),  # each LoRA's uri, sha256, scale and expert
        "versions": versions(),
        "created_at": time.time(),
    }
    if getattr(out, "camera", None) is not None:  # the sampled camera path: every frame's pose
        sidecar["camera_path"] = out.camera.record()
    step_cache = getattr(out, "step_cache", None)
    if step_cache is not None:  # the steps and forwards the step cache skipped
        sidecar["step_cache"] = step_cache
    tick = time.perf_counter()
    try:
        frames = out.frames[0]
        if fps != render_fps:  # before the post pass: style lock, renditions and overlays see the clip's frames
            started = time.perf_counter()
            frames, sidecar["fps_conversion"] = convert_fps(frames, render_fps, fps)
            sidecar["timings"]["fps_conversion_s"] = time.perf_counter() - started
        post = getattr(out, "post_inputs", None) or PostInputs()
        if request.style_lock is not None:
            frames, sidecar["style_lock"] = lock_style(request, frames, fps, post.source)
        if request.renditions:  # published before the sidecar that lists them
            sidecar["renditions"] = publish_renditions(request, frames, fps, prefix, output, logo=post.logo)
        uris = write_clip(frames, fps=fps, prefix_uri=prefix, sidecar=sidecar, codec=output.codec,
                          crf=output.crf, preset=output.preset)
    except Exception as error:  # storage failures are results, not crashes: the caller may retry
        return RenderResult(status="failed", seed=out.seed, timings=out.timings,
                            error=f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=3)}")
    timings = {**sidecar["timings"], "encode_upload_s": time.perf_counter() - tick}
    renditions = {entry["profile"]: entry["uri"] for entry in sidecar.get("renditions", [])}
    guides = {entry["profile"]: entry["guides_uri"] for entry in sidecar.get("renditions", []) if "guides_uri" in entry}
    return RenderResult(status="completed", seed=out.seed, clip_uri=uris.clip_uri, sidecar_uri=uris.sidecar_uri,
                        renditions=renditions, rendition_guides=guides, timings=timings, step_cache=step_cache)


def render_windowed(pipe, request: RenderRequest, output: OutputConfig, *, model_source: str | None = None,
                    callback: Callable[..., None] | None = None, **group) -> RenderResult | None:
    """Render a clip longer than one window (or a storyboard) window by window and publish it (engine/long.py).
    ``group``: a render group rank's ``experts``, ``predict``, ``publishes`` and ``barrier`` (see
    ``engine.long.render_long``); a rank that does not publish gets None."""
    from wan_dist.engine.long import render_long

    fields = render_long(pipe, request, output, model=model_record(pipe, model_source), versions=versions(),
                         callback=callback, **group)
    return None if fields is None else RenderResult(**fields)


def render(pipe, request: RenderRequest, output: OutputConfig, *, model_source: str | None = None,
           callback: Callable[..., None] | None = None) -> RenderResult:
    """Render ``request`` with ``pipe`` and publish ``{output.uri}/{name}/clip.mp4`` + ``clip.json``.

    Bad input raises ValueError naming the field (before anything is written). A clip longer than one window
    (``request.long``) renders window by window and is encoded as it goes (engine/long.py).
    """
    from wan_dist.engine.long_checks import is_windowed

    if is_windowed(request, pipe.spec):
        return render_windowed(pipe, request, output, model_source=model_source, callback=callback)
    out = generate_for(pipe, request, callback=callback)
    return publish(model_record(pipe, model_source), request, out, output)
