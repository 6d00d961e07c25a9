"""Reframing: a moving subject stays in every profile's action-safe area, and the crop path moves smoothly."""

import cv2
import numpy as np
import pytest

from wan_dist.controls import ControlError
from wan_dist.controls.platforms import PROFILES
from wan_dist.controls.reframe import (apply_crop, containment, crop_path, crop_window, reframe, retime,
                                       subject_track)

FPS = 16


def _moving_subject_clip(num_frames=48, width=320, height=180, size=28, seed=0, jitter=0.0):
    """A textured still background and a bright square that crosses the frame on a wobbly path (plus handheld
    ``jitter``, pixels RMS); its true box."""
    rng = np.random.default_rng(seed)
    background = rng.integers(40, 90, (height, width, 3), dtype=np.uint8)
    t = np.linspace(0.0, 1.0, num_frames)
    centre_x = 30 + (width - 60) * t  # left to right
    centre_y = height / 2 + 40 * np.sin(2 * np.pi * 1.5 * t)  # and up and down
    centre_x = centre_x + rng.normal(0.0, jitter, num_frames)
    centre_y = np.clip(centre_y + rng.normal(0.0, jitter, num_frames), size, height - size)
    frames, truth = [], []
    for cx, cy in zip(centre_x, centre_y):
        frame = background.copy()
        x0, y0 = int(round(cx - size / 2)), int(round(cy - size / 2))
        frame[y0:y0 + size, x0:x0 + size] = (230, 200, 60)
        frames.append(frame)
        truth.append([x0, y0, x0 + size, y0 + size])
    return np.stack(frames), np.array(truth, np.float64)


def test_crop_window_has_the_profile_aspect_and_fits():
    for name, made in PROFILES.items():
        w, h = crop_window(320, 180, made)
        assert w <= 320 + 1e-9 and h <= 180 + 1e-9 and (w == pytest.approx(320) or h == pytest.approx(180))
        assert w / h == pytest.approx(made.aspect), name


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_true_subject_box_is_contained_in_every_frame(name):
    frames, truth = _moving_subject_clip()
    windows = crop_path(truth, (320, 180), PROFILES[name], fps=FPS)
    assert containment(truth, windows, PROFILES[name]) >= 0.99
    assert (windows[:, :2] >= -1e-6).all() and (windows[:, 2] <= 320 + 1e-6).all() and (windows[:, 3] <= 180 + 1e-6).all()


@pytest.mark.parametrize("name", ["tiktok", "instagram_feed", "youtube_shorts"])
def test_estimated_subject_is_contained_and_the_path_is_smooth(name):
    frames, truth = _moving_subject_clip(jitter=3.0)
    estimated = subject_track(frames)
    # the estimate covers the true subject (what moves beyond the camera, tightened against the background)
    covers = ((estimated[:, :2] <= truth[:, :2] + 1) & (estimated[:, 2:] >= truth[:, 2:] - 1)).all(axis=1)
    assert covers.mean() >= 0.99
    windows = crop_path(estimated, (320, 180), PROFILES[name], fps=FPS)
    assert containment(truth, windows, PROFILES[name]) >= 0.99
    # smoothness: the window's acceleration is far below that of a window glued to the subject's centre
    glued = (truth[:, 0] + truth[:, 2]) / 2
    start = windows[:, 0]
    assert np.abs(np.diff(start, 2)).mean() < 0.25 * np.abs(np.diff(glued, 2)).mean()
    assert np.abs(np.diff(start)).max() <= np.abs(np.diff(glued)).max() + 1e-6


def _texture(width: int, height: int, offset: float, seed: int = 0) -> np.ndarray:
    """Blurred noise (a texture optical flow can follow), shifted ``offset`` pixels to the right."""
    rng = np.random.default_rng(seed)
    big = cv2.GaussianBlur(rng.integers(0, 255, (height, width + 200)).astype(np.float32), (0, 0), 3.0)
    big = (big - big.mean()) / big.std() * 25 + 80
    start = 100 - int(round(offset))
    return np.repeat(np.clip(big[:, start:start + width], 0, 255)[..., None], 3, axis=-1).astype(np.uint8)


def _slow_square(*, pan_px_per_frame: float = 0.0, num_frames=33, width=320, height=180, size=60):
    """A flat square that moves only its own width over the whole clip (so it covers its middle for most of the
    clip: a temporal-median background keeps half of it), on a texture the camera pans by ``pan_px_per_frame``."""
    frames, truth = [], []
    for index in range(num_frames):
        frame = _texture(width, height, pan_px_per_frame * index)
        x0, y0 = int(round(100 + size * index / (num_frames - 1))), 60
        frame[y0:y0 + size, x0:x0 + size] = (40, 200, 60)
        frames.append(frame)
        truth.append([x0, y0, x0 + size, y0 + size])
    return np.stack(frames), np.array(truth, np.float64)


# still camera: the box is the subject's own, tightened against a background made without the motion boxes;
# panning camera: the pan is fitted and cancelled, the box is the flow's (a little larger: no background to tighten by)
@pytest.mark.parametrize("pan, slack", [(0.0, 12), (-3.0, 20)], ids=["still-camera", "panning-camera"])
def test_a_slow_subject_is_found_where_it_is_not_where_it_stayed_longest(pan, slack):
    frames, truth = _slow_square(pan_px_per_frame=pan)
    estimated = subject_track(frames)
    margin = 0.04 * 180
    covers = ((estimated[:, :2] <= truth[:, :2] + 1) & (estimated[:, 2:] >= truth[:, 2:] - 1)).all(axis=1)
    assert covers.mean() >= 0.99
    # and not much more than the subject with its margin: not the span it swept, nor the panning background
    extra = (estimated[:, 2:] - estimated[:, :2]) - (truth[:, 2:] - truth[:, :2]) - 2 * margin
    assert np.abs(extra).max() <= slack, extra
    windows = crop_path(estimated, (320, 180), PROFILES["tiktok"], fps=FPS)
    assert containment(truth, windows, PROFILES["tiktok"]) >= 0.99


def test_user_box_keyframes_and_errors():
    frames, truth = _moving_subject_clip(num_frames=10)
    track = subject_track(frames, [[0.1, 0.2, 0.3, 0.4], [0.5, 0.2, 0.7, 0.4]])
    assert track[0] == pytest.approx([32, 36, 96, 72]) and track[-1] == pytest.approx([160, 36, 224, 72])
    assert track[5, 0] == pytest.approx(32 + (160 - 32) * 5 / 9)
    with pytest.raises(ControlError) as caught:
        subject_track(frames, [0.5, 0.1, 0.4, 0.3])
    assert caught.value.field == "subject_box"


def test_rendition_has_profile_size_and_rate_and_shows_the_subject():
    frames, truth = _moving_subject_clip(num_frames=32)
    made = PROFILES["tiktok"]
    small = type(made)(name="small", width=90, height=160, fps=8, interface=made.interface)
    out, windows = reframe(frames, small, fps=FPS)
    assert out.shape == (16, 160, 90, 3)  # 32 frames at 16 fps = 2 s -> 16 frames at 8 fps
    assert list(retime(32, 16, 8)) == list(range(0, 32, 2))
    # the subject's colour appears in the centre part of each output frame
    for frame in out:
        yellow = (frame[..., 0] > 180) & (frame[..., 2] < 120)
        assert yellow.sum() > 50
    assert apply_crop(frames, windows, small, FPS).shape == out.shape
