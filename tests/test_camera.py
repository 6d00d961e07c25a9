"""Camera paths (wan_dist.controls.camera / warp): easing and sampling math, what each move does to the picture,
shake, field-named refusals, prompt words, noise warping that keeps Gaussian statistics, proxy clips that move
the way the path asks (measured by phase correlation, wan_dist.world.registration) and the exact mode's framing.

Measurements use the world's registration (phase correlation + Lucas-Kanade), written for the toy world's
clips, not for these controls. Synthetic images only: nothing here needs a model.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from wan_dist.controls.camera import (SHAKE_FULL_SCALE, CameraPath, ControlError, camera_phrases, ease,
                                      with_camera_phrases)
from wan_dist.controls.warp import proxy_clip, required_overscan, virtual_camera, warp_noise
from wan_dist.world.registration import frame_motion, phase_shift

W, H = 160, 128


def texture(seed: int = 0, width: int = W, height: int = H) -> np.ndarray:
    """A smooth random texture [H, W, 3] uint8: features at every position, so any shift registers."""
    noise = np.random.default_rng(seed).random((height, width, 3)) * 255
    return cv2.GaussianBlur(noise.astype(np.uint8), (0, 0), 1.5)


def sample(camera: dict, frames: int = 9, seed: int = 0, **size):
    return CameraPath.from_dict(camera).sample(num_frames=frames, fps=16, width=size.get("width", W),
                                               height=size.get("height", H), seed=seed)


# ----------------------------------------------------------------------------- easing and sampling
def test_easing_curves():
    p = np.linspace(0, 1, 101)
    for name in ("linear", "ease_in", "ease_out", "ease_in_out"):
        curve = ease(name, p)
        assert curve[0] == 0 and curve[-1] == 1 and np.all(np.diff(curve) >= 0), name
        assert ease(name, -0.5) == 0 and ease(name, 1.5) == 1  # clipped outside the move
    assert ease("linear", 0.3) == pytest.approx(0.3)
    assert ease("ease_in", 0.5) == pytest.approx(0.25) and ease("ease_out", 0.5) == pytest.approx(0.75)
    assert ease("ease_in_out", 0.25) == pytest.approx(0.15625)  # smoothstep 3t^2 - 2t^3
    assert np.allclose(ease("ease_in_out", p) + ease("ease_in_out", 1 - p), 1)  # symmetric
    slopes = np.gradient(ease("ease_in_out", p), p)
    assert slopes[0] < 0.05 and slopes[-1] < 0.05 and slopes[50] == pytest.approx(1.5, abs=0.01)


def test_moves_sample_one_pose_per_frame_with_easing_overlap_and_cuts():
    path = sample({"moves": [{"type": "pan", "amount": 10, "easing": "linear"},
                             {"type": "pan", "amount": -4, "start": 0.25, "end": 0.75, "easing": "ease_in"},
                             {"type": "zoom", "amount": 2.0, "easing": "linear"},
                             {"type": "zoom", "amount": 1.5, "start": 0.5, "end": 0.5},
                             {"type": "tilt", "amount": 3, "start": 0.5, "end": 1.0, "easing": "ease_out"}]},
                  frames=9)
    assert path.num_frames == 9
    u = np.arange(9) / 8
    second = -4 * np.clip((u - 0.25) / 0.5, 0, 1) ** 2
    assert np.allclose(path.pan, 10 * u + second)  # overlapping rotations add
    cut = np.where(u >= 0.5, 1.5, 1.0)  # start == end: a cut at that time
    assert np.allclose(path.zoom, 2.0 ** u * cut)  # scales multiply, each at a constant rate in log scale
    assert np.allclose(path.tilt, 3 * (1 - (1 - np.clip((u - 0.5) / 0.5, 0, 1)) ** 2))
    assert path.pan[0] == 0 and path.zoom[0] == 1 and np.allclose(path.position, 0)
    record = path.record()
    assert len(record["frames"]) == 9 and record["frames"][-1]["pan"] == pytest.approx(6.0)


def test_each_move_moves_the_picture_the_way_its_sign_says():
    focal = (W / 2) / math.tan(math.radians(30))  # the default 60 degree field of view
    pan = sample({"moves": [{"type": "pan", "amount": 10}]})
    assert pan.image_motion(8) == pytest.approx([-focal * math.tan(math.radians(10)), 0], abs=1e-6)  # scene left
    tilt = sample({"moves": [{"type": "tilt", "amount": 5}]})
    assert tilt.image_motion(8) == pytest.approx([0, focal * math.tan(math.radians(5))], abs=1e-6)  # scene down
    truck = sample({"moves": [{"type": "truck", "amount": 0.25}]})
    assert truck.image_motion(8) == pytest.approx([-0.25 * W, 0], abs=1e-6)  # background one quarter left
    assert truck.image_motion(8, depth=0.5) == pytest.approx([-0.5 * W, 0], abs=1e-6)  # nearer: further
    pedestal = sample({"moves": [{"type": "pedestal", "amount": 0.1}]})
    assert pedestal.image_motion(8) == pytest.approx([0, 0.1 * H], abs=1e-6)  # rising camera: scene down
    corner = np.array([0.0, 0.0, 1.0])
    centre = np.array([(W - 1) / 2, (H - 1) / 2])
    for kind in ("zoom", "dolly"):
        moved = sample({"moves": [{"type": kind, "amount": 1.5}]}).homography(8) @ corner
        assert moved[:2] / moved[2] - centre == pytest.approx(1.5 * -centre)  # the background 1.5x larger
    near = sample({"moves": [{"type": "dolly", "amount": 1.5}]}).homography(8, depth=0.5) @ corner
    assert np.all(np.abs(near[:2] / near[2] - centre) > 1.5 * np.abs(centre) + 1)  # dolly: nearer grows more
    zoom_near = sample({"moves": [{"type": "zoom", "amount": 1.5}]}).homography(8, depth=0.5) @ corner
    assert zoom_near[:2] / zoom_near[2] - centre == pytest.approx(1.5 * -centre)  # zoom: every depth alike
    orbit = sample({"moves": [{"type": "orbit", "amount": 10}]})
    assert orbit.image_motion(8, depth=0.5) == pytest.approx([0, 0], abs=1e-6)  # the subject stays centred
    assert orbit.image_motion(8)[0] > 5  # and the background slides the other way than under a truck
    roll = sample({"moves": [{"type": "roll", "amount": 10}]}).homography(8) @ np.array([W - 1.0, centre[1], 1])
    assert roll[1] / roll[2] < centre[1] - 5  # the right edge's middle rises: the picture turns counter-clockwise


# ----------------------------------------------------------------------------- shake
def test_shake_is_band_limited_reproducible_and_as_strong_as_asked():
    shaken = CameraPath.from_dict({"shake": {"intensity": 0.7, "frequency_hz": 3.0}})
    track = shaken.sample(num_frames=161, fps=16, width=W, height=H, seed=4).shake
    rms = math.sqrt(np.mean(track[:, 0] ** 2 + track[:, 1] ** 2))
    assert rms == pytest.approx(0.7 * SHAKE_FULL_SCALE * H)
    power = np.abs(np.fft.rfft(track[:, 0])) ** 2
    freqs = np.fft.rfftfreq(161, 1 / 16)
    band = (freqs >= 3 / math.sqrt(2) - 0.2) & (freqs <= 3 * math.sqrt(2) + 0.2)
    assert power[band].sum() > 0.9 * power.sum()  # one octave around 3 Hz
    again = shaken.sample(num_frames=161, fps=16, width=W, height=H, seed=4).shake
    other = shaken.sample(num_frames=161, fps=16, width=W, height=H, seed=5).shake
    assert np.array_equal(track, again) and not np.allclose(track, other)
    still = CameraPath.from_dict({"shake": {"intensity": 0.0}}).sample(num_frames=17, fps=16, width=W, height=H,
                                                                      seed=4)
    assert not still.shake.any()


@pytest.mark.parametrize("intensity", [0.0, 0.4, 0.8])
def test_measured_shake_rms_is_within_10_percent_of_the_intensity(intensity):
    """The exact mode's shake on a still render, read back by phase correlation + Lucas-Kanade against frame 0."""
    path = sample({"shake": {"intensity": intensity, "frequency_hz": 2.5}, "mode": "exact"}, frames=33, seed=2)
    frames, _, _ = virtual_camera(np.repeat(texture(1)[None], 33, 0), path)
    keep = np.ones((H, W), bool)
    measured = np.array([frame_motion(frames[0], frame, keep)[:2] for frame in frames])
    measured -= measured.mean(axis=0)
    rms = math.sqrt(np.mean((measured ** 2).sum(axis=1)))
    if intensity == 0:
        assert rms < 0.02  # no shake asked, none measured
    else:
        assert rms / (SHAKE_FULL_SCALE * H) == pytest.approx(intensity, rel=0.1)


