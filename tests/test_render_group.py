"""Ray render groups on a local Ray: same frames as the single-process pipeline, failure and retry."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from wan_dist import load_pipeline
from wan_dist.config import OutputConfig, ParallelConfig, SamplingConfig
from wan_dist.engine.group import GroupConfig, RenderGroup, RenderGroupFailed
from wan_dist.engine.render import RenderRequest
from wan_dist.video.mp4 import decode_mp4

pytestmark = pytest.mark.slow

REQUEST = RenderRequest(prompt="a kite over a beach", seed=11, height=48, width=80, num_frames=9,
                        sampling=SamplingConfig(num_inference_steps=3), name="kite")


def _frames(uri: str) -> np.ndarray:
    with open(uri, "rb") as handle:
        return decode_mp4(handle.read())[0]


@pytest.mark.parametrize("parallel", [ParallelConfig(), ParallelConfig(ulysses=2), ParallelConfig(cfg=2),
                                      ParallelConfig(ring=2, fsdp=True),
                                      ParallelConfig(ulysses=2, placement="disaggregated"),
                                      ParallelConfig(ulysses=2, vae_parallel=True)],
                         ids=["single-rank", "ulysses2", "cfg2", "ring2-fsdp", "disaggregated-1+1", "ulysses2-vae"])
def test_group_renders_the_same_clip_as_the_pipeline(ray_local, tmp_path, parallel):
    # Lossless H.264 (crf 0): a difference in the decoded frames is a difference in the rendered ones.
    group = RenderGroup(GroupConfig(source="tiny", parallel=parallel, cpus_per_rank=0.5)).start()
    try:
        result = group.render(REQUEST, OutputConfig(uri=str(tmp_path / "group"), crf=0), model_source="tiny")
    finally:
        group.shutdown()
    assert result.status == "completed", result.error
    if parallel.world_size > 1 and parallel.placement == "colocated":  # the engine reports its traffic
        assert result.timings["comm_bytes_per_step"] > 0
    pipe = load_pipeline("tiny", dtype=torch.float32)
    expected = pipe.generate(REQUEST.prompt, height=48, width=80, num_frames=9, num_inference_steps=3, seed=11)
    from wan_dist.engine.render import render

    local = render(pipe, REQUEST, OutputConfig(uri=str(tmp_path / "local"), crf=0))
    # CFG-parallel runs cond and uncond as two batch-1 forwards instead of one batch-2 forward: fp32
    # rounding (~1e-6 in the latents) can move a pixel across a uint8 rounding edge, nothing more.
    difference = np.abs(_frames(result.clip_uri).astype(int) - _frames(local.clip_uri).astype(int))
    assert difference.max() <= 2 and difference.mean() < 0.01
    assert expected.frames.shape == (1, 9, 48, 80, 3)


def test_a_killed_rank_fails_the_request_then_the_rebuilt_group_renders(ray_local, tmp_path):
    import ray

    group = RenderGroup(GroupConfig(source="tiny", parallel=ParallelConfig(ring=2), cpus_per_rank=0.5,
                                    collective_timeout_s=60)).start()
    slow = RenderRequest(prompt="a storm at sea", seed=2, height=64, width=64, num_frames=9,
                         sampling=SamplingConfig(num_inference_steps=2000), name="storm")  # ~20 s: killed at 3 s
    try:
        victim = group.workers[-1]
        killer = threading.Timer(3.0, lambda: ray.kill(victim, no_restart=True))
        killer.start()
        started = time.monotonic()
        with pytest.raises(RenderGroupFailed, match="a rank failed"):
            group.render(slow, OutputConfig(uri=str(tmp_path / "out")))
        killer.join()
        assert time.monotonic() - started < 60  # failed fast, not at a collective timeout
        assert not list((tmp_path / "out").glob("storm/clip.mp4"))  # nothing half-published
        with pytest.raises(RenderGroupFailed, match="not running"):
            group.render(REQUEST, OutputConfig(uri=str(tmp_path / "out")))
        group.rebuild()
        retried = group.render(REQUEST, OutputConfig(uri=str(tmp_path / "out")))
        assert retried.status == "completed" and group.generation == 2
    finally:
        group.shutdown()
