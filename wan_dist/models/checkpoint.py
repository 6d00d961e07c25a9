"""Checkpoint layouts on a local folder: detection of layout and variant, and loading.

Two layouts load (see ../shared/WAN22_FACTS.md, "Checkpoint layouts"):
- reference: ``high_noise_model/`` + ``low_noise_model/`` (A14B) or the root (5B), each with ``config.json``
  and sharded ``diffusion_pytorch_model*.safetensors``; ``Wan2.1_VAE.pth`` / ``Wan2.2_VAE.pth``;
  ``models_t5_umt5-xxl-enc-bf16.pth``; tokenizer in ``google/umt5-xxl/``.
- diffusers: ``model_index.json``, ``transformer/`` (high-noise), ``transformer_2/`` (low-noise), ``vae/``,
  ``text_encoder/``, ``tokenizer/``, ``scheduler/``.

The DiT loads shard by shard: the module is built on the meta device, each tensor is read lazily from
its shard (safetensors mmap), renamed, checked, cast and assigned in place. Peak memory stays near one
copy of the weights. Remote sources (fsspec URLs, Hugging Face repos) are materialised into a local
folder by the engine before they reach this module; models never do I/O beyond local files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from wan_dist.config import DiTConfig, TextEncoderConfig, VAEConfig
from wan_dist.models.presets import PRESETS, SamplingDefaults, VariantSpec

__all__ = ["CheckpointError", "CheckpointInfo", "detect_checkpoint", "load_dit", "load_vae",
           "load_text_encoder", "read_json", "visit_dit_tensors", "fp32_param_names", "dit_timestep_precision",
           "DIT_WEIGHTS", "DIT_INDEX"]

Layout = Literal["reference", "diffusers"]
DIT_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIT_INDEX = "diffusion_pytorch_model.safetensors.index.json"
REF_EXPERTS = ("high_noise_model", "low_noise_model")
DIFFUSERS_EXPERTS = ("transformer", "transformer_2")
REF_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
REF_TOKENIZER = "google/umt5-xxl"
REF_VAE = {"2.1": "Wan2.1_VAE.pth", "2.2": "Wan2.2_VAE.pth"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and, where known, the key."""


@dataclass(frozen=True, kw_only=True)
class CheckpointInfo:
    """What a checkpoint folder holds. ``expert_dirs`` lists the high-noise expert first."""

    root: Path
    layout: Layout
    spec: VariantSpec
    expert_dirs: tuple[Path, ...]
    vae_path: Path
    text_encoder_path: Path
    tokenizer_path: Path

    @property
    def checkpoint_id(self) -> str:
        return f"{self.root.name}:{self.layout}:{self.spec.name}"


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None


# ----------------------------------------------------------------------------------------------
# Detection
# ----------------------------------------------------------------------------------------------

def detect_checkpoint(root: str | Path) -> CheckpointInfo:
    """Detect layout and variant of the checkpoint folder ``root`` from its files."""
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a folder")
    if (root / "model_index.json").exists():
        return _detect_diffusers(root)
    if (root / REF_EXPERTS[0]).is_dir() or (root / "config.json").exists():
        return _detect_reference(root)
    raise CheckpointError(
        f"{root}: neither layout found (no model_index.json for the diffusers layout, "
        f"no {REF_EXPERTS[0]}/ or config.json for the reference layout)")


def _detect_diffusers(root: Path) -> CheckpointInfo:
    from wan_dist.models.keymap import dit_config_from_diffusers
    from wan_dist.models.vae import vae_config_from_diffusers

    index = read_json(root / "model_index.json")
    experts = tuple(root / name for name in DIFFUSERS_EXPERTS
                    if index.get(name) not in (None, [None, None]) and (root / name).is_dir())
    if not experts:
        raise CheckpointError(f"{root / 'transformer'}: folder missing (model_index.json names no transformer)")
    dit = _checked_config(experts[0] / "config.json", dit_config_from_diffusers)
    vae = _checked_config(root / "vae" / "config.json", vae_config_from_diffusers)
    scheduler = root / "scheduler" / "scheduler_config.json"
    shift = read_json(scheduler).get("flow_shift") if scheduler.exists() else None
    boundary = index.get("boundary_ratio")
    task = "ti2v" if index.get("expand_timesteps") else _task_from_channels(dit, experts[0] / "config.json")
    spec = _resolve_spec(task=task, dit=dit, vae=vae, text=_diffusers_text_config(root),
                         two_experts=len(experts) == 2, boundary=boundary, shift=shift)
    return CheckpointInfo(root=root, layout="diffusers", spec=spec, expert_dirs=experts, vae_path=root / "vae",
                          text_encoder_path=root / "text_encoder", tokenizer_path=root / "tokenizer")


