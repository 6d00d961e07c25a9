"""Applying parsed LoRAs (:class:`~wan_dist.models.lora.LoraWeights`) to a WanDiT, in one of two ways.

- Merged (:func:`merge_loras`): ``W += sum_i s_i * delta_i`` in the weights themselves, computed in fp32 and
  cast back; nothing is added per step. The touched parameters' original values are kept (on the CPU by
  default) and :func:`unmerge_loras` copies them back: the base weights come back bit-exactly.
- Runtime (:func:`set_runtime_loras`): each touched Linear gets a branch, ``y = x W^T + b + sum_i c_i (x A_i^T)
  B_i^T (+ full deltas)``, computed in the weight's dtype by a forward hook (and by the model's fp32 linears,
  ``dit._linear_fp32``); the weights are never written, so switching LoRAs per request costs only moving the
  factors. Only Linear weights and biases can take a branch: a LoRA with a (non-zero) delta of a norm, the
  modulation or the patch embedding raises, naming them; merge such a LoRA instead.

Both work on an FSDP2-sharded model without any collective: a parameter sharded on dim 0 (a DTensor) is merged
row block by row block, each rank adding ``up[rows] @ down`` to the rows it holds (``torch.chunk``'s split, as
FSDP2 shards); a runtime branch is replicated on every rank (the factors are small) and runs inside the
gathered layer's forward. Sequence, CFG and data parallel layouts call the same modules, so both modes hold
there unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wan_dist.models.lora import LoraError, LoraWeights

__all__ = ["LoraBranch", "merge_loras", "unmerge_loras", "set_runtime_loras", "clear_runtime_loras",
           "runtime_branches", "local_rows"]

Active = Sequence[tuple[LoraWeights, float]]  # (LoRA, strength) pairs


class LoraBranch:
    """What the LoRAs add to one Linear's output: ``low_rank`` (down [r, in], up [out, r], coefficient),
    ``weight`` (full delta [out, in], coefficient) and ``bias`` [out] terms, in the layer's dtype and device."""

    def __init__(self) -> None:
        self.low_rank: list[tuple[torch.Tensor, torch.Tensor, float]] = []
        self.weight: list[tuple[torch.Tensor, float]] = []
        self.bias: torch.Tensor | None = None
        self.handle = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """y [..., out] (the layer's output for x [..., in]) plus the branch, in y's dtype."""
        extra = None
        for down, up, coefficient in self.low_rank:
            term = F.linear(F.linear(x.to(down.dtype), down), up) * coefficient
            extra = term if extra is None else extra + term
        for delta, coefficient in self.weight:
            term = F.linear(x.to(delta.dtype), delta) * coefficient
            extra = term if extra is None else extra + term
        if self.bias is not None:
            extra = self.bias if extra is None else extra + self.bias
        return y + extra.to(y.dtype)


def _hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return module.lora_branch(args[0], output)


def runtime_branches(model: nn.Module) -> dict[str, LoraBranch]:
    """The runtime branches set on ``model``'s Linear layers, by module name."""
    return {name: module.lora_branch for name, module in model.named_modules()
            if getattr(module, "lora_branch", None) is not None}


def clear_runtime_loras(model: nn.Module) -> None:
    """Remove every runtime branch from ``model``."""
    for module in model.modules():
        branch = getattr(module, "lora_branch", None)
        if branch is not None:
            branch.handle.remove()
            module.lora_branch = None


def _branch_for(branches: dict, modules: dict, name: str, leaf: str = "weight"
                ) -> tuple[LoraBranch, nn.Linear] | None:
    """The branch of Linear ``name`` (made on first use), or None when ``name.leaf`` is not a Linear's."""
    module = modules.get(name)
    if not isinstance(module, nn.Linear) or leaf not in ("weight", "bias"):
        return None
    return branches.setdefault(name, LoraBranch()), module


