"""wan_dist.world: scenes are deterministic by seed, every option renders and is captioned, the
held-out split holds, any size and length renders, and measure.py reads colour, shape, motion and
camera move back from the world's own 64 x 64 x 17 clips."""

from __future__ import annotations

import collections
import dataclasses
import re
import subprocess
import sys

import numpy as np
import pytest

from wan_dist.world import (Background, Camera, Scene, WorldObject, caption, caption_words, first_frame,
                            heldout_combinations, is_heldout, render_clip, sample_scene, vocabulary)
from wan_dist.world.caption import BACKGROUND_PHRASES, CAMERA_PHRASES, LIGHTING_PHRASES, MOTION_PHRASES
from wan_dist.world.measure import (components, dominant_colour, measure_clip, object_mask, shape_name,
                                   track_main_object)
from wan_dist.world.registration import camera_track
from wan_dist.world.scene import DOLLY_BACKGROUND_FACTOR, camera_state
from wan_dist.world.vocab import CAMERA_DIRECTIONS, HELDOUT_PERCENT, valid_combination

CORPUS_SIZE = 240


def _phrase_pattern(phrases: tuple[str, ...]) -> re.Pattern:
    """A regex matching any of ``phrases`` (a ``{slot}`` matches any words)."""
    parts = [re.escape(p).replace(r"\{", "{").replace(r"\}", "}") for p in phrases if p]
    return re.compile("|".join(re.sub(r"\{[a-z0-9]+\}", r"[a-z ]+?", p) for p in parts), re.IGNORECASE)


@pytest.fixture(scope="module")
def corpus():
    """CORPUS_SIZE scenes from seeds 0.., rendered at 64 x 64 x 17 and measured."""
    rows = []
    for seed in range(CORPUS_SIZE):
        scene = sample_scene(seed)
        frames = render_clip(scene, height=64, width=64, num_frames=17)
        # A dolly's parallax cannot be read from frames (see measure.py): the evaluator passes it.
        parallax = DOLLY_BACKGROUND_FACTOR if scene.camera.move.startswith("dolly") else 1.0
        rows.append((scene, frames, measure_clip(frames, parallax=parallax)))
    return rows


def test_same_seed_same_scene_caption_and_frames():
    for seed in (0, 1, 12345):
        assert sample_scene(seed) == sample_scene(seed)
        assert sample_scene(np.random.default_rng(seed)) == sample_scene(seed)
        assert caption(sample_scene(seed), rng=seed) == caption(sample_scene(seed), rng=seed)
    assert len({sample_scene(seed) for seed in range(20)}) == 20
    scene = sample_scene(3, camera="shake", background="noise")
    clip = render_clip(scene, height=32, width=40, num_frames=7)
    assert np.array_equal(clip, render_clip(scene, height=32, width=40, num_frames=7))
    other = render_clip(dataclasses.replace(scene, seed=scene.seed + 1), height=32, width=40, num_frames=7)
    assert not np.array_equal(clip, other), "the seed must change the texture and the shake"


def _option_cases():
    vocab = vocabulary()
    for key, field in (("colours", "colour"), ("shapes", "shape"), ("motions", "motion"), ("cameras", "camera"),
                       ("backgrounds", "background"), ("lightings", "lighting")):
        for value in vocab[key]:
            yield pytest.param(field, value, id=f"{field}-{value}")


