"""Tiny random LoRA state dicts in the formats found in the wild, written from the formats' documented key naming
(shared/WAVE2_FACTS.md "LoRA formats"; diffusers' lora_conversion_utils docstrings; musubi-tuner's README), never
from our loader's tables: the layer list below is the Wan 2.2 reference model's (WAN22_FACTS.md "Checkpoint
layouts"), with shapes from a DiTConfig's dims.
"""

from __future__ import annotations

import torch
from safetensors.torch import save_file

# reference layer -> diffusers layer (WAN22_FACTS.md "Renames"), for the layers a LoRA usually targets
_BLOCK_LAYERS = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0", "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
}


def block_layers(config) -> dict[str, tuple[str, tuple[int, int]]]:
    """Reference name -> (diffusers name, (out, in)) of every block linear layer."""
    dim, ffn = config.dim, config.ffn_dim
    shapes = {"ffn.0": (ffn, dim), "ffn.2": (dim, ffn)}
    out = {}
    for block in range(config.num_layers):
        for ours, theirs in _BLOCK_LAYERS.items():
            out[f"blocks.{block}.{ours}"] = (f"blocks.{block}.{theirs}", shapes.get(ours, (dim, dim)))
    return out


def extra_layers(config) -> dict[str, tuple[str, tuple[int, int]]]:
    """The non-block linear layers Wan-native LoRAs (lightx2v) also carry."""
    dim, head_out = config.dim, config.out_channels * 4  # patch (1, 2, 2)
    return {"time_projection.1": ("condition_embedder.time_proj", (6 * dim, dim)),
            "head.head": ("proj_out", (head_out, dim)),
            "text_embedding.0": ("condition_embedder.text_embedder.linear_1", (dim, config.text_dim)),
            "text_embedding.2": ("condition_embedder.text_embedder.linear_2", (dim, dim)),
            "time_embedding.0": ("condition_embedder.time_embedder.linear_1", (dim, config.freq_dim)),
            "time_embedding.2": ("condition_embedder.time_embedder.linear_2", (dim, dim))}


def _pair(generator, out_features: int, in_features: int, rank: int, magnitude: float = 0.15):
    down = torch.randn(rank, in_features, generator=generator) * magnitude
    up = torch.randn(out_features, rank, generator=generator) * magnitude
    return down, up


def wan_lora(config, *, seed: int = 0, rank: int = 4, naming: str = "down_up", alpha: float | None = 8.0,
             diff_b: bool = True, extras: bool = True) -> dict[str, torch.Tensor]:
    """Wan-native / ComfyUI: ``diffusion_model.<ref>.lora_down.weight`` / ``lora_up.weight`` (``naming="A_B"``:
    ``lora_A`` / ``lora_B``), ``.alpha`` on block layers, ``.diff_b`` bias deltas; with ``extras`` the time,
    text and head layers too (without alpha: diffusers' converter reads none there)."""
    generator = torch.Generator().manual_seed(seed)
    down_name, up_name = ("lora_down", "lora_up") if naming == "down_up" else ("lora_A", "lora_B")
    sd = {}
    layers = {name: (shape, True) for name, (_, shape) in block_layers(config).items()}
    if extras:
        layers.update({name: (shape, False) for name, (_, shape) in extra_layers(config).items()})
    for index, (name, ((out_features, in_features), in_block)) in enumerate(layers.items()):
        r = rank if index % 3 else max(1, rank // 2)  # mixed ranks
        down, up = _pair(generator, out_features, in_features, r)
        sd[f"diffusion_model.{name}.{down_name}.weight"] = down
        sd[f"diffusion_model.{name}.{up_name}.weight"] = up
        if alpha is not None and in_block:
            sd[f"diffusion_model.{name}.alpha"] = torch.tensor(alpha)
        if diff_b:  # on every layer or none: diffusers gives all its LoRA layers a bias when one has it
            sd[f"diffusion_model.{name}.diff_b"] = torch.randn(out_features, generator=generator) * 0.2
    return sd


def musubi_lora(config, *, seed: int = 0, rank: int = 4, alpha: float = 2.0) -> dict[str, torch.Tensor]:
    """musubi-tuner / kohya: ``lora_unet_<ref name, '.' -> '_'>.lora_down.weight`` / ``lora_up.weight`` / ``alpha``
    for every block's attention and FFN layers."""
    generator = torch.Generator().manual_seed(seed)
    sd = {}
    for name, (_, (out_features, in_features)) in block_layers(config).items():
        down, up = _pair(generator, out_features, in_features, rank)
        stem = "lora_unet_" + name.replace(".", "_")
        sd[f"{stem}.lora_down.weight"], sd[f"{stem}.lora_up.weight"] = down, up
        sd[f"{stem}.alpha"] = torch.tensor(alpha)
    return sd


def diffusers_lora(config, *, seed: int = 0, rank: int = 4, bias: bool = True) -> dict[str, torch.Tensor]:
    """diffusers / PEFT: ``transformer.<diffusers name>.lora_A.weight`` / ``lora_B.weight`` (+ ``lora_B.bias``), on the
    block layers, the time projection and the output projection."""
    generator = torch.Generator().manual_seed(seed)
    extras = extra_layers(config)
    layers = {**block_layers(config), "time_projection.1": extras["time_projection.1"],
              "head.head": extras["head.head"]}
    sd = {}
    for index, (theirs, (out_features, in_features)) in enumerate(layers.values()):
        r = rank if index % 4 else rank + 2
        down, up = _pair(generator, out_features, in_features, r)
        sd[f"transformer.{theirs}.lora_A.weight"], sd[f"transformer.{theirs}.lora_B.weight"] = down, up
        if bias:
            sd[f"transformer.{theirs}.lora_B.bias"] = torch.randn(out_features, generator=generator) * 0.2
    return sd


FORMATS = {
    "wan": lambda config, seed: wan_lora(config, seed=seed),
    "comfyui": lambda config, seed: wan_lora(config, seed=seed, naming="A_B", alpha=16.0),
    "musubi": lambda config, seed: musubi_lora(config, seed=seed),
    "diffusers": lambda config, seed: diffusers_lora(config, seed=seed),
}


def write_lora(state_dict: dict[str, torch.Tensor], path, metadata: dict[str, str] | None = None) -> str:
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path), metadata=metadata)
    return str(path)
