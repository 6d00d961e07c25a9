"""Model presets: the three released Wan 2.2 variants and small ones for tests and CPU benchmarks.

Numbers for the released variants come from ../shared/WAN22_FACTS.md. The small presets keep the
structure of a variant (experts, channels, VAE family, conditioning) at sizes that run on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from wan_dist.config import DiTConfig, TextEncoderConfig, VAEConfig

__all__ = ["VariantSpec", "SamplingDefaults", "PRESETS", "RELEASED", "get_preset", "public_model_name",
           "variant_name", "DEFAULT_NEGATIVE_PROMPT", "WAN21_LATENTS_MEAN",
           "WAN21_LATENTS_STD", "WAN22_LATENTS_MEAN", "WAN22_LATENTS_STD"]

# Per-channel latent statistics published with the Wan 2.1 VAE (z=16) and the Wan 2.2 VAE (z=48).
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)
WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)

Task = Literal["t2v", "i2v", "ti2v"]

# The reference's default negative prompt (Wan 2.2 shared config).
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


@dataclass(frozen=True, kw_only=True)
class SamplingDefaults:
    """Reference defaults of a variant. ``guidance_scale`` is the high-noise expert's."""

    num_inference_steps: int
    shift: float
    guidance_scale: float
    guidance_scale_2: float | None  # low-noise expert; None for one-expert variants
    boundary_ratio: float | None  # None: one expert serves every step
    num_frames: int
    fps: int
    width: int
    height: int
    sizes: tuple[tuple[int, int], ...]  # allowed (width, height)
    diffusers_shift: float  # flow_shift that diffusers' converted repos ship
    # What a request without a negative prompt gets: classifier-free guidance steers away from it.
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT


@dataclass(frozen=True, kw_only=True)
class VariantSpec:
    name: str
    task: Task
    dit: DiTConfig
    vae: VAEConfig
    text_encoder: TextEncoderConfig
    two_experts: bool
    defaults: SamplingDefaults

    @property
    def latent_channels(self) -> int:
        return self.vae.z_dim


_A14B_SIZES = ((1280, 720), (720, 1280), (832, 480), (480, 832))
_5B_SIZES = ((1280, 704), (704, 1280))

_VAE21 = VAEConfig(version="2.1", z_dim=16, base_dim=96, latents_mean=WAN21_LATENTS_MEAN,
                   latents_std=WAN21_LATENTS_STD)
_VAE22 = VAEConfig(version="2.2", z_dim=48, base_dim=160, decoder_base_dim=256, patch_size=2,
                   is_residual=True, latents_mean=WAN22_LATENTS_MEAN, latents_std=WAN22_LATENTS_STD)
_UMT5_XXL = TextEncoderConfig()


def _a14b_dit(in_channels: int) -> DiTConfig:
    return DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_channels=in_channels,
                     out_channels=16)


T2V_A14B = VariantSpec(
    name="t2v-a14b", task="t2v", dit=_a14b_dit(16), vae=_VAE21, text_encoder=_UMT5_XXL, two_experts=True,
    defaults=SamplingDefaults(num_inference_steps=40, shift=12.0, guidance_scale=4.0, guidance_scale_2=3.0,
                              boundary_ratio=0.875, num_frames=81, fps=16, width=1280, height=720,
                              sizes=_A14B_SIZES, diffusers_shift=3.0),
)
I2V_A14B = VariantSpec(
    name="i2v-a14b", task="i2v", dit=_a14b_dit(36), vae=_VAE21, text_encoder=_UMT5_XXL, two_experts=True,
    defaults=SamplingDefaults(num_inference_steps=40, shift=5.0, guidance_scale=3.5, guidance_scale_2=3.5,
                              boundary_ratio=0.900, num_frames=81, fps=16, width=1280, height=720,
                              sizes=_A14B_SIZES, diffusers_shift=5.0),
)
TI2V_5B = VariantSpec(
    name="ti2v-5b", task="ti2v", text_encoder=_UMT5_XXL, two_experts=False, vae=_VAE22,
    dit=DiTConfig(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_channels=48, out_channels=48),
    defaults=SamplingDefaults(num_inference_steps=50, shift=5.0, guidance_scale=5.0, guidance_scale_2=None,
                              boundary_ratio=None, num_frames=121, fps=24, width=1280, height=704,
                              sizes=_5B_SIZES, diffusers_shift=5.0),
)

# Small presets: same structure, tiny sizes. The text encoder keeps 512 positions (the DiT's
# cross-attention length) but only a few dims; the tokenizer is built offline (make-checkpoint).
_TINY_TEXT = TextEncoderConfig(vocab_size=512, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2)
_TINY_VAE21 = replace(_VAE21, base_dim=8)
_TINY_VAE22 = replace(_VAE22, base_dim=8, decoder_base_dim=12)
_TINY_SIZES = ((64, 64), (96, 64), (64, 96))


def _tiny_dit(in_channels: int, out_channels: int) -> DiTConfig:
    # head_dim 16 -> RoPE split (8, 4, 4); two heads so head-parallel code has something to split.
    return DiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_channels=in_channels,
                     out_channels=out_channels, text_dim=_TINY_TEXT.d_model)


def _tiny_defaults(base: SamplingDefaults, *, fps: int, num_frames: int = 9) -> SamplingDefaults:
    return replace(base, num_inference_steps=2, num_frames=num_frames, fps=fps, width=64, height=64,
                   sizes=_TINY_SIZES)


