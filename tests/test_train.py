"""wan_dist.train: the flow-matching recipe, a training smoke run whose loss must fall, resume from the saved
step, and the published checkpoint loading through load_pipeline. Small clips (32x32, 5 frames) keep it fast."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from wan_dist.config.train import FlowConfig, OptimConfig, TrainConfig, TrainDataConfig, train_config_from_dict
from wan_dist.train import flow

SMALL_DATA = TrainDataConfig(num_clips=4, heldout_clips=1, height=32, width=32, num_frames=5, fixed_batch=True)


def small_config(out, *, expert_steps: int, vae_steps: int = 2, stage: str = "all") -> TrainConfig:
    return TrainConfig(out=str(out), stage=stage, progress=False, data=SMALL_DATA,
                       vae=OptimConfig(steps=vae_steps, batch_size=1, lr=1e-3, checkpoint_every=2),
                       experts=OptimConfig(steps=expert_steps, batch_size=2, lr=1e-3, checkpoint_every=4),
                       flow=FlowConfig(cfg_dropout=0.0))


def _history(out, stage="experts"):
    from wan_dist.train.loop import STATE_FILE, latest_checkpoint

    state = torch.load(latest_checkpoint(out / "ray" / stage) / STATE_FILE, weights_only=False)
    return state


def test_training_grid_is_the_shifted_sampler_grid_and_experts_split_at_the_boundary():
    sigmas, timesteps = flow.training_grid(12.0)
    assert sigmas.shape == (1000,) and float(timesteps[0]) == 1000.0
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    base = 1 - torch.arange(1000, dtype=torch.float64) / 1000
    torch.testing.assert_close(sigmas, 12 * base / (1 + 11 * base))
    high = flow.expert_ids(timesteps, boundary_ratio=0.875, expert=0)
    low = flow.expert_ids(timesteps, boundary_ratio=0.875, expert=1)
    assert bool((timesteps[high] >= 875).all()) and bool((timesteps[low] < 875).all())
    assert sorted(high.tolist() + low.tolist()) == list(range(1000))
    # shifted sigma >= 0.875  <=>  unshifted s >= 0.875 / (12 - 11 * 0.875): the high expert owns ~63% of ids
    assert abs(len(high) / 1000 - (1 - 0.875 / 2.375)) < 2e-3
    picked, sigma, t = flow.sample_timesteps(high, sigmas, timesteps, 64, generator=torch.Generator().manual_seed(0))
    assert set(picked.tolist()) <= set(high.tolist()) and bool((t >= 875).all())
    torch.testing.assert_close(t, sigma * 1000)


def test_noised_sample_and_velocity_target_follow_rectified_flow():
    x0, noise = torch.randn(3, 4, 2, 2, 2), torch.randn(3, 4, 2, 2, 2)
    sigma = torch.tensor([0.0, 0.5, 1.0])
    x_t, v = flow.noised(x0, noise, sigma)
    torch.testing.assert_close(x_t[0], x0[0])
    torch.testing.assert_close(x_t[2], noise[2])
    torch.testing.assert_close(v, noise - x0)
    torch.testing.assert_close(x_t - sigma.view(-1, 1, 1, 1, 1) * v, x0)  # what the sampler inverts


def test_config_names_the_bad_field():
    with pytest.raises(ValueError, match="TrainConfig.stage"):
        TrainConfig(out="x", stage="dit")
    with pytest.raises(ValueError, match="FlowConfig.cfg_dropout"):
        FlowConfig(cfg_dropout=1.5)
    with pytest.raises(ValueError, match="TrainConfig.vae_frames: must be 1 \\+ 4k"):
        TrainConfig(out="x", vae_frames=4)
    with pytest.raises(ValueError, match=r"TrainConfig.vae: unknown field\(s\) \['step'\]"):
        train_config_from_dict({"out": "x", "vae": {"step": 3}})


def test_vae_trains_on_random_windows_of_consecutive_frames():
    from wan_dist.models.presets import get_preset
    from wan_dist.train.stages import StepDraws, VAEStage

    # clip c, frame f is filled with 10 * c + f, so a window's values name its clip and frames
    clips = np.zeros((3, 9, 4, 4, 3), np.uint8) + (10 * np.arange(3)[:, None] + np.arange(9)[None, :]).astype(np.uint8)[
        :, :, None, None, None]
    stage = VAEStage(get_preset("toy"), clips=clips, optim=OptimConfig(steps=1, batch_size=4), seed=0, frames=5)
    starts = set()
    for step in range(12):
        draws = StepDraws(seed=0, step=step, rank=0)
        window = stage.clips_for(draws, draws.generator(0))[:, :, 0, 0, 0].long()
        assert window.shape == (4, 5)
        first = window[:, 0]
        assert torch.equal(window, first[:, None] + torch.arange(5)), window  # consecutive frames of one clip
        assert bool(((first % 10) <= 4).all())  # the window lies inside the clip
        starts |= set((first % 10).tolist())
    assert starts == {0, 1, 2, 3, 4}  # every start is drawn
    fixed = StepDraws(seed=0, step=3, rank=0, fixed=True)
    assert (stage.clips_for(fixed, fixed.generator(0))[:, :, 0, 0, 0].long() % 10 == torch.arange(5)).all()
    with pytest.raises(ValueError, match="vae_frames: 13 is more than the clips' 9 frames"):
        VAEStage(get_preset("toy"), clips=clips, optim=OptimConfig(steps=1), seed=0, frames=13)


def test_loss_falls_resume_continues_and_the_checkpoint_loads(tmp_path):
    from wan_dist import load_pipeline
    from wan_dist.train import train

    torch.set_num_threads(1)
    out = tmp_path / "run"
    first = train(small_config(out, expert_steps=24), local=True)
    losses = [h[1] for h in _history(out)["history"]]
    assert len(losses) == 24
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses  # a fixed batch: the loss must fall
    assert first.summaries["vae"]["heldout_psnr_db"] > 0

    again = train(replace(small_config(out, expert_steps=30), stage="experts"), local=True)
    summary = json.loads((out / "experts_summary.json").read_text())
    assert (summary["start_step"], summary["step"]) == (24, 30)  # continued, not restarted
    state = _history(out)
    assert [h[1] for h in state["history"][:24]] == losses and len(state["history"]) == 30

    pipe = load_pipeline(again.model, dtype=torch.float32)
    assert pipe.spec.name == "toy"
    loaded = dict(pipe.experts[0].named_parameters())
    for name, tensor in state["modules"]["expert0"].items():
        torch.testing.assert_close(loaded[name], tensor, msg=name)  # the trained weights, not random ones
    frames = pipe.generate("A red ball moves left.", height=32, width=32, num_frames=5, num_inference_steps=1,
                           seed=0).frames
    assert frames.shape == (1, 5, 32, 32, 3) and frames.dtype.name == "uint8"


@pytest.mark.slow
def test_ray_train_resumes_a_local_run_from_its_step(tmp_path, ray_local):
    from wan_dist.train import train

    out = tmp_path / "run"
    train(small_config(out, expert_steps=4), local=True)
    result = train(replace(small_config(out, expert_steps=8), stage="experts"))
    assert (result.summaries["experts"]["start_step"], result.summaries["experts"]["step"]) == (4, 8)
    assert len(_history(out)["history"]) == 8 and (out / "experts_loss.png").stat().st_size > 1000
