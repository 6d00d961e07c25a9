"""CPU benchmark of long clips (issue 17), Hydra-sweepable: seams, a static scene, peak memory and time.

    python benchmarks/long_clips.py mode=seams                       # toy, several prompts, median seam ratio
    python benchmarks/long_clips.py mode=seams preset=toy-i2v
    python benchmarks/long_clips.py mode=memory                      # 5 s vs 60 s, each in its own process

``seams``: each prompt of ``prompts`` renders ``duration_s`` as windows (``long``); per clip, the mean absolute
frame-to-frame change (0-255) of the frame pairs that touch a seam's blended frames, over the mean change of the
other pairs (inside windows); the row has the median over clips of each clip's median seam ratio (the issue's
target: <= 1.5), and the same for the ``static_prompt`` clip with its absolute changes and its drift (mean
absolute difference of the last frame from the first).
``memory``: each duration of ``durations_s`` renders in a fresh subprocess (the model loaded there too) that
reports its peak RSS (``ru_maxrss``), render seconds and CPU seconds (user + system: what the render itself used,
which a machine shared with other work stretches less than wall time); every duration ``repeats`` times, the
durations alternating; the row has the medians and their ratios to the shortest.
Rows go to ``save_to`` (benchmarks/csv_rows.py).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _pipe(model: str, threads: int):
    import torch

    from wan_dist import load_pipeline

    torch.set_num_threads(threads)
    return load_pipeline(model, dtype=torch.float32)


def _image(path: Path) -> str:
    """An input image for image-to-video: a red circle on a dark blue background, as the world draws them."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 64), (20, 30, 110))
    ImageDraw.Draw(image).ellipse((12, 22, 32, 42), fill=(220, 40, 40))
    image.save(path)
    return str(path)


def _render(pipe, prompt: str, cfg, seed: int, folder: str, image: str | None):
    from wan_dist.config import OutputConfig
    from wan_dist.engine.clips import read_sidecar
    from wan_dist.engine.render import render
    from wan_dist.engine.request import build_request
    from wan_dist.video.mp4 import decode_mp4

    fields = {"prompt": prompt, "duration_s": float(cfg.duration_s), "seed": seed, "num_inference_steps": cfg.steps,
              "long": {"method": cfg.method, "overlap": cfg.overlap, "impose": cfg.impose}, "image": image}
    request = build_request(fields, spec=pipe.spec).request
    result = render(pipe, request, OutputConfig(uri=folder, preset="ultrafast", crf=12))
    if result.status != "completed":
        raise RuntimeError(result.error)
    frames, _ = decode_mp4(Path(result.clip_uri).read_bytes())
    windows = read_sidecar(str(Path(result.clip_uri).parent))["long"]["windows"]
    return frames, windows


def seam_statistics(frames: np.ndarray, windows: list[dict]) -> dict:
    """Per-seam mean change over the mean change inside windows (frame pairs touching no blended frame)."""
    change = np.abs(np.diff(frames.astype(np.float64), axis=0)).mean(axis=(1, 2, 3))  # pair (t, t+1) at t
    seam = np.zeros(len(change), dtype=bool)
    seams = []
    for w in windows[1:]:
        # continue: the pairs entering, inside and leaving a seam's blended frames; sliding: those of the frames
        # two windows share (their latent overlap, decoded)
        shared = w["overlap"] if "overlap" in w else windows[windows.index(w) - 1]["start"] + \
            windows[windows.index(w) - 1]["frames"] - w["start"]
        pairs = np.arange(w["start"] - 1, w["start"] + shared).clip(0, len(change) - 1)
        seam[pairs] = True
        seams.append(float(change[pairs].mean()))
    inside = float(change[~seam].mean())
    return {"inside": inside, "seams": seams, "ratio": statistics.median(s / inside for s in seams),
            "drift": float(np.abs(frames[-1].astype(np.float64) - frames[0].astype(np.float64)).mean())}


