"""Frame-rate conversion (wan_dist.video.interpolate): the frame plan against brute force, even drops, and
in-between frames measured against the true in-between frames of synthetic scenes rendered at those times:
analytic moving shapes drawn here, and the procedural world of the toy model (wan_dist.world) rendered at 16
and at 24 frames a second."""

from __future__ import annotations

import math
from fractions import Fraction

import cv2
import numpy as np
import pytest

from wan_dist.video.interpolate import (Retimer, blend, convert_fps, interpolate, pair_motion, retime_positions,
                                        retimed_count)
from wan_dist.world import render_clip, sample_scene


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


# --- the frame plan ---------------------------------------------------------------------------------------------

def brute_force_plan(num_frames: int, from_fps: int, to_fps: int) -> list[tuple[int, Fraction]]:
    """Output frame j shows the time j / to_fps while that is within the input's span; its input position is
    that time x from_fps: (whole frame, fraction) at or above the input rate, else the nearest frame (ties up)."""
    span = Fraction(num_frames - 1, from_fps)
    plan, j = [], 0
    while Fraction(j, to_fps) <= span:
        position = Fraction(j, to_fps) * from_fps
        if to_fps >= from_fps:
            plan.append((math.floor(position), position - math.floor(position)))
        else:
            below, above = math.floor(position), math.ceil(position)
            plan.append((above if position - below >= above - position else below, Fraction(0)))
        j += 1
    return plan


@pytest.mark.parametrize(("frames", "from_fps", "to_fps"), [(81, 16, 24), (17, 16, 24), (9, 16, 16), (13, 16, 12),
                                                            (121, 24, 16), (81, 16, 30), (5, 16, 60), (1, 16, 24),
                                                            (33, 16, 7)])
def test_the_plan_matches_brute_force(frames, from_fps, to_fps):
    plan = brute_force_plan(frames, from_fps, to_fps)
    assert retimed_count(frames, from_fps, to_fps) == len(plan)
    got = [(index, Fraction(numerator, denominator)) for index, numerator, denominator
           in retime_positions(frames, from_fps, to_fps)]
    assert got == plan


def test_a14b_clip_at_24_fps_has_the_frames_of_five_seconds():
    assert retimed_count(81, 16, 24) == 121  # 5 s: 120 intervals of 1/24 s


def test_frames_below_the_rate_are_dropped_evenly():
    frames = np.arange(25, dtype=np.uint8)[:, None, None, None].repeat(3, axis=3) * np.ones((1, 4, 4, 3), np.uint8)
    out, record = convert_fps(frames, 24, 16)
    picked = out[:, 0, 0, 0].astype(int)
    assert len(out) == 17 and record["method"] == "drop" and record["dropped"] == 8
    assert picked[0] == 0 and picked[-1] == 24
    assert set(np.diff(picked)) == {1, 2}  # 24 -> 16: every third frame goes, in turn
    times = np.arange(len(out)) / 16
    assert np.abs(picked / 24 - times).max() <= 0.5 / 24 + 1e-12  # each the input frame nearest its time
    halved, _ = convert_fps(frames, 24, 12)
    assert halved[:, 0, 0, 0].tolist() == list(range(0, 25, 2))


def test_the_same_rate_returns_the_frames():
    frames = np.zeros((5, 16, 16, 3), np.uint8)
    out, record = convert_fps(frames, 16, 16)
    assert out is frames and record["method"] == "none"


# --- synthetic moving shapes, rendered at any time ----------------------------------------------------------------

