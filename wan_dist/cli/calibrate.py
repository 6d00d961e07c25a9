"""Hydra task of ``wan-dist calibrate-cache``: a checkpoint's step-cache profile, written beside it."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("wan_dist")

_SETTINGS = ("num_inference_steps", "shift", "height", "width", "num_frames", "guidance_scale", "guidance_scale_2")


def calibrate_cache_main(cfg: DictConfig) -> None:
    from wan_dist.engine.loading import load_pipeline
    from wan_dist.engine.sources import resolve_source
    from wan_dist.engine.step_cache import DEFAULT_PROMPTS, calibrate, profile_path, write_profile
    from wan_dist.models.dtypes import torch_dtype

    folder = resolve_source(cfg.model.source, layout=cfg.model.layout)
    pipe = load_pipeline(folder, device=cfg.model.device, dtype=torch_dtype(cfg.model.dtype, cfg.model.device),
                         layout=cfg.model.layout)
    prompts = DEFAULT_PROMPTS if cfg.prompts is None else OmegaConf.to_container(cfg.prompts, resolve=True)
    if isinstance(prompts, str):
        prompts = [prompts]
    settings = {name: cfg[name] for name in _SETTINGS if cfg.get(name) is not None}
    try:
        profile = calibrate(pipe, list(prompts), seed=int(cfg.seed), max_skips=int(cfg.max_skips), **settings)
    except ValueError as error:
        raise SystemExit(f"wan-dist calibrate-cache: {error}") from None
    path = write_profile(profile, cfg.out or profile_path(pipe.info))
    for index, expert in enumerate(profile.experts):
        ratios = ", ".join(f"{r:.3f}" for r in expert.ratios)
        log.info("expert %d: %d steps, ratios %s; teacache line %s; skipped steps estimate order %d", index,
                 len(expert.ratios), ratios, [round(c, 4) for c in expert.teacache], expert.order)
    print(path)