def _detect_reference(root: Path) -> CheckpointInfo:
    from wan_dist.models.keymap import dit_config_from_reference

    two = (root / REF_EXPERTS[0]).is_dir()
    experts = tuple(root / name for name in REF_EXPERTS) if two else (root,)
    for folder in experts:
        if not (folder / "config.json").exists():
            raise CheckpointError(f"{folder / 'config.json'}: file missing")
    raw = read_json(experts[0] / "config.json")
    dit = _checked_config(experts[0] / "config.json", dit_config_from_reference)
    vae_files = [(version, root / name) for version, name in REF_VAE.items() if (root / name).exists()]
    if len(vae_files) != 1:
        raise CheckpointError(f"{root}: expected exactly one of {sorted(REF_VAE.values())}, found "
                              f"{[str(p.name) for _, p in vae_files]}")
    version, vae_path = vae_files[0]
    task = raw.get("model_type") or _task_from_channels(dit, experts[0] / "config.json")
    spec = _resolve_spec(task=task, dit=dit, vae=_reference_vae_config(vae_path, version),
                         text=_reference_text_config(root / REF_T5), two_experts=two, boundary=None, shift=None)
    return CheckpointInfo(root=root, layout="reference", spec=spec, expert_dirs=experts, vae_path=vae_path,
                          text_encoder_path=root / REF_T5, tokenizer_path=root / REF_TOKENIZER)


def _checked_config(path: Path, parse):
    try:
        return parse(read_json(path))
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{path}: invalid config ({error})") from None


def _task_from_channels(dit: DiTConfig, path: Path) -> str:
    tasks = {16: "t2v", 36: "i2v", 48: "ti2v"}
    if dit.in_channels not in tasks:
        raise CheckpointError(f"{path}: in_channels {dit.in_channels} matches no Wan 2.2 task (16, 36 or 48)")
    return tasks[dit.in_channels]


def _resolve_spec(*, task, dit, vae, text, two_experts, boundary, shift) -> VariantSpec:
    """Name and defaults of the preset whose network matches; the task's released defaults otherwise."""
    same = [s for s in PRESETS.values() if s.dit == dit and s.task == task and s.two_experts == two_experts]
    base = same[0] if same else next(s for s in PRESETS.values() if s.task == task and s.dit.dim >= 3072)
    defaults: SamplingDefaults = base.defaults
    if boundary is not None:
        defaults = replace(defaults, boundary_ratio=float(boundary))
    if shift is not None:
        defaults = replace(defaults, diffusers_shift=float(shift))
    if not two_experts:
        defaults = replace(defaults, boundary_ratio=None, guidance_scale_2=None)
    name = base.name if same else f"{task}-custom"
    return VariantSpec(name=name, task=task, dit=dit, vae=vae, text_encoder=text, two_experts=two_experts,
                       defaults=defaults)


def _diffusers_text_config(root: Path) -> TextEncoderConfig:
    cfg = read_json(root / "text_encoder" / "config.json")
    try:
        return TextEncoderConfig(vocab_size=cfg["vocab_size"], d_model=cfg["d_model"], d_ff=cfg["d_ff"],
                                 d_kv=cfg["d_kv"], num_heads=cfg["num_heads"], num_layers=cfg["num_layers"],
                                 relative_attention_num_buckets=cfg.get("relative_attention_num_buckets", 32),
                                 relative_attention_max_distance=cfg.get("relative_attention_max_distance", 128))
    except KeyError as error:
        raise CheckpointError(f"{root / 'text_encoder' / 'config.json'}: missing field {error}") from None


