"""Key maps between the reference checkpoint layout and the diffusers / transformers names.

Reference layout (Wan-Video/Wan2.2): ``Wan2.1_VAE.pth``, ``Wan2.2_VAE.pth`` and
``models_t5_umt5-xxl-enc-bf16.pth`` are plain ``torch.save``'d state dicts of the reference
modules, loaded there with a strict ``load_state_dict``; so their keys are the module paths of:

- ``wan/modules/vae2_1.py`` ``WanVAE_``: ``encoder.conv1``, ``encoder.downsamples.K`` (one flat
  Sequential of ResidualBlock / Resample), ``encoder.middle.{0,1,2}``, ``encoder.head.{0,2}``,
  ``conv1`` / ``conv2`` (quant / post-quant), ``decoder.conv1``, ``decoder.middle.*``,
  ``decoder.upsamples.K`` (flat: num_res_blocks+1 ResidualBlocks then a Resample per stage),
  ``decoder.head.*``. ResidualBlock = ``residual.{0: RMS_norm, 2: conv, 3: RMS_norm, 6: conv}``
  + ``shortcut`` (1x1 conv when channels change); Resample = ``resample.1`` (Conv2d) + ``time_conv``.
- ``wan/modules/vae2_2.py`` ``WanVAE_``: as 2.1 but each stage is a block with its own Sequential:
  ``encoder.downsamples.I.downsamples.J`` (Down_ResidualBlock: num_res_blocks ResidualBlocks then
  a Resample) and ``decoder.upsamples.I.upsamples.J`` (Up_ResidualBlock: num_res_blocks+1
  ResidualBlocks then a Resample); their avg_shortcut (AvgDown3D / DupUp3D) has no parameters.
- ``wan/modules/t5.py`` ``T5Encoder`` built by ``umt5_xxl(encoder_only=True)`` (shared_pos=False):
  ``token_embedding``, ``blocks.N.{norm1, attn.{q,k,v,o}, norm2, ffn.{gate.0, fc1, fc2},
  pos_embedding.embedding}``, ``norm``; the FFN computes ``fc2(fc1(x) * gelu_tanh(gate.0(x)))``.

The diffusers names are those of ``AutoencoderKLWan``; for Wan 2.1 the reference -> diffusers
direction is diffusers' own ``convert_wan_vae_to_diffusers``; for Wan 2.2 the correspondence is the
one diffusers' ``scripts/convert_wan_to_diffusers.py`` (``convert_vae_22``) applies. The UMT5 names
are transformers' ``UMT5EncoderModel`` (``wi_0`` is the GELU-gated branch, as ``gate.0``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

__all__ = [
    "vae_state_dict_from_reference",
    "vae_state_dict_to_reference",
    "t5_state_dict_from_reference",
    "t5_state_dict_to_reference",
]

StateDict = Mapping[str, torch.Tensor]

# ResidualBlock parameters: diffusers WanResidualBlock name -> reference Sequential index.
_RES_TO_REF = {
    "norm1.gamma": "residual.0.gamma",
    "conv1.weight": "residual.2.weight",
    "conv1.bias": "residual.2.bias",
    "norm2.gamma": "residual.3.gamma",
    "conv2.weight": "residual.6.weight",
    "conv2.bias": "residual.6.bias",
    "conv_shortcut.weight": "shortcut.weight",
    "conv_shortcut.bias": "shortcut.bias",
}
_RES_FROM_REF = {ref: ours for ours, ref in _RES_TO_REF.items()}
_RESAMPLE = re.compile(r"(resample\.1|time_conv)\.(weight|bias)")


def _check_version(version: str) -> None:
    if version not in ("2.1", "2.2"):
        raise ValueError(f"version must be '2.1' or '2.2', got {version!r}")


def _res_to_ref(rest: str, key: str) -> str:
    try:
        return _RES_TO_REF[rest]
    except KeyError:
        raise ValueError(f"VAE key map: unexpected residual-block parameter in {key!r}") from None


def _res_from_ref(rest: str, key: str) -> str:
    try:
        return _RES_FROM_REF[rest]
    except KeyError:
        raise ValueError(f"VAE key map: unexpected reference residual-block parameter in {key!r}") from None


def _shared_to_ref(key: str) -> str | None:
    """Keys named the same way in both VAE versions (stem, middle, head, quant convs)."""
    if m := re.fullmatch(r"(encoder|decoder)\.conv_in\.(weight|bias)", key):
        return f"{m[1]}.conv1.{m[2]}"
    if m := re.fullmatch(r"(quant_conv|post_quant_conv)\.(weight|bias)", key):
        return f"{'conv1' if m[1] == 'quant_conv' else 'conv2'}.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.norm_out\.gamma", key):
        return f"{m[1]}.head.0.gamma"
    if m := re.fullmatch(r"(encoder|decoder)\.conv_out\.(weight|bias)", key):
        return f"{m[1]}.head.2.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.([01])\.(.+)", key):
        return f"{m[1]}.middle.{2 * int(m[2])}.{_res_to_ref(m[3], key)}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        return f"{m[1]}.middle.1.{m[2]}"
    return None


def _shared_from_ref(key: str) -> str | None:
    if m := re.fullmatch(r"(encoder|decoder)\.conv1\.(weight|bias)", key):
        return f"{m[1]}.conv_in.{m[2]}"
    if m := re.fullmatch(r"(conv1|conv2)\.(weight|bias)", key):
        return f"{'quant_conv' if m[1] == 'conv1' else 'post_quant_conv'}.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.head\.0\.gamma", key):
        return f"{m[1]}.norm_out.gamma"
    if m := re.fullmatch(r"(encoder|decoder)\.head\.2\.(weight|bias)", key):
        return f"{m[1]}.conv_out.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.middle\.([02])\.(.+)", key):
        return f"{m[1]}.mid_block.resnets.{int(m[2]) // 2}.{_res_from_ref(m[3], key)}"
    if m := re.fullmatch(r"(encoder|decoder)\.middle\.1\.(.+)", key):
        return f"{m[1]}.mid_block.attentions.0.{m[2]}"
    return None


def _resnet_counts(keys, pattern: str) -> dict[int, int]:
    """{block index: number of resnets} from diffusers keys matching ``pattern`` (groups: block, resnet)."""
    counts: dict[int, int] = {}
    for key in keys:
        if m := re.match(pattern, key):
            block, resnet = int(m[1]), int(m[2])
            counts[block] = max(counts.get(block, 0), resnet + 1)
    return counts


def _vae21_to_ref(key: str, decoder_stride: int) -> str:
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.+)", key):
        rest = m[2] if _RESAMPLE.fullmatch(m[2]) else _res_to_ref(m[2], key)
        return f"encoder.downsamples.{m[1]}.{rest}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.upsamples.{int(m[1]) * decoder_stride + int(m[2])}.{_res_to_ref(m[3], key)}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        if not _RESAMPLE.fullmatch(m[2]):
            raise ValueError(f"VAE key map: unexpected upsampler parameter {key!r}")
        return f"decoder.upsamples.{int(m[1]) * decoder_stride + decoder_stride - 1}.{m[2]}"
    raise ValueError(f"VAE key map (2.1): no reference name for {key!r}")


def _vae22_to_ref(key: str, enc_counts: dict[int, int], dec_counts: dict[int, int]) -> str:
    if m := re.fullmatch(r"(encoder\.down|decoder\.up)_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        outer = "encoder.downsamples" if m[1] == "encoder.down" else "decoder.upsamples"
        inner = outer.split(".")[1]
        return f"{outer}.{m[2]}.{inner}.{m[3]}.{_res_to_ref(m[4], key)}"
    if m := re.fullmatch(r"(encoder\.down_blocks\.(\d+)\.downsampler|decoder\.up_blocks\.(\d+)\.upsampler)\.(.+)",
                         key):
        if not _RESAMPLE.fullmatch(m[4]):
            raise ValueError(f"VAE key map: unexpected resample parameter {key!r}")
        if m[2] is not None:
            block = int(m[2])
            return f"encoder.downsamples.{block}.downsamples.{enc_counts.get(block, 0)}.{m[4]}"
        block = int(m[3])
        return f"decoder.upsamples.{block}.upsamples.{dec_counts.get(block, 0)}.{m[4]}"
    raise ValueError(f"VAE key map (2.2): no reference name for {key!r}")


def _vae22_from_ref(key: str) -> str:
    if m := re.fullmatch(r"(encoder\.downsamples|decoder\.upsamples)\.(\d+)\.(downsamples|upsamples)\.(\d+)\.(.+)",
                         key):
        is_encoder = m[1].startswith("encoder")
        if (m[3] == "downsamples") != is_encoder:
            raise ValueError(f"VAE key map (2.2): malformed reference key {key!r}")
        stem = f"encoder.down_blocks.{m[2]}" if is_encoder else f"decoder.up_blocks.{m[2]}"
        if _RESAMPLE.fullmatch(m[5]):
            return f"{stem}.{'downsampler' if is_encoder else 'upsampler'}.{m[5]}"
        return f"{stem}.resnets.{m[4]}.{_res_from_ref(m[5], key)}"
    raise ValueError(f"VAE key map (2.2): no diffusers name for reference key {key!r}")


def vae_state_dict_to_reference(sd: StateDict, *, version: str) -> dict[str, torch.Tensor]:
    """AutoencoderKLWan state dict -> reference ``Wan2.{1,2}_VAE.pth`` names (same tensors).

    Raises ValueError naming any key with no reference counterpart.
    """
    _check_version(version)
    if version == "2.1":
        dec = _resnet_counts(sd, r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.")
        per_stage = set(dec.values())
        if len(per_stage) > 1:
            raise ValueError(f"VAE key map (2.1): decoder stages have different resnet counts {dec}")
        stride = (per_stage.pop() if per_stage else 0) + 1  # resnets + one Resample per stage
        mapper = lambda key: _vae21_to_ref(key, stride)  # noqa: E731
    else:
        enc = _resnet_counts(sd, r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.")
        dec = _resnet_counts(sd, r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.")
        mapper = lambda key: _vae22_to_ref(key, enc, dec)  # noqa: E731
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        out[_shared_to_ref(key) or mapper(key)] = value
    return out


def vae_state_dict_from_reference(sd: StateDict, *, version: str) -> dict[str, torch.Tensor]:
    """Reference ``Wan2.{1,2}_VAE.pth`` state dict -> AutoencoderKLWan names (same tensors).

    2.1 uses diffusers' own converter (it assumes dim_mult (1, 2, 4, 4), num_res_blocks 2, as
    every released Wan 2.1 VAE); 2.2 follows diffusers' ``convert_vae_22`` correspondence.
    """
    _check_version(version)
    if version == "2.1":
        from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

        return dict(convert_wan_vae_to_diffusers(dict(sd)))
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        out[_shared_from_ref(key) or _vae22_from_ref(key)] = value
    return out


# --- UMT5 encoder ---------------------------------------------------------------------------
# (reference name, transformers name) per block; {n} is the block index.
_T5_BLOCK = (
    ("blocks.{n}.norm1.weight", "encoder.block.{n}.layer.0.layer_norm.weight"),
    ("blocks.{n}.attn.q.weight", "encoder.block.{n}.layer.0.SelfAttention.q.weight"),
    ("blocks.{n}.attn.k.weight", "encoder.block.{n}.layer.0.SelfAttention.k.weight"),
    ("blocks.{n}.attn.v.weight", "encoder.block.{n}.layer.0.SelfAttention.v.weight"),
    ("blocks.{n}.attn.o.weight", "encoder.block.{n}.layer.0.SelfAttention.o.weight"),
    ("blocks.{n}.pos_embedding.embedding.weight",
     "encoder.block.{n}.layer.0.SelfAttention.relative_attention_bias.weight"),
    ("blocks.{n}.norm2.weight", "encoder.block.{n}.layer.1.layer_norm.weight"),
    ("blocks.{n}.ffn.gate.0.weight", "encoder.block.{n}.layer.1.DenseReluDense.wi_0.weight"),
    ("blocks.{n}.ffn.fc1.weight", "encoder.block.{n}.layer.1.DenseReluDense.wi_1.weight"),
    ("blocks.{n}.ffn.fc2.weight", "encoder.block.{n}.layer.1.DenseReluDense.wo.weight"),
)
_T5_GLOBAL = (("norm.weight", "encoder.final_layer_norm.weight"),)
_T5_EMBED_REF = "token_embedding.weight"
_T5_EMBED_HF = ("shared.weight", "encoder.embed_tokens.weight")  # tied in UMT5EncoderModel


def _template_regex(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(re.escape("{n}"), r"(?P<n>\d+)"))


_T5_FROM_REF = [(_template_regex(ref), hf) for ref, hf in _T5_BLOCK] + [
    (re.compile(re.escape(ref)), hf) for ref, hf in _T5_GLOBAL]
_T5_TO_REF = [(_template_regex(hf), ref) for ref, hf in _T5_BLOCK] + [
    (re.compile(re.escape(hf)), ref) for ref, hf in _T5_GLOBAL]


def _rename(key: str, table) -> str | None:
    for pattern, template in table:
        if m := pattern.fullmatch(key):
            return template.format(n=m.groupdict().get("n"))
    return None


def t5_state_dict_from_reference(sd: StateDict) -> dict[str, torch.Tensor]:
    """Reference ``models_t5_umt5-xxl-enc-bf16.pth`` -> ``UMT5EncoderModel`` names.

    The token embedding fills both tied names (``shared.weight``, ``encoder.embed_tokens.weight``).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key == _T5_EMBED_REF:
            for name in _T5_EMBED_HF:
                out[name] = value
            continue
        new = _rename(key, _T5_FROM_REF)
        if new is None:
            raise ValueError(f"T5 key map: no transformers name for reference key {key!r}")
        out[new] = value
    return out


def t5_state_dict_to_reference(sd: StateDict) -> dict[str, torch.Tensor]:
    """``UMT5EncoderModel`` state dict -> reference T5 encoder names (inverse of the above)."""
    out: dict[str, torch.Tensor] = {}
    embeds = [sd[name] for name in _T5_EMBED_HF if name in sd]
    if embeds:
        out[_T5_EMBED_REF] = embeds[0]
    for key, value in sd.items():
        if key in _T5_EMBED_HF:
            continue
        new = _rename(key, _T5_TO_REF)
        if new is None:
            raise ValueError(f"T5 key map: no reference name for {key!r}")
        out[new] = value
    return out