def set_runtime_loras(model: nn.Module, loras: Active) -> None:
    """Make ``loras`` (LoRA, strength) ``model``'s runtime branches, replacing any it had (module docstring)."""
    modules = dict(model.named_modules())
    branches: dict[str, LoraBranch] = {}
    loose: list[str] = []
    for weights, strength in loras:
        for name, pair in weights.low_rank.items():
            found = _branch_for(branches, modules, name)
            if found is None:
                loose.append(f"{name}.weight")
            else:
                branch, layer = found
                dtype, device = layer.weight.dtype, layer.weight.device
                branch.low_rank.append((pair.down.to(device, dtype), pair.up.to(device, dtype),
                                        strength * pair.scale))
        for param, delta in weights.full.items():
            name, _, leaf = param.rpartition(".")
            found = _branch_for(branches, modules, name, leaf)
            if found is None:
                loose.append(param)
                continue
            branch, layer = found
            delta = delta.to(layer.weight.device, layer.weight.dtype)
            if leaf == "weight":
                branch.weight.append((delta, strength))
            else:
                branch.bias = delta * strength if branch.bias is None else branch.bias + delta * strength
    if loose:
        raise LoraError("the runtime branch adds to linear layers only; these are not (use merged mode)", loose)
    clear_runtime_loras(model)
    for name, branch in branches.items():
        layer = modules[name]
        layer.lora_branch = branch
        branch.handle = layer.register_forward_hook(_hook)


def local_rows(param: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(the tensor this process holds of ``param``, first row, end row) along dim 0.

    A plain parameter: all of it. An FSDP2 parameter (a DTensor sharded on dim 0, duck-typed: this layer does
    not import torch.distributed): its local shard, rows as ``torch.chunk`` splits them over the mesh."""
    if not hasattr(param, "to_local"):
        return param.data, 0, param.shape[0] if param.ndim else 1
    placements, mesh = param.placements, param.device_mesh
    if len(placements) != 1 or not placements[0].is_shard() or placements[0].dim != 0:
        raise ValueError(f"merge_loras: a parameter placed {placements} (only dim-0 shards are merged)")
    rows, size, position = param.shape[0], mesh.size(), mesh.get_local_rank()
    chunk = math.ceil(rows / size) if rows else 0
    start = min(position * chunk, rows)
    local = param.to_local()
    end = min(start + chunk, rows)
    if local.shape[0] != end - start:
        raise ValueError(f"merge_loras: a shard of {local.shape[0]} rows at position {position} of {size}, "
                         f"expected rows {start}:{end}")
    return local, start, end


def _delta(name: str, loras: Active, start: int, end: int, like: torch.Tensor) -> torch.Tensor:
    """fp32 rows ``start:end`` of the summed delta of parameter ``name``."""
    device = like.device
    delta = torch.zeros(like.shape, dtype=torch.float32, device=device)
    module = name.removesuffix(".weight")
    for weights, strength in loras:
        pair = weights.low_rank.get(module) if name.endswith(".weight") else None
        if pair is not None:
            up = pair.up[start:end].to(device, torch.float32)
            delta += (up @ pair.down.to(device, torch.float32)) * (strength * pair.scale)
        full = weights.full.get(name)
        if full is not None:
            rows = full[start:end] if full.ndim else full
            delta += rows.to(device, torch.float32).reshape(like.shape) * strength
    return delta


@torch.no_grad()
def merge_loras(model: nn.Module, loras: Active, *, keep: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Add ``loras`` to ``model``'s weights in place; returns the touched parameters' original (local) values,
    kept on ``keep``, for :func:`unmerge_loras`."""
    params = dict(model.named_parameters())
    touched = sorted(set().union(*(weights.parameters() for weights, _ in loras))) if loras else []
    missing = [name for name in touched if name not in params]
    if missing:
        raise LoraError("parameters this model does not have", missing)
    backups: dict[str, torch.Tensor] = {}
    for name in touched:
        local, start, end = local_rows(params[name])
        if local.numel() == 0:
            continue
        backups[name] = local.detach().to(keep, copy=True)
        local.copy_((local.float() + _delta(name, loras, start, end, local)).to(local.dtype))
    return backups


@torch.no_grad()
def unmerge_loras(model: nn.Module, backups: dict[str, torch.Tensor]) -> None:
    """Copy back what :func:`merge_loras` kept: the weights are the base model's again, bit for bit."""
    params = dict(model.named_parameters())
    for name, saved in backups.items():
        local, _, _ = local_rows(params[name])
        local.copy_(saved.to(local.device))
