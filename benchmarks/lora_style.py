"""A toy style LoRA, trained and measured on CPU (Hydra-sweepable; issue 16 "Measured", conf/bench_lora_style.yaml).

    python benchmarks/lora_style.py

1. Data: ``clips`` clips of the world's train split (64x64x17 MP4 + caption files, the folder layout
   ``wan-dist train-lora`` reads); every other one in the brand duotone (wan_dist/world/style.py) with its caption
   prefixed by ``STYLE_TRIGGER``, the rest plain (so that prompts without those words keep the base's look).
2. ``train_lora`` on the frozen ``base`` (both experts, rank ``rank``), in this process.
3. ``eval_prompts`` held-out scenes, each rendered four ways at the base's defaults, seed = index: base and LoRA,
   with and without the trigger words. Reported: the palette distance (wan_dist.world.style.palette_distance,
   0-255; lower = more in the style) of each, the training clips' own (what the style looks like after MP4), and
   the PSNR between base and LoRA renders of the plain prompts (how little unrelated prompts change), and, for
   scale, between the base's renders of those prompts at two seeds.
One row goes to ``save_to`` (benchmarks/csv_rows.py), a contact sheet (4 prompts x the four ways, middle frame)
to ``grid``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from csv_rows import report_row

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SEED, EVAL_SEED = 0, 777_000_000  # the toy's training clip seeds start at 0; toy_eval's held-out seeds


def _dataset(folder: Path, count: int) -> float:
    """Write the training folder; returns the styled clips' palette distance as written (after MP4)."""
    from wan_dist.video.mp4 import decode_mp4, encode_mp4
    from wan_dist.world import caption, render_clip, sample_scene
    from wan_dist.world.style import STYLE_TRIGGER, brand_palette, palette_distance

    folder.mkdir(parents=True, exist_ok=True)
    distances = []
    for i in range(count):
        scene = sample_scene(TRAIN_SEED + i, split="train")
        frames, text = render_clip(scene, height=64, width=64, num_frames=17), caption(scene, rng=TRAIN_SEED + i)
        styled = i % 2 == 0
        if styled:
            frames, text = brand_palette(frames), f"{STYLE_TRIGGER} {text}"
        data = encode_mp4(frames, 16, crf=12)
        (folder / f"clip{i:04d}.mp4").write_bytes(data)
        (folder / f"clip{i:04d}.txt").write_text(text)
        if styled:
            distances.append(palette_distance(decode_mp4(data)[0]))
    return statistics.mean(distances)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b) ** 2).mean())
    return 100.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _evaluate(cfg: DictConfig, files: dict) -> tuple[dict, list]:
    import torch

    from wan_dist.engine.loading import load_pipeline
    from wan_dist.world import caption, sample_scene
    from wan_dist.world.style import STYLE_TRIGGER, palette_distance

    pipe = load_pipeline(cfg.base, dtype=torch.float32)
    loras = [{"path": str(path), "transformer": word} for word, path in files.items()]
    ways = {"base_styled": (True, []), "lora_styled": (True, loras), "base_plain": (False, []),
            "lora_plain": (False, loras)}
    distance = {way: [] for way in ways}
    psnr, reseeded, sheet = [], [], []  # reseeded: the base's own change with another seed (a scale for psnr)
    for i in range(cfg.eval_prompts):
        scene = sample_scene(EVAL_SEED + i, split="heldout")
        text = caption(scene, rng=EVAL_SEED + i)
        clips = {way: pipe.generate(f"{STYLE_TRIGGER} {text}" if styled else text, seed=i, loras=chosen).frames[0]
                 for way, (styled, chosen) in ways.items()}
        for way, clip in clips.items():
            distance[way].append(palette_distance(clip))
        psnr.append(_psnr(clips["base_plain"], clips["lora_plain"]))
        reseeded.append(_psnr(clips["base_plain"], pipe.generate(text, seed=i + 1000).frames[0]))
        sheet.append((text, [clips[way][len(clip) // 2] for way in ways]))
    row = {f"palette_distance_{way}": round(statistics.mean(values), 2) for way, values in distance.items()}
    row["plain_psnr_lora_vs_base_db"] = round(float(statistics.median(psnr)), 2)
    row["plain_psnr_base_other_seed_db"] = round(float(statistics.median(reseeded)), 2)
    return row, sheet


def _grid(sheet: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sheet[:4]
    figure, axes = plt.subplots(len(rows), 4, figsize=(8, 2.3 * len(rows)), squeeze=False)
    titles = ("base, with the words", "LoRA, with the words", "base, plain prompt", "LoRA, plain prompt")
    for r, (text, frames) in enumerate(rows):
        for c, frame in enumerate(frames):
            axes[r][c].imshow(frame, interpolation="nearest")
            axes[r][c].set_xticks([]), axes[r][c].set_yticks([])
            if r == 0:
                axes[r][c].set_title(titles[c], fontsize=8)
        axes[r][0].set_ylabel(text[:40] + ("..." if len(text) > 40 else ""), fontsize=6)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _run(cfg: DictConfig) -> dict:
    import torch

    from wan_dist.config.train import FlowConfig, OptimConfig
    from wan_dist.config.train_lora import LoraDataConfig, LoraTrainConfig
    from wan_dist.train import train_lora

    torch.set_num_threads(cfg.threads)
    work = Path(cfg.work).resolve()
    started = time.perf_counter()
    data_distance = _dataset(work / "data", cfg.clips)
    config = LoraTrainConfig(out=str(work / "run"), base=cfg.base, data=LoraDataConfig(path=str(work / "data")),
                             rank=cfg.rank, alpha=cfg.alpha, threads_per_worker=cfg.threads, progress=False,
                             **({"targets": tuple(cfg.targets)} if cfg.targets else {}),
                             optim=OptimConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                                               checkpoint_every=50), flow=FlowConfig())
    result = train_lora(config, local=True)
    trained_s = time.perf_counter() - started
    row, sheet = _evaluate(cfg, result.files)
    _grid(sheet, cfg.grid)
    steps = result.summary["step"] - result.summary["start_step"]
    return {**row, "palette_distance_training_clips": round(data_distance, 2),
            "train_s_per_step": round(1 / result.summary["steps_per_s"], 3) if steps else None,
            "prepare_and_train_s": round(trained_s, 1), "first_loss": round(result.summary["first_loss"], 4),
            "last_loss": round(result.summary["last_loss"], 4),
            "lora_bytes": sum(f["bytes"] for f in result.summary["files"].values()),
            "trainable_parameters": result.summary["trainable_parameters"], "grid": str(Path(cfg.grid).resolve())}


@hydra.main(config_path=str(ROOT / "conf"), config_name="bench_lora_style", version_base="1.3")
def main(cfg: DictConfig) -> None:
    report_row(_run(cfg), cfg)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(Path(__file__).parent))
    main()