@pytest.mark.parametrize("field,value", list(_option_cases()))
def test_every_option_renders_and_is_captioned(field, value):
    scene = sample_scene(7, **{field: value})
    clip = render_clip(scene, height=32, width=32, num_frames=5)
    assert clip.shape == (5, 32, 32, 3) and clip.dtype == np.uint8
    assert clip.std() > 5, "a frame with nothing in it"
    texts = {caption(scene, rng=r) for r in range(12)} | {caption(scene)}
    assert len(texts) >= 3, f"expected several phrasings, got {texts}"
    allowed = caption_words()
    for text in texts:
        assert set(re.findall(r"[a-z]+", text.lower())) <= allowed, text
        if field == "colour":
            words = r"\b(purple|violet)\b" if value == "purple" else rf"\b{value}\b"
            assert re.search(words, text, re.IGNORECASE), text
        elif field == "shape":
            words = {"circle": "circle|disc|ball", "square": "square|block", "triangle": "triang"}[value]
            assert re.search(words, text), text
        elif field == "motion":
            assert _phrase_pattern(MOTION_PHRASES[value]).search(text), text
        elif field == "camera":
            assert _phrase_pattern(CAMERA_PHRASES[value]).search(text), text
        elif field == "background":
            assert _phrase_pattern(BACKGROUND_PHRASES[value]).search(text), text
        elif value == "constant":
            assert not any(_phrase_pattern(LIGHTING_PHRASES[k]).search(text) for k in ("brightening", "dimming")), text
        else:
            assert _phrase_pattern(LIGHTING_PHRASES[value]).search(text), text


def test_canonical_caption_reads_naturally():
    scene = Scene((WorldObject("circle", "red", "right", -0.2, 0.0, 0.3, 0.4),),
                  Background("solid", "dark blue", "dark blue"), Camera("zoom_in", 1.4))
    assert caption(scene) == "A red circle moves to the right across a dark blue background while the camera zooms in."
    two = dataclasses.replace(scene, objects=(*scene.objects, WorldObject("square", "orange", "still", 0.3, 0.3, 0.15)),
                              lighting="dimming", camera=Camera("pan_left", 0.2))
    assert caption(two) == ("A red circle moves to the right across a dark blue background while the camera pans left, "
                            "as the light slowly fades. A smaller orange square stays still.")


def test_constraints_are_honoured_and_objects_fit():
    scene = sample_scene(5, colour="yellow", shape="triangle", motion="up_left", camera="zoom_out",
                         background="horizon", lighting="dimming", num_objects=3)
    main = scene.main
    assert (main.colour, main.shape, main.motion, scene.camera.move) == ("yellow", "triangle", "up_left", "zoom_out")
    assert (scene.background.kind, scene.lighting, len(scene.objects)) == ("horizon", "dimming", 3)
    assert sample_scene(6, colour=["red", "blue"], num_objects=[1, 2]).main.colour in ("red", "blue")
    sizes = [o.size for seed in range(100) for o in sample_scene(seed).objects]
    assert 0.15 <= min(sizes) and max(sizes) <= 0.35, "objects are 15-35% of the frame's short side"
    with pytest.raises(ValueError):
        sample_scene(0, colour="magenta")
    with pytest.raises(ValueError):
        sample_scene(0, shape="circle", motion="rotate")  # a spinning circle looks still: never produced
    with pytest.raises(ValueError):
        sample_scene(0, num_objects=4)
    with pytest.raises(ValueError):
        WorldObject("circle", "red", "rotate", 0, 0, 0.3, 90)


def test_heldout_split_is_never_trained_on():
    heldout = heldout_combinations()
    vocab = vocabulary()
    valid = [(c, s, m, k) for c in vocab["colours"] for s in vocab["shapes"] for m in vocab["motions"]
             for k in vocab["cameras"] if valid_combination(s, m)]
    assert heldout <= set(valid)
    assert 0.5 * HELDOUT_PERCENT / 100 < len(heldout) / len(valid) < 1.5 * HELDOUT_PERCENT / 100
    for index in range(4):  # every single word still appears in training
        assert {c[index] for c in valid} == {c[index] for c in set(valid) - heldout}
    for seed in range(400):
        scene = sample_scene(seed, split="train")
        for obj in scene.objects:
            assert (obj.colour, obj.shape, obj.motion, scene.camera.move) not in heldout, seed
    for seed in range(60):
        assert is_heldout(sample_scene(seed, split="heldout"))
    constrained = sample_scene(1, split="heldout", camera="zoom_in")
    assert is_heldout(constrained) and constrained.camera.move == "zoom_in"
    some = sorted(heldout)[0]
    with pytest.raises(ValueError):  # a held-out combination cannot be asked for in training
        sample_scene(0, split="train", colour=some[0], shape=some[1], motion=some[2], camera=some[3])


