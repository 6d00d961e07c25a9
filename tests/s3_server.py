"""A real S3 endpoint for tests: moto's server mode on 127.0.0.1, on a free port.

Other processes (Ray workers, ``ray job submit`` drivers) reach it through the standard AWS
environment variables returned by :func:`s3_environment`.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import uuid
from dataclasses import dataclass, field

__all__ = ["S3Server", "clear_s3fs_caches", "create_bucket", "s3_environment", "start_s3_server"]


@dataclass
class S3Server:
    """A running moto server; ``stop()`` shuts it down (idempotent)."""

    endpoint_url: str
    _server: object = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._server.stop()


_PUT_LOCK = threading.Lock()


def _atomic_conditional_puts() -> None:
    """Make moto's PutObject atomic, as S3's is. S3 applies a conditional write (If-Match / If-None-Match)
    atomically (a concurrent one gets 409 or 412); moto 5.2 checks the condition, then writes later, unlocked,
    in one thread per request, so two writers racing with the same ETag can both succeed and one update is
    lost (seen: 58 of 60 increments in tests/test_storage_conditional.py). Serialising moto's PutObject
    handler restores the guarantee the code under test relies on; nothing else about the server changes."""
    from moto.s3.responses import S3Response

    original = S3Response.put_object
    if getattr(original, "atomic", False):
        return

    @functools.wraps(original)
    def put_object(self):
        with _PUT_LOCK:
            return original(self)

    put_object.atomic = True
    S3Response.put_object = put_object


def start_s3_server() -> S3Server:
    """Start ``ThreadedMotoServer(ip_address="127.0.0.1", port=0)`` (PutObject made atomic, as S3's is) and
    return its endpoint."""
    from moto.server import ThreadedMotoServer

    _atomic_conditional_puts()

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return S3Server(endpoint_url=f"http://{host}:{port}", _server=server)


def s3_environment(endpoint_url: str) -> dict[str, str]:
    """Standard AWS variables pointing botocore (and so s3fs, boto3, pyarrow) at ``endpoint_url`` with dummy keys."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        # A developer's ~/.aws must not leak into tests.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


# Variables that would override s3_environment if inherited from the developer's shell.
OVERRIDING_VARIABLES = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3")


def clear_s3fs_caches() -> None:
    """Forget cached S3FileSystem instances, which would keep talking to an old endpoint."""
    try:
        import s3fs
    except ImportError:
        return
    s3fs.S3FileSystem.clear_instance_cache()


def create_bucket(endpoint_url: str, name: str | None = None) -> str:
    """Create a bucket (a fresh unique name unless given) and return its name."""
    import boto3

    name = name or f"test-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=name)
    return name
