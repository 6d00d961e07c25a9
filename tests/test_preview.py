"""Preview frames (wan_dist.engine.preview and the preview hook of engine.control's step callback): the first
frame of a step's clean-latent estimate, decoded by the real VAE."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from wan_dist import load_pipeline
from wan_dist.engine.control import StopRender, make_step_callback
from wan_dist.engine.preview import PreviewDecoder, encode_jpeg, preview_frame, shrink
from wan_dist.models.vae import video_to_frames


@pytest.mark.parametrize("variant", ["tiny", "tiny-ti2v"])  # the Wan 2.1 and the Wan 2.2 VAE
def test_the_first_latent_frame_alone_decodes_to_the_clips_first_frame(checkpoint_factory, variant):
    pipe = load_pipeline(str(checkpoint_factory(variant, "diffusers")), dtype=torch.float32)
    z = pipe.vae.z_dim
    latents = torch.randn(2, z, 3, 6, 10, generator=torch.Generator().manual_seed(0))
    whole = video_to_frames(pipe.vae.decode(latents))  # [2, F, H, W, 3]
    for row in (0, 1):
        frame = preview_frame(pipe.vae, latents, row=row)
        assert frame.shape == whole.shape[2:] and frame.dtype == np.uint8
        assert np.abs(frame.astype(int) - whole[row, 0].astype(int)).max() <= 1  # causal: frame 0 needs latent 0 only
    assert not np.array_equal(preview_frame(pipe.vae, latents, row=0), preview_frame(pipe.vae, latents, row=1))


def test_the_estimate_of_the_last_euler_step_is_the_rendered_latents(checkpoint_factory):
    """Euler's last step goes to sigma 0, where the sample is exactly x_t - sigma_t v: the estimate the
    callback offers must be that same tensor (and earlier estimates must differ from the noisy latents)."""
    pipe = load_pipeline(str(checkpoint_factory("tiny", "diffusers")), dtype=torch.float32)
    estimates, samples = [], []
    out = pipe.generate("a kite", num_inference_steps=4, seed=3, solver="euler", output_type="latent",
                        height=48, width=80, num_frames=5,
                        callback=lambda i, n, latents, estimate: (estimates.append(estimate()),
                                                                   samples.append(latents.clone())))
    assert len(estimates) == 4
    torch.testing.assert_close(estimates[-1], out.frames, rtol=0, atol=1e-5)
    assert (estimates[0] - samples[0]).abs().max() > 0.1


def test_shrink_keeps_the_aspect_and_jpeg_round_trips():
    frame = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)
    small = shrink(frame, 256)
    assert small.shape == (144, 256, 3) and small.dtype == np.uint8
    assert shrink(small, 512) is small  # never enlarged
    decoded = np.asarray(Image.open(io.BytesIO(encode_jpeg(small))))
    assert decoded.shape == small.shape


class PreviewControl:
    def __init__(self, every: int, stop_at: int | None = None):
        self.every, self.stop_at = every, stop_at
        self.frames: list[tuple[int, int, tuple]] = []

    def __call__(self, step, total):
        if step == self.stop_at:
            raise StopRender("cancelled")

    def preview_due(self, step, total):
        return step % self.every == 0

    def on_preview(self, frame, step, total):
        self.frames.append((step, total, frame.shape))


def test_the_step_callback_hands_due_previews_to_the_control_and_survives_a_failing_one(checkpoint_factory):
    pipe = load_pipeline(str(checkpoint_factory("tiny", "diffusers")), dtype=torch.float32)
    estimate = torch.randn(1, pipe.vae.z_dim, 2, 6, 10)
    decoded = []
    decoder = PreviewDecoder(pipe.vae)
    control = PreviewControl(every=2, stop_at=5)
    callback = make_step_callback(control, rank=0, result_rank=0, world_size=1,
                                  preview=lambda x: decoded.append(1) or decoder(x))
    for index in range(4):
        callback(index, 6, None, lambda: estimate)
    assert control.frames == [(2, 6, (48, 80, 3)), (4, 6, (48, 80, 3))] and len(decoded) == 2
    with pytest.raises(StopRender):  # a stopped step decodes nothing
        callback(4, 6, None, lambda: estimate)
    assert len(decoded) == 2

    def broken(_x):
        raise RuntimeError("out of memory")

    quiet = PreviewControl(every=1)
    callback = make_step_callback(quiet, rank=0, result_rank=0, world_size=1, preview=broken)
    callback(0, 2, None, lambda: estimate)  # logged, not raised: the render goes on
    assert quiet.frames == []
    plain = make_step_callback(lambda step, total: None, rank=0, result_rank=0, world_size=1, preview=broken)
    plain(0, 2, None, lambda: estimate)  # a control without preview hooks never triggers a decode
