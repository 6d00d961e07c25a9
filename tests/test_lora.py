"""LoRAs (issue 16 items 1-4): every format loads and renders as diffusers' ``load_lora_weights`` does, merged or as
a runtime branch, per expert; the base weights come back exactly; bad LoRAs are refused naming the keys; a parallel
render with a LoRA equals the single-process one.

The oracle is diffusers' WanPipeline with its own LoRA loader (PEFT) on the same tiny random diffusers-layout
checkpoint; the LoRA files are written from the formats' documented key naming (tests/lora_files.py).
"""

from __future__ import annotations

import json

import pytest
import torch

from lora_files import FORMATS, block_layers, diffusers_lora, wan_lora, write_lora
from wan_dist import load_pipeline
from wan_dist.models.lora import LoraError, parse_lora
from wan_dist.models.lora_apply import merge_loras, runtime_branches, set_runtime_loras, unmerge_loras

HEIGHT, WIDTH, FRAMES = 48, 80, 9
TOLERANCE = 1e-5
# 6 steps, shift 3, boundary 0.875: t = 999, 950, 888 (high-noise expert), 800, 666, 500 (low-noise): both run
COMMON = dict(height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=6, guidance_scale=4.0,
              guidance_scale_2=3.0, output_type="latent")


def _inputs(pipe, seed=0):
    generator = torch.Generator().manual_seed(seed)
    dit = pipe.spec.dit
    context = torch.randn(2, 16, dit.text_dim, generator=generator)
    negative = torch.randn(2, 16, dit.text_dim, generator=generator)
    latents = torch.randn(2, 16, (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8, generator=generator)
    return dict(prompt_embeds=context, negative_prompt_embeds=negative, latents=latents, **COMMON)


@pytest.fixture(scope="module")
def tiny(checkpoint_factory):
    return str(checkpoint_factory("tiny", "diffusers"))


@pytest.fixture(scope="module")
def pipe(tiny):
    return load_pipeline(tiny, dtype=torch.float32)


@pytest.fixture(scope="module")
def inputs(pipe):
    return _inputs(pipe)


@pytest.fixture(scope="module")
def base(pipe, inputs):
    return _render(pipe, inputs)


def _render(pipe, inputs, **kwargs):
    return pipe.generate(**{**inputs, "latents": inputs["latents"].clone()}, seed=0, **kwargs).frames


def _state(model) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters()}


@torch.no_grad()
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_renders_as_diffusers_load_lora_weights_merged_and_runtime(fmt, tiny, pipe, inputs, base,
                                                                                 tmp_path):
    """A LoRA on both experts at different strengths: diffusers loads it into ``transformer`` and, with
    ``load_into_transformer_2``, into ``transformer_2``; we take it per request (``transformer: high`` / ``low``)."""
    from diffusers import WanPipeline

    path = write_lora(FORMATS[fmt](pipe.spec.dit, 1), tmp_path / f"{fmt}.safetensors")
    oracle = WanPipeline.from_pretrained(tiny, torch_dtype=torch.float32)
    oracle.load_lora_weights(path, adapter_name="high")
    oracle.load_lora_weights(path, adapter_name="low", load_into_transformer_2=True)
    oracle.set_adapters(["high", "low"], adapter_weights=[0.7, 1.3])
    expected = oracle(**{**inputs, "latents": inputs["latents"].clone()}).frames
    assert (expected - base).abs().max() > 0.1  # the LoRA matters, so the comparisons below can fail
    loras = [{"path": path, "scale": 0.7}, {"path": path, "scale": 1.3, "transformer": "low"}]
    originals = [_state(model) for model in pipe.experts]
    for mode in ("runtime", "merged"):
        pipe.lora_mode = mode
        out = pipe.generate(**{**inputs, "latents": inputs["latents"].clone()}, seed=0, loras=loras)
        assert (out.frames - expected).abs().max().item() <= TOLERANCE, mode
        assert [(r["scale"], r["transformer"], r["experts"]) for r in out.loras] == [(0.7, "high", [0]),
                                                                                     (1.3, "low", [1])]
        assert (_render(pipe, inputs) - base).abs().max().item() == 0  # the next request without LoRAs
        for model, original in zip(pipe.experts, originals):
            assert all(torch.equal(param, original[name]) for name, param in model.named_parameters()), mode
    pipe.lora_mode = "runtime"