def _load_pth(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file missing") from None
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: cannot read ({type(error).__name__}: {error})") from None


def _reference_text_config(path: Path) -> TextEncoderConfig:
    """The reference hard-codes UMT5-XXL; its sizes are read back from the tensors."""
    sd = _load_pth(path)
    try:
        vocab, d_model = sd["token_embedding.weight"].shape
        layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
        buckets, heads = sd["blocks.0.pos_embedding.embedding.weight"].shape
        d_kv = sd["blocks.0.attn.q.weight"].shape[0] // heads
        d_ff = sd["blocks.0.ffn.fc1.weight"].shape[0]
    except KeyError as error:
        raise CheckpointError(f"{path}: missing key {error}") from None
    return TextEncoderConfig(vocab_size=vocab, d_model=d_model, d_ff=d_ff, d_kv=d_kv, num_heads=heads,
                             num_layers=layers, relative_attention_num_buckets=buckets)


def _reference_vae_config(path: Path, version: str) -> VAEConfig:
    """The reference hard-codes the VAE sizes; base and z dims are read back from the tensors."""
    sd = _load_pth(path)
    base = PRESETS["t2v-a14b" if version == "2.1" else "ti2v-5b"].vae
    try:
        base_dim = sd["encoder.conv1.weight"].shape[0]
        z_dim = sd["conv2.weight"].shape[0]
        decoder_dim = sd["decoder.conv1.weight"].shape[0]
    except KeyError as error:
        raise CheckpointError(f"{path}: missing key {error}") from None
    if z_dim != base.z_dim:
        raise CheckpointError(f"{path}: key conv2.weight says z_dim {z_dim}, Wan {version} VAE has {base.z_dim}")
    decoder_base = decoder_dim // base.dim_mult[-1]
    return replace(base, base_dim=base_dim, decoder_base_dim=decoder_base if version == "2.2" else None)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

def _shard_map(folder: Path) -> dict[str, list[str]]:
    """Shard file name -> the keys the index assigns to it (one unsharded file when no index)."""
    index_path = folder / DIT_INDEX
    if index_path.exists():
        weight_map = read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index_path}: no weight_map")
        shards: dict[str, list[str]] = {}
        for key, shard in weight_map.items():
            shards.setdefault(shard, []).append(key)
        return shards
    if (folder / DIT_WEIGHTS).exists():
        return {DIT_WEIGHTS: []}  # keys come from the file itself
    raise CheckpointError(f"{folder / DIT_INDEX}: file missing (and no single {DIT_WEIGHTS})")


def _fp32_names(model: torch.nn.Module) -> set[str]:
    patterns = getattr(model, "fp32_param_patterns", ())
    return {name for name, _ in model.named_parameters() if any(re.search(p, name) for p in patterns)}


def load_dit(folder: str | Path, config: DiTConfig, *, layout: Layout, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, keep=None):
    """Load one expert from ``folder`` into a new ``WanDiT`` on ``device``.

    Parameters are cast to ``dtype`` except those the model keeps in fp32. ``keep`` (optional) is a
    predicate on reference key names: keys it rejects are neither read nor materialised (a rank that
    shards the expert reads only what it keeps); their parameters stay on the meta device.
    Raises CheckpointError naming the file and key for a missing, unexpected or misshapen tensor, or a
    truncated shard. Nothing half-loaded is returned.
    """
    from wan_dist.models.dit import WanDiT

    with torch.device("meta"):
        model = WanDiT(config)
    expected = {name: p.shape for name, p in model.named_parameters()}
    fp32 = fp32_param_names(model)

    def read(handle, raw_key: str, name: str) -> None:
        if keep is not None and not keep(name):
            return
        # Copy into memory we own: a view of the mmapped shard would keep every shard
        # mapped for the model's lifetime (a second, file-backed copy of the weights).
        param = torch.empty(expected[name], dtype=torch.float32 if name in fp32 else dtype, device=device)
        param.copy_(handle.get_tensor(raw_key))
        _assign(model, name, param)

    visit_dit_tensors(folder, expected, layout=layout, visit=read)
    model.timestep_precision = dit_timestep_precision(layout)
    model.eval().requires_grad_(False)
    return model


def dit_timestep_precision(layout: Layout) -> str:
    """Each layout reproduces its own implementation: diffusers computes the time sinusoid in fp32."""
    return "float32" if layout == "diffusers" else "float64"


def fp32_param_names(model: torch.nn.Module) -> set[str]:
    """Names of the parameters ``model`` keeps in fp32 whatever the load dtype (``fp32_param_patterns``)."""
    return _fp32_names(model)


