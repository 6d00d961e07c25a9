"""wan_dist.video: real H.264 encode/decode with PyAV; wan_dist.engine.clips: clips with sidecars on memory://,
local and S3 (moto)."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from wan_dist.engine.clips import ClipURIs, read_sidecar, write_clip
from wan_dist.storage import ObjectNotFoundError, delete, list_prefix, read_bytes
from wan_dist.video import decode_mp4, encode_mp4, frames_from_video_tensor, probe_mp4

PROMPT = "一只橘猫在雪地里奔跑, café au lait ☕ — «Zürich»"


def gradient_frames(count: int = 9, height: int = 64, width: int = 96) -> np.ndarray:
    """Smooth, moving colour gradients: easy for a lossy codec, different in every frame."""
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for index in range(count):
        red = 128 + 100 * np.sin((columns + 3 * index) / width * 2 * np.pi)
        green = 128 + 100 * np.cos((rows + 2 * index) / height * 2 * np.pi)
        blue = (rows + columns) / (height + width) * 200 + 4 * index
        frames.append(np.stack([red, green, blue], axis=-1))
    return np.clip(np.round(np.stack(frames)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def encoded():
    frames = gradient_frames()
    return frames, encode_mp4(frames, 16)


def test_encode_decode_round_trip(encoded):
    frames, data = encoded
    assert data[4:8] == b"ftyp"
    decoded, fps = decode_mp4(data)
    assert decoded.shape == (9, 64, 96, 3) and decoded.dtype == np.uint8
    assert fps == 16.0
    error = np.abs(decoded.astype(np.int16) - frames.astype(np.int16)).mean()
    assert error < 3.0, error
    # frame order survives (B-frames reorder in the bitstream): each decoded frame is closest to its source
    distances = np.abs(decoded[:, None].astype(np.int16) - frames[None].astype(np.int16)).mean(axis=(2, 3, 4))
    assert list(distances.argmin(axis=1)) == list(range(9))


def test_probe(encoded):
    _, data = encoded
    info = probe_mp4(data)
    assert {key: info[key] for key in ("frames", "width", "height", "fps", "codec", "pix_fmt")} == {
        "frames": 9,
        "width": 96,
        "height": 64,
        "fps": 16.0,
        "codec": "h264",
        "pix_fmt": "yuv420p",
    }
    assert info["duration_s"] == pytest.approx(9 / 16, abs=1e-3)


@pytest.mark.parametrize("count, fps, preset", [(1, 16, "medium"), (2, 24, "medium"), (17, 16, "ultrafast")])
def test_exact_frame_count(count, fps, preset):
    data = encode_mp4(gradient_frames(count, 32, 48), fps, preset=preset)
    decoded, decoded_fps = decode_mp4(data)
    assert decoded.shape[0] == count
    assert decoded_fps == float(fps)
    assert probe_mp4(data)["frames"] == count


@pytest.mark.parametrize("height, width, named", [(63, 96, "height=63"), (64, 95, "width=95")])
def test_odd_size_names_the_dimension(height, width, named):
    frames = np.zeros((3, height, width, 3), np.uint8)
    with pytest.raises(ValueError, match=named):
        encode_mp4(frames, 16)


def test_invalid_inputs_are_refused():
    with pytest.raises(TypeError, match="uint8"):
        encode_mp4(np.zeros((2, 8, 8, 3), np.float32), 16)
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        encode_mp4(np.zeros((2, 8, 8), np.uint8), 16)
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        encode_mp4(np.zeros((2, 8, 8, 4), np.uint8), 16)
    with pytest.raises(ValueError, match="non-empty"):
        encode_mp4(np.zeros((0, 8, 8, 3), np.uint8), 16)
    with pytest.raises(ValueError, match="fps"):
        encode_mp4(np.zeros((2, 8, 8, 3), np.uint8), 0)
    with pytest.raises(ValueError):
        decode_mp4(b"this is not an mp4 file at all" * 10)
    with pytest.raises(ValueError):
        probe_mp4(b"")


def test_frames_from_video_tensor_matches_diffusers_rounding():
    values = np.array([-1.0, -0.5, 0.0, 0.001, 0.5, 1.0, 1.5, -2.0], np.float32)
    video = np.broadcast_to(values[None, None, :, None], (2, 4, 8, 3)).copy()
    frames = frames_from_video_tensor(video)
    assert frames.dtype == np.uint8 and frames.shape == (2, 4, 8, 3)
    # clamp(x / 2 + 0.5, 0, 1) * 255, rounded half to even: what VideoProcessor.postprocess_video gives
    assert list(frames[0, 0, :, 0]) == [0, 64, 128, 128, 191, 255, 255, 0]

    channels_first = np.moveaxis(video, -1, 0)
    np.testing.assert_array_equal(frames_from_video_tensor(channels_first, layout="CFHW"), frames)
    with pytest.raises(ValueError, match="NaN"):
        frames_from_video_tensor(np.full((1, 2, 2, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"\[3, F, H, W\]"):
        frames_from_video_tensor(video, layout="CFHW")
    with pytest.raises(TypeError):
        frames_from_video_tensor(frames)


def test_frames_from_torch_tensor():
    torch = pytest.importorskip("torch")
    generator = torch.Generator().manual_seed(0)
    video = torch.rand(3, 5, 16, 24, generator=generator) * 2.4 - 1.2  # [C, F, H, W], beyond [-1, 1] too
    expected = frames_from_video_tensor(video.permute(1, 2, 3, 0).numpy())
    np.testing.assert_array_equal(frames_from_video_tensor(video, layout="CFHW"), expected)
    half = video.to(torch.bfloat16)
    from_half = frames_from_video_tensor(half, layout="CFHW")
    np.testing.assert_array_equal(
        from_half, frames_from_video_tensor(half.float().permute(1, 2, 3, 0).numpy())
    )


def check_clip(uris: ClipURIs, prefix: str, sidecar: dict, frames: np.ndarray) -> None:
    assert uris == ClipURIs(clip_uri=f"{prefix}/clip.mp4", sidecar_uri=f"{prefix}/clip.json")
    assert read_sidecar(prefix) == sidecar
    raw = read_bytes(uris.sidecar_uri)
    assert PROMPT.encode("utf-8") in raw  # stored as UTF-8, not \u escapes
    assert raw == (json.dumps(sidecar, ensure_ascii=False, sort_keys=True, indent=2) + "\n").encode()
    decoded, fps = decode_mp4(read_bytes(uris.clip_uri))
    assert decoded.shape == frames.shape and fps == 16.0
    assert list_prefix(prefix, include_temporary=True) == sorted([uris.clip_uri, uris.sidecar_uri])


def sample_clip():
    video = gradient_frames().astype(np.float32) / 127.5 - 1.0
    frames = frames_from_video_tensor(video)
    sidecar = {"prompt": PROMPT, "seed": 1234, "timings": {"denoise_s": 1.5}, "frames": 9}
    return frames, sidecar


def test_write_clip_memory_round_trip():
    frames, sidecar = sample_clip()
    prefix = f"memory://clips-{uuid.uuid4().hex}/run/0001"
    try:
        uris = write_clip(frames, fps=16, prefix_uri=prefix, sidecar=sidecar, preset="ultrafast")
        check_clip(uris, prefix, sidecar, frames)
        # a rerun publishes over the old clip and sidecar
        sidecar2 = dict(sidecar, seed=99)
        write_clip(frames[:3], fps=16, prefix_uri=prefix, sidecar=sidecar2, preset="ultrafast")
        assert read_sidecar(prefix)["seed"] == 99
        assert decode_mp4(read_bytes(uris.clip_uri))[0].shape[0] == 3
    finally:
        delete(prefix, recursive=True)


def test_write_clip_s3_round_trip(s3_server):
    import boto3

    frames, sidecar = sample_clip()
    prefix = s3_server.uri("runs", "r1", "0001")
    uris = write_clip(frames, fps=16, prefix_uri=prefix, sidecar=sidecar, preset="ultrafast")
    check_clip(uris, prefix, sidecar, frames)
    client = boto3.client("s3")
    assert client.head_object(Bucket=s3_server.bucket, Key="runs/r1/0001/clip.mp4")["ContentType"] == "video/mp4"
    assert (
        client.head_object(Bucket=s3_server.bucket, Key="runs/r1/0001/clip.json")["ContentType"]
        == "application/json"
    )


def test_write_clip_local_publishes_clip_before_sidecar(tmp_path):
    frames, sidecar = sample_clip()
    uris = write_clip(frames, fps=16, prefix_uri=str(tmp_path / "0001"), sidecar=sidecar, preset="ultrafast")
    check_clip(uris, str(tmp_path / "0001"), sidecar, frames)
    clip_stat = (tmp_path / "0001" / "clip.mp4").stat()
    sidecar_stat = (tmp_path / "0001" / "clip.json").stat()
    assert clip_stat.st_mtime_ns <= sidecar_stat.st_mtime_ns


def test_write_clip_bad_input_writes_nothing():
    frames, sidecar = sample_clip()
    prefix = f"memory://clips-{uuid.uuid4().hex}/bad"
    with pytest.raises(ValueError):
        write_clip(frames, fps=16, prefix_uri=prefix, sidecar={"loss": float("nan")})
    with pytest.raises(TypeError):
        write_clip(frames, fps=16, prefix_uri=prefix, sidecar={"when": object()})
    with pytest.raises(ValueError, match="width=95"):
        write_clip(np.zeros((2, 8, 95, 3), np.uint8), fps=16, prefix_uri=prefix, sidecar=sidecar)
    assert list_prefix(prefix, include_temporary=True) == []
    with pytest.raises(ObjectNotFoundError):
        read_sidecar(prefix)
