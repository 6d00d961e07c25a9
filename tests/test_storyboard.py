"""Storyboards (issue 17): shots, their transitions, their plan and a render of every transition."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wan_dist import load_pipeline
from wan_dist.config import OutputConfig
from wan_dist.controls.storyboard import apply_transition, dip_to_black, sub_path, transition_latents, whip_pan
from wan_dist.engine.long import LongClip
from wan_dist.engine.render import render
from wan_dist.engine.request import RenderRequest, RequestError, build_request
from wan_dist.engine.storyboard import plan_shots
from wan_dist.models.presets import get_preset
from wan_dist.video.mp4 import decode_mp4

SHOTS = [{"prompt": "a red circle", "duration_s": 1.0},
         {"prompt": "a blue square", "duration_s": 1.0, "transition": "crossfade", "transition_s": 0.3},
         {"prompt": "a green sky", "duration_s": 0.75, "transition": "whip_pan",
          "camera": {"moves": [{"type": "pan", "amount": 20}]}},
         {"prompt": "a cat", "duration_s": 1.0, "transition": "dip_to_black"},
         {"prompt": "a dog", "duration_s": 0.5, "transition": "cut"}]


def problems(fields, spec="tiny"):
    with pytest.raises(RequestError) as caught:
        build_request(fields, spec=get_preset(spec))
    return dict(caught.value.problems)


# ---------------------------------------------------------------------------------------------- field
def test_shot_errors_name_the_shot_and_its_part():
    assert "shots[1].transition" in problems({"shots": [SHOTS[0], {**SHOTS[1], "transition": "wipe"}]})
    assert "shots[0].transition" in problems({"shots": [{**SHOTS[0], "transition": "crossfade"}]})
    assert "shots[0].prompt" in problems({"shots": [{"duration_s": 1.0}]})
    assert "shots[1].duration_s" in problems({"shots": [SHOTS[0], {"prompt": "x", "duration_s": -1}]})
    assert "shots[0].camera.moves[0].type" in problems(
        {"shots": [{**SHOTS[0], "camera": {"moves": [{"type": "spin", "amount": 1}]}}]})
    found = problems({"shots": [{**SHOTS[0], "transition": "wipe"}]})
    assert "prompt" not in found  # the shots' own problem says why there is no prompt


def test_a_shot_too_short_for_the_transition_out_of_it_is_named():
    # at 16 fps a 0.5 s crossfade shares 2 latent frames = 5 frames (transition_latents); shot 0 lasting 0.25 s
    # adds 4 frames: fewer than the 5 the crossfade into shot 1 takes from its end
    found = problems({"shots": [{"prompt": "a", "duration_s": 0.25},
                                {"prompt": "b", "duration_s": 1.0, "transition": "crossfade"}]})
    assert set(found) == {"shots[0].duration_s"} and "crossfade into shot 1" in found["shots[0].duration_s"]


def test_durations_that_do_not_add_up_and_num_frames_beside_shots_are_refused():
    assert "shots" in problems({"shots": SHOTS, "duration_s": 5.0})  # the shots add up to 4.25 s
    assert "num_frames" in problems({"shots": SHOTS, "num_frames": 69})
    assert "camera" in problems({"shots": SHOTS, "camera": {"moves": [{"type": "pan", "amount": 5}]}})
    built = build_request({"shots": SHOTS, "duration_s": 4.25, "seed": 1}, spec=get_preset("tiny"))
    # 1 + the frames each shot adds: 16 + 16 + 12 + 16 + 8
    assert built.request.num_frames == 69 and built.request.prompt == "a red circle"
    assert built.request.shots[1]["transition_s"] == 0.3 and built.request.shots[0]["transition_s"] is None


def test_shot_plan_shares_transition_frames_and_drops_a_cuts_first_frame():
    shots = build_request({"shots": SHOTS, "seed": 1}, spec=get_preset("tiny")).request.shots
    plans = plan_shots(shots, fps=16, window=9, overlap=1, temporal_stride=4)
    # 0.3 s = 4.8 frames -> 2 latent frames -> 5 shared frames; a cut renders one frame more and drops it
    assert [(p.own, p.shared, p.frames) for p in plans] == [(16, 1, 17), (16, 5, 21), (12, 5, 17), (16, 5, 21),
                                                            (8, 1, 9)]
    assert transition_latents(0.3, 16, temporal_stride=4, window_latents=3) == 2  # capped below the window's 3


# ---------------------------------------------------------------------------------------------- transitions
def test_dip_to_black_darkens_to_black_in_the_middle():
    earlier, later = np.full((5, 2, 2, 3), 200, np.uint8), np.full((5, 2, 2, 3), 100, np.uint8)
    levels = dip_to_black(earlier, later)[:, 0, 0, 0].tolist()
    # brightness |linspace(-1, 1, 5)| = 1, .5, 0, .5, 1: earlier's first half, later's second
    assert levels == [200, 100, 0, 50, 100]


def test_whip_pan_slides_the_earlier_picture_out_to_the_left():
    width = 16
    earlier = np.zeros((5, 4, width, 3), np.uint8)
    later = np.full((5, 4, width, 3), 255, np.uint8)
    out = whip_pan(earlier, later).astype(float)
    brightness = out.mean(axis=(1, 2, 3))
    assert brightness[0] == 0 and brightness[-1] == 255  # ends: all earlier, all later
    assert np.all(np.diff(brightness) > 0)  # the later picture comes in from the right, steadily
    middle = out[2, 0, :, 0]
    assert middle[0] < middle[-1]  # mid-way: earlier on the left, later on the right


def test_crossfade_weights_both_pictures():
    earlier, later = np.zeros((3, 1, 1, 3), np.uint8), np.full((3, 1, 1, 3), 240, np.uint8)
    assert apply_transition("crossfade", earlier, later)[:, 0, 0, 0].tolist() == [60, 120, 180]


def test_sub_path_splits_a_move_by_the_share_of_it_done():
    camera = {"moves": [{"type": "pan", "amount": 20.0, "start": 0.0, "end": 1.0, "easing": "linear"},
                        {"type": "zoom", "amount": 4.0, "start": 0.5, "end": 1.0, "easing": "linear"}],
              "shake": None, "mode": "guided", "strength": 0.8}
    first = sub_path(camera, 0.0, 0.5)
    assert first["moves"] == [{"type": "pan", "amount": 10.0, "start": 0.0, "end": 1.0, "easing": "linear"}]
    second = sub_path(camera, 0.5, 1.0)
    assert second["moves"][1] == {"type": "zoom", "amount": 4.0, "start": 0.0, "end": 1.0, "easing": "linear"}
    quarter = sub_path(camera, 0.5, 0.75)["moves"][1]
    assert quarter["amount"] == pytest.approx(2.0)  # half the zoom's log-scale: 4 ** 0.5
    assert sub_path({**camera, "moves": camera["moves"][1:]}, 0.0, 0.25) is None


# ---------------------------------------------------------------------------------------------- render
@pytest.fixture(scope="module")
def tiny():
    return load_pipeline("tiny", dtype=torch.float32)


def test_a_storyboard_renders_every_frame_once_and_re_renders_exactly(tiny, tmp_path):
    built = build_request({"shots": SHOTS, "seed": 3, "long": {"window": 9}}, spec=tiny.spec)
    clip = LongClip(tiny, built.request)
    parts = list(clip.frames())
    assert sum(len(frames) for _, frames in parts) == 69
    first_windows = [r for r, _ in parts if r["shot_window"] == 0]
    assert [r["transition"] for r in first_windows] == [None, "crossfade", "whip_pan", "dip_to_black", "cut"]
    assert [r["image"] for r, _ in parts] == [None] * len(parts)  # t2v: no image, conditioned by imposition
    assert all(r["camera"] is not None for r, _ in parts if r["shot"] == 2)
    assert len({r["seed"] for r, _ in parts}) == len(parts)
    result = render(tiny, built.request, OutputConfig(uri=str(tmp_path / "a"), preset="ultrafast"))
    assert result.status == "completed", result.error
    sidecar = json.loads(open(result.sidecar_uri).read())
    assert [s["transition"] for s in sidecar["long"]["shots"]] == [s.get("transition", "cut") for s in SHOTS]
    assert decode_mp4(open(result.clip_uri, "rb").read())[0].shape[0] == 69
    again = render(tiny, RenderRequest.from_sidecar(sidecar), OutputConfig(uri=str(tmp_path / "b"), preset="ultrafast"))
    assert open(again.clip_uri, "rb").read() == open(result.clip_uri, "rb").read()
