"""The two trainable stages: the VAE (reconstruction) and the DiT experts (rectified flow; T2V, or I2V with
the first-frame condition the pipeline builds).

A stage owns its modules and computes one step's loss on one worker; the loop (wan_dist/train/loop.py)
owns optimisation, checkpoints and progress. Every random draw of a step comes from a generator seeded
by (run seed, step, rank, purpose), so a resumed run continues with exactly the draws it would have made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wan_dist.config.train import FlowConfig, OptimConfig
from wan_dist.models.presets import VariantSpec
from wan_dist.train import flow
from wan_dist.train.data import batch_indices, to_video

__all__ = ["StepDraws", "VAEStage", "ExpertStage", "ExpertBatch", "CaptionTokens", "init_dit", "init_vae"]


@dataclass(frozen=True, kw_only=True)
class StepDraws:
    """Where a step's randomness comes from. ``fixed``: the same draws every step (smoke tests)."""

    seed: int
    step: int
    rank: int
    fixed: bool = False

    def generator(self, purpose: int) -> torch.Generator:
        step = 0 if self.fixed else self.step
        return torch.Generator().manual_seed(hash((self.seed, step, self.rank, purpose)) & (2**63 - 1))


def init_dit(spec: VariantSpec, *, seed: int):
    """A trainable WanDiT with the checkpoint writer's deterministic init; the output layer starts at 0
    so the first predictions are 0 rather than large random velocities."""
    from wan_dist.models.dit import WanDiT
    from wan_dist.models.make_checkpoint import random_dit_tensors

    model = WanDiT(spec.dit)
    state = dict(random_dit_tensors(spec, seed=seed))
    state["head.head.weight"].zero_()
    state["head.head.bias"].zero_()
    model.load_state_dict(state)
    model.timestep_precision = "float32"  # the diffusers layout we publish embeds timesteps in fp32
    return model.train().requires_grad_(True)


def init_vae(spec: VariantSpec, *, seed: int):
    from wan_dist.models.vae import build_vae

    torch.manual_seed(seed)
    return build_vae(spec.vae).train().requires_grad_(True)


ENCODER_PARTS = ("encoder", "quant_conv")  # AutoencoderKLWan's modules that make the latents


class VAEStage:
    """Reconstruction: L1 of the decoded latents plus a small KL term (Wan's VAE objective without its
    perceptual and adversarial terms, which need pretrained networks we cannot download).

    The decoder sees the posterior mean (a deterministic autoencoder; the pipeline encodes conditions and
    training clips to the mean as well) unless ``sample_posterior``: at initialisation the posterior's std is
    about 1 against means of about 0.7, and a toy run decoding samples learned nothing in 700 steps (L1 flat at
    0.25, worse than each clip's mean colour) while decoding the mean the loss falls from the first steps.
    """

    name = "vae"
    kl_weight = 1e-6

    def __init__(self, spec: VariantSpec, *, clips: np.ndarray, optim: OptimConfig, seed: int,
                 frames: int | None = None, crop: int | None = None, sample_posterior: bool = False,
                 decoder_only: bool = False, init: Path | None = None):
        self.clips = torch.from_numpy(np.ascontiguousarray(clips))
        if frames is not None and frames > self.clips.shape[1]:
            raise ValueError(f"vae_frames: {frames} is more than the clips' {self.clips.shape[1]} frames")
        stride = spec.vae.spatial_stride
        if crop is not None and (crop % stride or crop > min(self.clips.shape[2:4])):
            raise ValueError(f"vae_crop: {crop} must be a multiple of the VAE's stride {stride} and fit the clips' "
                             f"{self.clips.shape[2]}x{self.clips.shape[3]} frames")
        self.optim, self.frames, self.crop, self.sample_posterior = optim, frames, crop, sample_posterior
        self.modules = {"vae": init_vae(spec, seed=seed + 100)}
        if init is not None:  # a trained VAE's weights (a resumed run then loads its own checkpoint over them)
            from diffusers import AutoencoderKLWan

            trained = AutoencoderKLWan.from_pretrained(str(init), torch_dtype=torch.float32)
            self.modules["vae"].load_state_dict(trained.state_dict())
        self.decoder_only = decoder_only
        if decoder_only:  # the encoder's latents, their statistics and experts trained on them stay valid
            for part in ENCODER_PARTS:
                getattr(self.modules["vae"], part).requires_grad_(False)

    def clips_for(self, draws: StepDraws, generator: torch.Generator) -> torch.Tensor:
        """The step's uint8 clips [B, F, H, W, 3]: drawn clips, each cut to a random window of ``frames``
        consecutive frames and a random ``crop`` x ``crop`` square (a fixed batch: the first clips, their first
        window, their top-left square)."""
        fixed = None if draws.fixed else generator
        clips = self.clips[batch_indices(len(self.clips), self.optim.batch_size, generator=fixed)]
        frames = self.frames or clips.shape[1]
        crop = self.crop or min(clips.shape[2:4])
        limits = (clips.shape[1] - frames + 1, clips.shape[2] - crop + 1, clips.shape[3] - crop + 1)
        starts = (torch.zeros(len(clips), 3, dtype=torch.long) if fixed is None else
                  torch.stack([torch.randint(limit, (len(clips),), generator=fixed) for limit in limits], dim=1))
        return torch.stack([clip[t:t + frames, y:y + crop, x:x + crop]
                            for clip, (t, y, x) in zip(clips, starts.tolist())])

    def loss(self, modules: dict[str, torch.nn.Module], draws: StepDraws) -> tuple[torch.Tensor, dict[str, float]]:
        generator = draws.generator(0)
        video = to_video(self.clips_for(draws, generator))
        vae = modules["vae"]
        with torch.set_grad_enabled(not self.decoder_only):
            posterior = vae.encode(video).latent_dist
        z = posterior.mean
        if self.sample_posterior:
            z = z + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(z).sample
        l1 = (recon - video).abs().mean()
        kl = posterior.kl().mean() / video[0].numel()
        return l1 + self.kl_weight * kl, {"l1": float(l1.detach()), "kl": float(kl.detach())}


