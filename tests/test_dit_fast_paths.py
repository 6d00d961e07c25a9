"""The DiT's inference fast paths compute the same math as the plain one.

Prepared text context (once per render) against a raw context, compressed cross-attention (true
prompt rows + one padding slot with a log-count bias) against all rows given, the token-chunked
in-place FFN and residual stream against the out-of-place autograd path, and the fused RoPE / RMSNorm
against their textbook formulas. All fp32 on CPU at tiny sizes, weights perturbed as in test_dit.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from wan_dist.models import attention
from wan_dist.models.dit import RMSNorm, TextContext, apply_rope, rope_cos_sin, text_lengths
from wan_dist.sampling.denoise import batch_contexts, guided_prediction
from tests.test_dit import NUM_TOKENS, make_inputs, make_pair, per_token_timestep


def _context(config, lengths: list[int], seed: int = 3, rows: int | None = None) -> torch.Tensor:
    """[B, rows (default text_len), text_dim]: sample b has lengths[b] true rows, then zero rows."""
    generator = torch.Generator().manual_seed(seed)
    context = torch.randn(len(lengths), rows or config.text_len, config.text_dim, generator=generator)
    for row, length in enumerate(lengths):
        context[row, length:] = 0
    return context


def _uncompressed(model, latents, timestep, context):
    """The plain computation: every row of the context embedded and attended, no preparation."""
    state = model.embed(latents, timestep, context)
    x = model.run_blocks(state.tokens, state.e0, model.embed_text(context), state.rope)
    return model.unpatchify(model.head(x, state.e), state.grid)


# ------------------------------------------------------------------------------ prepared context

@torch.no_grad()
def test_prepared_context_forward_equals_raw_context_forward():
    model = make_pair("tiny")[1]
    latents, timestep, context = make_inputs(model.config, torch.tensor([800.0, 20.0]))
    prepared = model.prepare_context(context)
    assert isinstance(prepared, TextContext) and len(prepared.layers) == model.config.num_layers
    assert (model(latents, timestep, prepared) - model(latents, timestep, context)).abs().max() <= 1e-6
    # the same prepared context serves every step: other timesteps and latents
    other = torch.randn_like(latents)
    assert (model(other, timestep / 2, prepared) - model(other, timestep / 2, context)).abs().max() <= 1e-6


@torch.no_grad()
def test_uncompressed_prepared_context_equals_embedded_text():
    model = make_pair("tiny-ti2v")[1]
    latents, timestep, context = make_inputs(model.config, per_token_timestep((600.0, 100.0)))
    prepared = model.prepare_context(context, compress=False)
    assert prepared.num_rows == model.config.text_len and prepared.layers[0].bias is None
    expected = _uncompressed(model, latents, timestep, context)
    assert (model(latents, timestep, prepared) - expected).abs().max() <= 1e-6


def test_prepared_context_must_match_the_batch():
    model = make_pair("tiny")[1]
    latents, timestep, context = make_inputs(model.config, torch.tensor([1.0, 2.0]))
    with torch.no_grad(), pytest.raises(ValueError, match="batch sizes differ"):
        model(latents, timestep, model.prepare_context(context[:1]))


# ------------------------------------------------------------------------------ compression

def test_text_lengths_finds_the_last_nonzero_row():
    context = torch.zeros(4, 10, 3)
    context[0, :4] = 1
    context[1, 6, 2] = -2.0  # a zero row inside the prompt does not end it
    context[3] = 1
    assert text_lengths(context).tolist() == [4, 7, 0, 10]


@torch.no_grad()
@pytest.mark.parametrize("lengths, rows", [([7, 19], 512), ([19, 19], 512), ([1, 0], 512), ([512, 5], 512),
                                           ([512, 512], 512), ([511, 3], 512), ([7, 19], 24), ([24, 3], 24),
                                           ([0, 22], 24), ([23, 23], 24)])
def test_compressed_cross_attention_equals_uncompressed(lengths, rows):
    model = make_pair("tiny")[1]
    config = model.config
    latents, timestep, _ = make_inputs(config, torch.tensor([900.0, 400.0]))
    context = _context(config, lengths, rows=rows)  # rows < text_len: embeddings given shorter, attended as given
    prepared = model.prepare_context(context)
    assert prepared.lengths.tolist() == lengths
    assert prepared.num_rows == min(max(lengths) + 1, rows)
    bias = prepared.layers[0].bias
    if prepared.num_rows == rows:  # a (nearly) full-length prompt: nothing to compress
        assert bias is None
    else:  # every kept padding slot together stands for all padding rows of its sample
        for row, length in enumerate(lengths):
            assert torch.allclose(bias[row, 0, 0, length:].exp().sum(), torch.tensor(float(rows - length)))
            assert torch.equal(bias[row, 0, 0, :length], torch.zeros(length))
    expected = _uncompressed(model, latents, timestep, context)
    assert (model(latents, timestep, prepared) - expected).abs().max() <= 1e-5


@torch.no_grad()
def test_a_shorter_raw_context_is_attended_as_given():
    """No implicit padding to text_len: the zero rows a context has are attended, and no others (the
    reference layout's pipeline pads before calling; see test_pipeline.py)."""
    model = make_pair("tiny")[1]
    latents, timestep, context = make_inputs(model.config, torch.tensor([900.0, 400.0]))
    for trimmed in (context[:, :19], context[:, :30]):  # the longest prompt fills all 19 rows / has 11 zero rows
        out = model(latents, timestep, trimmed)
        assert (out - _uncompressed(model, latents, timestep, trimmed)).abs().max() <= 1e-5
        assert (out - model(latents, timestep, context)).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_biased_attention_equals_repeated_keys(dtype):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 9, 2, 8, generator=generator) for _ in range(3))
    repeats = torch.tensor([[1, 1, 1, 5], [1, 300, 1, 1]])  # key j of sample b stands for repeats[b, j] copies
    bias = repeats.double().log().float()[:, None, None, :]
    expected = torch.stack([attention.sdpa_attention(q[b:b + 1], *(t[b:b + 1, :4].repeat_interleave(repeats[b], dim=1)
                                                                   for t in (k, v)))[0] for b in range(2)])
    actual = attention.biased_attention(q.to(dtype), k[:, :4].to(dtype), v[:, :4].to(dtype), bias)
    assert actual.dtype == dtype
    assert (actual.float() - expected).abs().max() <= (1e-5 if dtype == torch.float32 else 3e-2)