def _seams(cfg) -> dict:
    pipe = _pipe(cfg.preset, cfg.threads)
    with tempfile.TemporaryDirectory() as folder:
        image = _image(Path(folder) / "image.png") if pipe.spec.task != "t2v" else None
        clips = []
        for index, prompt in enumerate(cfg.prompts):
            tick = time.perf_counter()
            stats = seam_statistics(*_render(pipe, prompt, cfg, cfg.seed + index, folder, image))
            clips.append(stats)
            print(f"clip {index}: ratio {stats['ratio']:.3f} inside {stats['inside']:.2f} "
                  f"seams {[round(s, 2) for s in stats['seams']]} ({time.perf_counter() - tick:.0f} s)", flush=True)
        static = seam_statistics(*_render(pipe, cfg.static_prompt, cfg, cfg.seed, folder, image))
    print(f"static: {static}", flush=True)
    return {"clips": len(clips), "seam_ratio_median": round(statistics.median(c["ratio"] for c in clips), 3),
            "seam_ratio_max": round(max(c["ratio"] for c in clips), 3),
            "inside_change_median": round(statistics.median(c["inside"] for c in clips), 3),
            "static_inside_change": round(static["inside"], 3),
            "static_seam_change_max": round(max(static["seams"]), 3), "static_ratio": round(static["ratio"], 3),
            "static_drift": round(static["drift"], 3), "load1": round(os.getloadavg()[0], 2)}


def child(settings: dict) -> dict:
    """One render in this process (the memory mode's subprocess): peak RSS and seconds."""
    from types import SimpleNamespace

    cfg = SimpleNamespace(**settings)
    pipe = _pipe(cfg.preset, cfg.threads)
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as folder:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        tick, cpu = time.perf_counter(), usage.ru_utime + usage.ru_stime
        frames, windows = _render(pipe, cfg.prompt, cfg, cfg.seed, folder, None)
        seconds = time.perf_counter() - tick
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime - cpu
    return {"peak_rss_mb": usage.ru_maxrss / 1024, "loaded_rss_mb": loaded_rss / 1024, "render_s": seconds,
            "cpu_s": cpu, "frames": int(frames.shape[0]), "windows": len(windows)}


def _memory(cfg) -> dict:
    runs: dict[float, list[dict]] = {duration: [] for duration in cfg.durations_s}
    for _ in range(cfg.repeats):
        for duration in cfg.durations_s:
            settings = {"preset": cfg.preset, "threads": cfg.threads, "prompt": cfg.prompts[0], "seed": cfg.seed,
                        "method": cfg.method, "duration_s": duration, "steps": cfg.steps, "overlap": cfg.overlap,
                        "impose": cfg.impose}
            done = subprocess.run([sys.executable, __file__, "--child", json.dumps(settings)], capture_output=True,
                                  text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            runs[duration].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{duration} s: {runs[duration][-1]}", flush=True)
    row = {}
    base = None
    for duration, results in runs.items():
        median = {key: statistics.median(r[key] for r in results) for key in ("peak_rss_mb", "render_s", "cpu_s")}
        windows = results[0]["windows"]
        base = base or {**median, "windows": windows}
        tag = f"{duration:g}s"
        row.update({f"windows.{tag}": windows, f"peak_rss_mb.{tag}": round(median["peak_rss_mb"], 1),
                    f"peak_rss_mb_runs.{tag}": " ".join(f"{r['peak_rss_mb']:.0f}" for r in results),
                    f"rss_ratio.{tag}": round(median["peak_rss_mb"] / base["peak_rss_mb"], 4),
                    f"render_s.{tag}": round(median["render_s"], 2),
                    f"cpu_s_per_window.{tag}": round(median["cpu_s"] / windows, 3),
                    f"cpu_ratio_per_window.{tag}": round(median["cpu_s"] / windows / (base["cpu_s"] / base["windows"]), 4)})
    row["load1"] = round(os.getloadavg()[0], 2)
    return row


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from csv_rows import report_row

    @hydra.main(config_path=str(ROOT / "conf"), config_name="bench_long", version_base="1.3")
    def run(cfg: DictConfig) -> None:
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        measured = _seams(cfg) if cfg.mode == "seams" else _memory(cfg)
        report_row({"mode": cfg.mode, "model": cfg.preset, "method": cfg.method, **measured}, cfg)

    run()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(json.loads(sys.argv[2]))))
    else:
        main()
