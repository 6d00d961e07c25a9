"""Overlays: every title and logo pixel lands in the title-safe area and off the app interface, per profile."""

import numpy as np
import pytest

from wan_dist.controls import ControlError
from wan_dist.controls.overlays import (POSITIONS, OverlaySpec, clear_areas, draw_guides, fade_envelope,
                                        layout_overlays, render_overlays)
from wan_dist.controls.platforms import PROFILES, Box

TITLE = "Summer sale: everything must go"


def _fractions(box, made):
    x0, y0, x1, y1 = box
    return Box(x0 / made.width, y0 / made.height, x1 / made.width, y1 / made.height)


def _assert_clear(box, made):
    fractions = _fractions(box, made)
    assert made.title_safe.contains(fractions, tolerance=1e-9), (made.name, box)
    for name, region in made.interface:
        assert not fractions.intersects(region), (made.name, name, box)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_position_lands_inside_title_safe_and_off_the_interface(name):
    made = PROFILES[name]
    for position in POSITIONS:
        anchor = "top_left" if position.startswith("bottom") else "bottom_left"
        spec = OverlaySpec.from_dict({"title": {"text": TITLE, "position": position},
                                      "logo": {"image": "https://example.com/logo.png", "anchor": anchor}})
        layout = layout_overlays(spec, made, logo_size=(300, 120))
        _assert_clear(layout.title_box, made)
        _assert_clear(layout.logo_box, made)
        assert not Box(*layout.title_box).intersects(Box(*layout.logo_box))


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_drawn_pixels_stay_inside_the_boxes(name):
    made = PROFILES[name]
    spec = OverlaySpec.from_dict({"title": {"text": TITLE, "colour": "#ffcc00", "position": "bottom", "fade": 0},
                                  "logo": {"image": "https://example.com/logo.png"}})
    logo = np.zeros((40, 100, 4), np.uint8)
    logo[..., 2], logo[5:35, 5:95, 3] = 255, 255  # a blue card with a transparent rim
    layout = layout_overlays(spec, made, logo_size=(100, 40))
    frames = np.zeros((1, made.height, made.width, 3), np.uint8)
    out = render_overlays(frames, spec, layout, fps=1.0, logo=logo)
    changed = out[0].any(axis=-1)
    assert changed.sum() > 1000
    ys, xs = np.nonzero(changed)
    inside = np.zeros_like(changed)
    for x0, y0, x1, y1 in (layout.title_box, layout.logo_box):
        inside[y0:y1, x0:x1] = True
    assert not (changed & ~inside).any()
    assert made.title_safe.contains(_fractions((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), made))
    for box in (layout.title_box, layout.logo_box):
        _assert_clear(box, made)  # so every drawn pixel is off the interface too
    for x0, y0, x1, y1 in (layout.title_box, layout.logo_box):
        assert changed[y0:y1, x0:x1].any()
    # the title's yellow is there, the logo's blue too
    title = out[0, layout.title_box[1]:layout.title_box[3], layout.title_box[0]:layout.title_box[2]]
    assert ((title[..., 0] > 200) & (title[..., 1] > 150) & (title[..., 2] < 80)).sum() > 200


def test_text_too_long_for_the_safe_area_is_a_field_named_error():
    spec = OverlaySpec.from_dict({"title": {"text": "Supercalifragilisticexpialidocious" * 2, "size": 0.08}})
    with pytest.raises(ControlError) as caught:
        layout_overlays(spec, PROFILES["tiktok"])
    assert caught.value.field == "overlays.title.text" and "tiktok" in caught.value.reason
    many_lines = OverlaySpec.from_dict({"title": {"text": "\n".join(["line"] * 30)}})
    with pytest.raises(ControlError) as caught:
        layout_overlays(many_lines, PROFILES["instagram_reels"])
    assert caught.value.field == "overlays.title.text"
    # the same long sentence wraps where one line would not fit
    layout = layout_overlays(OverlaySpec.from_dict({"title": {"text": TITLE}}), PROFILES["tiktok"])
    assert len(layout.title_lines) >= 2


def test_spec_errors_name_their_field():
    for data, field in (({"title": {"text": ""}}, "overlays.title.text"),
                        ({"title": {"text": "a", "position": "middle"}}, "overlays.title.position"),
                        ({"title": {"text": "a" * 301}}, "overlays.title.text"),
                        ({"title": {"text": "a", "colour": "#zzz"}}, "overlays.title.colour"),
                        ({"title": {"text": "a", "start": 2, "end": 1}}, "overlays.title.end"),
                        ({"logo": {"anchor": "top"}}, "overlays.logo.image"),
                        ({"logo": {"image": "x", "scale": 3}}, "overlays.logo.scale"),
                        ({"guides": "yes"}, "overlays.guides"), ({"banner": {}}, "overlays.banner")):
        with pytest.raises(ControlError) as caught:
            OverlaySpec.from_dict(data)
        assert caught.value.field == field, data
    spec = OverlaySpec.from_dict({"title": {"text": "Hello", "position": "top_right"},
                                  "logo": {"image": "x", "anchor": "top_right"}})
    with pytest.raises(ControlError) as caught:
        layout_overlays(spec, PROFILES["youtube"], logo_size=(100, 100))
    assert caught.value.field == "overlays.logo.anchor"
    assert OverlaySpec.from_dict(spec.to_dict()) == spec


def test_fade_envelope_and_timed_title():
    assert fade_envelope(0.0, 1.0, 3.0, 0.5, 5.0) == 0.0
    assert fade_envelope(1.25, 1.0, 3.0, 0.5, 5.0) == pytest.approx(0.5)
    assert fade_envelope(2.0, 1.0, 3.0, 0.5, 5.0) == 1.0
    assert fade_envelope(2.9, 1.0, 3.0, 0.5, 5.0) == pytest.approx(0.2)
    assert fade_envelope(4.9, 1.0, None, 0.5, 5.0) == 1.0  # shown to the end: no fade out
    made = PROFILES["instagram_feed"]
    spec = OverlaySpec.from_dict({"title": {"text": "Hi", "start": 1.0, "end": 2.0, "fade": 0.0}})
    layout = layout_overlays(spec, made)
    out = render_overlays(np.zeros((4, made.height, made.width, 3), np.uint8), spec, layout, fps=2.0)
    shown = [bool(frame.any()) for frame in out]  # times 0, 0.5, 1.0, 1.5
    assert shown == [False, False, True, True]


def test_guides_draw_the_safe_areas_and_tint_the_interface():
    made = PROFILES["tiktok"]
    frames = np.full((1, made.height, made.width, 3), 128, np.uint8)
    out = draw_guides(frames, made)[0]
    x0, y0, x1, y1 = made.action_safe.pixels(made.width, made.height)
    assert tuple(out[(y0 + y1) // 2, x0]) == (0, 255, 0)
    x0, y0, x1, y1 = made.title_safe.pixels(made.width, made.height)
    assert tuple(out[(y0 + y1) // 2, x0]) == (255, 220, 0)
    assert out[5, made.width // 2, 0] > 180 and out[5, made.width // 2, 1] < 100  # the top band is red
    assert tuple(out[made.height // 2, made.width // 2]) == (128, 128, 128)
    assert all(area[2] <= made.width for area in clear_areas(made))
