"""wan_dist.sampling against diffusers' schedulers and Wan pipelines (oracles nobody here wrote), published
Wan 2.2 facts, and hand-computed small cases."""

from __future__ import annotations

import io
import types

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKLWan,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.pipelines.wan.pipeline_wan_i2v import WanImageToVideoPipeline

from wan_dist.sampling import (
    Schedule,
    apply_cfg,
    diffusers_schedule,
    expert_schedule,
    guidance_from_reference,
    guidance_scale_for,
    i2v_condition,
    i2v_condition_video,
    i2v_mask,
    i2v_model_input,
    join_cfg_batch,
    latent_shape,
    make_schedule,
    make_solver,
    reference_schedule,
    select_expert,
    split_cfg_batch,
    ti2v_first_frame_mask,
    ti2v_impose_first_frame,
    ti2v_token_timesteps,
)

STEP_SHIFTS = [(1, 3.0), (2, 3.0), (3, 5.0), (10, 5.0), (40, 12.0), (50, 5.0)]
SHAPE = (2, 4, 3, 4, 6)  # [B, C, F, H, W]


# Oracles ------------------------------------------------------------------------------------------------

def _diffusers_unipc(shift: float, **kw) -> UniPCMultistepScheduler:
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
                                   num_train_timesteps=1000, **kw)


def _diffusers_dpm(shift: float) -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                       flow_shift=shift, algorithm_type="dpmsolver++", solver_order=2,
                                       num_train_timesteps=1000)


def _model_outputs(num_steps: int, dtype=torch.float32, seed: int = 0):
    """A fixed, deterministic fake model per step: v = 0.3 * x + w_i with random w_i."""
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(SHAPE, generator=gen, dtype=dtype) for _ in range(num_steps)]
    start = torch.randn(SHAPE, generator=gen, dtype=dtype)
    return start, [lambda x, w=w: 0.3 * x + w for w in weights]


def _run_ours(name: str, schedule: Schedule, start, models) -> list[torch.Tensor]:
    solver, x, out = make_solver(name, schedule), start, []
    for i in range(schedule.num_steps):
        x = solver.step(models[i](x), i, x)
        out.append(x)
    return out


def _run_diffusers(scheduler, start, models) -> list[torch.Tensor]:
    scheduler.set_begin_index(0)
    x, out = start, []
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(models[i](x), t, x, return_dict=False)[0]
        out.append(x)
    return out


def _assert_trajectories(ours, theirs, tol=1e-6):
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=lambda m, i=i: f"step {i}: {m}")


# Schedules ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_steps,shift", STEP_SHIFTS)
def test_diffusers_schedules_equal_diffusers_schedulers(num_steps, shift):
    unipc = _diffusers_unipc(shift)
    dpm = _diffusers_dpm(shift)
    euler = FlowMatchEulerDiscreteScheduler(shift=shift, num_train_timesteps=1000)
    for scheduler, solver in ((unipc, "unipc"), (dpm, "dpm++"), (euler, "euler")):
        scheduler.set_timesteps(num_steps)
        ours = diffusers_schedule(num_steps, shift, solver=solver)
        assert ours.sigmas.dtype == torch.float64 and ours.num_steps == num_steps
        assert torch.equal(ours.sigmas, scheduler.sigmas.to(torch.float64)), solver
        assert ours.timesteps.dtype == scheduler.timesteps.dtype, solver
        assert torch.equal(ours.timesteps, scheduler.timesteps), solver


@pytest.mark.parametrize("num_steps,shift", STEP_SHIFTS)
def test_reference_unipc_schedule(num_steps, shift):
    # The reference FlowUniPCMultistepScheduler.set_timesteps spaces linspace(sigma_max, 0, n+1)[:-1] with
    # sigma_max = float32(0.999), shifts in float64, truncates sigma*1000 to int64 and stores float32
    # sigmas plus a final 0. diffusers' UniPC given those unshifted sigmas performs the same steps.
    ours = reference_schedule(num_steps, shift)
    base = np.linspace(float(np.float32(0.999)), 0.0, num_steps + 1)[:-1]
    oracle = _diffusers_unipc(shift)
    oracle.set_timesteps(sigmas=base)
    assert torch.equal(ours.sigmas, oracle.sigmas.to(torch.float64))
    assert torch.equal(ours.timesteps, oracle.timesteps)
    first = np.float32(shift * 0.9990000128746033 / (1 + (shift - 1) * 0.9990000128746033))
    assert ours.sigmas[0].item() == float(first) and ours.sigmas[-1].item() == 0.0


