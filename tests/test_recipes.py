"""Sampling recipes (issue 16 item 5): ``recipe="lightning"`` is Wan2.2-Lightning's 4-step sampling, through every
door as a request field, and a render with it is the render of the fields it stands for, at one DiT forward a step."""

from __future__ import annotations

import pytest
import torch

from wan_dist.engine.request import build_request
from wan_dist.engine.settings import RECIPES
from wan_dist.models.presets import PRESETS

def test_lightning_fills_what_a_request_leaves_out_and_a_given_field_wins():
    built = build_request({"prompt": "a kite", "recipe": "lightning", "seed": 1}, spec=PRESETS["t2v-a14b"])
    s = built.settings
    assert (s["num_inference_steps"], s["shift"], s["guidance_scale"], s["guidance_scale_2"], s["solver"],
            s["schedule"]) == (4, 5.0, 1.0, 1.0, "euler", "reference")
    assert s["boundary_ratio"] == PRESETS["t2v-a14b"].defaults.boundary_ratio  # the model's own boundary
    assert "recipe" not in built.request.to_dict()  # the resolved fields are what is stored and reproduces it
    given = build_request({"prompt": "a kite", "recipe": "lightning", "num_inference_steps": 6, "seed": 1},
                          spec=PRESETS["t2v-a14b"]).settings
    assert given["num_inference_steps"] == 6 and given["solver"] == "euler"
    one_expert = build_request({"prompt": "a kite", "recipe": "lightning", "seed": 1}, spec=PRESETS["ti2v-5b"])
    assert one_expert.settings["guidance_scale_2"] is None and one_expert.settings["guidance_scale"] == 1.0
    with pytest.raises(ValueError, match="recipe: must be one of"):
        build_request({"prompt": "a kite", "recipe": "turbo"}, spec=PRESETS["t2v-a14b"])


@pytest.mark.parametrize(("variant", "high_steps"), [("tiny", 2), ("tiny-i2v", 2)])
def test_lightning_steps_are_the_distilled_timesteps_two_per_expert_without_cfg(variant, high_steps,
                                                                                checkpoint_factory):
    from wan_dist.engine.loading import load_pipeline

    pipe = load_pipeline(str(checkpoint_factory(variant, "diffusers")), dtype=torch.float32)
    settings = pipe.resolve("a kite", image=None if variant == "tiny" else torch.zeros(3, 32, 32, dtype=torch.uint8),
                            recipe="lightning", seed=0)
    _, plans = pipe.step_plan(settings)
    distilled = [1000 * 5 * s / (1 + 4 * s) for s in (1.0, 0.75, 0.5, 0.25)]  # shift 5 on 4 uniform steps
    assert max(abs(float(p.timestep) - t) for p, t in zip(plans, distilled)) <= 1.0  # the reference's integers
    assert [p.expert for p in plans] == [0] * high_steps + [1] * (4 - high_steps)
    assert not settings.use_cfg


@torch.no_grad()
def test_a_lightning_render_is_the_render_of_its_fields_at_one_forward_per_step(checkpoint_factory):
    from wan_dist.engine.loading import load_pipeline

    pipe = load_pipeline(str(checkpoint_factory("tiny", "diffusers")), dtype=torch.float32)
    calls = []
    handles = [expert.register_forward_hook(lambda *_: calls.append(1)) for expert in pipe.experts]
    common = dict(height=32, width=32, num_frames=5, seed=3, output_type="latent")
    with_recipe = pipe.generate("a kite", recipe="lightning", **common).frames
    forwards = len(calls)
    spelled = pipe.generate("a kite", **{k: v for k, v in RECIPES["lightning"].items()}, **common).frames
    for handle in handles:
        handle.remove()
    assert forwards == 4
    torch.testing.assert_close(with_recipe, spelled, atol=0, rtol=0)
    default = pipe.generate("a kite", **common).frames
    assert (default - with_recipe).abs().max() > 1e-3
