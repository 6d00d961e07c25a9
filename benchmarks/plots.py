"""Charts of the benchmark tables: one function per chart, each taking the table's rows (dicts, as csv.DictReader
reads them: every value may be a string) and a PNG path.

    python benchmarks/plots.py                      # every chart of the committed tables -> benchmarks/results/
    python benchmarks/plots.py --out /tmp/charts    # the same charts into another folder

A benchmark run writes its chart next to its CSV through ``csv_rows.report_row(..., chart=NAME)`` or
``csv_rows.save_chart(table, NAME)``, NAME a key of :data:`CHARTS`. Every chart is one figure, titled with the
machine its rows were measured on (the ``machine.*`` columns of csv_rows, or the older single ``machine``
column; tables that carry neither need ``machine=``), axes labelled with their units, and times against the
table's baseline where it has one. Drawn with matplotlib's Agg backend: no window ever opens.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["CHARTS", "COMMITTED", "SIZE", "layouts_chart", "serve_chart", "batch_chart", "step_cache_chart",
           "machine_label",
           "read_rows", "render_committed"]

SIZE = (1200, 750)  # pixels; drawn at DPI so that shown 800 px wide the text reads as 10 pt at 100 dpi
DPI = 150
RESULTS = Path(__file__).resolve().parent / "results"

Rows = Sequence[Mapping[str, object]]


def read_rows(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _column(rows: Rows, name: str, chart: str, convert: Callable = float) -> list:
    """Every row's ``name``, converted; a clear error naming the column when a row lacks it."""
    values = []
    for index, row in enumerate(rows):
        value = row.get(name)
        if value is None or value == "":
            raise ValueError(f"the {chart} chart needs column {name!r}, which row {index} lacks "
                             f"(its columns: {', '.join(row) or 'none'})")
        values.append(convert(value))
    return values


def machine_label(rows: Rows, chart: str, machine: str | None = None) -> str:
    """The machine(s) the rows were measured on, for a title: ``machine`` if given, else each row's
    ``machine.cpu``/``machine.cores``/``machine.gpu`` (csv_rows) or its older ``machine`` column."""
    if machine:
        return machine
    labels = []
    for index, row in enumerate(rows):
        if row.get("machine.cpu"):
            gpu = row.get("machine.gpu") or "none"
            label = f"{row['machine.cpu']}, {row.get('machine.cores', '?')} cores, " + \
                    ("no GPU" if gpu == "none" else gpu)
        elif row.get("machine"):
            label = str(row["machine"])
        else:
            raise ValueError(f"the {chart} chart needs column 'machine.cpu' (or 'machine') to name the machine, "
                             f"which row {index} lacks; pass machine= for tables saved without it")
        labels.append(label)
    unique = list(dict.fromkeys(labels))
    return unique[0] if len(unique) == 1 else "mixed machines: " + " | ".join(unique)


def _figure(size: tuple[int, int], panels: int = 1):
    figure, axes = plt.subplots(panels, 1, figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, squeeze=False)
    return figure, [row[0] for row in axes]


def _save(figure, path: str | os.PathLike, title: str) -> Path:
    """Title, lay out at the figure's own size (never a tight bbox: the PNG is exactly the size asked for), and
    write atomically."""
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.stem}.tmp.png")
    try:
        figure.savefig(staging, dpi=DPI)
        os.replace(staging, path)
    finally:
        plt.close(figure)
        staging.unlink(missing_ok=True)
    return path


def _truthy(value) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def _layout_name(layout: str, fsdp, ranks: int) -> str:
    """``d1xc2xu2xr1`` -> ``CFG 2 x Ulysses 2 (4 ranks)``."""
    degrees = dict(re.findall(r"([dcur])(\d+)", layout))
    names = {"d": "data", "c": "CFG", "u": "Ulysses", "r": "ring"}
    parts = [f"{names[key]} {degrees[key]}" for key in "dcur" if int(degrees.get(key, 1)) > 1]
    name = " x ".join(parts) or "single device"
    return f"{name}{' + FSDP' if _truthy(fsdp) else ''} ({ranks} rank{'s' * (ranks != 1)})"