def test_reference_schedule_published_values():
    t2v = reference_schedule(40, 12.0).timesteps.tolist()
    assert t2v[:5] == [999, 997, 995, 993, 990] and t2v[-3:] == [492, 386, 235]
    i2v = reference_schedule(40, 5.0).timesteps.tolist()
    assert i2v[:3] == [999, 994, 989] and i2v[-1] == 113


def test_reference_dpm_schedule_starts_at_one():
    # The reference's get_sampling_sigmas: linspace(1, 0, n+1)[:n], shifted; no 1e-6 nudge.
    ours = reference_schedule(10, 5.0, solver="dpm++")
    base = np.linspace(1, 0, 11)[:10]
    shifted = 5.0 * base / (1 + 4.0 * base)
    assert torch.equal(ours.sigmas[:-1], torch.from_numpy(shifted.astype(np.float32)).double())
    assert ours.timesteps.tolist() == [int(s * 1000) for s in shifted]
    assert ours.timesteps[0].item() == 1000 and ours.sigmas[0].item() == 1.0


def test_schedule_validation():
    with pytest.raises(ValueError, match="num_steps"):
        reference_schedule(0, 5.0)
    with pytest.raises(ValueError, match="shift"):
        diffusers_schedule(10, 0.0)
    with pytest.raises(ValueError, match="solver"):
        reference_schedule(10, 5.0, solver="ddim")
    with pytest.raises(ValueError, match="schedule"):
        make_schedule("other", 10, 5.0)
    assert torch.equal(make_schedule("diffusers", 7, 3.0).timesteps, diffusers_schedule(7, 3.0).timesteps)


# Solvers ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_steps,shift", STEP_SHIFTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unipc_equals_diffusers_unipc(num_steps, shift, dtype):
    start, models = _model_outputs(num_steps, dtype)
    oracle = _diffusers_unipc(shift)
    oracle.set_timesteps(num_steps)
    _assert_trajectories(_run_ours("unipc", diffusers_schedule(num_steps, shift), start, models),
                         _run_diffusers(oracle, start, models))


@pytest.mark.parametrize("num_steps,shift", STEP_SHIFTS)
def test_unipc_on_reference_schedule(num_steps, shift):
    # No reference code is installed. The oracle is diffusers' UniPCMultistepScheduler set to the reference
    # sigmas (set_timesteps(sigmas=...)). Its flow_prediction + predict_x0 + bh2 + lower_order_final path is
    # the algorithm the reference FlowUniPCMultistepScheduler ports from diffusers 0.31 (same x0 = x - sigma*v,
    # alpha = 1 - sigma, rk/b/rho construction, rho_p = 0.5 for order 2, corrector with the previous order),
    # read side by side; it is an independent implementation of that math, not ours.
    start, models = _model_outputs(num_steps, seed=1)
    oracle = _diffusers_unipc(shift)
    oracle.set_timesteps(sigmas=np.linspace(float(np.float32(0.999)), 0.0, num_steps + 1)[:-1])
    _assert_trajectories(_run_ours("unipc", reference_schedule(num_steps, shift), start, models),
                         _run_diffusers(oracle, start, models))


@pytest.mark.parametrize("num_steps,shift", STEP_SHIFTS)
def test_dpm_equals_diffusers_dpm(num_steps, shift):
    start, models = _model_outputs(num_steps, seed=2)
    oracle = _diffusers_dpm(shift)
    oracle.set_timesteps(num_steps)
    _assert_trajectories(_run_ours("dpm++", diffusers_schedule(num_steps, shift, solver="dpm++"), start, models),
                         _run_diffusers(oracle, start, models))


@pytest.mark.parametrize("num_steps,shift", [(2, 3.0), (10, 5.0), (40, 12.0)])
def test_dpm_on_reference_schedule(num_steps, shift):
    # Reference DPM++ starts at sigma = 1 (lambda = -inf); diffusers' DPM step math (which the reference's
    # FlowDPMSolverMultistepScheduler copies) run on the same sigmas is the oracle. Its set_timesteps takes
    # no custom sigmas, so they are set on the scheduler directly.
    schedule = reference_schedule(num_steps, shift, solver="dpm++")
    start, models = _model_outputs(num_steps, seed=3)
    oracle = _diffusers_dpm(shift)
    oracle.set_timesteps(num_steps)
    oracle.sigmas, oracle.timesteps = schedule.sigmas.to(torch.float32), schedule.timesteps
    ours = _run_ours("dpm++", schedule, start, models)
    assert all(torch.isfinite(x).all() for x in ours)
    _assert_trajectories(ours, _run_diffusers(oracle, start, models))


