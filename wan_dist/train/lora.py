"""LoRA training on a frozen base model (``wan-dist train-lora``): the experts' rectified-flow objective of
:class:`~wan_dist.train.stages.ExpertStage`, with only low-rank factors trained.

Each trained expert gets a :class:`LoraAdapter`: the factors of every targeted Linear (``down`` [r, in], Kaiming
uniform as PEFT initialises them; ``up`` [out, r], zeros, so step 0 is the base model), installed as the
expert's runtime branches (models.lora_apply, the same code that applies a LoRA file when rendering), so the
forward pass trained here is the one a render runs. The expert is not a submodule of the adapter: its weights
are neither trained, nor held by the optimizer, nor written into checkpoints (a checkpoint is the factors).

The run (:func:`train_lora`): the data (train/lora_data.py) encoded once by the base model's VAE and text
encoder into ``<out>/data`` (I2V bases also get each clip's first-frame condition), the steps on Ray Train
(DDP of the factors over ``num_workers``; each worker holds the whole base) or in-process with ``local``,
resumable from ``<out>/ray/lora``; then one LoRA file per trained expert in the diffusers / PEFT format
(``transformer.<diffusers name>.lora_A.weight`` / ``lora_B.weight``, ``lora_alpha`` and ``r`` in the
``lora_adapter_metadata`` header), named as Wan2.2-Lightning names its files, which ``loras`` reads back.
With ``fsdp`` the frozen experts are sharded over the workers by FSDP2 (``parallel.fsdp.shard_expert``, the
inference sharding); each worker still reads the whole base from the checkpoint before sharding it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wan_dist.config.train_lora import LoraTrainConfig, lora_train_config_from_dict
from wan_dist.models.lora import LoraWeights, LowRank
from wan_dist.models.lora_apply import set_runtime_loras
from wan_dist.train.stages import ExpertStage, StepDraws

__all__ = ["LoraAdapter", "LoraStage", "train_lora", "LoraTrainResult", "lora_file_tensors", "LORA_FILES"]

LORA_FILES = ("high_noise_model.safetensors", "low_noise_model.safetensors")  # expert 0, expert 1
_MODULE = ("lora_high", "lora_low")  # the adapters' names in a checkpoint
_SEP = "__"  # module names with "." -> ParameterDict keys (which may not hold ".")


def _targets(expert: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    compiled = [re.compile(p) for p in patterns]
    names = [name for name, module in expert.named_modules()
             if isinstance(module, nn.Linear) and any(p.fullmatch(name) for p in compiled)]
    if not names:
        raise ValueError(f"targets: no Linear module of the model matches {list(patterns)}")
    return names


class LoraAdapter(nn.Module):
    """Trainable LoRA factors of one frozen expert (module docstring); calling it runs the expert with them."""

    def __init__(self, expert: nn.Module, *, targets: tuple[str, ...], rank: int, alpha: float, seed: int):
        super().__init__()
        object.__setattr__(self, "expert", expert)  # not a submodule: not trained, not checkpointed
        self.scale = alpha / rank
        modules = dict(expert.named_modules())
        generator = torch.Generator().manual_seed(seed)
        self.down, self.up = nn.ParameterDict(), nn.ParameterDict()
        for name in _targets(expert, targets):
            layer = modules[name]
            down = torch.empty(rank, layer.in_features)
            bound = 1 / math.sqrt(layer.in_features)  # kaiming_uniform_(a=sqrt(5)), PEFT's lora_A init
            down.uniform_(-bound, bound, generator=generator)
            key = name.replace(".", _SEP)
            self.down[key] = nn.Parameter(down.to(layer.weight.device))
            self.up[key] = nn.Parameter(torch.zeros(layer.out_features, rank, device=layer.weight.device))
        self.install()

    def install(self) -> None:
        """Make the factors the expert's runtime branches (they keep these very tensors, so gradients reach them)."""
        pairs = {key.replace(_SEP, "."): LowRank(down=self.down[key], up=self.up[key], scale=self.scale)
                 for key in self.down}
        set_runtime_loras(self.expert, [(LoraWeights(low_rank=pairs, full={}, format="diffusers"), 1.0)])

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # the branches hold the factors themselves in float32; in a base of another dtype they hold casts, made
        # again here so that every step sees the factors the optimizer just updated
        if next(iter(self.down.values())).dtype != self.expert.blocks[0].self_attn.q.weight.dtype:
            self.install()
        return self.expert(latents, timestep, context)


