"""``load_pipeline(source, parallel=...)`` with more than one rank: the public API on a Ray render group renders
the same latents as one device (Ulysses 2, ring 2, CFG 2, Ulysses 2 + FSDP, disaggregated expert stages), and
``wan-dist render ... parallel.ulysses=2`` renders through it."""

from __future__ import annotations

import pytest
import torch

from parallel_cases import FRAMES, STEPS, make_inputs
from wan_dist import load_pipeline
from wan_dist.config import ParallelConfig

pytestmark = pytest.mark.slow

LAYOUTS = {
    "ulysses-2": ParallelConfig(ulysses=2),
    "ring-2": ParallelConfig(ring=2),
    "cfg-2": ParallelConfig(cfg=2),
    "ulysses-2-fsdp": ParallelConfig(ulysses=2, fsdp=True),
    "disaggregated": ParallelConfig(ulysses=2, placement="disaggregated"),
}
HEIGHT, WIDTH = 48, 80  # 3 x 5 latent patches per frame: sequences that need padding on 2 ranks


@pytest.fixture(scope="module")
def single():
    """The single-device pipeline and its latents for two distinct rows (the oracle)."""
    pipe = load_pipeline("tiny", dtype=torch.float32)
    spec = pipe.spec
    inputs = make_inputs(spec.dit.text_dim, spec.vae.z_dim, HEIGHT, WIDTH, spec.vae.spatial_stride)
    out = pipe.generate(**_kwargs(inputs))
    return inputs, out.frames


def _kwargs(inputs) -> dict:
    context, negative, latents = inputs
    return dict(prompt_embeds=context, negative_prompt_embeds=negative, latents=latents, height=HEIGHT, width=WIDTH,
                num_frames=FRAMES, num_inference_steps=STEPS, seed=3, output_type="latent")


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_a_parallel_pipeline_renders_the_latents_of_one_device(ray_local, single, name):
    inputs, expected = single
    with load_pipeline("tiny", dtype=torch.float32, parallel=LAYOUTS[name]) as pipe:
        assert pipe.group.config.world_size == 2
        out = pipe.generate(**_kwargs(inputs))
    assert out.frames.shape == expected.shape
    assert (out.frames - expected).abs().max().item() < 1e-5
    assert pipe.group is None  # closed by the with block: its ranks are gone


def test_a_dict_layout_and_bad_arguments(ray_local, single, tmp_path):
    """Also: LoRAs loaded the diffusers way on a group reach every rank (and render as on one device)."""
    from lora_files import wan_lora, write_lora

    with pytest.raises(ValueError, match="unknown field"):
        load_pipeline("tiny", parallel={"ulysses": 2, "rings": 2})
    one = load_pipeline("tiny", dtype=torch.float32)
    path = write_lora(wan_lora(one.spec.dit, seed=1), tmp_path / "style.safetensors")
    with load_pipeline("tiny", dtype=torch.float32, parallel={"ulysses": 2}) as pipe:
        with pytest.raises(ValueError, match="callback"):
            pipe.generate("a fox", callback=lambda *a: None)
        out = pipe.generate("a fox", height=32, width=32, num_frames=5, num_inference_steps=2, seed=1)
        for target in (pipe, one):
            target.load_lora_weights(path, adapter_name="style")
            target.load_lora_weights(path, adapter_name="style-low", load_into_transformer_2=True)
            target.set_adapters(["style", "style-low"], adapter_weights=[0.6, 1.2])
        with_lora = pipe.generate(**_kwargs(single[0]))
    assert out.frames.shape == (1, 5, 32, 32, 3)
    expected = one.generate(**_kwargs(single[0]))
    assert [(r["adapter"], r["scale"], r["experts"]) for r in expected.loras] == [("style", 0.6, [0]),
                                                                                   ("style-low", 1.2, [1])]
    assert (expected.frames - single[1]).abs().max() > 0.1
    assert (with_lora.frames - expected.frames).abs().max().item() < 1e-5
    assert [(r["scale"], r["transformer"]) for r in with_lora.loras] == [(0.6, "high"), (1.2, "low")]


def test_wan_dist_render_on_a_ulysses_2_group_renders_the_clip_of_one_device(tmp_path):
    """The command a user runs, in its own process (its own local Ray), against the single-device command."""
    import json
    import os
    import subprocess
    import sys

    from wan_dist.video.mp4 import decode_mp4

    env = {**os.environ, "WAN_DIST_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "RAY_ADDRESS": ""}
    clips = {}
    for name, extra in (("one", []), ("group", ["parallel.ulysses=2"])):
        args = ["render", "model=tiny", "prompt=a lighthouse at dusk", "seed=4", "height=48", "width=80",
                "num_frames=9", "sampling.num_inference_steps=4", f"output={tmp_path}", f"name={name}",
                "progress=false", "output.crf=0", *extra]
        done = subprocess.run([sys.executable, "-m", "wan_dist.cli.main", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        clips[name], _ = decode_mp4((tmp_path / name / "clip.mp4").read_bytes())
    assert clips["one"].shape == clips["group"].shape == (9, 48, 80, 3)
    assert abs(clips["one"].astype(int) - clips["group"].astype(int)).max() <= 2  # float rounding, then 8 bits
    sidecar = json.loads((tmp_path / "group" / "clip.json").read_text())
    assert sidecar["request"]["name"] == "group" and sidecar["settings"]["num_frames"] == 9
