"""Style lock: latent statistics pulled toward the reference, colour transfer halving CIEDE2000 drift, metrics."""

import cv2
import numpy as np
import pytest
import torch

from wan_dist.controls import ControlError
from wan_dist.controls.style import (StyleLock, ciede2000, colour_drift, colour_transfer, high_frequency_ratio,
                                     lock_weight, pull_statistics, to_lab)

# Sharma, Wu and Dalal (2005), "The CIEDE2000 color-difference formula: implementation notes, supplementary test
# data and mathematical observations", Table 1 (pairs 1, 2, 3, 4, 7, 9, 17, 25 and two more)
SHARMA = [((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
          ((50.0, 3.1571, -77.2803), (50.0, 0.0, -82.7485), 2.8615),
          ((50.0, 2.8361, -74.0200), (50.0, 0.0, -82.7485), 3.4412),
          ((50.0, -1.3802, -84.2814), (50.0, 0.0, -82.7485), 1.0000),
          ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
          ((50.0, 2.49, -0.001), (50.0, -2.49, 0.0009), 7.1792),
          ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
          ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
          ((22.7233, 20.0904, -46.694), (23.0331, 14.973, -42.5619), 2.0373),
          ((2.0776, 0.0795, -1.135), (0.9033, -0.0636, -0.5514), 0.9082)]


def test_ciede2000_matches_the_published_pairs_and_is_symmetric():
    first, second = np.array([p[0] for p in SHARMA]), np.array([p[1] for p in SHARMA])
    expected = np.array([p[2] for p in SHARMA])
    assert np.allclose(ciede2000(first, second), expected, atol=1e-4)
    assert np.allclose(ciede2000(second, first), expected, atol=1e-4)
    assert np.allclose(ciede2000(first, first), 0.0)


def test_lab_is_srgb_d65():
    red = to_lab(np.array([[[255, 0, 0]]], np.uint8))[0, 0]
    assert red == pytest.approx([53.24, 80.09, 67.20], abs=0.2)  # the textbook sRGB red


def test_latent_statistics_move_toward_the_reference():
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 5, 6, 7, generator=generator) * torch.tensor([1.0, 2.0, 0.5, 3.0]).view(1, 4, 1, 1, 1)
    reference = torch.randn(2, 4, 1, 6, 7, generator=generator) * 0.7 + torch.tensor([1.0, -2.0, 0.0, 4.0]).view(1, 4, 1, 1, 1)
    dims = (2, 3, 4)

    def stats(t):
        return t.mean(dim=dims), t.std(dim=dims, unbiased=False)

    (m0, s0), (mr, sr) = stats(x0), stats(reference)
    full = pull_statistics(x0, reference, 1.0, 0.0)
    m, s = stats(full)
    assert torch.allclose(m, mr, atol=1e-4) and torch.allclose(s, sr, atol=1e-3)
    # weight 0.8 * (1 - 0.25) = 0.6: the statistics move 60% of the way, the pattern stays x0's
    partial = pull_statistics(x0, reference, 0.8, 0.25)
    m, s = stats(partial)
    assert torch.allclose(m, 0.4 * m0 + 0.6 * mr, atol=1e-4) and torch.allclose(s, 0.4 * s0 + 0.6 * sr, atol=1e-3)
    for batch in range(2):  # within a channel the result is an increasing affine map of x0: its pattern kept
        for channel in range(4):
            pair = torch.stack([partial[batch, channel].flatten(), x0[batch, channel].flatten()])
            assert torch.corrcoef(pair)[0, 1] > 0.9999
    assert pull_statistics(x0, reference, 0.8, 1.0) is x0 and lock_weight(0.5, 0.5) == 0.25
    half = pull_statistics(x0.to(torch.bfloat16), reference, 1.0, 0.0)
    assert half.dtype == torch.bfloat16
    with pytest.raises(ValueError):
        pull_statistics(x0, reference[:, :3], 1.0, 0.0)


def _source(height=96, width=160):
    """A colourful still: gradients, a sky, a sun and some texture."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([90 + 100 * x / width, 80 + 120 * y / height, 200 - 90 * y / height], -1)
    cv2.circle(image, (110, 30), 14, (250, 210, 80), -1)
    cv2.rectangle(image, (20, 60), (70, 90), (60, 140, 60), -1)
    image += np.random.default_rng(1).normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _graded_clip(source, num_frames=24):
    """The source drifting: a slow pan (content moves) and a grade that warms, lifts and loses contrast."""
    frames = []
    for index in range(num_frames):
        t = index / (num_frames - 1)
        frame = np.roll(source, int(round(6 * t)), axis=1).astype(np.float32)
        frame = (frame - 128) * (1 - 0.3 * t) + 128  # flatter
        frame *= np.array([1 + 0.25 * t, 1.0, 1 - 0.3 * t])  # warmer
        frame += 20 * t  # lifted
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return np.stack(frames)


def test_colour_transfer_halves_the_drift_and_keeps_the_texture():
    source = _source()
    clip = _graded_clip(source)
    before = colour_drift(clip, source)
    locked = colour_transfer(clip, source, fps=16, smoothing_s=0.25)
    after = colour_drift(locked, source)
    assert before > 5.0  # the grade is visible
    assert after <= 0.5 * before
    # strength 0 is the identity, strength 0.5 lands between
    assert colour_transfer(clip, source, strength=0.0) is clip
    assert after < colour_drift(colour_transfer(clip, source, strength=0.5, fps=16), source) < before
    # texture: the lock does not blur; its high-frequency energy stays near the source's
    assert 0.8 < high_frequency_ratio(locked, source) < 1.25
    # temporal smoothness: frame-to-frame changes of the mean colour are no larger than the input's
    jumps = np.abs(np.diff(locked.reshape(len(locked), -1, 3).mean(1), axis=0)).max()
    assert jumps <= np.abs(np.diff(clip.reshape(len(clip), -1, 3).mean(1), axis=0)).max() + 0.5


def test_a_clip_regraded_in_parts_is_the_whole_clips_transfer():
    """A long clip is regraded window by window (engine/long.py): statistics of every part, smoothed together, then
    each part regraded with its rows: frame for frame what colour_transfer does to the whole clip."""
    from wan_dist.controls.style import frame_statistics, regrade, smooth_statistics

    rng = np.random.default_rng(4)
    frames = np.clip(rng.normal(120, 40, (30, 24, 32, 3)) + np.linspace(0, 60, 30)[:, None, None, None], 0,
                     255).astype(np.uint8)  # a grade drifting over the clip
    source = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    whole = colour_transfer(frames, source, strength=0.8, fps=16, smoothing_s=0.5)
    parts = [frames[:9], frames[9:10], frames[10:30]]
    statistics = smooth_statistics(np.concatenate([frame_statistics(p) for p in parts]), fps=16, smoothing_s=0.5)
    starts = np.cumsum([0] + [len(p) for p in parts])
    regraded = np.concatenate([regrade(p, statistics[a:a + len(p)], source, strength=0.8)
                               for p, a in zip(parts, starts)])
    np.testing.assert_array_equal(regraded, whole)
    assert np.abs(whole.astype(int) - frames.astype(int)).mean() > 5  # the transfer did change the frames


def test_high_frequency_ratio_reads_softness_and_sharpness():
    source = _source()
    still = np.stack([source] * 3)
    assert high_frequency_ratio(still, source) == pytest.approx(1.0)
    blurred = np.stack([cv2.GaussianBlur(source, (0, 0), 2.0)] * 3)
    assert high_frequency_ratio(blurred, source) < 0.5
    noisy = np.clip(still + np.random.default_rng(0).normal(0, 20, still.shape), 0, 255).astype(np.uint8)
    assert high_frequency_ratio(noisy, source) > 1.5
    assert colour_drift(still, source) == pytest.approx(0.0, abs=1e-6)


def test_style_lock_values():
    assert StyleLock.from_dict(0.7) == StyleLock(strength=0.7)
    lock = StyleLock.from_dict({"strength": 0.3, "colour": False})
    assert StyleLock.from_dict(lock.to_dict()) == lock and not lock.colour
    for value, field in ((1.5, "style_lock"), ({"strength": -1}, "style_lock.strength"),
                         ({"latent": "yes"}, "style_lock.latent"), ({"lut": 1}, "style_lock.lut"), (True, "style_lock")):
        with pytest.raises(ControlError) as caught:
            StyleLock.from_dict(value)
        assert caught.value.field == field, value


@pytest.fixture(scope="module")
def toy_i2v():
    from wan_dist import load_pipeline

    return load_pipeline("toy-i2v", dtype=torch.float32)


def _estimates(pipe, image, **kwargs):
    """Every step's clean estimate x0 (what the solver's history and the previews see), and the frames."""
    seen = []
    out = pipe.generate("a red ball moves right", image=image, num_frames=9, num_inference_steps=3, seed=4,
                        callback=lambda index, total, latents, estimate: seen.append(estimate()), **kwargs)
    return seen, out.frames


def test_the_sampler_pulls_each_clean_estimate_toward_the_image_latent(toy_i2v):
    from PIL import Image

    from wan_dist.engine.images import i2v_image_latents, prepare_image

    pipe = toy_i2v
    image = Image.fromarray(_source(64, 64))
    free, frames = _estimates(pipe, image)
    locked, locked_frames = _estimates(pipe, image, style_lock={"strength": 0.6, "colour": False})
    # the image's own latent frame, encoded here as the trainer encodes it (not through the pipeline's conditioning)
    settings = pipe.resolve("x", image=image, num_frames=9)
    pixels = prepare_image(image, width=settings.width, height=settings.height, mode="i2v", batch=1)
    reference = i2v_image_latents(pipe.vae, pixels, 9)[:, :, :1]
    dims = (2, 3, 4)
    # step 0 starts from the same noise: the pull is the only difference, with weight 0.6 * (1 - 0/3)
    for name, measure in (("mean", lambda t: t.mean(dim=dims)), ("std", lambda t: t.std(dim=dims, unbiased=False))):
        expected = 0.4 * measure(free[0]) + 0.6 * measure(reference)
        assert torch.allclose(measure(locked[0]), expected, atol=2e-4), name
    # later steps are pulled less (weight 0.4, 0.2): the lock's estimates stay nearer the reference's statistics
    def gap(t):
        return (t.mean(dim=dims) - reference.mean(dim=dims)).abs().mean().item()

    assert all(gap(a) < gap(b) for a, b in zip(locked, free))
    assert not np.array_equal(locked_frames, frames)
    # latent off (colour only) or strength 0: the sampler is not touched
    for lock in ({"strength": 0.6, "latent": False}, 0.0):
        same, same_frames = _estimates(pipe, image, style_lock=lock)
        assert np.array_equal(same_frames, frames) and all(torch.equal(a, b) for a, b in zip(same, free))


def test_grade_drift_reads_the_grade_not_the_content():
    from wan_dist.controls.style import grade_drift

    source = _source()
    moved = np.stack([np.roll(source, shift, axis=1) for shift in (0, 10, 20)])  # content moves, grade kept
    graded = _graded_clip(source, 3)
    assert grade_drift(moved, source) < 0.2 * colour_drift(moved, source)
    assert grade_drift(graded, source) > 5 * grade_drift(moved, source)


def test_the_benchmarks_world_mode_measures_the_transfer_on_drifting_graded_clips():
    """benchmarks/style_lock.py renders=world: the world's graded clips losing their look over time, without
    and with the lock's transfer: the colour drift frame by frame falls by more than half, while the drift to
    the input image keeps the subject's own motion (a floor no colour lock removes)."""
    import sys
    from pathlib import Path

    from omegaconf import OmegaConf

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import style_lock

    cfg = OmegaConf.create({"renders": "world", "preset": "toy-i2v", "grades": ["warm"], "images": 2, "size": 64,
                            "frames": 17, "strength": 1.0, "grid": None, "grid_rows": 0})
    (row,) = style_lock._run(cfg)
    assert row["input"] == "warm" and row["extra_time"] is None
    assert row["frame_drift_without"] > 2 and row["frame_drift_reduction"] >= 0.5
    assert row["grade_drift_reduction"] >= 0.5
    assert 0 < row["drift_reduction"] < row["frame_drift_reduction"]
