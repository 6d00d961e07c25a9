"""A plain ``pip install wan-dist[dev]``, without requirements/constraints.txt, resolves a working S3 stack.

The failure this guards against installed cleanly: with ``s3fs`` unbounded, pip settled on s3fs 0.4.2 (built on
boto3, years older than fsspec) beside current boto3, and every S3 write failed at run time. So the check is on the
versions pip picks, not on whether it picks some: s3fs and fsspec from the same release, s3fs on aiobotocore, and
aiobotocore's and boto3's botocore pins both holding the botocore chosen.

The resolution asks the package index (the machine's pip configuration, as ``scripts/setup.sh`` uses it), so it
is the one test here that needs the network: ``WAN_DIST_OFFLINE=1`` skips it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
S3_STACK = ("s3fs", "fsspec", "aiobotocore", "botocore", "boto3")
# The first botocore whose S3 PutObject takes IfMatch / IfNoneMatch (wan_dist/storage/conditional.py).
BOTOCORE_CONDITIONAL_WRITES = Version("1.36.0")


def _pinned_torch() -> str:
    """The torch pin of scripts/setup.sh: a bare torch would resolve a multi-GB CUDA build."""
    match = re.search(r"torch==[\w.+]+", (REPO / "scripts" / "setup.sh").read_text())
    assert match, "scripts/setup.sh no longer pins torch"
    return match.group(0)


def _requirement(resolved: dict[str, dict], package: str, dependency: str) -> Requirement | None:
    """``package``'s own requirement on ``dependency`` (without extras' requirements), if it has one."""
    for text in resolved[package].get("requires_dist") or []:
        requirement = Requirement(text)
        if canonicalize_name(requirement.name) == dependency and (
                requirement.marker is None or requirement.marker.evaluate({"extra": ""})):
            return requirement
    return None


def s3_stack_problems(report: dict) -> list[str]:
    """What is wrong with the S3 stack of a ``pip install --report`` (an empty list: nothing)."""
    resolved = {canonicalize_name(item["metadata"]["name"]): item["metadata"] for item in report["install"]}
    missing = [name for name in S3_STACK if name not in resolved]
    if "s3fs" in missing or "fsspec" in missing:
        return [f"not resolved: {missing}"]
    version = {name: Version(resolved[name]["version"]) for name in S3_STACK if name in resolved}
    problems = []
    if version["s3fs"].release[:2] != version["fsspec"].release[:2]:  # both are calendar versions YYYY.M
        problems.append(f"s3fs {version['s3fs']} is not of fsspec {version['fsspec']}'s release")
    if _requirement(resolved, "s3fs", "aiobotocore") is None:
        problems.append(f"s3fs {version['s3fs']} does not run on aiobotocore")
    if missing:
        return problems + [f"not resolved: {missing}"]
    for package in ("aiobotocore", "boto3"):
        pin = _requirement(resolved, package, "botocore")
        if pin is None or version["botocore"] not in pin.specifier:
            problems.append(f"{package} {version[package]} pins botocore {pin and pin.specifier}, "
                            f"resolved {version['botocore']}")
    if version["botocore"] < BOTOCORE_CONDITIONAL_WRITES:
        problems.append(f"botocore {version['botocore']} has no S3 conditional writes")
    return problems


def _metadata(name: str, version: str, *requires: str) -> dict:
    return {"metadata": {"name": name, "version": version, "requires_dist": list(requires)}}


def test_the_check_finds_the_s3fs_0_4_2_resolution_and_passes_a_matched_one():
    broken = {"install": [_metadata("s3fs", "0.4.2", "boto3>=1.9.91", "botocore>=1.12.91", "fsspec>=0.6.0"),
                          _metadata("fsspec", "2026.9.0"), _metadata("botocore", "1.44.18"),
                          _metadata("boto3", "1.44.18", "botocore<1.45.0,>=1.44.18")]}
    problems = s3_stack_problems(broken)
    assert any("s3fs 0.4.2 is not of fsspec 2026.9.0" in p for p in problems), problems
    assert any("does not run on aiobotocore" in p for p in problems), problems
    matched = {"install": [
        _metadata("s3fs", "2026.9.0", "aiobotocore<4.0.0,>=2.19.0", "fsspec<2026.9.1,>=2026.9.0"),
        _metadata("fsspec", "2026.9.0"), _metadata("aiobotocore", "3.10.0", "botocore<1.43.118,>=1.43.115"),
        _metadata("botocore", "1.43.117"), _metadata("boto3", "1.43.117", "botocore (<1.44.0,>=1.43.117)")]}
    assert s3_stack_problems(matched) == []
    behind = json.loads(json.dumps(matched))
    behind["install"][4]["metadata"]["requires_dist"] = ["botocore<1.45.0,>=1.44.18"]
    assert s3_stack_problems(behind) == ["boto3 1.43.117 pins botocore <1.45.0,>=1.44.18, resolved 1.43.117"]


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.skipif(os.environ.get("WAN_DIST_OFFLINE") == "1", reason="WAN_DIST_OFFLINE=1: no package index")
def test_a_plain_install_of_the_dev_extra_resolves_a_working_s3_stack(tmp_path):
    # Only the metadata matters: resolve a copy of pyproject.toml (with an empty package), so pip's metadata
    # build leaves nothing in the repository.
    project = tmp_path / "project"
    (project / "wan_dist").mkdir(parents=True)
    (project / "wan_dist" / "__init__.py").write_text("")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project / name)
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
               "--report", str(report), _pinned_torch(), f"{project}[dev]"]
    environment = {k: v for k, v in os.environ.items() if k not in ("PIP_CONSTRAINT", "PIP_REQUIREMENT")}
    process = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert process.returncode == 0, process.stderr[-3000:]
    assert s3_stack_problems(json.loads(report.read_text())) == []