class LoraStage(ExpertStage):
    """:class:`ExpertStage`'s batches and loss on the base experts, for the LoRAs of the experts ``trained``."""

    name = "lora"

    def __init__(self, spec, *, tensors, config: LoraTrainConfig, experts: tuple[nn.Module, ...]):
        super().__init__(spec, tensors=tensors, optim=config.optim, flow_config=config.flow, seed=config.seed,
                         experts=experts)
        self.trained = _trained_experts(config.experts, len(experts))
        for expert in experts:
            expert.requires_grad_(False).train()
            expert.gradient_checkpointing = config.gradient_checkpointing
        self.modules = {_MODULE[e]: LoraAdapter(experts[e], targets=config.targets, rank=config.rank,
                                                alpha=config.alpha, seed=config.seed + 1000 * e)
                        for e in self.trained}

    def loss(self, modules: dict[str, nn.Module], draws: StepDraws) -> tuple[torch.Tensor, dict[str, float]]:
        from wan_dist.train import flow

        total, metrics = 0.0, {}
        for e in self.trained:
            batch = self.batch(e, draws)
            device = next(self.modules[_MODULE[e]].parameters()).device  # the expert's (the data stays on the CPU)
            prediction = modules[_MODULE[e]](batch.model_input.to(device), batch.timestep.to(device),
                                             batch.context.to(device))
            weights = None if batch.weights is None else batch.weights.to(device)
            loss = flow.flow_loss(prediction, batch.target.to(device), weights)
            total = total + loss
            metrics[f"loss_expert{e}"] = float(loss.detach())
        return total / len(self.trained), metrics


def _trained_experts(which: str, count: int) -> tuple[int, ...]:
    from wan_dist.engine.loras import expert_indices

    return expert_indices(which, count, field="experts")


