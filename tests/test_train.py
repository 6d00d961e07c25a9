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
    return TrainConfig(out=str(out), stage=stage, progress=False, data=SMALL_DATA, vae_frames=5,
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


def test_vae_trains_on_random_windows_of_consecutive_frames_and_random_crops():
    from wan_dist.models.presets import get_preset
    from wan_dist.train.stages import StepDraws, VAEStage

    # channel 0 of clip c, frame f holds 10 * c + f; channels 1 and 2 hold the pixel's row and column
    clips = np.zeros((3, 9, 24, 24, 3), np.uint8)
    clips[..., 0] = (10 * np.arange(3)[:, None] + np.arange(9)[None, :])[:, :, None, None]
    clips[..., 1] = np.arange(24)[None, None, :, None]
    clips[..., 2] = np.arange(24)[None, None, None, :]
    stage = VAEStage(get_preset("toy"), clips=clips, optim=OptimConfig(steps=1, batch_size=4), seed=0, frames=5,
                     crop=16)
    starts, corners = set(), set()
    for step in range(16):
        draws = StepDraws(seed=0, step=step, rank=0)
        window = stage.clips_for(draws, draws.generator(0)).long()
        assert window.shape == (4, 5, 16, 16, 3)
        first = window[:, 0, 0, 0, 0]
        assert torch.equal(window[:, :, 0, 0, 0], first[:, None] + torch.arange(5))  # consecutive frames of a clip
        assert bool(((first % 10) <= 4).all())  # the window lies inside the clip
        top, left = window[:, 0, 0, 0, 1], window[:, 0, 0, 0, 2]
        assert torch.equal(window[:, 0, :, 0, 1], top[:, None] + torch.arange(16))  # a square of whole rows
        assert torch.equal(window[:, 0, 0, :, 2], left[:, None] + torch.arange(16))  # ... and columns
        assert bool(((top <= 8) & (left <= 8)).all())
        starts |= set((first % 10).tolist())
        corners |= set(zip(top.tolist(), left.tolist()))
    assert starts == {0, 1, 2, 3, 4} and len(corners) > 20  # every start is drawn, and many corners
    fixed = StepDraws(seed=0, step=3, rank=0, fixed=True)
    same = stage.clips_for(fixed, fixed.generator(0)).long()
    assert (same[:, :, 0, 0, 0] % 10 == torch.arange(5)).all() and int(same[..., 1:].min()) == 0
    with pytest.raises(ValueError, match="vae_frames: 13 is more than the clips' 9 frames"):
        VAEStage(get_preset("toy"), clips=clips, optim=OptimConfig(steps=1), seed=0, frames=13)
    with pytest.raises(ValueError, match="vae_crop: 12 must be a multiple of the VAE's stride 8"):
        VAEStage(get_preset("toy"), clips=clips, optim=OptimConfig(steps=1), seed=0, crop=12)


def test_a_decoder_only_run_keeps_the_encoder_and_its_latent_statistics(tmp_path):
    from wan_dist.train import train
    from wan_dist.train.loop import STATE_FILE, latest_checkpoint
    from wan_dist.train.stages import ENCODER_PARTS

    torch.set_num_threads(1)
    out = tmp_path / "run"
    config = replace(small_config(out, expert_steps=0, vae_steps=2, stage="vae"),
                     vae=OptimConfig(steps=2, batch_size=1, lr=1e-2, checkpoint_every=2))
    train(config, local=True)
    before = torch.load(latest_checkpoint(out / "ray" / "vae") / STATE_FILE, weights_only=False)["modules"]["vae"]
    stats = json.loads((out / "vae" / "config.json").read_text())["latents_mean"]
    train(replace(config, vae=replace(config.vae, steps=4), vae_decoder_only=True), local=True)
    after = torch.load(latest_checkpoint(out / "ray" / "vae") / STATE_FILE, weights_only=False)["modules"]["vae"]
    encoder = [k for k in before if k.split(".")[0] in ENCODER_PARTS]
    decoder = [k for k in before if k.split(".")[0] == "decoder"]
    assert encoder and decoder
    assert all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in decoder)  # ... while the decoder trained
    assert json.loads((out / "vae" / "config.json").read_text())["latents_mean"] == stats


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
    # checkpoints at steps 4, 8, ..., 24, 28, 30: the newest keep_checkpoints (2) stay, the rest are deleted
    kept = sorted(p.name for p in (out / "ray" / "experts").iterdir())
    assert kept == ["checkpoint_local_00000028", "checkpoint_local_00000030"], kept

    pipe = load_pipeline(again.model, dtype=torch.float32)
    assert pipe.spec.name == "toy"
    loaded = dict(pipe.experts[0].named_parameters())
    for name, tensor in state["modules"]["expert0"].items():
        torch.testing.assert_close(loaded[name], tensor, msg=name)  # the trained weights, not random ones
    frames = pipe.generate("A red ball moves left.", height=32, width=32, num_frames=5, num_inference_steps=1,
                           seed=0).frames
    assert frames.shape == (1, 5, 32, 32, 3) and frames.dtype.name == "uint8"


