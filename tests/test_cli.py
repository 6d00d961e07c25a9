"""The command line as a user runs it: real processes, real MP4s, sidecars that reproduce a render."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from wan_dist.cli.main import rewrite_overrides
from wan_dist.video.mp4 import decode_mp4, probe_mp4

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
VERBS = ("render", "batch", "manifest", "serve", "plan", "make-checkpoint")


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``wan-dist *args`` as a user runs it, whatever its exit status."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "wan_dist.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def wan_dist(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WAN_DIST_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.run([sys.executable, "-m", "wan_dist.cli.main", *args], cwd=cwd, env=env,
                             capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    return process


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One CLI render of the tiny model with explicit size, frames and fps (above the model's 16: interpolated)."""
    root = tmp_path_factory.mktemp("cli")
    cache = root / "cache"
    out = root / "out"
    wan_dist("render", "model=tiny", "prompt=a paper boat drifting on a canal", "seed=7", f"output={out}",
             "height=48", "width=80", "num_frames=13", "fps=24", "sampling.num_inference_steps=3",
             "name=boat", "progress=false", cwd=root, cache=cache)
    return root, cache, out / "boat"


def test_render_writes_an_mp4_with_the_requested_frames_size_and_fps(rendered):
    _, _, clip = rendered
    data = (clip / "clip.mp4").read_bytes()
    info = probe_mp4(data)
    # 13 frames rendered at 16 fps span 0.75 s: 19 frames at 24 fps
    assert (info["frames"], info["width"], info["height"], info["fps"]) == (19, 80, 48, 24)
    assert (info["codec"], info["pix_fmt"]) == ("h264", "yuv420p")
    frames, fps = decode_mp4(data)
    assert frames.shape == (19, 48, 80, 3) and fps == 24
    assert frames.std() > 1.0  # an image, not a constant


def test_sidecar_records_every_resolved_setting(rendered):
    _, _, clip = rendered
    sidecar = json.loads((clip / "clip.json").read_text())
    settings = sidecar["settings"]
    assert settings["prompts"] == ["a paper boat drifting on a canal"]
    assert (settings["seed"], settings["num_frames"], settings["height"], settings["width"]) == (7, 13, 48, 80)
    assert (settings["num_inference_steps"], settings["guidance_scale"], settings["guidance_scale_2"]) == (3, 4.0, 3.0)
    assert settings["boundary_ratio"] == 0.875 and settings["schedule"] == "diffusers"
    assert (sidecar["fps"], sidecar["render_fps"]) == (24, 16) and sidecar["model"]["source"] == "tiny"
    assert set(sidecar["timings"]) >= {"denoise_s", "decode_s", "total_s"}
    assert "torch" in sidecar["versions"] and "diffusers" in sidecar["versions"]


def test_sidecar_fed_back_reproduces_the_clip(rendered):
    root, cache, clip = rendered
    again = root / "again"
    wan_dist("render", f"sidecar={clip / 'clip.json'}", f"output={again}", "progress=false", cwd=root, cache=cache)
    [folder] = list(again.iterdir())
    first, _ = decode_mp4((clip / "clip.mp4").read_bytes())
    second, _ = decode_mp4((folder / "clip.mp4").read_bytes())
    assert np.array_equal(first, second)
    a = json.loads((clip / "clip.json").read_text())["settings"]
    b = json.loads((folder / "clip.json").read_text())["settings"]
    assert a == b


def test_another_seed_gives_another_clip(rendered):
    root, cache, clip = rendered
    other = root / "other"
    wan_dist("render", "model=tiny", "prompt=a paper boat drifting on a canal", "seed=8", f"output={other}",
             "height=48", "width=80", "num_frames=13", "fps=24", "sampling.num_inference_steps=3", "name=boat",
             "progress=false", cwd=root, cache=cache)
    first, _ = decode_mp4((clip / "clip.mp4").read_bytes())
    second, _ = decode_mp4((other / "boat" / "clip.mp4").read_bytes())
    assert np.abs(first.astype(int) - second.astype(int)).mean() > 1.0


def test_make_checkpoint_then_render_from_the_folder(tmp_path):
    ckpt = tmp_path / "ckpt"
    wan_dist("make-checkpoint", "variant=tiny-ti2v", "layout=reference", f"out={ckpt}", "seed=3",
             cwd=tmp_path, cache=tmp_path / "cache")
    assert (ckpt / "config.json").exists() and (ckpt / "Wan2.2_VAE.pth").exists()
    assert (ckpt / "google" / "umt5-xxl" / "tokenizer_config.json").exists()
    wan_dist("render", f"model={ckpt}", "prompt=waves", "seed=1", f"output={tmp_path / 'out'}", "name=waves",
             "num_frames=5", "sampling.num_inference_steps=2", "progress=false", cwd=tmp_path, cache=tmp_path / "cache")
    sidecar = json.loads((tmp_path / "out" / "waves" / "clip.json").read_text())
    assert sidecar["model"]["layout"] == "reference" and sidecar["settings"]["schedule"] == "reference"
    assert probe_mp4((tmp_path / "out" / "waves" / "clip.mp4").read_bytes())["frames"] == 5


