"""Hydra tasks of ``wan-dist train`` (conf/train.yaml -> TrainConfig -> wan_dist.train.train) and
``wan-dist train-lora`` (conf/train-lora.yaml -> LoraTrainConfig -> wan_dist.train.train_lora)."""

from __future__ import annotations

import json
import logging
import os

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("wan_dist")
_NOT_TRAIN_FIELDS = ("steps", "local", "ray")  # the CLI's own settings, not TrainConfig fields


def _run_fields(cfg: DictConfig) -> dict:
    """The composed config's run fields (not the CLI's own), ``out`` made an absolute local (or shared) folder."""
    from wan_dist.cli.paths import ray_job, resolve_output

    fields = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in _NOT_TRAIN_FIELDS}
    if "://" in str(fields["out"]):
        raise ValueError(f"out: {fields['out']!r} is a URL; training writes a local (or shared) folder")
    fields["out"] = resolve_output("out", str(fields["out"]), cwd=os.getcwd(), job=ray_job(os.environ))
    return fields


def _resolve_input(field: str, value) -> str:
    from wan_dist.cli.paths import ray_job, resolve_input

    return resolve_input(field, str(value), cwd=os.getcwd(), job=ray_job(os.environ))


def train_config(cfg: DictConfig):
    """TrainConfig of the composed config; ValueError names a bad field."""
    from wan_dist.config.train import train_config_from_dict

    fields = _run_fields(cfg)
    for field in ("vae_from", "vae_init"):
        if fields.get(field):
            if "://" in str(fields[field]):
                raise ValueError(f"{field}: {fields[field]!r} is a URL; give a local (or shared) folder")
            fields[field] = _resolve_input(field, fields[field])
    return train_config_from_dict(fields)


def lora_train_config(cfg: DictConfig):
    """LoraTrainConfig of the composed config; ValueError names a bad field."""
    from wan_dist.config.train_lora import lora_train_config_from_dict

    fields = _run_fields(cfg)
    data = dict(fields.get("data") or {})
    if data.get("path"):
        data["path"] = _resolve_input("data.path", data["path"])
    fields["data"] = data
    return lora_train_config_from_dict(fields)


def _main(verb: str, cfg: DictConfig, make_config, run):
    """``run(make_config(cfg))`` in this process (``local``) or on a Ray it starts or joins (RAY_ADDRESS); a bad
    field exits naming it, before any Ray starts."""
    try:
        config = make_config(cfg)
    except ValueError as error:
        raise SystemExit(f"wan-dist {verb}: {error}") from None
    if cfg.local:
        return run(config, local=True)
    import ray

    from wan_dist.cli.compose import init_ray

    init_ray(cfg.ray)
    try:
        return run(config)
    finally:
        ray.shutdown()


def train_lora_main(cfg: DictConfig) -> None:
    from wan_dist.train import train_lora

    result = _main("train-lora", cfg, lora_train_config, train_lora)
    log.info("lora: %s", json.dumps(result.summary))
    for word, path in result.files.items():
        log.info("%s-noise expert: %s (loras=[{path: %s, transformer: %s}])", word, path, path, word)


def train_main(cfg: DictConfig) -> None:
    from wan_dist.train import train

    result = _main("train", cfg, train_config, train)
    for stage, summary in result.summaries.items():
        log.info("%s: %s", stage, json.dumps(summary))
    if result.model is not None:
        log.info("model: %s (load_pipeline(%r) or `wan-dist render model=%s`)", result.model, str(result.model),
                 result.model)