@pytest.mark.parametrize("num_steps,shift", STEP_SHIFTS)
def test_euler_equals_flow_match_euler(num_steps, shift):
    start, models = _model_outputs(num_steps, seed=4)
    oracle = FlowMatchEulerDiscreteScheduler(shift=shift)
    oracle.set_timesteps(num_steps)
    _assert_trajectories(_run_ours("euler", diffusers_schedule(num_steps, shift, solver="euler"), start, models),
                         _run_diffusers(oracle, start, models))
    # Given any other schedule's (already shifted) sigmas, FlowMatchEuler with shift=1 is the oracle.
    schedule = reference_schedule(num_steps, shift)
    oracle = FlowMatchEulerDiscreteScheduler(shift=1.0)
    oracle.set_timesteps(sigmas=schedule.sigmas[:-1].tolist())
    _assert_trajectories(_run_ours("euler", schedule, start, models), _run_diffusers(oracle, start, models))


@pytest.mark.parametrize("name,convention", [("unipc", "reference"), ("unipc", "diffusers"),
                                             ("dpm++", "reference"), ("dpm++", "diffusers"),
                                             ("euler", "diffusers")])
def test_solvers_recover_x0_of_exact_velocity(name, convention):
    # For one data point x0 the exact flow velocity is (x - x0) / sigma; every solver must land on x0.
    schedule = make_schedule(convention, 12, 5.0, solver=name)
    gen = torch.Generator().manual_seed(5)
    x0, x = torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=gen)
    solver = make_solver(name, schedule)
    for i in range(schedule.num_steps):
        x = solver.step((x - x0) / schedule.sigmas[i].item(), i, x)
    torch.testing.assert_close(x, x0, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("name", ["unipc", "dpm++", "euler"])
def test_state_hand_off_is_bit_identical(name):
    num_steps = 9
    schedule = diffusers_schedule(num_steps, 5.0, solver=name)
    start, models = _model_outputs(num_steps, seed=6)
    reference = _run_ours(name, schedule, start, models)[-1]
    for split in (0, 1, 2, 3, num_steps - 1, num_steps):
        first, x = make_solver(name, schedule), start
        for i in range(split):
            x = first.step(models[i](x), i, x)
        buffer = io.BytesIO()
        torch.save({"latents": x, "solver": first.state_dict()}, buffer)
        buffer.seek(0)
        payload = torch.load(buffer)
        second, x = make_solver(name, schedule), payload["latents"]
        second.load_state_dict(payload["solver"])
        for i in range(split, num_steps):
            x = second.step(models[i](x), i, x)
        assert torch.equal(x, reference), f"{name} split at {split}"


def test_advance_is_pure_and_steps_are_checked():
    schedule = reference_schedule(5, 5.0)
    solver = make_solver("unipc", schedule)
    start, models = _model_outputs(5)
    state = solver.get_state()
    out_a, next_a = solver.advance(state, models[0](start), 0, start)
    out_b, next_b = solver.advance(state, models[0](start), 0, start)
    assert state.step_index == 0 and state.history == () and state.last_sample is None
    assert torch.equal(out_a, out_b) and next_a.step_index == 1 and next_b.step_index == 1
    solver.set_state(next_a)
    with pytest.raises(ValueError, match="out of order"):
        solver.step(models[0](out_a), 0, out_a)
    with pytest.raises(ValueError, match="shape"):
        solver.step(torch.zeros(3), 1, out_a)
    with pytest.raises(ValueError, match="solver"):
        make_solver("heun", schedule)
    moved = next_a.to("cpu")
    assert moved.step_index == 1 and len(moved.history) == 1 and moved.last_sample is not None


@pytest.mark.parametrize("name", ["unipc", "dpm++", "euler"])
def test_solver_keeps_sample_dtype(name):
    schedule = diffusers_schedule(4, 5.0, solver=name)
    solver = make_solver(name, schedule)
    x = torch.randn(SHAPE).to(torch.bfloat16)
    for i in range(4):
        x = solver.step(torch.randn(SHAPE).to(torch.bfloat16), i, x)
        assert x.dtype == torch.bfloat16
    assert all(h.dtype == torch.float32 for h in solver.state.history)


# Experts and guidance -----------------------------------------------------------------------------------

def test_expert_split_published_facts():
    t2v = expert_schedule(reference_schedule(40, 12.0), 0.875)
    assert (t2v.count(0), t2v.count(1)) == (26, 14) and t2v == sorted(t2v)
    i2v = expert_schedule(reference_schedule(40, 5.0), 0.9)
    assert (i2v.count(0), i2v.count(1)) == (15, 25) and i2v == sorted(i2v)
    assert expert_schedule(reference_schedule(50, 5.0), None) == [0] * 50


def test_select_expert_boundary():
    assert select_expert(875, 0.875) == 0 and select_expert(874, 0.875) == 1
    assert select_expert(torch.tensor(900), 0.9) == 0 and select_expert(torch.tensor(899.5), 0.9) == 1
    assert select_expert(3, None) == 0
    with pytest.raises(ValueError):
        select_expert(torch.tensor([900, 800]), 0.9)


def test_guidance_scales():
    assert guidance_scale_for(0, 4.0, 3.0) == 4.0 and guidance_scale_for(1, 4.0, 3.0) == 3.0
    assert guidance_scale_for(1, 5.0, None) == 5.0
    with pytest.raises(ValueError):
        guidance_scale_for(2, 4.0, 3.0)
    # Reference guide_scale tuples are (low-noise, high-noise).
    assert guidance_from_reference((3.0, 4.0)) == (4.0, 3.0)
    assert guidance_from_reference(3.5) == (3.5, 3.5)


def test_apply_cfg_and_batched_equals_sequential():
    gen = torch.Generator().manual_seed(7)
    layer = torch.nn.Linear(8, 8)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(8, 8, generator=gen))

    def model(x, context):  # deterministic, rows independent
        return torch.tanh(layer(x) + context)

    x = torch.randn(3, 5, 8, generator=gen)
    cond, uncond = torch.randn(3, 1, 8, generator=gen), torch.randn(3, 1, 8, generator=gen)
    with torch.no_grad():
        sequential = apply_cfg(model(x, cond), model(x, uncond), 4.0)
        batched_out = model(join_cfg_batch(x, x), join_cfg_batch(cond, uncond))
        batched = apply_cfg(*split_cfg_batch(batched_out, 3), 4.0)
    torch.testing.assert_close(batched, sequential, atol=1e-6, rtol=1e-6)
    v_c, v_u = torch.tensor([2.0]), torch.tensor([1.0])
    assert apply_cfg(v_c, v_u, 3.0).item() == 4.0 and apply_cfg(v_c, v_u, 1.0).item() == 2.0
    with pytest.raises(ValueError, match="2\\*batch"):
        split_cfg_batch(batched_out, 2)


