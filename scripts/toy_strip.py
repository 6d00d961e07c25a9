"""Writes docs/toy-strip.png: frames of the clips the README's first command (`make render`) publishes.

Each row is one clip of jobs/examples/toy.parquet (the `toy` model), frames 0, 4, 8, 12 and 16 left to right,
shown at twice their 64x64 size. Run from the repository root after `make render`:

    python scripts/toy_strip.py [outputs/batch] [docs/toy-strip.png] [rows]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from wan_dist.video.mp4 import decode_mp4

SHOWN = (0, 4, 8, 12, 16)


def main(batch: str = "outputs/batch", out: str = "docs/toy-strip.png", rows: str = "4") -> None:
    clips = sorted(Path(batch).glob("*/clip.mp4"))[: int(rows)]
    if not clips:
        raise SystemExit(f"no clips under {batch}: run `make render` first")
    lines = []
    for clip in clips:
        frames, _ = decode_mp4(clip.read_bytes())
        picked = [frames[min(i, len(frames) - 1)] for i in SHOWN]
        gap = np.full((frames.shape[1], 2, 3), 255, np.uint8)
        lines.append(np.concatenate([part for frame in picked for part in (frame, gap)][:-1], axis=1))
        prompt = json.loads((clip.parent / "clip.json").read_text())["request"]["prompt"]
        print(f"{clip.parent.name}: {prompt}")
    band = np.full((2, lines[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate([part for line in lines for part in (line, band)][:-1], axis=0)
    image = Image.fromarray(grid)
    image.resize((image.width * 2, image.height * 2), Image.NEAREST).save(out, optimize=True)
    print(out)


if __name__ == "__main__":
    main(*sys.argv[1:])
