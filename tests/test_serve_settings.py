"""ServeSettings as users write it (conf/serve.yaml through Hydra, Serve config ``args`` as plain data): its blocks,
the one render-group spec it shares with batch runs, and errors that name a bad value by its full path."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from wan_dist.cli.compose import conf_dir
from wan_dist.config import BatchConfig, GroupSpec, ParallelConfig
from wan_dist.engine.group import GroupConfig
from wan_dist.serve.autoscale import RendererAutoscaling
from wan_dist.serve.settings import (AuthSettings, LimitSettings, RendererSettings, ServeSettings, WebhookSettings,
                                     settings_from_dict, settings_to_dict)


def composed(verb: str, *overrides: str):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(verb, overrides=list(overrides))


def serve_app(*overrides: str) -> dict:
    return OmegaConf.to_container(composed("serve", *overrides).serve.app, resolve=True)


def test_conf_serve_yaml_is_the_default_settings_and_takes_nested_overrides():
    assert settings_from_dict(serve_app()) == ServeSettings()
    settings = settings_from_dict(serve_app("serve.app.renderer.group.parallel.ulysses=2",
                                            "serve.app.auth.api_keys=[k1]", "serve.app.limits.burst=5",
                                            "serve.app.renderer.autoscaling={min_replicas: 0, max_replicas: 4}"))
    assert settings.renderer.group.world_size == 2 and settings.auth.api_keys == ("k1",)
    assert settings.limits == LimitSettings(burst=5)
    assert settings.renderer.autoscaling == RendererAutoscaling(min_replicas=0, max_replicas=4)


@pytest.mark.parametrize("override, message", [
    ("serve.app.webhooks.max_attempts=0", "serve.webhooks.max_attempts: must be >= 1, got 0"),
    ("serve.app.jobs.lease_s=0", "serve.jobs.lease_s: must be > 0, got 0"),
    ("serve.app.limits.rate_per_s=-1", "serve.limits.rate_per_s: must be > 0, got -1"),
    ("serve.app.previews.max_side=8", "serve.previews.max_side: must be >= 16, got 8"),
    ("serve.app.renderer.group.cpus_per_rank=0", "serve.renderer.group.cpus_per_rank: must be > 0, got 0"),
    ("serve.app.renderer.group.parallel.ulysses=0", "serve.renderer.group.parallel.ulysses: degree must be >= 1"),
    ("++serve.app.renderer.group.parallel.rings=2", r"serve.renderer.group.parallel: unknown field\(s\) \['rings'\]"),
    ("++serve.app.limits.rate=2", r"serve.limits: unknown field\(s\) \['rate'\]"),
    ("serve.app.renderer.autoscaling={jobs_per_replica: 0}",
     "serve.renderer.autoscaling.jobs_per_replica: must be > 0, got 0"),
    ("serve.app.renderer.autoscaling={min_replicas: 3, max_replicas: 2}",
     "serve.renderer.autoscaling: min_replicas / max_replicas: need 0 <= min_replicas <= max_replicas"),
])
def test_a_nested_bad_value_is_named_by_its_full_path(override, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        settings_from_dict(serve_app(override))


def test_wan_dist_serve_refuses_a_nested_bad_value_in_one_line_before_starting(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    process = subprocess.run([sys.executable, "-m", "wan_dist.cli.main", "serve", "serve.app.webhooks.max_attempts=0"],
                             cwd=tmp_path, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                             timeout=120)
    assert process.returncode == 1, process.stderr
    assert process.stderr.strip().splitlines()[-1] == "wan-dist serve: serve.webhooks.max_attempts: must be >= 1, got 0"
    assert not list(tmp_path.iterdir())  # nothing started, nothing written


def test_a_block_built_in_python_names_its_class_and_field():
    with pytest.raises(ValueError, match=r"^WebhookSettings.max_attempts: must be >= 1, got 0"):
        WebhookSettings(max_attempts=0)
    with pytest.raises(ValueError, match=r"^ServeSettings.auth: must be a AuthSettings"):
        ServeSettings(auth={"api_keys": ["k"]})
    # disaggregated stages report progress, stop between steps and send previews (test_serve_disaggregated.py)
    disaggregated = GroupSpec(parallel=ParallelConfig(ulysses=2, placement="disaggregated"))
    assert RendererSettings(group=disaggregated).group.parallel.placement == "disaggregated"


def test_batch_runs_and_renderers_place_their_groups_with_one_group_spec():
    """The placement fields live in GroupSpec only: batch.group and serve.app.renderer.group are that block (the
    batch's layout is its top-level `parallel`, spelled as for `wan-dist render`), and GroupConfig extends it."""
    spec_fields = {f.name for f in dataclasses.fields(GroupSpec)}
    serve_group = composed("serve").serve.app.renderer.group
    batch = composed("batch")
    assert set(serve_group) == spec_fields == set(batch.batch.group) | {"parallel"}
    assert set(serve_group.parallel) == set(batch.parallel) == {f.name for f in dataclasses.fields(ParallelConfig)}
    assert issubclass(GroupConfig, GroupSpec)
    assert {f.name for f in dataclasses.fields(BatchConfig)} & (spec_fields - {"parallel"}) == set()
    assert {f.name for f in dataclasses.fields(ServeSettings)} & spec_fields == set()

    group = GroupSpec(parallel=ParallelConfig(ring=2), use_gpus=True, cpus_per_rank=2.0, step_hook="m:f")
    config = GroupConfig.from_spec(group, source="tiny", layout="reference")
    assert GroupSpec(**{name: getattr(config, name) for name in spec_fields}) == group
    assert config.rank_bundle() == {"CPU": 2.0, "GPU": 1} and config.world_size == 2
    assert GroupSpec().for_cluster({"CPU": 8}).use_gpus is False
    assert GroupSpec().for_cluster({"CPU": 8, "GPU": 1}).use_gpus is True
    assert GroupSpec(use_gpus=False).for_cluster({"GPU": 8}).use_gpus is False


def test_batch_cli_names_a_bad_group_value_by_its_path(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    process = subprocess.run([sys.executable, "-m", "wan_dist.cli.batch", "batch.group.cpus_per_rank=0"],
                             cwd=tmp_path, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                             timeout=120)
    assert process.returncode == 1
    assert process.stderr.strip().splitlines()[-1] == "wan-dist batch: batch.group.cpus_per_rank: must be > 0, got 0"


def test_settings_travel_as_plain_data_and_back():
    """What a renderer replica gets (Serve passes its arguments as plain data)."""
    settings = ServeSettings(models=("tiny", "t2v-a14b"), auth=AuthSettings(api_keys=("a", "b")),
                             webhooks=WebhookSettings(secret="whsec_x"),
                             renderer=RendererSettings(autoscaling=RendererAutoscaling(max_replicas=3),
                                                       group=GroupSpec(parallel=ParallelConfig(ulysses=2))))
    plain = settings_to_dict(settings)
    assert plain["auth"]["api_keys"] == ["a", "b"] and plain["renderer"]["group"]["parallel"]["ulysses"] == 2
    assert settings_from_dict(plain) == settings


def test_the_flat_names_of_earlier_versions_still_read():
    old = {"models": ["wan2.2-t2v-a14b"], "device": "cuda", "parallel": {"ulysses": 2}, "renderer_autoscaling": {},
           "rate_per_s": 5.0, "webhook_max_attempts": 2, "interactive_per_batch_row": 1, "cpus_per_rank": 0.5}
    settings = settings_from_dict(old)
    assert settings.models == ("t2v-a14b",) and settings.renderer.autoscaling is None
    assert settings.renderer.group == GroupSpec(parallel=ParallelConfig(ulysses=2), use_gpus=True, cpus_per_rank=0.5)
    assert settings.limits.rate_per_s == 5.0 and settings.webhooks.max_attempts == 2
    assert settings.batches.interactive_per_row == 1
    with pytest.raises(ValueError, match=r"^serve: unknown field\(s\) \['gpus_per_replica'\]"):
        settings_from_dict({**old, "gpus_per_replica": 8})


def test_cluster_serve_configs_use_the_blocks():
    import yaml

    text = (Path(__file__).resolve().parents[1] / "cluster" / "serve-config.yaml").read_text()
    (app,) = yaml.safe_load(text)["applications"]
    assert not set(app["args"]) - {f.name for f in dataclasses.fields(ServeSettings)}  # no flat (moved) names
