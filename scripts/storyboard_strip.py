"""Writes docs/storyboard.png: a storyboard of four shots and three kinds of transitions rendered with `toy`.

Each row is one transition: the frames around it (every other frame, from 6 before the shared frames to 6 after),
the middle ones being the frames both shots rendered, combined by the transition. The clip and its sidecar are
written under ``out`` (default outputs/storyboard). Run from the repository root:

    python scripts/storyboard_strip.py [--seconds 10] [--steps 16] [--out outputs/storyboard] [--png docs/storyboard.png]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

SHOTS = [
    {"prompt": "A red circle moves to the right across a dark blue background. The camera does not move."},
    {"prompt": "A yellow square slides left in front of a dark green background. The camera does not move.",
     "transition": "crossfade"},
    {"prompt": "A purple circle stays still in front of a background of vertical dark blue and dark green stripes.",
     "transition": "dip_to_black", "camera": {"moves": [{"type": "pan", "amount": 12}]}},
    {"prompt": "A white triangle rises over a dark purple background. The camera does not move.",
     "transition": "whip_pan", "transition_s": 0.75},
]


def main() -> None:
    from wan_dist import load_pipeline
    from wan_dist.config import OutputConfig
    from wan_dist.engine.render import render
    from wan_dist.engine.request import build_request
    from wan_dist.video.mp4 import decode_mp4

    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0, help="each shot's duration")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--out", default="outputs/storyboard")
    parser.add_argument("--png", default="docs/storyboard.png")
    args = parser.parse_args()
    torch.set_num_threads(2)
    pipe = load_pipeline("toy", dtype=torch.float32)
    shots = [{**shot, "duration_s": args.seconds} for shot in SHOTS]
    request = build_request({"shots": shots, "seed": 7, "num_inference_steps": args.steps, "name": "storyboard",
                             "prompt": "Four shots of the toy world"}, spec=pipe.spec).request
    tick = time.perf_counter()
    result = render(pipe, request, OutputConfig(uri=args.out, crf=12))
    if result.status != "completed":
        raise SystemExit(result.error)
    print(f"rendered {result.clip_uri} in {time.perf_counter() - tick:.0f} s")
    frames, fps = decode_mp4(Path(result.clip_uri).read_bytes())
    sidecar = json.loads(Path(result.sidecar_uri).read_text())
    rows = []
    shot_start = 0  # clip frame where each shot's own frames begin (after its shared ones)
    for plan in sidecar["long"]["shots"]:
        if plan["transition"] != "cut":
            first = shot_start - plan["shared"]  # the shared frames end where this shot's own frames begin
            picks = list(range(max(first - 6, 0), min(shot_start + 7, len(frames)), 2))
            rows.append((plan["transition"], [frames[i] for i in picks]))
        shot_start += plan["own"] + (1 if plan["index"] == 0 else 0)
    scale, label = 2, 110
    width = max(len(r[1]) for r in rows) * 64 * scale + label
    sheet = Image.new("RGB", (width, len(rows) * 64 * scale), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, (name, picked) in enumerate(rows):
        draw.text((6, row * 64 * scale + 56), name, fill=(0, 0, 0))
        for column, frame in enumerate(picked):
            tile = Image.fromarray(frame).resize((64 * scale, 64 * scale), Image.Resampling.NEAREST)
            sheet.paste(tile, (label + column * 64 * scale, row * 64 * scale))
    Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.png)
    print(f"{args.png}: {len(frames)} frames at {fps:g} fps, {len(sidecar['long']['windows'])} windows")


if __name__ == "__main__":
    main()
