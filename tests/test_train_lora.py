"""``wan-dist train-lora`` (issue 16 item 6): a LoRA trained on a frozen base from captioned clips or images.

The trained file is checked against diffusers' own loader: a WanPipeline with ``load_lora_weights`` of the two
files (the low-noise one ``load_into_transformer_2``) renders what our pipeline renders with them as ``loras``,
and what the trained adapters themselves predict. Small tiny-model runs keep it fast; the loss must fall.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from wan_dist.config.train import FlowConfig, OptimConfig
from wan_dist.config.train_lora import LoraDataConfig, LoraTrainConfig, lora_train_config_from_dict

SIZE = 32


def _scene_frames(seed: int, frames: int) -> tuple[np.ndarray, str]:
    from wan_dist.world import caption, render_clip, sample_scene

    scene = sample_scene(seed, split="train")
    return render_clip(scene, height=SIZE, width=SIZE, num_frames=frames), caption(scene, rng=seed)


def _image_folder(folder, count=4):
    """Captioned images (the world's first frames, inverted: a 'style' the base does not draw)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        frames, text = _scene_frames(i, 1)
        Image.fromarray(255 - frames[0]).save(folder / f"item{i}.png")
        (folder / f"item{i}.txt").write_text(f"inverted. {text}")
    return folder


def _config(out, data, *, base, steps=20, **kwargs) -> LoraTrainConfig:
    return LoraTrainConfig(out=str(out), base=base, rank=4, alpha=8.0, progress=False,
                           data=LoraDataConfig(path=str(data), height=SIZE, width=SIZE, fixed_batch=True),
                           optim=OptimConfig(steps=steps, batch_size=2, lr=1e-2, checkpoint_every=10),
                           flow=FlowConfig(cfg_dropout=0.0), **kwargs)


def _state(out):
    from wan_dist.train.loop import STATE_FILE, latest_checkpoint

    return torch.load(latest_checkpoint(out / "ray" / "lora") / STATE_FILE, weights_only=False)


@pytest.fixture(scope="module")
def tiny(checkpoint_factory):
    return str(checkpoint_factory("tiny", "diffusers"))


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    from wan_dist.train import train_lora

    root = tmp_path_factory.mktemp("lora")
    result = train_lora(_config(root / "run", _image_folder(root / "data"), base=tiny), local=True)
    return result


def test_the_loss_falls_and_a_file_per_expert_holds_only_the_factors(trained):
    summary = trained.summary
    assert summary["step"] == 20 and summary["last_loss"] < 0.7 * summary["first_loss"]
    assert set(trained.files) == {"high", "low"}
    from safetensors import safe_open

    with safe_open(str(trained.files["high"]), "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    assert keys and all(k.startswith("transformer.blocks.") and k.endswith((".lora_A.weight", ".lora_B.weight"))
                        for k in keys)
    config = json.loads(metadata["lora_adapter_metadata"])
    assert (config["transformer.r"], config["transformer.lora_alpha"]) == (4, 8.0)
    assert summary["files"]["high"]["bytes"] < 100_000 and (trained.out / "lora_loss.png").stat().st_size > 1000


@torch.no_grad()
def test_the_files_render_in_diffusers_as_in_our_pipeline_and_as_the_trained_adapters_predict(trained, tiny):
    from diffusers import WanPipeline

    from wan_dist.config.train_lora import DEFAULT_TARGETS
    from wan_dist.engine.loading import load_pipeline
    from wan_dist.engine.loras import lora_specs
    from wan_dist.train.lora import LoraAdapter

    pipe = load_pipeline(tiny, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    dit = pipe.spec.dit
    inputs = dict(prompt_embeds=torch.randn(1, 12, dit.text_dim, generator=generator),
                  negative_prompt_embeds=torch.randn(1, 12, dit.text_dim, generator=generator),
                  latents=torch.randn(1, 16, 3, SIZE // 8, SIZE // 8, generator=generator), height=SIZE, width=SIZE,
                  num_frames=9, num_inference_steps=6, guidance_scale=4.0, guidance_scale_2=3.0, output_type="latent")
    loras = [{"path": str(trained.files["high"]), "transformer": "high"},
             {"path": str(trained.files["low"]), "transformer": "low"}]
    ours = pipe.generate(**{**inputs, "latents": inputs["latents"].clone()}, seed=0, loras=loras).frames
    base = pipe.generate(**{**inputs, "latents": inputs["latents"].clone()}, seed=0).frames
    oracle = WanPipeline.from_pretrained(tiny, torch_dtype=torch.float32)
    oracle.load_lora_weights(str(trained.files["high"]), adapter_name="high")
    oracle.load_lora_weights(str(trained.files["low"]), adapter_name="low", load_into_transformer_2=True)
    expected = oracle(**{**inputs, "latents": inputs["latents"].clone()}).frames
    assert (ours - expected).abs().max().item() <= 1e-5
    assert (ours - base).abs().max().item() > 1e-3  # the LoRA changes the render

    # the trained adapters (from the checkpoint) predict what the pipeline's experts predict with the files
    state = _state(trained.out)["modules"]
    x = torch.randn(1, 16, 3, SIZE // 8, SIZE // 8, generator=generator)
    t, context = torch.tensor([900.0]), torch.randn(1, 12, dit.text_dim, generator=generator)
    pipe.loras.sync(lora_specs(loras))
    with_files = [expert(x, t, context) for expert in pipe.experts]
    fresh = load_pipeline(tiny, dtype=torch.float32)
    for e, name in enumerate(("lora_high", "lora_low")):
        adapter = LoraAdapter(fresh.experts[e], targets=DEFAULT_TARGETS, rank=4, alpha=8.0, seed=0)
        adapter.load_state_dict(state[name])
        torch.testing.assert_close(adapter(x, t, context), with_files[e], atol=1e-5, rtol=1e-5)


def test_a_rerun_resumes_to_the_same_factors_as_one_straight_run(tiny, tmp_path):
    from wan_dist.train import train_lora

    data = _image_folder(tmp_path / "data", count=2)
    straight = train_lora(_config(tmp_path / "straight", data, base=tiny, steps=20, experts="low"), local=True)
    train_lora(_config(tmp_path / "resumed", data, base=tiny, steps=10, experts="low"), local=True)
    resumed = train_lora(_config(tmp_path / "resumed", data, base=tiny, steps=20, experts="low"), local=True)
    assert resumed.summary["start_step"] == 10 and set(resumed.files) == {"low"}
    a, b = _state(straight.out)["modules"]["lora_low"], _state(resumed.out)["modules"]["lora_low"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    with pytest.raises(ValueError, match=r"out: .* other rank"):
        train_lora(replace(_config(tmp_path / "resumed", data, base=tiny, experts="low"), rank=8), local=True)


def test_a_local_float32_run_loads_the_base_once_another_dtype_loads_its_own(tiny, tmp_path, monkeypatch):
    import wan_dist.engine.loading as loading
    from wan_dist.train import train_lora

    loads = []
    real = loading.load_pipeline
    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: loads.append(k["dtype"]) or real(*a, **k))
    data = _image_folder(tmp_path / "data", count=2)
    train_lora(_config(tmp_path / "f32", data, base=tiny, steps=2, experts="low"), local=True)
    assert loads == [torch.float32]  # encoded the data, then trained on the same pipeline
    loads.clear()
    train_lora(replace(_config(tmp_path / "bf16", data, base=tiny, steps=2, experts="low"), dtype="bfloat16"),
               local=True)
    assert loads == [torch.float32, torch.bfloat16]  # the data is encoded in float32 whatever the base trains in


def test_a_bfloat16_base_trains_float32_factors_that_every_step_updates(tiny, tmp_path):
    from wan_dist.train import train_lora

    data = _image_folder(tmp_path / "data", count=2)
    result = train_lora(replace(_config(tmp_path / "run", data, base=tiny, steps=6, experts="high"),
                                dtype="bfloat16"), local=True)
    state = _state(result.out)["modules"]["lora_high"]
    assert all(t.dtype == torch.float32 for t in state.values())
    ups = [t for k, t in state.items() if k.startswith("up.")]
    assert all(t.abs().max() > 0 for t in ups)  # zeros at step 0: each step's update reached every factor
    losses = [loss for _, loss, _ in _state(result.out)["history"]]
    assert losses[-1] < losses[0]

    # the branch a forward runs holds the factors as they are now (an optimizer step changes them in place)
    from wan_dist.config.train_lora import DEFAULT_TARGETS
    from wan_dist.models.lora_apply import runtime_branches
    from wan_dist.models.presets import get_preset
    from wan_dist.train.lora import LoraAdapter
    from wan_dist.train.stages import init_dit

    expert = init_dit(get_preset("tiny"), seed=0).to(torch.bfloat16).requires_grad_(False)
    adapter = LoraAdapter(expert, targets=DEFAULT_TARGETS, rank=2, alpha=2.0, seed=0)
    with torch.no_grad():
        for up in adapter.up.values():
            up.fill_(0.25)
    dit = expert.config
    adapter(torch.randn(1, dit.in_channels, 1, 4, 4), torch.tensor([500.0]), torch.randn(1, 3, dit.text_dim))
    for branch in runtime_branches(expert).values():
        (down, up, _), = branch.low_rank
        assert up.dtype == torch.bfloat16 and bool((up == 0.25).all())


def test_clips_from_a_parquet_manifest_train_an_i2v_base(checkpoint_factory, tmp_path):
    """A manifest of MP4 clips (relative paths) on an image-to-video base: each clip's first frame conditions it."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.torch import load_file

    from wan_dist.train import train_lora
    from wan_dist.video.mp4 import encode_mp4

    (tmp_path / "clips").mkdir()
    rows = []
    for i in range(2):
        frames, text = _scene_frames(10 + i, 9)
        (tmp_path / "clips" / f"c{i}.mp4").write_bytes(encode_mp4(frames, 16))
        rows.append({"video": f"clips/c{i}.mp4", "caption": text})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "manifest.parquet")
    base = str(checkpoint_factory("tiny-i2v", "diffusers"))
    result = train_lora(_config(tmp_path / "run", tmp_path / "manifest.parquet", base=base, steps=10,
                                experts="high"), local=True)
    assert set(result.files) == {"high"} and result.summary["last_loss"] < result.summary["first_loss"]
    tensors = load_file(next((tmp_path / "run" / "data").glob("latents-*.safetensors")))
    assert tensors["latents"].shape[0] == 2 and "image_latents" in tensors


def test_bad_data_and_config_are_refused_naming_the_field(tmp_path):
    from wan_dist.train.lora_data import read_lora_items

    folder = _image_folder(tmp_path / "data", count=2)
    (folder / "item1.txt").unlink()
    with pytest.raises(ValueError, match=r"data.path: .*item1.png has no caption file item1.txt"):
        read_lora_items(LoraDataConfig(path=str(folder)), height=SIZE, width=SIZE, num_frames=9)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"data.path: .* holds no clips"):
        read_lora_items(LoraDataConfig(path=str(tmp_path / "empty")), height=SIZE, width=SIZE, num_frames=9)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": ["item0.png"]}), tmp_path / "data" / "m.parquet")
    with pytest.raises(ValueError, match=r"needs a `caption` column"):
        read_lora_items(LoraDataConfig(path=str(tmp_path / "data" / "m.parquet")), height=SIZE, width=SIZE,
                        num_frames=9)
    for fields, message in (({"experts": "middle"}, r"experts: must be one of high, low, both"),
                            ({"rank": 0}, r"rank: must be >= 1"), ({"targets": ["blocks.("]}, r"targets: .*regular"),
                            ({"learning_rate": 1}, r"unknown field\(s\) \['learning_rate'\]")):
        with pytest.raises(ValueError, match=message):
            lora_train_config_from_dict({"out": "x", "data": {"path": "d"}, **fields})
    from wan_dist.models.presets import get_preset
    from wan_dist.train.lora import LoraAdapter
    from wan_dist.train.stages import init_dit

    with pytest.raises(ValueError, match=r"targets: no Linear module"):
        LoraAdapter(init_dit(get_preset("tiny"), seed=0), targets=("nothing",), rank=2, alpha=2, seed=0)


@pytest.mark.parametrize("fields", [{"cpus_per_worker": 0}, {"num_workers": 0}, {"threads_per_worker": 0}])
def test_bad_worker_settings_are_refused_naming_the_field(fields):
    (field, value), = fields.items()
    with pytest.raises(ValueError, match=rf"LoraTrainConfig.{field}: must be "):
        lora_train_config_from_dict({"out": "x", "data": {"path": "d"}, **fields})
    from wan_dist.config.train import TrainConfig

    with pytest.raises(ValueError, match=rf"TrainConfig.{field}: must be "):
        TrainConfig(out="x", **fields)


@pytest.mark.parametrize("verb", ["train-lora", "train"])
def test_the_cli_refuses_a_bad_cpus_per_worker_naming_the_field(verb, tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from wan_dist.cli.main import conf_dir
    from wan_dist.cli.train import train_lora_main, train_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(verb, overrides=["out=run", "data.path=d", "cpus_per_worker=0"] if verb == "train-lora"
                      else ["out=run", "cpus_per_worker=0"])
    owner = "LoraTrainConfig" if verb == "train-lora" else "TrainConfig"
    with pytest.raises(SystemExit, match=rf"wan-dist {verb}: {owner}.cpus_per_worker: must be > 0, got 0"):
        (train_lora_main if verb == "train-lora" else train_main)(cfg)
    assert not (tmp_path / "run").exists()  # refused before anything ran


def test_the_cli_trains_and_the_result_renders_through_the_cli(tiny, tmp_path):
    data = _image_folder(tmp_path / "data", count=2)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    run = subprocess.run([sys.executable, "-m", "wan_dist.cli.main", "train-lora", f"out={tmp_path / 'run'}",
                          f"base={tiny}", f"data.path={data}", "data.height=32", "data.width=32", "optim.steps=4",
                          "optim.batch_size=1", "rank=2", "local=true", "progress=false"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "run" / "lora" / "high_noise_model.safetensors").exists()
    assert "high_noise_model.safetensors" in run.stdout + run.stderr
    bad = subprocess.run([sys.executable, "-m", "wan_dist.cli.main", "train-lora", f"out={tmp_path / 'x'}",
                          f"data.path={data}", "experts=middle"], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode != 0 and "experts: must be one of high, low, both" in bad.stderr


@pytest.mark.slow
def test_ray_train_with_two_workers_resumes_a_local_run(tiny, tmp_path, ray_local):
    from wan_dist.train import train_lora

    data = _image_folder(tmp_path / "data", count=2)
    train_lora(_config(tmp_path / "run", data, base=tiny, steps=4), local=True)
    result = train_lora(replace(_config(tmp_path / "run", data, base=tiny, steps=8), num_workers=2))
    assert (result.summary["start_step"], result.summary["step"]) == (4, 8)
    assert len(_state(tmp_path / "run")["history"]) == 8


@pytest.mark.slow
def test_an_fsdp_sharded_base_trains_the_same_factors_as_a_replicated_one(tiny, tmp_path, ray_local):
    """Two Ray Train workers: the frozen experts sharded over them by FSDP2, or each holding them all; the
    factors (replicated, DDP) come out the same (the same draws on each worker, the same math)."""
    from wan_dist.train import train_lora

    data = _image_folder(tmp_path / "data", count=2)
    runs, held = {}, {}
    for fsdp in (False, True):
        out = tmp_path / f"fsdp-{fsdp}"
        result = train_lora(replace(_config(out, data, base=tiny, steps=4), num_workers=2, fsdp=fsdp))
        assert result.summary["step"] == 4
        runs[fsdp] = _state(out)["modules"]
        held[fsdp] = result.summary["base_bytes_per_worker"]
    assert held[True] < 0.6 * held[False]  # each worker held about half of the experts
    for name, factors in runs[False].items():
        for key, value in factors.items():
            torch.testing.assert_close(runs[True][name][key], value, atol=1e-5, rtol=1e-4, msg=f"{name}.{key}")
    assert any(v.abs().max() > 0 for k, v in runs[True]["lora_high"].items() if k.startswith("up."))
