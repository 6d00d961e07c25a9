"""WanVAE against diffusers' own Wan pipeline paths, config mapping, and reference key maps."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from wan_dist.models.presets import get_preset
from wan_dist.models.ref_keymaps import vae_state_dict_from_reference, vae_state_dict_to_reference
from wan_dist.models.vae import WanVAE, build_vae, vae_config_from_diffusers, vae_config_to_diffusers

PRESETS = {"2.1": "tiny", "2.2": "tiny-ti2v"}


@pytest.fixture(scope="module", params=["2.1", "2.2"])
def vae(request) -> WanVAE:
    config = get_preset(PRESETS[request.param]).vae
    assert config.version == request.param
    torch.manual_seed(0)
    model = build_vae(config)
    # random init leaves some convs at zero (attention proj); perturb every tensor so each one matters.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return WanVAE(model, config)


def _pipeline_decode(model, latents: torch.Tensor) -> torch.Tensor:
    """diffusers WanPipeline.__call__'s decode step, verbatim in substance."""
    latents = latents.to(model.dtype)
    latents_mean = torch.tensor(model.config.latents_mean).view(1, model.config.z_dim, 1, 1, 1).to(
        latents.device, latents.dtype)
    latents_std = 1.0 / torch.tensor(model.config.latents_std).view(1, model.config.z_dim, 1, 1, 1).to(
        latents.device, latents.dtype)
    latents = latents / latents_std + latents_mean
    return model.decode(latents, return_dict=False)[0]


def _pipeline_encode(model, video: torch.Tensor) -> torch.Tensor:
    """diffusers WanImageToVideoPipeline.prepare_latents' encode + normalise step."""
    from diffusers.pipelines.wan.pipeline_wan_i2v import retrieve_latents

    latents_mean = torch.tensor(model.config.latents_mean).view(1, model.config.z_dim, 1, 1, 1)
    latents_std = 1.0 / torch.tensor(model.config.latents_std).view(1, model.config.z_dim, 1, 1, 1)
    latent = retrieve_latents(model.encode(video.to(model.dtype)), sample_mode="argmax")
    return (latent - latents_mean) * latents_std


def test_decode_matches_diffusers_pipeline(vae: WanVAE):
    generator = torch.Generator().manual_seed(1)
    size = 64 // vae.spatial_stride
    latents = torch.randn(2, vae.z_dim, 3, size, size, generator=generator)
    ours = vae.decode(latents)
    with torch.no_grad():
        theirs = _pipeline_decode(vae.model, latents)
    assert ours.shape == theirs.shape == (2, 3, 9, 64, 64)
    assert ours.dtype == torch.float32
    assert (ours - theirs).abs().max().item() <= 1e-5
    assert ours.min() >= -1.0 and ours.max() <= 1.0


def test_encode_matches_diffusers_i2v_path_and_shapes(vae: WanVAE):
    generator = torch.Generator().manual_seed(2)
    video = torch.rand(2, 3, 9, 64, 64, generator=generator) * 2 - 1
    latents = vae.encode(video)
    size = 64 // vae.spatial_stride
    assert latents.shape == (2, vae.z_dim, 3, size, size) == (2, *vae.latent_shape(9, 64, 64))
    with torch.no_grad():
        theirs = _pipeline_encode(vae.model, video)
    assert (latents - theirs).abs().max().item() <= 1e-5
    assert torch.equal(vae.encode(video), latents)  # posterior mean, not a sample
    decoded = vae.decode(latents)
    assert decoded.shape == (2, 3, 9, 64, 64) and decoded.dtype == torch.float32


def test_inputs_cast_to_fp32(vae: WanVAE):
    size = 64 // vae.spatial_stride
    latents = torch.randn(1, vae.z_dim, 1, size, size)
    out_bf16 = vae.decode(latents.to(torch.bfloat16))
    out_fp32 = vae.decode(latents.to(torch.bfloat16).float())
    assert out_bf16.dtype == torch.float32 and torch.equal(out_bf16, out_fp32)
    assert out_bf16.shape == (1, 3, 1, 64, 64)


