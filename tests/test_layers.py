"""The layering of DESIGN.md holds: import-linter's contracts in pyproject.toml, run as `lint-imports`.

scripts/test.sh runs the same command before pytest; here it runs inside the suite too, so any pytest run
(CI, `make test`, a single file) sees a broken layer. The second test breaks every contract on a copy of
the package, to show that each one can fail and names the import that broke it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONTRACTS = {
    "layers": "layers: cli > serve | batch | train > engine > parallel > controls > sampling > models",
    "acyclic": "no import cycles between the packages of wan_dist, nor between the modules of one package",
    "config": "config imports nothing from wan_dist",
    "leaves": "storage and video are leaves: nothing of wan_dist but config",
    "leaves-apart": "storage and video do not import each other",
    "single-device": "models and sampling: no Ray, Hydra, fsspec/s3fs, object storage or torch.distributed",
    "hydra": "only cli imports hydra and omegaconf",
    "controls": "controls: no Ray, Hydra, fsspec/s3fs, object storage, video or torch.distributed",
}


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` of this venv on the package under ``root`` (put first on the path: an editable install
    elsewhere must not be what is checked); wide columns so that no contract name is wrapped."""
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert command, "lint-imports is not installed: pip install -e '.[dev]' (import-linter)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
           "COLUMNS": "250", "NO_COLOR": "1"}
    return subprocess.run([command, "--no-cache", "--no-logo"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=240)


def test_the_import_contracts_hold():
    run = lint_imports(REPO)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    for name in CONTRACTS.values():
        assert f"{name} KEPT" in run.stdout, name


# (file under wan_dist/, code appended to it, contract it breaks, the import the report must name). Most are
# imports inside a function: a lazy import is a dependency all the same.
VIOLATIONS = [
    ("engine/settings.py", "def _bad():\n    from wan_dist.cli import render\n", "layers",
     "wan_dist.engine.settings -> wan_dist.cli.render"),
    ("serve/schemas.py", "def _bad():\n    from wan_dist.batch.runner import BatchRunner\n", "layers",
     "wan_dist.serve.schemas -> wan_dist.batch.runner"),
    ("serve/jobs.py", "def _bad():\n    from wan_dist.serve import stores\n", "acyclic", ".jobs -> .stores"),
    ("config/__init__.py", "from wan_dist.models import presets\n", "config",
     "wan_dist.config -> wan_dist.models.presets"),
    ("storage/objects.py", "def _bad():\n    from wan_dist.engine import settings\n", "leaves",
     "wan_dist.storage.objects -> wan_dist.engine.settings"),
    ("video/mp4.py", "def _bad():\n    from wan_dist.storage import join\n", "leaves-apart",
     "wan_dist.video.mp4 -> wan_dist.storage"),
    ("models/dit.py", "def _bad():\n    import torch.distributed\n", "single-device",
     "wan_dist.models.dit -> torch.distributed"),
    ("sampling/guidance.py", "def _bad():\n    import ray\n", "single-device", "wan_dist.sampling.guidance -> ray"),
    ("serve/urls.py", "def _bad():\n    import omegaconf\n", "hydra", "wan_dist.serve.urls -> omegaconf"),
    ("controls/warp.py", "def _bad():\n    from wan_dist.storage import join\n", "controls",
     "wan_dist.controls.warp -> wan_dist.storage"),
]


@pytest.mark.slow
def test_each_contract_fails_on_an_import_that_crosses_it(tmp_path):
    shutil.copytree(REPO / "wan_dist", tmp_path / "wan_dist", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    assert lint_imports(tmp_path).returncode == 0  # the copy holds before it is broken
    for path, code, _, _ in VIOLATIONS:
        with open(tmp_path / "wan_dist" / path, "a") as f:
            f.write("\n\n" + code)
    (tmp_path / "wan_dist" / "newpkg").mkdir()  # a package placed in no layer
    (tmp_path / "wan_dist" / "newpkg" / "__init__.py").write_text("")

    run = lint_imports(tmp_path)
    assert run.returncode != 0
    report = run.stdout
    for name in CONTRACTS.values():
        assert f"{name} BROKEN" in report, name
    sections = _sections(report)
    for path, _, contract, edge in VIOLATIONS:
        assert edge in sections[CONTRACTS[contract]], (path, contract, edge)
    assert "- wan_dist.newpkg" in sections[CONTRACTS["layers"]]


def _sections(report: str) -> dict[str, str]:
    """The part of the report below each contract's heading (after "Broken contracts")."""
    details = report.split("Broken contracts", 1)[1]
    starts = sorted((details.index(f"\n{name}\n"), name) for name in CONTRACTS.values())
    ends = [start for start, _ in starts[1:]] + [len(details)]
    return {name: details[start:end] for (start, name), end in zip(starts, ends)}
