"""DiT parameter names and configs: reference (Wan-Video/Wan2.2) layout <-> diffusers layout.

:class:`wan_dist.models.dit.WanDiT` uses the reference names. One table of (reference, diffusers)
name patterns drives both directions. Keys that match no pattern pass through unchanged, so a
loader can report them; nothing is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

from wan_dist.config import DiTConfig

__all__ = [
    "dit_key_from_diffusers",
    "dit_key_to_diffusers",
    "dit_keys_from_diffusers",
    "dit_keys_to_diffusers",
    "dit_config_from_reference",
    "dit_config_to_reference",
    "dit_config_from_diffusers",
    "dit_config_to_diffusers",
    "REFERENCE_MODEL_TYPES",
]

V = TypeVar("V")

REFERENCE_MODEL_TYPES = ("t2v", "i2v", "ti2v")


def _pairs() -> list[tuple[str, str]]:
    """(reference, diffusers) name patterns. ``{n}`` is a block index; a trailing '.' matches a
    prefix (weight/bias follow), otherwise the whole name."""
    pairs = [
        ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
        ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
        ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
        ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
        ("time_projection.1.", "condition_embedder.time_proj."),
        ("head.head.", "proj_out."),
        ("head.modulation", "scale_shift_table"),
        ("blocks.{n}.modulation", "blocks.{n}.scale_shift_table"),
        # diffusers calls the affine cross-attention norm `norm2` and the pre-FFN norm `norm3`
        ("blocks.{n}.norm3.", "blocks.{n}.norm2."),
        ("blocks.{n}.norm2.", "blocks.{n}.norm3."),
        ("blocks.{n}.ffn.0.", "blocks.{n}.ffn.net.0.proj."),
        ("blocks.{n}.ffn.2.", "blocks.{n}.ffn.net.2."),
    ]
    for ours, theirs in (("self_attn", "attn1"), ("cross_attn", "attn2")):
        for proj in "qkv":
            pairs.append((f"blocks.{{n}}.{ours}.{proj}.", f"blocks.{{n}}.{theirs}.to_{proj}."))
        pairs.append((f"blocks.{{n}}.{ours}.o.", f"blocks.{{n}}.{theirs}.to_out.0."))
        for norm in ("norm_q", "norm_k"):
            pairs.append((f"blocks.{{n}}.{ours}.{norm}.", f"blocks.{{n}}.{theirs}.{norm}."))
    return pairs


def _compile(pattern: str) -> re.Pattern[str]:
    regex = re.escape(pattern).replace(re.escape("{n}"), r"(?P<n>\d+)")
    return re.compile("^" + regex + ("" if pattern.endswith(".") else "$"))


def _rules(from_index: int) -> list[tuple[re.Pattern[str], str]]:
    return [(_compile(pair[from_index]), pair[1 - from_index]) for pair in _pairs()]


_FROM_DIFFUSERS = _rules(1)
_TO_DIFFUSERS = _rules(0)


def _rename(name: str, rules: list[tuple[re.Pattern[str], str]]) -> str:
    for regex, target in rules:
        match = regex.match(name)
        if match:
            block = match.groupdict().get("n")
            return target.replace("{n}", block or "") + name[match.end():]
    return name


def dit_key_from_diffusers(name: str) -> str:
    """One diffusers parameter name -> reference name; unknown names come back unchanged."""
    return _rename(name, _FROM_DIFFUSERS)


def dit_key_to_diffusers(name: str) -> str:
    """One reference parameter name -> diffusers name; unknown names come back unchanged."""
    return _rename(name, _TO_DIFFUSERS)


def _rename_all(state_dict: Mapping[str, V], rename) -> dict[str, V]:
    out: dict[str, V] = {}
    for name, value in state_dict.items():
        new = rename(name)
        if new in out:
            raise ValueError(f"keymap: two keys map to {new!r} (one of them is {name!r})")
        out[new] = value
    return out


def dit_keys_from_diffusers(state_dict: Mapping[str, V]) -> dict[str, V]:
    """diffusers ``WanTransformer3DModel`` state dict -> reference names (values untouched)."""
    return _rename_all(state_dict, dit_key_from_diffusers)


def dit_keys_to_diffusers(state_dict: Mapping[str, V]) -> dict[str, V]:
    """Reference-named state dict -> diffusers ``WanTransformer3DModel`` names (values untouched)."""
    return _rename_all(state_dict, dit_key_to_diffusers)


# ----------------------------------------------------------------------------- configs

def _reject(source: str, cfg: Mapping[str, Any], key: str, allowed: tuple, reason: str) -> None:
    if key in cfg and cfg[key] not in allowed:
        raise ValueError(f"{source}: {key}={cfg[key]!r} is not supported ({reason})")


def dit_config_from_reference(cfg_json: Mapping[str, Any], *, text_dim: int | None = None) -> DiTConfig:
    """Reference ``config.json`` (``WanModel``) -> DiTConfig.

    ``patch_size`` defaults to (1, 2, 2); ``text_dim`` (absent from released configs) comes from the
    json, else the argument, else 4096.
    """
    source = "reference DiT config"
    _reject(source, cfg_json, "model_type", REFERENCE_MODEL_TYPES, "Wan 2.2 has t2v, i2v, ti2v")
    _reject(source, cfg_json, "qk_norm", (True,), "the model always normalises q and k")
    _reject(source, cfg_json, "cross_attn_norm", (True,), "the model always normalises before cross-attention")
    _reject(source, cfg_json, "window_size", ((-1, -1), [-1, -1]), "only global attention")
    missing = [k for k in ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim") if k not in cfg_json]
    if missing:
        raise ValueError(f"{source}: missing key(s) {missing}")
    return DiTConfig(
        dim=cfg_json["dim"], ffn_dim=cfg_json["ffn_dim"], num_heads=cfg_json["num_heads"],
        num_layers=cfg_json["num_layers"], in_channels=cfg_json["in_dim"], out_channels=cfg_json["out_dim"],
        freq_dim=cfg_json.get("freq_dim", 256), text_dim=cfg_json.get("text_dim", text_dim or 4096),
        text_len=cfg_json.get("text_len", 512), patch_size=tuple(cfg_json.get("patch_size", (1, 2, 2))),
        eps=cfg_json.get("eps", 1e-6),
    )


def dit_config_to_reference(config: DiTConfig, model_type: str = "t2v") -> dict[str, Any]:
    """DiTConfig -> reference ``config.json`` dict (``_class_name`` WanModel)."""
    if model_type not in REFERENCE_MODEL_TYPES:
        raise ValueError(f"dit_config_to_reference: model_type must be one of {REFERENCE_MODEL_TYPES}, "
                         f"got {model_type!r}")
    if config.rope_max_seq_len != 1024:
        raise ValueError("dit_config_to_reference: the reference fixes rope_max_seq_len at 1024, "
                         f"got {config.rope_max_seq_len}")
    return {
        "_class_name": "WanModel", "model_type": model_type, "patch_size": list(config.patch_size),
        "text_len": config.text_len, "in_dim": config.in_channels, "dim": config.dim,
        "ffn_dim": config.ffn_dim, "freq_dim": config.freq_dim, "text_dim": config.text_dim,
        "out_dim": config.out_channels, "num_heads": config.num_heads, "num_layers": config.num_layers,
        "eps": config.eps,
    }


def dit_config_from_diffusers(cfg_json: Mapping[str, Any], *, text_len: int = 512) -> DiTConfig:
    """diffusers ``WanTransformer3DModel`` config -> DiTConfig (diffusers has no text_len: 512)."""
    source = "diffusers DiT config"
    _reject(source, cfg_json, "image_dim", (None,), "no CLIP image branch in Wan 2.2")
    _reject(source, cfg_json, "added_kv_proj_dim", (None,), "no image cross-attention in Wan 2.2")
    _reject(source, cfg_json, "pos_embed_seq_len", (None,), "no image position embedding in Wan 2.2")
    _reject(source, cfg_json, "cross_attn_norm", (True,), "the model always normalises before cross-attention")
    _reject(source, cfg_json, "qk_norm", ("rms_norm_across_heads",), "only RMSNorm across heads")
    heads, head_dim = cfg_json.get("num_attention_heads", 40), cfg_json.get("attention_head_dim", 128)
    in_channels = cfg_json.get("in_channels", 16)
    return DiTConfig(
        dim=heads * head_dim, ffn_dim=cfg_json.get("ffn_dim", 13824), num_heads=heads,
        num_layers=cfg_json.get("num_layers", 40), in_channels=in_channels,
        out_channels=cfg_json.get("out_channels") or in_channels, freq_dim=cfg_json.get("freq_dim", 256),
        text_dim=cfg_json.get("text_dim", 4096), text_len=text_len,
        patch_size=tuple(cfg_json.get("patch_size", (1, 2, 2))), eps=cfg_json.get("eps", 1e-6),
        rope_max_seq_len=cfg_json.get("rope_max_seq_len", 1024),
    )


def dit_config_to_diffusers(config: DiTConfig) -> dict[str, Any]:
    """DiTConfig -> diffusers ``WanTransformer3DModel`` config dict (text_len is not part of it)."""
    return {
        "_class_name": "WanTransformer3DModel", "patch_size": list(config.patch_size),
        "num_attention_heads": config.num_heads, "attention_head_dim": config.head_dim,
        "in_channels": config.in_channels, "out_channels": config.out_channels, "text_dim": config.text_dim,
        "freq_dim": config.freq_dim, "ffn_dim": config.ffn_dim, "num_layers": config.num_layers,
        "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": config.eps,
        "image_dim": None, "added_kv_proj_dim": None, "rope_max_seq_len": config.rope_max_seq_len,
        "pos_embed_seq_len": None,
    }
