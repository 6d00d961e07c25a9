"""Long clips (issue 17): the window plan, the seam, the request field, streaming MP4 and a windowed render."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wan_dist import load_pipeline
from wan_dist.config import OutputConfig
from wan_dist.controls.long import LongSpec, Window, blend_seam, plan_windows, seam_weights, window_seed
from wan_dist.engine.long import ImposedSeam, LongClip, is_windowed
from wan_dist.engine.render import render
from wan_dist.engine.request import MAX_NUM_FRAMES, RenderRequest, RequestError, build_request
from wan_dist.models.presets import get_preset
from wan_dist.sampling.denoise import TextToVideo
from wan_dist.sampling.schedules import diffusers_schedule
from wan_dist.video.mp4 import Mp4Writer, decode_mp4, encode_mp4


# ---------------------------------------------------------------------------------------------- plan
def test_windows_of_49_frames_in_17_frame_windows_sharing_two_latent_frames():
    # 2 latent frames shared -> 4*1+1 = 5 frames; each window after the first adds 17 - 5 = 12 frames:
    # [0, 17), [12, 29), [24, 41), and the last one ends on frame 48: [36, 49) (13 frames, 4*3+1)
    windows = plan_windows(49, window=17, overlap=2)
    assert windows == [Window(0, 0, 17, 0), Window(1, 12, 17, 5), Window(2, 24, 17, 5), Window(3, 36, 13, 5)]


def test_windows_sharing_one_frame_and_a_clip_that_fits_one_window():
    assert plan_windows(33, window=17, overlap=1) == [Window(0, 0, 17, 0), Window(1, 16, 17, 1)]
    assert plan_windows(17, window=17, overlap=3) == [Window(0, 0, 17, 0)]
    assert plan_windows(9, window=17, overlap=1) == [Window(0, 0, 9, 0)]


@pytest.mark.parametrize("frames,window,overlap", [(961, 17, 1), (961, 81, 4), (125, 21, 2), (45, 17, 4)])
def test_windows_cover_the_clip_exactly_and_every_window_is_4k_plus_1(frames, window, overlap):
    windows = plan_windows(frames, window=window, overlap=overlap)
    covered = np.zeros(frames, dtype=int)
    for w in windows:
        covered[w.start:w.start + w.frames] += 1
        assert (w.frames - 1) % 4 == 0 and w.frames <= window
    assert covered.min() == 1 and windows[-1].start + windows[-1].frames == frames
    for before, after in zip(windows, windows[1:]):  # consecutive windows share exactly `overlap` frames
        assert before.start + before.frames - after.start == after.overlap == 4 * (overlap - 1) + 1


def test_window_seeds_differ_and_the_first_is_the_requests():
    seeds = [window_seed(7, k) for k in range(50)]
    assert seeds[0] == 7 and len(set(seeds)) == 50


def test_seam_blend_ramps_from_the_earlier_window_to_the_later():
    earlier = np.full((3, 2, 2, 3), 200, np.uint8)
    later = np.zeros((3, 2, 2, 3), np.uint8)
    # weights of the later window 1/4, 2/4, 3/4 -> 200 * (3/4, 2/4, 1/4)
    assert blend_seam(earlier, later)[:, 0, 0, 0].tolist() == [150, 100, 50]
    assert seam_weights(1).tolist() == [0.5]


# ---------------------------------------------------------------------------------------------- field
def test_long_field_errors_name_the_part():
    spec = get_preset("toy")  # 17-frame windows: 5 latent frames
    cases = [({"overlap": 5}, "overlap"), ({"method": "spin"}, "method"), ({"window": 19}, "window"),
             ({"impose": 2}, "impose"), ({"span": 1}, "span"), ({"window": 401}, "window")]
    for long, part in cases:
        with pytest.raises(RequestError) as caught:
            build_request({"prompt": "a red circle", "num_frames": 49, "long": long}, spec=spec)
        assert (caught.value.field, caught.value.reason.split(":")[0]) == ("long", part), caught.value.problems


def test_beyond_one_window_a_clip_is_long_with_the_defaults():
    spec = get_preset("toy")
    built = build_request({"prompt": "a red circle", "duration_s": 60.0, "seed": 1}, spec=spec)
    assert built.request.num_frames == 961 > MAX_NUM_FRAMES
    assert built.request.long == LongSpec().to_dict() and is_windowed(built.request, spec)
    short = build_request({"prompt": "a red circle", "duration_s": 3.0, "seed": 1}, spec=spec).request
    assert short.long is None and not is_windowed(short, spec)
    assert short.digest() == RenderRequest.from_dict(short.to_dict()).digest()


def test_a_windowed_clip_refuses_what_it_cannot_honour_by_name():
    spec = get_preset("toy")
    with pytest.raises(RequestError) as caught:  # a camera path is given per shot; renditions need kept windows
        build_request({"prompt": "a red circle", "num_frames": 49, "long": {"method": "sliding"},
                       "renditions": ["youtube"], "camera": {"moves": [{"type": "pan", "amount": 10}]}}, spec=spec)
    assert {"renditions", "camera"} <= {field for field, _ in caught.value.problems}
    # with continue (the default) the renditions are cut window by window
    assert build_request({"prompt": "a red circle", "num_frames": 49, "long": {}, "renditions": ["youtube"]},
                         spec=spec).request.renditions == ["youtube"]
    with pytest.raises(RequestError) as caught:
        build_request({"prompt": "a red circle", "num_frames": 49, "long": {"method": "sliding"}},
                      spec=get_preset("toy-i2v"))
    assert ("long", "method") in {(field, reason.split(":")[0]) for field, reason in caught.value.problems}


# ---------------------------------------------------------------------------------------------- seam
def test_imposed_seam_holds_the_clean_frames_at_each_steps_level_then_lets_go():
    schedule = diffusers_schedule(6, 5.0, solver="unipc")
    clean = torch.full((1, 2, 1, 2, 2), 3.0)
    noise = torch.full((1, 2, 1, 2, 2), -1.0)
    seam = ImposedSeam(TextToVideo(), clean, noise, schedule, until=2)
    latents = seam.start(torch.zeros(1, 2, 3, 2, 2))
    sigma = [float(s) for s in schedule.sigmas]
    assert torch.allclose(latents[:, :, 0], torch.tensor((1 - sigma[0]) * 3.0 - sigma[0]))
    assert latents[:, :, 1:].eq(0).all()
    for index, timestep in enumerate(schedule.timesteps):
        seam.model_timestep(timestep, 1)
        stepped = seam.after_step(torch.full((1, 2, 3, 2, 2), 9.0))
        expected = (1 - sigma[index + 1]) * 3.0 - sigma[index + 1] if index < 2 else 9.0
        assert torch.allclose(stepped[:, :, 0], torch.tensor(expected)), index
        assert stepped[:, :, 1:].eq(9.0).all()


# ---------------------------------------------------------------------------------------------- video
def test_mp4_writer_streams_the_same_frames_as_one_encode(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (10, 32, 48, 3), dtype=np.uint8)
    path = tmp_path / "clip.mp4"
    with Mp4Writer(str(path), 8, crf=0, preset="ultrafast") as writer:
        writer.write(frames[:3])
        writer.write(frames[3:])
    streamed, fps = decode_mp4(path.read_bytes())
    whole, _ = decode_mp4(encode_mp4(frames, 8, crf=0, preset="ultrafast"))
    assert fps == 8 and streamed.shape == frames.shape and np.array_equal(streamed, whole)
    with pytest.raises(ValueError, match="no frames"):
        Mp4Writer(str(tmp_path / "empty.mp4"), 8).close()


# ---------------------------------------------------------------------------------------------- render
@pytest.fixture(scope="module")
def tiny():
    return load_pipeline("tiny", dtype=torch.float32)


def test_long_clip_frames_join_windows_with_blended_seams(tiny):
    # 25 frames in 9-frame windows sharing 2 latent frames (5 frames): windows at 0, 4, 8, 12, 16
    request = build_request({"prompt": "a red circle", "num_frames": 25, "seed": 5,
                             "long": {"window": 9, "overlap": 2, "impose": 1.0}}, spec=tiny.spec).request
    clip = LongClip(tiny, request)
    parts = list(clip.frames())
    frames = np.concatenate([f for _, f in parts])
    assert frames.shape == (25, 64, 64, 3)
    assert [r["start"] for r, _ in parts] == [0, 4, 8, 12, 16]
    # imposing until the last step but one (impose 1.0 of 2 steps -> 1)
    assert [r["impose_steps"] for r, _ in parts] == [0, 1, 1, 1, 1]
    assert len({r["seed"] for r, _ in parts}) == 5
    # window 0 is the one-window render of its seed (the first 4 frames were handed on unblended)
    alone = tiny.generate("a red circle", num_frames=9, seed=5).frames[0]
    assert np.array_equal(frames[:4], alone[:4])


def test_long_render_publishes_a_sidecar_that_re_renders_the_clip_exactly(tiny, tmp_path):
    built = build_request({"prompt": "a red circle", "num_frames": 21, "seed": 2, "name": "long",
                           "long": {"window": 9, "overlap": 1}}, spec=tiny.spec)
    output = OutputConfig(uri=str(tmp_path / "a"), preset="ultrafast")
    result = render(tiny, built.request, output)
    assert result.status == "completed", result.error
    sidecar = json.loads(open(result.sidecar_uri).read())
    windows = sidecar["long"]["windows"]
    assert [(w["start"], w["frames"], w["overlap"]) for w in windows] == [(0, 9, 0), (8, 9, 1), (16, 5, 1)]
    assert [w["seed"] for w in windows] == [window_seed(2, k) for k in range(3)]
    clip, _ = decode_mp4(open(result.clip_uri, "rb").read())
    assert clip.shape[0] == 21
    again = render(tiny, RenderRequest.from_sidecar(sidecar), OutputConfig(uri=str(tmp_path / "b"), preset="ultrafast"))
    assert open(again.clip_uri, "rb").read() == open(result.clip_uri, "rb").read()


def test_a_long_clip_converted_to_twice_the_models_rate_keeps_its_frames_and_makes_the_ones_between(tiny, tmp_path):
    """fps conversion streams with the windows (video.interpolate.Retimer): the model renders its own rate, every
    other published frame is one it rendered, and the sidecar re-renders the same bytes."""
    native = tiny.spec.defaults.fps
    fields = {"prompt": "a red circle", "num_frames": 21, "seed": 3, "long": {"window": 9, "overlap": 1}}
    plain = render(tiny, build_request(fields, spec=tiny.spec).request,
                   OutputConfig(uri=str(tmp_path / "plain"), preset="ultrafast"))
    built = build_request({**fields, "fps": 2 * native}, spec=tiny.spec)
    assert built.settings["frames"] == 41
    result = render(tiny, built.request, OutputConfig(uri=str(tmp_path / "a"), preset="ultrafast"))
    assert result.status == plain.status == "completed", result.error
    sidecar = json.loads(open(result.sidecar_uri).read())
    assert (sidecar["fps"], sidecar["render_fps"]) == (2 * native, native)
    conversion = sidecar["fps_conversion"]
    assert (conversion["frames_in"], conversion["frames_out"], conversion["method"]) == (21, 41, "dis_flow")
    clip, rate = decode_mp4(open(result.clip_uri, "rb").read())
    rendered, _ = decode_mp4(open(plain.clip_uri, "rb").read())
    assert clip.shape[0] == 41 and rate == 2 * native
    # the even frames are the model's (both clips lossy-encoded: within the codec's error)
    # the even frames are the model's: both clips are lossy (noise-like tiny frames cost the codec ~5 levels), yet
    # far closer to the rendered frames than the made frames between them are to their rendered neighbours
    kept = np.abs(clip[::2].astype(int) - rendered.astype(int)).mean()
    between = np.abs(clip[1::2].astype(int) - rendered[1:].astype(int)).mean()
    assert kept < 0.5 * between, (kept, between)
    again = render(tiny, RenderRequest.from_sidecar(sidecar), OutputConfig(uri=str(tmp_path / "b"), preset="ultrafast"))
    assert open(again.clip_uri, "rb").read() == open(result.clip_uri, "rb").read()


def test_a_step_cache_runs_in_every_continued_window_and_sliding_windows_refuse_it(tiny, tmp_path):
    fields = {"prompt": "a red circle", "num_frames": 21, "seed": 3, "num_inference_steps": 8,
              "cache": "teacache", "cache_threshold": 5.0, "long": {"window": 9, "overlap": 1}}
    result = render(tiny, build_request(fields, spec=tiny.spec).request,
                    OutputConfig(uri=str(tmp_path / "a"), preset="ultrafast"))
    assert result.status == "completed", result.error
    windows = json.loads(open(result.sidecar_uri).read())["long"]["windows"]
    assert len(windows) == 3 and all(w["step_cache"]["mode"] == "teacache" for w in windows)
    assert all(0 < len(w["step_cache"]["skipped_steps"]) < 8 for w in windows), [w["step_cache"] for w in windows]
    with pytest.raises(RequestError) as refused:
        build_request({**fields, "long": {"method": "sliding", "window": 9, "overlap": 1}}, spec=tiny.spec)
    assert refused.value.field == "cache" and "sliding" in refused.value.reason


# ---------------------------------------------------------------------------------------------- sliding
def test_sliding_windows_fuse_weights_and_noise_rescheduling():
    from wan_dist.engine.sliding import fuse_weights, latent_windows, reschedule_noise

    # 12 latent frames in windows of 5 sharing 2: starts 0, 3, 6 and the last aligned to the end, 7
    assert latent_windows(12, window=5, overlap=2) == [(0, 5), (3, 8), (6, 11), (7, 12)]
    assert latent_windows(4, window=5, overlap=2) == [(0, 4)]
    assert fuse_weights(5, overlap=2, kind="linear", first=False, last=False).tolist() == [1 / 3, 2 / 3, 1, 2 / 3, 1 / 3]
    assert fuse_weights(5, overlap=2, kind="linear", first=True, last=False).tolist()[:3] == [1, 1, 1]
    assert fuse_weights(5, overlap=2, kind="pyramid", first=True, last=True).tolist() == [1, 2, 3, 2, 1]
    noise = torch.arange(9, dtype=torch.float32).reshape(1, 1, 9, 1, 1)
    moved = reschedule_noise(noise, window=4, stride=2, seed=0).flatten().tolist()
    assert moved[:4] == [0, 1, 2, 3]
    # frames [4, 6) take frames {0, 1} shuffled, [6, 8) frames {2, 3}, [8] frame {4}'s noise (itself from {0, 1})
    assert sorted(moved[4:6]) == [0, 1] and sorted(moved[6:8]) == [2, 3] and moved[8] in (0, 1)


def test_fused_prediction_of_a_frame_wise_expert_is_that_expert_on_the_whole_latent():
    from wan_dist.engine.sliding import fused_prediction, latent_windows

    # an expert that acts on each frame alone: every window agrees where they overlap, so any weighting gives
    # the expert's output on the whole latent
    def expert(x, t, context):
        return x * 2.0 + t.reshape(-1, 1, 1, 1, 1)

    def base(expert_fn, model_input, timestep, context, negative, scale, *, batched_context=None):
        return expert_fn(model_input, timestep, context)

    latent = torch.randn(1, 2, 12, 2, 2)
    windows = latent_windows(12, window=5, overlap=2)
    for kind in ("linear", "pyramid"):
        fused = fused_prediction(base, windows, overlap=2, kind=kind)(expert, latent, torch.tensor([3.0]), None,
                                                                       None, 1.0)
        assert torch.allclose(fused, expert(latent, torch.tensor([3.0]), None), atol=1e-6)


def test_segment_decode_has_every_frame_once(tiny):
    from wan_dist.engine.sliding import decode_segments

    latents = torch.randn(1, 16, 7, 8, 8)
    parts = list(decode_segments(tiny.vae, latents, segment=3))
    assert [len(p) for p in parts] == [9, 12, 4]  # latents [0, 3): 1 + 2 * 4; [3, 6): 3 * 4; [6, 7): 4
    # the first segment is the plain decode of its latents
    from wan_dist.models.vae import video_to_frames

    assert np.array_equal(parts[0], video_to_frames(tiny.vae.decode(latents[:, :, :3]))[0])


def test_a_sliding_clip_renders_every_frame_and_re_renders_exactly(tiny, tmp_path):
    built = build_request({"prompt": "a red circle", "num_frames": 29, "seed": 4,
                           "long": {"method": "sliding", "window": 9, "overlap": 1, "fuse": "pyramid"}},
                          spec=tiny.spec)
    result = render(tiny, built.request, OutputConfig(uri=str(tmp_path / "a"), preset="ultrafast"))
    assert result.status == "completed", result.error
    sidecar = json.loads(open(result.sidecar_uri).read())
    assert sidecar["long"]["method"] == "sliding" and sidecar["long"]["noise"] == "freenoise"
    # 29 frames -> 8 latent frames in windows of 3 sharing 1: [0, 3), [2, 5), [4, 7), [5, 8)
    assert [(w["latent_start"], w["latent_end"]) for w in sidecar["long"]["windows"]] == [(0, 3), (2, 5), (4, 7),
                                                                                          (5, 8)]
    assert decode_mp4(open(result.clip_uri, "rb").read())[0].shape[0] == 29
    again = render(tiny, RenderRequest.from_sidecar(sidecar), OutputConfig(uri=str(tmp_path / "b"), preset="ultrafast"))
    assert open(again.clip_uri, "rb").read() == open(result.clip_uri, "rb").read()


# ---------------------------------------------------------------------------------------------- resume
def test_a_stopped_long_render_resumes_after_its_last_finished_window(tiny, tmp_path):
    from wan_dist.sampling.stop import StopRender
    from wan_dist.storage.objects import list_prefix

    # 25 frames in 9-frame windows sharing 1 latent frame: windows at 0, 8, 16; 2 steps each
    request = build_request({"prompt": "a red circle", "num_frames": 25, "seed": 8, "name": "resumable",
                             "long": {"window": 9, "overlap": 1}}, spec=tiny.spec).request
    output = OutputConfig(uri=str(tmp_path / "out"), preset="ultrafast")
    seen: list[int] = []

    def stop_in_window_2(step, total, _latents, _estimate):
        seen.append(step)
        if step == 4:  # window 2's first step
            raise StopRender("cancelled")

    with pytest.raises(StopRender):
        render(tiny, request, output, callback=stop_in_window_2)
    assert seen == [0, 1, 2, 3, 4]
    kept = list_prefix(str(tmp_path / "out" / "resumable" / "windows"))
    assert sorted(uri.rsplit("/", 1)[1] for uri in kept if uri.endswith(".json")) == ["0000.json", "0001.json"]
    seen.clear()
    result = render(tiny, request, output, callback=lambda step, *_: seen.append(step))
    assert result.status == "completed", result.error
    assert seen == [4, 5]  # only window 2 rendered: windows 0 and 1 came from storage
    assert list_prefix(str(tmp_path / "out" / "resumable" / "windows")) == []  # removed once published
    sidecar = json.loads(open(result.sidecar_uri).read())
    assert [w["index"] for w in sidecar["long"]["windows"]] == [0, 1, 2]
    fresh = render(tiny, request, OutputConfig(uri=str(tmp_path / "fresh"), preset="ultrafast"))
    assert open(fresh.clip_uri, "rb").read() == open(result.clip_uri, "rb").read()


def test_windows_of_another_request_are_not_resumed(tiny, tmp_path):
    from wan_dist.engine.windows import WindowStore

    store = WindowStore(str(tmp_path / "clip"), "digest-a")
    store.save(0, np.zeros((4, 8, 8, 3), np.uint8), np.ones((1, 8, 8, 3), np.uint8), record={"index": 0},
               settings={}, timings={}, loras=[])
    resumed = store.load()
    assert resumed.count == 1 and resumed.tail.shape == (1, 8, 8, 3) and resumed.tail.max() == 1
    assert [len(s) for s in store.segments(1)] == [4]
    assert WindowStore(str(tmp_path / "clip"), "digest-b").load() is None
    assert store.load() is None  # the other request's windows were deleted


@pytest.mark.parametrize("variant", ["tiny-i2v", "tiny-ti2v"])
def test_image_models_continue_from_the_first_shared_frame(variant, tmp_path):
    from PIL import Image

    pipe = load_pipeline(variant, dtype=torch.float32)
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:48, 8:40] = (200, 40, 40)
    Image.fromarray(image).save(tmp_path / "image.png")
    window = pipe.spec.defaults.num_frames  # 9
    request = build_request({"prompt": "a red box", "image": str(tmp_path / "image.png"), "seed": 1,
                             "num_frames": 2 * window - 1, "long": {"overlap": 1}}, spec=pipe.spec).request
    clip = LongClip(pipe, request)
    seen_images = []
    prepare = pipe.prepare

    def spy(settings, **kwargs):  # the image each window is conditioned on
        seen_images.append(kwargs.get("image"))
        return prepare(settings, **kwargs)

    pipe.prepare = spy
    windows = clip.frames()
    first = next(windows)
    held = clip.tail.copy()  # window 0's last frame, held for the seam
    parts = [first, *windows]
    frames = np.concatenate([f for _, f in parts])
    assert frames.shape[0] == 2 * window - 1
    assert [r["image"] for r, _ in parts] == ["request", "seam"]
    assert held.shape == (1, 64, 64, 3) and np.array_equal(np.asarray(seen_images[1]), held[0])


def test_a_long_clip_keeps_its_input_images_style_window_by_window(tmp_path):
    """style_lock on a long clip: the latent pull in every window and the colour pass streamed over the stored
    windows (engine.long.StyleRegrade): the clip drifts less from the image's grade, the sidecar records it as a
    one-window clip's, and re-renders the same bytes; a sliding clip refuses it by name."""
    from PIL import Image

    pipe = load_pipeline("tiny-ti2v", dtype=torch.float32)
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :32] = (200, 120, 40)  # a warm half and a cool half: a grade random weights do not keep
    image[:, 32:] = (30, 60, 170)
    Image.fromarray(image).save(tmp_path / "image.png")
    fields = {"prompt": "a warm and a cool half", "image": str(tmp_path / "image.png"), "seed": 2,
              "num_frames": 21, "num_inference_steps": 3, "long": {"window": 9, "overlap": 1}}
    locked = build_request({**fields, "style_lock": 1.0}, spec=pipe.spec).request
    result = render(pipe, locked, OutputConfig(uri=str(tmp_path / "a"), preset="ultrafast"))
    assert result.status == "completed", result.error
    record = json.loads(open(result.sidecar_uri).read())["style_lock"]
    assert record["strength"] == 1.0
    assert record["drift_ciede2000"]["with"] < record["drift_ciede2000"]["without"], record
    # the grade (each frame's mean colour; random weights redraw the content) against the same clip unlocked
    from wan_dist.controls.style import grade_drift

    plain = render(pipe, build_request(fields, spec=pipe.spec).request,
                   OutputConfig(uri=str(tmp_path / "plain"), preset="ultrafast"))
    clip, _ = decode_mp4(open(result.clip_uri, "rb").read())
    unlocked, _ = decode_mp4(open(plain.clip_uri, "rb").read())
    assert clip.shape[0] == unlocked.shape[0] == 21
    assert grade_drift(clip, image) < 0.5 * grade_drift(unlocked, image), (grade_drift(clip, image),
                                                                           grade_drift(unlocked, image))
    sidecar = json.loads(open(result.sidecar_uri).read())
    again = render(pipe, RenderRequest.from_sidecar(sidecar), OutputConfig(uri=str(tmp_path / "b"), preset="ultrafast"))
    assert open(again.clip_uri, "rb").read() == open(result.clip_uri, "rb").read()
    with pytest.raises(RequestError) as refused:
        build_request({**fields, "style_lock": 1.0, "long": {"method": "sliding", "window": 9, "overlap": 1}},
                      spec=get_preset("tiny"))  # (t2v: sliding's own rule; the image is refused beside it)
    assert "style_lock" in {field for field, _ in refused.value.problems}


