"""Shared fixtures. Tests use one thread per process (2-core machines) and never touch the network, except the
`network`-marked resolution check of tests/test_packaging.py (it asks the package index; WAN_DIST_OFFLINE=1 skips it)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_worker_niceness", "0")  # Ray's default 15 starves its workers on a busy machine

# Holds (tests/step_holds.py): Ray workers, started after this, import the step hook from this folder and
# share the folder of hold plans with the test through the environment. Removed at the end of the session.
_TESTS = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_TESTS, os.environ.get("PYTHONPATH")) if p)
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

os.environ["WAN_DIST_TEST_HOLDS"] = tempfile.mkdtemp(prefix="wan-dist-holds-")
atexit.register(shutil.rmtree, os.environ["WAN_DIST_TEST_HOLDS"], True)

import pytest  # noqa: E402
import torch  # noqa: E402

# S3 fixtures (s3_endpoint, s3_server): a real moto S3 server on 127.0.0.1, see conftest_s3.py.
from conftest_s3 import s3_endpoint, s3_server  # noqa: E402,F401

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    """``make(variant, layout, seed=0, shard_bytes=...) -> Path``: a random checkpoint in a real layout,
    written once per session per argument set."""
    from wan_dist.models.make_checkpoint import make_checkpoint

    root = tmp_path_factory.mktemp("checkpoints")
    made: dict[tuple, object] = {}

    def make(variant: str, layout: str, *, seed: int = 0, shard_bytes: int = 2 * 1024 * 1024):
        key = (variant, layout, seed, shard_bytes)
        if key not in made:
            made[key] = make_checkpoint(variant, root / f"{variant}-{layout}-{seed}-{shard_bytes}", layout=layout,
                                        seed=seed, shard_bytes=shard_bytes)
        return made[key]

    return make


@pytest.fixture(scope="session")
def holds():
    """Holds of renders at a step (tests/step_holds.py); whatever is still held is released at the end."""
    from step_holds import Holds

    made = Holds()
    yield made
    made.release_all()


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Embedded presets are written into a per-session cache, never the user's ~/.cache."""
    os.environ["WAN_DIST_CACHE"] = str(tmp_path_factory.mktemp("wan-dist-cache"))
    yield


@pytest.fixture(scope="session")
def ray_local(_isolated_cache):
    """A local Ray instance this test session starts (never an existing cluster) and stops."""
    import ray

    ray.init(address="local", num_cpus=8, include_dashboard=False, object_store_memory=200 * 2**20,
             log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
