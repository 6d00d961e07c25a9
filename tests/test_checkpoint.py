"""Checkpoint layouts: detection, shard-by-shard loading in both layouts, and every loader error."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from wan_dist.models.checkpoint import CheckpointError, detect_checkpoint, load_dit, load_text_encoder, load_vae
from wan_dist.models.presets import get_preset

SHARDED = 40_000  # bytes: the tiny expert (~110 kB) spreads over several shards


@pytest.mark.parametrize("variant,task,experts", [("tiny", "t2v", 2), ("tiny-i2v", "i2v", 2),
                                                   ("tiny-ti2v", "ti2v", 1)])
@pytest.mark.parametrize("layout", ["diffusers", "reference"])
def test_detects_layout_and_variant(checkpoint_factory, variant, task, experts, layout):
    info = detect_checkpoint(checkpoint_factory(variant, layout))
    assert (info.layout, info.spec.name, info.spec.task) == (layout, variant, task)
    assert len(info.expert_dirs) == experts and info.spec.two_experts == (experts == 2)
    assert info.spec.dit == get_preset(variant).dit
    assert info.spec.vae == get_preset(variant).vae
    assert info.spec.text_encoder == get_preset(variant).text_encoder
    assert info.spec.defaults.boundary_ratio == get_preset(variant).defaults.boundary_ratio


def test_both_layouts_hold_the_same_tensors(checkpoint_factory):
    diffusers = detect_checkpoint(checkpoint_factory("tiny", "diffusers", shard_bytes=SHARDED))
    reference = detect_checkpoint(checkpoint_factory("tiny", "reference", shard_bytes=SHARDED))
    assert len(list(reference.expert_dirs[0].glob("*.safetensors"))) > 2
    for expert in range(2):
        a = load_dit(diffusers.expert_dirs[expert], diffusers.spec.dit, layout="diffusers")
        b = load_dit(reference.expert_dirs[expert], reference.spec.dit, layout="reference")
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    high = load_dit(reference.expert_dirs[0], reference.spec.dit, layout="reference").state_dict()
    low = load_dit(reference.expert_dirs[1], reference.spec.dit, layout="reference").state_dict()
    assert not torch.equal(high["head.head.weight"], low["head.head.weight"])


@pytest.mark.parametrize("layout", ["diffusers", "reference"])
@torch.no_grad()
def test_loaded_expert_matches_diffusers_from_pretrained(checkpoint_factory, layout):
    from diffusers import WanTransformer3DModel

    diffusers_dir = checkpoint_factory("tiny-ti2v", "diffusers", shard_bytes=SHARDED)
    oracle = WanTransformer3DModel.from_pretrained(str(diffusers_dir / "transformer")).eval()
    info = detect_checkpoint(checkpoint_factory("tiny-ti2v", layout, shard_bytes=SHARDED))
    model = load_dit(info.expert_dirs[0], info.spec.dit, layout=layout)
    assert model.timestep_precision == ("float32" if layout == "diffusers" else "float64")
    # Same tensors either way; compare at diffusers' sinusoid precision (the reference computes it in
    # float64, which moves outputs by ~3e-5 at t ~ 1000: see test_dit.py).
    model.timestep_precision = "float32"
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(2, 48, 3, 4, 6, generator=generator)
    timestep = torch.tensor([[999.0] * 6 + [0.0] * 6 + [999.0] * 6, [500.0] * 18])
    context = torch.randn(2, 512, info.spec.dit.text_dim, generator=generator)
    expected = oracle(latents, timestep, context, return_dict=False)[0]
    assert (model(latents, timestep, context) - expected).abs().max().item() <= 1e-5


def test_bf16_load_keeps_fp32_parts(checkpoint_factory):
    info = detect_checkpoint(checkpoint_factory("tiny", "reference"))
    model = load_dit(info.expert_dirs[0], info.spec.dit, layout="reference", dtype=torch.bfloat16)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["blocks.0.self_attn.q.weight"] == torch.bfloat16
    assert dtypes["blocks.0.modulation"] == torch.float32
    assert dtypes["time_embedding.0.weight"] == torch.float32


def test_keep_predicate_reads_only_kept_tensors(checkpoint_factory):
    info = detect_checkpoint(checkpoint_factory("tiny", "reference", shard_bytes=SHARDED))
    model = load_dit(info.expert_dirs[0], info.spec.dit, layout="reference", keep=lambda n: n.startswith("blocks.1."))
    devices = {name: p.device.type for name, p in model.named_parameters()}
    assert all(dev == "cpu" for n, dev in devices.items() if n.startswith("blocks.1."))
    assert all(dev == "meta" for n, dev in devices.items() if not n.startswith("blocks.1."))


def test_vae_and_text_encoder_load_identically_from_both_layouts(checkpoint_factory):
    a = detect_checkpoint(checkpoint_factory("tiny", "diffusers"))
    b = detect_checkpoint(checkpoint_factory("tiny", "reference"))
    va, vb = load_vae(a), load_vae(b)
    sa, sb = va.model.state_dict(), vb.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ta, tb = load_text_encoder(a), load_text_encoder(b)
    prompts = ["a cat on a windowsill", "雪中的红狐狸"]
    assert torch.equal(ta.encode(prompts), tb.encode(prompts))


# ------------------------------------------------------------------------------------------ errors

@pytest.fixture
def broken(checkpoint_factory, tmp_path):
    """A fresh, writable copy of a sharded reference-layout tiny checkpoint and its high-noise folder."""
    source = checkpoint_factory("tiny", "reference", shard_bytes=SHARDED)
    root = tmp_path / "ckpt"
    shutil.copytree(source, root)
    return root, root / "high_noise_model"


def _first_shard(folder):
    index = json.loads((folder / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    return folder / shard, index


def _load(root):
    info = detect_checkpoint(root)
    return load_dit(info.expert_dirs[0], info.spec.dit, layout=info.layout)


def test_missing_key_is_named(broken):
    root, folder = broken
    shard, index = _first_shard(folder)
    tensors = load_file(str(shard))
    victim = sorted(tensors)[0]
    del tensors[victim]
    save_file(tensors, str(shard))
    del index["weight_map"][victim]
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"missing key.*{victim}"):
        _load(root)


def test_unexpected_key_is_named_with_its_file(broken):
    root, folder = broken
    shard, index = _first_shard(folder)
    tensors = load_file(str(shard))
    tensors["blocks.0.self_attn.extra.weight"] = torch.zeros(2)
    save_file(tensors, str(shard))
    index["weight_map"]["blocks.0.self_attn.extra.weight"] = shard.name
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"{shard.name}.*unexpected key 'blocks.0.self_attn.extra.weight'"):
        _load(root)


def test_wrong_shape_is_named(broken):
    root, folder = broken
    shard, _ = _first_shard(folder)
    tensors = load_file(str(shard))
    victim = sorted(k for k in tensors if tensors[k].ndim == 2)[0]
    tensors[victim] = tensors[victim][:, :-1].contiguous()
    save_file(tensors, str(shard))
    with pytest.raises(CheckpointError, match=rf"{shard.name}.*key '{victim}' has shape"):
        _load(root)


def test_truncated_shard_is_named(broken):
    root, folder = broken
    shard, _ = _first_shard(folder)
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{shard.name}"):
        _load(root)


def test_missing_shard_is_named(broken):
    root, folder = broken
    shard, _ = _first_shard(folder)
    shard.unlink()
    with pytest.raises(CheckpointError, match=rf"{shard.name}: shard missing"):
        _load(root)


def test_config_contradicting_tensors_is_named(broken):
    root, folder = broken
    config = json.loads((folder / "config.json").read_text())
    config["ffn_dim"] = config["ffn_dim"] * 2
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"ffn\.0\.(weight|bias).*has shape.*config\.json"):
        _load(root)


def test_invalid_config_json_is_named(broken):
    root, folder = broken
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"high_noise_model/config\.json: not valid JSON"):
        detect_checkpoint(root)


def test_missing_vae_file_is_named(broken):
    root, _ = broken
    (root / "Wan2.1_VAE.pth").unlink()
    with pytest.raises(CheckpointError, match=r"Wan2\.1_VAE\.pth"):
        detect_checkpoint(root)


def test_folder_of_neither_layout(tmp_path):
    with pytest.raises(CheckpointError, match="neither layout"):
        detect_checkpoint(tmp_path)


def test_truncated_vae_is_named(checkpoint_factory, tmp_path):
    root = tmp_path / "ckpt"
    shutil.copytree(checkpoint_factory("tiny", "diffusers"), root)
    weights = root / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"vae/diffusion_pytorch_model\.safetensors"):
        load_vae(detect_checkpoint(root))