def _ema_config(out, vae_from, *, steps: int) -> TrainConfig:
    config = replace(small_config(out, expert_steps=steps, stage="experts"), vae_from=str(vae_from), keep_checkpoints=8)
    return replace(config, experts=replace(config.experts, ema_decay=0.2, checkpoint_every=1))


def test_ema_is_the_moving_average_of_each_steps_weights_resumes_and_is_what_gets_published(tmp_path, toy_vae):
    from wan_dist import load_pipeline
    from wan_dist.train import train
    from wan_dist.train.loop import STATE_FILE

    torch.set_num_threads(1)
    out = tmp_path / "run"
    train(_ema_config(out, toy_vae, steps=2), local=True)
    result = train(_ema_config(out, toy_vae, steps=4), local=True)  # resumes at step 2, averager included
    states = [torch.load(out / "ray" / "experts" / f"checkpoint_local_{n:08d}" / STATE_FILE, weights_only=False)
              for n in (1, 2, 3, 4)]
    # the average, derived here from every step's weights: e_1 = w_1; e_n = d_n e_(n-1) + (1 - d_n) w_n with
    # d_n = min(ema_decay, n / (9 + n)) (diffusers' warm-up): 2/11, then the cap 0.2
    for expert in ("expert0", "expert1"):
        weights = [state["modules"][expert] for state in states]
        average = dict(weights[0])
        for n, w in enumerate(weights[1:], start=2):
            d = min(0.2, n / (9 + n))
            average = {k: d * average[k] + (1 - d) * w[k] for k in w}
        for k, tensor in states[-1]["ema_modules"][expert].items():
            torch.testing.assert_close(tensor, average[k], msg=k)
        assert any((states[-1]["ema_modules"][expert][k] - weights[-1][k]).abs().max() > 1e-6 for k in weights[-1])

    loaded = dict(load_pipeline(result.model, dtype=torch.float32).experts[1].named_parameters())
    for name, tensor in states[-1]["ema_modules"]["expert1"].items():
        torch.testing.assert_close(loaded[name], tensor, msg=name)  # the average is published, not the weights
    with pytest.raises(ValueError, match="OptimConfig.ema_decay"):
        OptimConfig(steps=1, ema_decay=1.0)


def test_the_latent_cache_of_one_tokenizer_is_not_read_with_another(tmp_path, toy_vae):
    """A run given another tokenizer (e.g. the shipped toy's, copied into <out>/data/tokenizer to share its text
    encoder) encodes its captions again: the cached contexts are keyed by the tokenizer's files."""
    import shutil
    from pathlib import Path

    from safetensors.torch import load_file

    from wan_dist.models.presets import get_preset
    from wan_dist.train import train
    from wan_dist.train.data import cached_clips
    from wan_dist.train.run import text_encoder_for

    torch.set_num_threads(1)
    out = tmp_path / "run"
    config = _ema_config(out, toy_vae, steps=1)
    train(config, local=True)
    [first] = (out / "data").glob("latents-*.safetensors")
    folder = out / "data" / "tokenizer"
    shipped = Path(__file__).parents[1] / "wan_dist" / "weights" / "toy" / "tokenizer"
    assert (folder / "tokenizer.json").read_bytes() != (shipped / "tokenizer.json").read_bytes()
    shutil.rmtree(folder)
    shutil.copytree(shipped, folder)
    train(replace(config, experts=replace(config.experts, steps=2)), local=True)
    [second] = set((out / "data").glob("latents-*.safetensors")) - {first}
    _, captions = cached_clips(out, SMALL_DATA, get_preset("toy"), split="train")
    encoder = text_encoder_for(get_preset("toy"), (), folder, seed=config.seed)
    context = load_file(str(second))["context"]
    expected = encoder.encode(captions, dtype=torch.float32)[:, :context.shape[1]]
    torch.testing.assert_close(context, expected)  # the new tokenizer's contexts
    assert not torch.equal(load_file(str(first))["context"][:, :8], context[:, :8])


