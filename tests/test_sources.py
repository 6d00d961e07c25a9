"""Checkpoint sources: presets, folders, fsspec URLs (a real S3 server) and Hugging Face repo ids."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from wan_dist import load_pipeline
from wan_dist.engine.sources import resolve_source
from wan_dist.models.checkpoint import detect_checkpoint


def _upload(fs, local, remote):
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.put_file(str(path), f"{remote}/{path.relative_to(local).as_posix()}")


def test_s3_url_is_copied_once_and_loads(checkpoint_factory, s3_server, tmp_path):
    import s3fs

    local = checkpoint_factory("tiny", "reference")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    _upload(fs, local, f"{s3_server.bucket}/models/tiny")
    url = s3_server.uri("models", "tiny")
    folder = resolve_source(url, cache_dir=tmp_path)
    info = detect_checkpoint(folder)
    assert (info.layout, info.spec.name) == ("reference", "tiny")
    assert resolve_source(url + "/", cache_dir=tmp_path) == folder  # cached, keyed by URL
    pipe = load_pipeline(url, cache_dir=tmp_path, dtype=torch.float32)
    reference = load_pipeline(str(local), dtype=torch.float32)
    for ours, theirs in zip(pipe.experts, reference.experts):
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))


def test_missing_url_folder_is_a_clear_error(s3_server, tmp_path):
    with pytest.raises(ValueError, match=r"model: s3://.*/nothing-here is not a folder"):
        resolve_source(s3_server.uri("nothing-here"), cache_dir=tmp_path)


def test_embedded_preset_is_written_once_in_the_real_layout(tmp_path):
    folder = resolve_source("tiny", cache_dir=tmp_path, layout="reference")
    assert (folder / "high_noise_model" / "config.json").exists()
    stamp = (folder / "high_noise_model" / "config.json").stat().st_mtime_ns
    assert resolve_source("tiny", cache_dir=tmp_path, layout="reference") == folder
    assert (folder / "high_noise_model" / "config.json").stat().st_mtime_ns == stamp


def test_released_preset_without_weights_points_to_make_checkpoint(tmp_path):
    with pytest.raises(ValueError, match=r"t2v-a14b.*make-checkpoint"):
        resolve_source("t2v-a14b", cache_dir=tmp_path)


def test_unknown_source_names_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"^model: "):
        resolve_source(str(tmp_path / "no" / "such" / "folder"), cache_dir=tmp_path)


def test_hub_repo_id_offline_fails_cleanly(tmp_path):
    """A repo id goes to huggingface_hub; offline (as in every test) it fails with the reason."""
    code = textwrap.dedent(f"""
        from wan_dist.engine.sources import resolve_source
        try:
            resolve_source("Wan-AI/Wan2.2-T2V-A14B-Diffusers", cache_dir={str(tmp_path)!r})
        except ValueError as error:
            print("ERROR", error)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert "ERROR model: cannot fetch Hugging Face repo 'Wan-AI/Wan2.2-T2V-A14B-Diffusers'" in out
