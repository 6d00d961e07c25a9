"""LoRA state dicts of the Wan 2.2 DiT: the formats found in the wild, read into one form keyed by our names.

Formats (a file's keys decide, as in diffusers' ``WanLoraLoaderMixin.lora_state_dict``):

- ``wan`` (Wan-native / ComfyUI): ``diffusion_model.<reference name>.{lora_down|lora_A}.weight``,
  ``.{lora_up|lora_B}.weight``, optional ``.alpha``, full deltas ``.diff`` (weight) and ``.diff_b`` (bias).
- ``musubi`` (musubi-tuner / kohya): ``lora_unet_<reference name with '_' for '.'>.lora_down.weight``,
  ``.lora_up.weight``, ``.alpha``.
- ``diffusers`` (diffusers / PEFT): ``transformer.<diffusers name>.lora_A.weight``, ``.lora_B.weight``,
  ``.lora_B.bias``; a PEFT ``base_model.model.`` prefix is accepted too. The scale comes from the file's
  ``lora_adapter_metadata`` (``lora_alpha`` / ``alpha_pattern``, as diffusers reads it), else 1.

Scaling is diffusers': a pair with ``alpha`` adds ``(alpha / rank) * up @ down``, one without adds
``up @ down``; a bias delta (``.diff_b``, ``lora_B.bias``) is added as it is (times the diffusers-format
scale). At strength ``s`` every delta is multiplied by ``s`` (``set_adapters``' weight).

Where we differ from diffusers, we apply rather than drop: ``.diff`` of a linear weight (diffusers logs and
ignores it), ``.diff`` of a norm (diffusers drops it as "zeroed"), a ``time_projection`` ``.diff_b`` without
its weight pair. An all-zero full delta is dropped (adding it changes nothing). Every key either lands
in :class:`LoraWeights` or is reported: unknown keys, keys naming no parameter of the model, and shapes
that do not fit the model (a LoRA for another model) raise :class:`LoraError` naming the keys. Keys of
the Wan 2.1 I2V image branch (``k_img``, ``v_img``, ``img_emb``, diffusers' ``add_k_proj`` ...) target
modules no Wan 2.2 model has: an error too, unless ``image_branch="skip"`` (then listed in ``skipped``).

This module only parses and applies; reading files (fsspec, caching, hashes) is the engine's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from wan_dist.models.keymap import dit_key_from_diffusers

__all__ = ["LoraError", "LowRank", "LoraWeights", "parse_lora", "detect_lora_format", "lora_metadata",
           "FORMATS"]

FORMATS = ("wan", "musubi", "diffusers")
_PREFIXES = {"wan": ("diffusion_model.",), "musubi": ("lora_unet_",),
             "diffusers": ("transformer.base_model.model.", "transformer.", "base_model.model.", "")}
_DOWN = ("lora_down.weight", "lora_A.weight")
_UP = ("lora_up.weight", "lora_B.weight")
_SUFFIXES = _DOWN + _UP + ("lora_B.bias", "alpha", "diff_b", "diff")  # "diff_b" before "diff"
_IMAGE_BRANCH = re.compile(r"k_img|v_img|img_emb|add_k_proj|add_v_proj|norm_added|image_embedder")
_SHOWN = 8  # keys named in one error message


class LoraError(ValueError):
    """A LoRA that cannot be applied to this model; ``keys`` are the offending keys of the file.

    ``field`` names where the LoRA came from (``loras[0]``; ``lora`` when loaded directly); the message
    starts with it, as the request errors do."""

    def __init__(self, reason: str, keys: list[str] | tuple[str, ...] = (), *, field: str = "lora"):
        self.reason, self.keys, self.field = reason, tuple(keys), field
        shown = ", ".join(sorted(self.keys)[:_SHOWN]) + (f" (+{len(self.keys) - _SHOWN} more)"
                                                          if len(self.keys) > _SHOWN else "")
        super().__init__(f"{field}: {reason}" + (f": {shown}" if shown else ""))

    def named(self, field: str) -> "LoraError":
        """The same error for ``field``."""
        return LoraError(self.reason, self.keys, field=field)

    def __reduce__(self):
        return (_rebuild_error, (self.reason, self.keys, self.field))


def _rebuild_error(reason, keys, field):
    return LoraError(reason, keys, field=field)


@dataclass(frozen=True)
class LowRank:
    """``scale * up @ down`` added to a Linear's weight [out, in]: down [rank, in], up [out, rank]."""

    down: torch.Tensor
    up: torch.Tensor
    scale: float = 1.0

    @property
    def rank(self) -> int:
        return self.down.shape[0]