# ----------------------------------------------------------------------------- refusals and words
@pytest.mark.parametrize(("camera", "field", "words"), [
    ({"moves": [{"type": "spin", "amount": 3}]}, "moves[0].type", "unknown move type 'spin'"),
    ({"moves": [{"type": "pan", "amount": 3}, {"type": "tilt", "amount": 3, "start": 0.7, "end": 0.2}]},
     "moves[1].start", "must be <= end (0.2)"),
    ({"shake": {"intensity": 1.2}}, "shake.intensity", "must be in [0, 1]"),
    ({"shake": {"intensity": -0.1}}, "shake.intensity", "must be in [0, 1]"),
    ({"moves": [{"type": "zoom", "amount": 0}]}, "moves[0].amount", "must be in [0.1, 10]"),
    ({"moves": [{"type": "pan"}]}, "moves[0].amount", "required"),
    ({"moves": [{"type": "pan", "amount": 2, "easing": "bouncy"}]}, "moves[0].easing", "unknown easing"),
    ({"mode": "magic"}, "mode", "unknown mode"),
    ({"strength": 2}, "strength", "must be in [0, 1]"),
    ({"colour": "red"}, "colour", "unknown field"),
    ({"moves": "pan left"}, "moves", "must be a list"),
])
def test_bad_paths_are_refused_naming_the_field(camera, field, words):
    with pytest.raises(ControlError) as caught:
        CameraPath.from_dict(camera)
    assert caught.value.field == field and words in caught.value.reason, caught.value