# ------------------------------------------------------------------------------ in place, chunked

@torch.no_grad()
@pytest.mark.parametrize("preset,timestep", [("tiny", torch.tensor([700.0, 30.0])),
                                             ("tiny-ti2v", per_token_timestep((500.0, 250.0)))])
def test_chunked_inplace_block_equals_out_of_place(preset, timestep):
    model = make_pair(preset)[1]
    state = model.embed(*make_inputs(model.config, timestep))
    block = model.blocks[1]
    assert math.ceil(NUM_TOKENS * model.config.dim / model.config.ffn_dim) < NUM_TOKENS  # > 1 FFN chunk
    tokens = state.tokens.clone()
    with torch.enable_grad():  # autograd: every op out of place, the FFN in one piece
        expected = block(state.tokens, state.e0, state.context, state.rope)
    chunked = block(state.tokens, state.e0, state.context, state.rope)
    assert torch.equal(state.tokens, tokens)  # the caller's residual stream is never written
    assert (chunked - expected).abs().max() <= 1e-6
    x = state.tokens.clone()
    assert block(x, state.e0, state.context, state.rope, inplace=True) is x  # when the caller gives it up
    assert (x - expected).abs().max() <= 1e-6


@torch.no_grad()
def test_run_blocks_leaves_its_input_alone_unless_told():
    model = make_pair("tiny")[1]
    state = model.embed(*make_inputs(model.config, torch.tensor([300.0, 30.0])))
    tokens = state.tokens.clone()
    out = model.run_blocks(state.tokens, state.e0, state.context, state.rope)
    assert torch.equal(state.tokens, tokens)
    assert torch.equal(model.run_blocks(tokens, state.e0, state.context, state.rope, inplace=True), out)