@dataclass(frozen=True)
class LoraWeights:
    """One LoRA in our parameter names, at strength 1.

    ``low_rank``: Linear module name (``blocks.0.self_attn.q``) -> :class:`LowRank` of its weight.
    ``full``: parameter name (``blocks.0.self_attn.q.bias``, ``blocks.0.norm3.weight``) -> delta of its shape.
    ``format``: one of :data:`FORMATS`; ``skipped``: image-branch keys left out (``image_branch="skip"``).
    """

    low_rank: dict[str, LowRank]
    full: dict[str, torch.Tensor]
    format: str
    skipped: tuple[str, ...] = ()
    nbytes: int = field(default=0, compare=False)

    def parameters(self) -> set[str]:
        """Every parameter this LoRA changes."""
        return {f"{name}.weight" for name in self.low_rank} | set(self.full)


def detect_lora_format(keys) -> str:
    """``wan``, ``musubi`` or ``diffusers`` for a state dict's keys, the way diffusers decides."""
    keys = list(keys)
    if any(k.startswith("diffusion_model.") for k in keys):
        return "wan"
    if any(k.startswith("lora_unet_") for k in keys):
        return "musubi"
    return "diffusers"


def lora_metadata(header: Mapping[str, str] | None) -> dict:
    """The LoRA config of a safetensors header's ``lora_adapter_metadata`` (diffusers / PEFT writes it), with the
    ``transformer.`` prefix of a pipeline's file removed; {} when there is none."""
    raw = (header or {}).get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise LoraError(f"lora_adapter_metadata is not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise LoraError("lora_adapter_metadata must be a JSON object")
    if any(k.startswith("transformer.") for k in config):
        config = {k.removeprefix("transformer."): v for k, v in config.items() if k.startswith("transformer.")}
    return config


def _split(key: str, fmt: str) -> tuple[str, str] | None:
    """(module or parameter path as the format spells it, suffix), or None when the key is not LoRA-shaped."""
    for prefix in _PREFIXES[fmt]:
        if key.startswith(prefix):
            rest = key[len(prefix):]
            break
    else:
        return None
    for suffix in _SUFFIXES:
        if rest.endswith("." + suffix) and len(rest) > len(suffix) + 1:
            return rest[: -len(suffix) - 1], suffix
    return None


def _musubi_names(shapes: Mapping[str, torch.Size]) -> dict[str, str]:
    """musubi's flattened names (``blocks_0_self_attn_q``) -> ours, for every module and parameter."""
    names: dict[str, str] = {}
    for param in shapes:
        module = param.rsplit(".", 1)[0]
        names.setdefault(module.replace(".", "_"), module)
        names.setdefault(param.replace(".", "_"), param)
    return names


def _our_path(path: str, fmt: str, musubi: dict[str, str]) -> str | None:
    if fmt == "musubi":
        return musubi.get(path)
    if fmt == "diffusers":
        return dit_key_from_diffusers(path + ".weight").removesuffix(".weight")
    return path


def _group(state_dict: Mapping[str, torch.Tensor], fmt: str, shapes: Mapping[str, torch.Size],
           image_branch: str) -> tuple[dict[str, dict[str, tuple[str, torch.Tensor]]], list[str]]:
    """{our path: {suffix: (key, tensor)}} and the image-branch keys skipped; raises on unknown keys."""
    musubi = _musubi_names(shapes) if fmt == "musubi" else {}
    groups: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    unknown, image, targetless = [], [], []
    for key, tensor in state_dict.items():
        parts = _split(key, fmt)
        if parts is None:
            unknown.append(key)
            continue
        path, suffix = parts
        if _IMAGE_BRANCH.search(path):
            image.append(key)
            continue
        ours = _our_path(path, fmt, musubi)
        if ours is None or not (f"{ours}.weight" in shapes or ours in shapes):
            targetless.append(key)
            continue
        kind = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}.get(suffix, suffix)
        group = groups.setdefault(ours, {})
        if kind in group:
            raise LoraError("two keys for the same tensor of one layer", [group[kind][0], key])
        group[kind] = (key, tensor)
    if unknown:
        raise LoraError(f"unknown keys for the {fmt} LoRA format (expected {'|'.join(_PREFIXES[fmt][:2])}"
                        f"<name>.<{'|'.join(_SUFFIXES)}>)", unknown)
    if targetless:
        raise LoraError("keys that name no parameter of this model (a LoRA for another model?)", targetless)
    if image and image_branch != "skip":
        raise LoraError("keys of the Wan 2.1 I2V image branch, which Wan 2.2 models do not have "
                        "(image_branch='skip' leaves them out)", image)
    return groups, image