def test_train_text_trains_the_text_encoder_with_the_experts_and_publishes_its_average(tmp_path, toy_vae):
    from wan_dist import load_pipeline
    from wan_dist.models.presets import get_preset
    from wan_dist.models.text_encoder import embed_tokens
    from wan_dist.train import train
    from wan_dist.train.data import cached_clips
    from wan_dist.train.loop import trained_modules
    from wan_dist.train.run import text_encoder_for

    torch.set_num_threads(1)
    out = tmp_path / "run"
    config = replace(_ema_config(out, toy_vae, steps=4), train_text=True)
    result = train(config, local=True)
    state = _history(out)
    frozen = text_encoder_for(get_preset("toy"), (), out / "data" / "tokenizer", seed=config.seed)
    trained = trained_modules(state)["text_encoder"]
    assert set(trained) == set(frozen.model.state_dict())
    assert any((trained[k] - v).abs().max() > 1e-6 for k, v in frozen.model.state_dict().items())  # it learned
    # the tied embedding is averaged under both of its names
    torch.testing.assert_close(trained["shared.weight"], trained["encoder.embed_tokens.weight"], rtol=0, atol=0)

    pipe = load_pipeline(result.model, dtype=torch.float32)
    loaded = pipe.text_encoder.model.state_dict()
    for name, tensor in trained.items():
        torch.testing.assert_close(loaded[name], tensor, msg=name)  # published: the trained (averaged) encoder
    _, captions = cached_clips(out, SMALL_DATA, get_preset("toy"), split="train")
    ids, mask = pipe.text_encoder.tokenize(captions[:2])
    frozen.model.load_state_dict(trained)
    rendered = pipe.encode_prompt(captions[:2]).float()
    torch.testing.assert_close(rendered, embed_tokens(frozen.model, ids, mask))
    # the trainer's context of those captions (tokens cut to the longest caption, then padded) is the pipeline's
    from safetensors.torch import load_file

    from wan_dist.train.run import _caption_tokens
    from wan_dist.train.stages import ExpertStage, StepDraws

    [cache] = (out / "data").glob("latents-*.safetensors")
    stage = ExpertStage(get_preset("toy"), tensors=load_file(str(cache)), optim=config.experts, flow_config=config.flow,
                        seed=0, text=_caption_tokens(config, get_preset("toy")))
    batch = stage.batch(0, StepDraws(seed=0, step=0, rank=0, fixed=True), text_encoder=frozen.model)
    assert batch.index.tolist() == [0, 1]
    torch.testing.assert_close(batch.context, rendered, rtol=0, atol=1e-5)

    plain = tmp_path / "plain"
    train(_ema_config(plain, toy_vae, steps=2), local=True)
    with pytest.raises(ValueError, match="resume: .* has no 'text_encoder' weights"):
        train(replace(_ema_config(plain, toy_vae, steps=4), train_text=True), local=True)


@pytest.mark.slow
def test_ray_train_resumes_a_local_run_from_its_step(tmp_path, ray_local):
    from wan_dist.train import train

    out = tmp_path / "run"
    train(small_config(out, expert_steps=4), local=True)
    result = train(replace(small_config(out, expert_steps=16), stage="experts"))
    assert (result.summaries["experts"]["start_step"], result.summaries["experts"]["step"]) == (4, 16)
    assert len(_history(out)["history"]) == 16 and (out / "experts_loss.png").stat().st_size > 1000
    # Ray Train checkpointed steps 8, 12 and 16 (checkpoint_every=4) and keeps the newest keep_checkpoints (2)
    from wan_dist.train.loop import STATE_FILE

    ray_kept = sorted(json.loads((p.parent / "meta.json").read_text())["step"]
                      for p in (out / "ray" / "experts").rglob(STATE_FILE)
                      if not p.parent.name.startswith("checkpoint_local_"))
    assert ray_kept == [12, 16], ray_kept


