"""Style lock on `toy-i2v`, measured on CPU (issue 15 "Measured"; Hydra-sweepable, conf/bench_style_lock.yaml).

    python benchmarks/style_lock.py
    python benchmarks/style_lock.py -m strength=0.5,1.0

For ``images`` held-out scenes of the toy's world, the first frame is the input image, as it is (``plain``) and
through each synthetic grade of :data:`GRADES` (a colourist's look the model never saw in training). Each input is
rendered twice from the same seed, without and with ``style_lock`` (the sampling-time latent pull and the colour
transfer after decoding, as the engine runs them: engine/pipeline.py and engine/post.py), in alternating order.
Reported per kind of input: colour drift (mean CIEDE2000 of the frames to the input, pixel by pixel,
controls.style.colour_drift: content that differs counts too) and grade drift (CIEDE2000 of each frame's mean
colour to the input's, controls.style.grade_drift) without and with the lock and their reductions, the texture statistic (high-frequency energy ratio to the input), and
the lock's extra time over the render without it (sum of seconds, same process, interleaved).
One row per kind of input goes to ``save_to`` (benchmarks/csv_rows.py); a sheet of middle frames to ``grid``.

``renders=world`` measures the colour transfer alone on synthetic graded clips with no model: the world's own clip
of each scene through the grade, drifting away from it over the clip (:func:`_drifted`), without and with the
lock's transfer (grid: input | last frame without | with); also the frame drift, pixel by pixel against the
same frame before it drifted (the colour alone: against the input image, the subject's own motion counts too).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from csv_rows import report_row

ROOT = Path(__file__).resolve().parents[1]
EVAL_SEED = 777_000_000  # the world's held-out scenes (as toy_eval)


def _grade(name: str, image: np.ndarray) -> np.ndarray:
    """``image`` (RGB uint8) through a fixed synthetic grade."""
    x = image.astype(np.float32) / 255.0
    if name == "warm":  # golden hour: red and green up, blue down, lifted blacks
        x = 0.08 + 0.92 * x * np.array([1.15, 1.0, 0.7])
    elif name == "teal_orange":  # shadows to teal, highlights to orange
        luma = x.mean(-1, keepdims=True)
        x = x + (1 - luma) * np.array([-0.12, 0.05, 0.1]) + luma * np.array([0.15, 0.03, -0.12])
    elif name == "faded":  # low contrast, desaturated, lifted
        luma = x.mean(-1, keepdims=True)
        x = 0.2 + 0.6 * (0.5 * x + 0.5 * luma)
    elif name != "plain":
        raise ValueError(f"grades: unknown grade {name!r}")
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def _drifted(clip: np.ndarray) -> np.ndarray:
    """``clip`` [F, H, W, 3] uint8 losing its look as a model that drifts does: a cool cast and lifted blacks
    creeping in linearly from none at frame 0 to all of it at the last frame."""
    x = clip.astype(np.float32) / 255.0
    cast = 0.1 + 0.8 * x * np.array([0.85, 0.95, 1.15], np.float32)
    weight = np.linspace(0.0, 1.0, len(clip), dtype=np.float32)[:, None, None, None]
    return np.clip(np.rint(((1 - weight) * x + weight * cast) * 255), 0, 255).astype(np.uint8)


def _world_rows(cfg: DictConfig) -> tuple[list[dict], list[np.ndarray]]:
    """``renders: world``: no model. The world's own clip of each held-out scene (a still camera, constant light),
    every frame through the grade (a render that keeps the image's content and look), then :func:`_drifted`
    (the look lost over the clip): drift without the lock, and with its colour transfer after decoding (the
    latent pull needs a model), as the engine applies it (controls.style.colour_transfer at the lock's strength
    and smoothing, 16 fps)."""
    from wan_dist.controls.style import StyleLock, colour_drift, colour_transfer, grade_drift, high_frequency_ratio
    from wan_dist.world import render_clip, sample_scene

    lock = StyleLock.from_dict(float(cfg.strength))
    rows, sheet = [], []
    for grade in cfg.grades:
        measured: dict[str, list[float]] = {key: [] for key in ("without", "with", "grade_without", "grade_with",
                                                                "hf_without", "hf_with", "frame_without",
                                                                "frame_with")}
        for index in range(cfg.images):
            scene = sample_scene(EVAL_SEED + index, split="heldout", camera="static", lighting="constant")
            clip = render_clip(scene, height=cfg.size, width=cfg.size, num_frames=cfg.frames)
            graded = np.stack([_grade(grade, frame) for frame in clip])
            source, without = graded[0], _drifted(graded)
            locked = colour_transfer(without, source, strength=lock.strength, fps=16.0, smoothing_s=lock.smoothing_s)
            for frames, key in ((without, "without"), (locked, "with")):
                # pixel by pixel against the same frame of the clip before it drifted: the colour alone, as the
                # content (the subject moving) is the same in both
                measured[f"frame_{key}"].append(statistics.mean(colour_drift(frames[i:i + 1], graded[i])
                                                                for i in range(len(frames))))
                measured[key].append(colour_drift(frames, source))
                measured[f"grade_{key}"].append(grade_drift(frames, source))
                measured[f"hf_{key}"].append(high_frequency_ratio(frames, source))
            if index < cfg.grid_rows:
                sheet.append(np.concatenate([source, without[-1], locked[-1]], axis=1))
        frame_without, frame_with = statistics.mean(measured["frame_without"]), statistics.mean(measured["frame_with"])
        rows.append({**_row(cfg, grade, measured, extra_time=None), "frame_drift_without": round(frame_without, 2),
                     "frame_drift_with": round(frame_with, 2),
                     "frame_drift_reduction": round(1 - frame_with / frame_without, 3)})
    return rows, sheet


def _row(cfg: DictConfig, grade: str, measured: dict, *, extra_time: float | None) -> dict:
    without, with_lock = statistics.mean(measured["without"]), statistics.mean(measured["with"])
    return {"input": grade, "images": cfg.images, "strength": cfg.strength,
            "drift_without": round(without, 2), "drift_with": round(with_lock, 2),
            "drift_reduction": round(1 - with_lock / without, 3),
            "grade_drift_without": round(statistics.mean(measured["grade_without"]), 2),
            "grade_drift_with": round(statistics.mean(measured["grade_with"]), 2),
            "grade_drift_reduction": round(1 - statistics.mean(measured["grade_with"])
                                           / statistics.mean(measured["grade_without"]), 3),
            "hf_ratio_without": round(statistics.mean(measured["hf_without"]), 3),
            "hf_ratio_with": round(statistics.mean(measured["hf_with"]), 3),
            "extra_time": extra_time}


def _run(cfg: DictConfig) -> list[dict]:
    if cfg.renders == "world":
        rows, sheet = _world_rows(cfg)
    else:
        rows, sheet = _model_rows(cfg)
    if cfg.grid:
        from PIL import Image

        Path(cfg.grid).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(sheet, axis=0)).resize(
            (3 * cfg.size * 2, len(sheet) * cfg.size * 2), Image.NEAREST).save(cfg.grid)
    return rows


def _model_rows(cfg: DictConfig) -> tuple[list[dict], list[np.ndarray]]:
    import torch
    from PIL import Image

    from wan_dist import load_pipeline
    from wan_dist.controls.style import colour_drift, grade_drift, high_frequency_ratio
    from wan_dist.engine.post import lock_style
    from wan_dist.engine.request import build_request
    from wan_dist.world import caption, render_clip, sample_scene

    torch.set_num_threads(cfg.threads)
    pipe = load_pipeline(cfg.preset, dtype=torch.float32)
    rows, sheet = [], []
    for grade in cfg.grades:
        measured = {"without": [], "with": [], "grade_without": [], "grade_with": [], "hf_without": [], "hf_with": [],
                    "s_without": 0.0, "s_with": 0.0}
        for index in range(cfg.images):
            scene = sample_scene(EVAL_SEED + index, split="heldout")
            first = render_clip(scene, height=cfg.size, width=cfg.size, num_frames=1)[0]
            source = _grade(grade, first)
            prompt = caption(scene, rng=EVAL_SEED + index)
            request = build_request({"prompt": prompt, "image": "input.png", "seed": index, "num_frames": cfg.frames,
                                     "style_lock": cfg.strength}, spec=pipe.spec).request
            image = Image.fromarray(source)
            outputs = {}
            for lock in ((False, True) if index % 2 == 0 else (True, False)):  # alternate: no order bias
                tick = time.perf_counter()
                out = pipe.generate(prompt, image=image, num_frames=cfg.frames, seed=index,
                                    style_lock=request.style_lock if lock else None)
                frames = out.frames[0]
                if lock:
                    frames, _ = lock_style(request, frames, pipe.spec.defaults.fps, source)
                measured["s_with" if lock else "s_without"] += time.perf_counter() - tick
                outputs[lock] = frames
            for lock, key in ((False, "without"), (True, "with")):
                measured[key].append(colour_drift(outputs[lock], source))
                measured[f"grade_{key}"].append(grade_drift(outputs[lock], source))
                measured[f"hf_{key}"].append(high_frequency_ratio(outputs[lock], source))
            if index < cfg.grid_rows:
                middle = cfg.frames // 2
                sheet.append(np.concatenate([source, outputs[False][middle], outputs[True][middle]], axis=1))
        rows.append(_row(cfg, grade, measured, extra_time=round(measured["s_with"] / measured["s_without"] - 1, 4)))
    return rows, sheet


@hydra.main(config_path=str(ROOT / "conf"), config_name="bench_style_lock", version_base="1.3")
def main(cfg: DictConfig) -> None:
    for row in _run(cfg):
        report_row(row, cfg)


if __name__ == "__main__":
    main()
