"""Write a random-weight checkpoint of any preset in either real layout.

Weights cannot be downloaded here, so tests, the embedded default render and users exercise the real
loaders on checkpoints this module writes. The DiT is generated tensor by tensor into shards (a full
A14B expert never sits in memory whole); the same seed gives the same tensors in both layouts, so
the two loaders can be checked against each other.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from wan_dist.models.checkpoint import (DIFFUSERS_EXPERTS, DIT_INDEX, REF_EXPERTS, REF_T5, REF_TOKENIZER,
                                        REF_VAE, Layout)
from wan_dist.models.presets import VariantSpec, get_preset

__all__ = ["make_checkpoint", "random_dit_tensors", "write_checkpoint", "TrainedParts"]

_PIPELINE_CLASS = {"t2v": "WanPipeline", "i2v": "WanImageToVideoPipeline", "ti2v": "WanPipeline"}


def random_dit_tensors(spec: VariantSpec, *, seed: int, dtype: torch.dtype = torch.float32):
    """Yield (reference key, tensor) for one expert, deterministically from ``seed``.

    Norm weights are drawn around 1 and modulation tables around 0 with the scale of the reference
    init, so no parameter is trivially 0 or 1 and parity tests exercise every path.
    """
    from wan_dist.models.dit import WanDiT

    with torch.device("meta"):
        model = WanDiT(spec.dit)
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        shape = tuple(param.shape)
        if name.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight")):
            tensor = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        elif name.endswith("modulation"):
            tensor = torch.randn(shape, generator=generator) / math.sqrt(spec.dit.dim)
        elif len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            tensor = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
        else:
            tensor = 0.02 * torch.randn(shape, generator=generator)
        yield name, tensor.to(dtype)


def _plan_shards(spec: VariantSpec, shard_bytes: int, dtype: torch.dtype) -> list[list[str]]:
    from wan_dist.models.dit import WanDiT

    with torch.device("meta"):
        model = WanDiT(spec.dit)
    itemsize = torch.empty((), dtype=dtype).element_size()
    shards: list[list[str]] = [[]]
    size = 0
    for name, param in model.named_parameters():
        nbytes = param.numel() * itemsize
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _write_dit(spec: VariantSpec, folder: Path, *, layout: Layout, tensors: Iterable[tuple[str, torch.Tensor]],
               dtype: torch.dtype, shard_bytes: int) -> None:
    from safetensors.torch import save_file

    from wan_dist.models.keymap import dit_config_to_diffusers, dit_config_to_reference, dit_keys_to_diffusers

    folder.mkdir(parents=True, exist_ok=True)
    if layout == "reference":
        config = dit_config_to_reference(spec.dit, model_type=spec.task)
        rename = lambda name: name  # noqa: E731
    else:
        config = dit_config_to_diffusers(spec.dit)
        rename = lambda name: next(iter(dit_keys_to_diffusers({name: None})))  # noqa: E731
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    plan = _plan_shards(spec, shard_bytes, dtype)
    count = len(plan)
    shard_of = {name: i for i, names in enumerate(plan) for name in names}
    buffers: list[dict[str, torch.Tensor]] = [{} for _ in plan]
    weight_map, total = {}, 0
    for name, tensor in tensors:
        index = shard_of[name]
        buffers[index][rename(name)] = tensor.detach().to("cpu", dtype).contiguous()
        if len(buffers[index]) == len(plan[index]):  # shard complete: write it and let it go
            file = f"diffusion_pytorch_model-{index + 1:05d}-of-{count:05d}.safetensors"
            save_file(buffers[index], str(folder / file), metadata={"format": "pt"})
            for key, value in buffers[index].items():
                weight_map[key] = file
                total += value.numel() * value.element_size()
            buffers[index] = {}
    index_json = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / DIT_INDEX).write_text(json.dumps(index_json, indent=2))


def _random_vae(spec: VariantSpec, seed: int):
    from wan_dist.models.vae import build_vae

    torch.manual_seed(seed)
    return build_vae(spec.vae)


def _write_vae(spec: VariantSpec, root: Path, layout: Layout, vae) -> None:
    from wan_dist.models.ref_keymaps import vae_state_dict_to_reference

    if layout == "diffusers":
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # a one-shard bar per write is noise
        vae.save_pretrained(str(root / "vae"), safe_serialization=True)
    else:
        state = vae_state_dict_to_reference(vae.state_dict(), version=spec.vae.version)
        torch.save(state, root / REF_VAE[spec.vae.version])


def _random_text_encoder(spec: VariantSpec, seed: int):
    from wan_dist.models.text_encoder import build_text_encoder

    torch.manual_seed(seed)
    return build_text_encoder(spec.text_encoder)


def _write_text_encoder(spec: VariantSpec, root: Path, layout: Layout, encoder,
                        corpus: tuple[str, ...] | None = None) -> None:
    from wan_dist.models.ref_keymaps import t5_state_dict_to_reference
    from wan_dist.models.tokenizer import build_tokenizer

    if layout == "diffusers":
        encoder.save_pretrained(str(root / "text_encoder"), safe_serialization=True)
        build_tokenizer(str(root / "tokenizer"), vocab_size=spec.text_encoder.vocab_size, corpus=corpus)
    else:
        torch.save(t5_state_dict_to_reference(encoder.state_dict()), root / REF_T5)
        build_tokenizer(str(root / REF_TOKENIZER), vocab_size=spec.text_encoder.vocab_size, corpus=corpus)


def _write_diffusers_index(spec: VariantSpec, root: Path) -> None:
    from diffusers import UniPCMultistepScheduler

    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=spec.defaults.diffusers_shift)
    scheduler.save_config(str(root / "scheduler"))
    index = {
        "_class_name": _PIPELINE_CLASS[spec.task],
        "_diffusers_version": "0.35.0",
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": ["diffusers", "WanTransformer3DModel"] if spec.two_experts else [None, None],
        "vae": ["diffusers", "AutoencoderKLWan"],
        "boundary_ratio": spec.defaults.boundary_ratio,
    }
    if spec.task == "ti2v":
        index["expand_timesteps"] = True
    if spec.task == "i2v":
        index["image_encoder"] = [None, None]
        index["image_processor"] = [None, None]
    (root / "model_index.json").write_text(json.dumps(index, indent=2))


@dataclass(frozen=True, kw_only=True)
class TrainedParts:
    """Trained weights to publish in a real layout (see :func:`write_checkpoint`).

    ``experts``: one state dict per expert, high-noise first, in the reference key names that
    :class:`~wan_dist.models.dit.WanDiT` uses. ``vae``: an ``AutoencoderKLWan`` whose config carries the
    latent statistics. ``text_encoder``: a ``UMT5EncoderModel``. ``tokenizer_corpus``: the lines the
    tokenizer is trained on (None: the built-in corpus).
    """

    experts: tuple[dict[str, torch.Tensor], ...]
    vae: object
    text_encoder: object
    tokenizer_corpus: tuple[str, ...] | None = None


def _stage_and_publish(out_dir: Path, write: Callable[[Path], None], *, replace: bool) -> Path:
    """Run ``write(staging)`` beside ``out_dir`` and rename the result into place (readers never see half)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        write(staging)
        if out_dir.exists() and replace:
            shutil.rmtree(out_dir)
        try:
            staging.rename(out_dir)
        except OSError:
            if replace or not out_dir.exists():
                raise
            shutil.rmtree(staging)  # another writer published the same checkpoint first
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _expert_dirs(spec: VariantSpec, layout: Layout) -> tuple[str, ...]:
    if layout == "reference":
        return REF_EXPERTS if spec.two_experts else (".",)
    return DIFFUSERS_EXPERTS[: 2 if spec.two_experts else 1]


