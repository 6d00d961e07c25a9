"""Compare-and-swap writes (wan_dist.storage.conditional) on local files, memory:// and a real S3 endpoint (moto
server): a stale or duplicate write is refused, and processes racing on one object lose no update."""

from __future__ import annotations

import json
import multiprocessing
import os
import uuid

import pytest

from wan_dist.storage import ObjectNotFoundError, delete
from wan_dist.storage.conditional import read_versioned, supports_conditional, write_if


@pytest.fixture(params=["file", "memory", "s3"])
def prefix(request, tmp_path):
    if request.param == "file":
        yield str(tmp_path / "cas")
    elif request.param == "memory":
        uri = f"memory://cas-{uuid.uuid4().hex}"
        yield uri
        delete(uri, recursive=True)
    else:
        server = request.getfixturevalue("s3_server")
        yield f"s3://{server.bucket}/cas"


def test_write_if_refuses_stale_versions_and_existing_objects(prefix):
    uri = f"{prefix}/a.json"
    assert supports_conditional(uri)
    with pytest.raises(ObjectNotFoundError):
        read_versioned(uri)
    assert write_if(uri, b"one", expected=None)
    assert not write_if(uri, b"two", expected=None)  # exists: a create does not overwrite
    data, first = read_versioned(uri)
    assert data == b"one"
    assert write_if(uri, b"three", expected=first)
    assert not write_if(uri, b"four", expected=first)  # stale: someone wrote since
    data, second = read_versioned(uri)
    assert data == b"three" and second != first
    assert write_if(uri, b"three", expected=second)  # same bytes again is still a new write
    assert read_versioned(uri)[0] == b"three"
    _, third = read_versioned(uri)
    delete(uri)
    assert not write_if(uri, b"five", expected=third)  # deleted since it was read: the race is lost
    with pytest.raises(ObjectNotFoundError):
        read_versioned(uri)


def _increment(uri: str, times: int, env: dict, go) -> None:
    os.environ.update(env)
    go.wait(60)
    for _ in range(times):
        while True:
            data, version = read_versioned(uri)
            if write_if(uri, json.dumps({"n": json.loads(data)["n"] + 1}).encode(), expected=version):
                break


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_racing_processes_lose_no_increment(backend, tmp_path, request):
    env = {}
    if backend == "file":
        uri = str(tmp_path / "counter.json")
    else:
        server = request.getfixturevalue("s3_server")
        uri, env = f"s3://{server.bucket}/counter.json", server.env
    assert write_if(uri, b'{"n": 0}', expected=None)
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    children = [context.Process(target=_increment, args=(uri, 15, env, go)) for _ in range(4)]
    for child in children:
        child.start()
    go.set()
    for child in children:
        child.join(120)
    assert [child.exitcode for child in children] == [0] * 4
    assert json.loads(read_versioned(uri)[0]) == {"n": 60}
