"""The shipped `toy` / `toy-i2v` weights (wan_dist/models/shipped.py): half-precision copies of trained runs,
toy-i2v stored without the parts it shares with toy, assembled into a loadable folder on first use."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from frame_metrics import psnr
from wan_dist.models.make_checkpoint import make_checkpoint
from wan_dist.models.shipped import SHIPPED_DIR, ship, shipped_checkpoint


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two random checkpoints standing in for the published runs (same VAE, text encoder and tokenizer, as a
    toy-i2v run trained with vae_from and the toy run's tokenizer has)."""
    root = tmp_path_factory.mktemp("runs")
    return make_checkpoint("toy", root / "toy"), make_checkpoint("toy-i2v", root / "toy-i2v")


def test_ship_writes_half_precision_and_toy_i2v_without_shared_parts(runs, tmp_path):
    toy, i2v = runs
    sizes = ship(toy, i2v, to=tmp_path)
    assert sorted(p.name for p in (tmp_path / "toy-i2v").iterdir()) == [
        "model_index.json", "scheduler", "transformer", "transformer_2"]
    assert {p.name for p in (tmp_path / "toy").iterdir()} >= {"vae", "text_encoder", "tokenizer", "transformer"}
    for file in tmp_path.rglob("*.safetensors"):
        dtypes = {t.dtype for t in load_file(file).values() if t.is_floating_point()}
        assert dtypes == {torch.float16}, file
    source_bytes = sum(f.stat().st_size for f in toy.rglob("*.safetensors"))
    shipped_bytes = sum(f.stat().st_size for f in (tmp_path / "toy").rglob("*.safetensors"))
    assert shipped_bytes == pytest.approx(source_bytes / 2, rel=0.01)  # fp32 -> fp16
    assert sizes["toy"] == sum(f.stat().st_size for f in (tmp_path / "toy").rglob("*") if f.is_file())
    index = json.loads((tmp_path / "toy" / "transformer" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(
        f.stat().st_size for f in (tmp_path / "toy" / "transformer").glob("*.safetensors"))


def test_shipped_folders_load_and_render_as_their_runs(runs, tmp_path):
    from wan_dist import load_pipeline

    toy, i2v = runs
    ship(toy, i2v, to=tmp_path / "weights")
    cache = tmp_path / "cache"
    assert shipped_checkpoint("toy", cache, root=tmp_path / "weights") == tmp_path / "weights" / "toy"
    assembled = shipped_checkpoint("toy-i2v", cache, root=tmp_path / "weights")
    assert assembled.parent == cache / "checkpoints" and (assembled / "vae").is_dir()
    assert shipped_checkpoint("toy-i2v", cache, root=tmp_path / "weights") == assembled  # assembled once
    assert shipped_checkpoint("tiny", cache, root=tmp_path / "weights") is None
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)

    def render(folder, seed=3, **extra):
        return load_pipeline(folder, dtype=torch.float32).generate(
            "a red circle moves to the right", seed=seed, num_inference_steps=3, num_frames=5, **extra).frames[0]

    for original, shipped, extra in ((toy, tmp_path / "weights" / "toy", {}), (i2v, assembled, {"image": image})):
        ours, theirs = render(shipped, **extra), render(original, **extra)
        assert ours.shape == (5, 64, 64, 3)
        # half-precision weights: the same clip up to rounding
        assert psnr(ours, theirs) >= 35.0, (original.name, psnr(ours, theirs))
        # ... which this PSNR tells from another clip
        assert psnr(render(original, seed=4, **extra), theirs) < 30.0


def test_a_toy_i2v_with_other_shared_parts_is_refused(runs, tmp_path):
    import shutil

    toy, i2v = runs
    other = tmp_path / "other"
    shutil.copytree(i2v, other)
    (other / "tokenizer" / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ValueError, match="toy_i2v: its tokenizer differs from toy's"):
        ship(toy, other, to=tmp_path / "weights")


def test_the_repository_ships_at_most_30_mb():
    files = [f for f in SHIPPED_DIR.rglob("*") if f.is_file()] if SHIPPED_DIR.exists() else []
    assert sum(f.stat().st_size for f in files) <= 30_000_000


@pytest.mark.parametrize("name", ["toy", "toy-i2v"])
def test_load_pipeline_reads_the_shipped_weights(name, tmp_path, monkeypatch):
    from wan_dist import load_pipeline
    from wan_dist.engine.sources import resolve_source

    monkeypatch.setenv("WAN_DIST_CACHE", str(tmp_path / "cache"))
    folder = resolve_source(name)
    assert folder == SHIPPED_DIR / name if name == "toy" else folder.parent == tmp_path / "cache" / "checkpoints"
    pipe = load_pipeline(name, dtype=torch.float32)
    shards = sorted((SHIPPED_DIR / name / "transformer").glob("*.safetensors"))
    shipped = {k: v for shard in shards for k, v in load_file(shard).items()}
    ours = dict(pipe.experts[0].named_parameters())
    # every parameter comes from the shipped files (names differ between the layouts: compare the totals)
    assert len(ours) == len(shipped)
    total = sum(float(v.double().abs().sum()) for v in shipped.values())
    assert sum(float(p.double().abs().sum()) for p in ours.values()) == pytest.approx(total, rel=1e-9)
    vae = load_file(SHIPPED_DIR / "toy" / "vae" / "diffusion_pytorch_model.safetensors")
    loaded = dict(pipe.vae.model.named_parameters()) if hasattr(pipe.vae, "model") else {}
    assert loaded and all(torch.equal(loaded[k], vae[k].float()) for k in list(vae)[:20])
