"""A LoRA's training data: captioned clips or images from a folder or a Parquet manifest, at the model's size.

A folder holds media files each with a sibling caption (``shot.mp4`` + ``shot.txt``: the kohya / musubi
convention); a manifest has a ``caption`` column and a ``video`` or ``image`` column whose entries are paths
relative to the manifest's folder or URLs. Every item is scaled to cover the frame and centre-cropped (as the
pipeline prepares an input image); a clip keeps its first frames, an image is a one-frame clip. Errors name
the item and the reason: a missing caption, a clip shorter than the frames asked for, a file that does not decode.
"""

from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass

import numpy as np

from wan_dist.config.train_lora import LoraDataConfig

__all__ = ["LoraItems", "read_lora_items", "VIDEO_SUFFIXES", "IMAGE_SUFFIXES"]

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class LoraItems:
    """uint8 clips [N, F, H, W, 3] (F = 1 for images), their captions and where each came from."""

    clips: np.ndarray
    captions: list[str]
    sources: list[str]


def _is_manifest(path: str) -> bool:
    return path.lower().endswith((".parquet", ".pq"))


def _folder_entries(path: str) -> list[tuple[str, str, str]]:
    """(media URI, kind, caption) of a folder: each media file with its ``.txt`` caption."""
    from wan_dist.storage.objects import list_prefix, read_bytes

    uris = list_prefix(path)
    names = set(uris)
    entries = []
    for uri in uris:
        stem, suffix = posixpath.splitext(uri)
        kind = "video" if suffix.lower() in VIDEO_SUFFIXES else "image" if suffix.lower() in IMAGE_SUFFIXES else None
        if kind is None:
            continue
        if stem + ".txt" not in names:
            raise ValueError(f"data.path: {uri} has no caption file {posixpath.basename(stem)}.txt beside it")
        entries.append((uri, kind, read_bytes(stem + ".txt").decode("utf-8").strip()))
    if not entries:
        raise ValueError(f"data.path: {path} holds no clips ({', '.join(VIDEO_SUFFIXES)}) or images "
                         f"({', '.join(IMAGE_SUFFIXES)}) with captions")
    return entries


def _manifest_entries(path: str) -> list[tuple[str, str, str]]:
    import pyarrow.parquet as pq

    from wan_dist.storage.objects import read_bytes

    table = pq.read_table(io.BytesIO(read_bytes(path))).to_pylist()
    columns = set(table[0]) if table else set()
    kinds = [kind for kind in ("video", "image") if kind in columns]
    if "caption" not in columns or len(kinds) != 1:
        raise ValueError(f"data.path: the manifest {path} needs a `caption` column and one of `video`, `image`; "
                         f"it has {sorted(columns)}")
    kind, folder = kinds[0], path.rsplit("/", 1)[0] if "/" in path else "."
    entries = []
    for index, row in enumerate(table):
        media, caption = row[kind], row["caption"]
        if not isinstance(media, str) or not media or not isinstance(caption, str):
            raise ValueError(f"data.path: manifest row {index}: `{kind}` and `caption` must be strings")
        uri = media if "://" in media or media.startswith("/") else f"{folder}/{media}"
        entries.append((uri, kind, caption.strip()))
    return entries


def _fit(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """[F, h, w, 3] uint8 scaled to cover height x width, centre-cropped."""
    import cv2

    h, w = frames.shape[1:3]
    scale = max(height / h, width / w)
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    top, left = (size[1] - height) // 2, (size[0] - width) // 2
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f, size, interpolation=interpolation)[top:top + height, left:left + width]
                     for f in frames])


def _decode(uri: str, kind: str) -> np.ndarray:
    from PIL import Image

    from wan_dist.storage.objects import read_bytes
    from wan_dist.video.mp4 import decode_mp4

    data = read_bytes(uri)
    try:
        if kind == "video":
            return decode_mp4(data)[0]
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[None]
    except Exception as error:  # noqa: BLE001 - any decoder error: name the file
        raise ValueError(f"data.path: {uri} is not a readable {kind} ({error})") from None


def read_lora_items(data: LoraDataConfig, *, height: int, width: int, num_frames: int) -> LoraItems:
    """Every item of ``data.path`` at ``height`` x ``width``; clips cut to ``num_frames`` frames."""
    entries = _manifest_entries(data.path) if _is_manifest(data.path) else _folder_entries(data.path.rstrip("/"))
    kinds = {kind for _, kind, _ in entries}
    if len(kinds) > 1:
        raise ValueError(f"data.path: {data.path} mixes clips and images; one run trains on one kind")
    clips = []
    for uri, kind, caption in entries:
        if not caption:
            raise ValueError(f"data.path: {uri} has an empty caption")
        frames = _decode(uri, kind)
        if kind == "video":
            if len(frames) < num_frames:
                raise ValueError(f"data.path: {uri} has {len(frames)} frames; data.num_frames asks for {num_frames}")
            frames = frames[:num_frames]
        clips.append(_fit(frames, height, width))
    return LoraItems(clips=np.stack(clips), captions=[c for _, _, c in entries], sources=[u for u, _, _ in entries])