def _write_all(spec: VariantSpec, root: Path, *, layout: Layout, experts: list[Iterator], vae, text_encoder,
               corpus: tuple[str, ...] | None, dtype: torch.dtype, shard_bytes: int) -> None:
    for name, tensors in zip(_expert_dirs(spec, layout), experts, strict=True):
        _write_dit(spec, root / name, layout=layout, tensors=tensors, dtype=dtype, shard_bytes=shard_bytes)
    _write_vae(spec, root, layout, vae)
    _write_text_encoder(spec, root, layout, text_encoder, corpus)
    if layout == "diffusers":
        _write_diffusers_index(spec, root)


def make_checkpoint(variant: str, out_dir: str | Path, *, layout: Layout = "diffusers", seed: int = 0,
                    dtype: torch.dtype = torch.float32, shard_bytes: int = 2 * 1024 * 1024,
                    replace: bool = True) -> Path:
    """Write a random checkpoint of preset ``variant`` in ``layout`` to ``out_dir``; returns the folder.

    The folder is assembled beside ``out_dir`` and renamed into place, so a reader never sees half a
    checkpoint. Expert i uses seed ``seed + i``; VAE and text encoder ``seed + 100`` and ``seed + 200``.
    ``replace=False``: a folder that appears at ``out_dir`` meanwhile (another process writing the same
    deterministic checkpoint) wins and ours is discarded, so concurrent writers never pull it from
    under a reader.
    """
    if layout not in ("reference", "diffusers"):
        raise ValueError(f"layout: must be 'reference' or 'diffusers', got {layout!r}")
    spec = get_preset(variant)

    def write(root: Path) -> None:
        experts = [random_dit_tensors(spec, seed=seed + i, dtype=dtype)
                   for i in range(len(_expert_dirs(spec, layout)))]
        _write_all(spec, root, layout=layout, experts=experts, vae=_random_vae(spec, seed + 100),
                   text_encoder=_random_text_encoder(spec, seed + 200), corpus=None, dtype=dtype,
                   shard_bytes=shard_bytes)

    return _stage_and_publish(Path(out_dir), write, replace=replace)


def write_checkpoint(spec: VariantSpec, out_dir: str | Path, parts: TrainedParts, *, layout: Layout = "diffusers",
                     dtype: torch.dtype = torch.float32, shard_bytes: int = 2 * 1024 * 1024) -> Path:
    """Publish trained ``parts`` of ``spec`` in ``layout`` at ``out_dir`` (replacing it), the same files as
    :func:`make_checkpoint` writes, so ``load_pipeline(out_dir)`` loads them. Returns the folder.

    ``spec.vae`` must equal the VAE's own configuration (its latent statistics included): the
    checkpoint is read back through the VAE's config.json.
    """
    if layout not in ("reference", "diffusers"):
        raise ValueError(f"layout: must be 'reference' or 'diffusers', got {layout!r}")
    if len(parts.experts) != len(_expert_dirs(spec, layout)):
        raise ValueError(f"experts: {spec.name} needs {len(_expert_dirs(spec, layout))} expert state dicts, "
                         f"got {len(parts.experts)}")

    def write(root: Path) -> None:
        _write_all(spec, root, layout=layout, experts=[iter(state.items()) for state in parts.experts],
                   vae=parts.vae, text_encoder=parts.text_encoder, corpus=parts.tokenizer_corpus, dtype=dtype,
                   shard_bytes=shard_bytes)

    return _stage_and_publish(Path(out_dir), write, replace=True)
