"""Platform profiles: geometry against the published numbers, custom profiles, field-named errors."""

import pytest

from wan_dist.controls import ControlError
from wan_dist.controls.platforms import PROFILES, Box, parse_profile, profile, profiles

VERTICAL = ("youtube_shorts", "tiktok", "instagram_reels")


def test_youtube_areas_are_smpte_st_2046_1():
    youtube = PROFILES["youtube"]
    assert (youtube.width, youtube.height) == (1920, 1080)
    # safe action 93%, safe title 90%, centred: 1920x1080 -> ~1786x1004 and 1728x972
    assert youtube.action_safe.width == pytest.approx(0.93) and youtube.action_safe.height == pytest.approx(0.93)
    assert youtube.title_safe.width == pytest.approx(0.90) and youtube.title_safe.height == pytest.approx(0.90)
    x0, y0, x1, y1 = youtube.action_safe.pixels(1920, 1080)
    assert abs((x1 - x0) - 1786) <= 2 and abs((y1 - y0) - 1004) <= 2  # rounded inwards
    x0, y0, x1, y1 = youtube.title_safe.pixels(1920, 1080)
    assert (x1 - x0, y1 - y0) == (1728, 972)
    assert youtube.action_safe.x0 + youtube.action_safe.x1 == pytest.approx(1.0)  # centred


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_area_lies_inside_the_frame_and_title_inside_action(name):
    made = PROFILES[name]
    frame = Box(0.0, 0.0, 1.0, 1.0)
    assert frame.contains(made.action_safe) and frame.contains(made.title_safe)
    assert made.action_safe.contains(made.title_safe)
    for region_name, region in made.interface:
        assert frame.contains(region), region_name
    x0, y0, x1, y1 = made.title_safe.pixels(made.width, made.height)
    assert 0 <= x0 < x1 <= made.width and 0 <= y0 < y1 <= made.height


def test_aspects_and_vertical_interface_numbers():
    for name in VERTICAL:
        assert (PROFILES[name].width, PROFILES[name].height) == (1080, 1920)
        assert PROFILES[name].interface, name
    assert PROFILES["instagram_feed"].aspect == 1.0
    assert PROFILES["instagram_feed_4x5"].aspect == pytest.approx(4 / 5)
    assert PROFILES["youtube"].aspect == pytest.approx(16 / 9)
    reels = dict(PROFILES["instagram_reels"].interface)
    # Meta: 14% top, 35% bottom, 6% sides (269 / 672 / 65 px of 1080x1920)
    assert reels["top"].y1 * 1920 == pytest.approx(269) and (1 - reels["bottom"].y0) * 1920 == pytest.approx(672)
    assert reels["left_edge"].x1 * 1080 == pytest.approx(65)
    tiktok = dict(PROFILES["tiktok"].interface)
    assert tiktok["top"].y1 * 1920 == pytest.approx(250) and (1 - tiktok["bottom"].y0) * 1920 == pytest.approx(420)
    assert (1 - tiktok["right_rail"].x0) * 1080 == pytest.approx(170)


def test_unknown_profile_is_a_field_named_error():
    with pytest.raises(ControlError) as caught:
        profile("myspace")
    assert caught.value.field == "renditions" and "tiktok" in caught.value.reason
    with pytest.raises(ControlError) as caught:
        profile("tiktok", field="renditions[2]", custom={"x": {"base": "vine"}})
    assert caught.value.field == "profiles.x.base"


def test_custom_profiles_from_config():
    table = profiles({"cinema": {"width": 2048, "height": 858, "fps": 24},
                      "tiktok_ads": {"base": "tiktok", "interface": {"bottom": [0, 0.7, 1, 1]}}})
    assert table["cinema"].fps == 24 and table["cinema"].title_safe == PROFILES["youtube"].title_safe
    assert dict(table["tiktok_ads"].interface) == {"bottom": Box(0, 0.7, 1, 1)}
    assert table["tiktok_ads"].width == 1080 and "youtube" in table
    for bad, field in (({"width": 100}, "cinema.height"), ({"width": 10, "height": 100}, "cinema.width"),
                       ({"width": 100, "height": 100, "title_safe": [0.5, 0, 0.4, 1]}, "cinema.title_safe"),
                       ({"width": 100, "height": 100, "colour": 1}, "cinema.colour")):
        with pytest.raises(ControlError) as caught:
            parse_profile("cinema", bad)
        assert caught.value.field == f"profiles.{field}", bad
