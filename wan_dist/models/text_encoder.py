"""UMT5 text encoder: transformers' UMT5EncoderModel plus the reference prompt handling.

The network is borrowed (see docs in DESIGN.md, "own what we parallelize, borrow the rest"):
transformers' ``UMT5EncoderModel`` is the same network as the reference ``umt5_xxl`` encoder
(gated GELU-tanh FFN, a relative-position bias per layer, no 1/sqrt(d) scaling, fp32 RMS
variance). What this module adds is the reference's prompt path:

1. ``clean_prompt``: ftfy, ``html.unescape`` twice, whitespace collapsed (Wan-Video/Wan2.2
   ``wan/modules/tokenizers.py``: ``basic_clean`` + ``whitespace_clean``, ``clean='whitespace'``);
2. tokenise to ``text_len`` (pad to max length, truncate, ``</s>`` appended by the tokenizer);
3. encode with the attention mask, keep each row's true length (incl. ``</s>``), zero the rest.
"""

from __future__ import annotations

import html

import torch

from wan_dist.config import TextEncoderConfig

try:  # the reference and diffusers use `regex`; its \s is Unicode White_Space
    import regex as _re
except ImportError:  # pragma: no cover - regex ships with transformers
    import re as _re

__all__ = ["clean_prompt", "build_text_encoder", "umt5_config", "TextEncoder", "embed_tokens"]


def clean_prompt(text: str) -> str:
    """ftfy.fix_text, html.unescape twice, strip; then collapse whitespace runs to one space."""
    import ftfy

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _re.sub(r"\s+", " ", text).strip()


def umt5_config(config: TextEncoderConfig):
    """transformers ``UMT5Config`` for ``config`` (gated GELU-tanh, as UMT5-XXL)."""
    from transformers import UMT5Config

    umt5 = UMT5Config(
        vocab_size=config.vocab_size, d_model=config.d_model, d_ff=config.d_ff, d_kv=config.d_kv,
        num_heads=config.num_heads, num_layers=config.num_layers, num_decoder_layers=config.num_layers,
        relative_attention_num_buckets=config.relative_attention_num_buckets,
        relative_attention_max_distance=config.relative_attention_max_distance,
        feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0, use_cache=False,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    # UMT5Config derives the activation from feed_forward_proj; the reference uses GELU-tanh.
    if umt5.dense_act_fn != "gelu_new" or not umt5.is_gated_act:
        raise ValueError(f"umt5_config: expected gated gelu_new, transformers gave {umt5.dense_act_fn!r}")
    return umt5


def build_text_encoder(config: TextEncoderConfig):
    """A randomly initialised ``transformers.UMT5EncoderModel`` in eval mode (fp32)."""
    from transformers import UMT5EncoderModel

    model = UMT5EncoderModel(umt5_config(config))
    return model.eval().requires_grad_(False)


class TextEncoder:
    """Prompts -> text embeddings [B, text_len, d_model], rows past each true length exactly 0."""

    def __init__(self, model, tokenizer, *, text_len: int = 512) -> None:
        if text_len <= 0:
            raise ValueError(f"TextEncoder: text_len must be positive, got {text_len}")
        self.model = model
        self.tokenizer = tokenizer
        self.text_len = int(text_len)

    @property
    def dim(self) -> int:
        return int(self.model.config.d_model)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cleaned prompts -> (input_ids, attention_mask), each [B, text_len] int64."""
        if isinstance(prompts, str):
            raise TypeError("TextEncoder: prompts must be a list of strings, got a single str")
        cleaned = [clean_prompt(p) for p in prompts]
        tokens = self.tokenizer(cleaned, padding="max_length", max_length=self.text_len, truncation=True,
                                add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        return tokens.input_ids, tokens.attention_mask

    @torch.no_grad()
    def encode(self, prompts: list[str], *, device=None, dtype=None) -> torch.Tensor:
        """Embeddings [B, text_len, d_model] on ``device`` in ``dtype`` (default: the model's).

        Row b holds the encoder output for its first ``seq_len[b]`` tokens (incl. ``</s>``) and
        zeros after, as the reference trims and the DiT's cross-attention expects.
        """
        input_ids, mask = self.tokenize(prompts)
        return embed_tokens(self.model, input_ids, mask, device=device, dtype=dtype)


def embed_tokens(model, input_ids: torch.Tensor, mask: torch.Tensor, *, device=None, dtype=None) -> torch.Tensor:
    """``model``'s embeddings of tokenised prompts (:meth:`TextEncoder.tokenize`): [B, T, d_model], rows past
    each true length exactly 0. Differentiable (a trainer of the text encoder calls it with grad enabled)."""
    model_device = next(model.parameters()).device
    hidden = model(input_ids=input_ids.to(model_device), attention_mask=mask.to(model_device)).last_hidden_state
    hidden = hidden.to(device=device or model_device, dtype=dtype or hidden.dtype)
    seq_lens = mask.gt(0).sum(dim=1).to(hidden.device)
    positions = torch.arange(input_ids.shape[1], device=hidden.device)
    keep = positions[None, :] < seq_lens[:, None]  # [B, T]
    # torch.where (not multiplication) so rows past the true length are exactly 0, even if inf/nan.
    return torch.where(keep[..., None], hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device))
