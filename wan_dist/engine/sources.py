"""Turn a checkpoint ``source`` into a local folder the model loaders can read.

A source is a preset name (``toy`` / ``toy-i2v``: the trained weights the package ships,
``wan_dist.models.shipped``; ``tiny`` and the others: a random checkpoint in the real layout, written once into the
cache), a local folder, any fsspec URL (copied into the cache once, keyed by URL), or a Hugging Face
repo id (fetched with huggingface_hub; fails cleanly when offline).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from wan_dist.models.presets import PRESETS

__all__ = ["resolve_source", "default_cache_dir", "EMBEDDED_PRESETS"]

# Presets whose random checkpoints are small enough to write on first use (the rest need real weights).
EMBEDDED_PRESETS = ("tiny", "tiny-i2v", "tiny-ti2v", "small", "toy", "toy-i2v")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def default_cache_dir() -> Path:
    return Path(os.environ.get("WAN_DIST_CACHE", Path.home() / ".cache" / "wan-dist"))


def resolve_source(source: str | os.PathLike, *, cache_dir: str | Path | None = None,
                   layout: str = "diffusers", storage_options: dict | None = None) -> Path:
    """Local folder holding the checkpoint named by ``source``.

    ``layout`` only matters for embedded presets (which layout to write them in).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    text = os.fspath(source)
    if text in PRESETS:
        return _embedded(text, cache, layout)
    if text.startswith("file://"):
        text = text[len("file://"):]
    if "://" in text:
        return _materialize_url(text, cache, storage_options)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"model: {path} is a file; a checkpoint is a folder")
        return path
    if _REPO_ID.match(text):
        return _from_hub(text, cache)
    raise ValueError(f"model: {text!r} is neither a preset ({sorted(PRESETS)}), an existing folder, "
                     "a URL nor a Hugging Face repo id")


def _embedded(name: str, cache: Path, layout: str) -> Path:
    if name not in EMBEDDED_PRESETS:
        raise ValueError(f"model: preset {name!r} has no embedded weights (real weights cannot be generated "
                         f"on the fly); pass a checkpoint folder, URL or repo id, or write random weights with "
                         f"`wan-dist make-checkpoint variant={name} out=...`")
    from wan_dist.models.shipped import shipped_checkpoint

    shipped = shipped_checkpoint(name, cache)
    if shipped is not None:
        if layout != "diffusers":
            raise ValueError(f"layout: {name}'s trained weights ship in the diffusers layout only, not {layout!r}")
        return shipped
    folder = cache / "checkpoints" / f"{name}-{layout}-seed0"
    if not folder.exists():
        from wan_dist.models.make_checkpoint import make_checkpoint

        make_checkpoint(name, folder, layout=layout, seed=0, replace=False)  # ranks may race here
    return folder


def _materialize_url(url: str, cache: Path, storage_options: dict | None) -> Path:
    from wan_dist.storage.objects import filesystem

    key = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    folder = cache / "remote" / key
    if (folder / ".complete").exists():
        return folder
    fs, path = filesystem(url, storage_options=storage_options)
    if not fs.isdir(path):
        raise ValueError(f"model: {url} is not a folder (or cannot be reached)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=folder.parent))
    try:
        fs.get(path.rstrip("/") + "/", str(staging) + "/", recursive=True)
        (staging / ".complete").write_text(url)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _from_hub(repo_id: str, cache: Path) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, cache_dir=str(cache / "hub")))
    except Exception as error:  # offline, unknown repo, auth: all end here with the reason
        raise ValueError(f"model: cannot fetch Hugging Face repo {repo_id!r} ({type(error).__name__}: {error})") \
            from None
