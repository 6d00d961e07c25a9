"""Creative controls: pure functions and data the engine composes with the models (DESIGN.md).

- :mod:`~wan_dist.controls.camera`: the camera path of a request (moves, easing, shake), sampled to one pose
  per output frame; the homography each pose induces on a scene plane; the prompt's camera phrases.
- :mod:`~wan_dist.controls.warp`: moving pictures along a sampled path: proxy clips of an input image,
  Gaussian-preserving noise warping, and the exact mode's virtual camera over an overscanned render.
- :mod:`~wan_dist.controls.layers`: foreground/background separation without downloaded weights, depth order,
  parallax, hole filling at disocclusions and depth/motion-dependent blur.
- :mod:`~wan_dist.controls.platforms`: platform profiles (size, fps, SMPTE safe areas, app-interface regions).
- :mod:`~wan_dist.controls.reframe`: a smoothed crop path per profile keeping the subject in its action-safe area.
- :mod:`~wan_dist.controls.overlays`: titles and logos laid out inside title-safe and off the interface; guides.
- :mod:`~wan_dist.controls.style`: style lock (latent statistic pull, Lab colour transfer) and drift metrics.

No Ray, no storage, no engine: numpy, OpenCV and torch tensors in, the same out.
"""

from wan_dist.controls.camera import (CameraPath, ControlError, Move, SampledPath, Shake, camera_phrases,
                                      with_camera_phrases)
from wan_dist.controls.layers import LayerSpec
from wan_dist.controls.overlays import OverlaySpec
from wan_dist.controls.platforms import PROFILES, PlatformProfile
from wan_dist.controls.style import StyleLock

__all__ = ["CameraPath", "ControlError", "Move", "Shake", "SampledPath", "camera_phrases", "with_camera_phrases",
           "LayerSpec", "OverlaySpec", "PROFILES", "PlatformProfile", "StyleLock"]
