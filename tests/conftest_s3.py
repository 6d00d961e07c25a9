"""pytest fixtures for a real S3 endpoint (moto server on 127.0.0.1).

Use from any test module with ``pytest_plugins = ["conftest_s3"]`` or through tests/conftest.py,
which re-exports the fixtures.

- ``s3_endpoint`` (session): the running server's URL; the server stops when the session ends.
- ``s3_server`` (function): sets the standard AWS variables for this test, creates a fresh bucket,
  clears s3fs's instance cache before and after, and yields an :class:`S3Bucket` (``s3_bucket`` does the
  same for a fixture of another scope).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from s3_server import OVERRIDING_VARIABLES, clear_s3fs_caches, create_bucket, s3_environment, start_s3_server


@dataclass(frozen=True)
class S3Bucket:
    endpoint_url: str
    bucket: str
    env: dict  # the AWS variables set for this test; pass them to Ray workers' runtime_env

    def uri(self, *parts: str) -> str:
        """``s3://<bucket>/<parts joined by />``."""
        return "/".join([f"s3://{self.bucket}", *(part.strip("/") for part in parts if part.strip("/"))])


@pytest.fixture(scope="session")
def s3_endpoint():
    server = start_s3_server()
    try:
        yield server.endpoint_url
    finally:
        server.stop()
        clear_s3fs_caches()


@contextmanager
def s3_bucket(endpoint_url: str, patch: pytest.MonkeyPatch):
    """Set the AWS variables (through ``patch``, undone by its owner), create a fresh bucket, clear s3fs's
    caches before and after; yields an :class:`S3Bucket`."""
    env = s3_environment(endpoint_url)
    for name in OVERRIDING_VARIABLES:
        patch.delenv(name, raising=False)
    for name, value in env.items():
        patch.setenv(name, value)
    clear_s3fs_caches()
    bucket = create_bucket(endpoint_url)
    try:
        yield S3Bucket(endpoint_url=endpoint_url, bucket=bucket, env=dict(env))
    finally:
        clear_s3fs_caches()


@pytest.fixture
def s3_server(s3_endpoint, monkeypatch):
    with s3_bucket(s3_endpoint, monkeypatch) as bucket:
        yield bucket
