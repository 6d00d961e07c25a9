"""`fps` end to end: the `toy` model (16 fps) rendered for a 24 fps clip renders its own frames over the clip's
seconds and the publisher interpolates the rest; the sidecar records both rates and re-renders the clip exactly;
sidecars written before conversion existed re-render as they were (the model's frames played at their fps)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wan_dist import load_pipeline
from wan_dist.config import OutputConfig
from wan_dist.engine.render import generate_for, model_record, publish, render
from wan_dist.engine.request import RenderRequest, RequestError, build_request
from wan_dist.models.presets import PRESETS
from wan_dist.serve.schemas import RequestError as HTTPError, validate_job_request
from wan_dist.storage.objects import read_bytes
from wan_dist.video.interpolate import convert_fps
from wan_dist.video.mp4 import decode_mp4, encode_mp4

pytestmark = pytest.mark.slow
OUTPUT = {"preset": "ultrafast"}


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("toy", dtype=torch.float32)


@pytest.fixture(scope="module")
def published(pipe, tmp_path_factory):
    """One 24 fps render of 9 native frames (0.5 s), with a camera shake, and the model's own frames."""
    fields = {"prompt": "A red circle moves to the right across a dark blue background.", "seed": 4,
              "num_inference_steps": 3, "num_frames": 9, "fps": 24, "name": "shake",
              "camera": {"shake": {"intensity": 0.4, "frequency_hz": 3.0}}}
    request = build_request(fields, spec=pipe.spec).request
    out = generate_for(pipe, request)
    native = out.frames[0].copy()
    output = OutputConfig(uri=str(tmp_path_factory.mktemp("fps")), **OUTPUT)
    result = publish(model_record(pipe, "toy"), request, out, output)
    assert result.status == "completed", result.error
    return request, native, result, json.loads(read_bytes(result.sidecar_uri))


def decoded(uri: str) -> tuple[np.ndarray, float]:
    return decode_mp4(read_bytes(uri))


def test_the_clip_has_the_frames_of_its_seconds_at_24_fps(published):
    request, native, result, _ = published
    assert request.num_frames == 9 and request.fps == 24 and request.fps_mode == "convert"
    frames, fps = decoded(result.clip_uri)
    assert fps == 24 and len(frames) == 13  # 0.5 s: 12 intervals of 1/24 s
    assert len(native) == 9  # the model rendered its own rate
    expected, _ = convert_fps(native, 16, 24)
    assert np.array_equal(frames, decode_mp4(encode_mp4(expected, 24, preset=OUTPUT["preset"]))[0])


def test_the_sidecar_records_both_rates_and_the_conversion(published):
    _, _, _, sidecar = published
    assert (sidecar["fps"], sidecar["render_fps"]) == (24, 16)
    conversion = sidecar["fps_conversion"]
    assert (conversion["method"], conversion["frames_in"], conversion["frames_out"], conversion["interpolated"]) == (
        "dis_flow", 9, 13, 8)
    assert sidecar["camera_path"]["path"]["fps"] == 16  # the shake (in Hz) is sampled at the frames the model renders
    assert "fps_conversion_s" in sidecar["timings"]


def test_a_re_render_from_the_sidecar_reproduces_the_clip_exactly(published, pipe, tmp_path):
    request, _, result, sidecar = published
    again = RenderRequest.from_sidecar(sidecar)
    assert (again.num_frames, again.fps, again.fps_mode, again.seed) == (9, 24, "convert", request.seed)
    repeat = render(pipe, again, OutputConfig(uri=str(tmp_path), **OUTPUT), model_source="toy")
    assert repeat.status == "completed", repeat.error
    first, second = decoded(result.clip_uri), decoded(repeat.clip_uri)
    assert first[1] == second[1] and np.array_equal(first[0], second[0])