def test_bad_field_fails_with_its_name(tmp_path):
    env = {**os.environ, "WAN_DIST_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    process = subprocess.run([sys.executable, "-m", "wan_dist.cli.main", "render", "num_frames=10",
                              f"output={tmp_path}", "progress=false"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert process.returncode != 0
    assert "num_frames: must be 4k+1" in process.stderr
    assert not list(tmp_path.glob("clip-*"))


def test_free_form_model_and_output_values_become_field_overrides():
    assert rewrite_overrides(["model=tiny", "output=local"]) == ["model=tiny", "output=local"]
    assert rewrite_overrides(["model=/ckpt/wan", "output=s3://bucket/run", "seed=3"]) == [
        "model=custom", "model.source=/ckpt/wan", "output=local", "output.uri=s3://bucket/run", "seed=3"]


def test_help_lists_every_verb_with_one_line_each(tmp_path):
    process = run_cli("--help", cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    lines = process.stdout.splitlines()
    for verb in VERBS:
        [line] = [line for line in lines if line.split()[:1] == [verb]]
        assert len(line.split()) >= 5, line  # the verb, then what it does
    assert "wan-dist <verb> --help" in process.stdout and "--version" in process.stdout


def test_version_prints_the_version_of_pyproject(tmp_path):
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    process = run_cli("--version", cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip() == f"wan-dist {version}"


@pytest.mark.parametrize("verb,setting", [("batch", "max_attempts"), ("render", "num_frames")])
def test_a_verbs_help_is_hydras_help_for_that_verb(tmp_path, verb, setting):
    process = run_cli(verb, "--help", cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    assert "== Config ==" in process.stdout and f"{setting}:" in process.stdout
    assert not list(tmp_path.iterdir())  # help only: nothing rendered, nothing written


def test_an_unknown_verb_fails_and_points_at_help(tmp_path):
    process = run_cli("--verison", cwd=tmp_path)
    assert process.returncode != 0
    assert "unknown verb '--verison'" in process.stderr and "wan-dist --help" in process.stderr


def _batch(*overrides: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m wan_dist.cli.batch`` (what ``ray job submit`` runs) on a local Ray of its own."""
    clean = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR")}
    env = {**clean, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "WAN_DIST_CACHE": str(cwd / "cache"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "wan_dist.cli.batch", *overrides, "ray.num_cpus=2",
                           "ray.object_store_memory_mb=200", "batch.groups=1", "batch.progress_interval_s=60"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_a_batch_with_a_failed_row_exits_non_zero_unless_told_otherwise(tmp_path):
    from wan_dist.batch.manifest import write_manifest

    fast = {"model": "tiny", "height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 2}
    write_manifest([{"id": "good", "prompt": "a lighthouse at night", **fast},
                    {"id": "bad-frames", "prompt": "x", **{**fast, "num_frames": 8}}], str(tmp_path / "m.parquet"))
    first = _batch("manifest=m.parquet", "output=out", cwd=tmp_path)  # relative: against the working directory
    assert first.returncode == 3, first.stdout[-2000:] + first.stderr[-3000:]
    assert "1 row(s) failed" in first.stderr and "batch.fail_on_row_errors=false" in first.stderr
    out = tmp_path / "out"
    assert (out / "good" / "clip.mp4").exists()
    lines = first.stdout.splitlines()
    assert "run " in first.stdout and "1 completed, 0 already published, 1 failed, of 2 rows" in first.stdout
    assert f"clips:   {out}/<output_prefix>/<id>/clip.mp4 (+ clip.json)" in lines
    [results] = [line for line in lines if line.startswith("results: ")]
    assert results.startswith(f"results: {out}/_results/run-")  # absolute: where the table really is
    assert [line for line in lines if line.startswith("failed:  bad-frames [num_frames]: must be 4k+1")], first.stdout

    again = _batch("manifest=m.parquet", "output=out", "batch.fail_on_row_errors=false", cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert "0 completed, 1 already published, 1 failed, of 2 rows" in again.stdout


def test_a_batch_inside_a_ray_job_refuses_a_relative_output_before_starting(tmp_path):
    from test_cli_paths import job_environment

    process = _batch("output=outputs/x", cwd=tmp_path, env=job_environment())
    assert process.returncode == 1
    assert "wan-dist batch: output: 'outputs/x' is a relative local path" in process.stderr
    assert not (tmp_path / "outputs").exists()
    assert "Started a local Ray instance" not in process.stdout + process.stderr
