"""CPU benchmark of one parallel layout per run (Hydra-sweepable): time, bytes and peak memory per step.

    python benchmarks/layouts.py -m parallel.ulysses=1,2 parallel.ring=1,2 parallel.cfg=1,2

Each run spawns ``parallel.world_size`` gloo ranks on this machine (wan_dist.parallel.local), renders
the same request with the SPMD generate of a render group, and appends a row to
``save_to`` (CSV; with the timestamp, machine and every setting: benchmarks/csv_rows.py):
seconds per step (best of ``repeats``, rank 0), bytes sent per step per rank (the engine's counter) and
the peak resident memory of the generate call per rank (glibc mmap threshold at 64 KiB so RSS tracks
live memory). On 2 cores more ranks do not run faster: the point is bytes and memory per rank, and
the relative cost of the layouts' communication on one machine.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from csv_rows import save_chart, save_row

ROOT = Path(__file__).resolve().parents[1]


def _rss_kib(field: str) -> int:
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1])


def _rank(rank: int, world_size: int, parallel, folder: str, run: dict) -> dict:
    import torch

    from wan_dist import load_pipeline
    from wan_dist.parallel.runtime import make_parallel_generate

    pipe = load_pipeline(folder, dtype=torch.float32)
    generate = make_parallel_generate(pipe, parallel)
    spec = pipe.spec
    generator = torch.Generator().manual_seed(0)
    context = torch.randn(run["batch"], spec.dit.text_len, spec.dit.text_dim, generator=generator)
    context[:, 24:] = 0
    negative = torch.zeros_like(context)
    kwargs = dict(height=run["height"], width=run["width"], num_frames=run["num_frames"], seed=0,
                  num_inference_steps=run["steps"], prompt_embeds=context, negative_prompt_embeds=negative,
                  output_type="latent")
    generate(**kwargs)  # warm-up
    counter = generate.mesh.counter
    best, peak = float("inf"), 0
    for _ in range(run["repeats"]):
        counter.reset()
        Path("/proc/self/clear_refs").write_text("5")
        base = _rss_kib("VmRSS")
        start = time.perf_counter()
        generate(**kwargs)
        best = min(best, time.perf_counter() - start)
        peak = max(peak, _rss_kib("VmHWM") - base)
    stride = spec.vae.spatial_stride * spec.dit.patch_size[1]
    tokens = ((run["num_frames"] - 1) // 4 + 1) * (run["height"] // stride) * (run["width"] // stride)
    return {"s_per_step": best / run["steps"], "bytes_per_step": counter.total / run["steps"],
            "peak_mib": peak / 1024, "tokens": tokens}


@hydra.main(config_path=str(ROOT / "conf"), config_name="bench_layouts", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from wan_dist.config import ParallelConfig
    from wan_dist.engine.sources import resolve_source
    from wan_dist.parallel.local import run_local_group

    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")  # inherited by the spawned ranks
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "65536")
    parallel = ParallelConfig(**OmegaConf.to_container(cfg.parallel, resolve=True))
    folder = str(resolve_source(cfg.preset))  # written once here, read by every rank
    run = {k: cfg[k] for k in ("height", "width", "num_frames", "steps", "batch", "repeats")}
    ranks = run_local_group(_rank, parallel.world_size, parallel, folder, run, threads=cfg.threads_per_rank,
                            timeout_s=1800)
    row = {"preset": cfg.preset, "layout": f"d{parallel.data}xc{parallel.cfg}xu{parallel.ulysses}xr{parallel.ring}",
           "fsdp": parallel.fsdp, "placement": parallel.placement, "world_size": parallel.world_size,
           "tokens": ranks[0]["tokens"], "s_per_step": round(ranks[0]["s_per_step"], 3),
           "bytes_per_step_per_rank": int(max(r["bytes_per_step"] for r in ranks)),
           "peak_mib_per_rank": round(max(r["peak_mib"] for r in ranks), 1)}
    path = save_row(row, config=OmegaConf.to_container(cfg, resolve=True), save_to=cfg.save_to)
    print(row, file=sys.stderr)
    print(f"row appended to {path}", file=sys.stderr)
    save_chart(path, "layouts")


if __name__ == "__main__":
    main()