@torch.no_grad()
def test_diffusers_spelling_load_lora_weights_and_set_adapters(tiny, pipe, inputs, tmp_path):
    """Two adapters, one per expert, loaded and weighted with diffusers' own calls on both pipelines."""
    from diffusers import WanPipeline

    first = write_lora(FORMATS["wan"](pipe.spec.dit, 2), tmp_path / "first.safetensors")
    second = diffusers_lora(pipe.spec.dit, seed=3)  # a state dict, not a file
    oracle = WanPipeline.from_pretrained(tiny, torch_dtype=torch.float32)
    for target in (oracle, pipe):
        target.load_lora_weights(first, adapter_name="style")
        target.load_lora_weights(dict(second), adapter_name="detail", load_into_transformer_2=True)
        target.set_adapters(["style", "detail"], adapter_weights=[0.5, 1.5])
    try:
        expected = oracle(**{**inputs, "latents": inputs["latents"].clone()}).frames
        assert (_render(pipe, inputs) - expected).abs().max().item() <= TOLERANCE
        pipe.set_adapters(["style"], adapter_weights=[0.5])  # detail off: the result changes
        assert (_render(pipe, inputs) - expected).abs().max().item() > 1e-3
    finally:
        pipe.unload_lora_weights()


@torch.no_grad()
def test_a_peft_files_lora_alpha_and_patterns_scale_as_in_diffusers(tiny, pipe, inputs, base, tmp_path):
    """A diffusers-format file whose ``lora_adapter_metadata`` (as diffusers' save_lora_weights writes it) sets
    lora_alpha, a rank_pattern and an alpha_pattern: the scale of each layer is its alpha over its rank."""
    from diffusers import WanPipeline

    state = diffusers_lora(pipe.spec.dit, seed=5)
    ranks = {k.removeprefix("transformer.").removesuffix(".lora_B.weight"): v.shape[1]
             for k, v in state.items() if k.endswith(".lora_B.weight")}
    config = {"r": 4, "lora_alpha": 8, "lora_bias": True, "target_modules": sorted(ranks),
              "rank_pattern": {k: v for k, v in ranks.items() if v != 4}, "alpha_pattern": {"blocks.1.attn1.to_q": 2}}
    metadata = {"lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in config.items()}), "format": "pt"}
    path = write_lora(state, tmp_path / "peft.safetensors", metadata=metadata)
    oracle = WanPipeline.from_pretrained(tiny, torch_dtype=torch.float32)
    oracle.load_lora_weights(path, adapter_name="peft")
    expected = oracle(**{**inputs, "latents": inputs["latents"].clone()}).frames
    assert (_render(pipe, inputs, loras=[{"path": path}]) - expected).abs().max().item() <= TOLERANCE
    plain = write_lora(state, tmp_path / "plain.safetensors")  # the same tensors, scale 1: another result
    assert (_render(pipe, inputs, loras=[{"path": plain}]) - expected).abs().max().item() > 1e-2


@torch.no_grad()
def test_merge_then_unmerge_restores_the_base_weights_bit_exactly(pipe):
    pipe.loras.sync([])  # the pipeline's LoRAs of earlier tests off: this test works on the model itself
    model = pipe.experts[0]
    shapes = {name: param.shape for name, param in model.named_parameters()}
    lora = parse_lora(wan_lora(pipe.spec.dit, seed=4), shapes)
    original = _state(model)
    backups = merge_loras(model, [(lora, 0.9), (lora, -0.4)])
    changed = [name for name, param in model.named_parameters() if not torch.equal(param, original[name])]
    assert "blocks.0.self_attn.q.weight" in changed and "blocks.1.ffn.2.bias" in changed
    unmerge_loras(model, backups)
    assert all(torch.equal(param, original[name]) for name, param in model.named_parameters())


@torch.no_grad()
def test_a_full_delta_merges_as_w_plus_s_diff_and_a_norm_delta_needs_merged_mode(pipe):
    """``.diff`` (which diffusers ignores) is added as ComfyUI adds it; the runtime branch refuses the norm's."""
    pipe.loras.sync([])  # the pipeline's LoRAs of earlier tests off: this test works on the model itself
    model = pipe.experts[0]
    shapes = {name: param.shape for name, param in model.named_parameters()}
    q, norm = torch.randn(shapes["blocks.0.self_attn.q.weight"]), torch.randn(shapes["blocks.0.norm3.weight"])
    lora = parse_lora({"diffusion_model.blocks.0.self_attn.q.diff": q, "diffusion_model.blocks.0.norm3.diff": norm,
                       "diffusion_model.blocks.1.norm3.diff": torch.zeros_like(norm)}, shapes)  # zeros: dropped
    assert set(lora.full) == {"blocks.0.self_attn.q.weight", "blocks.0.norm3.weight"}
    original = _state(model)
    backups = merge_loras(model, [(lora, 0.5)])
    assert torch.allclose(model.blocks[0].self_attn.q.weight, original["blocks.0.self_attn.q.weight"] + 0.5 * q)
    assert torch.allclose(model.blocks[0].norm3.weight, original["blocks.0.norm3.weight"] + 0.5 * norm)
    unmerge_loras(model, backups)
    with pytest.raises(LoraError, match="linear layers only.*blocks.0.norm3.weight"):
        set_runtime_loras(model, [(lora, 1.0)])
    assert runtime_branches(model) == {}


def test_unknown_keys_are_refused_naming_them(pipe, inputs, tmp_path):
    lora = wan_lora(pipe.spec.dit, seed=5)
    lora["diffusion_model.blocks.0.self_attn.q.lora_mid.weight"] = torch.zeros(2, 2)
    lora["lora_te_text_model_encoder_layers_0.lora_down.weight"] = torch.zeros(2, 2)
    path = write_lora(lora, tmp_path / "unknown.safetensors")
    with pytest.raises(LoraError) as caught:
        pipe.generate(**inputs, seed=0, loras=[{"path": path}])
    assert caught.value.field == "loras[0]" and str(caught.value).startswith("loras[0]: unknown keys")
    assert set(caught.value.keys) == {"diffusion_model.blocks.0.self_attn.q.lora_mid.weight",
                                      "lora_te_text_model_encoder_layers_0.lora_down.weight"}


def test_a_lora_for_another_model_is_refused_naming_the_key(pipe, inputs, base, tmp_path):
    from dataclasses import replace

    wider = replace(pipe.spec.dit, dim=48, ffn_dim=96)  # another model's dims: every shape differs
    path = write_lora(wan_lora(wider, seed=6), tmp_path / "wider.safetensors")
    with pytest.raises(LoraError, match=r"^loras\[1\]: shape mismatch: diffusion_model\.\w") as caught:
        pipe.generate(**inputs, seed=0, loras=[{"path": write_lora(wan_lora(pipe.spec.dit), tmp_path / "ok.st")},
                                                {"path": path, "transformer": "both"}])
    assert len(caught.value.keys) == 1
    deeper = {"diffusion_model.blocks.7.self_attn.q.lora_down.weight": torch.zeros(2, 32),
              "diffusion_model.blocks.7.self_attn.q.lora_up.weight": torch.zeros(32, 2)}
    shapes = {name: param.shape for name, param in pipe.experts[0].named_parameters()}
    with pytest.raises(LoraError, match="name no parameter of this model"):
        parse_lora(deeper, shapes)
    assert torch.equal(_render(pipe, inputs), base)  # the refused request left nothing behind


def test_image_branch_keys_of_a_wan21_i2v_lora_are_an_error_or_skipped_on_request(pipe):
    shapes = {name: param.shape for name, param in pipe.experts[0].named_parameters()}
    lora = wan_lora(pipe.spec.dit, seed=7, extras=False)
    lora["diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight"] = torch.zeros(4, 32)
    lora["diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight"] = torch.zeros(32, 4)
    with pytest.raises(LoraError, match="image branch.*k_img"):
        parse_lora(lora, shapes)
    parsed = parse_lora(lora, shapes, image_branch="skip")
    assert len(parsed.skipped) == 2 and "blocks.0.cross_attn.q" in parsed.low_rank
    musubi = {"lora_unet_blocks_0_cross_attn_v_img.lora_down.weight": torch.zeros(4, 32)}
    with pytest.raises(LoraError, match="image branch"):
        parse_lora(musubi, shapes)


def test_request_loras_are_validated_before_any_work(pipe, inputs):
    with pytest.raises(ValueError, match=r"^loras\[0\]\.scale: "):
        pipe.generate(**inputs, seed=0, loras=[{"path": "a.safetensors", "scale": float("nan")}])
    with pytest.raises(ValueError, match=r"^loras\[0\]\.transformer: "):
        pipe.generate(**inputs, seed=0, loras=[{"path": "a.safetensors", "transformer": "middle"}])
    with pytest.raises(LoraError, match=r"^loras\[0\]\.path: cannot read"):
        pipe.generate(**inputs, seed=0, loras=[{"path": "/nonexistent/lora.safetensors"}])


@torch.no_grad()
def test_files_are_read_once_and_the_cache_is_bounded(pipe, inputs, base, tmp_path):
    from wan_dist.engine.loras import LoraFiles

    paths = [write_lora(wan_lora(pipe.spec.dit, seed=10 + i, extras=False), tmp_path / f"l{i}.safetensors")
             for i in range(3)]
    pipe.loras.files = LoraFiles(max_files=2)
    first = _render(pipe, inputs, loras=[{"path": paths[0], "scale": 0.5}])
    again = _render(pipe, inputs, loras=[{"path": paths[0], "scale": 0.5}])
    assert torch.equal(first, again) and pipe.loras.files.reads == 1  # warm: no second read
    _render(pipe, inputs, loras=[{"path": paths[1]}, {"path": paths[2], "transformer": "both"}])
    assert len(pipe.loras.files) == 2 and pipe.loras.files.reads == 3
    assert torch.equal(_render(pipe, inputs), base)


@torch.no_grad()
def test_the_sidecar_records_each_loras_uri_sha256_scale_and_expert(pipe, tmp_path):
    import hashlib

    from wan_dist.config import OutputConfig
    from wan_dist.engine.render import render
    from wan_dist.engine.request import build_request

    path = write_lora(wan_lora(pipe.spec.dit, seed=11), tmp_path / "style.safetensors")
    built = build_request({"prompt": "a kite", "seed": 3, "num_inference_steps": 2, "num_frames": 5,
                           "loras": [{"path": path, "scale": 0.6, "transformer": "both"}]}, spec=pipe.spec)
    result = render(pipe, built.request, OutputConfig(uri=str(tmp_path / "out")))
    assert result.status == "completed", result.error
    sidecar = json.loads(open(result.sidecar_uri).read())
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert sidecar["loras"] == [{"uri": path, "sha256": digest, "scale": 0.6, "transformer": "both",
                                 "experts": [0, 1]}]
    assert sidecar["request"]["loras"] == [{"path": path, "scale": 0.6, "transformer": "both"}]


def test_every_block_layer_of_the_documented_naming_is_a_linear_of_ours(pipe):
    """Sanity for the builders: the documented names map onto our model (else the parity above proves little)."""
    modules = dict(pipe.experts[0].named_modules())
    for name, (_, (out_features, in_features)) in block_layers(pipe.spec.dit).items():
        assert (modules[name].out_features, modules[name].in_features) == (out_features, in_features)


# -- parallel layouts ----------------------------------------------------------------------------------------------
PARALLEL_CASES = {  # name: (ParallelConfig fields, lora_mode)
    "ulysses2": (dict(ulysses=2), "runtime"),
    "cfg2_merged": (dict(cfg=2), "merged"),
    "fsdp_ulysses2_runtime": (dict(ulysses=2, fsdp=True), "runtime"),
    "fsdp_ulysses2_merged": (dict(ulysses=2, fsdp=True), "merged"),  # merged on each shard
    "disaggregated": (dict(placement="disaggregated"), "runtime"),  # stage 0 high-noise, stage 1 low-noise
}


def _parallel_kwargs(pipe, lora_path: str) -> dict:
    inputs = _inputs(pipe)
    return dict(inputs, seed=0, loras=[{"path": lora_path, "scale": 0.8, "transformer": "both"},
                                       {"path": lora_path, "scale": -0.3, "transformer": "low"}])


@torch.no_grad()
def _lora_rank(rank: int, world_size: int, folder: str, lora_path: str) -> dict:
    """Every case on a fresh pipeline (FSDP shards and a disaggregated stage drops experts in place): the latents
    with the LoRAs, then of a request without them on the same warm pipeline."""
    from datetime import timedelta

    from parallel_cases import load
    from wan_dist.config import ParallelConfig
    from wan_dist.parallel.runtime import make_parallel_generate

    results = {}
    for name, (parallel, mode) in PARALLEL_CASES.items():
        pipe = load(folder, None)
        pipe.lora_mode = mode
        generate = make_parallel_generate(pipe, ParallelConfig(**parallel), timeout=timedelta(seconds=60))
        kwargs = _parallel_kwargs(pipe, lora_path)
        with_lora = generate(**kwargs).frames
        kwargs.pop("loras")
        sharded = any(hasattr(p, "to_local") for m in pipe.experts if m is not None for p in m.parameters())
        results[name] = (with_lora, generate(**kwargs).frames, sharded)
    return results


@pytest.mark.slow
def test_a_parallel_render_with_loras_equals_the_single_process_one(tiny, tmp_path):
    """Ulysses, CFG parallel, FSDP2 (runtime branch, and merged on each shard) and disaggregated stages on a real
    2-rank gloo group: with two LoRAs (one on both experts, one on the low-noise one) and right after, without."""
    from parallel_cases import load
    from wan_dist.parallel.local import run_local_group

    single = load(tiny, None)
    lora_path = write_lora(FORMATS["wan"](single.spec.dit, 12), tmp_path / "parallel.safetensors")
    kwargs = _parallel_kwargs(single, lora_path)
    expected = single.generate(**kwargs).frames
    kwargs.pop("loras")
    plain = single.generate(**kwargs).frames
    assert (expected - plain).abs().max() > 0.1
    ranks = run_local_group(_lora_rank, 2, tiny, lora_path, timeout_s=600)
    for rank, results in enumerate(ranks):
        for name, (with_lora, without, sharded) in results.items():
            assert sharded == name.startswith("fsdp"), (rank, name)  # merged on FSDP2's DTensor shards there
            assert (with_lora - expected).abs().max().item() <= TOLERANCE, (rank, name)
            assert (without - plain).abs().max().item() <= TOLERANCE, (rank, name)