@dataclass(frozen=True, kw_only=True)
class CaptionTokens:
    """What a stage that trains the text encoder encodes every step (train_text): the encoder to train, each
    clip's caption tokens and the empty prompt's (for CFG dropout), as :meth:`TextEncoder.tokenize` gives them."""

    encoder: torch.nn.Module  # transformers UMT5EncoderModel
    input_ids: torch.Tensor  # int64 [N, text_len]
    mask: torch.Tensor  # int64 [N, text_len]
    empty_ids: torch.Tensor  # int64 [1, text_len]
    empty_mask: torch.Tensor


@dataclass(frozen=True, kw_only=True)
class ExpertBatch:
    """One expert's inputs and target for a step.

    ``model_input`` [B, in_channels, f, h, w]: the noised latents x_t (16 channels) through the task's
    conditioning, the one the denoising loop uses (I2V: then mask (4) and image latents (16), 36 in all).
    """

    index: torch.Tensor  # [B] clip ids
    model_input: torch.Tensor
    timestep: torch.Tensor  # [B] fp32
    context: torch.Tensor  # [B, text_len, text_dim]: zero past each caption, as the pipeline gives the DiT
    target: torch.Tensor  # [B, 16, f, h, w] velocity noise - x0
    weights: torch.Tensor | None  # [B] loss weights (None: 1)