def test_a_sidecar_from_before_conversion_re_renders_as_it_was(published, pipe, tmp_path):
    """Before, fps was only the playback rate: the model's 9 frames played at 24 fps."""
    _, native, _, sidecar = published
    old = {k: v for k, v in sidecar.items() if k not in ("render_fps", "fps_conversion")}
    old["request"] = {k: v for k, v in sidecar["request"].items() if k != "fps_mode"}
    again = RenderRequest.from_sidecar(old)
    assert again.fps_mode == "playback" and again.render_fps(16) == 24
    result = render(pipe, again, OutputConfig(uri=str(tmp_path), **OUTPUT), model_source="toy")
    frames, fps = decoded(result.clip_uri)
    assert fps == 24 and len(frames) == 9
    sidecar_again = json.loads(read_bytes(result.sidecar_uri))
    assert sidecar_again["render_fps"] == 24 and "fps_conversion" not in sidecar_again
    assert sidecar_again["camera_path"]["path"]["fps"] == 24  # as it was sampled then
    # at the model's own rate an old sidecar means what a new one means
    native_rate = {**old, "fps": 16, "request": {**old["request"], "fps": 16}}
    assert RenderRequest.from_sidecar(native_rate).fps_mode is None


def test_fewer_frames_below_the_model_rate(pipe, tmp_path):
    request = build_request({"prompt": "a kite", "seed": 2, "num_inference_steps": 2, "num_frames": 17, "fps": 8},
                            spec=pipe.spec).request
    out = generate_for(pipe, request)
    native = out.frames[0].copy()
    result = publish(model_record(pipe, "toy"), request, out, OutputConfig(uri=str(tmp_path), **OUTPUT))
    frames, fps = decoded(result.clip_uri)
    assert fps == 8 and len(frames) == 9  # 1 s at 8 fps
    assert np.array_equal(frames, decode_mp4(encode_mp4(native[::2], 8, preset=OUTPUT["preset"]))[0])


# --- the doors: lengths, rates and errors --------------------------------------------------------------------------

def test_duration_counts_the_frames_the_model_renders():
    built = build_request({"prompt": "x", "duration_s": 5.0, "fps": 24}, spec=PRESETS["t2v-a14b"])
    assert built.request.num_frames == 81  # 5 s at A14B's 16 fps
    assert (built.settings["render_fps"], built.settings["frames"], built.seconds) == (16, 121, 5.0)
    played = build_request({"prompt": "x", "duration_s": 5.0, "fps": 24, "fps_mode": "playback"},
                           spec=PRESETS["t2v-a14b"])
    assert played.request.num_frames == 121 and played.settings["frames"] == 121  # rendered at 24 (as before)


def test_the_native_rate_stores_no_mode():
    for fields in ({"fps": 16}, {"fps": 16, "fps_mode": "playback"}, {"fps_mode": "convert"}, {}):
        assert build_request({"prompt": "x", **fields}, spec=PRESETS["tiny"]).request.fps_mode is None
    assert build_request({"prompt": "x", "fps": 24}, spec=PRESETS["tiny"]).request.fps_mode == "convert"


def test_http_reports_the_seconds_of_the_converted_clip():
    job = validate_job_request({"prompt": "x", "num_frames": 9, "fps": 24}, variant="tiny")
    assert job.seconds == "0.5" and job.settings["frames"] == 13 and job.request.fps_mode == "convert"
    with pytest.raises(HTTPError) as refused:
        validate_job_request({"prompt": "x", "fps": 100}, variant="tiny")
    assert refused.value.param == "fps" and "at most 64" in str(refused.value)


def test_an_unreachable_fps_names_the_field_and_says_what_is():
    with pytest.raises(RequestError) as refused:
        build_request({"prompt": "x", "fps": 65}, spec=PRESETS["tiny"])
    assert refused.value.field == "fps" and "at most 64" in refused.value.reason
    assert build_request({"prompt": "x", "fps": 65, "fps_mode": "playback"}, spec=PRESETS["tiny"]).request.fps == 65
    # 20 s at 24 fps from A14B: 321 frames rendered at 16 fps as a long clip, published as 481 at 24 fps
    built = build_request({"prompt": "x", "duration_s": 20.0, "fps": 24}, spec=PRESETS["t2v-a14b"])
    assert (built.request.num_frames, built.settings["frames"]) == (20 * 16 + 1, 20 * 24 + 1)
    assert built.request.long is not None and built.request.fps_mode == "convert"
    with pytest.raises(RequestError) as long:
        build_request({"prompt": "x", "duration_s": 3600.0, "fps": 30, "fps_mode": "playback"},
                      spec=PRESETS["t2v-a14b"])
    assert long.value.field == "duration_s" and "30 fps" in long.value.reason