# Conditioning -------------------------------------------------------------------------------------------

def _prepare_latents(vae, *, temporal, spatial, expand, height, width, batch):
    """diffusers' WanImageToVideoPipeline.prepare_latents on a tiny random VAE (only the attributes it reads)."""
    host = types.SimpleNamespace(vae=vae.eval(), vae_scale_factor_temporal=temporal,
                                 vae_scale_factor_spatial=spatial,
                                 config=types.SimpleNamespace(expand_timesteps=expand))
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(8)) * 2 - 1
    with torch.no_grad():
        return WanImageToVideoPipeline.prepare_latents(host, image, batch, vae.config.z_dim, height, width, 9,
                                                       torch.float32, torch.device("cpu"),
                                                       torch.Generator().manual_seed(9), None)


def test_i2v_mask_and_condition_match_diffusers():
    vae = AutoencoderKLWan(base_dim=8, z_dim=16)
    latents, condition = _prepare_latents(vae, temporal=4, spatial=8, expand=False, height=16, width=24, batch=2)
    assert condition.shape == (2, 20, 3, 2, 3)
    mask = i2v_mask(3, 2, 3)
    assert mask.shape == (4, 3, 2, 3)
    assert torch.equal(mask[:, 0], torch.ones(4, 2, 3)) and torch.equal(mask[:, 1:], torch.zeros(4, 2, 2, 3))
    assert torch.equal(i2v_condition(condition[:, 4:], mask), condition)
    model_input = i2v_model_input(latents, condition)
    assert model_input.shape == (2, 36, 3, 2, 3)
    assert torch.equal(model_input[:, :16], latents) and torch.equal(model_input[:, 16:], condition)
    with pytest.raises(ValueError):
        i2v_condition(condition[:, 4:], i2v_mask(2, 2, 3))