def visit_dit_tensors(folder: str | Path, expected: dict[str, torch.Size], *, layout: Layout, visit) -> None:
    """Check every tensor of the expert in ``folder`` and call ``visit(handle, raw_key, name)`` on it.

    Shard by shard: ``handle`` is the open safetensors shard (``handle.get_slice(raw_key)[a:b]`` reads
    rows ``a:b`` only), ``raw_key`` the stored key, ``name`` its reference name, a key of ``expected``
    (reference name -> shape). A tensor is visited only after its key (known, stored once, as the
    index says) and its stored shape were checked; after the last shard no key of ``expected`` may be
    missing. Raises CheckpointError naming the file and key; what ``visit`` raises while reading a
    shard is reported the same way.
    """
    from safetensors import safe_open

    from wan_dist.models.keymap import dit_key_from_diffusers

    folder = Path(folder)
    rename = dit_key_from_diffusers if layout == "diffusers" else (lambda name: name)
    seen: dict[str, str] = {}
    for shard, index_keys in _shard_map(folder).items():
        path = folder / shard
        if not path.exists():
            raise CheckpointError(f"{path}: shard missing (named in {DIT_INDEX})")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                file_keys = list(handle.keys())
                _check_index_agrees(path, index_keys, file_keys)
                for raw_key in file_keys:
                    name = rename(raw_key)
                    _check_key(path, raw_key, name, expected, seen)
                    seen[name] = str(path)
                    shape = tuple(handle.get_slice(raw_key).get_shape())
                    if shape != tuple(expected[name]):
                        raise CheckpointError(f"{path}: key {raw_key!r} has shape {list(shape)}, the config in "
                                              f"{folder / 'config.json'} needs {list(expected[name])}")
                    visit(handle, raw_key, name)
        except CheckpointError:
            raise
        except Exception as error:  # safetensors raises its own error types for truncated/corrupt files
            raise CheckpointError(f"{path}: cannot read shard ({type(error).__name__}: {error})") from None
    missing = sorted(set(expected) - set(seen))
    if missing:
        raise CheckpointError(f"{folder}: missing key(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                              f"({len(missing)} of {len(expected)})")


def _check_index_agrees(path: Path, index_keys: list[str], file_keys: list[str]) -> None:
    if index_keys and set(index_keys) != set(file_keys):
        absent = sorted(set(index_keys) - set(file_keys))
        extra = sorted(set(file_keys) - set(index_keys))
        raise CheckpointError(f"{path}: shard disagrees with {DIT_INDEX}: keys absent {absent[:3]}, "
                              f"not indexed {extra[:3]}")


def _check_key(path: Path, raw_key: str, name: str, expected: dict, seen: dict) -> None:
    if name not in expected:
        raise CheckpointError(f"{path}: unexpected key {raw_key!r}")
    if name in seen:
        raise CheckpointError(f"{path}: key {raw_key!r} also stored in {seen[name]}")


def _assign(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, param_name = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    module._parameters[param_name] = torch.nn.Parameter(tensor, requires_grad=False)


def load_vae(info: CheckpointInfo, *, device: str | torch.device = "cpu"):
    """The VAE of ``info`` as a ``WanVAE`` in fp32 (the reference runs its VAE in fp32)."""
    from wan_dist.models.ref_keymaps import vae_state_dict_from_reference
    from wan_dist.models.vae import WanVAE, build_vae

    config = info.spec.vae
    if info.layout == "diffusers":
        state = _load_diffusers_weights(info.vae_path)
    else:
        state = vae_state_dict_from_reference(_load_pth(info.vae_path), version=config.version)
    with torch.device("meta"):
        model = build_vae(config)
    _load_state_strict(model, state, info.vae_path)
    # nn.Module.to, not diffusers' override: that one warns about fp32 modules on every cast.
    model = torch.nn.Module.to(model, device=device, dtype=torch.float32)
    return WanVAE(model.eval().requires_grad_(False), config)


def load_text_encoder(info: CheckpointInfo, *, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32):
    """Tokenizer + UMT5 encoder of ``info`` as a ``TextEncoder``."""
    from wan_dist.models.ref_keymaps import t5_state_dict_from_reference
    from wan_dist.models.text_encoder import TextEncoder, build_text_encoder
    from wan_dist.models.tokenizer import load_tokenizer

    if info.layout == "diffusers":
        state = _load_diffusers_weights(info.text_encoder_path)
    else:
        state = t5_state_dict_from_reference(_load_pth(info.text_encoder_path))
    with torch.device("meta"):
        model = build_text_encoder(info.spec.text_encoder)
    _load_state_strict(model, state, info.text_encoder_path)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return TextEncoder(model, load_tokenizer(info.tokenizer_path), text_len=info.spec.dit.text_len)


def _load_diffusers_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no .safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            state.update(load_file(str(path)))
        except Exception as error:
            raise CheckpointError(f"{path}: cannot read ({type(error).__name__}: {error})") from None
    return state


def _load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Assign ``state`` into a meta-device ``model``, naming the first bad key."""
    expected = dict(model.state_dict())
    tied = {"encoder.embed_tokens.weight"} if "shared.weight" in expected else set()
    missing = sorted(set(expected) - set(state) - tied)
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise CheckpointError(f"{path}: missing key(s) {missing[:5]}")
    if unexpected:
        raise CheckpointError(f"{path}: unexpected key(s) {unexpected[:5]}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{path}: key {key!r} has shape {list(tensor.shape)}, "
                                  f"expected {list(expected[key].shape)}")
    model.load_state_dict(state, strict=False, assign=True)
    if tied:
        model.tie_weights()
