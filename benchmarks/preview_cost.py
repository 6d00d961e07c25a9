"""CPU benchmark of preview frames (Hydra-sweepable): what a preview every ``every`` steps costs a render.

    python benchmarks/preview_cost.py -m every=1,4

Loads ``preset`` (random weights in the real layout), then renders the same request ``repeats`` times without
and with a preview (interleaved, so both see the same machine state): the preview is what a serve renderer
takes (``engine.preview``: the step's x0 estimate, its first latent frame through the VAE, shrunk to 256 px
and JPEG-encoded). Appends a row to ``save_to`` (CSV; with the timestamp, machine and every setting:
benchmarks/csv_rows.py): median seconds per render each way, their ratio, and the median time of one preview.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from csv_rows import report_row

ROOT = Path(__file__).resolve().parents[1]


def _run(cfg: DictConfig) -> dict:
    import torch

    from wan_dist import load_pipeline
    from wan_dist.engine.preview import encode_jpeg, preview_frame, shrink

    torch.set_num_threads(cfg.threads)
    pipe = load_pipeline(cfg.preset, dtype=torch.float32)
    previews: list[float] = []

    def callback(index: int, total: int, _latents, estimate) -> None:
        if (index + 1) % cfg.every == 0 and index + 1 < total:
            tick = time.perf_counter()
            encode_jpeg(shrink(preview_frame(pipe.vae, estimate()), 256))
            previews.append(time.perf_counter() - tick)

    def render(with_previews: bool) -> float:
        tick = time.perf_counter()
        pipe.generate("benchmark: waves on a shore at dusk", height=cfg.height, width=cfg.width,
                      num_frames=cfg.num_frames, num_inference_steps=cfg.steps, seed=0,
                      callback=callback if with_previews else None)
        return time.perf_counter() - tick

    render(False)  # warm-up
    plain, previewed = [], []
    for _ in range(cfg.repeats):
        plain.append(render(False))
        previewed.append(render(True))
    base, with_previews = statistics.median(plain), statistics.median(previewed)
    return {"preset": cfg.preset, "size": f"{cfg.width}x{cfg.height}x{cfg.num_frames}", "steps": cfg.steps,
            "every": cfg.every, "previews_per_render": len(previews) // cfg.repeats, "repeats": cfg.repeats,
            "render_s": round(base, 3), "render_with_previews_s": round(with_previews, 3),
            "ratio": round(with_previews / base, 4), "preview_s": round(statistics.median(previews), 4),
            "load1": round(os.getloadavg()[0], 2)}


@hydra.main(config_path=str(ROOT / "conf"), config_name="bench_preview", version_base="1.3")
def main(cfg: DictConfig) -> None:
    report_row(_run(cfg), cfg)


if __name__ == "__main__":
    sys.exit(main())