def test_a_long_clips_renditions_are_cut_window_by_window_as_a_whole_clips_are(tiny, tmp_path):
    """Renditions of a long clip (engine.long_post.LongRenditions): the subject tracked while the clip is encoded,
    then each profile cut, titled and encoded in a second pass over the kept windows; with a given subject_box they
    equal the one-window post pass (controls.renditions.make_rendition) on the whole clip's frames, the title's fade
    timed over the whole rendition although it is drawn window by window."""
    from wan_dist.controls import OverlaySpec
    from wan_dist.controls.renditions import make_rendition, parse_renditions

    fields = {"prompt": "a red circle", "num_frames": 21, "seed": 6, "long": {"window": 9, "overlap": 1},
              "renditions": ["tiktok"], "subject_box": [[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.9]],
              "overlays": {"title": {"text": "Kites", "start": 0.3, "end": 0.9, "fade": 0.2}, "guides": True}}
    request = build_request(fields, spec=tiny.spec).request
    result = render(tiny, request, OutputConfig(uri=str(tmp_path / "a"), preset="ultrafast", crf=0))
    assert result.status == "completed", result.error
    sidecar = json.loads(open(result.sidecar_uri).read())
    (entry,) = sidecar["renditions"]
    assert set(result.renditions) == set(result.rendition_guides) == {"tiktok"}
    made, rate = decode_mp4(open(result.renditions["tiktok"], "rb").read())
    frames = np.concatenate([f for _, f in LongClip(tiny, request).frames()])  # the clip's frames, in memory
    (profile,) = parse_renditions(["tiktok"])
    whole = make_rendition(frames, tiny.spec.defaults.fps, profile, subject_box=request.subject_box,
                           overlays=OverlaySpec.from_dict(request.overlays))
    assert made.shape == whole.frames.shape and rate == profile.fps and entry["num_frames"] == len(whole.frames)
    assert entry["crop_path"] == np.round(whole.windows, 2).tolist()
    difference = np.abs(made.astype(int) - whole.frames.astype(int)).mean(axis=(1, 2, 3))
    assert difference.max() < 2.0, difference  # the codec's error alone (the title's fade frames included)
    guides, _ = decode_mp4(open(result.rendition_guides["tiktok"], "rb").read())
    assert guides.shape == made.shape
