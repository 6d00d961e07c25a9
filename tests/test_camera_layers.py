"""Layer-aware motion (wan_dist.controls.layers) on synthetic layered scenes: separation without weights (box,
saliency, motion), parallax measured against the requested ratio, hole filling where the foreground leaves,
blur length against each layer's motion, and field-named refusals.

(tests/test_layers.py is the import-layer contract test; these are the scene layers of issue 14.)
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from wan_dist.controls.camera import CameraPath, ControlError
from wan_dist.controls.layers import (Layer, LayerSpec, foreground_mask, motion_mask, render_layers, saliency_map,
                                      split_layers)
from wan_dist.controls.warp import proxy_clip
from wan_dist.world.registration import frame_motion

W, H = 160, 128
RED = (235, 40, 40)


def scene(centre=(80, 64), radius: int = 22, *, smooth: bool = False, seed: int = 0):
    """A red disk before a background: (image [H, W, 3] uint8, the disk's mask [H, W] bool). The background is a
    blurred random texture (greens and blues), or a gradient with faint texture (``smooth``: nothing in it
    stands out, yet it registers)."""
    if smooth:
        ramp = np.linspace(30, 90, W)[None, :, None] * np.ones((H, 1, 1))
        faint = cv2.GaussianBlur(np.random.default_rng(seed).random((H, W)) * 24 - 12, (0, 0), 1.5)[..., None]
        background = np.concatenate([ramp * 0.3, ramp, ramp * 0.8], axis=-1) + faint
    else:
        noise = np.random.default_rng(seed).random((H, W, 3)) * [60, 160, 150] + [0, 40, 40]
        background = cv2.GaussianBlur(noise, (0, 0), 1.5)
    image = np.ascontiguousarray(background.astype(np.uint8))
    cv2.circle(image, centre, radius, RED, -1)
    mask = np.zeros((H, W), np.uint8)
    cv2.circle(mask, centre, radius, 1, -1)
    return image, mask.astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def red(frame: np.ndarray) -> np.ndarray:
    r, g, b = (frame[..., i].astype(int) for i in range(3))
    return (r > 150) & (g < 110) & (b < 110)


# ----------------------------------------------------------------------------- separation
def test_grabcut_from_a_box_separates_the_foreground():
    image, disk = scene()
    alpha = foreground_mask(image, (0.25, 0.2, 0.75, 0.8))
    assert iou(alpha > 0.5, disk) > 0.9


def test_saliency_finds_the_subject_without_a_box():
    image, disk = scene(centre=(100, 56), smooth=True)
    saliency = saliency_map(image)
    assert saliency[disk].mean() > 2 * saliency[~disk].mean()
    assert iou(foreground_mask(image) > 0.5, disk) > 0.8


def test_motion_between_frames_separates_what_moved():
    first, _ = scene(centre=(74, 64))
    second, disk = scene(centre=(84, 64))  # the same background: a still camera
    assert iou(motion_mask(first, second) > 0.5, disk) > 0.8


# ----------------------------------------------------------------------------- parallax and holes
def _displacements(clip: np.ndarray, first: int, last: int) -> tuple[float, float]:
    """(foreground, background) horizontal displacement from frame ``first`` to ``last``: the red disk's centroid,
    and the background's registration outside the disk (frame edges, which reflect, left out)."""
    a, b = red(clip[first]), red(clip[last])
    foreground = np.nonzero(b)[1].mean() - np.nonzero(a)[1].mean()
    keep = ~cv2.dilate((a | b).astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    keep[:, :W // 4] = keep[:, -W // 4:] = False
    background = frame_motion(clip[first], clip[last], keep)[0]
    return float(foreground), float(background)


@pytest.mark.parametrize(("parallax", "box"), [(2.0, (0.25, 0.2, 0.75, 0.8)), (3.0, (0.25, 0.2, 0.75, 0.8)),
                                               (1.5, None)])
def test_measured_parallax_is_within_10_percent_of_the_requested_ratio(parallax, box):
    image, _ = scene(centre=(80, 64), smooth=box is None)
    spec = LayerSpec.from_dict({"parallax": parallax, "motion_blur": 0.0,
                                "foreground_box": None if box is None else list(box)})
    path = CameraPath.from_dict({"moves": [{"type": "truck", "amount": 0.05, "easing": "linear"}]}).sample(
        num_frames=9, fps=16, width=W, height=H, seed=0, pivot_depth=spec.foreground_depth)
    clip = proxy_clip(image, path, spec)
    foreground, background = _displacements(clip, 0, 8)
    assert background == pytest.approx(-0.05 * W, abs=0.5)  # the background slides as the truck asks
    assert foreground / background == pytest.approx(parallax, rel=0.1)


def test_without_layers_the_picture_moves_as_one_plane():
    image, _ = scene()
    path = CameraPath.from_dict({"moves": [{"type": "truck", "amount": 0.05, "easing": "linear"}]}).sample(
        num_frames=9, fps=16, width=W, height=H, seed=0)
    foreground, background = _displacements(proxy_clip(image, path), 0, 8)
    assert foreground / background == pytest.approx(1.0, abs=0.1)


def test_disoccluded_background_is_inpainted_not_a_copy_of_the_foreground():
    image, disk = scene()
    spec = LayerSpec.from_dict({"parallax": 3.0, "motion_blur": 0.0, "foreground_box": [0.25, 0.2, 0.75, 0.8]})
    path = CameraPath.from_dict({"moves": [{"type": "truck", "amount": 0.08, "easing": "linear"}]}).sample(
        num_frames=5, fps=16, width=W, height=H, seed=0, pivot_depth=spec.foreground_depth)
    last = proxy_clip(image, path, spec)[-1]
    # where the disk was, shifted with the background, and the disk is no longer
    uncovered = np.roll(disk, int(round(-0.08 * W)), axis=1) & ~red(last)
    uncovered &= ~cv2.dilate(red(last).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert uncovered.sum() > 300
    assert red(last)[uncovered].mean() < 0.02  # no red smear behind the subject
    plate = split_layers(image, spec)[0].colour
    assert red(plate.astype(np.uint8)).mean() < 0.005  # the plate has no subject left in it


def _mapped(matrix: np.ndarray, point) -> np.ndarray:
    moved = matrix @ np.array([point[0], point[1], 1.0])
    return moved[:2] / moved[2]


@pytest.mark.parametrize("box", [(0.25, 0.2, 0.6, 0.8), None])
def test_exact_mode_splits_every_frame_into_layers_following_a_moving_subject(box):
    """The exact mode over a render whose subject travels by itself (2 px a frame): each output frame puts the
    disk where the render has it in that frame, moved by the pose at the foreground's depth, and the background
    by the pose at depth 1. One set of layers from frame 0 would leave the disk behind; no layers would move it
    by the background's travel."""
    from wan_dist.controls.warp import overscan_matrix, virtual_camera

    centres = [(64 + 2 * i, 64) for i in range(9)]
    frames = np.stack([scene(centre=c, radius=16, smooth=box is None)[0] for c in centres])
    spec = LayerSpec.from_dict({"parallax": 2.0, "motion_blur": 0.0, "foreground_box": None if box is None else list(box)})
    path = CameraPath.from_dict({"moves": [{"type": "truck", "amount": 0.05, "easing": "linear"}],
                                 "mode": "exact"}).sample(num_frames=9, fps=16, width=W, height=H, seed=0,
                                                          pivot_depth=spec.foreground_depth)
    out, scale, offset = virtual_camera(frames, path, layers=spec)
    crop = overscan_matrix(scale, W, H, offset)
    for i in (0, 4, 8):
        want = _mapped(path.homography(i, spec.foreground_depth) @ crop, centres[i])
        mask = red(out[i])
        got = np.array([np.nonzero(mask)[1].mean(), np.nonzero(mask)[0].mean()])
        assert np.abs(got - want).max() < 0.75, (i, got, want)
        as_one_plane = _mapped(path.homography(i, 1.0) @ crop, centres[i])
        assert i == 0 or abs(want[0] - as_one_plane[0]) > 2  # the test tells parallax from none
    # the background, registered outside the disks, slides as the pose at depth 1 moves a point
    keep = ~cv2.dilate((red(out[0]) | red(out[8])).astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    keep[:, :W // 4] = keep[:, -W // 4:] = False
    background = frame_motion(out[0], out[8], keep)[0]
    centre = ((W - 1) / 2, (H - 1) / 2)
    expected = _mapped(path.homography(8, 1.0) @ crop, centre)[0] - _mapped(path.homography(0, 1.0) @ crop, centre)[0]
    assert background == pytest.approx(expected, abs=0.5)


# ----------------------------------------------------------------------------- blur
def _line_spread(frame: np.ndarray, columns: slice, rows: slice) -> float:
    """Variance (px^2) of the horizontal profile of the bright line inside ``columns`` x ``rows``."""
    profile = frame[rows, columns, 1].astype(np.float64).mean(axis=0)
    profile -= profile.min()
    x = np.arange(profile.size)
    mean = (profile * x).sum() / profile.sum()
    return float((profile * (x - mean) ** 2).sum() / profile.sum())


def test_blur_length_follows_each_layers_motion_and_the_shutter():
    """Lines on two layers under a steady truck: blur length = shutter x that layer's per-frame travel."""
    columns = np.arange(W)

    def lines(*xs):  # soft vertical lines (Gaussian across, sigma 1 px): what a camera's optics would give
        profile = sum(np.exp(-((columns - x) ** 2) / 2.0) for x in xs) * 255
        return np.repeat(np.broadcast_to(profile, (H, W))[..., None], 3, axis=-1).astype(np.float32)

    background, near = lines(70, 150), lines(125)
    near_alpha = np.zeros((H, W), np.float32)
    near_alpha[:H // 2, 100:150] = 1  # the near layer covers part of the top half only
    layers = [Layer(colour=background, alpha=np.ones((H, W), np.float32), depth=1.0, fill_edges=True),
              Layer(colour=near, alpha=near_alpha, depth=0.5)]
    path = CameraPath.from_dict({"moves": [{"type": "truck", "amount": 0.4, "easing": "linear"}]}).sample(
        num_frames=9, fps=16, width=W, height=H, seed=0)
    step = 0.4 * W / 8  # background px per frame; the near layer (depth 0.5) twice that
    sharp = render_layers(layers, path, motion_blur=0.0)[4]
    for shutter in (0.5, 1.0):  # blurs of 4 to 16 px: an interpolation kernel's own spread is small beside them
        blurred = render_layers(layers, path, motion_blur=shutter)[4]
        for centre, travel, rows in ((70 - 4 * step, step, slice(H // 2 + 10, H - 10)),  # frame 4
                                     (125 - 8 * step, 2 * step, slice(10, H // 2 - 10))):
            columns = slice(int(centre) - 14, int(centre) + 15)
            spread = _line_spread(blurred, columns, rows) - _line_spread(sharp, columns, rows)
            length = math.sqrt(12 * spread)  # a box of length L has variance L^2 / 12
            assert length == pytest.approx(shutter * travel, rel=0.1), (shutter, travel, length)
    assert np.array_equal(render_layers(layers, path, motion_blur=0.0)[0], render_layers(layers, path)[0])


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(("layers", "field"), [
    ({"parallax": 0.5}, "parallax"), ({"motion_blur": 1.5}, "motion_blur"),
    ({"foreground_box": [0.8, 0.1, 0.2, 0.9]}, "foreground_box"), ({"foreground_box": [0.1, 0.2, 0.3]}, "foreground_box"),
    ({"foreground_box": [0.1, 0.2, 1.3, 0.9]}, "foreground_box[2]"), ({"depth": 2}, "depth"),
])
def test_bad_layers_are_refused_naming_the_field(layers, field):
    with pytest.raises(ControlError) as caught:
        LayerSpec.from_dict(layers)
    assert caught.value.field == field, caught.value