def test_camera_phrases_speak_wans_vocabulary():
    path = CameraPath.from_dict({"moves": [{"type": "tilt", "amount": -5, "start": 0.5},
                                           {"type": "pan", "amount": 10}, {"type": "dolly", "amount": 0.8}],
                                 "shake": {"intensity": 0.9}})
    assert camera_phrases(path) == ["the camera pans right", "the camera pulls back", "the camera tilts down",
                                    "the handheld camera shakes strongly"]
    assert with_camera_phrases("A fox in the snow", path) == (
        "A fox in the snow. The camera pans right, the camera pulls back, the camera tilts down, "
        "the handheld camera shakes strongly.")
    assert with_camera_phrases(["a.", "b"], CameraPath()) == ["a. The camera is static.", "b. The camera is static."]
    exact = CameraPath.from_dict({"moves": [{"type": "pan", "amount": 10}], "mode": "exact"})
    assert "static" in camera_phrases(exact)[0]  # the virtual camera moves afterwards: the render must not


# ----------------------------------------------------------------------------- noise warping
def _gaussian_checks(values: np.ndarray) -> dict[str, float]:
    """Deviation of one frame's noise [C, h, w] from i.i.d. N(0, 1): mean, std, kurtosis, the largest lag-1
    correlation along rows and columns, and the Kolmogorov-Smirnov distance to the normal CDF."""
    flat = np.sort(values.ravel().astype(np.float64))
    n = flat.size
    cdf = 0.5 * (1 + np.vectorize(math.erf)(flat / math.sqrt(2)))
    ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    lag = max(abs(np.corrcoef(values[:, :, 1:].ravel(), values[:, :, :-1].ravel())[0, 1]),
              abs(np.corrcoef(values[:, 1:].ravel(), values[:, :-1].ravel())[0, 1]))
    return {"mean": abs(flat.mean()), "std": abs(flat.std() - 1), "kurtosis": abs(np.mean(flat ** 4) / flat.var() ** 2 - 3),
            "lag": lag, "ks": ks, "n": n}


