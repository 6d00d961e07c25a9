"""PromptCache: prefetched embeddings equal direct encoding; a prefetch in flight is waited for, not repeated."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from wan_dist.engine.prompt_cache import PromptCache


def test_prefetched_embeddings_equal_the_encoder_and_are_copies():
    from wan_dist import load_pipeline

    pipe = load_pipeline("tiny", dtype=torch.float32)
    direct = pipe.encode_prompt(["a fox in snow"])
    pipe.prompt_cache = PromptCache(pipe.encode_prompt_uncached, size=2)
    pipe.prompt_cache.prefetch(["a fox in snow"])
    cached = pipe.encode_prompt(["a fox in snow"])
    assert torch.equal(cached, direct) and pipe.prompt_cache.hits == 1
    cached.zero_()  # a caller modifying its tensor does not touch the cache
    assert torch.equal(pipe.encode_prompt(["a fox in snow"]), direct)


def test_a_prefetch_in_flight_is_awaited_and_entries_are_evicted():
    calls, started = [], threading.Event()

    def encode(prompts):
        calls.append(tuple(prompts))
        started.set()
        time.sleep(0.2)
        return torch.full((1, 2), float(len(calls)))

    cache = PromptCache(encode, size=2)
    worker = threading.Thread(target=cache.prefetch, args=(["a"],))
    worker.start()
    started.wait()
    assert cache.get(["a"])[0, 0] == 1.0  # waited for the prefetch, not encoded again
    worker.join()
    cache.get(["b"]), cache.get(["c"])  # "a" is now the least recently used of three: evicted
    cache.get(["a"])
    assert calls == [("a",), ("b",), ("c",), ("a",)]


def test_a_failed_encode_is_raised_and_not_cached():
    attempts = []

    def encode(prompts):
        attempts.append(1)
        if len(attempts) in (1, 2):
            raise RuntimeError("encoder out of memory")
        return torch.zeros(1, 1)

    cache = PromptCache(encode)
    cache.prefetch(["x"])  # fails quietly: the render that needs it encodes again
    with pytest.raises(RuntimeError, match="out of memory"):
        cache.get(["x"])
    assert cache.get(["x"]).shape == (1, 1) and len(attempts) == 3
