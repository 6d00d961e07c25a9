"""WanDiT against diffusers' WanTransformer3DModel (the oracle), key and config maps, attention injection.

All fp32 on CPU at tiny sizes. diffusers' model is built from our config map, randomly initialised
and perturbed so that no norm weight, bias or modulation table is trivially 0 or 1, then its weights
are renamed into ours.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from diffusers import WanTransformer3DModel

from wan_dist.config import DiTConfig
from wan_dist.models import attention
from wan_dist.models.dit import WanDiT, rope_cos_sin, sinusoidal_embedding
from wan_dist.models.keymap import (
    dit_config_from_diffusers,
    dit_config_from_reference,
    dit_config_to_diffusers,
    dit_config_to_reference,
    dit_key_from_diffusers,
    dit_key_to_diffusers,
    dit_keys_from_diffusers,
    dit_keys_to_diffusers,
)
from wan_dist.models.presets import PRESETS, get_preset

LATENT_SIZE = (3, 6, 10)  # (F, H, W): non-square, token grid (3, 3, 5)
NUM_TOKENS = 3 * 3 * 5


def tiny_config(preset: str) -> DiTConfig:
    return replace(get_preset(preset).dit, num_layers=3)


def reference_keys(config: DiTConfig) -> set[str]:
    """The reference checkpoint's DiT key names, written from WAN22_FACTS 'Checkpoint layouts'."""
    keys = {"patch_embedding.weight", "patch_embedding.bias", "head.head.weight", "head.head.bias",
            "head.modulation"}
    for prefix in ("text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2",
                   "time_projection.1"):
        keys |= {f"{prefix}.weight", f"{prefix}.bias"}
    for n in range(config.num_layers):
        block = f"blocks.{n}"
        keys.add(f"{block}.modulation")
        for attn in ("self_attn", "cross_attn"):
            keys |= {f"{block}.{attn}.{p}.{w}" for p in "qkvo" for w in ("weight", "bias")}
            keys |= {f"{block}.{attn}.norm_q.weight", f"{block}.{attn}.norm_k.weight"}
        keys |= {f"{block}.norm3.weight", f"{block}.norm3.bias"}
        keys |= {f"{block}.ffn.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")}
    return keys


def make_oracle(config: DiTConfig, seed: int = 0) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    oracle = WanTransformer3DModel.from_config(dit_config_to_diffusers(config)).eval()
    with torch.no_grad():
        for param in oracle.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return oracle


def make_pair(preset: str, seed: int = 0) -> tuple[WanTransformer3DModel, WanDiT]:
    config = tiny_config(preset)
    oracle = make_oracle(config, seed)
    model = WanDiT(config).eval()
    model.load_state_dict(dit_keys_from_diffusers(oracle.state_dict()), strict=True)
    return oracle, model


def make_inputs(config: DiTConfig, timestep: torch.Tensor, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, config.in_channels, *LATENT_SIZE, generator=generator)
    context = torch.randn(2, config.text_len, config.text_dim, generator=generator)
    context[0, 7:] = 0  # prompts trimmed to their own length and zero padded, one per row
    context[1, 19:] = 0
    return latents, timestep, context


