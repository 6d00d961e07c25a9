"""Benchmark rows (benchmarks/csv_rows.py): each carries its timestamp, machine and settings, lands under outputs/
unless a run names another table, and never slides under another row's header."""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from csv_rows import save_row  # noqa: E402


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_row_carries_timestamp_machine_and_every_setting(tmp_path):
    config = {"preset": "small", "steps": 3, "sizes": [256, 512], "parallel": {"ulysses": 2, "ring": 1},
              "save_to": str(tmp_path / "t.csv")}
    path = save_row({"s_per_step": 1.25}, config=config, save_to=config["save_to"])
    [row] = _rows(path)
    when = datetime.fromisoformat(row["timestamp"])
    assert when.tzinfo is not None and abs(datetime.now(timezone.utc) - when) < timedelta(minutes=5)
    assert row["machine.cores"] == str(os.cpu_count()) and row["machine.torch"] == torch.__version__
    assert row["machine.cpu"] and row["machine.python"]
    assert row["machine.gpu"] == ("none" if not torch.cuda.is_available() else row["machine.gpu"])
    assert (row["param.preset"], row["param.steps"], row["param.sizes"]) == ("small", "3", "[256, 512]")
    assert (row["param.parallel.ulysses"], row["param.parallel.ring"]) == ("2", "1")
    assert "param.save_to" not in row and row["s_per_step"] == "1.25"


def test_a_row_with_new_columns_widens_the_table_instead_of_sliding_under_its_header(tmp_path):
    table = tmp_path / "deep" / "t.csv"
    save_row({"s_per_step": 1.0}, config={"preset": "tiny"}, save_to=table)
    save_row({"s_per_step": 2.0, "peak_mib": 30.5}, config={"preset": "tiny", "steps": 4}, save_to=table)
    save_row({"s_per_step": 3.0}, config={"preset": "small"}, save_to=table)
    first, second, third = _rows(table)
    assert (first["s_per_step"], first["param.preset"]) == ("1.0", "tiny")
    assert (first["peak_mib"], first["param.steps"]) == ("", "")  # columns it did not have
    assert (second["s_per_step"], second["peak_mib"], second["param.steps"]) == ("2.0", "30.5", "4")
    assert (third["s_per_step"], third["param.preset"], third["peak_mib"]) == ("3.0", "small", "")
    assert [p.name for p in table.parent.iterdir()] == ["t.csv"]  # no temporary file left


def test_a_measurement_may_not_overwrite_the_columns_every_row_carries(tmp_path):
    with pytest.raises(ValueError, match="param.preset"):
        save_row({"param.preset": "x"}, config={"preset": "tiny"}, save_to=tmp_path / "t.csv")
    assert not (tmp_path / "t.csv").exists()


def test_every_benchmark_saves_under_outputs_by_default():
    configs = sorted((REPO / "conf").glob("bench_*.yaml"))
    assert {"bench_lora_style.yaml", "bench_style_lock.yaml"} <= {path.name for path in configs}  # found at all
    for path in configs:
        save_to = OmegaConf.load(path).save_to
        assert save_to.startswith("outputs/") and save_to.endswith(".csv"), (path.name, save_to)


def test_every_benchmark_setting_can_be_set_on_the_command_line():
    """A benchmark's top-level key named like a config group of conf/ (``model``: conf/model/) cannot be set as
    ``key=value``: Hydra reads it as a group override and refuses it. Every key of every benchmark composes."""
    from hydra import compose, initialize_config_dir

    groups = {path.name for path in (REPO / "conf").iterdir() if path.is_dir()}
    configs = sorted((REPO / "conf").glob("bench_*.yaml"))
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        for path in configs:
            keys = [key for key in OmegaConf.load(path) if key not in ("defaults", "hydra")]
            assert not groups & set(keys), (path.name, groups & set(keys))
            first = keys[0]
            value = OmegaConf.load(path)[first]
            assert compose(path.stem, overrides=[f"{first}={value}"])[first] == value, path.name


def _digests() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (REPO / "benchmarks" / "results").iterdir()}


@pytest.mark.slow
def test_a_benchmark_run_appends_to_outputs_and_leaves_the_committed_results_alone(tmp_path):
    committed = _digests()
    env = {**os.environ, "WAN_DIST_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "benchmarks" / "preview_cost.py"), "preset=tiny", "height=32", "width=32",
               "num_frames=5", "steps=2", "repeats=1", "threads=1"]
    process = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    table = tmp_path / "outputs" / "benchmarks" / "preview.csv"
    [row] = _rows(table)
    assert (row["param.preset"], row["param.steps"], row["param.every"]) == ("tiny", "2", "1")
    assert float(row["render_s"]) > 0 and row["machine.torch"] == torch.__version__
    assert f"row appended to {table}" in process.stdout
    assert _digests() == committed
