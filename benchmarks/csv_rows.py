"""Where a benchmark's rows go, and what each row carries.

Each run appends one row to the CSV ``save_to`` names: when it ran (``timestamp``, UTC), on what (``machine.cpu``,
``machine.cores``, ``machine.gpu``, ``machine.torch``, ``machine.python``), with which settings (every key of the
run's config, flattened: ``param.preset``, ``param.parallel.ulysses``, ...), then the measurements. A row that
cannot be read without its machine and settings is no measurement.

The default ``save_to`` of every conf/bench_*.yaml is under outputs/ (untracked), so a sweep never appends to the
committed tables of benchmarks/results/: those change only when a run names one, e.g.
``save_to=benchmarks/results/layouts_cpu_h100.csv``. A relative ``save_to`` is taken from the working directory.
When a row brings columns the file lacks, the file is rewritten with the wider header (its rows keep their
values, the new columns empty), so rows never slide under another row's header.

A benchmark with a chart (benchmarks/plots.py, ``CHARTS``) redraws it from the whole table after each row, next to
the CSV (``layouts.csv`` -> ``layouts.png``): ``report_row(row, cfg, chart="layouts")`` or
``save_chart(table, "layouts")``.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["save_row", "save_chart", "report_row", "machine", "parameters"]

_NOT_PARAMETERS = ("save_to",)  # where the row goes is not a setting of what was measured


def machine() -> dict[str, Any]:
    """The machine a row was measured on: CPU model, logical cores, GPUs (or ``none``), torch and Python."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux: platform's name is what there is
        pass
    gpu = "none"
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        gpu = "; ".join(f"{names.count(name)} x {name}" for name in dict.fromkeys(names))
    return {"machine.cpu": cpu, "machine.cores": os.cpu_count(), "machine.gpu": gpu,
            "machine.torch": torch.__version__, "machine.python": platform.python_version()}


def parameters(config: Mapping[str, Any], prefix: str = "param.") -> dict[str, Any]:
    """Every setting of a run's config, flattened to ``param.a.b`` columns (lists as JSON)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(parameters(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, tuple)) else value
    return flat


def save_row(measurements: Mapping[str, Any], *, config: Mapping[str, Any], save_to: str | os.PathLike) -> Path:
    """Append one row (timestamp, machine, ``config``'s parameters, ``measurements``) to the CSV ``save_to``;
    returns the file's absolute path."""
    row = {"timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"), **machine(),
           **parameters({key: value for key, value in config.items() if key not in _NOT_PARAMETERS})}
    clash = sorted(set(row) & set(measurements))
    if clash:
        raise ValueError(f"measurement column(s) {clash} collide with the columns every row carries")
    row.update(measurements)
    path = Path(save_to).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    header = _header(path)
    if header is None:
        _write(path, list(row), [row])
    elif set(row) <= set(header):
        with open(path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=header).writerow(row)
    else:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        _write(path, header + [key for key in row if key not in header], rows + [row])
    return path


def _header(path: Path) -> list[str] | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, newline="") as handle:
        return next(csv.reader(handle), None)


def _write(path: Path, fieldnames: list[str], rows: list[Mapping[str, Any]]) -> None:
    """The whole file, through a temporary file renamed into place: a crash leaves the old file or the new one."""
    handle = tempfile.NamedTemporaryFile("w", newline="", dir=path.parent, prefix=f".{path.name}.", delete=False)
    try:
        with handle:
            writer = csv.DictWriter(handle, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def save_chart(table: str | os.PathLike, chart: str) -> Path | None:
    """Redraw the chart ``chart`` (a name in benchmarks/plots.py's ``CHARTS``) from every row of the CSV ``table``,
    beside it as ``<table>.png``; returns the PNG's path. A table the chart cannot read (rows from before a
    column existed, say) gets a warning on stderr and no chart: the row it just received is kept either way."""
    from plots import CHARTS, read_rows  # benchmarks/ is on sys.path wherever csv_rows is importable

    table = Path(table)
    try:
        path = CHARTS[chart](read_rows(table), table.with_suffix(".png"))
    except ValueError as error:
        print(f"no chart for {table}: {error}", file=sys.stderr)
        return None
    print(f"chart written to {path}")
    return path


def report_row(measurements: Mapping[str, Any], cfg, *, chart: str | None = None) -> Path:
    """A Hydra benchmark's ending: :func:`save_row` with the composed config ``cfg`` (its ``save_to``), then the
    row and where it went on stdout; with ``chart``, the table's chart beside it (:func:`save_chart`)."""
    from omegaconf import OmegaConf

    path = save_row(measurements, config=OmegaConf.to_container(cfg, resolve=True), save_to=cfg.save_to)
    print(dict(measurements))
    print(f"row appended to {path}")
    if chart is not None:
        save_chart(path, chart)
    return path
