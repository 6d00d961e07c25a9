"""Camera paths on toy-i2v (issue 14, "Measured"): does a render move the picture the way its camera path asks,
and what does the camera cost?

    python benchmarks/camera.py                      # guided (the default mode), 8 scenes x 6 moves
    python benchmarks/camera.py -m mode=guided,exact

Inputs are held-out scenes of the toy's world with a static camera and constant light (``sample_scene(777_000_000
+ i, split="heldout", camera="static", lighting="constant")``): the scene's first frame is the input image, its
caption the prompt. Each is rendered through the engine (``build_request`` + ``generate_for``, as every front door
renders) once without a camera and once per move of ``moves`` (pan and tilt both ways by ``pan_deg`` / ``tilt_deg``,
truck both ways by ``truck``), with ``mode`` and ``strength`` (null: the default, controls.camera.DEFAULT_STRENGTH).
``world.measure.camera_motion`` reads the direction the picture moved (phase correlation over the background, the
toy evaluation's reader; content sliding left is a camera moving right). Reported: the share of clips whose
measured direction is the requested one (target >= 90%, guided), the same share for the renders without a camera
against each requested direction (what chance gives), per-move hits, and the camera's extra time: the camera
renders' mean seconds over the plain renders' (the same process, renders interleaved; target <= 5%).
One row per mode goes to ``save_to`` (benchmarks/csv_rows.py: timestamp, machine, every setting).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from csv_rows import report_row

ROOT = Path(__file__).resolve().parents[1]
EVAL_SEED = 777_000_000  # the world's held-out scenes (as toy_eval)


def moves(cfg: DictConfig) -> dict[str, tuple[dict, str]]:
    """name -> (the move, the direction camera_motion should read): a positive pan turns the camera right, so the
    picture slides left; a positive tilt looks up (the picture slides down); a positive truck moves right."""
    return {"pan_right": ({"type": "pan", "amount": cfg.pan_deg}, "right"),
            "pan_left": ({"type": "pan", "amount": -cfg.pan_deg}, "left"),
            "tilt_up": ({"type": "tilt", "amount": cfg.tilt_deg}, "up"),
            "tilt_down": ({"type": "tilt", "amount": -cfg.tilt_deg}, "down"),
            "truck_right": ({"type": "truck", "amount": cfg.truck}, "right"),
            "truck_left": ({"type": "truck", "amount": -cfg.truck}, "left")}


def _render(pipe, fields: dict) -> tuple[np.ndarray, float]:
    from wan_dist.engine.render import generate_for
    from wan_dist.engine.request import build_request

    request = build_request(fields, spec=pipe.spec).request
    tick = time.perf_counter()
    out = generate_for(pipe, request)
    return np.asarray(out.frames[0]), time.perf_counter() - tick


def _run(cfg: DictConfig) -> dict:
    import torch
    from PIL import Image

    from wan_dist import load_pipeline
    from wan_dist.world import caption, first_frame, sample_scene
    from wan_dist.world.measure import camera_motion

    torch.set_num_threads(cfg.threads)
    pipe = load_pipeline(cfg.preset, dtype=torch.float32)
    defaults = pipe.spec.defaults
    asked = moves(cfg)
    camera_extra = {} if cfg.strength is None else {"strength": cfg.strength}
    layers = {} if cfg.layers is None else {"layers": OmegaConf.to_container(cfg.layers)}
    hits, chance, measured = Counter(), Counter(), Counter()
    plain_s, camera_s, sheet = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for index in range(cfg.images):
            seed = EVAL_SEED + index
            scene = sample_scene(seed, split="heldout", camera="static", lighting="constant")
            image = Path(folder, f"{index}.png")
            Image.fromarray(first_frame(scene, defaults.height, defaults.width)).save(image)
            base = {"prompt": caption(scene, rng=seed), "image": str(image), "seed": index,
                    **OmegaConf.to_container(cfg.request)}
            plain, seconds = _render(pipe, base)
            plain_s.append(seconds)
            still = camera_motion(plain)
            row = [plain[-1]]
            for name, (move, direction) in asked.items():
                frames, seconds = _render(pipe, {**base, "camera": {"moves": [move], "mode": cfg.mode,
                                                                     **camera_extra}, **layers})
                camera_s.append(seconds)
                got = camera_motion(frames)
                measured[(name, got)] += 1
                hits[name] += got == direction
                chance[name] += still == direction
                row.append(frames[-1])
            if index < cfg.grid_rows:
                sheet.append(np.concatenate(row, axis=1))
    total = cfg.images * len(asked)
    result = {"clips": total, "hits": sum(hits.values()), "accuracy": round(sum(hits.values()) / total, 4),
              "target": 0.9, "chance_accuracy": round(sum(chance.values()) / total, 4),
              **{f"{name}_hits": hits[name] for name in asked},
              "measured": "; ".join(f"{name}:{got}x{n}" for (name, got), n in sorted(measured.items())),
              "plain_s": round(statistics.mean(plain_s), 4), "camera_s": round(statistics.mean(camera_s), 4),
              "extra_time": round(statistics.mean(camera_s) / statistics.mean(plain_s) - 1, 4),
              "size": f"{defaults.width}x{defaults.height}x{defaults.num_frames}",
              "steps": defaults.num_inference_steps}
    if cfg.grid:
        Path(cfg.grid).parent.mkdir(parents=True, exist_ok=True)
        grid = np.concatenate(sheet, axis=0)
        Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(cfg.grid)
    return result


@hydra.main(config_path=str(ROOT / "conf"), config_name="bench_camera", version_base="1.3")
def main(cfg: DictConfig) -> None:
    report_row(_run(cfg), cfg)


if __name__ == "__main__":
    main()