def shapes_scene(seed: int, height: int = 112, width: int = 160):
    """frame(t): shapes moving in straight lines (6-10 px a frame) over a panning sine texture, anti-aliased by
    their signed distance, at any time t (in frames). Colours are drawn freely, so some edges are between colours
    of equal brightness."""
    rng = np.random.default_rng(seed)
    waves = [(rng.uniform(14, 40), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)) for _ in range(9)]
    pan = rng.uniform(-3, 3, 2)
    shapes = []
    for _ in range(3):
        start = rng.uniform([30, 30], [width - 30, height - 30])
        speed, heading = rng.uniform(6, 10), rng.uniform(0, 2 * np.pi)
        shapes.append((rng.integers(2), start, speed * np.array([np.cos(heading), np.sin(heading)]),
                       rng.uniform(7, 14, 2), rng.integers(20, 250, 3)))
    ys, xs = np.mgrid[0:height, 0:width] + 0.5

    def frame(t: float) -> np.ndarray:
        u, v = xs - pan[0] * t, ys - pan[1] * t
        image = np.stack([128 + sum(25 * np.sin(2 * np.pi * (u * np.cos(a) + v * np.sin(a)) / period + phase)
                                    for period, a, phase in waves[3 * c:3 * c + 3]) for c in range(3)], axis=-1)
        for round_, start, velocity, size, rgb in shapes:
            cx, cy = start + velocity * t
            if round_:
                distance = np.hypot(xs - cx, ys - cy) - size[0]
            else:
                dx, dy = np.abs(xs - cx) - size[0], np.abs(ys - cy) - size[1]
                distance = np.hypot(np.maximum(dx, 0), np.maximum(dy, 0)) + np.minimum(np.maximum(dx, dy), 0)
            alpha = np.clip(0.5 - distance, 0, 1)[..., None]
            image = image * (1 - alpha) + alpha * rgb * (1 + 0.15 * np.sin((xs - cx) / 3))[..., None]
        return np.clip(image + 0.5, 0, 255).astype(np.uint8)

    return frame


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flow_interpolation_reaches_30_db_on_moving_shapes_and_beats_a_blend(seed):
    frame = shapes_scene(seed)
    flow, blended, repeated = [], [], []
    for index in (0, 3):
        a, b = frame(index), frame(index + 1)
        motion = pair_motion(a, b)
        for tau in (1 / 3, 1 / 2, 2 / 3):
            truth = frame(index + tau)
            flow.append(psnr(interpolate(a, b, tau, motion), truth))
            blended.append(psnr(blend(a, b, tau), truth))
            repeated.append(psnr(a if tau < 0.5 else b, truth))
    assert min(flow) >= 30.0, flow
    assert np.mean(flow) >= np.mean(blended) + 3.0, (flow, blended)  # the flow matters
    assert np.mean(blended) > np.mean(repeated)


def test_converting_world_clips_from_16_to_24_fps_matches_the_world_rendered_at_24():
    """The world renders a scene at any frame count over the same time span: 17 frames are 16 fps over 1 s,
    25 frames the same second at 24 fps, so every third 24 fps frame is a true in-between of two 16 fps ones."""
    flow, blended = [], []
    for seed in (0, 1, 3):
        scene = sample_scene(seed)
        native = render_clip(scene, height=96, width=96, num_frames=17)
        truth = render_clip(scene, height=96, width=96, num_frames=25)
        made, record = convert_fps(native, 16, 24)
        crossfaded, _ = convert_fps(native, 16, 24, method="blend")
        assert made.shape == truth.shape and record["frames_out"] == 25 and record["interpolated"] == 16
        assert np.array_equal(made[::3], native[::2])  # frames at the rendered times are the rendered frames
        between = [j for j in range(25) if j % 3]
        flow += [psnr(made[j], truth[j]) for j in between]
        blended += [psnr(crossfaded[j], truth[j]) for j in between]
    assert np.mean(flow) >= 30.0 and min(flow) >= 28.0, flow
    assert np.mean(flow) > np.mean(blended) + 3.0, (np.mean(flow), np.mean(blended))


# --- occlusion ----------------------------------------------------------------------------------------------------

def square_over_texture(speed: float = 10.0, height: int = 96, width: int = 128):
    """frame(t): a textured square sliding right over a still textured ground, and its true flows between
    frames 0 and 1."""
    rng = np.random.default_rng(3)
    ground = cv2.GaussianBlur(rng.uniform(0, 255, (height, width, 3)).astype(np.float32), (0, 0), 2.0)
    skin = cv2.GaussianBlur(rng.uniform(0, 255, (200, 200, 3)).astype(np.float32), (0, 0), 2.0)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    half, left, row = 16, 40, 48

    def frame(t: float) -> np.ndarray:
        cx = left + speed * t
        cover = (np.clip(0.5 - (np.abs(xs - cx) - half), 0, 1) * np.clip(0.5 - (np.abs(ys - row) - half), 0, 1))
        texture = cv2.remap(skin, xs - cx + 100, ys - row + 100, cv2.INTER_LINEAR)
        return np.clip(ground * (1 - cover[..., None]) + texture * cover[..., None] + 0.5, 0, 255).astype(np.uint8)

    def inside(cx: float) -> np.ndarray:
        return (np.abs(xs - cx) < half) & (np.abs(ys - row) < half)

    forward, backward = np.zeros((height, width, 2), np.float32), np.zeros((height, width, 2), np.float32)
    forward[inside(left), 0], backward[inside(left + speed), 0] = speed, -speed
    uncovered = np.zeros((height, width), bool)  # ground shown at t = 1/2 that the square hides at t = 0
    uncovered[row - half + 2:row + half - 2, left - half:left - half + int(speed / 2)] = True
    return frame, (forward, backward), uncovered