TINY = VariantSpec(name="tiny", task="t2v", dit=_tiny_dit(16, 16), vae=_TINY_VAE21, text_encoder=_TINY_TEXT,
                   two_experts=True, defaults=_tiny_defaults(T2V_A14B.defaults, fps=16))
TINY_I2V = VariantSpec(name="tiny-i2v", task="i2v", dit=_tiny_dit(36, 16), vae=_TINY_VAE21,
                       text_encoder=_TINY_TEXT, two_experts=True, defaults=_tiny_defaults(I2V_A14B.defaults, fps=16))
TINY_TI2V = VariantSpec(name="tiny-ti2v", task="ti2v", dit=_tiny_dit(48, 48), vae=_TINY_VAE22,
                        text_encoder=_TINY_TEXT, two_experts=False,
                        defaults=_tiny_defaults(TI2V_5B.defaults, fps=24))
# `small`: large enough that a CPU step is dominated by matmuls and attention, not Python overhead.
SMALL = VariantSpec(
    name="small", task="t2v", vae=_TINY_VAE21,
    text_encoder=replace(_TINY_TEXT, d_model=256, d_ff=512, d_kv=32, num_heads=8),
    dit=DiTConfig(dim=384, ffn_dim=1024, num_heads=6, num_layers=6, in_channels=16, out_channels=16,
                  text_dim=256),
    two_experts=True,
    defaults=replace(T2V_A14B.defaults, num_inference_steps=4, num_frames=17, width=256, height=256,
                     sizes=((256, 256), (320, 192), (192, 320))),
)

# `toy`: the model wan_dist.train learns from the procedural world (wan_dist/world) on 2 CPU cores.
# 64x64, 17 frames -> latents 16x5x8x8 (Wan 2.1 VAE family, 4x8x8) -> 80 tokens after the (1,2,2) patch.
# Identity latent statistics: a random VAE has none worth publishing; training writes the measured ones
# into the checkpoint's vae/config.json. The vocabulary holds the caption tokenizer (caption_words() plus
# characters) and the fallback tokenizer of random weights (~210 characters of its built-in corpus).
_TOY_TEXT = TextEncoderConfig(vocab_size=384, d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2)
_TOY_VAE21 = replace(_VAE21, base_dim=16, latents_mean=(0.0,) * 16, latents_std=(1.0,) * 16)


def _toy_dit(in_channels: int, num_layers: int = 6) -> DiTConfig:
    # head_dim 32 -> RoPE split (12, 10, 10); 6 heads of 32 keep attention cheap at 80 tokens.
    return DiTConfig(dim=192, ffn_dim=512, num_heads=6, num_layers=num_layers, in_channels=in_channels,
                     out_channels=16, text_dim=_TOY_TEXT.d_model)


def _toy_defaults(base: SamplingDefaults) -> SamplingDefaults:
    # diffusers_shift = shift: we publish the toy model in the diffusers layout and sample it as it was trained.
    # The negative prompt is the empty one, the caption the trainer's CFG dropout puts in (wan_dist/train): the
    # reference's Chinese one is outside the toy's vocabulary, an unconditional branch the experts never learned.
    return replace(base, num_inference_steps=20, num_frames=17, fps=16, width=64, height=64, sizes=((64, 64),),
                   diffusers_shift=base.shift, negative_prompt="")


TOY = VariantSpec(name="toy", task="t2v", dit=_toy_dit(16), vae=_TOY_VAE21, text_encoder=_TOY_TEXT,
                  two_experts=True, defaults=_toy_defaults(T2V_A14B.defaults))
# toy-i2v's experts have 3 layers (1.89 M parameters, toy's 3.36 M): both models' shipped weights in half
# precision must fit 30 MB together, and keeping a given first frame is the easier task.
# Guidance 1.0 (no classifier-free guidance: one DiT forward per step). Measured on the shipped weights
# (benchmarks/RESULTS.md, 50 held-out prompts): I2V-A14B's 3.5 with the reference's negative prompt washed the
# given frame out (first frame 19.7 dB, colour 74%); with the empty negative prompt (the toy's default, above)
# 3.5 keeps it (22.6 dB, 84%) as 1.0 does (22.9 dB, 86%), at twice the compute.
TOY_I2V = VariantSpec(name="toy-i2v", task="i2v", dit=_toy_dit(36, num_layers=3), vae=_TOY_VAE21, text_encoder=_TOY_TEXT,
                      two_experts=True, defaults=replace(_toy_defaults(I2V_A14B.defaults), guidance_scale=1.0,
                                                         guidance_scale_2=1.0))

PRESETS: dict[str, VariantSpec] = {
    spec.name: spec for spec in (T2V_A14B, I2V_A14B, TI2V_5B, TINY, TINY_I2V, TINY_TI2V, SMALL, TOY, TOY_I2V)
}


def get_preset(name: str) -> VariantSpec:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"model: unknown preset {name!r}; known presets: {sorted(PRESETS)}") from None


# The released models' public names (the HTTP API's, Wan's own) carry this prefix: wan2.2-t2v-a14b.
PUBLIC_PREFIX = "wan2.2-"
RELEASED = ("t2v-a14b", "i2v-a14b", "ti2v-5b")


def public_model_name(variant: str) -> str:
    """``t2v-a14b`` -> ``wan2.2-t2v-a14b``; other presets keep their own name."""
    return PUBLIC_PREFIX + variant if variant in RELEASED else variant


def variant_name(name: str) -> str:
    """The preset name behind a public name (``wan2.2-t2v-a14b`` -> ``t2v-a14b``); other names as they are."""
    return name.removeprefix(PUBLIC_PREFIX) if name.removeprefix(PUBLIC_PREFIX) in RELEASED else name
