"""Input images for I2V and TI2V: accepted types, resizing as the reference does, [-1, 1] tensors, and the
VAE encoding of an I2V condition (shared with the trainer, wan_dist/train)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wan_dist.sampling.conditioning import i2v_condition_video

__all__ = ["image_size", "prepare_image", "i2v_image_latents", "load_image"]


def _to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, Path)):
        return Image.open(image).convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image: a numpy image must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
        return Image.fromarray(image)
    raise ValueError(f"image: unsupported type {type(image).__name__} (PIL image, path, uint8 array or tensor)")


def image_size(image) -> tuple[int, int] | None:
    """(width, height) of ``image``, None when there is none."""
    if image is None:
        return None
    if isinstance(image, torch.Tensor):
        return int(image.shape[-1]), int(image.shape[-2])
    return _to_pil(image).size


def _resize_cover_crop(pil: Image.Image, width: int, height: int) -> Image.Image:
    scale = max(width / pil.width, height / pil.height)
    resized = pil.resize((round(pil.width * scale), round(pil.height * scale)), Image.Resampling.LANCZOS)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def prepare_image(image, *, width: int, height: int, mode: str, batch: int) -> torch.Tensor:
    """[batch, 3, height, width] float32 in [-1, 1].

    A tensor ([3, H, W] or [B, 3, H, W], values in [-1, 1]) at the target size is used as is.
    Otherwise I2V resizes bicubic without crop (the reference), TI2V resizes LANCZOS to cover and
    center-crops.
    """
    if image is None:
        raise ValueError("image: required for this variant")
    if isinstance(image, torch.Tensor):
        tensor = image.float()
        if tensor.ndim == 3:
            tensor = tensor.unsqueeze(0)
        if tensor.ndim != 4 or tensor.shape[1] != 3:
            raise ValueError(f"image: a tensor must be [3, H, W] or [B, 3, H, W], got {list(image.shape)}")
        if tuple(tensor.shape[-2:]) != (height, width):
            raise ValueError(f"image: tensor is {tensor.shape[-1]}x{tensor.shape[-2]}, the render is {width}x{height}")
    else:
        pil = _to_pil(image)
        if pil.size != (width, height):
            pil = (pil.resize((width, height), Image.Resampling.BICUBIC) if mode == "i2v"
                   else _resize_cover_crop(pil, width, height))
        array = np.asarray(pil, dtype=np.float32) / 127.5 - 1.0
        tensor = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
    if tensor.shape[0] == 1 and batch > 1:
        tensor = tensor.expand(batch, -1, -1, -1)
    if tensor.shape[0] != batch:
        raise ValueError(f"image: {tensor.shape[0]} images for a batch of {batch}")
    return tensor.contiguous()


def i2v_image_latents(vae, first_frames: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The I2V condition latents: ``vae.encode`` (a WanVAE: posterior mean, normalised) of each first frame
    followed by black frames (:func:`~wan_dist.sampling.conditioning.i2v_condition_video`).

    ``first_frames``: [B, 3, H, W] in [-1, 1] (:func:`prepare_image`'s output, or a clip's frame 0 when
    training). Returns float32 [B, z, (num_frames - 1) / 4 + 1, H / s, W / s] on the VAE's device.
    """
    return vae.encode(i2v_condition_video(first_frames, num_frames).to(vae.device))


def load_image(uri: str | None, policy=None) -> Image.Image | None:
    """The image at ``uri`` (a path or URL) read under fetch ``policy`` (storage.fetch.read_source), RGB; None for none."""
    if uri is None:
        return None
    import io

    from wan_dist.storage.fetch import read_source

    return Image.open(io.BytesIO(read_source(uri, policy=policy, field="image"))).convert("RGB")
