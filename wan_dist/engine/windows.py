"""A long clip's finished windows in object storage, so a stopped render resumes mid-clip.

Under ``{clip prefix}/windows/``, per finished window ``k`` (in this order; the JSON last, so a present JSON means
a complete window): ``{k:04d}.mkv`` its finished frames (lossless, ``video.lossless``; absent when it finished
none), ``{k:04d}.tail.npy`` the frames it holds for the next seam, ``{k:04d}.json`` its record, the digest of the
request it belongs to, the first window's settings, the timings and LoRA records so far. A render of the same
request finds windows ``0..k`` complete and starts at ``k + 1``; windows of another request are deleted first.
The clip is assembled from the segments, so a resumed clip is the uninterrupted one, byte for byte; the folder is
removed once the clip is published.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from wan_dist.storage.objects import ObjectNotFoundError, delete, join, list_prefix, read_bytes, write_bytes_atomic
from wan_dist.video.lossless import decode_lossless, encode_lossless

__all__ = ["Resumed", "WindowStore"]


@dataclass
class Resumed:
    """What the windows finished before tell the next one: how many, the held frames, the first window's
    settings (a dict), the records, timings and LoRA records so far."""

    count: int
    tail: np.ndarray | None
    settings: dict
    records: list[dict]
    timings: dict[str, float] = field(default_factory=dict)
    loras: list[dict] = field(default_factory=list)


class WindowStore:
    def __init__(self, prefix: str, digest: str, *, storage_options: Mapping[str, Any] | None = None):
        self.folder = join(prefix, "windows")
        self.digest = digest
        self.options = storage_options

    def _uri(self, index: int, suffix: str) -> str:
        return join(self.folder, f"{index:04d}{suffix}")

    def save(self, index: int, frames: np.ndarray, tail: np.ndarray | None, *, record: dict, settings: dict,
             timings: dict, loras: list) -> None:
        if len(frames):
            write_bytes_atomic(self._uri(index, ".mkv"), encode_lossless(frames), storage_options=self.options)
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((0,), np.uint8) if tail is None else tail, allow_pickle=False)
        write_bytes_atomic(self._uri(index, ".tail.npy"), buffer.getvalue(), storage_options=self.options)
        state = {"digest": self.digest, "index": index, "frames": int(len(frames)), "record": record,
                 "settings": settings, "timings": timings, "loras": loras}
        write_bytes_atomic(self._uri(index, ".json"), json.dumps(state, sort_keys=True).encode(),
                           content_type="application/json", storage_options=self.options)

    def _state(self, index: int) -> dict | None:
        try:
            return json.loads(read_bytes(self._uri(index, ".json"), storage_options=self.options))
        except ObjectNotFoundError:
            return None

    def load(self) -> Resumed | None:
        """The windows finished for this request (contiguous from 0), or None; another request's are deleted."""
        states = []
        while (state := self._state(len(states))) is not None and state["digest"] == self.digest:
            states.append(state)
        if not states:
            if list_prefix(self.folder, storage_options=self.options):
                self.clear()
            return None
        last = states[-1]
        tail = np.load(io.BytesIO(read_bytes(self._uri(last["index"], ".tail.npy"), storage_options=self.options)))
        return Resumed(count=len(states), tail=tail if tail.size else None, settings=last["settings"],
                       records=[s["record"] for s in states], timings=dict(last["timings"]), loras=last["loras"])

    def segments(self, count: int):
        """Window after window, its finished frames (none for a window that held them all)."""
        for index in range(count):
            state = self._state(index)
            if state is None or state["digest"] != self.digest:
                raise RuntimeError(f"window {index} of {self.folder} is missing: the windows changed while the clip "
                                   "was being assembled")
            if state["frames"]:
                yield decode_lossless(read_bytes(self._uri(index, ".mkv"), storage_options=self.options))

    def clear(self) -> None:
        delete(self.folder, recursive=True, storage_options=self.options)
