"""benchmarks/toy_eval.py, the evaluation of the toy models: its prompts are held out, its oracle mode counts
exactly what measure_clip reads from the world's own renders, its model mode runs end to end on random
weights (row, grid, records), and a bad argument stops it with a message naming the argument."""

from __future__ import annotations

import collections
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wan_dist.world import caption, first_frame, is_heldout, render_clip, sample_scene
from wan_dist.world.measure import measure_clip
from wan_dist.world.scene import DOLLY_BACKGROUND_FACTOR
from wan_dist.world.vocab import CAMERA_DIRECTIONS

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import toy_eval  # noqa: E402

ATTRIBUTES = ("colour", "shape", "motion", "camera")


def _last_row(path: Path) -> dict:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))[-1]


def test_prompts_are_held_out_captioned_and_static_where_drawn_so():
    prompts = toy_eval.eval_prompts(9)
    assert [p.index for p in prompts] == list(range(9))
    assert len({p.scene for p in prompts}) == 9
    for prompt in prompts:
        assert is_heldout(prompt.scene), prompt.index  # a combination no training caption holds
        assert prompt.text == caption(prompt.scene, rng=prompt.seed)
        assert prompt.static == (prompt.scene.camera.move == "static" and prompt.scene.lighting == "constant")
        assert prompt.parallax == (DOLLY_BACKGROUND_FACTOR if prompt.scene.camera.move.startswith("dolly") else 1.0)
    assert all(prompts[i].static for i in range(0, 9, toy_eval.STATIC_EVERY))
    assert toy_eval.eval_prompts(3, scene_seed=5)[0].scene != prompts[0].scene


def test_oracle_counts_what_measure_clip_reads_from_the_worlds_renders(tmp_path):
    count = 6
    table = tmp_path / "eval.csv"
    returned = toy_eval.main(["--oracle", "--count", str(count), "--save-to", str(table)])
    # Independently: scene i is held-out seed EVAL_SEED + i (static camera and light every STATIC_EVERY-th),
    # rendered by the world at toy's 64x64x17 and measured with the asked dolly's parallax.
    hits, static = collections.Counter(), 0
    for index in range(count):
        constraints = {"camera": "static", "lighting": "constant"} if index % toy_eval.STATIC_EVERY == 0 else {}
        scene = sample_scene(toy_eval.EVAL_SEED + index, split="heldout", **constraints)
        frames = render_clip(scene, height=64, width=64, num_frames=17)
        assert np.array_equal(frames[0], first_frame(scene, 64, 64))
        dolly = scene.camera.move.startswith("dolly")
        measured = measure_clip(frames, parallax=DOLLY_BACKGROUND_FACTOR if dolly else 1.0)
        expected = (scene.main.colour, scene.main.shape, scene.main.motion, CAMERA_DIRECTIONS[scene.camera.move])
        for key, want in zip(ATTRIBUTES, expected):
            hits[key] += getattr(measured, key) == want
        static += scene.camera.move == "static" and scene.lighting == "constant"
    row = _last_row(table)
    assert (row["mode"], row["clips"], row["size"]) == ("oracle", str(count), "64x64x17")
    for key in ATTRIBUTES:
        assert int(row[f"{key}_hits"]) == hits[key], key
        assert float(row[f"{key}_accuracy"]) == pytest.approx(hits[key] / count, abs=1e-4)
        assert row[f"{key}_met"] == str(hits[key] / count >= toy_eval.TARGETS[key])
    # A static camera under constant light samples the same background texels in every frame.
    assert int(row["static_clips"]) == static >= 2
    assert float(row["background_change"]) == 0.0 == float(row["world_background_change"])
    # Frame 0 of the world's clip is its first frame exactly (checked above): PSNR at its cap.
    assert float(row["first_frame_psnr_db"]) == toy_eval.PSNR_CAP_DB and row["first_frame_met"] == "True"
    assert row["machine.cores"] and row["machine.cpu"] and row["param.oracle"] == "True"
    assert returned["colour_hits"] == hits["colour"]


