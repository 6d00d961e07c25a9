"""Training data: clips of the procedural world with captions, cached once per run folder.

Everything is a pure function of the data config, so every worker (and a resumed run) sees the same
clips: clip i of a split comes from ``sample_scene(seed * 1_000_003 + i, split=...)`` and its caption
from ``caption(scene, rng=same seed)``. Files live under ``<out>/data/`` keyed by a digest of what made
them, so a changed config never reads a stale cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from wan_dist.config.train import TrainDataConfig
from wan_dist.models.presets import VariantSpec

__all__ = ["clip_size", "make_clips", "folder_digest", "clips_path", "cached_clips", "latents_path", "to_video",
           "tokenizer_corpus", "cached_latents", "batch_indices"]

_SEED_STRIDE = 1_000_003  # clip seeds of different data seeds never overlap for < 1e6 clips


def clip_size(data: TrainDataConfig, spec: VariantSpec) -> tuple[int, int, int]:
    """(height, width, num_frames) of the training clips: the config's, else the preset's defaults."""
    return (data.height or spec.defaults.height, data.width or spec.defaults.width,
            data.num_frames or spec.defaults.num_frames)


def make_clips(data: TrainDataConfig, spec: VariantSpec, *, split: str, count: int) -> tuple[np.ndarray, list[str]]:
    """``count`` clips of ``split`` ("train" | "heldout"): uint8 [N, F, H, W, 3] and their captions."""
    from wan_dist.world import caption, render_clip, sample_scene

    height, width, frames = clip_size(data, spec)
    clips, captions = [], []
    for i in range(count):
        seed = data.seed * _SEED_STRIDE + i + (_SEED_STRIDE // 2 if split == "heldout" else 0)
        scene = sample_scene(seed, split=split)
        clips.append(render_clip(scene, height=height, width=width, num_frames=frames))
        captions.append(caption(scene, rng=seed))
    return np.stack(clips) if clips else np.zeros((0, frames, height, width, 3), np.uint8), captions


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def folder_digest(folder: Path) -> str:
    """A digest of the files under ``folder`` (names and bytes): a cache made with another tokenizer misses."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    return _digest({str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files})


def clips_path(out: Path, data: TrainDataConfig, spec: VariantSpec, *, split: str) -> Path:
    """Where :func:`cached_clips` keeps a split: ``<out>/data/clips-<split>-<digest>.npz``."""
    count = data.num_clips if split == "train" else data.heldout_clips
    key = _digest({"split": split, "count": count, "seed": data.seed, "size": clip_size(data, spec)})
    return out / "data" / f"clips-{split}-{key}.npz"


def cached_clips(out: Path, data: TrainDataConfig, spec: VariantSpec, *, split: str) -> tuple[np.ndarray, list[str]]:
    """:func:`make_clips` of the whole split, rendered once into :func:`clips_path`."""
    count = data.num_clips if split == "train" else data.heldout_clips
    path = clips_path(out, data, spec, split=split)
    if path.exists():
        with np.load(path) as archive:
            return archive["clips"], json.loads(str(archive["captions"]))
    clips, captions = make_clips(data, spec, split=split, count=count)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp.npz")
    np.savez(staging, clips=clips, captions=np.array(json.dumps(captions)))
    staging.rename(path)  # atomic: a reader never sees half a file
    return clips, captions


def to_video(clips: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [B, F, H, W, 3] -> float32 [B, 3, F, H, W] in [-1, 1] (the VAE's input)."""
    x = torch.as_tensor(clips).permute(0, 4, 1, 2, 3).float()
    return x / 127.5 - 1.0


def tokenizer_corpus(captions: list[str]) -> tuple[str, ...]:
    """Lines the toy tokenizer learns from: every caption word once, then the captions themselves."""
    from wan_dist.world import caption_words

    return (" ".join(sorted(caption_words())), *sorted(set(captions)))


def batch_indices(count: int, batch: int, *, generator: torch.Generator | None) -> torch.Tensor:
    """``batch`` clip indices: drawn with ``generator``, or the first ``batch`` (a fixed batch) when None."""
    if generator is None:
        return torch.arange(batch) % count
    return torch.randint(count, (batch,), generator=generator)


# Names the I2V condition in a cache key: a file of a run without it (t2v) has another digest.
_IMAGE_CONDITION = "i2v: vae.encode([first frame, black frames])"


def latents_path(out: Path, key: dict, *, image_condition: bool = False) -> Path:
    """Where :func:`cached_latents` keeps the tensors made by ``key``; ``image_condition`` files (I2V runs)
    are keyed apart, so an I2V run never reads a T2V run's file, nor the other way round."""
    if image_condition:
        key = {**key, "image_condition": _IMAGE_CONDITION}
    return out / "data" / f"latents-{_digest(key)}.safetensors"


def _image_latents(vae, clips: np.ndarray) -> torch.Tensor:
    """The I2V condition of each clip: its own first frame through the pipeline's encoder of an image."""
    from wan_dist.engine.images import i2v_image_latents

    first_frames = to_video(clips[:, :1])[:, :, 0]  # [B, 3, H, W] in [-1, 1], as prepare_image gives a uint8 image
    return i2v_image_latents(vae, first_frames, clips.shape[1])


@torch.no_grad()
def cached_latents(out: Path, *, key: dict, vae, text_encoder, clips: np.ndarray, captions: list[str],
                   chunk: int = 4, image_condition: bool = False) -> dict[str, torch.Tensor]:
    """Normalised VAE latents and text embeddings of the clips, computed once into a safetensors file.

    Returns ``latents`` fp32 [N, z, f, h, w], ``context`` fp32 [N, L, text_dim] (zero past each caption's
    length, L the longest caption's tokens) and ``empty`` fp32 [1, L, text_dim] (the empty prompt, for
    classifier-free-guidance dropout). ``key`` names what made them (VAE weights, encoder seed, data).
    ``image_condition`` (I2V): also ``image_latents`` fp32 [N, z, f, h, w], each clip's first frame followed
    by black frames, encoded (engine.images.i2v_image_latents, what the pipeline encodes for an image).
    """
    from safetensors.torch import load_file, save_file

    path = latents_path(out, key, image_condition=image_condition)
    if path.exists():
        tensors = load_file(str(path))
        if image_condition and "image_latents" not in tensors:
            raise ValueError(f"{path}: an I2V latent cache without image_latents; delete it to rebuild")
        return tensors
    latents = torch.cat([vae.encode(to_video(clips[i:i + chunk])) for i in range(0, len(clips), chunk)])
    context = text_encoder.encode(list(captions), dtype=torch.float32)
    empty = text_encoder.encode([""], dtype=torch.float32)
    length = int(context.abs().sum(-1).gt(0).sum(1).max())  # rows past every caption are all zero
    tensors = {"latents": latents.contiguous(), "context": context[:, :length].contiguous(),
               "empty": empty[:, :length].contiguous()}
    if image_condition:
        tensors["image_latents"] = torch.cat([_image_latents(vae, clips[i:i + chunk])
                                              for i in range(0, len(clips), chunk)]).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    save_file(tensors, str(staging))
    staging.rename(path)
    return tensors
