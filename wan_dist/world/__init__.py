"""The procedural video world the ``toy`` model learns from: scenes of one to three coloured shapes
moving over a background while a camera pans, tilts, zooms, dollies or shakes.

numpy only so far. Everything is deterministic given a seed: ``sample_scene(7, camera="zoom_in")``.
"""

from __future__ import annotations

from wan_dist.world.sample import is_heldout, sample_scene
from wan_dist.world.scene import Background, Camera, Scene, WorldObject
from wan_dist.world.vocab import heldout_combinations, vocabulary

__all__ = ["Scene", "WorldObject", "Background", "Camera", "sample_scene", "is_heldout", "vocabulary",
           "heldout_combinations"]