def test_vae_mode_measures_the_worlds_clips_through_the_models_vae(tmp_path):
    import torch

    from wan_dist import load_pipeline

    count, table = 3, tmp_path / "eval.csv"
    toy_eval.main(["--vae", "--model", "toy", "--count", str(count), "--save-to", str(table)])
    # Independently: each held-out scene's world clip, encoded and decoded by toy's VAE, measured.
    vae = load_pipeline("toy", dtype=torch.float32).vae
    hits, psnrs = collections.Counter(), []
    for prompt in toy_eval.eval_prompts(count):
        clip = render_clip(prompt.scene, height=64, width=64, num_frames=17)
        video = torch.from_numpy(clip).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        with torch.no_grad():
            back = vae.decode(vae.encode(video))[0].clamp(-1, 1)
        frames = ((back.permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
        assert not np.array_equal(frames, clip)  # the round trip is lossy: this is not the oracle
        measured = measure_clip(frames, parallax=prompt.parallax)
        for key in ATTRIBUTES:
            hits[key] += getattr(measured, key) == prompt.expected[key]
        psnrs.append(toy_eval.psnr_db(frames[0], first_frame(prompt.scene, 64, 64)))
    row = _last_row(table)
    assert (row["mode"], row["model"], row["clips"], row["steps"]) == ("vae", "toy", str(count), "")
    for key in ATTRIBUTES:
        assert int(row[f"{key}_hits"]) == hits[key], key
    assert float(row["first_frame_psnr_db"]) == pytest.approx(np.mean(psnrs), abs=1e-3)
    assert row["render_met"] == ""  # no denoising steps: the render-time target does not apply


def test_train_split_prompts_and_sampling_settings_reach_the_render(tmp_path):
    from wan_dist.models.presets import get_preset

    prompts = toy_eval.eval_prompts(8, 0, "train")
    assert [p.seed for p in prompts] == list(range(8))
    assert not any(is_heldout(p.scene) for p in prompts)
    assert all(is_heldout(p.scene) for p in toy_eval.eval_prompts(8))

    def frames(*extra):
        args = ["--model", "toy", "--count", "1", "--steps", "2", "--save-to", str(tmp_path / "eval.csv"), *extra]
        return toy_eval.run(toy_eval.parse_args(args))[1][0].frames

    defaults = get_preset("toy").defaults
    plain = frames()
    assert np.array_equal(frames("--shift", str(defaults.shift)), plain)  # the preset's own value: same render
    assert not np.array_equal(frames("--shift", "1"), plain)
    assert not np.array_equal(frames("--guidance", "1", "1"), plain)
    row = _last_row(tmp_path / "eval.csv")
    assert row["param.guidance"] == "[1.0, 1.0]" and row["param.split"] == "heldout"
    assert np.array_equal(frames("--negative-prompt", defaults.negative_prompt), plain)  # the preset's own
    assert not np.array_equal(frames("--negative-prompt", "reference"), plain)  # Wan 2.2's default
    assert _last_row(tmp_path / "eval.csv")["param.negative_prompt"] == "reference"
    assert len(frames("--split", "train")) == 17


def test_background_change_and_psnr_read_known_differences():
    scene = sample_scene(3, camera="static", lighting="constant", motion="right", background="noise")
    frames = render_clip(scene, height=64, width=64, num_frames=9)
    assert toy_eval.background_change(frames) == 0.0
    # Every other frame brighter by 10 levels (the dark background never clips): 10 levels per frame step.
    flicker = frames.astype(np.int16)
    flicker[1::2] += 10
    assert toy_eval.background_change(np.clip(flicker, 0, 255).astype(np.uint8)) == pytest.approx(10.0, abs=0.05)
    image = frames[0]
    shifted = np.clip(image.astype(np.int16) + 4, 0, 255).astype(np.uint8)
    mse = float(np.mean((shifted.astype(float) - image) ** 2))
    assert toy_eval.psnr_db(shifted, image) == pytest.approx(10 * math.log10(255**2 / mse))
    assert toy_eval.psnr_db(image, image) == toy_eval.PSNR_CAP_DB


def _check_model_row(row: dict, *, model: str, task: str, clips: int) -> None:
    assert (row["mode"], row["model"], row["task"], row["clips"]) == ("model", model, task, str(clips))
    assert row["size"] == "64x64x17" and row["steps"] == "2" and row["render_met"] == ""  # not the default steps
    for key in ATTRIBUTES:
        assert 0 <= int(row[f"{key}_hits"]) <= clips
        assert 0.0 <= float(row[f"{key}_accuracy"]) <= 1.0 and row[f"{key}_met"] in ("True", "False")
    assert int(row["static_clips"]) >= 1 and float(row["background_change"]) >= 0.0
    assert float(row["world_background_change"]) == 0.0
    assert float(row["render_s_per_clip"]) > 0 and float(row["measure_s_per_clip"]) > 0
    assert row["machine.cpu"] and row["machine.torch"] and row["param.model"] == model


def test_model_mode_renders_measures_and_writes_row_grid_and_records(tmp_path):
    table, grid, records = tmp_path / "eval.csv", tmp_path / "grid.png", tmp_path / "clips.json"
    toy_eval.main(["--model", "toy", "--count", "2", "--steps", "2", "--save-to", str(table),
                   "--grid", str(grid), "--records", str(records)])
    row = _last_row(table)
    _check_model_row(row, model="toy", task="t2v", clips=2)
    assert row["first_frame_clips"] == "0" and row["first_frame_psnr_db"] == ""  # text-to-video: no image
    with Image.open(grid) as picture:
        assert picture.format == "PNG" and picture.width > 5 * 128 and picture.height > 2 * 128
    saved = json.loads(records.read_text())
    assert saved["row"]["clips"] == 2 and [c["index"] for c in saved["clips"]] == [0, 1]
    for clip in saved["clips"]:
        assert set(clip["measured"]) == set(ATTRIBUTES) == set(clip["hits"]) == set(clip["expected"])
        assert clip["caption"] == toy_eval.eval_prompts(2)[clip["index"]].text


def test_image_to_video_model_reports_first_frame_psnr(tmp_path):
    table = tmp_path / "eval.csv"
    toy_eval.main(["--model", "toy-i2v", "--count", "1", "--steps", "2", "--save-to", str(table),
                   "--grid", str(tmp_path / "grid.png")])
    row = _last_row(table)
    _check_model_row(row, model="toy-i2v", task="i2v", clips=1)
    assert row["first_frame_clips"] == "1"
    assert 0 < float(row["first_frame_psnr_db"]) < toy_eval.PSNR_CAP_DB and row["first_frame_met"] in ("True", "False")


@pytest.mark.parametrize("argv,words", [
    (["--count", "0"], "--count: must be a positive integer, got 0"),
    (["--count", "many"], "--count: must be a positive integer, got 'many'"),
    (["--oracle", "--grid", "grid.jpg"], "--grid: the grid is a PNG"),
    (["--model", "no-such-model"], "--model: model: 'no-such-model' is neither a preset"),
    (["--dtype", "float64"], "--dtype: invalid choice"),
    (["--oracle", "--vae"], "--vae: not with --oracle"),
])
def test_a_bad_argument_stops_with_a_message_naming_it(argv, words, capsys, tmp_path):
    with pytest.raises(SystemExit) as stopped:
        toy_eval.main([*argv, "--save-to", str(tmp_path / "eval.csv")])
    assert stopped.value.code == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "eval.csv").exists()


def test_the_shipped_toy_i2v_keeps_the_given_first_frame(tmp_path):
    """A fast subset of the evaluation on the shipped weights, at the default steps: the trained toy-i2v keeps the
    first frame at ~20 dB PSNR on these prompts (benchmarks/RESULTS.md: 19.7 dB over 50); random weights of the
    same architecture score ~12 dB. (The text-to-video `toy` is not asserted on: it misses the issue's targets;
    its numbers are in RESULTS.md.)"""
    from wan_dist.models.shipped import SHIPPED_DIR

    assert (SHIPPED_DIR / "toy-i2v" / "model_index.json").exists(), "the trained weights are part of the package"
    row, results = toy_eval.run(toy_eval.parse_args(["--model", "toy-i2v", "--count", "4", "--save-to",
                                                     str(tmp_path / "eval.csv")]))
    assert row["steps"] == 20 and row["first_frame_clips"] == 4
    assert row["first_frame_psnr_db"] >= 16.0, row
