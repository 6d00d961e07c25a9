"""Hydra tasks of ``wan-dist render`` and ``wan-dist make-checkpoint``."""

from __future__ import annotations

import json
import logging

from omegaconf import DictConfig, OmegaConf

from wan_dist.config import OutputConfig, SamplingConfig, from_dict

log = logging.getLogger("wan_dist")


def _request_from_config(cfg: DictConfig):
    from wan_dist.engine.render import RenderRequest

    if cfg.sidecar:
        from wan_dist.storage.objects import read_bytes

        sidecar = json.loads(read_bytes(cfg.sidecar))
        source = sidecar["model"]["source"] or cfg.model.source
        return RenderRequest.from_sidecar(sidecar), source
    sampling = from_dict(SamplingConfig, OmegaConf.to_container(cfg.sampling, resolve=True))
    request = RenderRequest(prompt=cfg.prompt, negative_prompt=cfg.negative_prompt, image=cfg.image,
                            height=cfg.height, width=cfg.width, num_frames=cfg.num_frames, seed=cfg.seed,
                            sampling=sampling, name=cfg.name)
    return request, cfg.model.source


def render_main(cfg: DictConfig) -> None:
    from tqdm import tqdm

    from wan_dist.engine.pipeline import load_pipeline
    from wan_dist.engine.render import render
    from wan_dist.models.dtypes import torch_dtype

    output = from_dict(OutputConfig, OmegaConf.to_container(cfg.output, resolve=True))
    request, source = _request_from_config(cfg)
    device = cfg.model.device
    pipe = load_pipeline(source, device=device, dtype=torch_dtype(cfg.model.dtype, device),
                         layout=cfg.model.layout)
    bar = tqdm(desc="denoise", unit="step", disable=not cfg.progress)

    def progress(step: int, total: int, _latents, _estimate) -> None:
        bar.total = total
        bar.update(1)

    try:
        result = render(pipe, request, output, model_source=str(source), callback=progress)
    finally:
        bar.close()
    if result.status != "completed":
        raise SystemExit(f"render failed: {result.error}")
    log.info("clip: %s", result.clip_uri)
    log.info("sidecar: %s", result.sidecar_uri)
    print(result.clip_uri)


def make_checkpoint_main(cfg: DictConfig) -> None:
    from wan_dist.models.dtypes import torch_dtype
    from wan_dist.models.make_checkpoint import make_checkpoint

    folder = make_checkpoint(cfg.variant, cfg.out, layout=cfg.layout, seed=int(cfg.seed),
                             dtype=torch_dtype(cfg.dtype, "cpu"), shard_bytes=int(float(cfg.shard_mb) * 2**20))
    log.info("checkpoint written: %s", folder)
    print(folder)
