"""Hydra tasks of ``wan-dist render`` and ``wan-dist make-checkpoint``."""

from __future__ import annotations

import json
import logging

from omegaconf import DictConfig, ListConfig, OmegaConf

from wan_dist.config import OutputConfig, ParallelConfig, from_dict

log = logging.getLogger("wan_dist")


def _request_from_config(cfg: DictConfig, folder):
    """The request of ``wan-dist render``, built and checked (engine.request) against the checkpoint in
    ``folder`` before anything loads: a bad value ends the command with one line naming the field."""
    from wan_dist.engine.request import REQUEST_FIELDS, RenderRequest, RequestError, build_request
    from wan_dist.models.checkpoint import detect_checkpoint

    if cfg.sidecar:
        from wan_dist.storage.objects import read_bytes

        return RenderRequest.from_sidecar(json.loads(read_bytes(cfg.sidecar)))
    info = detect_checkpoint(folder)
    sampling = OmegaConf.to_container(cfg.sampling, resolve=True)
    # every request field is a top-level key of conf/render.yaml, the sampling ones in the sampling group
    fields = {f.name: sampling[f.name] if f.name in sampling else cfg.get(f.name) for f in REQUEST_FIELDS}
    # structured fields (metadata, camera, layers, loras) arrive as Hydra mappings: plain dicts and lists for the request
    fields = {name: OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig))
              else value for name, value in fields.items()}
    try:
        return build_request(fields, spec=info.spec, layout=info.layout).request
    except RequestError as error:
        raise SystemExit(f"wan-dist render: {error}") from None


def _source_of(cfg: DictConfig) -> str:
    if cfg.sidecar:
        from wan_dist.storage.objects import read_bytes

        return json.loads(read_bytes(cfg.sidecar))["model"]["source"] or cfg.model.source
    return cfg.model.source


def render_main(cfg: DictConfig) -> None:
    from tqdm import tqdm

    from wan_dist.engine.loading import load_pipeline
    from wan_dist.engine.render import render
    from wan_dist.engine.sources import resolve_source
    from wan_dist.models.dtypes import torch_dtype

    output = from_dict(OutputConfig, OmegaConf.to_container(cfg.output, resolve=True))
    source = _source_of(cfg)
    folder = resolve_source(source, layout=cfg.model.layout)  # configs only: the weights load below
    request = _request_from_config(cfg, folder)
    device = cfg.model.device
    parallel = from_dict(ParallelConfig, OmegaConf.to_container(cfg.parallel, resolve=True))
    if parallel.world_size > 1:  # a Ray render group of that layout; its result rank publishes the clip
        with load_pipeline(folder, device=device, dtype=torch_dtype(cfg.model.dtype, device),
                           layout=cfg.model.layout, parallel=parallel) as group_pipe:
            result = group_pipe.group.render(request, output, model_source=str(source))
        return _report(result)
    pipe = load_pipeline(folder, device=device, dtype=torch_dtype(cfg.model.dtype, device),
                         layout=cfg.model.layout)
    bar = tqdm(desc="denoise", unit="step", disable=not cfg.progress)

    def progress(step: int, total: int, _latents, _estimate) -> None:
        bar.total = total
        bar.update(1)

    try:
        result = render(pipe, request, output, model_source=str(source), callback=progress)
    finally:
        bar.close()
    _report(result)


def _report(result) -> None:
    if result.status != "completed":
        raise SystemExit(f"render failed: {result.error}")
    log.info("clip: %s", result.clip_uri)
    log.info("sidecar: %s", result.sidecar_uri)
    for profile, uri in result.renditions.items():
        log.info("rendition %s: %s", profile, uri)
    print(result.clip_uri)


def make_checkpoint_main(cfg: DictConfig) -> None:
    from wan_dist.models.dtypes import torch_dtype
    from wan_dist.models.make_checkpoint import make_checkpoint

    folder = make_checkpoint(cfg.variant, cfg.out, layout=cfg.layout, seed=int(cfg.seed),
                             dtype=torch_dtype(cfg.dtype, "cpu"), shard_bytes=int(float(cfg.shard_mb) * 2**20))
    log.info("checkpoint written: %s", folder)
    print(folder)
