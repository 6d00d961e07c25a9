"""Frame-rate conversion on synthetic motion (Hydra-sweepable; issue 17 item 4, conf/bench_fps.yaml).

    python benchmarks/fps_convert.py
    python benchmarks/fps_convert.py -m to_fps=24,32

Clips of ``frames`` frames at ``from_fps`` are converted to ``to_fps`` (wan_dist.video.interpolate) four ways:
DIS-flow interpolation (the product's), the same without occlusion handling, a cross-fade ("blend") and the
nearest earlier frame ("repeat"). Each made in-between frame is compared (PSNR) with the true frame at its time,
rendered by the scene itself:

- ``shapes``: ``shape_scenes`` scenes of three shapes moving in straight lines (speed drawn up to ``max_speed``
  px a frame, any colour) over a sine texture panning up to 3 px a frame, drawn analytically at any time;
- ``world``: ``world_scenes`` scenes of the toy model's procedural world (wan_dist.world), rendered over the same
  second at both rates (it renders any frame count over a clip's span).

One row goes to ``save_to`` (benchmarks/csv_rows.py): mean and lowest PSNR per family and method, and the seconds
per interpolated frame at the bench size and at ``time_size`` (one pair of large frames, flow at the default
working size).
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
WAYS = {"flow": ("flow", True), "flow_no_occlusion": ("flow", False), "blend": ("blend", True),
        "repeat": ("repeat", True)}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b) ** 2).mean())
    return 100.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def shapes(seed: int, height: int, width: int, max_speed: float):
    """frame(t) of an analytic scene at time t (in frames at the input rate)."""
    rng = np.random.default_rng(seed)
    waves = [(rng.uniform(12, 40), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)) for _ in range(9)]
    pan = rng.uniform(-3, 3, 2)
    objects = []
    for _ in range(3):
        heading, speed = rng.uniform(0, 2 * np.pi), rng.uniform(max_speed / 3, max_speed)
        objects.append((rng.uniform([0.2 * width, 0.2 * height], [0.8 * width, 0.8 * height]),
                        speed * np.array([np.cos(heading), np.sin(heading)]),
                        rng.uniform(0.06, 0.12) * min(height, width), rng.integers(20, 250, 3)))
    ys, xs = np.mgrid[0:height, 0:width] + 0.5

    def frame(t: float) -> np.ndarray:
        u, v = xs - pan[0] * t, ys - pan[1] * t
        image = np.stack([128 + sum(25 * np.sin(2 * np.pi * (u * np.cos(a) + v * np.sin(a)) / period + phase)
                                    for period, a, phase in waves[3 * c:3 * c + 3]) for c in range(3)], axis=-1)
        for index, (start, velocity, radius, rgb) in enumerate(objects):
            cx, cy = start + velocity * t
            if index % 2:  # a disc
                distance = np.hypot(xs - cx, ys - cy) - radius
            else:  # a box
                dx, dy = np.abs(xs - cx) - radius, np.abs(ys - cy) - 0.6 * radius
                distance = np.hypot(np.maximum(dx, 0), np.maximum(dy, 0)) + np.minimum(np.maximum(dx, dy), 0)
            alpha = np.clip(0.5 - distance, 0, 1)[..., None]
            image = image * (1 - alpha) + alpha * rgb * (1 + 0.15 * np.sin((xs - cx) / 3))[..., None]
        return np.clip(image + 0.5, 0, 255).astype(np.uint8)

    return frame


def _clips(cfg: DictConfig):
    """(family, native frames, true frames at to_fps) of every scene."""
    from wan_dist.video.interpolate import retimed_count
    from wan_dist.world import render_clip, sample_scene

    count = retimed_count(cfg.frames, cfg.from_fps, cfg.to_fps)
    for seed in range(cfg.shape_scenes):
        frame = shapes(seed, cfg.height, cfg.width, cfg.max_speed)
        yield ("shapes", np.stack([frame(i) for i in range(cfg.frames)]),
               np.stack([frame(j * cfg.from_fps / cfg.to_fps) for j in range(count)]))
    span = (cfg.frames - 1) / cfg.from_fps  # the world renders a clip's span in any number of frames
    for seed in range(cfg.world_scenes):
        scene = sample_scene(seed, split="heldout")
        native = render_clip(scene, height=cfg.height, width=cfg.width, num_frames=cfg.frames)
        truth = render_clip(scene, height=cfg.height, width=cfg.width, num_frames=count)
        assert abs((count - 1) / cfg.to_fps - span) < 1e-9, "to_fps must divide the span into whole frames"
        yield "world", native, truth


def _run(cfg: DictConfig) -> dict:
    from wan_dist.video.interpolate import convert_fps, retime_positions

    between = [j for j, (_, numerator, _) in enumerate(retime_positions(cfg.frames, cfg.from_fps, cfg.to_fps))
               if numerator]
    scores: dict[tuple[str, str], list[float]] = {}
    seconds: list[float] = []
    for family, native, truth in _clips(cfg):
        for way, (method, occlusion) in WAYS.items():
            tick = time.perf_counter()
            made, _ = convert_fps(native, cfg.from_fps, cfg.to_fps, method=method, occlusion=occlusion)
            if way == "flow":
                seconds.append((time.perf_counter() - tick) / len(between))
            scores.setdefault((family, way), []).extend(_psnr(made[j], truth[j]) for j in between)
    row: dict = {}
    for (family, way), values in scores.items():
        row[f"psnr.{family}.{way}"] = round(float(statistics.mean(values)), 2)
        row[f"psnr_min.{family}.{way}"] = round(float(min(values)), 2)
    row["flow_s_per_frame"] = round(statistics.median(seconds), 4)
    row.update(_large_frame_seconds(cfg))
    return row


def _large_frame_seconds(cfg: DictConfig) -> dict:
    from wan_dist.video.interpolate import interpolate, pair_motion

    width, height = cfg.time_size
    frame = shapes(0, height, width, cfg.max_speed * width / cfg.width)
    a, b = frame(0), frame(1)
    tick = time.perf_counter()
    motion = pair_motion(a, b)
    middle = time.perf_counter()
    interpolate(a, b, 0.5, motion)
    done = time.perf_counter()
    return {"large.motion_s": round(middle - tick, 3), "large.interpolate_s": round(done - middle, 3)}


@hydra.main(config_path=str(ROOT / "conf"), config_name="bench_fps", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import cv2

    cv2.setNumThreads(cfg.threads)
    report_row(_run(cfg), cfg)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(Path(__file__).parent))
    main()
