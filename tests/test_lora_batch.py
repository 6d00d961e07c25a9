"""LoRAs per row of a batch (issue 16): one warm render group renders rows with no LoRA, LoRA A, LoRA B on the
low-noise expert only, A again and none again, each as the single-process pipeline renders that row alone
(so a LoRA neither leaks into the next row nor is lost when the group switches back)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lora_files import wan_lora, write_lora
from wan_dist.batch.manifest import write_manifest
from wan_dist.batch.runner import BatchRunner
from wan_dist.config import BatchConfig, GroupSpec, OutputConfig
from wan_dist.models.presets import get_preset
from wan_dist.video.mp4 import decode_mp4, encode_mp4

pytestmark = pytest.mark.slow

FAST = {"model": "tiny", "height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 2, "seed": 5,
        "prompt": "a kite over a beach"}


def test_rows_with_different_loras_render_on_one_warm_group_as_each_alone(ray_local, tmp_path):
    from wan_dist import load_pipeline
    from wan_dist.engine.render import RenderRequest, generate_for

    dit = get_preset("tiny").dit
    a = write_lora(wan_lora(dit, seed=21), tmp_path / "a.safetensors")
    b = write_lora(wan_lora(dit, seed=22), tmp_path / "b.safetensors")
    loras = {"none-1": [], "a-1": [{"path": a, "scale": 1.0}], "b-low": [{"path": b, "scale": 0.8, "transformer": "low"}],
             "a-2": [{"path": a, "scale": 1.0}], "none-2": []}
    rows = [{"id": row_id, **FAST, **({"loras": value} if value else {})} for row_id, value in loras.items()]
    write_manifest(rows, str(tmp_path / "m.parquet"))
    out = tmp_path / "out"
    config = BatchConfig(manifest=str(tmp_path / "m.parquet"), groups=1, group=GroupSpec(cpus_per_rank=0.5),
                         progress_interval_s=0.5)
    summary = BatchRunner(config, OutputConfig(uri=str(out), crf=0)).run()
    assert (summary["completed"], summary["failed"]) == (5, 0)  # groups=1: every row on the same warm group

    pipe = load_pipeline("tiny", dtype=torch.float32)
    clips = {}
    for row_id in loras:
        sidecar = json.loads((out / row_id / "clip.json").read_text())
        assert [entry["uri"] for entry in sidecar["loras"]] == [entry["path"] for entry in loras[row_id]]
        got, _ = decode_mp4((out / row_id / "clip.mp4").read_bytes())
        alone = generate_for(pipe, RenderRequest.from_sidecar(sidecar))  # a fresh request on this process's pipeline
        reference, _ = decode_mp4(encode_mp4(alone.frames[0], 16, crf=0))
        # the same frames through the same encoder (4:2:0 chroma loses detail even at crf 0)
        assert np.abs(got.astype(int) - reference.astype(int)).max() <= 2, row_id
        clips[row_id] = got.astype(int)
    # ... and the LoRAs change the picture, so the comparison above could tell them apart
    assert np.array_equal(clips["none-1"], clips["none-2"]) and np.array_equal(clips["a-1"], clips["a-2"])
    for one, other in (("none-1", "a-1"), ("none-1", "b-low"), ("a-1", "b-low")):
        assert np.abs(clips[one] - clips[other]).mean() > 2.0, (one, other)