def _looks_gaussian(stats: dict[str, float]) -> bool:
    n = stats["n"]
    return (stats["mean"] < 4 / math.sqrt(n) and stats["std"] < 0.05 and stats["kurtosis"] < 6 * math.sqrt(24 / n)
            and stats["lag"] < 4 / math.sqrt(n) and stats["ks"] < 1.63 / math.sqrt(n))


def test_warped_noise_keeps_gaussian_statistics_and_follows_the_path():
    noise = np.random.default_rng(3).standard_normal((1, 16, 5, 16, 20)).astype(np.float32)
    path = sample({"moves": [{"type": "truck", "amount": -0.25, "easing": "linear"},
                             {"type": "zoom", "amount": 1.3, "start": 0.5}, {"type": "roll", "amount": 8}]},
                  frames=17)
    warped = warp_noise(noise, path, temporal_stride=4, spatial_stride=8, seed=9, strength=0.0)
    assert np.array_equal(warped[:, :, 0], noise[:, :, 0])  # frame 0 is the drawn noise itself
    for frame in range(1, 5):
        assert _looks_gaussian(_gaussian_checks(warped[0, :, frame])), (frame, _gaussian_checks(warped[0, :, frame]))
    # and it carries frame 0's noise along the path: a truck's shift is found in the last latent frame (pixel
    # frame 16: 0.25 of 160 px = 5 latent columns; between whole columns the nearest-source rule rounds)
    truck = sample({"moves": [{"type": "truck", "amount": -0.25, "easing": "linear"}]}, frames=17)
    moved = warp_noise(noise, truck, temporal_stride=4, spatial_stride=8, seed=9, strength=0.0)
    (shift,), (peak,) = phase_shift(noise[0, :, 0].sum(0)[None], moved[0, :, 4].sum(0)[None])
    assert shift == pytest.approx([0, 5], abs=0.3) and peak > 0.5
    assert np.array_equal(moved[0, :, 4, :, 5:], noise[0, :, 0, :, :-5])
    # strength mixes fresh noise in: still N(0, 1), and less of frame 0's noise
    mixed = warp_noise(noise, truck, temporal_stride=4, spatial_stride=8, seed=9, strength=0.8)
    assert _looks_gaussian(_gaussian_checks(mixed[0, :, 4]))
    follows = np.corrcoef(noise[0, :, 0, :, :-5].ravel(), mixed[0, :, 4, :, 5:].ravel())[0, 1]
    assert follows == pytest.approx(0.6, abs=0.05)  # sqrt(1 - 0.8^2)


def test_the_gaussian_checks_catch_interpolated_noise():
    """The checks above can fail: bilinear warping (the obvious way) shrinks variance and correlates neighbours."""
    noise = np.random.default_rng(3).standard_normal((16, 16, 20)).astype(np.float32)
    matrix = np.array([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1]])  # half a pixel
    bilinear = np.stack([cv2.warpPerspective(c, matrix, (20, 16), flags=cv2.INTER_LINEAR,
                                             borderMode=cv2.BORDER_REFLECT) for c in noise])
    assert not _looks_gaussian(_gaussian_checks(bilinear))


