"""Benchmark charts (benchmarks/plots.py): each chart draws a PNG of the size asked for from a table's rows, names a
missing column instead of drawing nonsense, and the committed tables' charts regenerate (and are embedded in
benchmarks/RESULTS.md)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import plots  # noqa: E402
from csv_rows import save_chart, save_row  # noqa: E402

MACHINE = {"machine": "x86_64 2 cores, no GPU"}

# A few rows of each table, as csv.DictReader gives them (strings), with the columns each benchmark writes.
TABLES = {
    "layouts": [
        {"preset": "small", "layout": "d1xc1xu1xr1", "fsdp": "False", "world_size": "1", "tokens": "1280",
         "s_per_step": "2.1", "bytes_per_step_per_rank": "0", **MACHINE},
        {"preset": "small", "layout": "d1xc2xu1xr1", "fsdp": "False", "world_size": "2", "tokens": "1280",
         "s_per_step": "1.1", "bytes_per_step_per_rank": "327680", **MACHINE},
        {"preset": "small", "layout": "d1xc1xu2xr2", "fsdp": "True", "world_size": "4", "tokens": "1280",
         "s_per_step": "3.0", "bytes_per_step_per_rank": "24084480", **MACHINE},
    ],
    "serve": [
        {"date": "2026-11-26 04:00", "clients": "100", "api_max_ongoing_requests": "default", "p50_ms": "20511.6",
         "p90_ms": "22866.9", "p99_ms": "24408.0", "creates_per_s": "5.3", **MACHINE},
        {"date": "2026-11-26 04:07", "clients": "100", "api_max_ongoing_requests": "1000", "p50_ms": "3240.7",
         "p90_ms": "3859.4", "p99_ms": "4455.8", "creates_per_s": "30.9", **MACHINE},
    ],
    "batch": [
        {"preset": "tiny", "rows": "60", "size": "64x64x9", "steps": "8", "busy_share": "0.9911",
         "overhead_share": "0.0098", **MACHINE},
        {"preset": "small", "rows": "50", "size": "128x128x9", "steps": "4", "busy_share": "0.999",
         "overhead_share": "0.0013", **MACHINE},
    ],
    "step_cache": [
        {"preset": "toy", "cache": cache, "threshold": threshold, "retention": "0.1", "forward_reduction": forwards,
         "denoise_speedup": speedup, "psnr_db_mean": psnr, **MACHINE}
        for cache, threshold, forwards, speedup, psnr in (
            ("magcache", "0.06", "1.8182", "1.7", "34.8"), ("magcache", "0.1", "2.0", "1.9", "32.9"),
            ("teacache", "0.2", "1.6667", "1.5", "40.0"), ("teacache", "0.3", "2.2222", "2.1", "31.6"),
            ("teacache", "0.05", "1.0", "1.0", "inf"))
    ],
}
MEASURED = {"layouts": "s_per_step", "serve": "p99_ms", "batch": "busy_share", "step_cache": "psnr_db_mean"}


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()  # a truncated file fails here
        return image.size


def test_every_chart_has_a_test_table():
    assert set(TABLES) == set(plots.CHARTS) == set(MEASURED)


@pytest.mark.parametrize("name", sorted(TABLES))
@pytest.mark.parametrize("size", [plots.SIZE, (640, 400)])
def test_a_chart_writes_a_png_of_the_size_asked_for(tmp_path, name, size):
    path = plots.CHARTS[name](TABLES[name], tmp_path / "deep" / f"{name}.png", size=size)
    assert path == tmp_path / "deep" / f"{name}.png" and path.stat().st_size > 5000
    assert _size(path) == size
    assert [p.name for p in path.parent.iterdir()] == [f"{name}.png"]  # no staging file left


@pytest.mark.parametrize("name", sorted(TABLES))
def test_a_row_missing_a_measured_column_fails_naming_it(tmp_path, name):
    rows = [dict(row) for row in TABLES[name]]
    del rows[-1][MEASURED[name]]
    with pytest.raises(ValueError, match=f"needs column '{MEASURED[name]}', which row {len(rows) - 1} lacks"):
        plots.CHARTS[name](rows, tmp_path / "x.png")
    rows[-1][MEASURED[name]] = ""  # a widened table's empty cell is missing too
    with pytest.raises(ValueError, match=MEASURED[name]):
        plots.CHARTS[name](rows, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_rows_that_do_not_name_their_machine_need_it_given(tmp_path):
    rows = [{key: value for key, value in row.items() if key != "machine"} for row in TABLES["batch"]]
    with pytest.raises(ValueError, match="machine.cpu"):
        plots.batch_chart(rows, tmp_path / "x.png")
    assert _size(plots.batch_chart(rows, tmp_path / "x.png", machine="that box")) == plots.SIZE


def test_the_title_names_the_machine_of_csv_rows_columns():
    new = {"machine.cpu": "AMD EPYC", "machine.cores": "2", "machine.gpu": "none"}
    gpu = {"machine.cpu": "Xeon", "machine.cores": "16", "machine.gpu": "1 x NVIDIA H200"}
    assert plots.machine_label([new, new], "t") == "AMD EPYC, 2 cores, no GPU"
    assert plots.machine_label([gpu], "t") == "Xeon, 16 cores, 1 x NVIDIA H200"
    assert plots.machine_label([new, MACHINE], "t") == "mixed machines: AMD EPYC, 2 cores, no GPU | " \
                                                       "x86_64 2 cores, no GPU"


def test_a_benchmark_table_gets_its_chart_beside_it(tmp_path, capsys):
    table = tmp_path / "outputs" / "batch.csv"
    for row in TABLES["batch"]:
        measurements = {k: v for k, v in row.items() if k != "machine"}
        save_row(measurements, config={"preset": row["preset"]}, save_to=table)
    assert save_chart(table, "batch") == tmp_path / "outputs" / "batch.png"
    assert _size(tmp_path / "outputs" / "batch.png") == plots.SIZE
    save_row({"preset": "tiny"}, config={}, save_to=table)  # a row the chart cannot draw: warned, row kept
    assert save_chart(table, "batch") is None
    assert "no chart for" in capsys.readouterr().err and len(plots.read_rows(table)) == 3


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_the_plots_script_regenerates_every_chart_of_the_committed_tables(tmp_path):
    results = REPO / "benchmarks" / "results"
    committed = _digests(results)
    process = subprocess.run([sys.executable, str(REPO / "benchmarks" / "plots.py"), "--out", str(tmp_path / "o")],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr[-3000:]
    expected = sorted(f"{Path(table).stem}.png" for table in plots.COMMITTED)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == expected
    for name in expected:
        assert _size(tmp_path / "o" / name) == plots.SIZE
        assert name in committed, f"{name} is not committed in benchmarks/results (run benchmarks/plots.py)"
    assert _digests(results) == committed  # the committed PNGs were not overwritten


def test_results_md_embeds_every_committed_chart():
    text = (REPO / "benchmarks" / "RESULTS.md").read_text()
    embedded = re.findall(r"!\[[^\]]+\]\((results/[^)]+\.png)\)", text)
    for table in plots.COMMITTED:
        assert f"results/{Path(table).stem}.png" in embedded, table
    for link in embedded:
        assert (REPO / "benchmarks" / link).is_file(), link
