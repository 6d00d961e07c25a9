"""Run one Hydra task: compose ``conf/<verb>.yaml`` with the command line's overrides, then call the task.

Its own module so that every entry point (``wan-dist <verb>`` in :mod:`wan_dist.cli.main`, ``python -m
wan_dist.cli.batch``) reaches Hydra the same way without the entry points importing each other.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

__all__ = ["conf_dir", "init_ray", "rewrite_overrides", "run_hydra"]

# Groups whose value may also be a free-form string: `model=/ckpt` means `model=custom model.source=/ckpt`.
_FREE_GROUPS = {"model": ("custom", "source"), "output": ("local", "uri")}


def conf_dir() -> Path:
    """The Hydra config folder: conf/ at the repository root."""
    return Path(__file__).resolve().parents[2] / "conf"


def rewrite_overrides(overrides: list[str]) -> list[str]:
    """Turn ``model=<path|url|repo>`` / ``output=<uri>`` into group option + field overrides."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key in _FREE_GROUPS and not (conf_dir() / key / f"{value}.yaml").exists():
            option, field_name = _FREE_GROUPS[key]
            out += [f"{key}={option}", f"{key}.{field_name}={value}"]
        else:
            out.append(item)
    return out


def run_hydra(verb: str, task: Callable, overrides: list[str]) -> None:
    """Call ``task(cfg)`` with ``conf/<verb>.yaml`` composed with ``overrides`` (Hydra's own parsing and errors)."""
    import hydra

    wrapped = hydra.main(config_path=str(conf_dir()), config_name=verb, version_base="1.3")(task)
    saved = sys.argv
    sys.argv = [f"wan-dist {verb}", *rewrite_overrides(overrides)]
    try:
        wrapped()
    finally:
        sys.argv = saved


def init_ray(ray_cfg) -> None:
    """Join the cluster of ``RAY_ADDRESS``, else start a local Ray sized by the verb's ``ray`` group
    (``num_cpus``, ``object_store_memory_mb``): never an existing cluster nobody named."""
    import ray

    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # Ray starts workers at niceness 15: on a machine doing anything else, this command's own render would get
        # a few percent of a core. A local Ray here is the user's foreground work: its workers run at normal niceness.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(address="local", num_cpus=ray_cfg.num_cpus, include_dashboard=False,
                 object_store_memory=int(ray_cfg.object_store_memory_mb) * 2**20)
