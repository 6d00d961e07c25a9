"""The post pass end to end on `toy-i2v` (random weights, 64x64): three renditions with a title and guides and a
style lock, published beside the clip, listed in the sidecar, and reproduced from it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wan_dist import load_pipeline
from wan_dist.config import OutputConfig
from wan_dist.controls.platforms import PROFILES
from wan_dist.engine.request import RenderRequest, build_request
from wan_dist.engine.render import render
from wan_dist.storage.objects import read_bytes
from wan_dist.video.mp4 import decode_mp4

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from PIL import Image

    ys, xs = np.mgrid[0:64, 0:64]
    picture = np.stack([160 + 60 * np.sin(xs / 3.1), 90 + 40 * np.cos(ys / 4.3), 60 + 30 * np.sin((xs + ys) / 5.7)], -1)
    path = tmp_path_factory.mktemp("image") / "first.png"
    Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).save(path)
    return str(path)


def test_three_renditions_with_a_title_guides_and_style_lock(image, tmp_path):
    pipe = load_pipeline("toy-i2v", dtype=torch.float32)
    names = ["tiktok", "youtube", "instagram_feed"]
    request = build_request({"prompt": "a kite", "image": image, "seed": 3, "num_inference_steps": 2, "num_frames": 9,
                             "renditions": names, "style_lock": 0.8,
                             "overlays": {"title": {"text": "Kites", "fade": 0}, "guides": True}},
                            spec=pipe.spec).request
    result = render(pipe, request, OutputConfig(uri=str(tmp_path), preset="ultrafast"), model_source="toy-i2v")
    assert result.status == "completed", result.error
    sidecar = json.loads(read_bytes(result.sidecar_uri))
    assert [entry["profile"] for entry in sidecar["renditions"]] == names
    assert result.renditions == {entry["profile"]: entry["uri"] for entry in sidecar["renditions"]}
    for entry in sidecar["renditions"]:
        profile = PROFILES[entry["profile"]]
        frames, fps = decode_mp4(read_bytes(entry["uri"]))
        assert frames.shape[1:3] == (profile.height, profile.width) and fps == pytest.approx(profile.fps)
        x0, y0, x1, y1 = entry["overlays"]["title_box"]
        assert frames[0, y0:y1, x0:x1].max() > 200  # the white title
        guides, _ = decode_mp4(read_bytes(entry["guides_uri"]))
        assert guides.shape == frames.shape
    lock = sidecar["style_lock"]
    assert lock["drift_ciede2000"]["with"] < lock["drift_ciede2000"]["without"]
    again = RenderRequest.from_sidecar(sidecar)
    assert (again.renditions, again.overlays, again.style_lock) == (request.renditions, request.overlays,
                                                                    request.style_lock)
