"""Hydra task of ``wan-dist manifest``: write a Parquet batch manifest from a text file of prompts."""

from __future__ import annotations

import json
import sys

from omegaconf import DictConfig, OmegaConf

from wan_dist.cli.plan import _choice, preset_name

__all__ = ["manifest_main", "SHARED_COLUMNS"]

# Keys of conf/manifest.yaml copied into every row when not null.
SHARED_COLUMNS = ("negative_prompt", "image", "width", "height", "num_frames", "duration_s", "fps",
                  "fps_mode", "num_inference_steps", "guidance_scale", "guidance_scale_2", "boundary_ratio", "shift",
                  "solver", "schedule", "cache", "cache_threshold", "cache_retention", "output_prefix", "metadata",
                  "camera", "layers", "long")


def manifest_main(cfg: DictConfig) -> None:
    from wan_dist.batch.manifest import manifest_from_prompts, manifest_from_table, manifest_table, write_manifest
    from wan_dist.storage.objects import read_bytes

    model = preset_name(_choice(), cfg.model.get("source"))
    defaults = {}
    for key in SHARED_COLUMNS:
        value = cfg[key]
        if value is None:
            continue
        if key in ("metadata", "camera", "layers", "long") and not isinstance(value, str):  # a mapping: JSON text
            value = json.dumps(OmegaConf.to_container(value, resolve=True), sort_keys=True)
        defaults[key] = value
    text = read_bytes(str(cfg.prompts)).decode("utf-8")
    rows = manifest_from_prompts(text.splitlines(), model=model, seed=cfg.seed, id_prefix=str(cfg.id_prefix),
                                 **defaults)
    if not rows:
        raise SystemExit(f"wan-dist manifest: no prompts in {cfg.prompts}")
    checked = manifest_from_table(manifest_table(rows), default_model=model, layout=cfg.model.layout,
                                  uri=str(cfg.out))
    for error in checked.invalid:
        print(f"invalid: {error}", file=sys.stderr)
    if checked.invalid and not cfg.allow_invalid:
        raise SystemExit(f"wan-dist manifest: {len(checked.invalid)} invalid row(s); nothing written "
                         "(allow_invalid=true writes them anyway)")
    uri = write_manifest(rows, str(cfg.out))
    print(f"{uri} ({len(rows)} rows, {len(checked.invalid)} invalid)")