class ExpertStage:
    """Both experts of a two-expert model, each on its own timestep range (see wan_dist/train/flow.py).

    One optimizer step updates both: their parameters are disjoint, so summing their losses gives each
    expert exactly its own gradient. Data: normalised latents and text embeddings (data.cached_latents),
    and for an I2V model each clip's ``image_latents`` (its first frame encoded as the pipeline encodes an
    image), which the model sees through :class:`~wan_dist.sampling.denoise.ImageToVideo`, as when sampling.
    """

    name = "experts"

    def __init__(self, spec: VariantSpec, *, tensors: dict[str, torch.Tensor], optim: OptimConfig,
                 flow_config: FlowConfig, seed: int, experts: tuple[torch.nn.Module, ...] | None = None,
                 text: CaptionTokens | None = None):
        if spec.task not in ("t2v", "i2v"):
            raise ValueError(f"preset: {spec.name} is a {spec.task} model; the trainer knows t2v and i2v")
        if spec.task == "i2v" and "image_latents" not in tensors:
            raise ValueError(f"preset: {spec.name} (i2v) trains on image_latents, which the latent cache lacks")
        self.spec, self.optim, self.flow = spec, optim, flow_config
        self.latents, self.context, self.empty = tensors["latents"], tensors["context"], tensors["empty"]
        self.image_latents = tensors["image_latents"] if spec.task == "i2v" else None
        shift = flow_config.shift or spec.defaults.shift
        self.sigmas, self.timesteps = flow.training_grid(shift)
        boundary = spec.defaults.boundary_ratio if spec.two_experts else None
        count = 2 if spec.two_experts else 1
        self.ids = [flow.expert_ids(self.timesteps, boundary_ratio=boundary, expert=e) for e in range(count)]
        self.weights = flow.bell_weights(self.timesteps) if flow_config.loss_weighting == "bell" else None
        # ``experts``: given modules (a LoRA trains on a base model's) instead of freshly initialised ones
        self.modules = {f"expert{e}": experts[e] if experts else init_dit(spec, seed=seed + e) for e in range(count)}
        # train_text: captions are encoded every step by the encoder being trained, not read from the cache
        self.text = text
        if text is not None:
            self.modules["text_encoder"] = text.encoder.train().requires_grad_(True)

    def _captions(self, index: torch.Tensor, generator: torch.Generator, encoder) -> torch.Tensor:
        """The clips' caption contexts [B, L, C], the empty prompt's where CFG dropout drops a caption: from the
        latent cache, or with train_text encoded by ``encoder`` (with grad)."""
        drop = torch.rand(len(index), generator=generator) < self.flow.cfg_dropout
        if self.text is None:
            context = self.context[index]
            return torch.where(drop[:, None, None], self.empty.expand_as(context), context)
        return self._encoded_captions(index, drop, encoder)

    def _padded(self, context: torch.Tensor) -> torch.Tensor:
        """[B, L, C] -> [B, text_len, C] with zero rows: the cache keeps the longest caption's L rows, and the
        DiT attends every row it is given, so without this a caption would meet ~L - length padding rows in
        training and text_len - length when rendered (the pipeline pads to text_len, as Wan's model does).
        The DiT compresses the padding into one slot (models/text_context.py), so the rows cost nothing."""
        return torch.nn.functional.pad(context, (0, 0, 0, self.spec.dit.text_len - context.shape[1]))

    def conditioning(self, index: torch.Tensor):
        """The denoising loop's conditioning of clips ``index``: TextToVideo, or ImageToVideo of their
        first frames."""
        from wan_dist.sampling.denoise import ImageToVideo, TextToVideo

        if self.image_latents is None:
            return TextToVideo()
        return ImageToVideo.from_image_latents(self.image_latents[index],
                                               temporal_stride=self.spec.vae.temporal_stride)

    def _encoded_captions(self, index: torch.Tensor, drop: torch.Tensor, encoder) -> torch.Tensor:
        """train_text: the clips' captions (the empty prompt where ``drop``) through ``encoder``, with grad."""
        from wan_dist.models.text_encoder import embed_tokens

        text, drop = self.text, drop[:, None]
        ids = torch.where(drop, text.empty_ids, text.input_ids[index])
        mask = torch.where(drop, text.empty_mask, text.mask[index])
        # only the batch's longest caption's tokens: the rest are masked padding, whose rows come out 0 anyway
        # (the encoder runs on text_len = 512 tokens otherwise, six times the DiT's 80)
        keep = int(mask.sum(dim=1).max())
        return embed_tokens(encoder, ids[:, :keep], mask[:, :keep], dtype=torch.float32)

    def batch(self, expert: int, draws: StepDraws, *, text_encoder: torch.nn.Module | None = None) -> ExpertBatch:
        """Expert ``expert``'s clips, timesteps, noise and inputs of the step ``draws`` names (with train_text,
        ``text_encoder``, the module being trained, encodes the captions)."""
        generator = draws.generator(expert)
        index = batch_indices(len(self.latents), self.optim.batch_size, generator=None if draws.fixed else generator)
        x0 = self.latents[index]
        encoder = None if self.text is None else text_encoder or self.modules["text_encoder"]
        context = self._padded(self._captions(index, generator, encoder))
        picked, sigma, timestep = flow.sample_timesteps(self.ids[expert], self.sigmas, self.timesteps, len(index),
                                                        generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        x_t, target = flow.noised(x0, noise, sigma)
        return ExpertBatch(index=index, model_input=self.conditioning(index).model_input(x_t), timestep=timestep,
                           context=context, target=target,
                           weights=None if self.weights is None else self.weights[picked])

    def loss(self, modules: dict[str, torch.nn.Module], draws: StepDraws) -> tuple[torch.Tensor, dict[str, float]]:
        total, metrics = 0.0, {}
        for expert in range(len(self.ids)):
            batch = self.batch(expert, draws, text_encoder=modules.get("text_encoder"))
            prediction = modules[f"expert{expert}"](batch.model_input, batch.timestep, batch.context)
            loss = flow.flow_loss(prediction, batch.target, batch.weights)
            total = total + loss
            metrics[f"loss_expert{expert}"] = float(loss.detach())
        return total / len(self.ids), metrics


def load_stage_state(path: Path) -> dict[str, Any]:
    return torch.load(path / "state.pt", map_location="cpu", weights_only=False)
