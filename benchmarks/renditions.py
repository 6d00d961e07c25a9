"""Renditions on the toy's world: is the subject kept, and do overlays land where they may (issue 15 "Measured";
Hydra-sweepable, conf/bench_renditions.yaml).

    python benchmarks/renditions.py

1. Containment: ``clips`` scenes of the procedural world at ``width`` x ``height`` (16:9), of each kind in
   ``scenes``: ``moving_subject`` (one object that travels or bounces, still camera: the issue's case) and ``all``
   (1-3 objects, every motion, camera moves and shake). The main object's true box in every frame is found independently of the
   reframer: the scene is rendered with that object alone in two colours, and the pixels that differ are the
   object. Each clip, with all its objects, is reframed to every profile the way the post pass does it
   (controls.reframe.reframe: subject estimated from motion, else saliency); reported per profile: the share of
   frames whose true box lies inside the crop's action-safe area (controls.reframe.containment), over all clips;
   the share of frames where any crop of the reframer's size could hold it there (``feasible_frames``), and the
   share of those it did hold (``held_of_feasible``), and the seconds the subject estimate took per clip
   (``estimate_s_per_clip``: one track serves every profile, as in the post pass).
2. Layout: for every profile and every title position and logo anchor (controls.overlays), the title's and the
   logo's pixel boxes are checked against the profile's title-safe area and interface regions.
One row per profile goes to ``save_to`` (benchmarks/csv_rows.py).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from csv_rows import report_row

ROOT = Path(__file__).resolve().parents[1]
MOVING = ("left", "right", "up", "down", "up_left", "up_right", "down_left", "down_right", "bounce")


def _true_boxes(scene, *, width: int, height: int, frames: int) -> np.ndarray | None:
    """The main object's box per frame [F, 4] (x0, y0, x1, y1 exclusive), or None when it leaves the frame."""
    from wan_dist.world import render_clip

    main = scene.objects[0]
    other = "white" if main.colour != "white" else "red"
    views = [render_clip(replace(scene, objects=(replace(main, colour=colour),)), height=height, width=width,
                         num_frames=frames) for colour in (main.colour, other)]
    mask = np.abs(views[0].astype(np.int16) - views[1]).max(-1) > 24
    boxes = []
    for frame in mask:
        ys, xs = np.nonzero(frame)
        if len(xs) == 0:
            return None
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.array(boxes, np.float64)


def _feasible(subject: np.ndarray, source_size: tuple[int, int], profile) -> np.ndarray:
    """Per frame: whether any crop window of the profile's aspect (the reframer's size) can hold the subject box in
    its action-safe area at all (a 16:9 source's 9:16 window spans the source's full height, so a subject near
    the top or bottom edge cannot sit inside a vertical profile's safe band whatever the crop)."""
    from wan_dist.controls.reframe import crop_window

    width, height = source_size
    window_width, window_height = crop_window(width, height, profile)
    safe = profile.action_safe
    ok = np.ones(len(subject), bool)
    for low, high, size, window, (s0, s1) in ((subject[:, 0], subject[:, 2], width, window_width, (safe.x0, safe.x1)),
                                             (subject[:, 1], subject[:, 3], height, window_height,
                                              (safe.y0, safe.y1))):
        earliest = np.maximum(high - s1 * window, 0.0)  # window start range that holds [low, high] in its band
        latest = np.minimum(low - s0 * window, size - window)
        ok &= earliest <= latest + 0.5
    return ok


def _layout_rows(profiles) -> dict[str, tuple[int, int]]:
    """profile -> (layouts checked, layouts inside title-safe and clear of the interface)."""
    from wan_dist.controls import OverlaySpec
    from wan_dist.controls.overlays import POSITIONS, layout_overlays
    from wan_dist.controls.platforms import Box

    counts = {}
    for profile in profiles.values():
        safe = profile.title_safe.pixels(profile.width, profile.height)
        regions = [box.pixels(profile.width, profile.height) for _, box in profile.interface]
        checked = good = 0
        for position in POSITIONS:
            spec = OverlaySpec.from_dict({"title": {"text": "Hills in spring", "position": position},
                                          "logo": {"image": "logo.png", "anchor": _opposite(position), "scale": 0.12}})
            layout = layout_overlays(spec, profile, logo_size=(200, 100))
            for box in (layout.title_box, layout.logo_box):
                checked += 1
                inside = safe[0] <= box[0] < box[2] <= safe[2] and safe[1] <= box[1] < box[3] <= safe[3]
                clear = not any(Box(*box).intersects(Box(*region)) for region in regions)
                good += inside and clear
        counts[profile.name] = (checked, good)
    return counts


def _opposite(position: str) -> str:
    if position == "center":
        return "top_left"
    flip = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}
    return "_".join(flip[part] for part in position.split("_"))


def _run(cfg: DictConfig) -> list[dict]:
    from wan_dist.controls.platforms import PROFILES
    from wan_dist.controls.reframe import containment, reframe, subject_track
    from wan_dist.world import render_clip, sample_scene

    layouts = _layout_rows(PROFILES)
    rows = []
    for kind in cfg.scenes:
        inside = {name: [] for name in PROFILES}
        feasible = {name: [] for name in PROFILES}  # frames some crop could hold, and of those the ones held
        used, estimate_s = 0, []
        for index in range(cfg.clips):
            if kind == "moving_subject":  # the case: one object crossing a still camera's view
                scene = sample_scene(cfg.seed + index, split="all", camera="static", motion=MOVING)
                scene = replace(scene, objects=scene.objects[:1])
            elif kind == "all":  # every scene of the world: 1-3 objects, camera moves and shake
                scene = sample_scene(cfg.seed + index, split="all")
            else:
                raise ValueError(f"scenes: unknown kind {kind!r} (moving_subject, all)")
            truth = _true_boxes(scene, width=cfg.width, height=cfg.height, frames=cfg.frames)
            if truth is None:  # the main object leaves the frame at some point: no subject to keep there
                continue
            used += 1
            frames = render_clip(scene, height=cfg.height, width=cfg.width, num_frames=cfg.frames)
            started = time.perf_counter()
            subject = subject_track(frames)
            estimate_s.append(time.perf_counter() - started)
            for name, profile in PROFILES.items():
                _, windows = reframe(frames, profile, fps=cfg.fps, subject=subject)
                inside[name].append(containment(truth, windows, profile) * cfg.frames)
                possible = _feasible(truth, (cfg.width, cfg.height), profile)
                held = [containment(truth[i:i + 1], windows[i:i + 1], profile) for i in np.flatnonzero(possible)]
                feasible[name].append((int(possible.sum()), float(sum(held))))
        rows += [{"scenes": kind, "profile": name, "clips": used, "frames": used * cfg.frames,
                  "subject_in_action_safe": round(sum(inside[name]) / (used * cfg.frames), 4),
                  "worst_clip": round(min(inside[name]) / cfg.frames, 3),
                  "feasible_frames": round(sum(n for n, _ in feasible[name]) / (used * cfg.frames), 4),
                  "held_of_feasible": round(sum(h for _, h in feasible[name])
                                            / max(1, sum(n for n, _ in feasible[name])), 4),
                  "overlay_boxes": layouts[name][0], "overlay_boxes_ok": layouts[name][1],
                  "estimate_s_per_clip": round(float(np.mean(estimate_s)), 3)} for name in PROFILES]
    return rows


@hydra.main(config_path=str(ROOT / "conf"), config_name="bench_renditions", version_base="1.3")
def main(cfg: DictConfig) -> None:
    for row in _run(cfg):
        report_row(row, cfg)


if __name__ == "__main__":
    main()