def test_keep_checkpoints_is_checked():
    with pytest.raises(ValueError, match="keep_checkpoints"):
        replace(small_config("/tmp/unused", expert_steps=1), keep_checkpoints=0)


# toy-i2v --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy_vae(tmp_path_factory):
    """The VAE folder of a `toy` (text-to-video) checkpoint: the architecture toy-i2v shares, as a t2v run's
    <out>/vae would give it (random weights here; the trainer only needs a fixed encoder)."""
    from wan_dist.models.make_checkpoint import make_checkpoint

    return make_checkpoint("toy", tmp_path_factory.mktemp("toy") / "checkpoint") / "vae"


def i2v_config(out, vae_from, *, expert_steps: int, stage: str = "all", batch_size: int = 2) -> TrainConfig:
    config = replace(small_config(out, expert_steps=expert_steps, stage=stage), preset="toy-i2v",
                     vae_from=str(vae_from))
    return replace(config, experts=replace(config.experts, batch_size=batch_size))


def test_i2v_loss_falls_resume_continues_and_the_checkpoint_renders_from_an_image(tmp_path, toy_vae):
    from safetensors.torch import load_file

    from wan_dist import load_pipeline
    from wan_dist.models.presets import get_preset
    from wan_dist.train import train
    from wan_dist.train.data import cached_clips

    torch.set_num_threads(1)
    out = tmp_path / "run"
    first = train(i2v_config(out, toy_vae, expert_steps=24), local=True)
    assert first.summaries["vae"] == {"vae_from": str(toy_vae)}  # reused, not trained
    assert not (out / "ray" / "vae").exists()
    assert (out / "vae" / "config.json").read_bytes() == (toy_vae / "config.json").read_bytes()
    losses = [h[1] for h in _history(out)["history"]]
    assert len(losses) == 24
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    [cache] = (out / "data").glob("latents-*.safetensors")
    tensors = load_file(str(cache))
    assert tensors["image_latents"].shape == tensors["latents"].shape == (4, 16, 2, 4, 4)

    again = train(replace(i2v_config(out, toy_vae, expert_steps=30), stage="experts"), local=True)
    summary = json.loads((out / "experts_summary.json").read_text())
    assert (summary["start_step"], summary["step"]) == (24, 30)
    state = _history(out)
    assert [h[1] for h in state["history"][:24]] == losses and len(state["history"]) == 30
    # checkpoints at steps 4, 8, ..., 24, 28, 30: the newest keep_checkpoints (2) stay, the rest are deleted
    kept = sorted(p.name for p in (out / "ray" / "experts").iterdir())
    assert kept == ["checkpoint_local_00000028", "checkpoint_local_00000030"], kept

    pipe = load_pipeline(again.model, dtype=torch.float32)
    assert (pipe.spec.name, pipe.spec.task) == ("toy-i2v", "i2v")
    for expert, module in enumerate(pipe.experts):
        loaded = dict(module.named_parameters())
        assert loaded["patch_embedding.weight"].shape[1] == 36
        for name, tensor in state["modules"][f"expert{expert}"].items():
            torch.testing.assert_close(loaded[name], tensor, msg=name)
    clips, captions = cached_clips(out, SMALL_DATA, get_preset("toy-i2v"), split="train")
    frames = pipe.generate(captions[0], image=clips[0][0], height=32, width=32, num_frames=5, num_inference_steps=2,
                           seed=0).frames
    assert frames.shape == (1, 5, 32, 32, 3) and frames.dtype.name == "uint8"


