"""Whole-pipeline parity with diffusers' Wan pipelines on tiny random weights (fp32, CPU).

The oracle is diffusers itself, loaded from the same checkpoint folder with its own from_pretrained;
both sides get the same prompt_embeds, negative_prompt_embeds and initial latents.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from wan_dist import load_pipeline
from wan_dist.sampling.denoise import guided_prediction

HEIGHT, WIDTH, FRAMES = 48, 80, 9


def _inputs(pipe, *, batch=2, seed=0, height=HEIGHT, width=WIDTH):
    generator = torch.Generator().manual_seed(seed)
    dit = pipe.spec.dit
    z = pipe.spec.vae.z_dim
    stride = pipe.spec.vae.spatial_stride
    context = torch.randn(batch, dit.text_len, dit.text_dim, generator=generator)
    context[:, 7:] = 0  # true prompt lengths end early, as the text encoder pads
    negative = torch.randn(batch, dit.text_len, dit.text_dim, generator=generator)
    negative[:, 5:] = 0
    latents = torch.randn(batch, z, (FRAMES - 1) // 4 + 1, height // stride, width // stride, generator=generator)
    return context, negative, latents


def _short_inputs(pipe, *, rows=20, negative_rows=12, batch=2, seed=1):
    """Embeddings given with fewer rows than text_len: sample 0 ends in zero rows, sample 1 fills every row."""
    context, negative, latents = _inputs(pipe, batch=batch, seed=seed)
    context, negative = context[:, :rows].clone(), negative[:, :negative_rows].clone()
    context[0, rows - 5:] = 0
    negative[1] = torch.randn(negative_rows, negative.shape[2], generator=torch.Generator().manual_seed(seed))
    return context, negative, latents


def _padded(embeds: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.nn.functional.pad(embeds, (0, 0, 0, rows - embeds.shape[1]))


def _image(seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 255, WIDTH, dtype=np.float32)[None, :, None] * np.ones((HEIGHT, 1, 3))
    return Image.fromarray((gradient * 0.7 + rng.uniform(0, 70, (HEIGHT, WIDTH, 3))).astype(np.uint8))


def _compare(ours, theirs):
    assert ours.shape == theirs.shape
    assert torch.isfinite(ours).all()
    return (ours - theirs).abs().max().item()


@torch.no_grad()
def test_t2v_matches_diffusers_wan_pipeline(checkpoint_factory):
    from diffusers import WanPipeline

    folder = checkpoint_factory("tiny", "diffusers")
    pipe = load_pipeline(str(folder), dtype=torch.float32)
    oracle = WanPipeline.from_pretrained(str(folder), torch_dtype=torch.float32)
    context, negative, latents = _inputs(pipe)
    # 8 steps with shift 3 and boundary 0.875 cross the boundary: both experts and both scales run.
    common = dict(height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=8, guidance_scale=4.0,
                  guidance_scale_2=3.0, prompt_embeds=context, negative_prompt_embeds=negative, output_type="latent")
    expected = oracle(latents=latents.clone(), **common).frames
    out = pipe.generate(latents=latents.clone(), seed=0, **common)
    assert (out.settings.schedule, out.settings.shift) == ("diffusers", 3.0)  # the layout's own defaults
    assert _compare(out.frames, expected) <= 1e-4


@torch.no_grad()
def test_t2v_uses_both_experts_across_the_boundary(checkpoint_factory):
    """Sanity for the parity above: swapping the experts changes the result."""
    folder = checkpoint_factory("tiny", "diffusers")
    pipe = load_pipeline(str(folder), dtype=torch.float32)
    context, negative, latents = _inputs(pipe)
    common = dict(height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=8, prompt_embeds=context,
                  negative_prompt_embeds=negative, output_type="latent", seed=0)
    a = pipe.generate(latents=latents.clone(), **common).frames
    b = pipe.generate(latents=latents.clone(), boundary_ratio=0.0, **common).frames  # high-noise only
    c = pipe.generate(latents=latents.clone(), boundary_ratio=1.0, **common).frames  # low-noise only
    assert (a - b).abs().max() > 1e-3 and (a - c).abs().max() > 1e-3


@torch.no_grad()
def test_i2v_matches_diffusers_image_to_video_pipeline(checkpoint_factory):
    from diffusers import WanImageToVideoPipeline

    folder = checkpoint_factory("tiny-i2v", "diffusers")
    pipe = load_pipeline(str(folder), dtype=torch.float32)
    oracle = WanImageToVideoPipeline.from_pretrained(str(folder), torch_dtype=torch.float32)
    context, negative, latents = _inputs(pipe)
    common = dict(height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=6, guidance_scale=3.5,
                  guidance_scale_2=2.0, prompt_embeds=context, negative_prompt_embeds=negative, output_type="latent")
    expected = oracle(image=_image(), latents=latents.clone(), **common).frames
    out = pipe.generate(image=_image(), latents=latents.clone(), seed=0, **common)
    assert _compare(out.frames, expected) <= 1e-4


@torch.no_grad()
def test_ti2v_text_only_matches_diffusers_expand_timesteps(checkpoint_factory):
    from diffusers import WanPipeline

    folder = checkpoint_factory("tiny-ti2v", "diffusers")
    pipe = load_pipeline(str(folder), dtype=torch.float32)
    oracle = WanPipeline.from_pretrained(str(folder), torch_dtype=torch.float32)
    assert oracle.config.expand_timesteps
    height, width = 64, 96  # the Wan 2.2 VAE strides 16 and the patch 2: multiples of 32
    context, negative, latents = _inputs(pipe, height=height, width=width)
    common = dict(height=height, width=width, num_frames=FRAMES, num_inference_steps=5, guidance_scale=5.0,
                  prompt_embeds=context, negative_prompt_embeds=negative, output_type="latent")
    expected = oracle(latents=latents.clone(), **common).frames
    out = pipe.generate(latents=latents.clone(), seed=0, **common)
    assert _compare(out.frames, expected) <= 1e-4


@torch.no_grad()
def test_ti2v_with_image_matches_diffusers_first_frame_conditioning(checkpoint_factory):
    from diffusers import WanImageToVideoPipeline, WanPipeline

    folder = checkpoint_factory("tiny-ti2v", "diffusers")
    pipe = load_pipeline(str(folder), dtype=torch.float32)
    parts = WanPipeline.from_pretrained(str(folder), torch_dtype=torch.float32).components
    oracle = WanImageToVideoPipeline(tokenizer=parts["tokenizer"], text_encoder=parts["text_encoder"],
                                     vae=parts["vae"], scheduler=parts["scheduler"], transformer=parts["transformer"],
                                     transformer_2=None, image_encoder=None, image_processor=None,
                                     boundary_ratio=None, expand_timesteps=True)
    height, width = 64, 96
    context, negative, latents = _inputs(pipe, height=height, width=width)
    image = _image().resize((width, height))
    common = dict(height=height, width=width, num_frames=FRAMES, num_inference_steps=5, guidance_scale=5.0,
                  prompt_embeds=context, negative_prompt_embeds=negative, output_type="latent")
    expected = oracle(image=image, latents=latents.clone(), **common).frames
    out = pipe.generate(image=image, latents=latents.clone(), seed=0, **common)
    assert _compare(out.frames, expected) <= 1e-4
    # frame 0 is the clean image latent, the rest was denoised
    image_latent = pipe.vae.encode(torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1)
                                   .permute(2, 0, 1)[None, :, None])
    assert torch.allclose(out.frames[:, :, :1], image_latent.expand(2, -1, -1, -1, -1), atol=1e-6)


@torch.no_grad()
def test_batched_cfg_equals_two_sequential_forwards(checkpoint_factory):
    folder = checkpoint_factory("tiny", "diffusers")
    pipe = load_pipeline(str(folder), dtype=torch.float32)
    context, negative, latents = _inputs(pipe)
    model = pipe.experts[0]
    expert = lambda x, t, c: model(x, t, c)  # noqa: E731
    timestep = torch.tensor([900.0, 900.0])
    batched = guided_prediction(expert, latents, timestep, context, negative, 4.0)
    cond, uncond = model(latents, timestep, context), model(latents, timestep, negative)
    assert (batched - (uncond + 4.0 * (cond - uncond))).abs().max().item() <= 1e-5


@torch.no_grad()
@pytest.mark.parametrize("cfg_mode,negative_rows", [("sequential", 12), ("batched", 20), ("batched", 12)])
def test_short_prompt_embeds_are_attended_as_given_like_diffusers(checkpoint_factory, cfg_mode, negative_rows):
    """diffusers' WanPipeline attends given embeddings as they are (no padding to 512 rows), and so does
    the diffusers layout. Cond and uncond of different lengths cannot share a batched forward: two run."""
    from diffusers import WanPipeline

    folder = checkpoint_factory("tiny", "diffusers")
    pipe = load_pipeline(str(folder), dtype=torch.float32, cfg_mode=cfg_mode)
    oracle = WanPipeline.from_pretrained(str(folder), torch_dtype=torch.float32)
    context, negative, latents = _short_inputs(pipe, negative_rows=negative_rows)
    common = dict(height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=8, guidance_scale=4.0,
                  guidance_scale_2=3.0, prompt_embeds=context, negative_prompt_embeds=negative, output_type="latent")
    expected = oracle(latents=latents.clone(), **common).frames
    out = pipe.generate(latents=latents.clone(), seed=0, **common)
    assert _compare(out.frames, expected) <= 1e-4
    text_len = pipe.spec.dit.text_len  # sanity: zero padding the embeddings is another input for diffusers
    padded = oracle(latents=latents.clone(), **{**common, "prompt_embeds": _padded(context, text_len),
                                                "negative_prompt_embeds": _padded(negative, text_len)}).frames
    assert _compare(out.frames, padded) > 1e-2


@torch.no_grad()
def test_reference_layout_pads_short_prompt_embeds_to_text_len(checkpoint_factory):
    """The reference pads every prompt with zero rows to text_len before its text embedding, and so does the
    reference layout with given embeddings: on the same weights and schedule it matches diffusers'
    WanPipeline fed the embeddings zero padded to text_len, not fed them as given."""
    from diffusers import WanPipeline

    pipe = load_pipeline(str(checkpoint_factory("tiny", "reference")), dtype=torch.float32)
    oracle = WanPipeline.from_pretrained(str(checkpoint_factory("tiny", "diffusers")), torch_dtype=torch.float32)
    context, negative, latents = _short_inputs(pipe)
    common = dict(height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=8, guidance_scale=4.0,
                  guidance_scale_2=3.0, output_type="latent")
    # the diffusers layout's schedule and shift, so that only the text differs between the runs
    out = pipe.generate(latents=latents.clone(), seed=0, prompt_embeds=context, negative_prompt_embeds=negative,
                        schedule="diffusers", shift=3.0, **common).frames
    text_len = pipe.spec.dit.text_len
    padded = oracle(latents=latents.clone(), prompt_embeds=_padded(context, text_len),
                    negative_prompt_embeds=_padded(negative, text_len), **common).frames
    as_given = oracle(latents=latents.clone(), prompt_embeds=context, negative_prompt_embeds=negative, **common).frames
    assert _compare(out, padded) <= 1e-4
    assert _compare(out, as_given) > 1e-2


@pytest.mark.parametrize("rows, dim", [(0, None), (513, None), (20, 7), (None, None)])
def test_prompt_embeds_of_a_bad_shape_are_refused(checkpoint_factory, rows, dim):
    pipe = load_pipeline(str(checkpoint_factory("tiny", "diffusers")), dtype=torch.float32)
    text_dim = pipe.spec.dit.text_dim
    shape = (1, text_dim) if rows is None else (1, rows, dim or text_dim)  # None: two dimensions
    with pytest.raises(ValueError, match=r"^prompt_embeds: expected \[batch, 1\.\.512, "):
        pipe.generate(prompt_embeds=torch.zeros(shape), num_inference_steps=1, seed=0)


@torch.no_grad()
def test_reference_layout_defaults_to_the_reference_schedule(checkpoint_factory):
    pipe = load_pipeline(str(checkpoint_factory("tiny", "reference")), dtype=torch.float32)
    out = pipe.generate("a lighthouse in a storm", height=HEIGHT, width=WIDTH, num_frames=FRAMES,
                        num_inference_steps=4, seed=5)
    s = out.settings
    assert (s.schedule, s.shift, s.guidance_scale, s.guidance_scale_2, s.boundary_ratio) == (
        "reference", 12.0, 4.0, 3.0, 0.875)
    assert out.frames.shape == (1, FRAMES, HEIGHT, WIDTH, 3) and out.frames.dtype == np.uint8
    again = pipe.generate("a lighthouse in a storm", height=HEIGHT, width=WIDTH, num_frames=FRAMES,
                          num_inference_steps=4, seed=5)
    assert np.array_equal(out.frames, again.frames)


@pytest.mark.parametrize("field,kwargs", [
    ("num_frames", dict(num_frames=10)),
    ("height", dict(height=50)),
    ("num_inference_steps", dict(num_inference_steps=0)),
    ("guidance_scale", dict(guidance_scale=-1.0)),
    ("boundary_ratio", dict(boundary_ratio=1.5)),
    ("solver", dict(solver="ddim")),
    ("seed", dict(seed=-3)),
])
def test_bad_arguments_name_the_field(checkpoint_factory, field, kwargs):
    pipe = load_pipeline(str(checkpoint_factory("tiny", "diffusers")), dtype=torch.float32)
    args = dict(prompt="x", num_inference_steps=1, seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=rf"^{field}: "):
        pipe.generate(**args)


def test_i2v_without_image_is_refused(checkpoint_factory):
    pipe = load_pipeline(str(checkpoint_factory("tiny-i2v", "diffusers")), dtype=torch.float32)
    with pytest.raises(ValueError, match=r"^image: "):
        pipe.generate("x", num_inference_steps=1, seed=0)


def test_callback_sees_every_step(checkpoint_factory):
    pipe = load_pipeline(str(checkpoint_factory("tiny", "diffusers")), dtype=torch.float32)
    seen = []
    pipe.generate("x", num_inference_steps=3, seed=0, output_type="latent",
                  callback=lambda i, n, latents, _estimate: seen.append((i, n, tuple(latents.shape))))
    assert [s[:2] for s in seen] == [(0, 3), (1, 3), (2, 3)]


@torch.no_grad()
@pytest.mark.parametrize("cfg_mode,prepared", [("batched", [(0, 4), (1, 4)]),
                                               ("sequential", [(0, 2), (0, 2), (1, 2), (1, 2)])])
def test_text_context_is_prepared_once_per_expert_per_render(checkpoint_factory, cfg_mode, prepared):
    pipe = load_pipeline(str(checkpoint_factory("tiny", "diffusers")), dtype=torch.float32, cfg_mode=cfg_mode)
    context, negative, latents = _inputs(pipe)
    calls = []
    for index, model in enumerate(pipe.experts):
        original = model.prepare_context
        model.prepare_context = (lambda c, _i=index, _f=original: calls.append((_i, c.shape[0])) or _f(c))
    common = dict(height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=8, guidance_scale=4.0,
                  guidance_scale_2=3.0, prompt_embeds=context, negative_prompt_embeds=negative, output_type="latent")
    pipe.generate(latents=latents.clone(), seed=0, **common)
    # 8 steps over both experts: [cond; uncond] of a batch of 2 once (batched), or cond and uncond once each
    assert calls == prepared
    pipe.generate(latents=latents.clone(), seed=0, **common)
    assert len(calls) == 2 * len(prepared)  # a new render prepares again


@torch.no_grad()
def test_sequential_cfg_mode_gives_the_same_latents(checkpoint_factory):
    folder = checkpoint_factory("tiny", "diffusers")
    batched = load_pipeline(str(folder), dtype=torch.float32, cfg_mode="batched")
    sequential = load_pipeline(str(folder), dtype=torch.float32)
    assert sequential.cfg_mode == "sequential"
    context, negative, latents = _inputs(batched)
    common = dict(height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=4, prompt_embeds=context,
                  negative_prompt_embeds=negative, output_type="latent", seed=0)
    a = batched.generate(latents=latents.clone(), **common).frames
    b = sequential.generate(latents=latents.clone(), **common).frames
    assert (a - b).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="^cfg_mode: "):
        load_pipeline(str(folder), dtype=torch.float32, cfg_mode="parallel")
