"""CPU benchmark of step caching (Hydra-sweepable): transformer forwards, time and PSNR against the uncached render.

    python benchmarks/step_cache.py -m cache=magcache threshold=0.03,0.06,0.1,0.2,0.4
    python benchmarks/step_cache.py -m cache=teacache threshold=0.1,0.2,0.4,0.8

Loads ``preset`` (the shipped ``toy`` and its shipped calibration profile by default), then renders each prompt of
``prompts`` uncached and with the step cache ``cache`` at ``threshold`` / ``retention``, interleaved ``repeats``
times so both see the same machine state. Appends a row to ``save_to`` (CSV; with the timestamp, machine and
every setting: benchmarks/csv_rows.py): transformer forwards each way and their ratio, the median denoise time
each way and their ratio, the PSNR of the decoded cached clip against the uncached one (mean and worst over the
prompts), and redraws the PSNR / speed chart beside it (benchmarks/plots.py, ``step_cache``).
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from csv_rows import report_row

ROOT = Path(__file__).resolve().parents[1]


def psnr(frames, reference) -> float:
    """PSNR (dB) of uint8 frames against uint8 reference frames of the same shape, over every pixel."""
    import numpy as np

    error = np.mean((np.asarray(frames, dtype=np.float64) - np.asarray(reference, dtype=np.float64)) ** 2)
    return math.inf if error == 0 else 10 * math.log10(255.0**2 / error)


def _prompts(path: str) -> list[str]:
    lines = (ROOT / path).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _run(cfg: DictConfig) -> dict:
    import torch

    from wan_dist import load_pipeline

    torch.set_num_threads(cfg.threads)
    pipe = load_pipeline(cfg.preset, dtype=torch.float32)
    prompts = _prompts(cfg.prompts)[: cfg.num_prompts]
    cache = {"cache": cfg.cache, "cache_threshold": cfg.threshold, "cache_retention": cfg.retention}

    def render(prompt: str, seed: int, cached: bool):
        return pipe.generate(prompt, seed=seed, num_inference_steps=cfg.steps, **(cache if cached else {}))

    render(prompts[0], 0, True)  # warm-up
    plain_s, cached_s, psnrs = [], [], []
    forwards, skipped, steps = 0, 0, 0
    for repeat in range(cfg.repeats):
        plain_total = cached_total = 0.0
        for seed, prompt in enumerate(prompts):
            plain = render(prompt, seed, False)
            out = render(prompt, seed, True)
            plain_total += plain.timings["denoise_s"]
            cached_total += out.timings["denoise_s"]
            if repeat == 0:
                psnrs.append(psnr(out.frames, plain.frames))
                forwards += out.step_cache["forwards"]
                skipped += out.step_cache["forwards_skipped"]
                steps += len(out.step_cache["skipped_steps"])
        plain_s.append(plain_total)
        cached_s.append(cached_total)
    uncached_forwards = forwards + skipped
    base, cached_time = statistics.median(plain_s), statistics.median(cached_s)
    finite = [p for p in psnrs if math.isfinite(p)]
    return {"preset": cfg.preset, "cache": cfg.cache, "threshold": cfg.threshold, "retention": cfg.retention,
            "steps": cfg.steps, "prompts": len(prompts), "repeats": cfg.repeats,
            "forwards_uncached": uncached_forwards, "forwards_cached": forwards,
            "forward_reduction": round(uncached_forwards / max(forwards, 1), 4),
            "skipped_steps_per_render": round(steps / len(prompts), 2),
            "denoise_s_uncached": round(base, 3), "denoise_s_cached": round(cached_time, 3),
            "denoise_speedup": round(base / cached_time, 4),
            "psnr_db_mean": round(statistics.mean(finite), 2) if finite else math.inf,
            "psnr_db_min": round(min(psnrs), 2), "load1": round(os.getloadavg()[0], 2)}


@hydra.main(config_path=str(ROOT / "conf"), config_name="bench_step_cache", version_base="1.3")
def main(cfg: DictConfig) -> None:
    report_row(_run(cfg), cfg, chart="step_cache")


if __name__ == "__main__":
    sys.exit(main())
