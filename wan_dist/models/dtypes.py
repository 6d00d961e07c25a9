"""The weight dtype a config names (``model.dtype``, ``GroupConfig.dtype``, ``make-checkpoint dtype=``).

Here rather than in the CLI because the engine resolves the same names on every rank of a render group,
and the engine must not import the CLI (imports only point down: ../DESIGN.md).
"""

from __future__ import annotations

import torch

__all__ = ["DTYPE_NAMES", "torch_dtype"]

DTYPE_NAMES = ("float32", "bfloat16", "float16")


def torch_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """``name`` (one of ``auto`` and :data:`DTYPE_NAMES`) as a torch dtype; ``auto`` is float32 on CPU (bf16
    matmuls are slow there) and bfloat16 on accelerators."""
    if name == "auto":
        name = "float32" if str(device).startswith("cpu") else "bfloat16"
    if name not in DTYPE_NAMES:
        raise ValueError(f"model.dtype: must be one of auto, {', '.join(DTYPE_NAMES)}; got {name!r}")
    return getattr(torch, name)
