"""Long clips on render groups (issue 17 on a colocated layout): every rank runs the windows in lockstep with its
parallel experts, the result rank keeps and publishes them, and the clip is the single-process clip.

Real gloo groups of 2 (Ulysses) and 4 (Ulysses x CFG) ranks, each rank a ``RankProgram`` as in a render group.
Frames are compared decoded from lossless-luma MP4s (crf 0): parallel attention sums in another order, so a pixel
may land one level off; the clips must agree to that, and the windows' records exactly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wan_dist.parallel.local import run_local_group

pytestmark = pytest.mark.slow

CASES = {
    2: dict(name="ulysses2_continue", parallel=dict(ulysses=2),
            fields={"num_frames": 21, "long": {"window": 9, "overlap": 1}}),
    4: dict(name="ulysses2_cfg2_sliding", parallel=dict(ulysses=2, cfg=2),
            fields={"num_frames": 21, "long": {"method": "sliding", "window": 9, "overlap": 1}}),
}
BASE = {"prompt": "a red circle rolls along", "seed": 7, "num_inference_steps": 2, "guidance_scale": 4.0}


def _request(case: dict):
    from wan_dist.engine.request import build_request
    from wan_dist.models.presets import PRESETS

    return build_request({**BASE, **case["fields"]}, spec=PRESETS["tiny"]).request


def _output(root: str, case: dict):
    from wan_dist.config import OutputConfig

    return OutputConfig(uri=f"{root}/{case['name']}", preset="ultrafast", crf=0)


def _clip(result) -> tuple[np.ndarray, dict]:
    from wan_dist.video.mp4 import decode_mp4

    frames, _ = decode_mp4(open(result.clip_uri, "rb").read())
    return frames, json.loads(open(result.sidecar_uri).read())


@torch.no_grad()
def rank_program(rank: int, world_size: int, folder: str, root: str, case: dict):
    from wan_dist.config import ParallelConfig
    from wan_dist.engine.pipeline import load_local_pipeline
    from wan_dist.engine.rank_program import RankProgram

    pipe = load_local_pipeline(folder, dtype=torch.float32)
    program = RankProgram(pipe, ParallelConfig(**case["parallel"]), rank=rank, world_size=world_size)
    counter = program.generate_fn.mesh.counter
    counter.reset()
    result = program.render(_request(case), _output(root, case))
    sent = counter.snapshot()  # bytes per collective: the windows ran through the layout's parallel experts
    return sent, None if result is None else (result.status, result.error, *_clip(result))


@pytest.mark.parametrize("world_size", [2, 4])
def test_a_long_clip_on_a_colocated_group_is_the_single_process_clip(world_size, checkpoint_factory, tmp_path):
    from wan_dist.engine.pipeline import load_local_pipeline
    from wan_dist.engine.render import render

    case = CASES[world_size]
    folder = str(checkpoint_factory("tiny", "diffusers"))
    results = run_local_group(rank_program, world_size, folder, str(tmp_path / "group"), case, timeout_s=900)
    for sent, _ in results:  # Ulysses all-to-alls on every rank, and CFG's gather where the layout has it
        assert sent.get("ulysses_all_to_all", 0) > 0, sent
        assert ("cfg" in case["parallel"]) == any(op.startswith("cfg") for op in sent), sent
    published = [r for _, r in results if r is not None]
    assert len(published) == 1 and results[0][1] is not None  # the result rank (0) alone published
    status, error, frames, sidecar = published[0]
    assert status == "completed", error
    single = render(load_local_pipeline(folder, dtype=torch.float32), _request(case),
                    _output(str(tmp_path / "single"), case))
    expected, expected_sidecar = _clip(single)
    assert frames.shape == expected.shape == (21, 64, 64, 3)
    assert sidecar["long"]["windows"] == expected_sidecar["long"]["windows"]
    difference = np.abs(frames.astype(int) - expected.astype(int))
    assert difference.max() <= 3 and difference.mean() < 0.05, (difference.max(), difference.mean())
    assert not list((tmp_path / "group" / case["name"]).glob("*/windows/*"))  # the windows went with the publish
