"""Local (single-device) attention functions for the DiT.

Every function here has the signature ``fn(q, k, v, *, key_length=None) -> out`` with ``q``
[B, Lq, heads, head_dim], ``k``/``v`` [B, Lk, heads, head_dim] and ``out`` [B, Lq, heads, head_dim]
in the dtype of ``q``. ``key_length`` is the number of valid keys: keys at positions
``>= key_length`` are padding and get no attention weight. Masking a padded tail of keys is the
same as dropping it, so every backend slices ``k``/``v`` instead of building a mask.

The model's self-attention takes such a function by injection (``WanDiT.attention_fn``), so
``wan_dist.parallel`` can substitute a sequence-parallel one; cross-attention always calls
:func:`local_attention` (or :func:`biased_attention` over a compressed text context).
flash-attn and xformers are imported lazily, on first use.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from types import ModuleType

import torch
import torch.nn.functional as F

__all__ = [
    "AttentionFn",
    "ATTENTION_NAMES",
    "sdpa_attention",
    "flash3_attention",
    "flash2_attention",
    "xformers_attention",
    "auto_attention",
    "local_attention",
    "biased_attention",
    "default_attention",
    "get_attention",
    "available_backends",
]

AttentionFn = Callable[..., torch.Tensor]
ATTENTION_NAMES = ("auto", "sdpa", "flash3", "flash2", "xformers")

# backend name -> module that provides it
_BACKEND_MODULES = {"flash3": "flash_attn_interface", "flash2": "flash_attn", "xformers": "xformers.ops"}
_HALF_DTYPES = (torch.float16, torch.bfloat16)


@functools.cache
def _load(backend: str) -> ModuleType | None:
    """The backend's module, or None when it cannot be imported here (checked once)."""
    try:
        return importlib.import_module(_BACKEND_MODULES[backend])
    except Exception:  # ImportError, or a broken binary build raising something else
        return None


def available_backends() -> list[str]:
    """Names accepted by :func:`get_attention` that work in this environment."""
    return ["auto", "sdpa"] + [name for name in ("flash3", "flash2", "xformers") if _load(name) is not None]


def _trim_keys(k: torch.Tensor, v: torch.Tensor, key_length: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if key_length is None or key_length >= k.shape[1]:
        return k, v
    if key_length <= 0:
        raise ValueError(f"attention: key_length must be >= 1, got {key_length}")
    return k[:, :key_length], v[:, :key_length]


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape or q.shape[::2] != k.shape[::2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            "attention: expected q [B, Lq, heads, head_dim] and k, v [B, Lk, heads, head_dim]; "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )


def _require_cuda_half(name: str, q: torch.Tensor) -> None:
    if not q.is_cuda or q.dtype not in _HALF_DTYPES:
        raise ValueError(f"attention {name!r} needs CUDA fp16/bf16 tensors, got {q.dtype} on {q.device}")


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                   key_length: int | None = None) -> torch.Tensor:
    """torch's scaled_dot_product_attention; any device and dtype. Shapes as in the module doc."""
    _check_shapes(q, k, v)
    k, v = _trim_keys(k, v, key_length)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def flash3_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                     key_length: int | None = None) -> torch.Tensor:
    """flash-attn 3 (``flash_attn_interface``, Hopper); CUDA fp16/bf16 only."""
    module = _load("flash3")
    if module is None:
        raise ValueError("attention 'flash3': flash_attn_interface is not importable")
    _check_shapes(q, k, v)
    _require_cuda_half("flash3", q)
    k, v = _trim_keys(k, v, key_length)
    out = module.flash_attn_func(q, k, v)
    return out[0] if isinstance(out, tuple) else out  # some releases also return the logsumexp


def flash2_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                     key_length: int | None = None) -> torch.Tensor:
    """flash-attn 2 (``flash_attn``); CUDA fp16/bf16 only."""
    module = _load("flash2")
    if module is None:
        raise ValueError("attention 'flash2': flash_attn is not importable")
    _check_shapes(q, k, v)
    _require_cuda_half("flash2", q)
    k, v = _trim_keys(k, v, key_length)
    return module.flash_attn_func(q, k, v)


def xformers_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                       key_length: int | None = None) -> torch.Tensor:
    """xformers' memory_efficient_attention; CUDA fp16/bf16 only."""
    module = _load("xformers")
    if module is None:
        raise ValueError("attention 'xformers': xformers is not importable")
    _check_shapes(q, k, v)
    _require_cuda_half("xformers", q)
    k, v = _trim_keys(k, v, key_length)
    return module.memory_efficient_attention(q, k, v)


_FAST_BACKENDS = (("flash3", flash3_attention), ("flash2", flash2_attention), ("xformers", xformers_attention))


def auto_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                   key_length: int | None = None) -> torch.Tensor:
    """Per call: the first importable of flash3, flash2, xformers for CUDA fp16/bf16 tensors, else SDPA."""
    if q.is_cuda and q.dtype in _HALF_DTYPES:
        for name, fn in _FAST_BACKENDS:
            if _load(name) is not None:
                return fn(q, k, v, key_length=key_length)
    return sdpa_attention(q, k, v, key_length=key_length)


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                    key_length: int | None = None) -> torch.Tensor:
    """The attention cross-attention uses: always local, never replaced by a parallel one."""
    return auto_attention(q, k, v, key_length=key_length)


def biased_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Attention with an additive logit bias: softmax(q k^T / sqrt(head_dim) + bias) v.

    q [B, Lq, heads, head_dim], k/v [B, Lk, heads, head_dim], bias fp32 broadcastable to
    [B, heads, Lq, Lk]. Returns [B, Lq, heads, head_dim] in q's dtype. Used by cross-attention over a
    compressed text context, whose bias holds log(n) for a key standing for n identical padding keys:
    in bf16, log(n) ~ 6 would be off by up to 1.6e-2 (that key group's weight by 1.6%), so half
    inputs are computed in fp32. Lk is small there (true prompt length + 1), so this stays cheap.
    """
    _check_shapes(q, k, v)
    dtype = q.dtype
    if dtype in _HALF_DTYPES:
        q, k, v = q.float(), k.float(), v.float()
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=bias.to(device=q.device, dtype=q.dtype))
    return out.transpose(1, 2).to(dtype)


def default_attention() -> AttentionFn:
    """The self-attention function a fresh ``WanDiT`` gets: :func:`auto_attention`."""
    return auto_attention


def get_attention(name: str) -> AttentionFn:
    """Attention function by name: ``auto``, ``sdpa``, ``flash3``, ``flash2`` or ``xformers``.

    Raises ValueError for an unknown name or a backend whose library is not importable here.
    """
    if name == "auto":
        return auto_attention
    if name == "sdpa":
        return sdpa_attention
    fns = dict(_FAST_BACKENDS)
    if name not in fns:
        raise ValueError(f"attention: unknown backend {name!r}; known: {list(ATTENTION_NAMES)}")
    if _load(name) is None:
        raise ValueError(
            f"attention: backend {name!r} is not available (cannot import {_BACKEND_MODULES[name]!r}); "
            f"available: {available_backends()}"
        )
    return fns[name]
