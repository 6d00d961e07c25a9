"""Renditions: profile names checked with field-named errors; each rendition reframed, titled and guided."""

import numpy as np
import pytest

from wan_dist.controls import ControlError
from wan_dist.controls.overlays import OverlaySpec
from wan_dist.controls.renditions import make_rendition, parse_renditions


def test_renditions_name_their_bad_entry():
    assert [p.name for p in parse_renditions(["youtube", "tiktok"])] == ["youtube", "tiktok"]
    for value, field in ((["youtube", "vine"], "renditions[1]"), (["tiktok", "tiktok"], "renditions[1]"),
                         ("tiktok", "renditions"), ([], "renditions")):
        with pytest.raises(ControlError) as caught:
            parse_renditions(value)
        assert caught.value.field == field, value
    custom = parse_renditions(["small"], {"small": {"base": "tiktok", "width": 90, "height": 160}})
    assert (custom[0].width, custom[0].height, custom[0].interface) == (90, 160, parse_renditions(["tiktok"])[0].interface)


def test_a_small_vertical_rendition_with_title_and_guides():
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 60, (1, 72, 128, 3), dtype=np.uint8), 16, axis=0)
    for index in range(16):  # a bright block walking right
        frames[index, 30:42, 10 + 6 * index:22 + 6 * index] = 220
    (profile,) = parse_renditions(["small"], {"small": {"base": "tiktok", "width": 180, "height": 320, "fps": 8}})
    overlays = OverlaySpec.from_dict({"title": {"text": "Hi there", "size": 0.08, "fade": 0}, "guides": True})
    made = make_rendition(frames, 16.0, profile, overlays=overlays)
    assert made.frames.shape == (8, 320, 180, 3) and made.guides.shape == made.frames.shape
    x0, y0, x1, y1 = made.layout.title_box
    assert made.frames[:, y0:y1, x0:x1].max() == 255  # the white title is drawn
    record = made.record()
    assert record["profile"] == "small" and len(record["crop_path"]) == 16 and record["overlays"]["title_box"]
    with pytest.raises(ControlError) as caught:
        make_rendition(frames, 16.0, profile, overlays=OverlaySpec.from_dict({"title": {"text": "W" * 40}}))
    assert caught.value.field == "overlays.title.text"