def lora_file_tensors(state: dict[str, torch.Tensor], *, rank: int, alpha: float
                      ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """An adapter's state dict (``down.<key>``, ``up.<key>``) as a diffusers / PEFT LoRA file: (tensors, header)."""
    from wan_dist.models.keymap import dit_key_to_diffusers

    tensors, modules = {}, []
    for key, down in state.items():
        if not key.startswith("down."):
            continue
        name = key.removeprefix("down.").replace(_SEP, ".")
        target = dit_key_to_diffusers(f"{name}.weight").removesuffix(".weight")
        tensors[f"transformer.{target}.lora_A.weight"] = down.detach().float().contiguous()
        tensors[f"transformer.{target}.lora_B.weight"] = state[f"up.{key.removeprefix('down.')}"].detach().float(
        ).contiguous()
        modules.append(target)
    config = {"transformer.r": rank, "transformer.lora_alpha": alpha,
              "transformer.target_modules": sorted(modules)}
    return tensors, {"lora_adapter_metadata": json.dumps(config), "format": "pt"}


@dataclass(frozen=True, kw_only=True)
class LoraTrainResult:
    out: Path
    files: dict[str, Path]  # "high" / "low" -> the LoRA file of that expert
    summary: dict[str, Any]


def _claim(out: Path, config: LoraTrainConfig) -> None:
    """``<out>/lora_run.json`` records what the checkpoints' shapes depend on; a folder of another run is refused."""
    mine = {"base": config.base, "experts": config.experts, "rank": config.rank, "targets": list(config.targets)}
    marker = out / "lora_run.json"
    if marker.exists():
        theirs = json.loads(marker.read_text())
        differ = sorted(k for k in mine if theirs.get(k) != mine[k])
        if differ:
            raise ValueError(f"out: {out} holds a LoRA run with other {', '.join(differ)} "
                             f"({', '.join(f'{k}={theirs.get(k)!r}' for k in differ)}); give this run its own folder")
        return
    marker.write_text(json.dumps(mine))


def _load_args(config: LoraTrainConfig, *, frozen: bool) -> tuple[str, torch.dtype]:
    """(device, dtype) of the base pipeline: float32 on the CPU to encode the data; ``frozen`` (the experts a
    worker trains on) in ``config.dtype`` on this worker's GPU with ``use_gpu``."""
    if not frozen:
        return "cpu", torch.float32
    return "cuda" if config.use_gpu and torch.cuda.is_available() else "cpu", getattr(torch, config.dtype)


def _base(config: LoraTrainConfig, *, frozen: bool = False):
    """The base pipeline, loaded as :func:`_load_args` says."""
    from wan_dist.engine.loading import load_pipeline

    device, dtype = _load_args(config, frozen=frozen)
    return load_pipeline(config.base, dtype=dtype, device=device)


def _encode_data(config: LoraTrainConfig, out: Path, pipe) -> str:
    """The data's latents, text embeddings (and I2V conditions) in the terms of ``pipe`` (the base as
    ``_base(config)`` loads it), cached: the file's path."""
    from wan_dist.train.data import cached_latents, latents_path
    from wan_dist.train.lora_data import read_lora_items

    d, spec = config.data, pipe.spec.defaults
    items = read_lora_items(d, height=d.height or spec.height, width=d.width or spec.width,
                            num_frames=d.num_frames or spec.num_frames)
    digest = hashlib.sha256(items.clips.tobytes())
    digest.update(json.dumps(items.captions).encode())
    key = {"base": pipe.info.checkpoint_id, "data": digest.hexdigest()}
    image_condition = pipe.spec.task == "i2v"
    cached_latents(out, key=key, vae=pipe.vae, text_encoder=pipe.text_encoder, clips=items.clips,
                   captions=items.captions, image_condition=image_condition)
    return str(latents_path(out, key, image_condition=image_condition))


def _steps(config: LoraTrainConfig, session, data_path: str, resume: Path | None, pipe=None) -> dict:
    """The run's steps on this worker; ``pipe``: the frozen base when the caller has it loaded already (else
    loaded here)."""
    from safetensors.torch import load_file

    from wan_dist.train.loop import run_steps

    torch.set_num_threads(config.threads_per_worker)
    pipe = _base(config, frozen=True) if pipe is None else pipe
    if config.fsdp and session.world_size > 1:
        _shard_experts(pipe)
    stage = LoraStage(pipe.spec, tensors=load_file(data_path), config=config, experts=tuple(pipe.experts))
    out = Path(config.out)
    result = run_steps(stage, session, optim=config.optim, seed=config.seed, resume=resume,
                       plot=out / "lora_loss.png", fixed_batch=config.data.fixed_batch, progress=config.progress)
    if session.rank == 0:
        history = result["history"]
        summary = {"step": result["step"], "start_step": result["start_step"], "steps_per_s": result["steps_per_s"],
                   "first_loss": history[0][1] if history else None, "last_loss": history[-1][1] if history else None,
                   "trainable_parameters": sum(p.numel() for m in stage.modules.values() for p in m.parameters()),
                   "base_bytes_per_worker": _held_bytes(pipe.experts)}
        (out / "lora_summary.json").write_text(json.dumps(summary, indent=2))
    return result


def _held_bytes(experts) -> int:
    """Bytes of the experts' weights this worker holds (its shards, when they are sharded)."""
    from wan_dist.parallel.fsdp import local_shard_bytes

    return sum(local_shard_bytes(expert) for expert in experts)


def _shard_experts(pipe) -> None:
    """FSDP2 over every worker (parallel.fsdp.shard_expert), on a process group of its own: the DDP of the
    factors all-reduces on the default group in the same backward passes, and the two never interleave there."""
    import torch.distributed as dist

    from wan_dist.config import ParallelConfig
    from wan_dist.parallel.fsdp import shard_expert
    from wan_dist.parallel.mesh import ParallelMesh

    mesh = ParallelMesh.build(ParallelConfig(data=dist.get_world_size()))
    for expert in pipe.experts:
        shard_expert(expert, mesh, over="data")


def _ray_worker(payload: dict) -> None:
    import ray.train

    from wan_dist.train.loop import RaySession

    config = lora_train_config_from_dict(payload["config"])
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a restarted worker group: Ray's own checkpoint of this run
        with checkpoint.as_directory() as folder:
            _steps(config, RaySession(), payload["data"], Path(folder))
        return
    _steps(config, RaySession(), payload["data"], Path(payload["resume"]) if payload["resume"] else None)


def _write_files(config: LoraTrainConfig, out: Path) -> dict[str, Path]:
    from safetensors.torch import save_file

    from wan_dist.train.loop import STATE_FILE, latest_checkpoint, trained_modules

    state = trained_modules(torch.load(latest_checkpoint(out / "ray" / "lora") / STATE_FILE, map_location="cpu",
                                       weights_only=False))
    folder = out / "lora"
    folder.mkdir(exist_ok=True)
    files = {}
    for e, word in enumerate(("high", "low")):
        if _MODULE[e] not in state:
            continue
        tensors, header = lora_file_tensors(state[_MODULE[e]], rank=config.rank, alpha=config.alpha)
        path = folder / LORA_FILES[e]
        staging = path.with_suffix(".tmp")
        save_file(tensors, str(staging), metadata=header)
        staging.rename(path)  # a reader never sees half a file
        files[word] = path
    return files


def train_lora(config: LoraTrainConfig, *, local: bool = False) -> LoraTrainResult:
    """Train the LoRA ``config`` describes into ``config.out`` (resuming what is there); see the module docstring.
    Without ``local`` Ray must be initialised."""
    config = replace(config, out=os.path.abspath(config.out))
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _claim(out, config)
    pipe = _base(config)
    data_path = _encode_data(config, out, pipe)
    # a local run trains on this very pipeline when the frozen base loads the same way (float32 on the CPU);
    # otherwise (another dtype or a GPU, or on Ray's workers) it is dropped here, not held through the steps
    frozen = pipe if local and _load_args(config, frozen=True) == _load_args(config, frozen=False) else None
    del pipe
    from wan_dist.train.run import run_workers

    run_workers("lora", config, {"config": asdict(config), "data": data_path}, local=local,
                run_local=lambda session, resume: _steps(config, session, data_path, resume, pipe=frozen),
                ray_worker=_ray_worker)
    summary = json.loads((out / "lora_summary.json").read_text())
    files = _write_files(config, out)
    summary["files"] = {word: {"path": str(path), "bytes": path.stat().st_size} for word, path in files.items()}
    (out / "lora_summary.json").write_text(json.dumps(summary, indent=2))
    return LoraTrainResult(out=out, files=files, summary=summary)