def test_i2v_training_input_and_text_are_what_the_pipeline_feeds_the_dit_for_that_first_frame(tmp_path, toy_vae):
    """The trainer's assembled DiT input for clip i equals the input the pipeline gives the DiT when it renders
    clip i's caption from its first frame with the trainer's noised latents as its starting latents (a forward
    hook), and the trainer's text context gives the DiT's output that the pipeline's context gave (the
    pipeline pads a prompt to text_len rows, as Wan's model does; the trainer must too, or a caption meets
    another number of padding rows in training than when rendered)."""
    from safetensors.torch import load_file

    from wan_dist import load_pipeline
    from wan_dist.models.presets import get_preset
    from wan_dist.train import train
    from wan_dist.train.data import cached_clips
    from wan_dist.train.stages import ExpertStage, StepDraws

    torch.set_num_threads(1)
    out = tmp_path / "run"
    result = train(i2v_config(out, toy_vae, expert_steps=1), local=True)
    spec = get_preset("toy-i2v")
    [cache] = (out / "data").glob("latents-*.safetensors")
    stage = ExpertStage(spec, tensors=load_file(str(cache)), optim=OptimConfig(steps=1, batch_size=4),
                        flow_config=FlowConfig(cfg_dropout=0.0), seed=0)
    batch = stage.batch(0, StepDraws(seed=0, step=0, rank=0, fixed=True))
    assert batch.index.tolist() == [0, 1, 2, 3] and batch.model_input.shape == (4, 36, 2, 4, 4)
    assert batch.context.shape[1] == spec.dit.text_len
    clips, captions = cached_clips(out, SMALL_DATA, spec, split="train")

    pipe = load_pipeline(result.model, dtype=torch.float32)
    expert = pipe.experts[0]
    seen = []
    hook = expert.register_forward_hook(lambda module, args, output: seen.append((args[0].clone(), args[1].clone(),
                                                                                  output.clone())))
    try:
        for clip in range(4):
            seen.clear()
            pipe.generate(captions[clip], image=clips[clip][0], latents=batch.model_input[clip:clip + 1, :16].clone(),
                          height=32, width=32, num_frames=5, num_inference_steps=1, guidance_scale=1.0, seed=0,
                          output_type="latent")
            model_input, timestep, output = seen[0]
            torch.testing.assert_close(model_input, batch.model_input[clip:clip + 1], rtol=0, atol=1e-5)
            with torch.no_grad():
                trained_text = expert(model_input, timestep, batch.context[clip:clip + 1])
                unpadded = expert(model_input, timestep, batch.context[clip:clip + 1, :stage.context.shape[1]])
            torch.testing.assert_close(trained_text, output, rtol=0, atol=1e-5)
            assert (unpadded - output).abs().max() > 1e-4  # the rows' count matters, so the check above can fail
    finally:
        hook.remove()
    # A request without a negative prompt gets the caption CFG dropout trains on (the empty one), so guidance's
    # unconditional branch is the one the experts learned; the reference's Chinese default is not that.
    from wan_dist.models.presets import DEFAULT_NEGATIVE_PROMPT

    dropped = ExpertStage(spec, tensors=load_file(str(cache)), optim=OptimConfig(steps=1, batch_size=4),
                          flow_config=FlowConfig(cfg_dropout=1.0), seed=0).batch(0, StepDraws(seed=0, step=0, rank=0,
                                                                                              fixed=True))
    settings = pipe.resolve(captions[0], image=clips[0][0], height=32, width=32, num_frames=5)
    assert settings.negative_prompts == ("",)
    reference = pipe.resolve(captions[0], DEFAULT_NEGATIVE_PROMPT, image=clips[0][0], height=32, width=32,
                             num_frames=5)
    model_input, timestep = dropped.model_input[:1], dropped.timestep[:1]
    with torch.no_grad():
        unconditional = expert(model_input, timestep, dropped.context[:1])
        default = expert(model_input, timestep, pipe.text_contexts(settings)[1])
        wan_default = expert(model_input, timestep, pipe.text_contexts(reference)[1])
    torch.testing.assert_close(default, unconditional, rtol=0, atol=1e-5)
    assert (wan_default - unconditional).abs().max() > 1e-4
    condition = batch.model_input[:, 20:]
    assert (condition[0] - condition[1]).abs().max() > 1e-2  # each clip carries its own first frame
    assert torch.equal(batch.model_input[:, 16:20, 0], torch.ones(4, 4, 4, 4))  # the mask: frame 0 given
    assert not batch.model_input[:, 16:20, 1:].any()


