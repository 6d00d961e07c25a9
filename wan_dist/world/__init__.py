"""The procedural video world the ``toy`` model learns from: scenes of one to three coloured shapes
moving over a background while a camera pans, tilts, zooms, dollies or shakes, with captions.

numpy and Pillow only. Everything is deterministic given a seed::

    scene = sample_scene(7, camera="zoom_in", split="train")
    text = caption(scene, rng=7)
    frames = render_clip(scene, height=64, width=64, num_frames=17)  # uint8 [17, 64, 64, 3]

``wan_dist.world.measure`` reads colour, shape, motion and camera move back from frames.
"""

from __future__ import annotations

from wan_dist.world.caption import caption, caption_words
from wan_dist.world.render import clip_times, first_frame, render_clip
from wan_dist.world.sample import is_heldout, sample_scene
from wan_dist.world.scene import Background, Camera, Scene, WorldObject
from wan_dist.world.vocab import heldout_combinations, vocabulary

__all__ = ["Scene", "WorldObject", "Background", "Camera", "sample_scene", "is_heldout", "caption",
           "caption_words", "render_clip", "first_frame", "clip_times", "vocabulary", "heldout_combinations"]
