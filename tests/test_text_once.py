"""Text encoding once per group: rank 0 encodes the prompts and broadcasts the embeddings; the other ranks
never load the text encoder, and the group renders what a single process renders.

Real gloo groups of 4 ranks built by the render group's own rank code (``RankWorker.load``, ``warmup``,
``run``; no Ray), for CFG 2 x Ulysses 2 and for disaggregated stages (2 + 2, Ulysses 2 in each: stage 0's
second rank receives the embeddings by broadcast, stage 1 in the hand-off). Each rank reports the text
encoder parameters it holds and which weight folders it read. Text prompts are a batch of 2 of different
lengths; the same request again comes from rank 0's prompt cache; given embeddings still render.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from parallel_cases import FRAMES, HEIGHT, WIDTH, make_inputs
from wan_dist.config import ParallelConfig
from wan_dist.parallel.local import run_local_group

pytestmark = pytest.mark.slow

TOLERANCE = 1e-5
LAYOUTS = {"cfg2_ulysses2": dict(cfg=2, ulysses=2),
           "disaggregated_2+2": dict(data=2, ulysses=2, placement="disaggregated")}
PROMPTS = (["a red fox in snow", "a blue bird over a long winding river at dusk"], ["blurry", "static"])
# 4 steps cross the expert boundary after step 2 (a disaggregated hand-off in the middle)
RENDER = dict(height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=4, guidance_scale=4.0,
              guidance_scale_2=3.0, seed=3, output_type="latent")


def _given_embeddings() -> dict:
    context, negative, _ = make_inputs(32, 16, HEIGHT, WIDTH, 8, seed=7)
    return {"prompt_embeds": context[:, :20].clone(), "negative_prompt_embeds": negative[:, :12].clone()}


@torch.no_grad()
def _rank(rank: int, world_size: int, source: str) -> dict:
    from wan_dist.engine.group import GroupConfig, RankWorker
    from wan_dist.engine.rank_calls import GenerateCall
    from wan_dist.models import checkpoint

    read, original = [], checkpoint._load_diffusers_weights

    def recording(folder):
        read.append(Path(folder).name)
        return original(folder)

    checkpoint._load_diffusers_weights = recording
    results = {}
    for name, parallel in LAYOUTS.items():
        read.clear()
        worker = RankWorker(rank, world_size)
        worker.load(GroupConfig(source=source, parallel=ParallelConfig(**parallel)))
        worker.warmup()
        outputs = [worker.run(GenerateCall(PROMPTS, RENDER)),
                   worker.run(GenerateCall(PROMPTS, RENDER)),  # rank 0: both prompts from its cache
                   worker.run(GenerateCall((), {**RENDER, **_given_embeddings()}))]
        encoder = worker.pipe.text_encoder
        results[name] = dict(
            params=0 if encoder is None else sum(p.numel() for p in encoder.model.parameters()),
            read=list(read), encodes_text=worker.program.encodes_text, cache=worker.prompt_cache_stats(),
            result_rank=worker.program.result_rank,
            outputs=[None if out is None else out.frames.numpy() for out in outputs])
    return results


@pytest.fixture(scope="module")
def world4(checkpoint_factory):
    source = str(checkpoint_factory("tiny", "diffusers"))
    return source, run_local_group(_rank, 4, source, timeout_s=900)


@pytest.fixture(scope="module")
def single(world4):
    from wan_dist import load_pipeline

    pipe = load_pipeline(world4[0], dtype=torch.float32)
    return pipe, [pipe.generate(*PROMPTS, **RENDER).frames, pipe.generate(**RENDER, **_given_embeddings()).frames]


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_only_rank_0_loads_the_text_encoder(world4, single, name):
    pipe, _ = single
    expected = sum(p.numel() for p in pipe.text_encoder.model.parameters())
    per_rank = [r[name] for r in world4[1]]
    assert [r["params"] for r in per_rank] == [expected, 0, 0, 0]
    assert [r["read"].count("text_encoder") for r in per_rank] == [1, 0, 0, 0]  # the others never read its weights
    assert all("vae" in r["read"] for r in per_rank)
    assert [r["encodes_text"] for r in per_rank] == [True, False, False, False]
    # rank 0 caches what it encodes: warm-up and the first render miss, the repeated render hits twice
    assert [r["cache"] for r in per_rank] == [{"hits": 2, "misses": 4}, None, None, None]


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_the_group_renders_what_one_process_renders(world4, single, name):
    _, (from_prompts, from_embeddings) = single
    per_rank = [r[name] for r in world4[1]]
    result_rank = per_rank[0]["result_rank"]
    assert result_rank == (2 if name.startswith("disaggregated") else 0)
    for index, reference in enumerate([from_prompts, from_prompts, from_embeddings]):
        got = torch.as_tensor(per_rank[result_rank]["outputs"][index])
        assert got.shape == reference.shape
        error = (got - reference).abs().max().item()
        assert error <= TOLERANCE, f"{name} call {index}: differs from single-process by {error}"


def _encode_on_rank_0(prompts):
    """[B, len(first prompt) + 1, 5]: the row count follows the prompts."""
    import torch.distributed as dist

    assert dist.get_rank() == 0, "only the source rank encodes"
    if prompts == ["too long"]:
        raise ValueError("prompt: too long")
    rows = len(prompts[0]) + 1
    return torch.arange(len(prompts) * rows * 5, dtype=torch.float32).reshape(len(prompts), rows, 5) / 7


def _share_rank(rank: int, world_size: int):
    from wan_dist.parallel.text import SharedText

    share = SharedText(src=0, dtype=torch.bfloat16)
    first = share(_encode_on_rank_0, ["a", "bb"])
    second = share(_encode_on_rank_0, ["ccc"])
    try:
        share(_encode_on_rank_0, ["too long"])
        error = None
    except ValueError as failure:
        error = str(failure)
    return [tuple(first.shape), tuple(second.shape)], second.float().numpy(), second.dtype, error


def test_shared_text_carries_any_shape_and_the_source_error_to_every_rank():
    results = run_local_group(_share_rank, 3)
    reference = (torch.arange(20, dtype=torch.float32).reshape(1, 4, 5) / 7).bfloat16().float().numpy()
    for shapes, embeds, dtype, error in results:
        assert shapes == [(2, 2, 5), (1, 4, 5)]
        assert (embeds == reference).all() and dtype == torch.bfloat16
        assert error == "prompt: too long"  # every rank raises the source's error: the group stays usable
