"""Our single-device pipeline against diffusers' WanPipeline: same weights, same inputs, same steps.

Each measurement runs in its own process (so peak memory is that pipeline's alone), alternating
ours / diffusers ``--repeats`` times; the best wall time of each and the ratio are reported, with the
peak resident memory of the generate call (VmHWM after a reset, Linux) and the largest difference
between the two results' final latents. Children run with glibc's mmap threshold at 64 KiB, so every
tensor-sized allocation is returned to the OS when freed and resident memory tracks live memory
(otherwise malloc's free lists hide the peak of the second run behind the first's).

    python benchmarks/pipeline_vs_diffusers.py --preset small --steps 4 --repeats 3 --write
    python benchmarks/pipeline_vs_diffusers.py --rows 20 --repeats 3     # equal work: no padding for either
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def _peak_rss_reset() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current RSS


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found")


def _inputs(spec, height: int, width: int, frames: int, rows: int | None = None):
    """Prompt and negative embeddings, initial latents. ``rows`` None: text_len rows, of which the first 20
    (12 for the negative) are the prompt's and the rest zero padding, which diffusers attends and our DiT
    compresses (exactly) to one slot; ``rows`` N: exactly N prompt rows each, no padding: equal work."""
    import torch

    generator = torch.Generator().manual_seed(0)
    length = rows or spec.dit.text_len
    context = torch.randn(1, length, spec.dit.text_dim, generator=generator)
    negative = torch.randn(1, length, spec.dit.text_dim, generator=generator)
    if rows is None:
        context[:, 20:] = 0
        negative[:, 12:] = 0
    stride = spec.vae.spatial_stride
    latents = torch.randn(1, spec.vae.z_dim, (frames - 1) // 4 + 1, height // stride, width // stride,
                          generator=generator)
    return context, negative, latents


def child(which: str, folder: str, steps: int, height: int, width: int, frames: int, threads: int, out: str,
          rows: int | None = None) -> None:
    import torch

    torch.set_num_threads(threads)
    from wan_dist.models.checkpoint import detect_checkpoint

    spec = detect_checkpoint(folder).spec
    context, negative, latents = _inputs(spec, height, width, frames, rows)
    kwargs = dict(height=height, width=width, num_frames=frames, num_inference_steps=steps, guidance_scale=4.0,
                  guidance_scale_2=3.0, prompt_embeds=context, negative_prompt_embeds=negative,
                  output_type="latent")
    if which.startswith("ours"):
        from wan_dist import load_pipeline

        pipe = load_pipeline(folder, dtype=torch.float32,
                             cfg_mode="sequential" if which == "ours-sequential" else "batched")
        run = lambda: pipe.generate(latents=latents.clone(), seed=0, **kwargs).frames  # noqa: E731
    else:
        from diffusers import WanPipeline

        pipe = WanPipeline.from_pretrained(folder, torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        run = lambda: pipe(latents=latents.clone(), **kwargs).frames  # noqa: E731
    with torch.no_grad():
        run()  # warm-up: first-call allocations and lazy initialisation are not what we compare
        _peak_rss_reset()
        base = _peak_rss_bytes()
        start = time.perf_counter()
        result = run()
        wall = time.perf_counter() - start
        peak = _peak_rss_bytes() - base
    torch.save(result, out + ".pt")
    Path(out).write_text(json.dumps({"wall_s": wall, "peak_bytes": peak}))


def _run_child(which: str, args, folder: str, tmp: str, index: int) -> dict:
    out = os.path.join(tmp, f"{which}-{index}.json")
    subprocess.run([sys.executable, __file__, "--child", which, "--folder", folder, "--steps", str(args.steps),
                    "--height", str(args.height), "--width", str(args.width), "--frames", str(args.frames),
                    "--threads", str(args.threads), "--out", out, *(["--rows", str(args.rows)] if args.rows else [])],
                   check=True,
                   env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"})
    return {**json.loads(Path(out).read_text()), "latents": out + ".pt"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=None,
                        help="prompt embeddings of exactly this many rows, no zero padding (equal work: the "
                             "default's 512 rows, 20 of them the prompt's, favour our padding compression)")
    parser.add_argument("--write", action="store_true", help=f"append the table to {RESULTS.name}")
    parser.add_argument("--child"), parser.add_argument("--folder"), parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.folder, args.steps, args.height, args.width, args.frames, args.threads, args.out,
              args.rows)
        return

    import torch

    from wan_dist.models.make_checkpoint import make_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        folder = str(make_checkpoint(args.preset, Path(tmp) / "ckpt", layout="diffusers", seed=0))
        runs = {"ours": [], "ours-sequential": [], "diffusers": []}
        for index in range(args.repeats):
            for which in runs:  # alternate so drift in machine load hits all
                runs[which].append(_run_child(which, args, folder, tmp, index))
        difference = (torch.load(runs["ours"][0]["latents"]) - torch.load(runs["diffusers"][0]["latents"])).abs().max()
        best = {k: min(r["wall_s"] for r in v) for k, v in runs.items()}
        peak = {k: max(r["peak_bytes"] for r in v) for k, v in runs.items()}
    speedup = {k: best["diffusers"] / best[k] for k in ("ours", "ours-sequential")}
    memory = {k: peak[k] / max(peak["diffusers"], 1) for k in ("ours", "ours-sequential")}
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}; torch {torch.__version__}"
    lines = [
        f"### Pipeline vs diffusers WanPipeline: preset `{args.preset}`, {args.width}x{args.height}x{args.frames}, "
        f"{args.steps} steps, CFG, fp32, {args.threads} threads, "
        f"{f'{args.rows}-row prompts, no padding' if args.rows else 'prompts padded to text_len'} "
        f"({time.strftime('%Y-%m-%d')})",
        f"Machine: {machine}. Best of {args.repeats} alternating runs, each in its own process.",
        "",
        "| | wall (s) | speed vs diffusers | peak RSS during generate (MiB) | memory vs diffusers |",
        "|---|---|---|---|---|",
        f"| wan-dist, batched CFG | {best['ours']:.2f} | **{speedup['ours']:.2f}x** | "
        f"{peak['ours'] / 2**20:.0f} | {memory['ours']:.2f}x |",
        f"| wan-dist, sequential CFG (default) | {best['ours-sequential']:.2f} | **{speedup['ours-sequential']:.2f}x** | "
        f"{peak['ours-sequential'] / 2**20:.0f} | {memory['ours-sequential']:.2f}x |",
        f"| diffusers WanPipeline | {best['diffusers']:.2f} | 1.00x | {peak['diffusers'] / 2**20:.0f} | 1.00x |",
        "",
        f"Max |difference| of final latents: {difference.item():.2e}.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        with RESULTS.open("a") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
