"""wan-dist: distributed batch rendering of Wan 2.2 video models."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_pipeline", "__version__"]


def load_pipeline(source, **kwargs):
    """Load a Wan 2.2 pipeline from a preset name, local folder, fsspec URL or Hugging Face repo id.

    See ``wan_dist.engine.loading.load_pipeline`` for the arguments.
    """
    from wan_dist.engine.loading import load_pipeline as _load

    return _load(source, **kwargs)
