"""Hydra task of ``wan-dist gallery``: (re)write the HTML gallery of a batch output (wan_dist.batch.gallery).

``output=`` is the batch's output (a folder or any fsspec URL); ``run=<id>`` writes that run's own gallery beside
its results table instead of ``{output}/gallery.html``. Exit status 1 with a one-line reason naming the setting
when there is nothing to show (``output: no batch results under ...``).
"""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

from wan_dist.config import GalleryConfig, from_dict

__all__ = ["gallery_main"]


def gallery_main(cfg: DictConfig) -> None:
    from wan_dist.batch import write_gallery
    from wan_dist.cli.paths import ray_job, resolve_output

    try:
        output = resolve_output("output", str(cfg.output.uri), cwd=os.getcwd(), job=ray_job(os.environ))
        config = from_dict(GalleryConfig, OmegaConf.to_container(cfg.gallery, resolve=True), path="gallery")
        run_id = None if cfg.run is None else str(cfg.run)
        manifest = None if cfg.manifest is None else str(cfg.manifest)
        uri = write_gallery(output, config, run_id=run_id, manifest=manifest)
    except ValueError as error:  # a bad setting, or GalleryError: nothing to show (both name the setting)
        raise SystemExit(f"wan-dist gallery: {error}") from None
    print(f"gallery: {uri}")