@torch.no_grad()
def test_i2v_condition_video_and_image_to_video_are_what_diffusers_encodes():
    from wan_dist.sampling.denoise import ImageToVideo

    vae = AutoencoderKLWan(base_dim=8, z_dim=16).eval()
    _, condition = _prepare_latents(vae, temporal=4, spatial=8, expand=False, height=16, width=24, batch=1)
    image = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(8)) * 2 - 1  # _prepare_latents' image
    video = i2v_condition_video(image, 9)
    assert video.shape == (1, 3, 9, 16, 24)
    assert torch.equal(video[:, :, 0], image) and not video[:, :, 1:].any()  # the image, then black frames
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    torch.testing.assert_close((vae.encode(video).latent_dist.mode() - mean) / std, condition[:, 4:])
    assert torch.equal(ImageToVideo.from_image_latents(condition[:, 4:], temporal_stride=4).condition, condition)
    with pytest.raises(ValueError, match="first_frames"):
        i2v_condition_video(video, 9)


def test_ti2v_mask_matches_diffusers_and_impose():
    vae = AutoencoderKLWan(base_dim=8, decoder_base_dim=12, z_dim=48, in_channels=12, out_channels=12,
                           is_residual=True, patch_size=2, scale_factor_spatial=16,
                           latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
    latents, image_latent, diffusers_mask = _prepare_latents(vae, temporal=4, spatial=16, expand=True,
                                                             height=32, width=64, batch=2)
    mask = ti2v_first_frame_mask(latents.shape)
    assert torch.equal(mask, diffusers_mask)
    imposed = ti2v_impose_first_frame(latents, image_latent, mask)
    assert torch.equal(imposed[:, :, :1], image_latent) and torch.equal(imposed[:, :, 1:], latents[:, :, 1:])


def test_ti2v_token_timesteps_hand_computed():
    mask = ti2v_first_frame_mask((2, 48, 3, 4, 6))  # f=3, 2x3 patches of 2x2 per frame: 6 tokens per frame
    tokens = ti2v_token_timesteps(torch.tensor([999, 500]), mask, (1, 2, 2))
    assert tokens.shape == (2, 18) and tokens.dtype == torch.float32
    assert tokens[0].tolist() == [0.0] * 6 + [999.0] * 12 and tokens[1].tolist() == [0.0] * 6 + [500.0] * 12
    padded = ti2v_token_timesteps(875, mask, 2, seq_len=20)
    assert padded.tolist() == [[0.0] * 6 + [875.0] * 14]
    ones = torch.ones(1, 1, 2, 2, 2)
    assert ti2v_token_timesteps(7, ones, (2, 2)).tolist() == [[7.0, 7.0]]
    with pytest.raises(ValueError, match="seq_len"):
        ti2v_token_timesteps(875, mask, 2, seq_len=4)


def test_ti2v_diffusers_and_reference_loops_agree():
    # The reference imposes frame 0 on the latents after every step; diffusers only on the model input and
    # at the end. The model sees identical inputs either way and the solver is elementwise, so the final
    # latents are equal. The fake model mixes frames, as attention would.
    schedule = reference_schedule(6, 5.0)
    gen = torch.Generator().manual_seed(10)
    noise, image_latent = torch.randn(1, 4, 3, 2, 2, generator=gen), torch.randn(1, 4, 1, 2, 2, generator=gen)
    mask = ti2v_first_frame_mask(noise.shape)

    def model(x, t):
        return 0.5 * x + x.mean(dim=2, keepdim=True) * (t / 1000.0)

    ref_solver, diff_solver = make_solver("unipc", schedule), make_solver("unipc", schedule)
    ref = ti2v_impose_first_frame(noise, image_latent, mask)
    diff = noise
    for i, t in enumerate(schedule.timesteps.tolist()):
        ref = ti2v_impose_first_frame(ref_solver.step(model(ref, t), i, ref), image_latent, mask)
        diff = diff_solver.step(model(ti2v_impose_first_frame(diff, image_latent, mask), t), i, diff)
    assert torch.equal(ref, ti2v_impose_first_frame(diff, image_latent, mask))


def test_latent_shape():
    assert latent_shape(81, 720, 1280, z_dim=16, spatial_stride=8) == (16, 21, 90, 160)
    assert latent_shape(121, 704, 1280, z_dim=48, spatial_stride=16) == (48, 31, 44, 80)
    assert latent_shape(1, 64, 64, z_dim=16, spatial_stride=8) == (16, 1, 8, 8)
    with pytest.raises(ValueError, match="num_frames"):
        latent_shape(80, 720, 1280, z_dim=16, spatial_stride=8)
    with pytest.raises(ValueError, match="height"):
        latent_shape(81, 712, 1280, z_dim=16, spatial_stride=8)
    with pytest.raises(ValueError, match="width"):
        latent_shape(121, 704, 1296, z_dim=48, spatial_stride=16)
