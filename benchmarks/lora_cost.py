"""CPU benchmark of LoRAs (Hydra-sweepable; issue 16 "Measured"): what a LoRA costs a render, and a switch.

    python benchmarks/lora_cost.py -m rank=16,64

Loads ``preset`` (random weights in the real layout) and writes two random Wan-native LoRAs of rank ``rank`` on
every block linear layer (attention q, k, v, o of both attentions and both FFN layers). Renders the same request
``repeats`` times each way, interleaved: without a LoRA, with one as a runtime branch, with one merged (a request
whose LoRA is already applied: no switch). Then times the switch itself on the warm pipeline per mode (one
LoRA off, the other on: ``pipe.loras.sync``, files already cached). Appends a row to ``save_to``
(benchmarks/csv_rows.py): medians, the per-step overhead of the branch, and each switch as a share of a render.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from csv_rows import report_row

ROOT = Path(__file__).resolve().parents[1]


def _write_lora(pipe, path: str, rank: int, seed: int) -> str:
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in pipe.experts[0].named_modules():
        if name.startswith("blocks.") and isinstance(module, torch.nn.Linear):
            tensors[f"diffusion_model.{name}.lora_down.weight"] = torch.randn(rank, module.in_features,
                                                                               generator=generator) * 0.01
            tensors[f"diffusion_model.{name}.lora_up.weight"] = torch.randn(module.out_features, rank,
                                                                             generator=generator) * 0.01
            tensors[f"diffusion_model.{name}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, path)
    return path


def _switch_s(pipe, mode: str, loras: list[list[dict]], repeats: int) -> float:
    from wan_dist.engine.loras import lora_specs

    pipe.lora_mode = mode
    times = []
    for index in range(2 * repeats + 1):
        tick = time.perf_counter()
        pipe.loras.sync(lora_specs(loras[index % 2]))
        if index:  # the first puts one on from nothing
            times.append(time.perf_counter() - tick)
    pipe.loras.sync([])
    return statistics.median(times)


def _forward_s(pipe, cfg: DictConfig, loras: list[dict]) -> tuple[float, float]:
    """Median seconds of one high-noise expert forward at the render's size, without and with the runtime branch,
    interleaved ``forward_repeats`` times (short calls side by side: the machine's load moves both alike)."""
    import torch

    from wan_dist.engine.loras import lora_specs

    dit, stride = pipe.spec.dit, pipe.spec.vae.spatial_stride
    frames = (cfg.num_frames - 1) // pipe.spec.vae.temporal_stride + 1
    x = torch.randn(1, dit.in_channels, frames, cfg.height // stride, cfg.width // stride)
    t, context = torch.tensor([900.0]), torch.randn(1, 32, dit.text_dim)
    pipe.lora_mode = "runtime"
    times: dict[bool, list[float]] = {False: [], True: []}
    with torch.no_grad():
        for index in range(2 * cfg.forward_repeats + 2):
            branch = bool(index % 2)
            pipe.loras.sync(lora_specs(loras if branch else []))
            tick = time.perf_counter()
            pipe.experts[0](x, t, context)
            if index >= 2:  # the first pair warms up
                times[branch].append(time.perf_counter() - tick)
    pipe.loras.sync([])
    return statistics.median(times[False]), statistics.median(times[True])


def _run(cfg: DictConfig) -> dict:
    import torch

    from wan_dist import load_pipeline

    torch.set_num_threads(cfg.threads)
    pipe = load_pipeline(cfg.preset, dtype=torch.float32)
    folder = tempfile.mkdtemp(prefix="lora-bench-")
    paths = [_write_lora(pipe, os.path.join(folder, f"lora{i}.safetensors"), cfg.rank, i) for i in range(2)]
    loras = [[{"path": path, "transformer": "both"}] for path in paths]

    def render(mode: str | None) -> float:
        if mode is not None:
            pipe.lora_mode = mode
        tick = time.perf_counter()
        pipe.generate("benchmark: waves on a shore at dusk", height=cfg.height, width=cfg.width,
                      num_frames=cfg.num_frames, num_inference_steps=cfg.steps, seed=0,
                      loras=loras[0] if mode else None)
        return time.perf_counter() - tick

    runs: dict = {None: [], "runtime": [], "merged": []}
    for mode in runs:
        render(mode)  # warm-up, and the LoRA file read once
    for _ in range(cfg.repeats):
        for mode, times in runs.items():
            times.append(render(mode))
    base, runtime, merged = (statistics.median(runs[m]) for m in (None, "runtime", "merged"))
    switch = {mode: _switch_s(pipe, mode, loras, cfg.repeats) for mode in ("runtime", "merged")}
    plain_forward, branch_forward = _forward_s(pipe, cfg, loras[0])
    return {"preset": cfg.preset, "size": f"{cfg.width}x{cfg.height}x{cfg.num_frames}", "steps": cfg.steps,
            "rank": cfg.rank, "repeats": cfg.repeats, "render_s": round(base, 3), "runtime_s": round(runtime, 3),
            "merged_s": round(merged, 3), "runtime_ratio": round(runtime / base, 4),
            "runtime_step_overhead_ms": round(1000 * (runtime - base) / cfg.steps, 2),
            "merged_ratio": round(merged / base, 4), "switch_runtime_s": round(switch["runtime"], 4),
            "switch_merged_s": round(switch["merged"], 4),
            "switch_runtime_share": round(switch["runtime"] / base, 4),
            "switch_merged_share": round(switch["merged"] / base, 4),
            "forward_s": round(plain_forward, 4), "forward_runtime_branch_s": round(branch_forward, 4),
            "forward_runtime_branch_ratio": round(branch_forward / plain_forward, 4),
            "load1": round(os.getloadavg()[0], 2)}


@hydra.main(config_path=str(ROOT / "conf"), config_name="bench_lora", version_base="1.3")
def main(cfg: DictConfig) -> None:
    report_row(_run(cfg), cfg)


if __name__ == "__main__":
    sys.exit(main())