def _alpha_scale(path: str, parts: dict, rank: int, fmt: str, metadata: Mapping) -> float:
    if "alpha" in parts:
        key, alpha = parts["alpha"]
        if alpha.numel() != 1:
            raise LoraError(f"alpha must be one number, got shape {list(alpha.shape)}", [key])
        return float(alpha.item()) / rank
    if fmt != "diffusers" or not metadata:
        return 1.0
    alpha = metadata.get("lora_alpha", rank)
    name = _diffusers_module(path)
    for pattern, value in (metadata.get("alpha_pattern") or {}).items():
        if re.fullmatch(rf"(.*\.)?(?:{pattern})", name):
            alpha = value
            break
    return float(alpha) / rank


def _diffusers_module(path: str) -> str:
    from wan_dist.models.keymap import dit_key_to_diffusers

    return dit_key_to_diffusers(path + ".weight").removesuffix(".weight")


def _check_shape(key: str, tensor: torch.Tensor, expected: torch.Size | None, what: str) -> None:
    if expected is None or tuple(tensor.shape) != tuple(expected):
        raise LoraError(f"shape mismatch: {key} is {list(tensor.shape)}, the model's {what} is "
                        f"{list(expected) if expected is not None else 'absent'} (a LoRA for another model?)",
                        [key])


def _low_rank(path: str, parts: dict, shapes: Mapping[str, torch.Size], fmt: str, metadata) -> LowRank:
    (down_key, down), (up_key, up) = parts["lora_down.weight"], parts["lora_up.weight"]
    if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
        raise LoraError(f"down {list(down.shape)} and up {list(up.shape)} are not a rank-r pair", [down_key, up_key])
    weight = shapes.get(f"{path}.weight")
    if weight is None or len(weight) != 2:
        raise LoraError(f"{path} is not a linear layer of this model", [down_key])
    _check_shape(down_key, down, torch.Size([down.shape[0], weight[1]]), f"{path}.weight [out, in] = {list(weight)}; in")
    _check_shape(up_key, up, torch.Size([weight[0], up.shape[1]]), f"{path}.weight [out, in] = {list(weight)}; out")
    return LowRank(down=down, up=up, scale=_alpha_scale(path, parts, down.shape[0], fmt, metadata))


def _full_target(path: str, suffix: str, shapes: Mapping[str, torch.Size]) -> str:
    if suffix == "diff":
        return f"{path}.weight" if f"{path}.weight" in shapes else path
    return f"{path}.bias"


def parse_lora(state_dict: Mapping[str, torch.Tensor], shapes: Mapping[str, torch.Size], *,
               metadata: Mapping | None = None, image_branch: str = "error") -> LoraWeights:
    """``state_dict`` (any of :data:`FORMATS`) as :class:`LoraWeights` for a model with parameters ``shapes``
    (``{name: shape}``, e.g. ``{n: p.shape for n, p in model.named_parameters()}``: global shapes, also of a
    sharded model). ``metadata``: :func:`lora_metadata` of the file (diffusers format). Raises LoraError."""
    if image_branch not in ("error", "skip"):
        raise ValueError(f"image_branch: 'error' or 'skip', got {image_branch!r}")
    if not state_dict:
        raise LoraError("the LoRA has no tensors")
    fmt = detect_lora_format(state_dict)
    groups, skipped = _group(state_dict, fmt, shapes, image_branch)
    low_rank: dict[str, LowRank] = {}
    full: dict[str, torch.Tensor] = {}
    for path, parts in groups.items():
        pair = [s for s in ("lora_down.weight", "lora_up.weight") if s in parts]
        scale = 1.0
        if len(pair) == 1 or ("alpha" in parts and not pair):
            lonely = parts[pair[0]][0] if pair else parts["alpha"][0]
            raise LoraError("a LoRA factor without its partner (lora_down/lora_A needs lora_up/lora_B)", [lonely])
        if pair:
            low_rank[path] = _low_rank(path, parts, shapes, fmt, metadata or {})
            scale = low_rank[path].scale if fmt == "diffusers" else 1.0  # a bias rides with PEFT's scaling
        for suffix in ("diff", "diff_b", "lora_B.bias"):
            if suffix not in parts:
                continue
            key, delta = parts[suffix]
            target = _full_target(path, suffix, shapes)
            _check_shape(key, delta, shapes.get(target), target)
            if bool(delta.any()):
                full[target] = full[target] + delta * scale if target in full else delta * scale
    if not low_rank and not full and not skipped:
        raise LoraError("the LoRA changes nothing (every delta is zero)")
    nbytes = sum(t.numel() * t.element_size() for t in state_dict.values())
    return LoraWeights(low_rank=low_rank, full=full, format=fmt, skipped=tuple(sorted(skipped)), nbytes=nbytes)
