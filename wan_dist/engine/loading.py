"""``load_pipeline``, the public way to a pipeline: one device in this process, or with ``parallel={...}`` of more
than one rank the pipeline's ``generate`` on a render group.

:class:`GroupPipeline` has ``WanPipeline.generate``'s signature and results (``prompt_embeds``, ``latents``,
``output_type="latent"`` included): each call is sent once to every rank of a :class:`RenderGroup`, which runs
the layout's SPMD generate (Ulysses, ring, CFG, FSDP, data, disaggregated stages) and returns the result rank's
WanOutput. It runs on the Ray the caller is connected to, else on ``RAY_ADDRESS``, else on a local Ray it starts
(and stops on :meth:`close`). Close it, or use it as a context manager: its rank processes hold the weights.
"""

from __future__ import annotations

import os

from wan_dist.config import ParallelConfig
from wan_dist.engine.rank_calls import GenerateCall

__all__ = ["GroupPipeline", "load_pipeline"]


def load_pipeline(source, *, device="cpu", dtype=None, parallel=None, cache_dir=None, layout: str = "diffusers",
                  cfg_mode: str = "sequential", expert_loader=None):
    """Load a pipeline from a preset name, a local folder, an fsspec URL or a Hugging Face repo id.

    ``dtype``: a torch dtype (default bfloat16). ``layout`` chooses the layout an embedded preset (``tiny``) is
    written in on first use. ``cfg_mode``: "sequential" (cond then uncond: two forwards, half the activation
    memory; default) or "batched" (both in one forward). ``parallel``: None or degrees all 1 for a
    ``WanPipeline`` on one device here; with more ranks a :class:`GroupPipeline` (same ``generate``) on a Ray
    render group of that layout (``ParallelConfig`` or its fields as a dict): close it when done.
    """
    import torch

    from wan_dist.config import from_dict
    from wan_dist.engine.pipeline import load_local_pipeline
    from wan_dist.engine.sources import resolve_source

    dtype = torch.bfloat16 if dtype is None else dtype
    config = parallel if parallel is None or isinstance(parallel, ParallelConfig) else from_dict(ParallelConfig,
                                                                                                 parallel)
    if config is None or config.world_size == 1:
        return load_local_pipeline(source, device=device, dtype=dtype, cache_dir=cache_dir, layout=layout,
                                   cfg_mode=cfg_mode, expert_loader=expert_loader)
    if expert_loader is not None or cfg_mode != "sequential":
        raise ValueError("parallel: expert_loader and cfg_mode are chosen by the group's layout")
    folder = resolve_source(source, cache_dir=cache_dir, layout=layout)
    return GroupPipeline(folder, config, device=str(device), dtype=str(dtype).replace("torch.", ""), layout=layout)


class GroupPipeline:
    def __init__(self, source, parallel: ParallelConfig, *, device: str, dtype: str, layout: str = "diffusers",
                 cpus_per_rank: float | None = None):
        import ray

        from wan_dist.engine.group import GroupConfig, RenderGroup

        self._adapters: dict[str, tuple[str, str]] = {}  # LoRA adapter name -> (path, transformer)
        self._weights: dict[str, float] = {}  # the active adapters' weights
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            address = os.environ.get("RAY_ADDRESS") or "local"
            ray.init(address=address, **({"num_cpus": max(parallel.world_size, os.cpu_count() or 1),
                                           "include_dashboard": False} if address == "local" else {}))
        # on a CPU-only local Ray, ranks share the cores: each takes a slice so the gang always fits
        cpus = cpus_per_rank if cpus_per_rank is not None else (1.0 if device == "cuda" else 0.5)
        config = GroupConfig(source=str(source), parallel=parallel, use_gpus=device == "cuda", cpus_per_rank=cpus,
                             dtype=dtype, layout=layout)
        try:
            self.group = RenderGroup(config).start()
        except BaseException:
            self._stop_ray()
            raise

    def generate(self, *args, **kwargs):
        """``WanPipeline.generate(*args, **kwargs)`` on the group (see that method for the arguments). The active
        adapters of :meth:`load_lora_weights` go to every rank before the call's own ``loras``."""
        if kwargs.get("callback") is not None:
            raise ValueError("callback: not available on a render group (its steps run in the rank processes); "
                             "use a step control with RenderGroup.submit")
        kwargs.pop("callback", None)
        adapters = [{"path": path, "scale": self._weights.get(name, 1.0), "transformer": transformer}
                    for name, (path, transformer) in self._adapters.items() if name in self._weights]
        if adapters or kwargs.get("loras"):
            kwargs["loras"] = adapters + list(kwargs.get("loras") or ())
        return self.group.wait(self.group.submit(GenerateCall(args, kwargs)))

    # -- LoRAs, diffusers' spelling: every rank reads the file itself (a path or URL it can reach) ------------------
    def load_lora_weights(self, path: str, adapter_name: str | None = None, load_into_transformer_2: bool = False,
                          *, weight_name: str | None = None) -> str:
        """As ``WanPipeline.load_lora_weights``, for a file path or URL (a state dict cannot travel to the ranks
        here: write it to a file). The LoRA is checked by the ranks at the next call."""
        if not isinstance(path, str):
            raise ValueError("path_or_state_dict: a render group takes a LoRA file path or URL, not a state dict")
        if weight_name is not None:
            from wan_dist.storage.objects import join

            path = join(path, weight_name)
        name = adapter_name or f"default_{len(self._adapters)}"
        expert = "low" if load_into_transformer_2 else "high"
        if name in self._adapters and self._adapters[name][0] != path:
            raise ValueError(f"adapter_name: {name!r} is already a different LoRA; choose another name")
        if name in self._adapters and self._adapters[name][1] != expert:
            expert = "both"
        self._adapters[name] = (path, expert)
        self._weights[name] = 1.0
        return name

    def set_adapters(self, adapter_names, adapter_weights=None) -> None:
        """As ``WanPipeline.set_adapters`` (a number per adapter; one weight for both of its experts)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        weights = adapter_weights if isinstance(adapter_weights, (list, tuple)) else [adapter_weights] * len(names)
        unknown = [n for n in names if n not in self._adapters]
        if unknown or len(weights) != len(names):
            raise ValueError(f"adapter_names: not loaded: {unknown}" if unknown else
                             f"adapter_weights: {len(weights)} weights for {len(names)} adapters")
        self._weights = {name: 1.0 if weight is None else float(weight) for name, weight in zip(names, weights)}

    def unload_lora_weights(self) -> None:
        self._adapters.clear()
        self._weights.clear()

    def __call__(self, *args, **kwargs):
        return self.generate(*args, **kwargs)

    def close(self) -> None:
        """Stop the rank processes (and the local Ray this pipeline started)."""
        if self.group is not None:
            self.group.shutdown()
            self.group = None
        self._stop_ray()

    def _stop_ray(self) -> None:
        if self._owns_ray:
            import ray

            ray.shutdown()
            self._owns_ray = False

    def __enter__(self) -> "GroupPipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