def test_forward_with_autograd_matches_inference():
    model = make_pair("tiny")[1]
    inputs = make_inputs(model.config, torch.tensor([300.0, 30.0]))
    with torch.no_grad():
        expected = model(*inputs)
    out = model(*inputs)
    out.square().mean().backward()
    # the same computation up to float32 rounding, relative to each output's size: the autograd path does not take
    # the in-place kernels, so a value near 4 may land a few ulps (4.8e-7 each) away
    torch.testing.assert_close(out.detach(), expected, rtol=1e-6, atol=1e-6)
    assert model.blocks[0].cross_attn.k.weight.grad is not None


# ------------------------------------------------------------------------------ fused kernels

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_complex_multiply_equals_the_pair_formula(dtype):
    cos, sin = rope_cos_sin((3, 3, 5), (8, 4, 4))
    x = torch.randn(2, NUM_TOKENS, 2, 16).to(dtype)
    even, odd = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    expected = torch.stack((even * c - odd * s, even * s + odd * c), dim=-1).flatten(-2).to(dtype)
    assert torch.allclose(apply_rope(x, (cos, sin)).float(), expected.float(), atol=1e-6)
    with torch.no_grad():
        y = x.clone()
        assert torch.allclose(apply_rope(y, (cos, sin), inplace=True).float(), expected.float(), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_in_place_equals_the_formula(dtype):
    norm = RMSNorm(32, 1e-6)
    rtol = 0 if dtype == torch.float32 else 1e-2
    with torch.no_grad():
        norm.weight.add_(torch.randn(32))
        x = (3 * torch.randn(2, 7, 32)).to(dtype)
        x32 = x.float()
        expected = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight).to(dtype).float()
        assert torch.allclose(norm(x).float(), expected, atol=1e-5, rtol=rtol)  # fused F.rms_norm
        y = x.clone()
        assert torch.allclose(norm(y, inplace=True).float(), expected, atol=1e-5, rtol=rtol)  # vector_norm, in place
    assert torch.allclose(norm(x).float(), expected, atol=1e-5, rtol=rtol)  # autograd path


# ------------------------------------------------------------------------------ guidance

@torch.no_grad()
def test_guided_prediction_with_a_prebuilt_batched_context():
    model = make_pair("tiny")[1]
    latents, timestep, context = make_inputs(model.config, torch.tensor([900.0, 900.0]))
    negative = _context(model.config, [4, 11], seed=9)
    seen = []

    def expert(x, t, c):
        seen.append(c)
        return model(x, t, c)

    batched = batch_contexts(context, negative)
    with_batched = guided_prediction(expert, latents, timestep, context, negative, 4.0, batched_context=batched)
    assert seen[-1] is batched
    assert torch.equal(guided_prediction(expert, latents, timestep, context, negative, 4.0), with_batched)
    assert batch_contexts(context, None) is None


@torch.no_grad()
def test_contexts_of_different_lengths_run_as_two_forwards():
    """Given embeddings may differ in rows between cond and uncond: they cannot be concatenated into one
    batched forward, so guided_prediction runs them one after the other (the same guided velocity)."""
    model = make_pair("tiny")[1]
    latents, timestep, context = make_inputs(model.config, torch.tensor([900.0, 900.0]))
    negative = _context(model.config, [4, 11], seed=9)[:, :12]
    seen = []

    def expert(x, t, c):
        seen.append(c)
        return model(x, t, c)

    assert batch_contexts(context, negative) is None
    guided = guided_prediction(expert, latents, timestep, context, negative, 4.0)
    assert len(seen) == 2 and seen[0] is context and seen[1] is negative
    cond, uncond = model(latents, timestep, context), model(latents, timestep, negative)
    assert (guided - (uncond + 4.0 * (cond - uncond))).abs().max() <= 1e-5
