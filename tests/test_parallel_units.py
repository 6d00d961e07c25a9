"""In-process checks of the parallel layer: mesh layout and validation, sequence plans, the
log-sum-exp merge ring attention relies on, the traffic formula, and the deepspeed error."""

from __future__ import annotations

import sys

import pytest
import torch

from wan_dist.config import DiTConfig, ParallelConfig
from wan_dist.models.dit import WanDiT
from wan_dist.parallel.attention import _merge, attention_with_lse, make_deepspeed_attention
from wan_dist.parallel.comm import expected_step_bytes
from wan_dist.parallel.dit import parallelize_dit
from wan_dist.parallel.mesh import ParallelMesh, _group_ranks, coords_of, rank_of
from wan_dist.parallel.sequence import plan_sequence, shard_timestep, shard_tokens


def test_rank_order_is_data_major_and_ulysses_innermost():
    degrees = {"data": 2, "cfg": 2, "ring": 2, "ulysses": 2}
    assert rank_of({"data": 0, "cfg": 0, "ring": 0, "ulysses": 1}, degrees) == 1
    assert rank_of({"data": 0, "cfg": 0, "ring": 1, "ulysses": 0}, degrees) == 2
    assert rank_of({"data": 1, "cfg": 0, "ring": 0, "ulysses": 0}, degrees) == 8
    for rank in range(16):
        assert rank_of(coords_of(rank, degrees), degrees) == rank
    # rank 5 = data 0, cfg 1, ring 0, ulysses 1
    coords = coords_of(5, degrees)
    assert _group_ranks(coords, degrees, ("ulysses",)) == (4, 5)
    assert _group_ranks(coords, degrees, ("ring",)) == (5, 7)
    assert _group_ranks(coords, degrees, ("cfg",)) == (1, 5)
    assert _group_ranks(coords, degrees, ("ring", "ulysses")) == (4, 5, 6, 7)  # sequence shard = r * U + u


def test_mesh_refuses_bad_degrees_early():
    with pytest.raises(ValueError, match="2 ranks, but the process group has 1"):
        ParallelMesh.build(ParallelConfig(ulysses=2))
    with pytest.raises(ValueError, match="ulysses degree 4 must divide .*num_heads=2"):
        ParallelMesh.build(ParallelConfig(ulysses=4), num_heads=2)
    with pytest.raises(ValueError, match="cfg: must be 1 or 2"):
        ParallelConfig(cfg=3)
    mesh = ParallelMesh.build(ParallelConfig())
    assert mesh.sequence.size == 1 and mesh.axis("data").ranks == (0,)
    with pytest.raises(ValueError, match="unknown axis 'tensor'"):
        mesh.axis("tensor")


def test_sequence_plan_pads_the_end_and_keeps_global_positions():
    shards = [plan_sequence(45, 4, s) for s in range(4)]
    assert [(s.start, s.end, s.valid_tokens) for s in shards] == [(0, 12, 12), (12, 24, 12), (24, 36, 12),
                                                                  (36, 48, 9)]
    assert shards[0].key_length == 45 and plan_sequence(48, 4, 0).key_length is None
    x = torch.arange(2 * 45).reshape(2, 45)
    last = shard_tokens(x, shards[3], dim=1)
    assert last.shape == (2, 12) and last[:, :9].equal(x[:, 36:]) and not last[:, 9:].any()
    assert shard_timestep(torch.tensor([3, 4]), shards[3]).tolist() == [3, 4]  # per sample: unchanged
    assert shard_timestep(x, shards[1]).equal(x[:, 12:24])
    assert plan_sequence(1, 4, 3).valid_tokens == 0  # a one-token warm-up still plans (rank 3: padding only)


def test_log_sum_exp_merge_of_key_blocks_equals_full_attention():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 7, 3, 16, generator=generator) for _ in range(3))
    full, full_lse = attention_with_lse(q, k, v)
    expected = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)))
    assert torch.allclose(full, expected.transpose(1, 2), atol=1e-6)
    out = lse = None
    for block in (slice(4, 7), slice(0, 2), slice(2, 4)):  # any order, as blocks arrive around a ring
        out, lse = _merge(out, lse, *attention_with_lse(q, k[:, block], v[:, block]))
    assert torch.allclose(out, full, atol=1e-6) and torch.allclose(lse, full_lse, atol=1e-6)


def test_traffic_formula_by_hand():
    # U=2, R=2: Ls = ceil(45/4) = 12; batch 2, dim 64, 2 layers, fp32
    bytes_ = expected_step_bytes(batch=2, num_tokens=45, dim=64, num_layers=2, out_dim=64, latent_numel=100,
                                 ulysses=2, ring=2, cfg=2, itemsize=4, cfg_split=True)
    assert bytes_ == {"ulysses_all_to_all": 2 * 4 * 2 * 12 * 64 * 4 // 2, "ring_kv": 2 * 2 * 1 * 2 * 24 * 32 * 4,
                      "sequence_gather": 3 * 2 * 12 * 64 * 4, "cfg_gather": 400}
    single = expected_step_bytes(batch=2, num_tokens=45, dim=64, num_layers=2, out_dim=64, latent_numel=100,
                                 ulysses=1, ring=1, cfg=1, itemsize=4, cfg_split=False)
    assert single == {}


@torch.no_grad()
def test_parallelize_dit_on_one_rank_is_the_model():
    config = DiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_channels=16, out_channels=16, text_dim=8,
                       text_len=16)
    torch.manual_seed(0)
    model = WanDiT(config).eval()
    latents = torch.randn(2, 16, 3, 6, 10)
    context = torch.randn(2, 16, 8)
    context[:, 5:] = 0
    timestep = torch.randint(0, 1000, (2, 45))  # per token (TI2V-style)
    expected = model(latents, timestep, context)
    expert = parallelize_dit(model, ParallelMesh.build(ParallelConfig()))
    assert torch.allclose(expert(latents, timestep, context), expected, atol=1e-6)


def test_deepspeed_backend_without_deepspeed_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed -> ImportError
    mesh = ParallelMesh.build(ParallelConfig())
    with pytest.raises(ValueError, match="ulysses_backend='deepspeed' needs the deepspeed package"):
        make_deepspeed_attention(mesh, attention_with_lse)