def test_occlusion_handling_takes_uncovered_ground_from_the_frame_that_shows_it():
    frame, flows, uncovered = square_over_texture()
    a, b, truth = frame(0), frame(1), frame(0.5)
    handled = interpolate(a, b, 0.5, pair_motion(a, b, flows=flows))
    plain = interpolate(a, b, 0.5, pair_motion(a, b, flows=flows, occlusion=False))
    error = lambda image: np.abs(image.astype(float) - truth)[uncovered].mean()  # noqa: E731
    assert error(handled) < 2.0, error(handled)  # the ground as it is
    assert error(plain) > 10 * error(handled)  # a blend there shows half of the square's texture
    assert psnr(handled, truth) > psnr(plain, truth) + 3.0


def test_consistency_marks_what_the_square_covers_and_uncovers():
    frame, flows, _ = square_over_texture()
    motion = pair_motion(frame(0), frame(1), flows=flows)
    # the square (32 rows) moves 10 px: 10 columns of ground each way are seen by one frame only
    assert motion.hidden_in_b[48, 56:66].all() and motion.hidden_in_a[48, 24:34].all()
    assert not motion.hidden_in_b[48, 24:56].any() and not motion.hidden_in_a[48, 34:66].any()
    assert abs(motion.hidden_share - 32 * 10 / (96 * 128)) < 0.01


# --- properties ---------------------------------------------------------------------------------------------------

def test_the_output_does_not_depend_on_opencv_threads():
    """A re-render from a sidecar must give the same clip on a machine with another core count."""
    frame = shapes_scene(4, height=240, width=320)
    frames = np.stack([frame(t) for t in range(3)])
    before = cv2.getNumThreads()
    outputs = []
    try:
        for threads in (1, 2, 7):
            cv2.setNumThreads(threads)
            outputs.append(convert_fps(frames, 16, 24)[0])
    finally:
        cv2.setNumThreads(before)
    assert all(np.array_equal(outputs[0], other) for other in outputs[1:])


def test_large_frames_flow_at_the_working_size():
    frame = shapes_scene(5, height=112, width=160)
    a, b = frame(0), frame(1)
    motion = pair_motion(a, b, flow_short_side=56)
    assert motion.forward.shape == (56, 80, 2) and motion.full_size == (112, 160)
    made = interpolate(a, b, 0.5, motion)
    assert made.shape == a.shape and psnr(made, frame(0.5)) > psnr(blend(a, b, 0.5), frame(0.5))


@pytest.mark.parametrize(("from_fps", "to_fps", "parts"), [(16, 24, (5, 4, 4, 4)), (16, 40, (1, 7, 9)),
                                                             (24, 16, (4, 1, 12))])
def test_a_clip_converted_in_parts_equals_each_frame_made_from_its_neighbours(from_fps, to_fps, parts):
    """A long clip converts window by window (engine/long.py): each part's output needs the frame held from the
    part before; the parts' outputs together are the clip's frames, each made from the input frames around it."""
    scene = shapes_scene(3, 64, 80)
    frames = np.stack([scene(t) for t in range(sum(parts))])
    retimer = Retimer(len(frames), from_fps, to_fps)
    outputs, start = [], 0
    for size in parts:
        outputs.append(retimer.push(frames[start:start + size]))
        start += size
    out = np.concatenate(outputs)
    expected = [frames[i] if numerator == 0 else interpolate(frames[i], frames[i + 1], numerator / denominator)
                for i, numerator, denominator in retime_positions(len(frames), from_fps, to_fps)]
    assert out.shape == (len(expected),) + frames.shape[1:]
    for j, frame in enumerate(expected):
        np.testing.assert_array_equal(out[j], frame, err_msg=f"output frame {j}")
    assert retimer.record() == convert_fps(frames, from_fps, to_fps)[1]
    with pytest.raises(ValueError, match="^frames: "):
        retimer.push(frames[:1])


def test_small_frames_convert():
    frames = np.random.default_rng(6).integers(0, 256, (3, 8, 12, 3), dtype=np.uint8)  # under DIS's smallest
    out, _ = convert_fps(frames, 16, 24)
    assert out.shape == (4, 8, 12, 3)


@pytest.mark.parametrize(("call", "field"), [
    (lambda: convert_fps(np.zeros((3, 8, 8, 3), np.float32), 16, 24), "frames"),
    (lambda: convert_fps(np.zeros((3, 8, 8, 3), np.uint8), 16, 24, method="optical"), "method"),
    (lambda: convert_fps(np.zeros((3, 8, 8, 3), np.uint8), 0, 24), "from_fps"),
    (lambda: convert_fps(np.zeros((3, 8, 8, 3), np.uint8), 16, 2.5), "to_fps"),
    (lambda: interpolate(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), 1.0), "tau"),
    (lambda: interpolate(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8), 0.5), "b"),
    (lambda: pair_motion(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), flow_short_side=4),
     "flow_short_side"),
])
def test_bad_input_names_the_argument(call, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        call()
