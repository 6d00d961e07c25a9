"""Text embeddings computed ahead of time: a render group encodes the next request's prompts on a side
thread while the current request denoises, so text encoding leaves the critical path of a queue.

``PromptCache.prefetch(prompts)`` runs the encoder (from any thread); ``get(prompts)`` returns the cached
embeddings, waits for a prefetch of the same prompts in flight, or encodes them itself. Entries are
handed out as copies (callers may modify their tensors) and evicted least recently used.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Callable

import torch

__all__ = ["PromptCache"]


class PromptCache:
    def __init__(self, encode: Callable[[list[str]], torch.Tensor], *, size: int = 8):
        if size < 1:
            raise ValueError(f"size: must be >= 1, got {size}")
        self._encode = encode
        self._size = size
        self._entries: OrderedDict[tuple[str, ...], Future] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def prefetch(self, prompts: list[str]) -> None:
        """Encode ``prompts`` now unless they are cached or being encoded (errors surface in ``get``)."""
        self._future(tuple(prompts), count=False)

    def get(self, prompts: list[str]) -> torch.Tensor:
        return self._future(tuple(prompts), count=True).result().clone()

    def _future(self, key: tuple[str, ...], *, count: bool) -> Future:
        with self._lock:
            future = self._entries.get(key)
            if future is not None:
                self._entries.move_to_end(key)
                self.hits += count
                return future
            self.misses += count
            future = Future()
            self._entries[key] = future
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        try:
            future.set_result(self._encode(list(key)))
        except BaseException as error:  # noqa: BLE001 - handed to every waiter, then forgotten
            future.set_exception(error)
            with self._lock:
                if self._entries.get(key) is future:
                    del self._entries[key]
        return future