# ----------------------------------------------------------------------------- proxy clips and the exact mode
@pytest.mark.parametrize(("move", "amount", "direction"), [
    ("pan", 8, (-1, 0)), ("pan", -8, (1, 0)), ("tilt", 6, (0, 1)), ("tilt", -6, (0, -1)),
    ("truck", 0.15, (-1, 0)), ("pedestal", -0.1, (0, -1)), ("orbit", 12, (1, 0)),
])
def test_proxy_clip_moves_the_image_in_the_requested_direction(move, amount, direction):
    """Content slides opposite to a pan/truck/pedestal and with an orbit's background, as phase correlation reads it."""
    path = sample({"moves": [{"type": move, "amount": amount}]}, frames=9)
    clip = proxy_clip(texture(2), path)
    assert np.array_equal(clip[0], texture(2))  # frame 0 is the image
    centre = np.zeros((H, W), bool)
    centre[H // 4:3 * H // 4, W // 4:3 * W // 4] = True  # away from the reflected edges
    dx, dy, _ = frame_motion(clip[3], clip[5], centre)
    expected = path.image_motion(5) - path.image_motion(3)
    assert np.sign(np.round([dx, dy], 1)).tolist() == list(direction)
    assert [dx, dy] == pytest.approx(expected, abs=0.35)


def _dots(width: int, height: int, spacing: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A dark frame with Gaussian dots (sigma 1.5 px) on a grid: (frame [H, W, 3] uint8, centres [N, 2] x, y)."""
    ys, xs = np.mgrid[0:height, 0:width]
    centres = np.array([(x + 0.37, y + 0.61) for y in range(spacing // 2, height, spacing)
                        for x in range(spacing // 2, width, spacing)])
    image = np.zeros((height, width))
    for x, y in centres:
        image += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 1.5 ** 2))
    return np.repeat((np.clip(image, 0, 1) * 240 + 8).astype(np.uint8)[..., None], 3, axis=-1), centres


def test_exact_mode_frames_every_pose_within_half_a_pixel():
    """Each dot of a still render lands where pose i puts it: the output's framing follows the path."""
    path = sample({"moves": [{"type": "pan", "amount": 5}, {"type": "zoom", "amount": 1.25, "start": 0.2},
                             {"type": "roll", "amount": 4, "easing": "ease_out"}, {"type": "pedestal", "amount": 0.05}],
                   "shake": {"intensity": 0.5, "frequency_hz": 3}, "mode": "exact"}, frames=9, seed=7)
    render, centres = _dots(W, H)
    frames, overscan, offset = virtual_camera(np.repeat(render[None], 9, 0), path)
    assert 1.0 < overscan < 1.5 and overscan == pytest.approx(required_overscan(path)[0])
    # the engine hands over the crop its plan checked: the same frames, without searching for it again
    assert np.array_equal(virtual_camera(np.repeat(render[None], 9, 0), path, overscan=overscan, offset=offset)[0],
                          frames)
    from wan_dist.controls.warp import overscan_matrix

    crop = overscan_matrix(overscan, W, H, offset)
    worst = 0.0
    for index, frame in enumerate(frames):
        grey = frame[..., 0].astype(np.float64) - 8
        mapped = (path.homography(index) @ crop @ np.c_[centres, np.ones(len(centres))].T)
        for x, y in (mapped[:2] / mapped[2]).T:
            if not (8 <= x <= W - 9 and 8 <= y <= H - 9):
                continue
            x0, y0 = int(round(x)), int(round(y))
            window = np.clip(grey[y0 - 4:y0 + 5, x0 - 4:x0 + 5], 0, None)
            wy, wx = np.mgrid[y0 - 4:y0 + 5, x0 - 4:x0 + 5]
            found = ((window * wx).sum() / window.sum(), (window * wy).sum() / window.sum())
            worst = max(worst, math.hypot(found[0] - x, found[1] - y))
    assert worst <= 0.5, worst
    # the crop's size follows the moves: a still path needs none
    assert required_overscan(sample({"mode": "exact"}))[0] == 1.0


def test_exact_mode_per_frame_motion_matches_the_path_by_phase_correlation():
    path = sample({"moves": [{"type": "truck", "amount": 0.12, "easing": "ease_in_out"},
                             {"type": "pedestal", "amount": -0.05, "easing": "linear"}], "mode": "exact"})
    frames, _, _ = virtual_camera(np.repeat(texture(4)[None], 9, 0), path)
    keep = np.ones((H, W), bool)
    for index in range(8):
        dx, dy, _ = frame_motion(frames[index], frames[index + 1], keep)
        expected = path.image_motion(index + 1) - path.image_motion(index)
        assert [dx, dy] == pytest.approx(expected, abs=0.5), index


def test_exact_mode_refuses_a_path_that_leaves_the_render_or_a_crop_too_small():
    with pytest.raises(ControlError, match="leaves the render"):
        required_overscan(sample({"moves": [{"type": "pan", "amount": 60}], "mode": "exact"}))
    path = sample({"moves": [{"type": "truck", "amount": 0.2}], "mode": "exact"})
    with pytest.raises(ControlError) as caught:
        virtual_camera(np.repeat(texture()[None], 9, 0), path, overscan=1.05)
    assert caught.value.field == "overscan" and "less than" in caught.value.reason