def per_token_timestep(values: tuple[float, float]) -> torch.Tensor:
    """TI2V: first-frame tokens get t=0, the others the row's t. [2, L]."""
    timestep = torch.tensor(values).unsqueeze(1).repeat(1, NUM_TOKENS)
    timestep[:, : NUM_TOKENS // LATENT_SIZE[0]] = 0
    return timestep


@torch.no_grad()
def max_diff(preset: str, timestep: torch.Tensor, precision: str = "float64") -> float:
    oracle, model = make_pair(preset)
    model.timestep_precision = precision
    inputs = make_inputs(model.config, timestep)
    expected = oracle(*inputs, return_dict=False)[0]
    actual = model(*inputs)
    assert actual.shape == expected.shape == (2, model.config.out_channels, *LATENT_SIZE)
    assert actual.dtype == torch.float32
    return (actual - expected).abs().max().item()


# ------------------------------------------------------------------------------ keys

@pytest.mark.parametrize("preset", ["tiny", "tiny-i2v", "tiny-ti2v"])
def test_state_dict_keys_are_the_reference_layout(preset):
    config = tiny_config(preset)
    model = WanDiT(config)
    state = model.state_dict()
    assert set(state) == reference_keys(config)
    assert list(model.buffers()) == []
    dim = config.dim
    assert state["blocks.0.modulation"].shape == (1, 6, dim)
    assert state["head.modulation"].shape == (1, 2, dim)
    assert state["patch_embedding.weight"].shape == (dim, config.in_channels, 1, 2, 2)
    assert state["head.head.weight"].shape == (4 * config.out_channels, dim)
    assert state["blocks.0.self_attn.norm_q.weight"].shape == (dim,)


def test_builds_on_meta_device():
    with torch.device("meta"):
        model = WanDiT(PRESETS["t2v-a14b"].dit)
    assert set(model.state_dict()) == reference_keys(PRESETS["t2v-a14b"].dit)


def test_key_maps_round_trip_and_load_into_diffusers():
    oracle, model = make_pair("tiny")
    theirs = oracle.state_dict()
    ours = dit_keys_from_diffusers(theirs)
    back = dit_keys_to_diffusers(ours)
    assert list(back) == list(theirs) and all(back[k] is theirs[k] for k in theirs)
    assert {dit_key_from_diffusers(k) for k in theirs} == set(ours)
    assert {dit_key_to_diffusers(k) for k in ours} == set(theirs)
    assert dit_key_from_diffusers("blocks.2.norm2.weight") == "blocks.2.norm3.weight"
    assert dit_key_from_diffusers("blocks.12.attn2.to_out.0.bias") == "blocks.12.cross_attn.o.bias"
    assert dit_key_from_diffusers("scale_shift_table") == "head.modulation"
    assert dit_key_from_diffusers("blocks.0.scale_shift_table") == "blocks.0.modulation"

    fresh = make_oracle(model.config, seed=5)
    fresh.load_state_dict(dit_keys_to_diffusers(model.state_dict()), strict=True)
    inputs = make_inputs(model.config, torch.tensor([3.0, 17.0]))
    with torch.no_grad():
        assert torch.equal(fresh(*inputs, return_dict=False)[0], oracle(*inputs, return_dict=False)[0])


def test_unknown_keys_pass_through():
    odd = {"blocks.0.attn2.add_k_proj.weight": 1, "img_emb.proj.0.weight": 2, "norm_added_q": 3,
           "blocks.0.attn1.to_q.weight": 4}
    ours = dit_keys_from_diffusers(odd)
    assert ours == {"blocks.0.attn2.add_k_proj.weight": 1, "img_emb.proj.0.weight": 2, "norm_added_q": 3,
                    "blocks.0.self_attn.q.weight": 4}
    assert dit_keys_to_diffusers({"foo.bar": 1}) == {"foo.bar": 1}


# ------------------------------------------------------------------------------ parity

# diffusers computes the sinusoidal time embedding in fp32, the reference in float64. The fp32 angles
# t * 10000^(-k/128) are off by up to ~5e-7 * t, so at t ~ 1000 the outputs differ by ~3e-5 for that
# reason alone. A diffusers-layout checkpoint therefore runs with diffusers' fp32 sinusoid (set by the
# loader), which must match at every timestep; the reference precision is compared at small timesteps
# (where the gap is far under 1e-5) and bounded at realistic ones.
SMALL_T = {"tiny": torch.tensor([37.0, 5.5]), "tiny-i2v": torch.tensor([0.0, 21.0]),
           "tiny-ti2v": per_token_timestep((33.0, 9.0))}
LARGE_T = {"tiny": torch.tensor([999.0, 500.0]), "tiny-i2v": torch.tensor([875.0, 12.0]),
           "tiny-ti2v": per_token_timestep((999.0, 375.0))}


@pytest.mark.parametrize("preset", ["tiny", "tiny-i2v", "tiny-ti2v"])
def test_matches_diffusers_with_its_fp32_sinusoid(preset):
    assert max_diff(preset, LARGE_T[preset], precision="float32") <= 1e-5
    assert max_diff(preset, SMALL_T[preset], precision="float32") <= 1e-5


@pytest.mark.parametrize("preset", ["tiny", "tiny-i2v", "tiny-ti2v"])
def test_reference_precision_close_to_diffusers(preset):
    assert max_diff(preset, SMALL_T[preset]) <= 1e-5
    assert max_diff(preset, LARGE_T[preset]) <= 1e-4


def test_time_embedding_is_float64_cos_sin():
    t = torch.tensor([999.0, 0.5, 0.0])
    expected = [[math.cos(v * 10000 ** (-k / 128)) for k in range(128)]
                + [math.sin(v * 10000 ** (-k / 128)) for k in range(128)] for v in t.tolist()]
    assert torch.allclose(sinusoidal_embedding(t, 256), torch.tensor(expected), rtol=0, atol=1e-7)
    assert torch.equal(sinusoidal_embedding(torch.tensor([999]), 256), sinusoidal_embedding(t[:1], 256))


@torch.no_grad()
def test_int_timestep():
    model = make_pair("tiny")[1]
    latents, _, context = make_inputs(model.config, None)
    expected = model(latents, torch.tensor([999.0, 3.0]), context)
    assert torch.equal(model(latents, torch.tensor([999, 3]), context), expected)


@torch.no_grad()
@pytest.mark.parametrize("rows", [19, 30])
def test_short_context_matches_diffusers_which_attends_the_rows_given(rows):
    """Fewer than text_len rows (given embeddings): attended as given, zero rows included, as diffusers'
    transformer attends them; not as the same prompt zero padded to text_len."""
    oracle, model = make_pair("tiny")
    model.timestep_precision = "float32"
    latents, timestep, context = make_inputs(model.config, SMALL_T["tiny"])
    short = context[:, :rows]  # 19: the second prompt fills every row; 30: both end in zero rows
    expected = oracle(latents, timestep, short, return_dict=False)[0]
    assert (model(latents, timestep, short) - expected).abs().max() <= 1e-5
    assert (oracle(latents, timestep, context, return_dict=False)[0] - expected).abs().max() > 1e-3


@torch.no_grad()
def test_pieces_compose_and_head_works_on_a_token_slice():
    model = make_pair("tiny-ti2v")[1]
    inputs = make_inputs(model.config, per_token_timestep((500.0, 250.0)))
    state = model.embed(*inputs)
    assert state.e0.shape == (2, NUM_TOKENS, 6, model.config.dim) and state.e0.dtype == torch.float32
    x = model.run_blocks(state.tokens, state.e0, state.context, state.rope)
    cut = 17
    halves = [model.head(x[:, :cut], state.e[:, :cut]), model.head(x[:, cut:], state.e[:, cut:])]
    assert torch.equal(model.unpatchify(torch.cat(halves, dim=1), state.grid), model(*inputs))

    scalar = model.embed(inputs[0], torch.tensor([500.0, 250.0]), inputs[2])
    assert scalar.e0.shape == (2, 1, 6, model.config.dim) and scalar.e.shape == (2, 1, model.config.dim)


def test_rejects_bad_shapes():
    model = WanDiT(tiny_config("tiny"))
    latents, timestep, context = make_inputs(model.config, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="divisible"):
        model(latents[..., :9], timestep, context)
    with pytest.raises(ValueError, match="timestep"):
        model(latents, torch.ones(2, 7), context)
    with pytest.raises(ValueError, match="context"):
        model(latents, timestep, torch.zeros(2, 513, model.config.text_dim))


@torch.no_grad()
def test_bf16_model_runs_close_to_fp32():
    model = make_pair("tiny")[1]
    inputs = make_inputs(model.config, torch.tensor([700.0, 30.0]))
    expected = model(*inputs)
    model.to_dtype(torch.bfloat16)
    assert model.blocks[0].modulation.dtype == torch.float32
    assert model.blocks[0].ffn[0].weight.dtype == torch.bfloat16
    actual = model(*inputs)
    assert actual.dtype == torch.float32
    assert (actual - expected).abs().max() <= 0.05 * expected.abs().max()


# ------------------------------------------------------------------------------ rope

def test_rope_of_a_token_range_is_a_slice_of_the_full_rope():
    grid, split = (3, 3, 5), (8, 4, 4)
    cos, sin = rope_cos_sin(grid, split)
    assert cos.shape == sin.shape == (NUM_TOKENS, 8) and cos.dtype == torch.float32
    for start, end in ((0, 45), (0, 12), (12, 23), (40, 45), (7, 7)):
        part_cos, part_sin = rope_cos_sin(grid, split, start, end)
        assert torch.equal(part_cos, cos[start:end]) and torch.equal(part_sin, sin[start:end])
    padded_cos, _ = rope_cos_sin(grid, split, 40, 48)  # a last shard with sequence padding
    assert padded_cos.shape == (8, 8) and torch.equal(padded_cos[:5], cos[40:])


def test_rope_matches_diffusers_tables():
    config = replace(PRESETS["t2v-a14b"].dit, num_layers=1)
    assert config.rope_split == (44, 42, 42)
    oracle_rope = WanTransformer3DModel.from_config(dit_config_to_diffusers(replace(config, dim=128, num_heads=1))).rope
    latents = torch.zeros(1, 16, 4, 6, 10)
    their_cos, their_sin = oracle_rope(latents)  # [1, L, 1, head_dim], each pair's value repeated
    cos, sin = rope_cos_sin((4, 3, 5), config.rope_split)
    assert torch.allclose(cos.repeat_interleave(2, dim=-1), their_cos[0, :, 0], atol=1e-7)
    assert torch.allclose(sin.repeat_interleave(2, dim=-1), their_sin[0, :, 0], atol=1e-7)


# ------------------------------------------------------------------------------ attention

@torch.no_grad()
def test_injected_attention_is_used_for_self_attention_only():
    model = make_pair("tiny-i2v")[1]
    inputs = make_inputs(model.config, torch.tensor([10.0, 20.0]))
    expected = model(*inputs)
    calls = []

    def counting(q, k, v, *, key_length=None):
        calls.append((tuple(q.shape), key_length))
        return attention.sdpa_attention(q, k, v, key_length=key_length)

    model.attention_fn = counting
    assert model.attention_fn is counting and all(b.attention_fn is counting for b in model.blocks)
    assert torch.allclose(model(*inputs), expected, rtol=0, atol=1e-6)
    head_dim = model.config.head_dim
    assert calls == [((2, NUM_TOKENS, model.config.num_heads, head_dim), None)] * model.config.num_layers
    assert attention.default_attention() is attention.auto_attention


@torch.no_grad()
def test_key_length_masks_padding_tokens():
    model = make_pair("tiny")[1]
    state = model.embed(*make_inputs(model.config, torch.tensor([300.0, 30.0])))
    block, pad = model.blocks[1], 6
    expected = block(state.tokens, state.e0, state.context, state.rope)
    junk = 50 * torch.randn(2, pad, model.config.dim)
    padded = torch.cat([state.tokens, junk], dim=1)
    rope = model.rope(state.grid, 0, NUM_TOKENS + pad)
    actual = block(padded, state.e0, state.context, rope, key_length=NUM_TOKENS)
    assert torch.allclose(actual[:, :NUM_TOKENS], expected, rtol=0, atol=1e-5)
    unmasked = block(padded, state.e0, state.context, rope)
    assert not torch.allclose(unmasked[:, :NUM_TOKENS], expected, atol=1e-3)


def test_sdpa_key_length_equals_dropping_the_keys():
    q, k, v = (torch.randn(2, 9, 2, 8) for _ in range(3))
    out = attention.sdpa_attention(q, k, v, key_length=5)
    assert torch.allclose(out, attention.sdpa_attention(q, k[:, :5], v[:, :5]), atol=1e-6)
    assert torch.equal(attention.auto_attention(q, k, v, key_length=5), out)  # CPU fp32 -> SDPA


def test_get_attention_by_name():
    assert attention.get_attention("sdpa") is attention.sdpa_attention
    assert attention.get_attention("auto") is attention.auto_attention
    with pytest.raises(ValueError, match="unknown backend"):
        attention.get_attention("flash4")
    for name in ("flash3", "flash2", "xformers"):
        if name in attention.available_backends():
            assert callable(attention.get_attention(name))
        else:
            with pytest.raises(ValueError, match="not available"):
                attention.get_attention(name)


# ------------------------------------------------------------------------------ configs

@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_config_maps_round_trip(preset):
    spec = PRESETS[preset]
    assert dit_config_from_diffusers(dit_config_to_diffusers(spec.dit), text_len=spec.dit.text_len) == spec.dit
    reference = dit_config_to_reference(spec.dit, model_type=spec.task)
    assert reference["_class_name"] == "WanModel" and reference["model_type"] == spec.task
    assert dit_config_from_reference(reference) == spec.dit


def test_config_from_diffusers_model_config():
    oracle = make_oracle(tiny_config("tiny-ti2v"))
    assert dit_config_from_diffusers(dict(oracle.config)) == tiny_config("tiny-ti2v")


def test_config_from_released_reference_json():
    # Released config.json files carry no patch_size and no text_dim.
    t2v = {"_class_name": "WanModel", "_diffusers_version": "0.33.0", "dim": 5120, "eps": 1e-06,
           "ffn_dim": 13824, "freq_dim": 256, "in_dim": 16, "model_type": "t2v", "num_heads": 40,
           "num_layers": 40, "out_dim": 16, "text_len": 512}
    assert dit_config_from_reference(t2v) == PRESETS["t2v-a14b"].dit
    assert dit_config_from_reference({**t2v, "in_dim": 36, "model_type": "i2v"}) == PRESETS["i2v-a14b"].dit
    ti2v = {**t2v, "dim": 3072, "ffn_dim": 14336, "num_heads": 24, "num_layers": 30, "in_dim": 48,
            "out_dim": 48, "model_type": "ti2v"}
    assert dit_config_from_reference(ti2v) == PRESETS["ti2v-5b"].dit
    tiny = {k: v for k, v in dit_config_to_reference(PRESETS["tiny"].dit).items() if k != "text_dim"}
    assert dit_config_from_reference(tiny, text_dim=32) == PRESETS["tiny"].dit


def test_config_maps_reject_what_the_model_cannot_do():
    with pytest.raises(ValueError, match="image_dim"):
        dit_config_from_diffusers({**dit_config_to_diffusers(PRESETS["tiny"].dit), "image_dim": 1280})
    with pytest.raises(ValueError, match="model_type"):
        dit_config_from_reference({**dit_config_to_reference(PRESETS["tiny"].dit), "model_type": "flf2v"})
    with pytest.raises(ValueError, match="missing"):
        dit_config_from_reference({"dim": 32})