@pytest.mark.parametrize("height,width,frames", [(48, 80, 9), (64, 64, 17), (128, 128, 33)])
def test_any_size_and_length_renders(height, width, frames):
    scene = sample_scene(11, colour="orange", shape="square", motion="still", camera="pan_left",
                         background="checker", num_objects=1, lighting="constant")
    clip = render_clip(scene, height=height, width=width, num_frames=frames)
    assert clip.shape == (frames, height, width, 3) and clip.dtype == np.uint8
    assert np.array_equal(clip[0], first_frame(scene, height, width))
    measured = measure_clip(clip)
    assert (measured.colour, measured.shape, measured.motion, measured.camera) == ("orange", "square", "still", "left")
    # Time runs 0..1 whatever the length: the last frame shows the same moment at any length.
    short = render_clip(scene, height=height, width=width, num_frames=3)
    assert np.abs(short[-1].astype(int) - clip[-1].astype(int)).mean() < 2.0


def test_measure_recovers_colour_shape_motion_and_camera(corpus):
    """>= 95% per attribute over CORPUS_SIZE sampled scenes, every option included (shake and
    lighting changes too). Dolly clips get the world's parallax passed in: from frames alone a dolly
    past a still object is indistinguishable from a pan with a moving one."""
    hits, misses = collections.Counter(), collections.defaultdict(list)
    for scene, _, measured in corpus:
        expected = {"colour": scene.main.colour, "shape": scene.main.shape, "motion": scene.main.motion,
                    "camera": CAMERA_DIRECTIONS[scene.camera.move]}
        for key, value in expected.items():
            if getattr(measured, key) == value:
                hits[key] += 1
            else:
                misses[key].append((scene.seed, value, getattr(measured, key)))
    accuracy = {key: hits[key] / len(corpus) for key in ("colour", "shape", "motion", "camera")}
    assert all(a >= 0.95 for a in accuracy.values()), (accuracy, dict(misses))


def test_corpus_covers_every_option_and_keeps_the_main_object_in_view(corpus):
    seen = collections.defaultdict(set)
    for scene, _, measured in corpus:
        seen["motions"].add(scene.main.motion)
        seen["cameras"].add(scene.camera.move)
        seen["backgrounds"].add(scene.background.kind)
        seen["lightings"].add(scene.lighting)
        assert measured.track is not None and measured.track.found.all(), scene
    for key, values in seen.items():
        assert values == set(vocabulary()[key]), key


def test_a_blob_that_unmixes_to_nothing_is_read_from_its_own_pixels():
    """A blob whose inside has its surroundings' colour (the coverage unmixing finds no object colour) is shaped
    by its own pixels, not by a NaN centroid (which read every such blob as a square)."""
    import warnings

    from wan_dist.world.measure import _outline_harmonics, _shape_from

    frame = np.full((64, 64, 3), 90, dtype=np.uint8)
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 30) ** 2 + (xx - 34) ** 2 <= 12 ** 2
    block = (abs(yy - 30) <= 11) & (abs(xx - 34) <= 11)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN arithmetic warns
        assert _shape_from(_outline_harmonics(frame, disc)) == "circle"
        assert _shape_from(_outline_harmonics(frame, block)) == "square"


def test_measure_single_frames_and_empty_frames():
    for colour, shape in (("purple", "triangle"), ("white", "circle"), ("green", "square")):
        scene = sample_scene(2, colour=colour, shape=shape, motion="still", num_objects=1)
        frame = first_frame(scene, 64, 64)
        assert dominant_colour(frame) == colour and shape_name(frame) == shape
    dark = np.full((64, 64, 3), 30, dtype=np.uint8)
    assert dominant_colour(dark) is None and shape_name(dark) is None
    assert measure_clip(np.stack([dark, dark])).colour is None


