"""A long clip in a batch (issue 17): a run stopped mid-clip resumes without rendering a finished window twice."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pytest

from wan_dist.batch.manifest import write_manifest
from wan_dist.batch.results import latest_results
from wan_dist.batch.runner import BatchRunner
from wan_dist.config import BatchConfig, GroupSpec, OutputConfig
from wan_dist.video.mp4 import decode_mp4

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class StepLog:
    """A row's step control (runs on the result rank): appends each step to ``path``; StopRender at ``stop_at``."""

    path: str
    stop_at: int | None = None

    def __call__(self, step: int, total: int) -> None:
        from wan_dist.engine.control import StopRender

        with open(self.path, "a") as handle:
            handle.write(f"{step}\n")
        if step == self.stop_at:
            raise StopRender("cancelled")


def _steps(path) -> list[int]:
    return [int(line) for line in open(path).read().split()] if os.path.exists(path) else []


def test_a_stopped_batch_resumes_a_long_clip_after_its_finished_windows(ray_local, tmp_path):
    # 25 frames in 9-frame windows sharing one latent frame: windows at 0, 8, 16; 2 steps each. A step control
    # counts steps from 1 over the whole clip: window k's are 2k + 1 and 2k + 2
    row = {"id": "long-row", "model": "tiny", "prompt": "a boat on a long lake", "num_frames": 25, "seed": 3,
           "num_inference_steps": 2, "long": json.dumps({"window": 9, "overlap": 1})}
    write_manifest([row], str(tmp_path / "m.parquet"))
    out = tmp_path / "out"
    config = BatchConfig(manifest=str(tmp_path / "m.parquet"), groups=1, group=GroupSpec(cpus_per_rank=0.5),
                         retry_backoff_s=0.1, progress_interval_s=0.5)
    first_log, second_log = str(tmp_path / "first.log"), str(tmp_path / "second.log")
    stopped = BatchRunner(config, OutputConfig(uri=str(out)), row_control=lambda _row: StepLog(first_log, 5))
    summary = stopped.run()
    assert summary["stopped"] and summary["completed"] == 0
    assert _steps(first_log) == [1, 2, 3, 4, 5]  # stopped in window 2's first step
    assert not (out / "long-row" / "clip.json").exists()
    assert sorted(p.name for p in (out / "long-row" / "windows").glob("*.json")) == ["0000.json", "0001.json"]

    resumed = BatchRunner(config, OutputConfig(uri=str(out)), row_control=lambda _row: StepLog(second_log))
    summary = resumed.run()
    assert summary["completed"] == 1, latest_results(str(out))
    assert _steps(second_log) == [5, 6]  # only window 2: windows 0 and 1 were not rendered again
    frames, _ = decode_mp4((out / "long-row" / "clip.mp4").read_bytes())
    assert frames.shape[0] == 25
    sidecar = json.loads((out / "long-row" / "clip.json").read_text())
    assert [w["start"] for w in sidecar["long"]["windows"]] == [0, 8, 16]
    assert not (out / "long-row" / "windows").exists() or not any((out / "long-row" / "windows").iterdir())
