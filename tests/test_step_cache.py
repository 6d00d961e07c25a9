"""Step caching (wan_dist/sampling/step_cache.py, engine/step_cache.py): the rules on hand-computed cases, a
skipped step's output against the DiT's own pieces, counts, retention, the switch off, and the front door."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from wan_dist.models.dit import WanDiT
from wan_dist.models.make_checkpoint import random_dit_tensors
from wan_dist.models.presets import get_preset
from wan_dist.sampling.denoise import TextToVideo, denoise, plan_steps, sequential_guided_prediction
from wan_dist.sampling.schedules import diffusers_schedule
from wan_dist.sampling.solvers import make_solver
from wan_dist.sampling.step_cache import (CacheProfile, CacheRecorder, ExpertProfile, StepCache, fit_profile,
                                          magcache_skips, polynomial, relative_l1, retained_steps)


def _plans(experts: list[int]):
    return [SimpleNamespace(index=i, expert=e, timestep=torch.tensor(1000.0 - 40 * i)) for i, e in enumerate(experts)]


# The rules, by hand ----------------------------------------------------------------------------------------

def test_retention_keeps_the_first_share_of_each_experts_segment_and_the_last_step():
    plans = _plans([0] * 13 + [1] * 7)
    assert retained_steps(plans, 0.2) == {0, 1, 2, 13, 14, 19}  # ceil(2.6) = 3, ceil(1.4) = 2, the last
    assert retained_steps(plans, 0.0) == {0, 13, 19}  # a segment's first step has no residual: always computed
    assert retained_steps(_plans([0] * 15), 0.2) == {0, 1, 2, 14}  # 0.2 * 15 is 3, not 4
    assert retained_steps(plans, 1.0) == set(range(20))
    with pytest.raises(ValueError, match="retention"):
        retained_steps(plans, 1.5)


def test_magcache_accumulates_ratio_error_and_caps_consecutive_skips():
    plans = _plans([0] * 7)
    ratios = [1.0, 0.99, 0.98, 1.0, 1.0, 1.0, 0.5]
    # step 1: acc 0.99, err 0.01 -> skip; step 2: acc 0.9702, err 0.0398 -> skip; step 3: 3rd in a row -> compute
    # step 4: err 0 -> skip; 5: skip; 6: retained (last)
    skips = magcache_skips(plans, ratios, threshold=0.05, max_skips=2, retained={0, 6})
    assert skips == [False, True, True, False, True, True, False]
    # a lower threshold: step 2's error 0.0398 is too much; after the compute at 2, step 3 starts afresh
    assert magcache_skips(plans, ratios, threshold=0.02, max_skips=2, retained={0, 6}) == [
        False, True, False, True, True, False, False]


def test_profile_ratio_is_exact_at_calibrated_steps_and_interpolates_the_log_rate_elsewhere():
    profile = ExpertProfile(timesteps=(900.0, 800.0), previous=(1000.0, 900.0), ratios=(0.81, 0.64))
    assert profile.ratio(900.0, 1000.0) == 0.81
    assert profile.ratio(800.0, 900.0) == 0.64
    # half the span at the same rate: the square root of the ratio
    assert profile.ratio(950.0, 1000.0) == pytest.approx(0.9)
    # between calibrated timesteps the log-rate is linear in t: at 850 halfway between both rates
    rate = (math.log(0.81) / 100 + math.log(0.64) / 100) / 2
    assert profile.ratio(850.0, 870.0) == pytest.approx(math.exp(rate * 20))
    assert profile.ratio(500.0, 600.0) == pytest.approx(0.64)  # beyond the ends: the end's rate
    whole = CacheProfile(variant="x", experts=(profile, profile))
    plans = [SimpleNamespace(index=i, expert=e, timestep=torch.tensor(t))
             for i, (e, t) in enumerate([(0, 1000.0), (0, 900.0), (1, 800.0), (1, 700.0)])]
    ratios = whole.step_ratios(plans)
    assert ratios[0] == 1.0 and ratios[2] == 1.0  # where each segment starts
    assert ratios[1] == 0.81 and ratios[3] == pytest.approx(0.64)


def test_profile_round_trips_through_json_and_refuses_another_format():
    profile = CacheProfile(variant="toy", experts=(ExpertProfile(timesteps=(1.0,), previous=(2.0,), ratios=(0.9,),
                                                                 teacache=(2.0, -0.1)),),
                           fingerprint="abc", calibration={"seed": 0})
    assert CacheProfile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile
    with pytest.raises(ValueError, match="format"):
        CacheProfile.from_dict({**profile.to_dict(), "format": 99})


def test_polynomial_and_relative_change():
    assert polynomial((2.0, -1.0, 3.0), 2.0) == 2 * 4 - 2 + 3
    assert relative_l1(torch.tensor([2.0, 4.0]), torch.tensor([1.0, 3.0])) == pytest.approx(2 / 4)


# A skipped step against the DiT's own pieces ---------------------------------------------------------------

@pytest.fixture(scope="module")
def dit():
    spec = get_preset("tiny")
    model = WanDiT(spec.dit)
    model.load_state_dict(dict(random_dit_tensors(spec, seed=3)))
    return model.eval()


def _blocks_residual(model, latents, t, context):
    state = model.embed(latents, t, context)
    out = model.run_blocks(state.tokens.clone(), state.e0, state.context, state.rope)
    return out - state.tokens


@torch.no_grad()
def test_a_skipped_step_adds_the_residual_of_the_last_computed_step_to_its_own_embedding(dit):
    generator = torch.Generator().manual_seed(0)
    context = torch.randn(1, 12, dit.config.text_dim, generator=generator)
    first = torch.randn(1, 16, 2, 4, 4, generator=generator)
    second = torch.randn(1, 16, 2, 4, 4, generator=generator)
    plans = _plans([0, 0, 0])
    cache = StepCache("magcache", plans, threshold=1.0, retention=0.0,
                      profile=CacheProfile(variant="tiny", experts=(ExpertProfile((), (), ()),)))
    t0, t1 = torch.tensor([960.0]), torch.tensor([920.0])
    cache.begin_step(plans[0])
    computed = cache.wrap(dit)(first, t0, context)
    assert torch.equal(computed, dit(first, t0, context))  # a computed step is the plain forward
    cache.begin_step(plans[1])
    skipped = cache.wrap(dit)(second, t1, context)
    # expected from the model's pieces: step 1's embedding + step 0's block residual, then step 1's head
    state = dit.embed(second, t1, context)
    tokens = state.tokens + _blocks_residual(dit, first, t0, context)
    expected = dit.unpatchify(dit.head(tokens, state.e), state.grid)
    torch.testing.assert_close(skipped, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(skipped, dit(second, t1, context), atol=1e-3)  # it did not run the blocks
    assert cache.decisions == {0: False, 1: True} and (cache.forwards, cache.forwards_skipped) == (1, 1)


@torch.no_grad()
def test_an_order_one_expert_extrapolates_its_last_two_residuals_to_the_skipped_timestep(dit):
    generator = torch.Generator().manual_seed(1)
    context = torch.randn(1, 12, dit.config.text_dim, generator=generator)
    inputs = [torch.randn(1, 16, 2, 4, 4, generator=generator) for _ in range(3)]
    times = [torch.tensor([960.0]), torch.tensor([930.0]), torch.tensor([880.0])]
    plans = [SimpleNamespace(index=i, expert=0, timestep=t[0]) for i, t in enumerate(times)]
    profile = CacheProfile(variant="tiny", experts=(ExpertProfile((), (), (), order=1),))
    cache = StepCache("magcache", plans, threshold=1.0, retention=0.0, profile=profile)
    cache._skip_at = {0: False, 1: False, 2: True}
    outputs = []
    for plan, x, t in zip(plans, inputs, times):
        cache.begin_step(plan)
        outputs.append(cache.wrap(dit)(x, t, context))
    first, second = (_blocks_residual(dit, x, t, context) for x, t in zip(inputs[:2], times[:2]))
    estimate = second + (second - first) * (880.0 - 930.0) / (930.0 - 960.0)
    state = dit.embed(inputs[2], times[2], context)
    expected = dit.unpatchify(dit.head(state.tokens + estimate, state.e), state.grid)
    torch.testing.assert_close(outputs[2], expected, rtol=0, atol=1e-5)
    assert cache.decisions == {0: False, 1: False, 2: True}


def test_calibration_picks_extrapolation_only_for_an_expert_whose_residual_it_predicts_better():
    def record(expert, index, reuse, extrapolated):
        return {"expert": expert, "index": index, "timestep": 900.0 - index, "previous": 901.0 - index, "call": 0,
                "ratio": 1.0, "residual_change": 0.1, "embedding_change": 0.1, "reuse_error": reuse,
                "extrapolation_error": extrapolated}

    records = [record(0, 1, 0.1, None), record(0, 2, 0.1, 0.2), record(0, 3, 0.1, 0.15),
               record(1, 5, 0.3, None), record(1, 6, 0.3, 0.1), record(1, 7, 0.4, 0.5)]
    profile = fit_profile(records, variant="x", num_experts=2)
    assert [e.order for e in profile.experts] == [0, 1]


@torch.no_grad()
def test_teacache_skips_while_the_accumulated_embedding_change_stays_under_the_threshold(dit):
    schedule = diffusers_schedule(8, 5.0, solver="euler")
    plans = plan_steps(schedule.timesteps, boundary_ratio=None, guidance_scale=1.0, guidance_scale_2=None)
    coefficients = (0.1, 0.005)  # random weights: the embedding changes by 0.8 to 2 per step
    threshold = 0.25
    # the rule computed here from the time embedding of each step's timestep
    expected, previous, accumulated = [], None, 0.0
    retained = retained_steps(plans, 0.2)
    for plan in plans:
        e0 = dit.embed_time(plan.timestep.reshape(1), 1)[1].reshape(-1)
        if previous is None or plan.index in retained:
            skip, accumulated = False, 0.0
        else:
            accumulated += max(coefficients[0] * relative_l1(e0, previous) + coefficients[1], 0.0)
            skip = accumulated < threshold
            accumulated = accumulated if skip else 0.0
        previous = e0
        expected.append(skip)
    assert any(expected) and not all(expected)
    profile = CacheProfile(variant="tiny", experts=(ExpertProfile((), (), (), teacache=coefficients),))
    cache = StepCache("teacache", plans, threshold=threshold, retention=0.2, profile=profile)
    _run(dit, plans, schedule, cache)
    assert [cache.decisions[p.index] for p in plans] == expected


def _run(dit, plans, schedule, cache, *, guidance: float = 1.0, on_step=None, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 16, 2, 4, 4, generator=generator)
    context = torch.randn(2, 12, dit.config.text_dim, generator=generator)
    negative = torch.randn(2, 12, dit.config.text_dim, generator=generator) if guidance != 1.0 else None
    plans = [SimpleNamespace(index=p.index, timestep=p.timestep, expert=p.expert, guidance_scale=guidance)
             for p in plans]

    def expert(x, t, c, **kwargs):
        return dit(x, t, c, **kwargs).float()

    return denoise(latents, steps=plans, solver=make_solver("euler", schedule), experts=[expert, expert],
                   context=context, negative_context=negative, conditioning=TextToVideo(),
                   predict=sequential_guided_prediction, on_step=on_step, cache=cache)


def _two_expert_plans(steps: int = 10):
    schedule = diffusers_schedule(steps, 3.0, solver="euler")
    return schedule, plan_steps(schedule.timesteps, boundary_ratio=0.6, guidance_scale=3.0, guidance_scale_2=2.0)


def _flat_profile(num_experts: int = 2) -> CacheProfile:
    flat = ExpertProfile(timesteps=(500.0,), previous=(600.0,), ratios=(1.0,))
    return CacheProfile(variant="tiny", experts=(flat,) * num_experts, max_skips=3)


@torch.no_grad()
def test_counts_retention_and_step_callbacks_on_a_cached_two_expert_cfg_render(dit):
    schedule, plans = _two_expert_plans()
    experts = [p.expert for p in plans]
    assert 0 < experts.count(1) < len(plans)  # both experts serve
    cache = StepCache("magcache", plans, threshold=1.0, retention=0.25, profile=_flat_profile())
    seen = []
    estimates = []
    _run(dit, plans, schedule, cache, guidance=3.0,
         on_step=lambda plan, latents, estimate: (seen.append(plan.index), estimates.append(estimate())))
    assert seen == list(range(len(plans)))  # every step reports, skipped or not
    assert all(torch.isfinite(e).all() for e in estimates)
    stats = cache.stats()
    skipped = stats["skipped_steps"]
    assert skipped and not set(skipped) & cache.retained
    # a flat profile never accumulates error: only the cap of 3 in a row forces a compute
    assert stats["forwards_skipped"] == 2 * len(skipped)  # cond and uncond of each skipped step
    assert stats["forwards"] + stats["forwards_skipped"] == 2 * len(plans)
    assert stats["steps"] == len(plans)
    boundary = experts.index(1)
    assert boundary in cache.retained and boundary not in skipped  # the low-noise expert starts afresh


@torch.no_grad()
def test_every_step_computed_through_the_cache_is_bit_identical_to_no_cache(dit):
    schedule, plans = _two_expert_plans(6)
    plain = _run(dit, plans, schedule, None, guidance=3.0)
    through = _run(dit, plans, schedule, StepCache("teacache", plans, threshold=0.1, retention=1.0), guidance=3.0)
    assert torch.equal(plain, through)


@torch.no_grad()
def test_a_skip_without_a_residual_of_that_call_is_an_error_not_a_silent_forward(dit):
    plans = _plans([0, 0])
    cache = StepCache("magcache", plans, threshold=1.0, retention=0.0, profile=_flat_profile(1))
    cache._skip_at[0] = True  # a broken schedule: skip the segment's first step
    cache.begin_step(plans[0])
    with pytest.raises(RuntimeError, match="no residual"):
        cache.wrap(dit)(torch.zeros(1, 16, 2, 4, 4), torch.tensor([900.0]), torch.zeros(1, 4, dit.config.text_dim))


def test_magcache_without_a_profile_is_refused():
    with pytest.raises(ValueError, match="calibrat"):
        StepCache("magcache", _plans([0, 0]), threshold=0.1, retention=0.2)


@torch.no_grad()
def test_the_recorder_fits_the_ratios_it_measured(dit):
    schedule, plans = _two_expert_plans(6)
    recorder = CacheRecorder()
    _run(dit, plans, schedule, recorder, guidance=3.0)
    per_step = {}
    for record in recorder.records:
        per_step.setdefault(record["index"], []).append(record["ratio"])
    # every step with an earlier step of its expert, cond and uncond
    assert sorted(per_step) == [p.index for p, b in zip(plans[1:], plans) if p.expert == b.expert]
    assert all(len(v) == 2 for v in per_step.values())
    profile = fit_profile(recorder.records, variant="tiny", num_experts=2)
    ratios = profile.step_ratios(plans)
    for index, values in per_step.items():
        assert ratios[index] == pytest.approx(sum(values) / 2)


# Through the pipeline and the front door ---------------------------------------------------------------------

TINY_RENDER = dict(prompt="a red fox in the snow", height=32, width=32, num_frames=5, num_inference_steps=8,
                   seed=1, output_type="latent")


@pytest.fixture(scope="module")
def tiny_pipe(checkpoint_factory):
    from wan_dist.engine.pipeline import load_local_pipeline

    return load_local_pipeline(checkpoint_factory("tiny", "diffusers"), dtype=torch.float32)


@pytest.fixture(scope="module")
def tiny_profile(tiny_pipe):
    from wan_dist.engine.step_cache import calibrate

    return calibrate(tiny_pipe, ["a red fox in the snow", "a blue bird"], seed=0,
                     **{k: TINY_RENDER[k] for k in ("height", "width", "num_frames", "num_inference_steps")})


def test_calibration_measures_every_step_after_each_segments_first(tiny_pipe, tiny_profile):
    settings = tiny_pipe.resolve(**TINY_RENDER)
    _, plans = tiny_pipe.step_plan(settings)
    runs = [sum(1 for p in plans if p.expert == e) for e in (0, 1)]
    assert [len(e.ratios) for e in tiny_profile.experts] == [n - 1 for n in runs]
    assert tiny_profile.calibration["num_inference_steps"] == 8 and tiny_profile.variant == "tiny"
    assert all(0.2 < r < 5 for e in tiny_profile.experts for r in e.ratios)


@torch.no_grad()
def test_cache_off_renders_what_a_render_without_the_fields_renders_and_records_nothing(tiny_pipe):
    plain = tiny_pipe.generate(**TINY_RENDER)
    off = tiny_pipe.generate(**TINY_RENDER, cache="off")
    assert torch.equal(plain.frames, off.frames) and off.step_cache is None and off.settings.cache == "off"
    assert off.settings.cache_threshold is None and off.settings.cache_retention is None


@torch.no_grad()
def test_a_cached_render_skips_steps_reports_them_and_calls_back_on_each(tiny_pipe, tiny_profile):
    tiny_pipe.cache_profile = tiny_profile
    try:
        plain = tiny_pipe.generate(**TINY_RENDER)
        steps = []
        out = tiny_pipe.generate(**TINY_RENDER, cache="magcache", cache_threshold=0.5, cache_retention=0.25,
                                 callback=lambda i, n, latents, estimate: steps.append((i, n, estimate().shape)))
    finally:
        tiny_pipe.cache_profile = None
    record = out.step_cache
    assert record["mode"] == "magcache" and record["threshold"] == 0.5 and record["retention"] == 0.25
    assert record["skipped_steps"] and record["forwards_skipped"] == 2 * len(record["skipped_steps"])
    assert record["forwards"] + record["forwards_skipped"] == 2 * 8
    assert [i for i, _, _ in steps] == list(range(8)) and {n for _, n, _ in steps} == {8}
    assert all(shape == out.frames.shape for _, _, shape in steps)
    assert not torch.equal(out.frames, plain.frames)
    assert (out.frames - plain.frames).abs().mean() < 0.5 * plain.frames.abs().mean()


def test_magcache_without_a_profile_names_the_calibration_command_before_any_work(tiny_pipe):
    with pytest.raises(ValueError, match="wan-dist calibrate-cache"):
        tiny_pipe.resolve(**TINY_RENDER, cache="magcache")  # every rank checks a request this way first
    with pytest.raises(ValueError, match="wan-dist calibrate-cache"):
        tiny_pipe.generate(**TINY_RENDER, cache="magcache")


def test_teacache_runs_without_a_profile(tiny_pipe):
    out = tiny_pipe.generate(**TINY_RENDER, cache="teacache", cache_threshold=0.5)
    assert out.step_cache["mode"] == "teacache" and out.step_cache["steps"] == 8


def test_a_profile_is_read_from_beside_the_checkpoint_and_refused_for_other_weights(tiny_pipe, tiny_profile, tmp_path):
    import dataclasses

    from wan_dist.engine.step_cache import profile_path, read_profile, write_profile

    info = tiny_pipe.info
    path = tmp_path / "step_cache.json"
    write_profile(tiny_profile, path)
    assert read_profile(info, path) == tiny_profile
    assert read_profile(dataclasses.replace(info, root=tmp_path / "none")) is None
    assert profile_path(info) == info.root / "step_cache.json"
    write_profile(dataclasses.replace(tiny_profile, fingerprint="0" * 16), path)
    with pytest.raises(ValueError, match="other weights"):
        read_profile(info, path)
    write_profile(dataclasses.replace(tiny_profile, variant="toy"), path)
    with pytest.raises(ValueError, match="profile of toy"):
        read_profile(info, path)


def test_the_shipped_toy_profile_matches_the_shipped_weights():
    from wan_dist.engine.step_cache import read_profile
    from wan_dist.models.checkpoint import detect_checkpoint
    from wan_dist.models.shipped import SHIPPED_DIR

    if not (SHIPPED_DIR / "toy" / "model_index.json").exists():
        pytest.skip("this checkout ships no toy weights")
    profile = read_profile(detect_checkpoint(SHIPPED_DIR / "toy"))
    assert profile is not None and profile.variant == "toy" and len(profile.experts) == 2
    # toy's 20 steps at shift 12 and boundary 0.875: 13 high-noise, 7 low-noise steps
    assert [len(e.ratios) for e in profile.experts] == [12, 6]


def test_the_front_door_fills_the_cache_defaults_and_refuses_settings_without_a_cache():
    from wan_dist.engine.request import RenderRequest, RequestError, build_request
    from wan_dist.models.presets import PRESETS
    from wan_dist.sampling.step_cache import DEFAULT_RETENTION, DEFAULT_THRESHOLDS

    built = build_request({"prompt": "a kite", "seed": 1, "cache": "magcache"}, spec=PRESETS["tiny"])
    sampling = built.request.sampling
    assert (sampling.cache, sampling.cache_threshold, sampling.cache_retention) == (
        "magcache", DEFAULT_THRESHOLDS["magcache"], DEFAULT_RETENTION)
    assert built.settings["cache"] == "magcache"
    plain = build_request({"prompt": "a kite", "seed": 1}, spec=PRESETS["tiny"]).request
    assert (plain.sampling.cache, plain.sampling.cache_threshold) == ("off", None)
    with pytest.raises(RequestError) as caught:
        build_request({"prompt": "a kite", "seed": 1, "cache_threshold": 0.1}, spec=PRESETS["tiny"])
    assert caught.value.field == "cache_threshold" and "cache=magcache" in caught.value.reason
    # a sidecar written before step caching existed still reproduces its clip (no cache fields in its settings)
    settings = {k: v for k, v in built.settings.items() if not k.startswith("cache")}
    sidecar = {"settings": {**settings, "prompts": ["a kite"], "negative_prompts": ["x"]}, "fps": 16,
               "request": {"prompt": "a kite"}}
    assert RenderRequest.from_sidecar(sidecar).sampling.cache == "off"
    cached = {**sidecar, "settings": {**sidecar["settings"], **{k: built.settings[k] for k in
                                                                ("cache", "cache_threshold", "cache_retention")}}}
    assert RenderRequest.from_sidecar(cached).sampling == sampling


@pytest.mark.slow
def test_the_calibrate_cache_command_writes_a_profile_the_pipeline_reads(checkpoint_factory, tmp_path):
    import os
    import subprocess
    import sys

    from wan_dist.engine.step_cache import read_profile
    from wan_dist.models.checkpoint import detect_checkpoint

    folder = checkpoint_factory("tiny", "diffusers")
    out = tmp_path / "profile.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "wan_dist.cli.main", "calibrate-cache", f"model={folder}",
                           "prompts=[a red fox, a blue bird]", "num_inference_steps=6", "height=32", "width=32",
                           "num_frames=5", f"out={out}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert str(out) in done.stdout
    profile = read_profile(detect_checkpoint(folder), out)
    assert profile.calibration["prompts"] == ["a red fox", "a blue bird"]
    assert profile.calibration["num_inference_steps"] == 6


def test_a_published_clip_records_the_cache_in_its_sidecar_and_reproduces_from_it(tiny_pipe, tmp_path):
    from wan_dist.config import OutputConfig, SamplingConfig
    from wan_dist.engine.render import RenderRequest, render

    sampling = SamplingConfig(num_inference_steps=6, cache="teacache", cache_threshold=0.5, cache_retention=0.2)
    request = RenderRequest(prompt="a red fox in the snow", height=32, width=32, num_frames=5, fps=8, seed=3,
                            sampling=sampling, name="fox")
    result = render(tiny_pipe, request, OutputConfig(uri=str(tmp_path)))
    assert result.status == "completed", result.error
    sidecar = json.loads((tmp_path / "fox" / "clip.json").read_text())
    assert sidecar["step_cache"] == result.step_cache and result.step_cache["mode"] == "teacache"
    assert sidecar["settings"]["cache"] == "teacache" and sidecar["request"]["cache_threshold"] == 0.5
    again = RenderRequest.from_sidecar(sidecar).sampling
    assert (again.cache, again.cache_threshold, again.cache_retention) == ("teacache", 0.5, 0.2)
