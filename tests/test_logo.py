"""The overlays' logo: fetched where the render runs, under its fetch policy, and drawn in each rendition's
clear title-safe area."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wan_dist.config import OutputConfig
from wan_dist.controls.platforms import PROFILES
from wan_dist.engine.post import post_inputs, publish_renditions
from wan_dist.engine.request import build_request
from wan_dist.models.presets import PRESETS
from wan_dist.storage.fetch import FetchPolicy, FetchRefused
from wan_dist.storage.objects import read_bytes
from wan_dist.video.mp4 import decode_mp4

MAGENTA = (250, 0, 250)


@pytest.fixture
def logo(tmp_path):
    path = tmp_path / "logo.png"
    Image.new("RGBA", (40, 20), MAGENTA + (255,)).save(path)
    return str(path)


def _request(logo: str, names=("youtube", "tiktok", "instagram_feed")):
    return build_request({"prompt": "a kite", "renditions": list(names),
                          "overlays": {"logo": {"image": logo, "anchor": "top_left", "scale": 0.2}}},
                         spec=PRESETS["tiny"]).request


def test_the_logo_is_drawn_inside_each_renditions_logo_box(logo, tmp_path):
    request = _request(logo)
    post = post_inputs(request, None, policy=None)  # no policy: an operator's own run reads any path
    assert post.source is None and post.logo.shape == (20, 40, 4)
    frames = np.full((9, 72, 128, 3), 40, np.uint8)  # a dark clip: the magenta logo stands out
    entries = publish_renditions(request, frames, 16.0, str(tmp_path / "clip"), OutputConfig(preset="ultrafast"),
                                 logo=post.logo)
    for entry in entries:
        profile = PROFILES[entry["profile"]]
        video, _ = decode_mp4(read_bytes(entry["uri"]))
        x0, y0, x1, y1 = entry["overlays"]["logo_box"]
        # the box keeps the logo's 2:1 aspect at 20% of the title-safe width, inside the title-safe area
        sx0, sy0, sx1, sy1 = profile.title_safe.pixels(profile.width, profile.height)
        assert sx0 <= x0 < x1 <= sx1 and sy0 <= y0 < y1 <= sy1
        assert abs((x1 - x0) - round(0.2 * (sx1 - sx0))) <= 1 and abs((x1 - x0) - 2 * (y1 - y0)) <= 2
        inside = video[:, y0 + 2:y1 - 2, x0 + 2:x1 - 2].reshape(-1, 3).mean(0)
        outside = video[:, y1 + 4:, :].reshape(-1, 3).mean(0)
        assert inside[0] > 180 and inside[1] < 90 and inside[2] > 180, (entry["profile"], inside)
        assert outside.max() < 80


def test_a_logo_outside_the_fetch_policy_is_refused_naming_the_field(logo):
    request = _request(logo)
    policy = FetchPolicy(schemes=("https",), prefixes=())
    with pytest.raises(FetchRefused) as refused:
        post_inputs(request, None, policy=policy)
    assert "overlays.logo.image" in str(refused.value)
    # under an allowed prefix it is read as storage reads it
    allowed = FetchPolicy(schemes=("https",), prefixes=(str(logo).rsplit("/", 1)[0],))
    assert post_inputs(request, None, policy=allowed).logo.shape == (20, 40, 4)


def test_a_logo_that_is_not_an_image_names_the_field(tmp_path):
    path = tmp_path / "logo.png"
    path.write_bytes(b"not a picture")
    with pytest.raises(ValueError, match="overlays.logo.image: not a readable image"):
        post_inputs(_request(str(path)), None, policy=None)


def test_logo_field_errors():
    with pytest.raises(Exception, match="overlays.logo.image"):
        build_request({"prompt": "x", "renditions": ["youtube"], "overlays": {"logo": {"image": "x" * 3000}}},
                      spec=PRESETS["tiny"])
    with pytest.raises(Exception, match="overlays.logo.anchor"):
        build_request({"prompt": "x", "renditions": ["youtube"], "overlays": {"logo": {"image": "a.png",
                                                                                      "anchor": "nowhere"}}},
                      spec=PRESETS["tiny"])


def test_a_user_subject_box_decides_the_crop(tmp_path):
    """Two bright squares, left and right; the estimate would follow the moving one (right), the user's box the
    still one (left): each vertical rendition shows the square it was told to keep."""
    frames = np.full((9, 72, 128, 3), 40, np.uint8)
    frames[:, 30:42, 8:20] = (250, 250, 0)  # still, left: the user's subject
    for index in range(9):
        frames[index, 30:42, 76 + 4 * index:88 + 4 * index] = (0, 250, 250)  # moving, right
    box = [8 / 128, 30 / 72, 20 / 128, 42 / 72]
    for subject, colour in ((box, (250, 250, 0)), (None, (0, 250, 250))):
        request = build_request({"prompt": "two squares", "renditions": ["tiktok"], "subject_box": subject},
                                spec=PRESETS["tiny"]).request
        [entry] = publish_renditions(request, frames, 16.0, str(tmp_path / f"clip-{subject is None}"),
                                     OutputConfig(preset="ultrafast"))
        video, _ = decode_mp4(read_bytes(entry["uri"]))
        middle = video[len(video) // 2].reshape(-1, 3).astype(int)
        shown = (np.abs(middle - colour).max(axis=1) < 60).mean()
        assert shown > 0.01, (subject, shown)