def test_normalize_denormalize(vae: WanVAE):
    mu = torch.randn(1, vae.z_dim, 2, 3, 3)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(vae.normalize(mu), (mu - mean) / std)
    torch.testing.assert_close(vae.denormalize(vae.normalize(mu)), mu)


def test_frame_rules(vae: WanVAE):
    assert vae.temporal_stride == 4
    assert [vae.latent_frames(f) for f in (1, 5, 9, 81, 121)] == [1, 2, 3, 21, 31]
    for bad in (0, 8, 10, -3):
        with pytest.raises(ValueError, match=r"num_frames.*4k\+1"):
            vae.check_num_frames(bad)
    with pytest.raises(ValueError, match="num_frames"):
        vae.encode(torch.zeros(1, 3, 10, 64, 64))
    with pytest.raises(ValueError, match="spatial stride"):
        vae.encode(torch.zeros(1, 3, 5, 64 + vae.spatial_stride // 2, 64))


def test_strides_match_released_variants():
    assert get_preset("t2v-a14b").vae.spatial_stride == 8
    assert get_preset("ti2v-5b").vae.spatial_stride == 16
    assert get_preset("tiny").vae.spatial_stride == 8 and get_preset("tiny-ti2v").vae.spatial_stride == 16


def test_diffusers_config_wan22_facts():
    # diffusers scripts/convert_wan_to_diffusers.py, vae22_diffusers_config (facts, not imported).
    kwargs = vae_config_to_diffusers(get_preset("ti2v-5b").vae)
    expected = {"base_dim": 160, "z_dim": 48, "is_residual": True, "in_channels": 12, "out_channels": 12,
                "decoder_base_dim": 256, "scale_factor_temporal": 4, "scale_factor_spatial": 16, "patch_size": 2}
    assert {k: kwargs[k] for k in expected} == expected
    assert kwargs["latents_mean"][:2] == [-0.2289, -0.0052] and kwargs["latents_std"][-1] == 0.7744
    wan21 = vae_config_to_diffusers(get_preset("t2v-a14b").vae)
    assert (wan21["in_channels"], wan21["patch_size"], wan21["scale_factor_spatial"], wan21["base_dim"]) == (
        3, None, 8, 96)
    assert wan21["temperal_downsample"] == [False, True, True] and wan21["attn_scales"] == []


def test_config_round_trip_through_diffusers(vae: WanVAE, tmp_path: Path):
    assert vae_config_from_diffusers(dict(vae.model.config)) == vae.config
    vae.model.save_config(str(tmp_path))  # writes config.json as a diffusers repo's vae/ holds it
    assert vae_config_from_diffusers(tmp_path) == vae.config
    assert vae_config_from_diffusers(tmp_path / "config.json") == vae.config


def test_config_from_minimal_json():
    wan22 = vae_config_from_diffusers({"z_dim": 48, "base_dim": 160, "decoder_base_dim": 256, "is_residual": True,
                                       "patch_size": 2, "in_channels": 12, "out_channels": 12})
    assert wan22 == get_preset("ti2v-5b").vae
    wan21 = vae_config_from_diffusers(json.loads('{"_class_name": "AutoencoderKLWan", "z_dim": 16}'))
    assert wan21 == get_preset("t2v-a14b").vae


# --- reference key maps ---------------------------------------------------------------------
def _ref_resblock(out: dict, prefix: str, in_dim: int, out_dim: int) -> None:
    out[f"{prefix}.residual.0.gamma"] = (in_dim, 1, 1, 1)
    out[f"{prefix}.residual.2.weight"] = (out_dim, in_dim, 3, 3, 3)
    out[f"{prefix}.residual.2.bias"] = (out_dim,)
    out[f"{prefix}.residual.3.gamma"] = (out_dim, 1, 1, 1)
    out[f"{prefix}.residual.6.weight"] = (out_dim, out_dim, 3, 3, 3)
    out[f"{prefix}.residual.6.bias"] = (out_dim,)
    if in_dim != out_dim:
        out[f"{prefix}.shortcut.weight"] = (out_dim, in_dim, 1, 1, 1)
        out[f"{prefix}.shortcut.bias"] = (out_dim,)


def _ref_resample(out: dict, prefix: str, dim: int, mode: str, version: str) -> None:
    conv_out = dim // 2 if (mode.startswith("upsample") and version == "2.1") else dim
    out[f"{prefix}.resample.1.weight"] = (conv_out, dim, 3, 3)
    out[f"{prefix}.resample.1.bias"] = (conv_out,)
    if mode == "upsample3d":
        out[f"{prefix}.time_conv.weight"] = (2 * dim, dim, 3, 1, 1)
        out[f"{prefix}.time_conv.bias"] = (2 * dim,)
    elif mode == "downsample3d":
        out[f"{prefix}.time_conv.weight"] = (dim, dim, 3, 1, 1)
        out[f"{prefix}.time_conv.bias"] = (dim,)


def _ref_middle_and_head(out: dict, side: str, dim: int, head_out: int) -> None:
    _ref_resblock(out, f"{side}.middle.0", dim, dim)
    out[f"{side}.middle.1.norm.gamma"] = (dim, 1, 1)
    out[f"{side}.middle.1.to_qkv.weight"] = (3 * dim, dim, 1, 1)
    out[f"{side}.middle.1.to_qkv.bias"] = (3 * dim,)
    out[f"{side}.middle.1.proj.weight"] = (dim, dim, 1, 1)
    out[f"{side}.middle.1.proj.bias"] = (dim,)
    _ref_resblock(out, f"{side}.middle.2", dim, dim)


def reference_vae_shapes(config) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the reference WanVAE_ for ``config``.

    Written from the module structure of Wan-Video/Wan2.2 wan/modules/vae2_1.py (flat
    Encoder3d.downsamples / Decoder3d.upsamples Sequentials, decoder stages 1..3 halve in_dim
    because the 2.1 upsample conv outputs dim // 2) and wan/modules/vae2_2.py
    (Down_ResidualBlock / Up_ResidualBlock with inner .downsamples / .upsamples Sequentials,
    12-channel patchified stem and head, parameter-free avg shortcuts).
    """
    v22 = config.version == "2.2"
    z, mult, nres = config.z_dim, list(config.dim_mult), config.num_res_blocks
    tdown = list(config.temporal_downsample)
    tup = tdown[::-1]
    io_channels = 12 if v22 else 3
    out: dict[str, tuple[int, ...]] = {}
    # encoder
    dims = [config.base_dim * u for u in [1] + mult]
    out["encoder.conv1.weight"], out["encoder.conv1.bias"] = (dims[0], io_channels, 3, 3, 3), (dims[0],)
    flat = 0
    for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(mult) - 1
        mode = "downsample3d" if (i < len(tdown) and tdown[i]) else "downsample2d"
        for j in range(nres):
            prefix = f"encoder.downsamples.{i}.downsamples.{j}" if v22 else f"encoder.downsamples.{flat}"
            _ref_resblock(out, prefix, in_dim if j == 0 else out_dim, out_dim)
            flat += 1
        if not last:
            prefix = f"encoder.downsamples.{i}.downsamples.{nres}" if v22 else f"encoder.downsamples.{flat}"
            _ref_resample(out, prefix, out_dim, mode, config.version)
            flat += 1
    _ref_middle_and_head(out, "encoder", dims[-1], 2 * z)
    out["encoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    out["encoder.head.2.weight"], out["encoder.head.2.bias"] = (2 * z, dims[-1], 3, 3, 3), (2 * z,)
    out["conv1.weight"], out["conv1.bias"] = (2 * z, 2 * z, 1, 1, 1), (2 * z,)
    out["conv2.weight"], out["conv2.bias"] = (z, z, 1, 1, 1), (z,)
    # decoder
    dec_dim = config.decoder_base_dim or config.base_dim
    dims = [dec_dim * u for u in [mult[-1]] + mult[::-1]]
    out["decoder.conv1.weight"], out["decoder.conv1.bias"] = (dims[0], z, 3, 3, 3), (dims[0],)
    _ref_middle_and_head(out, "decoder", dims[0], io_channels)
    flat = 0
    for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(mult) - 1
        mode = "upsample3d" if (i < len(tup) and tup[i]) else "upsample2d"
        if not v22 and i in (1, 2, 3):
            in_dim //= 2
        for j in range(nres + 1):
            prefix = f"decoder.upsamples.{i}.upsamples.{j}" if v22 else f"decoder.upsamples.{flat}"
            _ref_resblock(out, prefix, in_dim if j == 0 else out_dim, out_dim)
            flat += 1
        if not last:
            prefix = f"decoder.upsamples.{i}.upsamples.{nres + 1}" if v22 else f"decoder.upsamples.{flat}"
            _ref_resample(out, prefix, out_dim, mode, config.version)
            flat += 1
    out["decoder.head.0.gamma"] = (dims[-1], 1, 1, 1)
    out["decoder.head.2.weight"], out["decoder.head.2.bias"] = (io_channels, dims[-1], 3, 3, 3), (io_channels,)
    return out


def test_to_reference_matches_reference_module_structure(vae: WanVAE):
    ref = vae_state_dict_to_reference(vae.model.state_dict(), version=vae.config.version)
    expected = reference_vae_shapes(vae.config)
    assert set(ref) == set(expected)
    assert {k: tuple(v.shape) for k, v in ref.items()} == expected


def test_reference_round_trip(vae: WanVAE):
    sd = vae.model.state_dict()
    version = vae.config.version
    ref = vae_state_dict_to_reference(sd, version=version)
    back = vae_state_dict_from_reference(ref, version=version)
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    if version == "2.1":  # our inverse against diffusers' own converter
        from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

        theirs = convert_wan_vae_to_diffusers(dict(ref))
        assert set(theirs) == set(sd) and all(torch.equal(theirs[k], sd[k]) for k in sd)
    # a model loaded (strictly) from the reference-layout dict decodes identically
    fresh = build_vae(vae.config)
    fresh.load_state_dict(back, strict=True)
    latents = torch.randn(1, vae.z_dim, 2, 64 // vae.spatial_stride, 64 // vae.spatial_stride)
    assert torch.equal(WanVAE(fresh, vae.config).decode(latents), vae.decode(latents))


def test_reference_keymap_rejects_unknown_keys():
    with pytest.raises(ValueError, match="decoder.bogus"):
        vae_state_dict_to_reference({"decoder.bogus.weight": torch.zeros(1)}, version="2.2")
    with pytest.raises(ValueError, match="encoder.nope"):
        vae_state_dict_from_reference({"encoder.nope.weight": torch.zeros(1)}, version="2.2")
    with pytest.raises(ValueError, match="version"):
        vae_state_dict_to_reference({}, version="2.0")


def test_released_size_key_structure_without_weights():
    # Full-size configs on the meta device: the key map covers the released 2.1 and 2.2 layouts.
    from diffusers import AutoencoderKLWan

    for name in ("t2v-a14b", "ti2v-5b"):
        config = get_preset(name).vae
        with torch.device("meta"):
            model = AutoencoderKLWan(**vae_config_to_diffusers(config))
        sd = model.state_dict()
        ref = vae_state_dict_to_reference(sd, version=config.version)
        assert {k: tuple(v.shape) for k, v in ref.items()} == reference_vae_shapes(config)
        assert set(vae_state_dict_from_reference(ref, version=config.version)) == set(sd)


def test_models_stay_single_device():
    root = Path(__file__).resolve().parents[1] / "wan_dist" / "models"
    banned = re.compile(r"^\s*(import|from)\s+(torch\.distributed|ray|fsspec|hydra|omegaconf)\b", re.M)
    for name in ("vae.py", "text_encoder.py", "tokenizer.py", "ref_keymaps.py"):
        assert not banned.search((root / name).read_text()), name


def test_replace_keeps_version_rule():
    config = replace(get_preset("tiny").vae, z_dim=48, latents_mean=(0.0,) * 48, latents_std=(1.0,) * 48)
    assert vae_config_from_diffusers(vae_config_to_diffusers(config)).version == "2.2"