def test_vae_from_needs_the_presets_architecture_and_a_run_folder_holds_one_preset(tmp_path, toy_vae):
    from wan_dist.models.make_checkpoint import make_checkpoint
    from wan_dist.train import train

    tiny_vae = make_checkpoint("tiny", tmp_path / "tiny") / "vae"
    with pytest.raises(ValueError, match="vae_from: the VAE in .* is not toy-i2v's architecture"):
        train(i2v_config(tmp_path / "a", tiny_vae, expert_steps=1, stage="vae"), local=True)
    with pytest.raises(ValueError, match="vae_from: .* holds no diffusers VAE"):
        train(i2v_config(tmp_path / "b", tmp_path / "tiny" / "scheduler", expert_steps=1, stage="vae"), local=True)
    t2v = replace(small_config(tmp_path / "t2v", expert_steps=1, stage="vae"), vae_from=str(toy_vae))
    assert train(t2v, local=True).summaries["vae"] == {"vae_from": str(toy_vae)}
    with pytest.raises(ValueError, match="out: .* holds a 'toy' run, not 'toy-i2v'"):
        train(i2v_config(tmp_path / "t2v", toy_vae, expert_steps=1, stage="vae"), local=True)


def test_the_cli_composes_an_i2v_run(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from wan_dist.cli.main import conf_dir
    from wan_dist.cli.train import train_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["out=runs/i2v", "preset=toy-i2v", "stage=experts",
                                          "vae_from=runs/toy/vae"])
    config = train_config(cfg)
    assert (config.preset, config.stage) == ("toy-i2v", "experts")
    assert (config.out, config.vae_from) == (str(tmp_path / "runs/i2v"), str(tmp_path / "runs/toy/vae"))


def test_vae_init_trains_on_from_a_trained_vae(tmp_path):
    """vae_init starts the VAE stage from given weights (here the shipped toy's, named by its checkpoint folder):
    after one step at a tiny learning rate the published VAE is those weights to within the step, where a run
    without it is far from them."""
    from diffusers import AutoencoderKLWan

    from wan_dist.models.shipped import SHIPPED_DIR
    from wan_dist.train import train

    shipped = AutoencoderKLWan.from_pretrained(str(SHIPPED_DIR / "toy" / "vae"), torch_dtype=torch.float32).state_dict()

    def published(out, **fields):
        config = replace(small_config(out, expert_steps=1, stage="vae"), **fields)
        train(replace(config, vae=replace(config.vae, steps=1, lr=1e-6)), local=True)
        state = AutoencoderKLWan.from_pretrained(str(out / "vae"), torch_dtype=torch.float32).state_dict()
        return max(float((state[key] - shipped[key]).abs().max()) for key in shipped)

    assert published(tmp_path / "init", vae_init=str(SHIPPED_DIR / "toy")) < 1e-4
    assert published(tmp_path / "fresh") > 1e-2
    with pytest.raises(ValueError, match="TrainConfig.vae_init: not with vae_from"):
        TrainConfig(out="x", vae_from="a", vae_init="b")
    with pytest.raises(ValueError, match="vae_init: .* holds no diffusers VAE"):
        train(replace(small_config(tmp_path / "bad", expert_steps=1, stage="vae"), vae_init=str(tmp_path)),
              local=True)
    assert not (tmp_path / "bad" / "data").exists()  # refused before any clip was made


def test_a_decoder_only_run_from_vae_init_keeps_its_encoder_and_latent_statistics(tmp_path):
    """The experts shipped with a VAE trained on its latents: a decoder trained on from it must leave the encoder
    and the latents' normalisation exactly as they were, so the new decoder can replace the old one."""
    from diffusers import AutoencoderKLWan

    from wan_dist.models.shipped import SHIPPED_DIR
    from wan_dist.models.vae import vae_config_from_diffusers
    from wan_dist.train import train
    from wan_dist.train.stages import ENCODER_PARTS

    init = SHIPPED_DIR / "toy" / "vae"
    config = replace(small_config(tmp_path, expert_steps=1, stage="vae"), vae_init=str(init), vae_decoder_only=True)
    train(replace(config, vae=replace(config.vae, steps=2, lr=1e-2)), local=True)
    before = AutoencoderKLWan.from_pretrained(str(init), torch_dtype=torch.float32).state_dict()
    after = AutoencoderKLWan.from_pretrained(str(tmp_path / "vae"), torch_dtype=torch.float32).state_dict()
    for key in before:
        if key.split(".")[0] in ENCODER_PARTS:
            assert torch.equal(after[key], before[key]), key
    assert any(not torch.equal(after[key], before[key]) for key in before if key.startswith("decoder."))
    ours, theirs = vae_config_from_diffusers(tmp_path / "vae"), vae_config_from_diffusers(init)
    assert (ours.latents_mean, ours.latents_std) == (theirs.latents_mean, theirs.latents_std)