def layouts_chart(rows: Rows, path: str | os.PathLike, *, machine: str | None = None,
                  size: tuple[int, int] = SIZE) -> Path:
    """benchmarks/layouts.py: seconds per step (rank 0) and bytes sent per step per rank, one bar per row; times
    also as a ratio to the single-device row of the same preset and tokens."""
    chart = "layouts"
    seconds = _column(rows, "s_per_step", chart)
    sent = [value / 1e6 for value in _column(rows, "bytes_per_step_per_rank", chart)]
    ranks = _column(rows, "world_size", chart, int)
    layouts = _column(rows, "layout", chart, str)
    fsdp = _column(rows, "fsdp", chart, str)
    cases = list(zip(_column(rows, "preset", chart, str), _column(rows, "tokens", chart, str)))
    title = f"Parallel layouts: {machine_label(rows, chart, machine)}"
    labels = [_layout_name(layout, f, n) + (f" [{case[0]}, {case[1]} tokens]" if len(set(cases)) > 1 else "")
              for layout, f, n, case in zip(layouts, fsdp, ranks, cases)]
    baseline = {case: s for case, s, n, f in zip(cases, seconds, ranks, fsdp) if n == 1 and not _truthy(f)}
    figure, (time_axis, bytes_axis) = _figure(size, 2)
    positions = range(len(rows))[::-1]  # first row on top
    time_axis.barh(positions, seconds, color="tab:blue")
    for y, s, case in zip(positions, seconds, cases):
        ratio = f"  ({s / baseline[case]:.2f}x single device)" if case in baseline else ""
        time_axis.text(s, y, f" {s:.2f} s{ratio}", va="center", fontsize=8)
    time_axis.set_xlabel("seconds per step (rank 0, best of the run's repeats)")
    time_axis.set_xlim(0, max(seconds) * 1.6)
    bytes_axis.barh(positions, sent, color="tab:orange")
    for y, mb in zip(positions, sent):
        bytes_axis.text(mb, y, f" {mb:.2f} MB", va="center", fontsize=8)
    bytes_axis.set_xlabel("MB (10^6 bytes) sent per step per rank (most of any rank; FSDP gathers not counted)")
    bytes_axis.set_xlim(0, max(max(sent), 1e-9) * 1.3)
    for axis in (time_axis, bytes_axis):
        axis.set_yticks(list(positions), labels, fontsize=8)
    return _save(figure, path, title)


def serve_chart(rows: Rows, path: str | os.PathLike, *, machine: str | None = None,
                size: tuple[int, int] = SIZE) -> Path:
    """benchmarks/serve_api.py: create-job latency percentiles (p50, p90, p99) and throughput, one group per run
    (row), labelled with its time, clients and the ingress's ``max_ongoing_requests``; throughput also as a ratio
    to the first run."""
    chart = "HTTP load"
    percentiles = {name: [ms / 1e3 for ms in _column(rows, f"{name}_ms", chart)] for name in ("p50", "p90", "p99")}
    rates = _column(rows, "creates_per_s", chart)
    clients = _column(rows, "clients", chart, str)
    ingress = _column(rows, "api_max_ongoing_requests", chart, str)
    when = [str(row.get("timestamp") or row.get("date") or f"run {i + 1}")[:16].replace("T", " ")
            for i, row in enumerate(rows)]
    title = f"HTTP API, POST /v1/models/{{model}}/jobs under load: {machine_label(rows, chart, machine)}"
    labels = [f"{w}\n{c} clients, ingress {i}" for w, c, i in zip(when, clients, ingress)]
    figure, (latency_axis, rate_axis) = _figure(size, 2)
    width = 0.8 / len(percentiles)
    for k, (name, values) in enumerate(percentiles.items()):
        offsets = [x + (k - 1) * width for x in range(len(rows))]
        latency_axis.bar(offsets, values, width, label=name)
    latency_axis.set_ylabel("create latency (s)")
    latency_axis.legend(fontsize=8)
    rate_axis.bar(range(len(rows)), rates, 0.5, color="tab:green")
    for x, rate in enumerate(rates):
        ratio = f" ({rate / rates[0]:.2f}x run 1)" if rates[0] > 0 else ""
        rate_axis.text(x, rate, f"{rate:g}/s{ratio}", ha="center", va="bottom", fontsize=8)
    rate_axis.set_ylabel("creates per second")
    rate_axis.set_ylim(0, max(rates) * 1.25)
    for axis in (latency_axis, rate_axis):
        axis.set_xticks(range(len(rows)), labels, fontsize=8)
    return _save(figure, path, title)