def test_components_match_a_flood_fill():
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = rng.random((20, 24)) < 0.45
        labels, count = components(mask)
        expected, sizes = _flood_fill(mask)
        assert count == len(sizes)
        for label in range(1, count + 1):  # same partition, labelled largest first
            region = labels == label
            assert len(np.unique(expected[region])) == 1 and (expected == expected[region][0]).sum() == region.sum()
        assert [int((labels == k).sum()) for k in range(1, count + 1)] == sorted(sizes, reverse=True)


def _flood_fill(mask: np.ndarray) -> tuple[np.ndarray, list[int]]:
    labels, sizes = np.zeros(mask.shape, int), []
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        sizes.append(0)
        stack = [start]
        labels[start] = len(sizes)
        while stack:
            y, x = stack.pop()
            sizes[-1] += 1
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = len(sizes)
                    stack.append((ny, nx))
    return labels, sizes


def test_shake_is_band_limited_reproducible_and_scales_with_intensity():
    t = np.linspace(0, 1, 257)[:-1]
    x, y, _ = camera_state(Camera("shake", 1.0), 42, t)
    assert np.array_equal(x, camera_state(Camera("shake", 1.0), 42, t)[0])
    assert not np.allclose(x, camera_state(Camera("shake", 1.0), 43, t)[0])
    assert np.allclose(camera_state(Camera("shake", 0.5), 42, t)[0], 0.5 * x)
    assert x[0] == 0 and y[0] == 0, "the first frame is the unshaken view"
    for signal in (x, y):
        # Sinusoids of 1-3 cycles per clip, plus the constant that pins t=0 and the seam of a
        # non-periodic window: nearly all power sits below 4 cycles per clip.
        power = np.abs(np.fft.rfft(signal * np.hanning(len(signal)))) ** 2
        assert power[5:].sum() < 0.02 * power.sum()


def test_dolly_background_moves_less_than_the_foreground():
    scene = Scene((WorldObject("square", "yellow", "still", 0.15, 0.0, 0.25),),
                  Background("noise", "grey", "black", period=0.1), Camera("dolly_right", 0.35), seed=3)
    frames = render_clip(scene, height=64, width=64, num_frames=17)
    masks = np.stack([object_mask(f) for f in frames])
    for _ in range(2):  # grow the masks past the objects' anti-aliased rims
        masks = masks | np.roll(masks, 1, 1) | np.roll(masks, -1, 1) | np.roll(masks, 1, 2) | np.roll(masks, -1, 2)
    _, translation, _ = camera_track(frames, masks)
    track = track_main_object(frames)
    foreground = track.x[-1] - track.x[0]
    assert foreground == pytest.approx(-0.35 * 64, abs=1.0)
    assert translation[-1][0] == pytest.approx(DOLLY_BACKGROUND_FACTOR * foreground, abs=1.0)


def test_lighting_brightens_and_dims():
    base = sample_scene(9, lighting="constant", camera="static", motion="still")
    means = {}
    for lighting in ("constant", "brightening", "dimming"):
        clip = render_clip(dataclasses.replace(base, lighting=lighting), height=32, width=32, num_frames=5)
        means[lighting] = clip.reshape(5, -1).mean(1)
    assert np.ptp(means["constant"]) < 0.5
    assert np.all(np.diff(means["brightening"]) > 0) and np.all(np.diff(means["dimming"]) < 0)
    assert means["dimming"][-1] < 0.8 * means["dimming"][0]


def test_world_imports_only_numpy_and_pillow():
    code = ("import sys, wan_dist.world, wan_dist.world.measure\n"
            "banned = ('torch', 'ray', 'fsspec', 'hydra', 'omegaconf', 'cv2')\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in banned"
            " or (m.startswith('wan_dist.') and not m.startswith(('wan_dist.world', 'wan_dist.config')))]\n"
            "print(' '.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
