"""Wan 2.1 / 2.2 video VAE: diffusers' AutoencoderKLWan plus the reference's latent conventions.

The network is borrowed (DESIGN.md): diffusers' ``AutoencoderKLWan`` implements both the Wan 2.1
VAE (z16, stride 4x8x8) and the Wan 2.2 VAE (residual, 2x2 patchified input, z48, stride 4x16x16).
:class:`WanVAE` adds what the reference ``Wan2_1_VAE`` / ``Wan2_2_VAE`` wrappers do around it:

- encode returns the posterior mean (``mu``; diffusers' ``retrieve_latents(..., "argmax")``),
  normalised per channel as ``(mu - mean) * (1 / std)``;
- decode denormalises as ``z / (1 / std) + mean`` (bit-for-bit what diffusers' Wan pipelines
  compute) and clamps the video to [-1, 1];
- everything runs in the model's dtype, fp32 as the reference (``build_vae`` returns fp32).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from wan_dist.config import VAEConfig
from wan_dist.models.presets import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, WAN22_LATENTS_MEAN, WAN22_LATENTS_STD

__all__ = ["vae_config_to_diffusers", "vae_config_from_diffusers", "build_vae", "WanVAE"]

# diffusers' AutoencoderKLWan defaults, used where a config.json leaves a field out.
_DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "base_dim": 96, "decoder_base_dim": None, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
    "temperal_downsample": [False, True, True], "is_residual": False, "patch_size": None,
}


def vae_config_to_diffusers(config: VAEConfig) -> dict[str, Any]:
    """``AutoencoderKLWan`` constructor kwargs (= its config.json fields) for ``config``.

    Wan 2.2 (diffusers' converted Wan2.2 VAE): in/out channels 12 (3 x 2 x 2 patch), patch_size 2,
    scale_factor_spatial 16; Wan 2.1: 3 channels, no patch, 8.
    """
    patch = config.patch_size or 1
    return {
        "base_dim": config.base_dim,
        "decoder_base_dim": config.decoder_base_dim,
        "z_dim": config.z_dim,
        "dim_mult": list(config.dim_mult),
        "num_res_blocks": config.num_res_blocks,
        "attn_scales": [],
        "temperal_downsample": [bool(t) for t in config.temporal_downsample],
        "dropout": 0.0,
        "latents_mean": [float(v) for v in config.latents_mean],
        "latents_std": [float(v) for v in config.latents_std],
        "is_residual": bool(config.is_residual),
        "in_channels": 3 * patch * patch,
        "out_channels": 3 * patch * patch,
        "patch_size": config.patch_size,
        "scale_factor_temporal": config.temporal_stride,
        "scale_factor_spatial": config.spatial_stride,
    }


def vae_config_from_diffusers(cfg_json: dict[str, Any] | str | os.PathLike) -> VAEConfig:
    """VAEConfig from a diffusers ``vae/config.json`` (a dict, the file, or its folder).

    Version "2.2" iff ``z_dim == 48`` or ``is_residual``; missing fields take diffusers' defaults.
    """
    if not isinstance(cfg_json, dict):
        path = Path(cfg_json)
        if path.is_dir():
            path = path / "config.json"
        cfg_json = json.loads(path.read_text(encoding="utf-8"))
    cfg = {**_DIFFUSERS_DEFAULTS, **{k: v for k, v in cfg_json.items() if not k.startswith("_")}}
    if cfg.get("attn_scales"):
        raise ValueError(f"vae_config_from_diffusers: attn_scales={cfg['attn_scales']!r} is not supported "
                         "(the Wan VAEs use none)")
    z_dim = int(cfg["z_dim"])
    is_residual = bool(cfg["is_residual"])
    if "latents_mean" not in cfg_json or "latents_std" not in cfg_json:
        mean, std = ((WAN22_LATENTS_MEAN, WAN22_LATENTS_STD) if z_dim == 48
                     else (WAN21_LATENTS_MEAN, WAN21_LATENTS_STD))
        cfg.setdefault("latents_mean", list(mean))
        cfg.setdefault("latents_std", list(std))
    return VAEConfig(
        version="2.2" if (z_dim == 48 or is_residual) else "2.1",
        z_dim=z_dim,
        base_dim=int(cfg["base_dim"]),
        decoder_base_dim=None if cfg["decoder_base_dim"] is None else int(cfg["decoder_base_dim"]),
        dim_mult=tuple(int(m) for m in cfg["dim_mult"]),
        num_res_blocks=int(cfg["num_res_blocks"]),
        temporal_downsample=tuple(bool(t) for t in cfg["temperal_downsample"]),
        patch_size=None if cfg["patch_size"] is None else int(cfg["patch_size"]),
        is_residual=is_residual,
        latents_mean=tuple(float(v) for v in cfg["latents_mean"]),
        latents_std=tuple(float(v) for v in cfg["latents_std"]),
    )


def build_vae(config: VAEConfig):
    """A randomly initialised ``diffusers.AutoencoderKLWan`` (fp32, eval, no grad)."""
    from diffusers import AutoencoderKLWan

    model = AutoencoderKLWan(**vae_config_to_diffusers(config))
    if next(model.parameters()).dtype != torch.float32:  # a non-default torch dtype was set
        model = model.float()
    return model.eval().requires_grad_(False)


class WanVAE:
    """Video <-> normalised latents with the reference conventions. Single device.

    Shapes: video [B, 3, F, H, W] in [-1, 1] with F = 4k+1 and H, W multiples of
    ``spatial_stride``; latents [B, z_dim, (F-1)/4+1, H/s, W/s].
    """

    def __init__(self, model, config: VAEConfig) -> None:
        if int(model.config.z_dim) != config.z_dim:
            raise ValueError(f"WanVAE: model z_dim {model.config.z_dim} != config.z_dim {config.z_dim}")
        self.model = model
        self.config = config
        # fp32 constants, exactly as diffusers builds them: std is kept as 1/std ("scale[1]").
        self._mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(1, config.z_dim, 1, 1, 1)
        self._inv_std = 1.0 / torch.tensor(config.latents_std, dtype=torch.float32).view(1, config.z_dim, 1, 1, 1)

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    @property
    def spatial_stride(self) -> int:
        return self.config.spatial_stride

    @property
    def temporal_stride(self) -> int:
        return self.config.temporal_stride

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def check_num_frames(self, num_frames: int) -> None:
        """Raise ValueError unless ``num_frames`` = 4k+1 (k >= 0) for a temporal stride of 4."""
        stride = self.temporal_stride
        if int(num_frames) != num_frames or num_frames < 1 or (int(num_frames) - 1) % stride != 0:
            raise ValueError(f"num_frames must be {stride}k+1 (1, {stride + 1}, {2 * stride + 1}, ..., 81), "
                             f"got {num_frames}")

    def latent_frames(self, num_frames: int) -> int:
        self.check_num_frames(num_frames)
        return (int(num_frames) - 1) // self.temporal_stride + 1

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(z_dim, latent frames, latent height, latent width) of one clip."""
        self._check_size(height, width)
        stride = self.spatial_stride
        return (self.z_dim, self.latent_frames(num_frames), height // stride, width // stride)

    def _check_size(self, height: int, width: int) -> None:
        stride = self.spatial_stride
        if height % stride or width % stride or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of the VAE's spatial stride "
                             f"{stride}, got height={height}, width={width}")

    def normalize(self, mu: torch.Tensor) -> torch.Tensor:
        """[B, z, f, h, w] raw posterior mean -> normalised latents: (mu - mean) * (1/std)."""
        mean = self._mean.to(mu.device, mu.dtype)
        inv_std = self._inv_std.to(mu.device, mu.dtype)
        return (mu - mean) * inv_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`, computed as diffusers' Wan pipelines: z / (1/std) + mean."""
        mean = self._mean.to(z.device, z.dtype)
        inv_std = self._inv_std.to(z.device, z.dtype)
        return z / inv_std + mean

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video [B, 3, F, H, W] in [-1, 1] -> normalised latents [B, z, f, h, w] (float32).

        Deterministic: the posterior mean, never a sample (reference and diffusers' I2V path).
        """
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be [B, 3, F, H, W], got shape {tuple(video.shape)}")
        self.check_num_frames(video.shape[2])
        self._check_size(video.shape[3], video.shape[4])
        x = video.to(self.device, self.dtype)
        mu = self.model.encode(x).latent_dist.mode()
        return self.normalize(mu.float())

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, z, f, h, w] -> video [B, 3, 4(f-1)+1, H, W] float32 in [-1, 1]."""
        if latents.ndim != 5 or latents.shape[1] != self.z_dim:
            raise ValueError(f"latents must be [B, {self.z_dim}, f, h, w], got shape {tuple(latents.shape)}")
        z = self.denormalize(latents.to(self.device, self.dtype))
        video = self.model.decode(z, return_dict=False)[0]
        return video.float().clamp_(-1.0, 1.0)


def video_to_frames(video: torch.Tensor):
    """Decoded video [B, 3, F, H, W] in [-1, 1] -> uint8 numpy frames [B, F, H, W, 3] (diffusers' rounding)."""
    import numpy as np

    frames = ((video.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return np.ascontiguousarray(frames.permute(0, 2, 3, 4, 1).cpu().numpy())