def batch_chart(rows: Rows, path: str | os.PathLike, *, machine: str | None = None,
                size: tuple[int, int] = SIZE) -> Path:
    """benchmarks/batch_runner.py: the render groups' busy share per run (row), against the 90% target, with the
    per-clip overhead written on each bar."""
    chart = "batch"
    busy = [share * 100 for share in _column(rows, "busy_share", chart)]
    overhead = [share * 100 for share in _column(rows, "overhead_share", chart)]
    labels = [f"{p}, {s}, {n} steps\n{r} rows" for p, s, n, r in
              zip(*(_column(rows, name, chart, str) for name in ("preset", "size", "steps", "rows")))]
    title = f"Batch runner, render group busy share: {machine_label(rows, chart, machine)}"
    figure, (axis,) = _figure(size)
    axis.bar(range(len(rows)), busy, 0.5, color="tab:purple")
    for x, (share, extra) in enumerate(zip(busy, overhead)):
        axis.text(x, share, f"{share:.1f}% busy\n{extra:.2f}% overhead per clip", ha="center", va="bottom",
                  fontsize=8)
    axis.axhline(90, color="black", linestyle="--", linewidth=1, label="target: 90% busy")
    axis.set_ylabel("busy share (% of first request .. last render)")
    axis.set_ylim(0, 118)
    axis.set_xticks(range(len(rows)), labels, fontsize=8)
    axis.legend(loc="lower right", fontsize=8)
    return _save(figure, path, title)


def step_cache_chart(rows: Rows, path: str | os.PathLike, *, machine: str | None = None,
                     size: tuple[int, int] = SIZE) -> Path:
    """benchmarks/step_cache.py: PSNR against the uncached render over the speed-up, one line per cache mode (and
    retention) through its thresholds: on top the transformer forwards saved (uncached / cached), below the
    measured denoise time (uncached / cached); the target (2x at 30 dB) dashed."""
    chart = "step cache"
    psnr = _column(rows, "psnr_db_mean", chart)
    forwards = _column(rows, "forward_reduction", chart)
    speedup = _column(rows, "denoise_speedup", chart)
    thresholds = _column(rows, "threshold", chart)
    modes = [f"{m}, retention {r}" for m, r in zip(_column(rows, "cache", chart, str),
                                                   _column(rows, "retention", chart, str))]
    shown = [min(p, 60.0) for p in psnr]  # an identical clip (inf dB) drawn at the top
    title = f"Step caching, {rows[0].get('preset', '?')}: PSNR vs speed-up: {machine_label(rows, chart, machine)}"
    figure, axes = _figure(size, 2)
    for axis, xs, label in ((axes[0], forwards, "transformer forwards, uncached / cached"),
                            (axes[1], speedup, "denoise time, uncached / cached (median of the repeats)")):
        for mode in dict.fromkeys(modes):
            points = sorted((t, x, y) for t, x, y, m in zip(thresholds, xs, shown, modes) if m == mode)
            axis.plot([x for _, x, _ in points], [y for _, _, y in points], marker="o", label=mode)
            labels: dict[tuple[float, float], list[str]] = {}  # thresholds that land on the same point share a label
            for t, x, y in points:
                labels.setdefault((x, y), []).append(f"{t:g}")
            for (x, y), names in labels.items():
                axis.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        axis.axhline(30, color="black", linestyle="--", linewidth=1)
        axis.axvline(2, color="black", linestyle="--", linewidth=1)
        axis.set_xlabel(label + "  (numbers: threshold)")
        axis.set_ylabel("PSNR vs uncached (dB)")
        axis.set_xlim(left=min(0.9, min(xs) * 0.95))
        axis.legend(fontsize=8, loc="upper right")
    return _save(figure, path, title)


# name -> chart: the names csv_rows.save_chart and report_row(chart=...) take
CHARTS: dict[str, Callable[..., Path]] = {"layouts": layouts_chart, "serve": serve_chart, "batch": batch_chart,
                                          "step_cache": step_cache_chart}

# committed table -> (chart, machine for tables saved before rows carried it: the one RESULTS.md names)
COMMITTED: dict[str, tuple[str, str | None]] = {
    "layouts_cpu.csv": ("layouts", "x86_64, 2 cores, no GPU (per RESULTS.md)"),
    "serve_api_cpu.csv": ("serve", None),
    "batch_cpu.csv": ("batch", None),
    "step_cache_cpu.csv": ("step_cache", None),
}


def render_committed(out: str | os.PathLike = RESULTS, results: str | os.PathLike = RESULTS) -> list[Path]:
    """Every chart of the committed tables in ``results``, written to ``out``/<table name>.png."""
    written = []
    for table, (name, machine) in COMMITTED.items():
        rows = read_rows(Path(results) / table)
        written.append(CHARTS[name](rows, Path(out) / f"{Path(table).stem}.png", machine=machine))
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(RESULTS), help="folder for the PNGs (default: benchmarks/results)")
    args = parser.parse_args(argv)
    for path in render_committed(args.out):
        print(path)


if __name__ == "__main__":
    main()
